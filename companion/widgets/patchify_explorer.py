"""Patchify explorer: a vision transformer's image cut into patches, read as a sequence of tokens.

A vision transformer (ViT; Dosovitskiy et al. 2021, "An image is worth 16x16 words: transformers for
image recognition at scale", section 3.1) reshapes an image ``x`` of shape ``(C, H, W)`` into a
sequence of ``N`` flattened patches of ``p x p`` pixels::

    N = (H / p) (W / p)        each token: p * p * C values

(:func:`patch_grid`, :func:`sequence_length`, :func:`values_per_token`). The patches are read in
raster order, left to right and top to bottom, so patch ``(row, col)`` is token ``row * (W / p) +
col`` (:func:`patch_index`), and each is flattened channel by channel, then row by row: einops'
``"c (h p1) (w p2) -> (h w) (c p1 p2)"``, the order of ``nn.Conv2d``'s weight ``(D, C, p, p)`` and of
:func:`companion.models.vit.patchify` (:func:`patchify`). A linear map of these tokens is the patch
embedding; it equals a convolution with kernel and stride ``p``. ViT prepends a learned ``[CLS]`` token (after BERT's, Devlin et al. 2019, "BERT: pre-training
of deep bidirectional transformers for language understanding") whose output the classifier reads:
``N + 1`` tokens, the patches at positions ``1 .. N`` (:func:`token_position`).

Every patch size keeps all ``H W C`` values of the image: it trades the sequence length for the
width of a token. Attention compares every token with every other, so each head of each layer
computes ``N^2`` scores (:func:`attention_entries`): halving ``p`` makes ``4x`` the tokens and
``16x`` the scores. :func:`attention_ratio` compares a patch size's scores with those of the
largest patch size offered.

The widget (:class:`PatchifyExplorer`) holds the image's pixels (``C x H x W`` values in ``[0, 1]``,
channel first, rounded to ``PIXEL_DIGITS`` decimals), its size, the patch sizes offered (each divides
both ``H`` and ``W``), the chosen patch size and the ``[CLS]`` switch. The JavaScript in
``patchify_explorer.js`` draws the image with the patch grid and the token numbers, the sequence of
patches as a strip of tiles, the readout and a chart of ``N`` and ``N^2`` against the patch size (log
axes), all from that state. :func:`patch_grid`, :func:`sequence_length`, :func:`values_per_token`,
:func:`attention_entries`, :func:`attention_ratio`, :func:`patch_index`, :func:`token_position`,
:func:`patchify`, :func:`to_byte`, :func:`patch_bytes`, :func:`display_scale`,
:func:`labels_shown`, :func:`log_position`, :func:`format_count`, :func:`format_ratio`,
:func:`readout` and :func:`patch_text` are its Python twins (integer arithmetic, the same divisions,
and strings equal character for character; only ``log10`` may differ in the last bit).
"""

from __future__ import annotations

import math
import numbers
import pathlib
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Sequence

import anywidget
import numpy as np
import traitlets

from companion.widgets._traits import checked, checked_int
from companion.widgets.selective_memory import format_number

MAX_SIDE = 128  # pixels per side of the image
MAX_VALUES = 16384  # C * H * W: the state stays small (128 x 128 grey, 64 x 64 RGB)
MAX_PATCHES = 1024  # tiles in the strip
DEFAULT_MAX_PATCHES = 256  # the patch sizes offered by default give at most this many patches
DEFAULT_TARGET = 64  # the default patch size: the smallest giving at most this many patches
PIXEL_DIGITS = 3  # decimals kept of every pixel value (1/255 > 0.001: distinct bytes stay distinct)
DISPLAY_PX = 288  # the image is drawn about this wide (an integer number of screen pixels per pixel)
LABEL_MIN_PX = 24  # token numbers are written in patches at least this many screen pixels wide
CHANNELS = (1, 3)  # grey or RGB
TIMES = "\u00d7"
DASH = "\u2013"
HINT = ("Hover over a patch of the image or a tile of the sequence (or focus one and use the arrow keys) "
        "to follow it into the sequence.")
