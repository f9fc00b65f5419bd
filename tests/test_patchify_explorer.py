"""companion.widgets.patchify_explorer: an image cut into patches and read as tokens, the widget's state,
and its JavaScript.

The Python twins (``patchify``, ``sequence_length``, ``attention_entries``, ...) are checked against
PyTorch (the reshape ``"c (h p1) (w p2) -> (h w) (c p1 p2)"``, the chapter's
``companion.models.vit.patchify``, and a patch embedding that is a convolution with kernel and
stride ``p``) and against numbers worked by hand (ViT-B/16 on 224 x 224
images: 196 patches, 197 tokens); the JavaScript is run in Node (skipped without it) and must
compute the same numbers and text on random images; and the widget is drawn in headless Chromium
(skipped without it) with a stand-in for the widget model, where its patch-size buttons, CLS
checkbox, hovering and arrow keys must change what it shows, in agreement with the Python twins
(the site's check, tests/site_helpers.py, included).
"""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import traitlets
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.widgets import PatchifyExplorer, attention_entries, patch_grid, patchify, sequence_length
from companion.widgets import patchify_explorer as module

from widget_browser import mount_widget, page, run_js, stored_state  # noqa: F401  (page is a pytest fixture)

JS_PATH = Path(module.__file__).with_name("patchify_explorer.js")
CSS_PATH = Path(module.__file__).with_name("patchify_explorer.css")
TRAITS = ("pixels", "height", "width", "channels", "patch_sizes", "patch_size", "cls_token")
DEFAULT_SIZES = [3, 4, 6, 8, 12, 16, 24, 48]


def close(a: float, b: float, tol: float = 1e-12) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def random_image(seed: int, h: int | None = None, w: int | None = None, c: int | None = None) -> np.ndarray:
    """A random ``(C, H, W)`` image in [0, 1] whose sides share a few divisors."""
    rng = np.random.default_rng(seed)
    if h is None:
        unit = int(rng.choice([1, 2, 3, 4, 5, 6]))
        h, w = unit * int(rng.integers(1, 9)), unit * int(rng.integers(1, 9))
    c = int(rng.choice([1, 3])) if c is None else c
    return rng.uniform(0, 1, (c, h, w))


