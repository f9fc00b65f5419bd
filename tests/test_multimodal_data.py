"""Data for the multimodal chapter: digits (patches), generated audio (frames), captioned shape scenes."""

import math
import re

import pytest
import torch

from companion.data import (AUDIO_CLASSES, AUDIO_FAMILIES, CAPTION_WORDS, COLOURS, SHAPES, audio_task, decode_captions,
                            encode_captions, load_digits_images, shape_scenes, spectrogram, spectrogram_frequencies,
                            train_validation_split)
from companion.data.audio import AMPLITUDE_RANGE, CLICKS_PER_SECOND, TONE_HZ, TRIAD_ROOT_HZ
from companion.data.scenes import BOS_ID, COLUMNS, EOS_ID, PAD_ID, ROWS, SIZES, describe


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------- digits

def test_digits_are_sklearns_images_scaled_to_unit_range():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    images, labels = load_digits_images()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.long
    assert sorted(labels.unique().tolist()) == list(range(10))
    assert images.min() == 0 and images.max() == 1
    assert torch.equal(images * 16, (images * 16).round())  # grey levels 0 .. 16
    bunch = sklearn_datasets.load_digits()
    assert torch.equal(images[:, 0] * 16, torch.as_tensor(bunch.images, dtype=torch.float32))
    assert torch.equal(labels, torch.as_tensor(bunch.target))


def test_digits_are_fresh_copies():
    images, labels = load_digits_images()
    images.fill_(5.0)
    labels.fill_(-1)
    again, again_labels = load_digits_images()
    assert again.max() == 1 and again_labels.min() == 0


def test_digits_upscale_nearest_repeats_pixels_and_bilinear_stays_in_range():
    images, labels = load_digits_images()
    for factor in (2, 4):
        big, big_labels = load_digits_images(size=8 * factor)
        assert big.shape == (1797, 1, 8 * factor, 8 * factor)
        assert torch.equal(big, images.repeat_interleave(factor, 2).repeat_interleave(factor, 3))
        assert torch.equal(big_labels, labels)
    smooth, _ = load_digits_images(size=32, mode="bilinear")
    assert smooth.shape == (1797, 1, 32, 32) and smooth.dtype == torch.float32
    assert smooth.min() >= 0 and smooth.max() <= 1
    assert torch.allclose(smooth.mean((2, 3)), images.mean((2, 3)), atol=0.03)
    # the point of upscaling: patch sizes give different sequence lengths from the same pictures
    assert [(32 // patch) ** 2 for patch in (2, 4, 8)] == [256, 64, 16]


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 0}, "size must be a positive int"),
    ({"size": 16.0}, "size must be a positive int"),
    ({"size": True}, "size must be a positive int"),
    ({"size": 16, "mode": "bicubic"}, "mode must be one of"),
])
def test_digits_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_digits_images(**kwargs)


def test_train_validation_split_is_a_seeded_partition_that_keeps_pairs():
    values = torch.arange(100) * 10
    labels = torch.arange(100)
    (train_values, train_labels), (val_values, val_labels) = train_validation_split(
        values, labels, validation_fraction=0.25, generator=seeded(3))
    assert len(val_values) == 25 and len(train_values) == 75
    assert torch.equal(train_values, train_labels * 10) and torch.equal(val_values, val_labels * 10)
    assert sorted(torch.cat([train_labels, val_labels]).tolist()) == list(range(100))
    again = train_validation_split(values, labels, validation_fraction=0.25, generator=seeded(3))
    assert torch.equal(again[1][1], val_labels)
    other = train_validation_split(values, labels, validation_fraction=0.25, generator=seeded(4))
    assert not torch.equal(other[1][1], val_labels)
    assert not torch.equal(val_labels, torch.arange(75, 100))  # shuffled, not the last rows