CLS_TEXT = ("The CLS token (position 0) is not cut from the image: it is a learned vector put before the "
            "patches, and the classifier reads its output.")


# ------------------------------------------------------------------------------ validation
def _int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    return checked_int(name, value, minimum, maximum)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _size(h: Any, w: Any, c: Any = 1) -> tuple[int, int, int]:
    h, w = _int("height", h, 1, MAX_SIDE), _int("width", w, 1, MAX_SIDE)
    c = _int("channels", c, 1)
    if c not in CHANNELS:
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {c}")
    if c * h * w > MAX_VALUES:
        raise ValueError(f"the image must hold at most {MAX_VALUES} values (C x H x W), got {c} x {h} x {w} = {c * h * w}")
    return h, w, c


def _divides(h: int, w: int, p: Any, name: str = "patch size") -> int:
    p = _int(name, p, 1)
    if h % p or w % p:
        raise ValueError(f"{name} {p} must divide both the height {h} and the width {w} of the image "
                         f"(the common divisors are {', '.join(map(str, common_divisors(h, w)))})")
    return p


def _round_pixel(v: float) -> float:
    return round(float(v), PIXEL_DIGITS) + 0.0  # + 0.0: no -0.0


def check_image(image: Any) -> tuple[list[float], int, int, int]:
    """An image of shape ``(H, W)`` or ``(C, H, W)`` (a NumPy array, a tensor or nested lists) with
    ``C`` = 1 (grey) or 3 (RGB) and values in ``[0, 1]``, as the widget stores it.

    Args:
        image: the image, ``(H, W)`` or ``(C, H, W)``, channels first.

    Returns:
        ``(pixels, H, W, C)``: ``pixels`` the ``C * H * W`` values flattened channel by channel, row
        by row, each rounded to ``PIXEL_DIGITS`` decimals.

    Raises:
        TypeError: ``image`` is not an array, tensor or list of real numbers.
        ValueError: a wrong number of dimensions or channels, a side outside ``1..MAX_SIDE``, more
            than ``MAX_VALUES`` values, or a value outside ``[0, 1]`` (or not finite).
    """
    if hasattr(image, "detach"):  # a torch tensor, possibly requiring grad, possibly bfloat16
        image = image.detach().cpu()
        image = image.double() if image.is_floating_point() else image
        image = image.numpy()
    if isinstance(image, (str, bytes)) or not isinstance(image, (list, tuple, np.ndarray)):
        raise TypeError(f"image must be an array or tensor of shape (H, W) or (C, H, W) with values in [0, 1], "
                        f"got {type(image).__name__}")
    try:
        array = np.asarray(image)
    except ValueError as error:  # nested lists of unequal lengths
        raise ValueError(f"image must be a rectangular (H, W) or (C, H, W) array: {error}") from None
    if array.dtype.kind == "b":
        raise TypeError("image must hold numbers in [0, 1], got booleans: convert it with .astype(float)")
    if array.dtype.kind not in "iuf":
        raise TypeError(f"image must hold real numbers in [0, 1], got an array of dtype {array.dtype}")
    if array.ndim == 2:
        array = array[None]
    elif array.ndim != 3:
        raise ValueError(f"image must be 2-D (H, W) or 3-D (C, H, W), got shape {tuple(array.shape)}")
    c, h, w = array.shape
    if c not in CHANNELS:
        hint = (f": channels come first; for a channels-last (H, W, C) image pass image.transpose(2, 0, 1)"
                if w in CHANNELS else "")
        raise ValueError(f"image must have 1 (grey) or 3 (RGB) channels, shape (C, H, W), "
                         f"got shape {tuple(array.shape)}{hint}")
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ValueError(f"image must be 1 to {MAX_SIDE} pixels high and wide, got {h} x {w}")
    _size(h, w, c)
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("image must be finite, got NaN or infinity")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        hint = "; bytes 0..255? divide by 255" if high > 1 and high <= 255 and low >= 0 else ""
        raise ValueError(f"image values must be in [0, 1], got values in [{low:g}, {high:g}]{hint}")
    return [_round_pixel(v) for v in values.ravel().tolist()], h, w, c