def random_state(seed: int) -> dict:
    """A random widget state: a random image, some of its patch sizes, one chosen, the CLS switch."""
    rng = np.random.default_rng(seed)
    pixels, h, w, c = module.check_image(random_image(seed))
    divisors = [p for p in module.common_divisors(h, w) if (h // p) * (w // p) <= module.MAX_PATCHES]
    sizes = sorted(rng.choice(divisors, size=int(rng.integers(1, len(divisors) + 1)), replace=False).tolist())
    return {"pixels": pixels, "height": h, "width": w, "channels": c, "patch_sizes": sizes,
            "patch_size": int(rng.choice(sizes)), "cls_token": bool(rng.integers(0, 2))}


# ------------------------------------------------------------------- the twins, by definition
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_patchify_is_vits_reshape(seed):
    image = random_image(seed)
    pixels, h, w, c = module.check_image(image)
    x = torch.tensor(pixels, dtype=torch.float64).reshape(c, h, w)
    for p in module.common_divisors(h, w):
        rows, cols = patch_grid(h, w, p)
        # einops: "c (h p1) (w p2) -> (h w) (c p1 p2)"
        expected = x.reshape(c, rows, p, cols, p).permute(1, 3, 0, 2, 4).reshape(rows * cols, c * p * p)
        tokens = patchify(pixels, h, w, c, p)
        assert torch.equal(torch.tensor(tokens, dtype=torch.float64).reshape(rows * cols, -1), expected)
        assert len(tokens) == sequence_length(h, w, p) == rows * cols
        assert all(len(t) == module.values_per_token(p, c) for t in tokens)
        assert len(tokens) * module.values_per_token(p, c) == c * h * w  # every patch size keeps every value


def test_patchify_is_the_chapters_patchify():
    vit = pytest.importorskip("companion.models.vit")
    for seed, (h, w, c) in enumerate(((12, 18, 3), (8, 8, 1), (20, 30, 3))):
        pixels, *_ = module.check_image(random_image(seed, h, w, c))
        x = torch.tensor(pixels, dtype=torch.float64).reshape(1, c, h, w)
        for p in module.common_divisors(h, w):
            assert torch.equal(torch.tensor(patchify(pixels, h, w, c, p), dtype=torch.float64), vit.patchify(x, p)[0])


def test_a_linear_map_of_the_tokens_is_a_strided_convolution():
    """The patch embedding: ``Linear(p * p * C, D)`` on :func:`patchify`'s tokens equals ``Conv2d(C, D,
    kernel_size=p, stride=p)`` with the same weights, read in raster order."""
    torch.manual_seed(0)
    pixels, h, w, c = module.check_image(random_image(1, 24, 36, 3))
    x = torch.tensor(pixels, dtype=torch.float64).reshape(1, c, h, w)
    for p in (3, 4, 6, 12):
        conv = torch.nn.Conv2d(c, 5, kernel_size=p, stride=p, dtype=torch.float64)
        reference = conv(x).flatten(2).transpose(1, 2)[0]  # (N, D), the patches in raster order
        weight = conv.weight.reshape(5, c * p * p)  # (D, C, p, p) -> (D, (c p1 p2)): the tokens' order
        tokens = torch.tensor(patchify(pixels, h, w, c, p), dtype=torch.float64)
        torch.testing.assert_close(tokens @ weight.T + conv.bias, reference)


def test_vit_numbers_by_hand():
    # ViT-B/16 on 224 x 224: 14 x 14 = 196 patches of 16 x 16 x 3 = 768 values; 197 tokens with CLS
    assert patch_grid(224, 224, 16) == (14, 14)
    assert sequence_length(224, 224, 16) == 196 and sequence_length(224, 224, 16, cls_token=True) == 197
    assert module.values_per_token(16, 3) == 768
    assert attention_entries(224, 224, 16) == 196**2 and attention_entries(224, 224, 16, True) == 197**2
    assert attention_entries(224, 224, 14) == 256**2 and attention_entries(224, 224, 32) == 49**2
    # halving the patch: 4x the tokens, 16x the scores
    assert module.attention_ratio(224, 224, 8, [8, 16], False) == 16.0
    assert module.attention_ratio(48, 48, 6, DEFAULT_SIZES, True) == 65**2 / 2**2
    assert patch_grid(6, 10, 2) == (3, 5) and sequence_length(6, 10, 1) == 60
    assert module.token_position(0) == 0 and module.token_position(0, True) == 1


def test_patch_index_is_where_patchify_puts_a_pixel():
    pixels, h, w, c = module.check_image(random_image(3, 12, 18, 3))
    for p in (1, 2, 3, 6):
        tokens = patchify(pixels, h, w, c, p)
        for y in range(h):
            for x in range(w):
                k = module.patch_index(h, w, p, y, x)
                for ch in range(c):
                    assert tokens[k][ch * p * p + (y % p) * p + x % p] == pixels[ch * h * w + y * w + x]
    assert module.patch_index(48, 48, 6, 0, 0) == 0 and module.patch_index(48, 48, 6, 47, 47) == 63
    assert module.patch_index(48, 48, 6, 6, 5) == 8  # row 1, column 0


def test_patch_bytes_and_to_byte():
    assert [module.to_byte(v) for v in (0.0, 1.0, 0.5, 0.002, 0.001, 0.998)] == [0, 255, 128, 1, 0, 254]
    assert [module.to_byte(k / 1000) for k in range(1001)] == [math.floor(255 * k / 1000 + 0.5) for k in range(1001)]
    pixels = [0.0, 0.5, 1.0, 0.25]  # a 2 x 2 grey image
    assert module.patch_bytes(pixels, 2, 2, 1, 1, 1) == [128, 128, 128]
    assert module.patch_bytes(pixels, 2, 2, 1, 2, 0) == [0, 0, 0, 128, 128, 128, 255, 255, 255, 64, 64, 64]
    rgb = [0.0] * 4 + [0.5] * 4 + [1.0] * 4  # 2 x 2: red 0, green 0.5, blue 1
    assert module.patch_bytes(rgb, 2, 2, 3, 1, 3) == [0, 128, 255]
    with pytest.raises(ValueError, match="index must be an int in 0..3"):
        module.patch_bytes(pixels, 2, 2, 1, 1, 4)


def test_default_patch_sizes_and_size():
    assert module.common_divisors(48, 48) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 48]
    assert module.default_patch_sizes(48, 48) == DEFAULT_SIZES  # p = 2 would give 576 patches
    assert module.default_patch_sizes(28, 28) == [2, 4, 7, 14, 28]  # MNIST
    assert module.default_patch_sizes(17, 16) == [1]  # 272 patches: more than 256, but the only way
    with pytest.raises(ValueError, match="no patch size giving at most 1024 patches"):
        module.default_patch_sizes(37, 32)
    assert module.default_patch_size(48, 48, DEFAULT_SIZES) == 6  # 64 patches
    assert module.default_patch_size(28, 28, [2, 4, 7]) == 4 and module.default_patch_size(28, 28, [1, 2]) == 2
    assert module.display_scale(48, 48) == 6 and module.display_scale(128, 64) == 2 and module.display_scale(1, 1) == 288
    assert module.display_scale(28, 7) == 10 and module.display_scale(500, 1) == 1
    assert module.labels_shown(48, 48, 4) and not module.labels_shown(48, 48, 3)  # 24 and 18 screen pixels


def test_log_position():
    assert module.log_position(3, 3, 48) == 0 and close(module.log_position(48, 3, 48), 1)
    assert close(module.log_position(12, 3, 48), 0.5) and module.log_position(8, 8, 8) == 0.5


def test_formats():
    f = module.format_count
    assert [f(n) for n in (0, 7, 999, 1000, 4225, 65536, 1234567, 1_048_576)] == [
        "0", "7", "999", "1,000", "4,225", "65,536", "1,234,567", "1,048,576"]
    r = module.format_ratio
    assert [r(x) for x in (1.0, 4.0, 16.25, 342.25, 999.49, 999.5, 1056.25, 16512.25, 16512.5, 65536.0, 2 / 3)] == [
        "1", "4", "16.3", "342", "999", "1,000", "1,056", "16,512", "16,513", "65,536", "0.667"]


def test_texts():
    assert module.readout(48, 48, 3, 6, False, DEFAULT_SIZES) == {
        "grid": "8 \u00d7 8 patches of 6 \u00d7 6 pixels", "tokens": "64", "values": "6 \u00d7 6 \u00d7 3 = 108",
        "total": "64 \u00d7 108 = 6,912", "scores": "4,096 per head per layer",
        "ratio": "4,096\u00d7 the 1 score at p = 48"}
    texts = module.readout(48, 48, 3, 6, True, DEFAULT_SIZES)
    assert texts["tokens"] == "64 + 1 CLS = 65" and texts["scores"] == "4,225 per head per layer"
    assert texts["ratio"] == "1,056\u00d7 the 4 scores at p = 48"  # 4225 / 4 = 1056.25
    assert module.readout(48, 48, 1, 16, False, [4, 16])["ratio"] == "1\u00d7 (the largest patch size offered)"
    assert module.readout(28, 28, 1, 4, False, [4, 7])["ratio"] == "9.38\u00d7 the 256 scores at p = 7"  # 49^2 / 16^2
    assert module.patch_text(48, 48, 3, 6, True, None) == module.HINT
    assert module.patch_text(48, 48, 3, 6, True, -1) == module.CLS_TEXT
    assert module.patch_text(48, 48, 3, 6, True, 9) == (
        "Patch 9 (row 1, column 1; pixels y 6\u201311, x 6\u201311) is token 10 of the sequence (positions 0 to 64): "
        "6 \u00d7 6 \u00d7 3 = 108 values.")
    assert module.patch_text(4, 6, 1, 1, False, 7) == (
        "Patch 7 (row 1, column 1; pixel y 1, x 1) is token 7 of the sequence (positions 0 to 23): "
        "1 \u00d7 1 \u00d7 1 = 1 values.")
    with pytest.raises(ValueError, match="index must be an int in 0..63"):
        module.patch_text(48, 48, 3, 6, False, 64)


def test_functions_reject_bad_arguments():
    with pytest.raises(ValueError, match="patch size 5 must divide both the height 48 and the width 48 .*1, 2, 3, 4"):
        patch_grid(48, 48, 5)
    with pytest.raises(ValueError, match="patch size 0 must divide|patch size must be an int >= 1"):
        sequence_length(48, 48, 0)
    with pytest.raises(TypeError, match="patch size must be an int"):
        sequence_length(48, 48, 6.0)
    with pytest.raises(TypeError, match="cls_token must be a bool"):
        sequence_length(48, 48, 6, 1)
    with pytest.raises(ValueError, match="x must be an int in 0..47"):
        module.patch_index(48, 48, 6, 0, 48)
    with pytest.raises(ValueError, match="pixels must hold C x H x W = 12 values, got 11"):
        patchify([0.0] * 11, 2, 2, 3, 1)
    with pytest.raises(ValueError, match="channels must be 1 \\(grey\\) or 3 \\(RGB\\), got 2"):
        patchify([0.0] * 8, 2, 2, 2, 1)
    with pytest.raises(ValueError, match="patch_sizes: the patch size 5 must divide"):
        module.attention_ratio(48, 48, 6, [6, 5])


# ----------------------------------------------------------------------------------- images
def test_check_image_takes_arrays_tensors_and_lists():
    image = random_image(5, 6, 4, 3)
    pixels, h, w, c = module.check_image(image)
    assert (h, w, c) == (6, 4, 3) and pixels == [round(v, 3) for v in image.ravel().tolist()]
    assert all(float(f"{v:.3f}") == v for v in pixels) and json.loads(json.dumps(pixels)) == pixels
    tensor = torch.tensor(image, dtype=torch.float32, requires_grad=True)
    assert module.check_image(tensor)[1:] == (6, 4, 3)
    assert module.check_image(tensor.to(torch.bfloat16))[1:] == (6, 4, 3)
    assert module.check_image(image.tolist()) == (pixels, 6, 4, 3)
    grey = module.check_image(image[0])
    assert grey == module.check_image(image[:1]) and grey[1:] == (6, 4, 1)
    assert module.check_image(np.zeros((2, 2), dtype=np.uint8)) == ([0.0] * 4, 2, 2, 1)
    assert module.check_image(np.array([[-0.0, 1.0]]))[0] == [0.0, 1.0]
    assert str(module.check_image(np.array([[-0.0, 1.0]]))[0][0]) == "0.0"  # no -0.0
    assert module.check_image(np.full((1, 1), 0.0004))[0] == [0.0] and module.check_image(np.full((1, 1), 0.9996))[0] == [1.0]


@pytest.mark.parametrize("image, error, match", [
    ("abc", TypeError, r"image must be an array or tensor of shape \(H, W\) or \(C, H, W\) with values in \[0, 1\], got str"),
    ({"a": 1}, TypeError, "got dict"),
    (3.0, TypeError, "got float"),
    ([[0.1, 0.2], [0.3]], ValueError, "image must be a rectangular"),
    (np.zeros((2, 2), dtype=bool), TypeError, "got booleans"),
    (np.array([["a", "b"]]), TypeError, "must hold real numbers"),
    (np.zeros(4), ValueError, r"image must be 2-D \(H, W\) or 3-D \(C, H, W\), got shape \(4,\)"),
    (np.zeros((1, 1, 2, 2)), ValueError, "got shape"),
    (np.zeros((2, 4, 4)), ValueError, r"1 \(grey\) or 3 \(RGB\) channels, shape \(C, H, W\), got shape \(2, 4, 4\)$"),
    (np.zeros((4, 4, 3)), ValueError, r"channels come first.*transpose\(2, 0, 1\)"),
    (np.zeros((3, 129, 4)), ValueError, "1 to 128 pixels high and wide, got 129 x 4"),
    (np.zeros((3, 0, 4)), ValueError, "1 to 128 pixels"),
    (np.zeros((3, 80, 80)), ValueError, "at most 16384 values .* 3 x 80 x 80 = 19200"),
    (np.full((2, 2), np.nan), ValueError, "image must be finite"),
    (np.full((2, 2), 1.5), ValueError, r"values must be in \[0, 1\], got values in \[1.5, 1.5\]; bytes 0..255\? divide by 255"),
    (np.full((2, 2), 255, dtype=np.uint8), ValueError, "divide by 255"),
    (np.full((2, 2), -0.1), ValueError, r"values must be in \[0, 1\], got values in \[-0.1, -0.1\]$"),
])
def test_check_image_rejects(image, error, match):
    with pytest.raises(error, match=match):
        module.check_image(image)
    if error is ValueError:  # the widget passes the same message on
        with pytest.raises(ValueError, match=match):
            PatchifyExplorer(image)


def test_default_image():
    image = module.default_image()
    assert image.shape == (3, 48, 48) and image.min() >= 0 and image.max() <= 1
    assert np.array_equal(image, module.default_image())  # no randomness
    pixels, *_ = module.check_image(image)
    tokens = np.array(patchify(pixels, 48, 48, 3, 6))
    assert len(np.unique(tokens.round(6), axis=0)) > 20  # a picture, not a flat colour: patches differ
    assert image[2, 0, 0] > image[0, 0, 0] and image[1, 47, 0] > image[2, 47, 0]  # blue sky, green ground


# ------------------------------------------------------------------------------------ the widget
def test_defaults_repr_and_state():
    widget = PatchifyExplorer()
    text = repr(widget)
    assert not re.search(r"0x[0-9a-fA-F]+", text)
    assert text == ("PatchifyExplorer(image_shape=(3, 48, 48), patch_sizes=[3, 4, 6, 8, 12, 16, 24, 48], "
                    "patch_size=6, cls_token=False)")
    assert widget._repr_mimebundle_()[0]["text/plain"] == text  # what a notebook stores
    assert widget.pixels == module.check_image(module.default_image())[0]
    assert (widget.height, widget.width, widget.channels) == (48, 48, 3)
    assert widget.sequence_length() == 64 and widget.attention_entries() == 4096
    assert np.array_equal(widget.image(), module.default_image())
    assert widget.tokens().shape == (64, 108) and widget.tokens().tolist() == patchify(widget.pixels, 48, 48, 3, 6)
    widget.patch_size, widget.cls_token = 16, True
    assert repr(widget).endswith("patch_size=16, cls_token=True)") and widget.sequence_length() == 10
    state = widget.get_state()
    assert {name: state[name] for name in TRAITS} == {name: getattr(widget, name) for name in TRAITS}
    assert len(json.dumps(state["pixels"])) < 50_000  # a small state


def test_widget_takes_images_and_patch_sizes():
    digit = torch.rand(28, 28, generator=torch.Generator().manual_seed(0))
    widget = PatchifyExplorer(digit)
    assert (widget.height, widget.width, widget.channels) == (28, 28, 1)
    assert widget.patch_sizes == [2, 4, 7, 14, 28] and widget.patch_size == 4
    widget = PatchifyExplorer(digit, patch_sizes=(14, np.int64(7), 4), patch_size=7, cls_token=True)
    assert widget.patch_sizes == [4, 7, 14] and widget.patch_size == 7 and widget.sequence_length() == 17
    assert PatchifyExplorer(digit, patch_sizes=np.array([28, 1])).patch_sizes == [1, 28]
    widget = PatchifyExplorer(patch_size=2)  # not among the defaults: added
    assert widget.patch_sizes == [2, *DEFAULT_SIZES] and widget.sequence_length() == 576
    widget = PatchifyExplorer(np.zeros((3, 16, 24)), patch_size=8)
    assert widget.patch_sizes == [2, 4, 8] and widget.sequence_length() == 6  # p = 1 would give 384 patches


def test_widget_takes_a_digit_of_the_chapters_data():
    pytest.importorskip("sklearn")
    from companion.data.images import load_digits_images

    images, labels = load_digits_images(size=32)
    widget = PatchifyExplorer(images[0], cls_token=True)  # (1, 32, 32)
    assert repr(widget) == "PatchifyExplorer(image_shape=(1, 32, 32), patch_sizes=[2, 4, 8, 16, 32], patch_size=4, cls_token=True)"
    assert widget.sequence_length() == 65 and widget.tokens().shape == (64, 16)
    assert np.array_equal(widget.image(), images[0].double().numpy().round(3))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"patch_sizes": [6, 5]}, ValueError, "patch_sizes: the patch size 5 must divide both the height 48 and the width 48"),
    ({"patch_sizes": []}, ValueError, "at least one patch size"),
    ({"patch_sizes": [6, 6]}, ValueError, "patch_sizes must be distinct"),
    ({"patch_sizes": [1, 6]}, ValueError, "the patch size 1 cuts the 48 x 48 image into 2304 patches, more than the 1024"),
    ({"patch_sizes": [6.0]}, TypeError, "patch_sizes must hold ints, got 6.0"),
    ({"patch_sizes": [True]}, TypeError, "patch_sizes must hold ints"),
    ({"patch_sizes": 6}, TypeError, "patch_sizes must be a list of ints, got int"),
    ({"patch_sizes": [6, 8], "patch_size": 12}, ValueError, r"patch_size must be one of the patch sizes \[6, 8\], got 12"),
    ({"patch_size": 5}, ValueError, "patch_size 5 must divide both"),
    ({"patch_size": 1}, ValueError, "the patch size 1 cuts the 48 x 48 image into 2304 patches"),
    ({"patch_sizes": [6, 8], "patch_size": 6.0}, TypeError, "patch_size must be an int"),
    ({"cls_token": 1}, TypeError, "cls_token must be a bool"),
])
def test_widget_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        PatchifyExplorer(**kwargs)