@pytest.mark.parametrize("args, kwargs, error, message", [
    ((), {}, ValueError, "at least one tensor"),
    ((torch.zeros(4), torch.zeros(5)), {}, ValueError, "same first dimension"),
    (([1, 2, 3],), {}, TypeError, "must be a torch.Tensor"),
    ((torch.tensor(1.0),), {}, ValueError, "first dimension"),
    ((torch.zeros(10),), {"validation_fraction": 0}, ValueError, "strictly between 0 and 1"),
    ((torch.zeros(10),), {"validation_fraction": 1.0}, ValueError, "strictly between 0 and 1"),
    ((torch.zeros(2),), {"validation_fraction": 0.1}, ValueError, "both need at least one"),
])
def test_train_validation_split_errors(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        train_validation_split(*args, **kwargs)


# ----------------------------------------------------------------------------------------------- audio

def test_audio_task_shapes_balance_and_determinism():
    waves, labels = audio_task(50, generator=seeded(0))
    assert waves.shape == (50, 4000) and waves.dtype == torch.float32
    assert labels.shape == (50,) and labels.dtype == torch.long
    counts = torch.bincount(labels, minlength=len(AUDIO_CLASSES))
    assert counts.min() == 50 // 9 and counts.max() == 50 // 9 + 1  # balanced: every class reached
    again, again_labels = audio_task(50, generator=seeded(0))
    assert torch.equal(waves, again) and torch.equal(labels, again_labels)
    other, _ = audio_task(50, generator=seeded(1))
    assert not torch.equal(waves, other)
    assert torch.isfinite(waves).all() and waves.abs().max() < 10


def test_audio_classes_are_documented_families():
    assert len(AUDIO_CLASSES) == len(set(AUDIO_CLASSES)) == 9
    assert sum(AUDIO_FAMILIES.values(), ()) == AUDIO_CLASSES
    subset, labels = audio_task(8, classes=AUDIO_FAMILIES["chords"], sample_rate=6000, seconds=0.25,
                                generator=seeded(0))
    assert subset.shape == (8, 1500) and sorted(labels.tolist()) == [0] * 4 + [1] * 4


def test_tones_have_their_pitch_and_amplitude():
    classes = tuple(TONE_HZ)
    waves, labels = audio_task(16, classes=classes, noise=0.0, generator=seeded(2))
    spectrum = torch.fft.rfft(waves.double(), n=8000).abs()  # 1 Hz bins (8000 samples at 8 kHz)
    peaks = spectrum.argmax(1)
    expected = torch.tensor([TONE_HZ[classes[label]] for label in labels.tolist()])
    assert torch.allclose(peaks.double(), expected.double(), atol=1)
    peak = waves.abs().amax(1)
    assert (peak <= AMPLITUDE_RANGE[1] + 1e-6).all() and (peak >= AMPLITUDE_RANGE[0] * 0.99).all()
    # random phase: the clips of one class do not all start at the same value
    assert waves[labels == 0, 0].std() > 0.1


def spectral_peaks(wave: torch.Tensor, count: int, sample_rate: int = 8000) -> list[float]:
    """Frequencies (Hz) of the ``count`` largest local maxima of the spectrum, in increasing order."""
    n = 16 * wave.numel()  # zero-padded: fine bins, so that close peaks are located well
    spectrum = torch.fft.rfft(wave.double() * torch.hann_window(wave.numel(), dtype=torch.float64), n=n).abs()
    is_peak = (spectrum[1:-1] > spectrum[:-2]) & (spectrum[1:-1] >= spectrum[2:])
    bins = is_peak.nonzero().squeeze(1) + 1
    strongest = bins[spectrum[bins].argsort(descending=True)[:count]]
    return sorted((strongest.double() * sample_rate / n).tolist())


def test_triads_are_major_or_minor_from_a_random_root():
    classes = AUDIO_FAMILIES["chords"]
    waves, labels = audio_task(12, classes=classes, noise=0.0, generator=seeded(5))
    roots = []
    for wave, label in zip(waves, labels.tolist()):
        root, third, fifth = spectral_peaks(wave, 3)
        semitones = 12 * math.log2(third / root), 12 * math.log2(fifth / root)
        expected = (4, 7) if classes[label] == "major_triad" else (3, 7)
        assert semitones == pytest.approx(expected, abs=0.25)
        assert TRIAD_ROOT_HZ[0] - 2 <= root <= TRIAD_ROOT_HZ[1] + 2
        roots.append(root)
    assert max(roots) - min(roots) > 100  # the root moves, so pitch alone cannot tell the classes apart


def test_clicks_come_at_their_rate():
    classes = tuple(CLICKS_PER_SECOND)
    sample_rate, seconds = 8000, 0.5
    waves, labels = audio_task(30, classes=classes, seconds=seconds, generator=seeded(7))
    gap = int(0.02 * sample_rate)  # clicks of one train are at least 62.5 ms apart, and last ~10 ms
    for wave, label in zip(waves, labels.tolist()):
        loud = (wave.abs() > 0.15).nonzero().squeeze(1)  # noise has std 0.02: only clicks get this loud
        onsets = 1 + int((loud.diff() > gap).sum()) if loud.numel() else 0
        expected = CLICKS_PER_SECOND[classes[label]] * seconds
        assert expected - 1 <= onsets <= expected  # a click in the last few samples may be cut off
    # between clicks there is only the light noise
    quiet = waves[:, : int(0.001 * sample_rate)]
    assert quiet.abs().median() < 0.05


@pytest.mark.parametrize("kwargs, error, message", [
    ({"n": 0}, ValueError, "n must be a positive int"),
    ({"classes": ("tone_220hz", "kazoo")}, ValueError, "unknown \\['kazoo'\\]"),
    ({"classes": ()}, ValueError, "non-empty"),
    ({"classes": "tone_220hz"}, TypeError, "not one string"),
    ({"classes": ("tone_220hz", "tone_220hz")}, ValueError, "must not repeat"),
    ({"sample_rate": 2000}, ValueError, "sample_rate must exceed 2637 Hz"),
    ({"sample_rate": 8000.0}, ValueError, "sample_rate must be a positive int"),
    ({"seconds": 0}, ValueError, "seconds must be a positive number"),
    ({"seconds": 0.2}, ValueError, "at least 1/4 s"),
    ({"noise": -0.1}, ValueError, "noise must be a number >= 0"),
])
def test_audio_task_errors(kwargs, error, message):
    kwargs = {"n": 4, **kwargs}
    with pytest.raises(error, match=message):
        audio_task(kwargs.pop("n"), **kwargs)


def test_spectrogram_of_a_pure_tone_peaks_at_its_bin():
    sample_rate, n_fft, hop = 8000, 256, 64
    t = torch.arange(4000) / sample_rate
    frequency, amplitude = 1000.0, 0.5  # exactly bin 1000 * 256 / 8000 = 32
    wave = amplitude * torch.sin(2 * math.pi * frequency * t + 0.3)
    frames = spectrogram(wave, n_fft=n_fft, hop=hop)
    assert frames.shape == (1 + 4000 // hop, n_fft // 2 + 1)  # one wave: (frames, freq_bins)
    assert (frames[2:-2].argmax(1) == 32).all()  # the end frames also see the reflect-padding's kink
    assert spectrogram_frequencies(n_fft, sample_rate)[32] == frequency
    magnitude = spectrogram(wave[None], n_fft=n_fft, hop=hop, log=False)
    assert magnitude.shape == (1, 63, 129)
    assert torch.allclose(frames, torch.log1p(magnitude[0]))
    assert magnitude[0, 10:-10, 32].mean().item() == pytest.approx(amplitude * n_fft / 4, rel=0.01)
    # a tone between bins peaks at the nearest bin
    off_bin = spectrogram(torch.sin(2 * math.pi * 440.0 * t)[None], n_fft=512, hop=128)
    assert (off_bin[0, 2:-2].argmax(1) == round(440 * 512 / 8000)).all()


def test_spectrogram_of_the_task_is_a_sequence_of_frames():
    waves, _ = audio_task(9, generator=seeded(0))
    frames = spectrogram(waves)
    assert frames.shape == (9, 32, 257) and frames.dtype == torch.float32
    assert frames.min() >= 0
    freqs = spectrogram_frequencies(512, 8000)
    assert freqs.shape == (257,) and freqs[0] == 0 and freqs[-1] == 4000


@pytest.mark.parametrize("waves, kwargs, error, message", [
    (torch.zeros(2, 600, dtype=torch.long), {}, TypeError, "floating-point"),
    ([0.0] * 600, {}, TypeError, "floating-point"),
    (torch.zeros(2, 3, 600), {}, ValueError, "got shape \\(2, 3, 600\\)"),
    (torch.zeros(2, 100), {}, ValueError, "at least n_fft=512 samples"),
    (torch.zeros(2, 600), {"n_fft": 1}, ValueError, "n_fft must be an int >= 2"),
    (torch.zeros(2, 600), {"hop": 0}, ValueError, "hop must be a positive int"),
])
def test_spectrogram_errors(waves, kwargs, error, message):
    with pytest.raises(error, match=message):
        spectrogram(waves, **kwargs)


# ----------------------------------------------------------------------------------------------- scenes

CAPTION = re.compile(r"a (small|large) (\w+) (\w+) at the (top|bottom) (left|right)")


def parse(caption: str) -> list[tuple[str, str, str, int, int]]:
    """``(size, colour, shape, row, column)`` per object, checking the caption grammar on the way."""
    parts = caption.split(" and ")
    found = []
    for part in parts:
        match = CAPTION.fullmatch(part)
        assert match, f"{part!r} does not follow the grammar"
        size, colour, shape, row, column = match.groups()
        assert colour in COLOURS and shape in SHAPES
        found.append((size, colour, shape, ROWS.index(row), COLUMNS.index(column)))
    cells = [(row, column) for *_, row, column in found]
    assert cells == sorted(cells) and len(set(cells)) == len(cells), "objects in reading order, one per cell"
    return found


def classify(mask: torch.Tensor, cell_side: float) -> tuple[str, str]:
    """``(size, shape)`` of one object's pixels, from its bounding box alone (independent of the rasteriser)."""
    rows, columns = mask.nonzero(as_tuple=True)
    box = mask[rows.min(): rows.max() + 1, columns.min(): columns.max() + 1]
    height, width = box.shape
    fill = box.float().mean().item()
    top, bottom = box[0].float().mean().item(), box[-1].float().mean().item()
    if fill == 1:
        shape = "square"
    elif bottom == 1 and top < 0.4:
        shape = "triangle"
    elif fill > 0.6:
        shape = "circle"
    else:
        shape = "cross"
    return ("large" if max(height, width) >= 0.6 * cell_side else "small"), shape


@pytest.fixture(scope="module")
def scenes():
    return shape_scenes(400, max_objects=4, generator=seeded(11))


def test_scene_images_shapes_and_colours(scenes):
    images, captions, objects = scenes
    assert images.shape == (400, 3, 32, 32) and images.dtype == torch.float32
    assert len(captions) == len(objects) == 400
    assert images.min() >= 0 and images.max() <= 1
    palette = torch.tensor([(0.0, 0.0, 0.0), *COLOURS.values()])
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3)
    distance = (pixels[:, None] - palette[None]).abs().sum(-1).min(1).values
    assert distance.max() == 0  # every pixel: background or one exact colour


def test_every_count_shape_colour_size_and_cell_is_reached(scenes):
    found = [obj for scene in scenes.objects for obj in scene]
    assert {len(scene) for scene in scenes.objects} == {1, 2, 3, 4}
    assert {obj.shape for obj in found} == set(SHAPES)
    assert {obj.colour for obj in found} == set(COLOURS)
    assert {obj.size for obj in found} == set(SIZES)
    assert {(obj.row, obj.column) for obj in found} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    counts = {len(scene) for scene in shape_scenes(100, min_objects=2, max_objects=3, generator=seeded(0)).objects}
    assert counts == {2, 3}


def test_captions_describe_the_drawn_objects(scenes):
    images, captions, objects = scenes
    cell = 16
    for image, caption, scene in zip(images, captions, objects):
        assert caption == describe(scene)
        described = parse(caption)
        assert [(o.size, o.colour, o.shape, o.row, o.column) for o in scene] == described
        occupied = {(row, column) for *_, row, column in described}
        for size, colour, shape, row, column in described:
            pixels = image[:, row * cell: (row + 1) * cell, column * cell: (column + 1) * cell]
            drawn = pixels.abs().sum(0) > 0
            colours = {tuple(p) for p in pixels.permute(1, 2, 0)[drawn].tolist()}
            assert colours == {tuple(torch.tensor(COLOURS[colour]).tolist())}, (caption, row, column)
            assert classify(drawn, cell) == (size, shape), (caption, row, column)
        for row in range(2):
            for column in range(2):
                if (row, column) not in occupied:
                    assert image[:, row * cell: (row + 1) * cell, column * cell: (column + 1) * cell].sum() == 0
        for obj in scene:  # the pixel under each centre has the object's colour
            centre = image[:, int(obj.y), int(obj.x)]
            assert torch.equal(centre, torch.tensor(COLOURS[obj.colour])), (caption, obj)


def test_scenes_are_deterministic_and_small_sizes_work():
    first = shape_scenes(20, size=24, max_objects=3, generator=seeded(1))
    again = shape_scenes(20, size=24, max_objects=3, generator=seeded(1))
    other = shape_scenes(20, size=24, max_objects=3, generator=seeded(2))
    assert first.images.shape == (20, 3, 24, 24)
    assert torch.equal(first.images, again.images) and first.captions == again.captions
    assert first.captions != other.captions
    for image, scene in zip(first.images, first.objects):
        for obj in scene:
            assert torch.equal(image[:, int(obj.y), int(obj.x)], torch.tensor(COLOURS[obj.colour]))


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "n must be a positive int"),
    ({"size": 16}, "size must be an even int >= 24"),
    ({"size": 25}, "size must be an even int >= 24"),
    ({"max_objects": 5}, "max_objects must be an int in 1 .. 4"),
    ({"min_objects": 0}, "min_objects must be an int in 1 .. 4"),
    ({"min_objects": 3, "max_objects": 2}, "min_objects must be <= max_objects"),
])
def test_shape_scenes_errors(kwargs, message):
    kwargs = {"n": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        shape_scenes(kwargs.pop("n"), **kwargs)


def test_caption_tokens_round_trip(scenes):
    captions = scenes.captions[:50]
    ids = encode_captions(captions)
    longest = max(len(caption.split()) for caption in captions) + 2
    assert ids.shape == (50, longest) and ids.dtype == torch.long
    assert (ids[:, 0] == BOS_ID).all()
    for row, caption in zip(ids, captions):
        words = len(caption.split())
        assert row[words + 1] == EOS_ID and (row[words + 2:] == PAD_ID).all()
    assert decode_captions(ids) == captions
    padded = encode_captions(captions[:2], length=40)
    assert padded.shape == (2, 40) and decode_captions(padded) == captions[:2]
    assert decode_captions(padded[0]) == captions[:1]
    # decoding stops at the first EOS, as for a model's output that runs on
    assert decode_captions(torch.tensor([[BOS_ID, 3, EOS_ID, 4, 5]])) == [CAPTION_WORDS[3]]
    assert len(CAPTION_WORDS) == len(set(CAPTION_WORDS))
    assert set(" ".join(scenes.captions).split()) <= set(CAPTION_WORDS[EOS_ID + 1:])


@pytest.mark.parametrize("call, error, message", [
    (lambda: encode_captions(["a red hexagon"]), ValueError, "outside the vocabulary"),
    (lambda: encode_captions(["a <eos> circle"]), ValueError, "outside the vocabulary"),
    (lambda: encode_captions("a red circle"), TypeError, "not one string"),
    (lambda: encode_captions([3]), TypeError, "must be a str"),
    (lambda: encode_captions(["a red circle"], length=4), ValueError, "length must be an int >= 5"),
    (lambda: decode_captions(torch.zeros(2, 3)), TypeError, "integer torch.Tensor"),
    (lambda: decode_captions(torch.zeros(2, 3, 4, dtype=torch.long)), ValueError, "\\(batch, length\\)"),
    (lambda: decode_captions(torch.tensor([1, 99])), ValueError, "ids must lie in"),
])
def test_caption_token_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
