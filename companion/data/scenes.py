"""Generated scenes of simple shapes with captions, for teaching a language model to describe images.

LLaVA (Liu et al. 2023, "Visual Instruction Tuning") feeds the patch features of an image encoder,
projected to the decoder's width, as prefix tokens before the text, and trains the decoder to write
the caption. :func:`shape_scenes` makes the smallest data set on which that works: black images of
one to four coloured shapes in the cells of a 2x2 grid, each with a caption that is a fixed function
of the scene.

The scene: the image is cut into a 2x2 grid of cells (``top left``, ``top right``, ``bottom left``,
``bottom right``); each object sits in its own cell, so objects never overlap. An object has a shape
from ``SHAPES``, a colour from ``COLOURS``, a size from ``SIZES`` and a centre jittered inside its
cell. Shapes are rasterised with plain torch from coordinate grids (no anti-aliasing), so every pixel
is either background (0, 0, 0) or exactly its object's colour.

The caption grammar, with objects listed in reading order of their cells (top left, top right,
bottom left, bottom right)::

    caption := object ( " and " object )*
    object  := "a " size " " colour " " shape " at the " row " " column
    size    := "small" | "large"
    colour  := "red" | "green" | "blue" | "yellow" | "purple"
    shape   := "square" | "circle" | "triangle" | "cross"
    row     := "top" | "bottom"
    column  := "left" | "right"

for example ``"a large red circle at the top left and a small blue square at the bottom right"``.
Captions become token ids with :func:`encode_captions` over the fixed word list ``CAPTION_WORDS``
(``PAD_ID = 0``, ``BOS_ID = 1``, ``EOS_ID = 2``, then one id per word) and back with
:func:`decode_captions`.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

SHAPES = ("square", "circle", "triangle", "cross")
"""The shapes a scene draws (the triangle points up, the cross is an upright plus)."""
COLOURS = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 0.8, 0.0),
    "blue": (0.0, 0.3, 1.0),
    "yellow": (1.0, 0.9, 0.0),
    "purple": (0.6, 0.0, 0.8),
}
"""Colour name -> its ``(red, green, blue)`` value in ``[0, 1]``; all distinct from the black background."""
SIZES = {"small": 0.26, "large": 0.42}
"""Size name -> the shape's half-extent (the circle's radius) as a fraction of the cell's side."""
ROWS = ("top", "bottom")
COLUMNS = ("left", "right")
GRID = 2  # cells per side
MAX_OBJECTS = GRID * GRID
_CHUNK = 256  # images rasterised at once

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
CAPTION_WORDS = ("<pad>", "<bos>", "<eos>", "a", "and", "at", "the", *SIZES, *COLOURS, *SHAPES, *ROWS, *COLUMNS)
"""The caption vocabulary in id order (a word's id is its index), with ``<pad>``, ``<bos>`` and ``<eos>`` first."""
WORD_IDS = {word: index for index, word in enumerate(CAPTION_WORDS)}


class SceneObject(NamedTuple):
    """One object of a scene: what it is, which cell holds it, and where its centre lies in pixels."""

    shape: str
    colour: str
    size: str
    row: int  # 0 top, 1 bottom
    column: int  # 0 left, 1 right
    x: float  # centre, in pixels from the left edge of the image
    y: float  # centre, in pixels from the top edge of the image


class ShapeScenes(NamedTuple):
    """What :func:`shape_scenes` returns: images, captions and the objects they describe."""

    images: torch.Tensor  # (n, 3, size, size) float32 in [0, 1]
    captions: list[str]
    objects: list[list[SceneObject]]  # per image, in caption order


def describe(objects: Sequence[SceneObject]) -> str:
    """The caption of a scene: its objects in reading order of their cells, joined by ``" and "``.

    Args:
        objects: the scene's objects, in any order, at most one per cell.

    Returns:
        The caption, following the grammar in this module's description.

    Raises:
        ValueError: if there is no object or two objects share a cell.
    """
    cells = [(obj.row, obj.column) for obj in objects]
    if not objects or len(set(cells)) != len(cells):
        raise ValueError(f"a scene needs one to {MAX_OBJECTS} objects in distinct cells, got cells {cells}")
    ordered = sorted(objects, key=lambda obj: (obj.row, obj.column))
    return " and ".join(f"a {obj.size} {obj.colour} {obj.shape} at the {ROWS[obj.row]} {COLUMNS[obj.column]}"
                        for obj in ordered)