@pytest.mark.parametrize("name, bad, match", [
    ("pixels", [0.5] * 10, r"pixels must hold C x H x W = 3 x 48 x 48 = 6912 values, got 10"),
    ("pixels", [1.5] * 6912, r"pixels must be in \[0, 1\], got 1.5 at pixels\[0\]"),
    ("pixels", [math.nan] * 6912, r"pixels must be in \[0, 1\], got nan"),
    ("height", 24, "pixels must hold C x H x W = 3 x 24 x 48"), ("height", 0, "height must be an int in 1..128"),
    ("width", 96, "pixels must hold"), ("channels", 1, "pixels must hold C x H x W = 1 x 48 x 48"),
    ("channels", 2, "channels must be 1"), ("patch_sizes", [5], "must divide"),
    ("patch_sizes", [8, 12], r"patch_size must be one of the patch sizes \[8, 12\], got 6"),
    ("patch_size", 5, "patch_size must be one of the patch sizes"), ("cls_token", "yes", "bool"),
])
def test_widget_rejects_bad_traits(name, bad, match):
    widget = PatchifyExplorer()
    before = getattr(widget, name)
    with pytest.raises(traitlets.TraitError, match=match):
        setattr(widget, name, bad)
    assert getattr(widget, name) == before
    assert repr(widget) == ("PatchifyExplorer(image_shape=(3, 48, 48), patch_sizes=[3, 4, 6, 8, 12, 16, 24, 48], "
                            "patch_size=6, cls_token=False)")


