"""Small images: scikit-learn's bundled handwritten digits, and a seeded train/validation split.

The digits are the 1797 8x8 images of the UCI "Optical Recognition of Handwritten Digits" set
(Alpaydin and Kaynak, 1998) that scikit-learn ships inside its own package
(``sklearn.datasets.load_digits``): nothing is downloaded. A vision transformer (Dosovitskiy et al.
2021, "An Image is Worth 16x16 Words") cuts an image into ``patch x patch`` squares and reads them as
a sequence; upscaling the digits (``size=16`` or ``32``) lets patch sizes 2, 4 and 8 give sequences
of different lengths from the same pictures.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

DIGITS_SIZE = 8  # the digits' side in pixels, as scikit-learn ships them
DIGITS_MAX = 16.0  # their grey levels are the integers 0 .. 16
UPSCALE_MODES = ("nearest", "bilinear")


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - scikit-learn is in requirements.txt
        raise ImportError("load_digits_images needs scikit-learn (pip install scikit-learn), which ships the "
                          "digits inside its package") from error
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / DIGITS_MAX
    return images, torch.as_tensor(bunch.target, dtype=torch.long)


def load_digits_images(*, size: int = DIGITS_SIZE, mode: str = "nearest") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled handwritten digits as ``(n, 1, size, size)`` float images in ``[0, 1]``.

    The 1797 images (about 180 of each digit) come in scikit-learn's order; split them with
    :func:`train_validation_split`. Grey levels ``0 .. 16`` are divided by 16, so ``0`` is the
    background and ``1`` full ink. With ``size != 8`` the images are resized by
    ``torch.nn.functional.interpolate``: ``"nearest"`` repeats pixels (exactly, when ``size`` is a
    multiple of 8), ``"bilinear"`` interpolates them; both keep values in ``[0, 1]``.

    Args:
        size: side of the returned images in pixels (8 is the original; 16 or 32 give more patches).
        mode: how to resize, ``"nearest"`` or ``"bilinear"``; unused when ``size == 8``.

    Returns:
        ``images``, a ``torch.float32`` tensor ``(1797, 1, size, size)``, and ``labels``, a
        ``torch.long`` tensor ``(1797,)`` of the digits ``0 .. 9``.

    Raises:
        ValueError: if ``size`` is not a positive int or ``mode`` is not one of ``UPSCALE_MODES``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (8 is the original, 16 or 32 upscale), got {size!r}")
    if mode not in UPSCALE_MODES:
        raise ValueError(f"mode must be one of {UPSCALE_MODES}, got {mode!r}")
    images, labels = _digits()
    if size == DIGITS_SIZE:
        return images.clone(), labels.clone()
    if mode == "nearest":
        resized = F.interpolate(images, size=(size, size), mode="nearest")
    else:
        resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return resized, labels.clone()


def train_validation_split(*tensors: torch.Tensor, validation_fraction: float = 0.2,
                           generator: torch.Generator | None = None
                           ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Split tensors that share their first dimension into a random training and validation part.

    The rows are shuffled by one permutation drawn from ``generator`` (so images and their labels
    stay paired), and the first ``round(validation_fraction * n)`` rows of the shuffle go to
    validation, the rest to training. The same seed gives the same split on every machine. Works for
    any data set here: digits, waveforms, scenes.

    Args:
        *tensors: one or more tensors with the same size ``n`` of their first dimension.
        validation_fraction: share of the rows held out, strictly between 0 and 1.
        generator: the random generator that draws the permutation.

    Returns:
        ``(train, validation)``: two tuples holding, for each input tensor in order, its training
        rows and its validation rows. Both parts are non-empty.

    Raises:
        TypeError: if an argument is not a tensor.
        ValueError: if no tensor is given, the first dimensions differ, ``validation_fraction`` is not
            strictly between 0 and 1, or ``n`` is too small to give both parts a row.

    Example::

        (train_x, train_y), (val_x, val_y) = train_validation_split(images, labels, generator=g)
    """
    if not tensors:
        raise ValueError("train_validation_split needs at least one tensor")
    for index, tensor in enumerate(tensors):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"argument {index} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.ndim == 0:
            raise ValueError(f"argument {index} must have a first dimension to split, got a 0-d tensor")
    sizes = [tensor.shape[0] for tensor in tensors]
    if len(set(sizes)) != 1:
        raise ValueError(f"all tensors must have the same first dimension, got {sizes}")
    if (isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float))
            or not 0 < validation_fraction < 1):
        raise ValueError(f"validation_fraction must be a number strictly between 0 and 1, got {validation_fraction!r}")
    n = sizes[0]
    held_out = round(validation_fraction * n)
    if not 0 < held_out < n:
        raise ValueError(f"validation_fraction={validation_fraction} of n={n} rows leaves {held_out} for validation "
                         f"and {n - held_out} for training; both need at least one")
    order = torch.randperm(n, generator=generator)
    validation_rows, train_rows = order[:held_out], order[held_out:]
    return (tuple(tensor[train_rows] for tensor in tensors),
            tuple(tensor[validation_rows] for tensor in tensors))
