"""Generated sounds and their spectrograms: audio as a sequence of frames, one token per frame.

An audio transformer (Gong et al. 2021, "AST: Audio Spectrogram Transformer") does not read raw
samples: it reads a spectrogram, the magnitudes of short overlapping Fourier transforms, and treats
each time frame (or patch of it) as a token. :func:`audio_task` generates short labelled clips of
nine classes in three families, and :func:`spectrogram` turns waveforms into ``(batch, frames,
freq_bins)`` sequences. The defaults (8 kHz, half a second, ``n_fft = 512``, ``hop = 128``) give 32
frames of 257 bins: small enough to train a classifier on a laptop CPU in seconds.

The classes, with their label ids when ``classes`` is left at ``AUDIO_CLASSES``:

====  ===================  ==================================================================
id    name                 what is heard
====  ===================  ==================================================================
0     ``tone_220hz``       a pure tone at 220 Hz (A3)
1     ``tone_330hz``       a pure tone at 330 Hz (about E4)
2     ``tone_440hz``       a pure tone at 440 Hz (A4)
3     ``tone_660hz``       a pure tone at 660 Hz (about E5)
4     ``major_triad``      root, major third and fifth (frequency ratios 1, 2^(4/12), 2^(7/12))
5     ``minor_triad``      root, minor third and fifth (frequency ratios 1, 2^(3/12), 2^(7/12))
6     ``clicks_4_per_s``   short noise bursts, 4 per second
7     ``clicks_8_per_s``   short noise bursts, 8 per second
8     ``clicks_16_per_s``  short noise bursts, 16 per second
====  ===================  ==================================================================

A triad's root is drawn log-uniformly between 440 and 880 Hz, so only the intervals, not the
pitches, tell a major chord from a minor one. The clicks start at a random offset within their
period. Every clip has a random amplitude, random phases and light Gaussian noise.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

AUDIO_CLASSES = ("tone_220hz", "tone_330hz", "tone_440hz", "tone_660hz", "major_triad", "minor_triad",
                 "clicks_4_per_s", "clicks_8_per_s", "clicks_16_per_s")
"""The class names of :func:`audio_task`; a label is an index into the ``classes`` it was given."""

AUDIO_FAMILIES = {
    "tones": AUDIO_CLASSES[0:4],
    "chords": AUDIO_CLASSES[4:6],
    "rhythms": AUDIO_CLASSES[6:9],
}
"""The classes grouped by what tells them apart (pitch for tones, intervals for chords, tempo for rhythms)."""

TONE_HZ = {"tone_220hz": 220.0, "tone_330hz": 330.0, "tone_440hz": 440.0, "tone_660hz": 660.0}
TRIAD_SEMITONES = {"major_triad": (0, 4, 7), "minor_triad": (0, 3, 7)}
TRIAD_ROOT_HZ = (440.0, 880.0)  # the root is log-uniform in this range
CLICKS_PER_SECOND = {"clicks_4_per_s": 4, "clicks_8_per_s": 8, "clicks_16_per_s": 16}
CLICK_DECAY_S = 0.003  # a click is white noise under an exponential envelope with this time constant
AMPLITUDE_RANGE = (0.3, 0.9)  # a clip's peak amplitude (before noise) is uniform in this range


def _highest_frequency(name: str) -> float:
    if name in TONE_HZ:
        return TONE_HZ[name]
    if name in TRIAD_SEMITONES:
        return TRIAD_ROOT_HZ[1] * 2 ** (max(TRIAD_SEMITONES[name]) / 12)
    return 0.0  # clicks are noise: they have no pitch to alias


def audio_task(n: int, *, classes: Sequence[str] = AUDIO_CLASSES, sample_rate: int = 8000, seconds: float = 0.5,
               noise: float = 0.02, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated clips of tones, chords and click rhythms, labelled by class.

    The ``n`` labels are balanced: ``arange(n) % len(classes)``, shuffled, so every class appears
    ``n // len(classes)`` or one more times. For each clip, with ``t`` the sample times in seconds,
    ``a`` uniform in ``AMPLITUDE_RANGE`` and each phase ``phi`` uniform in ``[0, 2 pi)``:

    - a tone of frequency ``f`` is ``a sin(2 pi f t + phi)``;
    - a triad with root ``r`` (log-uniform in ``TRIAD_ROOT_HZ``) is
      ``(a / 3) sum_k sin(2 pi r 2^(s_k / 12) t + phi_k)`` over its semitones ``s_k``;
    - a rhythm of ``c`` clicks per second puts a click at ``t0, t0 + 1/c, t0 + 2/c, ...`` with ``t0``
      uniform in ``[0, 1/c)``; a click is standard Gaussian noise under ``a exp(-(t - t_click) /
      CLICK_DECAY_S)`` (so about ``3 * CLICK_DECAY_S`` long).

    Gaussian noise of standard deviation ``noise`` is added to every sample.

    Args:
        n: number of clips.
        classes: names from ``AUDIO_CLASSES`` (for example ``AUDIO_FAMILIES["chords"]``), no
            repeats; label ``i`` means ``classes[i]``.
        sample_rate: samples per second; must exceed twice the highest frequency of the classes
            asked for (the Nyquist rate: 2637 Hz with triads, 1320 Hz with the 660 Hz tone).
        seconds: length of each clip; with clicks it must hold at least one period of the slowest
            rhythm asked for, so that every clip has a click.
        noise: standard deviation of the added Gaussian noise, ``>= 0``.
        generator: the random generator that draws labels, amplitudes, phases, roots, offsets and noise.

    Returns:
        ``waves``, a ``torch.float32`` tensor ``(n, round(sample_rate * seconds))``, and ``labels``, a
        ``torch.long`` tensor ``(n,)`` of indices into ``classes``.

    Raises:
        ValueError: if an argument is out of range or a class name is not in ``AUDIO_CLASSES``.
        TypeError: if ``classes`` is a single string instead of a sequence of names.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(classes, str):
        raise TypeError(f"classes must be a sequence of class names, not one string; did you mean ({classes!r},)?")
    classes = tuple(classes)
    unknown = [name for name in classes if name not in AUDIO_CLASSES]
    if not classes or unknown:
        raise ValueError(f"classes must be a non-empty sequence of names from {AUDIO_CLASSES}, got unknown {unknown}"
                         if unknown else f"classes must be a non-empty sequence of names from {AUDIO_CLASSES}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must not repeat a name, got {classes}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive int (samples per second), got {sample_rate!r}")
    nyquist_needed = 2 * max(_highest_frequency(name) for name in classes)
    if sample_rate <= nyquist_needed:
        raise ValueError(f"sample_rate must exceed {nyquist_needed:.0f} Hz (twice the highest frequency of {classes}), "
                         f"got {sample_rate}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    samples = round(sample_rate * seconds)
    if samples < 1:
        raise ValueError(f"sample_rate * seconds must give at least one sample, got {sample_rate} * {seconds}")
    rates = [CLICKS_PER_SECOND[name] for name in classes if name in CLICKS_PER_SECOND]
    if rates and samples < math.ceil(sample_rate / min(rates)):
        raise ValueError(f"seconds must be at least 1/{min(rates)} s (one period of {min(rates)} clicks per second), "
                         f"got {seconds}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")

    k = len(classes)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=generator)]
    amplitude = AMPLITUDE_RANGE[0] + (AMPLITUDE_RANGE[1] - AMPLITUDE_RANGE[0]) * torch.rand(n, 1, generator=generator)
    phases = 2 * math.pi * torch.rand(n, 3, generator=generator)
    root_octaves = torch.rand(n, 1, generator=generator)  # triad roots, in octaves above TRIAD_ROOT_HZ[0]
    offsets = torch.rand(n, generator=generator)  # click start, as a fraction of the period
    t = torch.arange(samples, dtype=torch.float64) / sample_rate
    waves = torch.zeros(n, samples, dtype=torch.float64)
    for label, name in enumerate(classes):
        rows = (labels == label).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        a, phi = amplitude[rows].double(), phases[rows].double()
        if name in TONE_HZ:
            waves[rows] = a * torch.sin(2 * math.pi * TONE_HZ[name] * t + phi[:, :1])
        elif name in TRIAD_SEMITONES:
            root = TRIAD_ROOT_HZ[0] * 2 ** root_octaves[rows].double()
            ratios = torch.tensor([2 ** (s / 12) for s in TRIAD_SEMITONES[name]], dtype=torch.float64)
            frequencies = root * ratios  # (rows, 3)
            waves[rows] = a / 3 * torch.sin(2 * math.pi * frequencies[:, :, None] * t + phi[:, :, None]).sum(1)
        else:
            waves[rows] = _clicks(CLICKS_PER_SECOND[name], offsets[rows], a, t)
    # the noise that shapes the clicks and the background noise are drawn for all rows at once, so
    # that the draws do not depend on which rows hold which class
    click_noise = torch.randn(n, samples, generator=generator, dtype=torch.float64)
    is_click = torch.tensor([classes[label] in CLICKS_PER_SECOND for label in labels.tolist()], dtype=torch.bool)
    waves[is_click] *= click_noise[is_click]
    waves += noise * torch.randn(n, samples, generator=generator, dtype=torch.float64)
    return waves.float(), labels


def _clicks(per_second: int, offsets: torch.Tensor, amplitude: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The envelopes ``(rows, samples)`` of click trains, to be multiplied by noise.

    A click starts at ``t0 = offset / per_second`` and then every period; at time ``t`` the envelope
    is ``amplitude * exp(-(time since the latest click) / CLICK_DECAY_S)``, zero before the first
    click (a click has decayed by ``exp(-20)`` or more when the next one starts).
    """
    period = 1.0 / per_second
    since_first = t[None, :] - offsets[:, None].double() * period  # (rows, samples)
    envelope = torch.exp(-torch.remainder(since_first, period) / CLICK_DECAY_S)
    return amplitude * torch.where(since_first >= 0, envelope, torch.zeros_like(envelope))