def test_widget_traits_change_together():
    widget = PatchifyExplorer()
    grey = np.linspace(0, 1, 20 * 30).reshape(20, 30)
    with widget.hold_trait_notifications():
        widget.pixels, widget.height, widget.width, widget.channels = module.check_image(grey)
        widget.patch_sizes, widget.patch_size = [5, 10], 10
    assert repr(widget) == "PatchifyExplorer(image_shape=(1, 20, 30), patch_sizes=[5, 10], patch_size=10, cls_token=False)"
    widget.set_image(np.ones((3, 8, 8)))  # the defaults for the new image
    assert repr(widget) == "PatchifyExplorer(image_shape=(3, 8, 8), patch_sizes=[1, 2, 4, 8], patch_size=1, cls_token=False)"
    widget.set_image(grey, [2, 10], 2)
    assert (widget.patch_sizes, widget.patch_size, widget.sequence_length()) == ([2, 10], 2, 150)
    with pytest.raises(ValueError, match="must divide"):
        widget.set_image(np.ones((3, 8, 8)), [3])
    with pytest.raises(TypeError, match="got None"):
        widget.set_image(None)
    assert widget.height == 20 and widget.patch_sizes == [2, 10]  # unchanged by the failed calls


def test_widget_ships_its_javascript_and_css():
    widget = PatchifyExplorer()
    assert str(widget._esm) == JS_PATH.read_text() and str(widget._css) == CSS_PATH.read_text()
    esm, css = JS_PATH.read_text(), CSS_PATH.read_text()
    assert re.search(r"^function render\(", esm, re.M)
    assert re.search(r"^export default \{[^}]*\brender\b", esm, re.M)
    assert not re.search(r"^\s*import\b|https?://(?!www\.w3\.org/2000/svg)", esm, re.M)  # nothing from outside
    assert not re.search(r"url\(|@import|https?://", css)
    assert css.startswith(".ab-patch {")
    for cls in ("ab-patch-size", "ab-patch-image", "ab-patch-pixels", "ab-patch-overlay",
                "ab-patch-readout", "ab-patch-chart", "ab-patch-strip", "ab-patch-tile", "ab-patch-focus",
                "ab-patch-detail", "ab-patch-vector", "ab-patch-point-n", "ab-patch-point-scores", "ab-patch-current"):
        assert f".{cls}" in css and cls in esm, cls
    for selector in re.findall(r"\.(ab-[\w-]+)", css):
        assert selector.startswith("ab-patch"), selector  # every class under the widget's own root
    used = set(re.findall(r'model\.(?:get|set)\("(\w+)"', esm))
    for fields in re.findall(r"save\(\{([^}]*)\}", esm):
        used |= {part.split(":")[0].strip() for part in fields.split(",")}
    for names in re.findall(r"const names = \[([^\]]*)\]", esm):
        used |= set(re.findall(r'"(\w+)"', names))
    assert set(TRAITS) <= used, set(TRAITS) - used
    assert used <= set(PatchifyExplorer.class_traits(sync=True)), used - set(PatchifyExplorer.class_traits(sync=True))


