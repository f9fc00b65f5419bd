"""Position-wise feed-forward layers: the GELU MLP and SwiGLU.

GELU MLP (Vaswani et al. 2017 with the GELU of Hendrycks and Gimpel 2016, as in GPT-2)::

    y = W_2 gelu(W_1 x + b_1) + b_2

SwiGLU (Shazeer, "GLU Variants Improve Transformer", 2020; used by Llama) gates one projection by
the SiLU of another::

    y = W_down (silu(W_gate x) * (W_up x))

The gate and up projections are kept as two matrices: fusing them into one wider matrix multiply
was measured to be about 9% *slower* on a CPU (forward and backward at the shapes of the book's
benchmark), the backward pass of the split costing more than the one larger multiply saves.
Inputs are ``(..., width)``; outputs have the same shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeluMLP(nn.Module):
    """Two linear layers with a GELU between them."""

    def __init__(self, width: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.up = nn.Linear(width, hidden, bias=bias)
        self.down = nn.Linear(hidden, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``."""

    def __init__(self, width: int, hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate = nn.Linear(width, hidden, bias=bias)
        self.up = nn.Linear(width, hidden, bias=bias)
        self.down = nn.Linear(hidden, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))

    @torch.no_grad()
    def load_separate(self, gate: nn.Linear, up: nn.Linear, down: nn.Linear) -> None:
        """Copy the weights of ``gate``, ``up`` and ``down`` projections (as a Llama checkpoint holds them)."""
        for mine, theirs in ((self.gate, gate), (self.up, up), (self.down, down)):
            mine.weight.copy_(theirs.weight)
            if mine.bias is not None:
                mine.bias.copy_(theirs.bias)


FEEDFORWARDS = {"swiglu": SwiGLU, "gelu": GeluMLP}


def default_hidden(kind: str, width: int) -> int:
    """The usual hidden size: 4x width for GELU; about 8/3 x width, rounded up to 8, for SwiGLU."""
    if kind == "gelu":
        return 4 * width
    return 8 * ((8 * width // 3 + 7) // 8)
