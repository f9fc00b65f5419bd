"""Small host-side helpers that the Triton kernels' launchers share: sizes of tiles and grids, and
the device to launch on. Plain Python and PyTorch: importing this module does not import Triton."""

from __future__ import annotations

import contextlib

import torch


def _next_power_of_2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``): a tile that holds ``n`` elements."""
    return 1 << max(0, n - 1).bit_length()


def _cdiv(n: int, block: int) -> int:
    """``ceil(n / block)`` in integers: how many blocks of ``block`` cover ``n``."""
    return (n + block - 1) // block


def _on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it t's (a no-op for CPU tensors, interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