# ------------------------------------------------------------------- the JavaScript's numbers
def test_javascript_constants_equal_python(node):
    js = run_js(node, JS_PATH, "show([MAX_SIDE, MAX_VALUES, MAX_PATCHES, DISPLAY_PX, LABEL_MIN_PX, CHANNELS, TIMES, DASH,"
                " HINT, CLS_TEXT]);")
    assert js == [module.MAX_SIDE, module.MAX_VALUES, module.MAX_PATCHES, module.DISPLAY_PX, module.LABEL_MIN_PX,
                  list(module.CHANNELS), module.TIMES, module.DASH, module.HINT, module.CLS_TEXT]


STATES = [random_state(seed) for seed in range(30)]
STATES += [{name: PatchifyExplorer(cls_token=cls, patch_size=p).get_state()[name] for name in TRAITS}
           for cls in (False, True) for p in (3, 6, 48)]


def run_on_states(node, states: list[dict], body: str) -> list:
    """``body`` (which reads ``states``) run in Node on a few states at a time: a script goes to Node
    as one argument, which the system limits to 128 KiB."""
    out, batch, size = [], [], 0
    for state in [*states, None]:
        text = json.dumps(state)
        if state is None or (batch and size + len(text) > 60_000):
            out += run_js(node, JS_PATH, f"const states = {json.dumps(batch)};\n" + body)
            batch, size = [], 0
        if state is not None:
            batch.append(state)
            size += len(text)
    return out