def _shape_masks(dx: torch.Tensor, dy: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Masks of every shape ``(len(SHAPES), *dx.shape)`` for offsets ``dx``, ``dy`` from the centre."""
    ax, ay = dx.abs(), dy.abs()
    square = (ax <= 0.8 * radius) & (ay <= 0.8 * radius)
    circle = dx * dx + dy * dy <= radius * radius
    # isosceles triangle pointing up: apex at dy = -radius, base of width 2 * radius at dy = +radius
    triangle = (dy >= -radius) & (dy <= radius) & (ax <= (dy + radius) / 2)
    arm = 0.25 * radius
    cross = ((ax <= arm) & (ay <= radius)) | ((ay <= arm) & (ax <= radius))
    return torch.stack([square, circle, triangle, cross])


def shape_scenes(n: int, *, size: int = 32, min_objects: int = 1, max_objects: int = 2,
                 generator: torch.Generator | None = None) -> ShapeScenes:
    """``n`` images of coloured shapes in a 2x2 grid, with a caption describing each.

    For each image the number of objects is uniform in ``min_objects .. max_objects``, their cells a
    uniformly random set of distinct cells, and each object's shape, colour and size uniform and
    independent (two objects may share a colour or a shape). A centre is jittered uniformly so that
    the shape stays inside its cell. Pixel ``(i, j)`` (row ``i``, column ``j``) is the square whose
    centre is ``(x, y) = (j + 0.5, i + 0.5)``; it belongs to a shape when that centre does:

    - square: ``|dx|, |dy| <= 0.8 r``;
    - circle: ``dx^2 + dy^2 <= r^2``;
    - triangle (pointing up): ``-r <= dy <= r`` and ``|dx| <= (dy + r) / 2``;
    - cross: an upright plus of arms ``r`` long and ``0.25 r`` half-wide;

    with ``(dx, dy)`` the offset from the object's centre and ``r`` its half-extent
    (``SIZES[size] * cell side``). The pixel under every centre belongs to its shape.

    Args:
        n: number of scenes.
        size: side of the images in pixels, even and at least 24 (below that a small circle, 4 or 5
            pixels wide, cannot be told from a small square); 24 or 32 suit patches of 4 or 8.
        min_objects: the fewest objects in a scene, ``>= 1``.
        max_objects: the most objects in a scene, ``min_objects .. 4``.
        generator: the random generator that draws the scenes.

    Returns:
        A :class:`ShapeScenes` ``(images, captions, objects)``: ``images`` a ``torch.float32`` tensor
        ``(n, 3, size, size)`` in ``[0, 1]`` (black background), ``captions`` a list of ``n`` strings
        (grammar in the module description), ``objects`` a list of ``n`` lists of
        :class:`SceneObject`, in caption order.

    Raises:
        ValueError: if an argument is out of range.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 24 or size % 2:
        raise ValueError(f"size must be an even int >= 24 (for example 24 or 32), got {size!r}")
    for name, value in (("min_objects", min_objects), ("max_objects", max_objects)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OBJECTS:
            raise ValueError(f"{name} must be an int in 1 .. {MAX_OBJECTS} (one object per cell of the "
                             f"{GRID}x{GRID} grid), got {value!r}")
    if min_objects > max_objects:
        raise ValueError(f"min_objects must be <= max_objects, got {min_objects} and {max_objects}")

    cells = MAX_OBJECTS
    counts = torch.randint(min_objects, max_objects + 1, (n,), generator=generator)
    # the occupied cells: the first `count` of a random permutation of the cells
    ranks = torch.argsort(torch.argsort(torch.rand(n, cells, generator=generator), dim=1), dim=1)
    present = ranks < counts[:, None]  # (n, cells)
    shapes = torch.randint(0, len(SHAPES), (n, cells), generator=generator)
    colours = torch.randint(0, len(COLOURS), (n, cells), generator=generator)
    sizes = torch.randint(0, len(SIZES), (n, cells), generator=generator)
    jitter = torch.rand(n, cells, 2, generator=generator) * 2 - 1  # in [-1, 1), scaled below

    cell_side = size / GRID
    radius = torch.tensor(list(SIZES.values()), dtype=torch.float32)[sizes] * cell_side  # (n, cells)
    rows, columns = torch.arange(cells) // GRID, torch.arange(cells) % GRID
    slack = (cell_side / 2 - radius - 0.5).clamp(min=0)  # how far a centre may move and stay in its cell
    cx = (columns + 0.5) * cell_side + jitter[..., 0] * slack
    cy = (rows + 0.5) * cell_side + jitter[..., 1] * slack

    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32)  # (colours, 3)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    images = torch.empty(n, 3, size, size)
    for start in range(0, n, _CHUNK):  # in chunks, to bound the memory of the (chunk, cells, size, size) masks
        part = slice(start, start + _CHUNK)
        dx = coords[None, None, None, :] - cx[part, :, None, None]  # (chunk, cells, 1, size)
        dy = coords[None, None, :, None] - cy[part, :, None, None]  # (chunk, cells, size, 1)
        dx, dy = torch.broadcast_tensors(dx, dy)
        masks = _shape_masks(dx, dy, radius[part, :, None, None])  # (shapes, chunk, cells, size, size)
        mask = masks.gather(0, shapes[None, part, :, None, None].expand(1, *dx.shape))[0]
        mask &= present[part, :, None, None]
        # cells do not overlap, so the sum over cells paints each pixel with at most one colour
        images[part] = (mask[:, :, None] * palette[colours[part]][..., None, None]).sum(1)

    colour_names, size_names = list(COLOURS), list(SIZES)
    table = zip(present.tolist(), shapes.tolist(), colours.tolist(), sizes.tolist(), cx.tolist(), cy.tolist())
    objects: list[list[SceneObject]] = [
        [SceneObject(SHAPES[shape[cell]], colour_names[colour[cell]], size_names[size_[cell]], cell // GRID,
                     cell % GRID, x[cell], y[cell])
         for cell in range(cells) if here[cell]]  # cells are numbered in reading order
        for here, shape, colour, size_, x, y in table]
    captions = [describe(scene) for scene in objects]
    return ShapeScenes(images, captions, objects)


def encode_captions(captions: Sequence[str], *, length: int | None = None) -> torch.Tensor:
    """Captions as word ids ``(len(captions), length)``: ``BOS``, the words, ``EOS``, then ``PAD``.

    Args:
        captions: strings of words from ``CAPTION_WORDS``, separated by single spaces.
        length: tokens per row; by default the longest caption's word count plus 2 (BOS and EOS).

    Returns:
        A ``torch.long`` tensor ``(len(captions), length)``.

    Raises:
        TypeError: if ``captions`` is a single string or holds something other than strings.
        ValueError: if a word is not in ``CAPTION_WORDS`` (or is a special token), or a caption does
            not fit in ``length``.
    """
    if isinstance(captions, str):
        raise TypeError("captions must be a sequence of strings, not one string; wrap it in a list")
    rows: list[list[int]] = []
    for index, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"caption {index} must be a str, got {type(caption).__name__}")
        words = caption.split(" ")
        unknown = [word for word in words if word not in WORD_IDS or WORD_IDS[word] <= EOS_ID]
        if unknown:
            raise ValueError(f"caption {index} has words outside the vocabulary {CAPTION_WORDS[EOS_ID + 1:]}: "
                             f"{unknown}")
        rows.append([BOS_ID, *(WORD_IDS[word] for word in words), EOS_ID])
    longest = max((len(row) for row in rows), default=2)
    if length is None:
        length = longest
    elif isinstance(length, bool) or not isinstance(length, int) or length < longest:
        raise ValueError(f"length must be an int >= {longest} (the longest caption with BOS and EOS), got {length!r}")
    ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row)
    return ids


