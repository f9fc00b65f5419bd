"""Position-wise feed-forward layers: the GELU MLP and SwiGLU.

GELU MLP (Vaswani et al. 2017 with the GELU of Hendrycks and Gimpel 2016, as in GPT-2)::

    y = W_2 gelu(W_1 x + b_1) + b_2

SwiGLU (Shazeer, "GLU Variants Improve Transformer", 2020; used by Llama) gates one projection by
the SiLU of another::

    y = W_down (silu(W_gate x) * (W_up x))

The gate and up projections are stored as one matrix ``gate_up`` (one matrix multiply instead of
two); :meth:`SwiGLU.from_separate` builds it from the separate matrices a checkpoint holds.
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
    """``down(silu(gate(x)) * up(x))`` with ``gate`` and ``up`` fused into one projection."""

    def __init__(self, width: int, hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(width, 2 * hidden, bias=bias)
        self.down = nn.Linear(hidden, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)
        return self.down(F.silu(gate) * up)

    @torch.no_grad()
    def load_separate(self, gate: nn.Linear, up: nn.Linear, down: nn.Linear) -> None:
        """Copy the weights of separate ``gate``, ``up`` and ``down`` projections (as in Llama)."""
        self.gate_up.weight.copy_(torch.cat([gate.weight, up.weight], dim=0))
        if self.gate_up.bias is not None:
            self.gate_up.bias.copy_(torch.cat([gate.bias, up.bias], dim=0))
        self.down.weight.copy_(down.weight)
        if self.down.bias is not None:
            self.down.bias.copy_(down.bias)


FEEDFORWARDS = {"swiglu": SwiGLU, "gelu": GeluMLP}


def default_hidden(kind: str, width: int) -> int:
    """The usual hidden size: 4x width for GELU; about 8/3 x width, rounded up to 8, for SwiGLU."""
    if kind == "gelu":
        return 4 * width
    return 8 * ((8 * width // 3 + 7) // 8)