def test_javascript_computes_as_python(node):
    js = run_on_states(node, STATES,
                "show(states.map((s) => { const [h, w, c, cls] = [s.height, s.width, s.channels, s.cls_token];"
                " return s.patch_sizes.map((p) => { const n = (h / p) * (w / p); return ["
                "  patchGrid(h, w, p), sequenceLength(h, w, p, cls), valuesPerToken(p, c), attentionEntries(h, w, p, cls),"
                "  attentionRatio(h, w, p, s.patch_sizes, cls), patchify(s.pixels, h, w, c, p),"
                "  [0, n - 1, Math.floor(n / 2)].map((k) => patchBytes(s.pixels, h, w, c, p, k)),"
                "  [[0, 0], [h - 1, w - 1], [Math.floor(h / 2), Math.floor(w / 3)]].map(([y, x]) => patchIndex(h, w, p, y, x)),"
                "  displayScale(h, w), labelsShown(h, w, p), logPosition(p, s.patch_sizes[0], Math.max(...s.patch_sizes)),"
                "  readout(h, w, c, p, cls, s.patch_sizes),"
                "  [null, -1, ...Array.from({ length: n }, (_, k) => k)].map((k) => patchText(h, w, c, p, cls, k)),"
                "  consistentState(s.pixels, h, w, c, s.patch_sizes, p, cls)]; }); }));")
    assert len(js) == len(STATES)
    for i, (s, results) in enumerate(zip(STATES, js)):
        h, w, c, cls, sizes, pixels = s["height"], s["width"], s["channels"], s["cls_token"], s["patch_sizes"], s["pixels"]
        for p, (grid, length, values, entries, ratio, tokens, colours, indices, scale, labels, where, texts, texts_,
                ok) in zip(sizes, results):
            n = (h // p) * (w // p)
            at = f"state {i}, p = {p}"
            assert grid == list(patch_grid(h, w, p)) and length == sequence_length(h, w, p, cls), at
            assert values == module.values_per_token(p, c) and entries == attention_entries(h, w, p, cls), at
            assert ratio == module.attention_ratio(h, w, p, sizes, cls), at  # one division: exact
            assert tokens == patchify(pixels, h, w, c, p), at
            assert colours == [module.patch_bytes(pixels, h, w, c, p, k) for k in (0, n - 1, n // 2)], at
            assert indices == [module.patch_index(h, w, p, y, x) for y, x in ((0, 0), (h - 1, w - 1), (h // 2, w // 3))], at
            assert scale == module.display_scale(h, w) and labels == module.labels_shown(h, w, p), at
            assert close(where, module.log_position(p, sizes[0], sizes[-1])), at
            assert texts == module.readout(h, w, c, p, cls, sizes), at
            assert texts_ == [module.patch_text(h, w, c, p, cls, k) for k in (None, -1, *range(n))], at
            assert ok is True, at


def test_javascript_formats_and_bytes_equal_python(node):
    rng = np.random.default_rng(0)
    counts = [0, 1, 9, 99, 999, 1000, 1001, 99999, 100000, 1048576, 16777216] + rng.integers(0, 10**9, 200).tolist()
    ratios = [1.0, 4.0, 16.25, 342.25, 999.49, 999.5, 1056.25, 16512.5, 2 / 3, 1.0005, 9.995, 2.675]
    ratios += (10 ** rng.uniform(0, 6, 300)).tolist()
    values = [k / 1000 for k in range(1001)] + [0.5 / 255, 1.5 / 255, 2.5 / 255]
    js = run_js(node, JS_PATH, f"show([{json.dumps(counts)}.map(formatCount), {json.dumps(ratios)}.map(formatRatio),"
                f" {json.dumps(values)}.map(toByte)]);")
    assert js[0] == [module.format_count(n) for n in counts]
    assert js[1] == [module.format_ratio(r) for r in ratios]
    assert js[2] == [module.to_byte(v) for v in values]


def test_javascript_waits_for_a_consistent_state(node):
    good = ([0.5] * 24, 4, 6, 1, [1, 2], 2, False)
    cases = [(good, True), (([0.5] * 72, 4, 6, 3, [2], 2, True), True),
             (([0.5] * 23, *good[1:]), False),  # the pixels before the size that goes with them
             (([0.5] * 23 + [1.5], *good[1:]), False), (([0.5] * 23 + [None], *good[1:]), False),
             ((good[0], 6, 4, 1, [1, 2], 2, False), True), ((good[0], 4, 6, 3, *good[4:]), False),
             ((good[0], 4, 6, 2, *good[4:]), False), ((good[0], 0, 6, 1, *good[4:]), False),
             ((*good[:4], [3], 3, False), False),  # 3 does not divide the height 4
             ((*good[:4], [1, 2], 3, False), False), ((*good[:4], [], 2, False), False),
             ((*good[:4], [1.5, 2], 2, False), False), ((*good[:6], 1), False), ((None, *good[1:]), False),
             (([0.0] * 4096, 64, 64, 1, [1], 1, False), False),  # 4096 patches: more than the strip draws
             (([0.0] * 16641, 129, 129, 1, [129], 129, False), False)]
    js = run_js(node, JS_PATH, f"show({json.dumps([c for c, _ in cases])}.map((c) => consistentState(...c)));")
    assert js == [ok for _, ok in cases]


# ------------------------------------------------------------------ the widget drawn in a browser
def mount(page, widget: PatchifyExplorer) -> list[str]:
    errors = mount_widget(page, JS_PATH.read_text(), CSS_PATH.read_text(), stored_state(widget, TRAITS), ".ab-patch")
    page.locator("#root .ab-patch-about").hover()  # the pointer off the image and the tiles
    return errors


def shown(page) -> dict:
    return page.evaluate("""() => {
      const root = document.querySelector('#root .ab-patch');
      const overlay = root.querySelector('.ab-patch-overlay');
      return {
        size: [...root.querySelectorAll('.ab-patch-size')].filter((b) => b.getAttribute('aria-pressed') === 'true')
          .map((b) => Number(b.dataset.size)),
        sizes: [...root.querySelectorAll('.ab-patch-size')].map((b) => Number(b.dataset.size)),
        cls: root.querySelector('.ab-patch-cls').checked,
        readout: Object.fromEntries([...root.querySelectorAll('.ab-patch-readout dd')]
          .map((d) => [d.className.replace('ab-patch-val-', ''), d.textContent])),
        grid: [Number(overlay.dataset.rows), Number(overlay.dataset.cols)],
        labels: overlay.dataset.labels, overlayFocus: overlay.dataset.focus,
        canvas: [root.querySelector('.ab-patch-pixels').width, root.querySelector('.ab-patch-pixels').height],
        tiles: [...root.querySelectorAll('.ab-patch-tile')].map((t) => Number(t.dataset.index)),
        focused: [...root.querySelectorAll('.ab-patch-tile.ab-patch-focus')].map((t) => Number(t.dataset.index)),
        detail: root.querySelector('.ab-patch-detail').textContent,
        vector: root.querySelector('.ab-patch-vector-box').hidden ? null : root.querySelector('.ab-patch-vector').width,
        chartN: [...root.querySelectorAll('.ab-patch-point-n')].map((p) => Number(p.dataset.value)),
        saved: window.saved.length ? window.saved[window.saved.length - 1] : null,
      };
    }""")


def assert_shows(page, widget: PatchifyExplorer, focus: int | None = None) -> dict:
    """The drawing agrees with the Python twins at the widget's state (set to what the page should show)."""
    s = shown(page)
    h, w, c, p, cls = widget.height, widget.width, widget.channels, widget.patch_size, widget.cls_token
    rows, cols = patch_grid(h, w, p)
    where = f"{widget!r}, focus {focus}"
    assert s["size"] == [p] and s["sizes"] == widget.patch_sizes and s["cls"] == cls, where
    assert s["readout"] == module.readout(h, w, c, p, cls, widget.patch_sizes), where
    assert s["grid"] == [rows, cols] and s["labels"] == str(module.labels_shown(h, w, p)).lower(), where
    scale = module.display_scale(h, w)
    assert s["canvas"] == [w * scale, h * scale], where
    assert s["tiles"] == [-1] * cls + list(range(rows * cols)), where
    assert s["focused"] == ([] if focus is None else [focus]), where
    assert s["overlayFocus"] == ("" if focus is None else str(focus)), where
    assert s["detail"] == module.patch_text(h, w, c, p, cls, focus), where
    assert s["vector"] == (None if focus is None or focus < 0 else p * p * c), where
    assert s["chartN"] == [sequence_length(h, w, q, cls) for q in widget.patch_sizes], where
    return s


def hover_patch(page, widget: PatchifyExplorer, index: int) -> None:
    p, (_, cols) = widget.patch_size, patch_grid(widget.height, widget.width, widget.patch_size)
    image = page.locator("#root .ab-patch-pixels")
    box = image.bounding_box()
    row, col = divmod(index, cols)
    image.hover(position={"x": (col + 0.5) * p / widget.width * box["width"],
                          "y": (row + 0.5) * p / widget.height * box["height"]})


def test_the_widget_draws_and_responds(page):
    widget = PatchifyExplorer()
    errors = mount(page, widget)
    root = page.locator("#root .ab-patch")
    assert_shows(page, widget)
    root.locator(".ab-patch-size").nth(1).click()  # p = 4
    widget.patch_size = 4
    assert assert_shows(page, widget)["saved"]["patch_size"] == 4  # the change is sent to the model
    root.locator(".ab-patch-tile").nth(13).hover()
    assert_shows(page, widget, focus=13)
    hover_patch(page, widget, 30)
    assert_shows(page, widget, focus=30)
    root.locator(".ab-patch-about").hover()
    assert_shows(page, widget)
    root.locator(".ab-patch-cls").click()
    widget.cls_token = True
    s = assert_shows(page, widget)
    assert s["saved"]["cls_token"] is True and s["readout"]["tokens"] == "144 + 1 CLS = 145"
    root.locator(".ab-patch-tile").nth(0).hover()
    assert "CLS" in assert_shows(page, widget, focus=-1)["detail"]
    root.locator(".ab-patch-about").hover()
    # the keyboard: the image's arrow keys, then the tiles'
    root.locator(".ab-patch-image").focus()
    assert_shows(page, widget, focus=0)
    for key, focus in (("ArrowRight", 1), ("ArrowDown", 13), ("ArrowLeft", 12), ("ArrowUp", 0), ("ArrowUp", 0),
                       ("ArrowLeft", 0), ("End", 143), ("ArrowRight", 143), ("ArrowDown", 143), ("Home", 0)):
        root.locator(".ab-patch-image").press(key)
        assert_shows(page, widget, focus=focus)
    hover_patch(page, widget, 50)  # the pointer wins while it is on the image; the keyboard's patch comes back
    assert_shows(page, widget, focus=50)
    root.locator(".ab-patch-about").hover()
    assert_shows(page, widget, focus=0)
    root.locator(".ab-patch-tile").nth(5).focus()
    assert_shows(page, widget, focus=4)
    root.locator(".ab-patch-tile").nth(5).press("ArrowLeft")
    assert_shows(page, widget, focus=3)
    root.locator(".ab-patch-tile").nth(4).press("Home")
    assert_shows(page, widget, focus=-1)
    assert page.evaluate("() => [...document.querySelectorAll('.ab-patch-tile')].filter((t) => t.tabIndex === 0).length") == 1
    root.locator(".ab-patch-size").nth(7).click()  # p = 48: one patch, the focus off the tiles
    widget.patch_size = 48
    s = assert_shows(page, widget)
    assert s["readout"]["ratio"] == "1\u00d7 (the largest patch size offered)" and s["readout"]["tokens"] == "1 + 1 CLS = 2"
    assert not errors, errors


def test_the_image_and_tiles_show_the_pixels(page):
    image = random_image(7, 12, 20, 3)
    widget = PatchifyExplorer(image, patch_sizes=[1, 2, 4], patch_size=4)
    errors = mount(page, widget)
    read = "c => [...c.getContext('2d').getImageData(0, 0, c.width, c.height).data]"
    drawn = np.array(page.locator("#root .ab-patch-pixels").evaluate(read)).reshape(12 * 14, 20 * 14, 4)
    scale = module.display_scale(12, 20)
    assert scale == 14
    expected = np.vectorize(module.to_byte)(np.array(widget.pixels).reshape(3, 12, 20)).transpose(1, 2, 0)
    assert np.array_equal(drawn[scale // 2::scale, scale // 2::scale, :3], expected)  # every pixel, exactly
    assert np.array_equal(drawn[::scale, ::scale, :3], expected) and (drawn[..., 3] == 255).all()
    tiles = page.locator("#root .ab-patch-tile canvas").evaluate_all(
        "cs => cs.map(c => [...c.getContext('2d').getImageData(0, 0, c.width, c.height).data])")
    assert len(tiles) == 15
    for k, tile in enumerate(tiles):
        rgb = np.array(tile).reshape(-1, 4)[:, :3].ravel().tolist()
        assert rgb == module.patch_bytes(widget.pixels, 12, 20, 3, 4, k), k
    page.locator("#root .ab-patch-tile").nth(6).hover()
    vector = page.locator("#root .ab-patch-vector").evaluate(read)
    assert np.array(vector).reshape(-1, 4)[:, 0].tolist() == [module.to_byte(v) for v in widget.tokens()[6]]
    assert not errors, errors


def test_the_widget_follows_changes_from_python(page):
    widget = PatchifyExplorer(cls_token=True)
    errors = mount(page, widget)
    assert_shows(page, widget)
    page.locator("#root .ab-patch-image").focus()
    page.locator("#root .ab-patch-image").press("ArrowRight")
    assert_shows(page, widget, focus=1)
    # a new image arrives one trait at a time: nothing is drawn from a half-changed state
    widget.set_image(np.linspace(0, 1, 28 * 28).reshape(28, 28))
    page.evaluate("([s]) => { for (const name of ['pixels', 'height', 'width', 'channels', 'patch_sizes', 'patch_size'])"
                  " model.set(name, s[name]); }", [stored_state(widget, TRAITS)])
    assert_shows(page, widget, focus=0)  # a new grid: the keyboard starts again at the first patch
    page.evaluate("() => { model.set('patch_size', 14); model.set('cls_token', false); }")
    widget.patch_size, widget.cls_token = 14, False
    assert_shows(page, widget, focus=0)
    page.locator("#root .ab-patch-cls").focus()
    assert_shows(page, widget)
    assert not errors, errors


@pytest.mark.parametrize("kwargs", [
    {}, {"cls_token": True, "patch_size": 16},
    {"image": np.linspace(0, 1, 10 * 15).reshape(10, 15), "patch_sizes": [1, 5], "cls_token": True},
    {"image": random_image(2, 8, 12, 3), "patch_sizes": [4]},
])
def test_the_site_check_passes_on_the_widget(page, kwargs):
    site_helpers = pytest.importorskip("site_helpers")
    assert site_helpers.WIDGET_CHECKS[".ab-patch"] is site_helpers.check_patchify_explorer
    widget = PatchifyExplorer(**kwargs)
    errors = mount(page, widget)
    site_helpers.check_patchify_explorer(page, page.locator("#root .ab-patch"), stored_state(widget, TRAITS))
    assert not errors, errors


def test_the_site_check_catches_a_wrong_drawing(page):
    site_helpers = pytest.importorskip("site_helpers")
    widget = PatchifyExplorer()
    mount(page, widget)
    wrong = dict(stored_state(widget, TRAITS), pixels=[0.5] * len(widget.pixels))  # Python would draw another image
    with pytest.raises(AssertionError, match="the image is not drawn with the stored pixels"):
        site_helpers.check_patchify_explorer(page, page.locator("#root .ab-patch"), wrong)
    mount(page, widget)  # a readout that says something else is caught too
    page.evaluate("() => { document.querySelector('.ab-patch-val-scores').textContent = '1 per head per layer'; }")
    with pytest.raises(AssertionError, match="the readout shows"):
        site_helpers.check_patchify_explorer(page, page.locator("#root .ab-patch"), stored_state(widget, TRAITS))