def decode_captions(ids: torch.Tensor) -> list[str]:
    """Word ids back to captions: each row read up to its first ``EOS``, skipping ``BOS`` and ``PAD``.

    Args:
        ids: an integer tensor ``(batch, length)`` (or one row ``(length,)``) of ids into
            ``CAPTION_WORDS``, such as :func:`encode_captions` or a model's greedy output gives.

    Returns:
        One string per row (a list of one for a 1-D input).

    Raises:
        TypeError: if ``ids`` is not an integer tensor.
        ValueError: if ``ids`` is not 1-D or 2-D or holds an id outside ``0 .. len(CAPTION_WORDS) - 1``.
    """
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError("ids must be an integer torch.Tensor, got "
                        + (f"dtype {ids.dtype}" if isinstance(ids, torch.Tensor) else type(ids).__name__))
    if ids.ndim not in (1, 2):
        raise ValueError(f"ids must be (batch, length) or (length,), got shape {tuple(ids.shape)}")
    rows = ids.reshape(-1, ids.shape[-1]).tolist()
    captions = []
    for row in rows:
        if any(not 0 <= i < len(CAPTION_WORDS) for i in row):
            raise ValueError(f"ids must lie in 0 .. {len(CAPTION_WORDS) - 1}, got {row}")
        words = []
        for i in row:
            if i == EOS_ID:
                break
            if i not in (BOS_ID, PAD_ID):
                words.append(CAPTION_WORDS[i])
        captions.append(" ".join(words))
    return captions