def _check_pixels(pixels: Any, h: int, w: int, c: int) -> list[float]:
    """The stored pixels: ``C * H * W`` numbers in ``[0, 1]``, rounded to ``PIXEL_DIGITS`` decimals."""
    if isinstance(pixels, (str, bytes)) or not isinstance(pixels, (list, tuple)):
        raise TypeError(f"pixels must be a list of numbers, got {type(pixels).__name__}")
    if len(pixels) != c * h * w:
        raise ValueError(f"pixels must hold C x H x W = {c} x {h} x {w} = {c * h * w} values, got {len(pixels)}")
    out = []
    for i, v in enumerate(pixels):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"pixels must hold numbers, got {v!r} at pixels[{i}]")
        if not 0 <= v <= 1:  # NaN fails this too
            raise ValueError(f"pixels must be in [0, 1], got {v} at pixels[{i}]")
        out.append(_round_pixel(v))
    return out


def common_divisors(h: int, w: int) -> list[int]:
    """The patch sizes that tile an ``h x w`` image exactly: the common divisors of ``h`` and ``w``,
    ascending."""
    h, w = _int("height", h), _int("width", w)
    g = math.gcd(h, w)
    return [p for p in range(1, g + 1) if g % p == 0]


def _check_sizes(patch_sizes: Any, h: int, w: int) -> list[int]:
    if hasattr(patch_sizes, "tolist") and not isinstance(patch_sizes, (list, tuple)):
        patch_sizes = patch_sizes.tolist()
    if isinstance(patch_sizes, (str, bytes)) or not isinstance(patch_sizes, (list, tuple)):
        raise TypeError(f"patch_sizes must be a list of ints, got {type(patch_sizes).__name__}")
    if not patch_sizes:
        raise ValueError("patch_sizes must hold at least one patch size, got none")
    sizes = []
    for p in patch_sizes:
        if isinstance(p, bool) or not isinstance(p, numbers.Integral):
            raise TypeError(f"patch_sizes must hold ints, got {p!r}")
        sizes.append(_divides(h, w, int(p), "patch_sizes: the patch size"))
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"patch_sizes must be distinct, got {sizes}")
    for p in sizes:
        if (h // p) * (w // p) > MAX_PATCHES:
            raise ValueError(f"patch_sizes: the patch size {p} cuts the {h} x {w} image into {(h // p) * (w // p)} "
                             f"patches, more than the {MAX_PATCHES} the widget draws")
    return sorted(sizes)


def _check_patch_size(patch_size: Any, sizes: Sequence[int]) -> int:
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        raise TypeError(f"patch_size must be an int, got {patch_size!r}")
    if patch_size not in sizes:
        raise ValueError(f"patch_size must be one of the patch sizes {list(sizes)}, got {patch_size}")
    return patch_size


def default_patch_sizes(h: int, w: int) -> list[int]:
    """The patch sizes offered for an ``h x w`` image: the common divisors that cut it into at most
    ``DEFAULT_MAX_PATCHES`` patches (or, if none does, the largest common divisor, when it gives at
    most ``MAX_PATCHES``).

    Raises:
        ValueError: even the largest common divisor cuts the image into more than ``MAX_PATCHES``
            patches.
    """
    divisors = common_divisors(h, w)
    sizes = [p for p in divisors if (h // p) * (w // p) <= DEFAULT_MAX_PATCHES]
    if sizes:
        return sizes
    g = divisors[-1]
    if (h // g) * (w // g) > MAX_PATCHES:
        raise ValueError(f"an {h} x {w} image has no patch size giving at most {MAX_PATCHES} patches (the largest "
                         f"common divisor, {g}, gives {(h // g) * (w // g)}): crop it so that its sides share a divisor")
    return [g]


def default_patch_size(h: int, w: int, patch_sizes: Sequence[int]) -> int:
    """The patch size shown first: the smallest of ``patch_sizes`` giving at most ``DEFAULT_TARGET``
    patches, or the largest of them."""
    for p in sorted(patch_sizes):
        if (h // p) * (w // p) <= DEFAULT_TARGET:
            return p
    return max(patch_sizes)


# ------------------------------------------------------------------------------ the twins
def patch_grid(h: int, w: int, p: int) -> tuple[int, int]:
    """``(H / p, W / p)``: the rows and columns of patches that a patch size ``p`` cuts an ``H x W``
    image into.

    Args:
        h: the image's height ``H`` in pixels.
        w: the image's width ``W``.
        p: the patch size (pixels per side); it must divide ``H`` and ``W``.
    """
    p = _divides(_int("height", h), _int("width", w), p)
    return h // p, w // p


def sequence_length(h: int, w: int, p: int, cls_token: bool = False) -> int:
    """``N = (H / p)(W / p)``, plus 1 with a ``[CLS]`` token: the transformer's sequence length."""
    rows, cols = patch_grid(h, w, p)
    return rows * cols + (1 if _bool("cls_token", cls_token) else 0)


def values_per_token(p: int, c: int) -> int:
    """``p * p * C``: the numbers in one flattened patch (the token before the patch embedding)."""
    return _int("patch size", p) ** 2 * _int("channels", c)


def attention_entries(h: int, w: int, p: int, cls_token: bool = False) -> int:
    """``N^2``: the attention scores that one head of one layer computes over the ``N`` tokens
    (:func:`sequence_length`)."""
    return sequence_length(h, w, p, cls_token) ** 2


def attention_ratio(h: int, w: int, p: int, patch_sizes: Sequence[int], cls_token: bool = False) -> float:
    """``N(p)^2 / N(p_max)^2``: the attention scores at patch size ``p`` over those at the largest of
    ``patch_sizes`` (one division, as the JavaScript computes it)."""
    largest = max(_check_sizes(patch_sizes, h, w))
    return attention_entries(h, w, p, cls_token) / attention_entries(h, w, largest, cls_token)


def patch_index(h: int, w: int, p: int, y: int, x: int) -> int:
    """The raster index ``(y // p) * (W / p) + x // p`` of the patch that holds pixel ``(y, x)``."""
    _, cols = patch_grid(h, w, p)
    y, x = _int("y", y, 0, h - 1), _int("x", x, 0, w - 1)
    return (y // p) * cols + x // p


def token_position(index: int, cls_token: bool = False) -> int:
    """Patch ``index``'s position in the token sequence: ``index``, or ``index + 1`` after a
    ``[CLS]`` token at position 0."""
    return _int("index", index, 0) + (1 if _bool("cls_token", cls_token) else 0)


def _patch_values(pixels: Sequence[float], h: int, w: int, c: int, p: int, index: int) -> list[float]:
    """Patch ``index`` flattened as ``(c p1 p2)`` (the arguments already checked)."""
    cols = w // p
    row, col = divmod(index, cols)
    return [pixels[ch * h * w + (row * p + i) * w + col * p + j] for ch in range(c) for i in range(p) for j in range(p)]


def _checked_patches(pixels: Sequence[float], h: int, w: int, c: int, p: int) -> int:
    """The number of patches, after checking the arguments of :func:`patchify` and :func:`patch_bytes`."""
    h, w, c = _size(h, w, c)
    rows, cols = patch_grid(h, w, p)
    if len(pixels) != c * h * w:
        raise ValueError(f"pixels must hold C x H x W = {c * h * w} values, got {len(pixels)}")
    return rows * cols


def patchify(pixels: Sequence[float], h: int, w: int, c: int, p: int) -> list[list[float]]:
    """The image's patches as tokens, ``(N, C * p * p)``: patch ``k = row * (W / p) + col`` in raster
    order, flattened as ``(c p1 p2)``: value ``ch * p * p + i * p + j`` is channel ``ch`` of pixel
    ``(row * p + i, col * p + j)`` (``"c (h p1) (w p2) -> (h w) (c p1 p2)"``, the order of
    ``nn.Conv2d``'s weight and of :func:`companion.models.vit.patchify`).

    Args:
        pixels: the ``C * H * W`` values, channel first (as the widget stores them).
        h: the image's height ``H``.
        w: the image's width ``W``.
        c: its channels ``C``.
        p: the patch size; it must divide ``H`` and ``W``.
    """
    n = _checked_patches(pixels, h, w, c, p)
    return [_patch_values(pixels, h, w, c, p, k) for k in range(n)]


def to_byte(v: float) -> int:
    """A value in ``[0, 1]`` as a colour byte: ``Math.round(255 * v)`` (half up, on the exact product)."""
    return int(Decimal(255 * v).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def patch_bytes(pixels: Sequence[float], h: int, w: int, c: int, p: int, index: int) -> list[int]:
    """The colours of patch ``index``, ``p * p * 3`` bytes (red, green, blue of each pixel, row by
    row; a grey image's value three times), as its tile draws them."""
    n = _checked_patches(pixels, h, w, c, p)
    token = _patch_values(pixels, h, w, c, p, _int("index", index, 0, n - 1))
    out = []
    for k in range(p * p):
        rgb = [token[ch * p * p + k] for ch in range(c)]
        out.extend(to_byte(v) for v in (rgb * 3 if c == 1 else rgb))
    return out


def display_scale(h: int, w: int) -> int:
    """Screen pixels per image pixel: ``max(1, DISPLAY_PX // max(H, W))``."""
    return max(1, DISPLAY_PX // max(_int("height", h), _int("width", w)))


def labels_shown(h: int, w: int, p: int) -> bool:
    """Whether the token numbers are written on the image: patches at least ``LABEL_MIN_PX`` screen
    pixels wide."""
    return _int("patch size", p) * display_scale(h, w) >= LABEL_MIN_PX


def log_position(v: float, lo: float, hi: float) -> float:
    """Where ``v`` lies between ``lo`` and ``hi`` on a logarithmic axis, 0 to 1 (0.5 when
    ``lo == hi``)."""
    if lo == hi:
        return 0.5
    return (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))


def format_count(n: int) -> str:
    """An integer with its thousands separated by commas (``1369``, ``"1,369"``)."""
    return f"{n:,}"


def format_ratio(r: float) -> str:
    """A ratio to 3 significant digits (``"342"``, ``"3.16"``) below 999.5, else rounded half up to an
    integer with commas (``"65,536"``)."""
    if r < 999.5:
        return format_number(r)
    return format_count(int(Decimal(r).quantize(Decimal(1), rounding=ROUND_HALF_UP)))


def readout(h: int, w: int, c: int, p: int, cls_token: bool, patch_sizes: Sequence[int]) -> dict[str, str]:
    """The widget's readout at patch size ``p``: the grid, the sequence length ``N``, the values per
    token, the image's values in all, the attention scores ``N^2`` and their ratio to the largest
    patch size's.

    Returns:
        A dict of the texts, keyed ``grid``, ``tokens``, ``values``, ``total``, ``scores``, ``ratio``.
    """
    h, w, c = _size(h, w, c)
    sizes = _check_sizes(patch_sizes, h, w)
    rows, cols = patch_grid(h, w, p)
    n = rows * cols
    length = sequence_length(h, w, p, cls_token)
    v = values_per_token(p, c)
    largest = sizes[-1]
    if p == largest:
        ratio = "1\u00d7 (the largest patch size offered)"
    else:
        least = attention_entries(h, w, largest, cls_token)
        ratio = (f"{format_ratio(attention_ratio(h, w, p, sizes, cls_token))}{TIMES} the {format_count(least)} "
                 f"score{'' if least == 1 else 's'} at p = {largest}")
    return {
        "grid": f"{rows} {TIMES} {cols} patches of {p} {TIMES} {p} pixels",
        "tokens": f"{format_count(n)} + 1 CLS = {format_count(length)}" if cls_token else format_count(n),
        "values": f"{p} {TIMES} {p} {TIMES} {c} = {format_count(v)}",
        "total": f"{format_count(n)} {TIMES} {format_count(v)} = {format_count(h * w * c)}",
        "scores": f"{format_count(length * length)} per head per layer",
        "ratio": ratio,
    }


def patch_text(h: int, w: int, c: int, p: int, cls_token: bool, index: int | None) -> str:
    """The widget's line about one patch (hovered or focused): where it lies in the image and in the
    sequence. ``index`` is the patch's raster index, ``-1`` the CLS token, ``None`` none (a hint)."""
    if index is None:
        return HINT
    if index == -1:
        return CLS_TEXT
    rows, cols = patch_grid(h, w, p)
    index = _int("index", index, 0, rows * cols - 1)
    row, col = divmod(index, cols)
    y, x = row * p, col * p
    where = f"pixel y {y}, x {x}" if p == 1 else f"pixels y {y}{DASH}{y + p - 1}, x {x}{DASH}{x + p - 1}"
    length = sequence_length(h, w, p, cls_token)
    return (f"Patch {index} (row {row}, column {col}; {where}) is token {token_position(index, cls_token)} of the "
            f"sequence (positions 0 to {length - 1}): {p} {TIMES} {p} {TIMES} {c} = "
            f"{format_count(values_per_token(p, c))} values.")


# ---------------------------------------------------------------------------------- images
DEFAULT_SIDE = 48


def default_image() -> np.ndarray:
    """The widget's default picture, ``(3, 48, 48)`` in ``[0, 1]``: a house on a green hill under a
    sky with a sun, drawn from a few shapes (no file, no download)."""
    n = DEFAULT_SIDE
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    image = np.empty((3, n, n))
    t = np.clip(y / 32, 0, 1)  # the sky: deep blue at the top, pale at the horizon
    for ch, (top, bottom) in enumerate(((0.25, 0.7), (0.5, 0.85), (0.85, 1.0))):
        image[ch] = top + (bottom - top) * t

    def paint(mask: np.ndarray, rgb: tuple[float, float, float]) -> None:
        for ch in range(3):
            image[ch][mask] = rgb[ch]

    paint((y - 10) ** 2 + (x - 37) ** 2 <= 36, (1.0, 0.82, 0.2))  # the sun
    hill = y >= 31 + 3 * np.sin(x / 6)
    paint(hill, (0.35, 0.68, 0.3))
    paint(hill & (y >= 42), (0.25, 0.52, 0.22))
    paint((x >= 8) & (x <= 21) & (y >= 24) & (y <= 38), (0.85, 0.3, 0.25))  # the house
    paint((y >= 14) & (y < 24) & (np.abs(x - 14.5) <= (y - 14) * 0.95 + 0.5), (0.45, 0.2, 0.15))  # its roof
    paint((x >= 13) & (x <= 16) & (y >= 31) & (y <= 38), (0.35, 0.2, 0.1))  # the door
    paint((x >= 9) & (x <= 11) & (y >= 27) & (y <= 29), (1.0, 0.95, 0.6))  # a window
    paint((x >= 18) & (x <= 20) & (y >= 27) & (y <= 29), (1.0, 0.95, 0.6))
    paint((x >= 30) & (x <= 32) & (y >= 27) & (y <= 36), (0.45, 0.3, 0.15))  # a tree
    paint((y - 24) ** 2 + (x - 31) ** 2 <= 20, (0.15, 0.5, 0.2))
    return np.round(image, PIXEL_DIGITS)


# ---------------------------------------------------------------------------------- widget
_DEFAULT = check_image(default_image())
_DEFAULT_SIZES = default_patch_sizes(DEFAULT_SIDE, DEFAULT_SIDE)


class PatchifyExplorer(anywidget.AnyWidget):
    """An image cut into patches by a patch-size control, read as a sequence of tokens, with the
    sequence length and the attention cost (module docstring).

    The reader picks a patch size (buttons) and switches a ``[CLS]`` token on or off. The image is
    drawn with the patch grid and every patch's position in the sequence; the sequence itself is a
    strip of tiles, one per token; a readout gives ``N``, ``p * p * C`` values per token, the ``N^2``
    attention scores per head per layer and their ratio to the largest patch size's; a chart shows
    ``N`` and ``N^2`` against the patch size on logarithmic axes. Hovering over (or focusing) a patch
    in the image or a tile in the strip highlights it in both, and shows its values as a token.

    Args:
        image: ``(H, W)`` or ``(C, H, W)`` with ``C`` = 1 or 3 and values in ``[0, 1]`` (an array, a
            tensor or nested lists); ``None``: :func:`default_image`, a 48 x 48 picture.
        patch_sizes: the patch sizes offered, each dividing both ``H`` and ``W``; ``None``:
            :func:`default_patch_sizes` (with ``patch_size`` added if it is not among them).
        patch_size: the patch size shown first; ``None``: :func:`default_patch_size`.
        cls_token: whether a ``[CLS]`` token comes before the patches.
        **kwargs: passed to ``anywidget.AnyWidget``.

    Raises:
        TypeError: an argument of the wrong type (see :func:`check_image`).
        ValueError: an image of the wrong shape or values, or a patch size that does not divide it.
    """

    _esm = pathlib.Path(__file__).with_name("patchify_explorer.js")
    _css = pathlib.Path(__file__).with_name("patchify_explorer.css")

    pixels = traitlets.List(traitlets.Float(), _DEFAULT[0]).tag(sync=True)
    height = traitlets.Int(DEFAULT_SIDE).tag(sync=True)
    width = traitlets.Int(DEFAULT_SIDE).tag(sync=True)
    channels = traitlets.Int(3).tag(sync=True)
    patch_sizes = traitlets.List(traitlets.Int(), _DEFAULT_SIZES).tag(sync=True)
    patch_size = traitlets.Int(default_patch_size(DEFAULT_SIDE, DEFAULT_SIDE, _DEFAULT_SIZES)).tag(sync=True)
    cls_token = traitlets.Bool(False).tag(sync=True)

    def __init__(self, image: Any = None, patch_sizes: Any = None, patch_size: int | None = None, *,
                 cls_token: bool = False, **kwargs):
        # plain arguments are checked here, with ValueError / TypeError; later changes by the traits
        pixels, h, w, c, sizes, p = self._checked_image(image, patch_sizes, patch_size)
        super().__init__(pixels=pixels, height=h, width=w, channels=c, patch_sizes=sizes, patch_size=p,
                         cls_token=_bool("cls_token", cls_token), **kwargs)

    @staticmethod
    def _checked_image(image: Any, patch_sizes: Any, patch_size: Any) -> tuple:
        pixels, h, w, c = _DEFAULT if image is None else check_image(image)
        if patch_sizes is None:
            sizes = default_patch_sizes(h, w)
            if patch_size is not None and patch_size not in sizes:
                sizes = _check_sizes([*sizes, _divides(h, w, patch_size, "patch_size")], h, w)
        else:
            sizes = _check_sizes(patch_sizes, h, w)
        p = default_patch_size(h, w, sizes) if patch_size is None else _check_patch_size(patch_size, sizes)
        return pixels, h, w, c, sizes, p

    # ---------------------------------------------------------------------------- validation
    # Each trait is checked against the others as they are: to change several together (a new
    # image), set them inside ``with widget.hold_trait_notifications():``, or use set_image().
    @traitlets.validate("pixels")
    def _valid_pixels(self, proposal):
        return checked(proposal, lambda value: _check_pixels(value, self.height, self.width, self.channels))

    def _valid_dimension(self, proposal, h: Any, w: Any, c: Any):
        def check(value):
            size = _size(h, w, c)
            _check_pixels(self.pixels, *size)
            _check_sizes(self.patch_sizes, size[0], size[1])
            return value
        return checked(proposal, check)

    @traitlets.validate("height")
    def _valid_height(self, proposal):
        return self._valid_dimension(proposal, proposal["value"], self.width, self.channels)

    @traitlets.validate("width")
    def _valid_width(self, proposal):
        return self._valid_dimension(proposal, self.height, proposal["value"], self.channels)

    @traitlets.validate("channels")
    def _valid_channels(self, proposal):
        return self._valid_dimension(proposal, self.height, self.width, proposal["value"])

    @traitlets.validate("patch_sizes")
    def _valid_sizes(self, proposal):
        def check(value):
            sizes = _check_sizes(value, self.height, self.width)
            _check_patch_size(self.patch_size, sizes)
            return sizes
        return checked(proposal, check)

    @traitlets.validate("patch_size")
    def _valid_patch_size(self, proposal):
        return checked(proposal, lambda value: _check_patch_size(value, self.patch_sizes))

    @traitlets.validate("cls_token")
    def _valid_cls(self, proposal):
        return checked(proposal, lambda value: _bool("cls_token", value))

    def set_image(self, image: Any, patch_sizes: Any = None, patch_size: int | None = None) -> None:
        """Replace the image, its patch sizes and the patch size together (as the constructor takes
        them; ``None``: the defaults for the new image).

        Args:
            image: ``(H, W)`` or ``(C, H, W)``, values in ``[0, 1]``.
            patch_sizes: the patch sizes offered; ``None``: :func:`default_patch_sizes`.
            patch_size: the patch size shown; ``None``: :func:`default_patch_size`.
        """
        if image is None:
            raise TypeError("image must be an array or tensor of shape (H, W) or (C, H, W), got None")
        pixels, h, w, c, sizes, p = self._checked_image(image, patch_sizes, patch_size)
        with self.hold_sync(), self.hold_trait_notifications():  # one message to the front end
            self.pixels, self.height, self.width, self.channels = pixels, h, w, c
            self.patch_sizes, self.patch_size = sizes, p

    # ------------------------------------------------------------------------------- reading
    def image(self) -> np.ndarray:
        """The stored image, ``(C, H, W)``."""
        return np.asarray(self.pixels, dtype=np.float64).reshape(self.channels, self.height, self.width)

    def tokens(self) -> np.ndarray:
        """:func:`patchify` at the current patch size: the ``(N, C * p * p)`` tokens (no CLS)."""
        tokens = patchify(self.pixels, self.height, self.width, self.channels, self.patch_size)
        return np.asarray(tokens, dtype=np.float64).reshape(len(tokens), -1)

    def sequence_length(self) -> int:
        """:func:`sequence_length` at the current state (the CLS token counted when it is on)."""
        return sequence_length(self.height, self.width, self.patch_size, self.cls_token)

    def attention_entries(self) -> int:
        """:func:`attention_entries` at the current state: ``N^2``."""
        return attention_entries(self.height, self.width, self.patch_size, self.cls_token)

    def __repr__(self) -> str:  # stable: stored notebook outputs must not hold an address
        return (f"PatchifyExplorer(image_shape={(self.channels, self.height, self.width)}, "
                f"patch_sizes={list(self.patch_sizes)}, patch_size={self.patch_size}, cls_token={self.cls_token})")