def spectrogram(waves: torch.Tensor, *, n_fft: int = 512, hop: int = 128, log: bool = True) -> torch.Tensor:
    """Short-time Fourier magnitudes of waveforms, as a sequence of frames ``(batch, frames, freq_bins)``.

    Computes ``|torch.stft(waves, n_fft, hop, window=hann_window(n_fft), center=True)|`` (the signal
    is reflect-padded by ``n_fft // 2`` at both ends, so frame ``j`` is centred on sample
    ``j * hop``; the first and last frames or two also see the mirrored copy), transposed so that time comes first: each frame is one token for a transformer,
    with ``freq_bins = n_fft // 2 + 1`` features; bin ``b`` is centred on ``b * sample_rate / n_fft``
    Hz (:func:`spectrogram_frequencies`). With ``log=True`` (the default) the magnitude ``m`` becomes
    ``log(1 + m)``, which compresses the range of loud and quiet sounds and stays ``>= 0``. A pure
    tone of amplitude ``a`` peaks at about ``a * n_fft / 4``.

    Args:
        waves: float waveforms ``(batch, samples)``, or one ``(samples,)``; ``samples >= n_fft``.
        n_fft: window length in samples (its frequency resolution is ``sample_rate / n_fft`` Hz).
        hop: samples between the centres of consecutive frames.
        log: return ``log(1 + magnitude)`` instead of the magnitude.

    Returns:
        A float tensor ``(batch, 1 + samples // hop, n_fft // 2 + 1)``, or ``(frames, freq_bins)`` for
        one waveform, on the device of ``waves``.

    Raises:
        TypeError: if ``waves`` is not a floating-point tensor.
        ValueError: if ``waves`` is not 1-D or 2-D, is shorter than ``n_fft``, or ``n_fft`` or ``hop``
            is not a positive int (``n_fft >= 2``).
    """
    if not isinstance(waves, torch.Tensor) or not waves.is_floating_point():
        raise TypeError("waves must be a floating-point torch.Tensor, got "
                        + (f"dtype {waves.dtype}" if isinstance(waves, torch.Tensor) else type(waves).__name__))
    if waves.ndim not in (1, 2):
        raise ValueError(f"waves must be (batch, samples) or (samples,), got shape {tuple(waves.shape)}")
    if isinstance(n_fft, bool) or not isinstance(n_fft, int) or n_fft < 2:
        raise ValueError(f"n_fft must be an int >= 2, got {n_fft!r}")
    if isinstance(hop, bool) or not isinstance(hop, int) or hop < 1:
        raise ValueError(f"hop must be a positive int, got {hop!r}")
    if waves.shape[-1] < n_fft:
        raise ValueError(f"waves must hold at least n_fft={n_fft} samples, got {waves.shape[-1]}")
    if not isinstance(log, bool):
        raise ValueError(f"log must be True or False, got {log!r}")
    window = torch.hann_window(n_fft, dtype=waves.dtype, device=waves.device)
    stft = torch.stft(waves, n_fft=n_fft, hop_length=hop, window=window, center=True, pad_mode="reflect",
                      return_complex=True)
    magnitude = stft.abs().transpose(-1, -2)  # (..., frames, freq_bins)
    return torch.log1p(magnitude) if log else magnitude


def spectrogram_frequencies(n_fft: int, sample_rate: int) -> torch.Tensor:
    """The centre frequency in Hz of each bin of :func:`spectrogram`: ``b * sample_rate / n_fft``.

    Args:
        n_fft: the window length given to :func:`spectrogram`.
        sample_rate: samples per second of the waveforms.

    Returns:
        A ``torch.float32`` tensor ``(n_fft // 2 + 1,)`` from 0 to ``sample_rate / 2`` (for even ``n_fft``).

    Raises:
        ValueError: if ``n_fft`` is not an int >= 2 or ``sample_rate`` not a positive int.
    """
    if isinstance(n_fft, bool) or not isinstance(n_fft, int) or n_fft < 2:
        raise ValueError(f"n_fft must be an int >= 2, got {n_fft!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive int (samples per second), got {sample_rate!r}")
    return torch.arange(n_fft // 2 + 1, dtype=torch.float32) * (sample_rate / n_fft)
