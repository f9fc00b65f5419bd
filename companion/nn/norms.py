"""Normalisation layers: RMSNorm and LayerNorm.

LayerNorm (Ba, Kiros and Hinton, "Layer Normalization", 2016) centres and scales each vector::

    y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias

RMSNorm (Zhang and Sennrich, "Root Mean Square Layer Normalization", 2019) only rescales, which is
cheaper and, in practice, as good; Llama uses it::

    y = x / sqrt(mean(x^2) + eps) * weight

Both act on the last dimension of ``(..., width)`` inputs. RMSNorm computes in float32 and casts
back, as Llama's reference implementation does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension, with a learned gain."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm is the formula above as one fused operation
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # narrower types: normalise in float32 and round back before the gain, as Llama does
        normalized = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normalized.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm(nn.LayerNorm):
    """Layer normalisation over the last dimension (PyTorch's, with the book's argument names)."""

    def __init__(self, width: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__(width, eps=eps, bias=bias)


NORMS = {"rmsnorm": RMSNorm, "layernorm": LayerNorm}


def make_norm(kind: str, width: int, eps: float) -> nn.Module:
    """``"rmsnorm"`` or ``"layernorm"`` of the given width."""
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)}, got {kind!r}")
    return NORMS[kind](width, eps=eps)
