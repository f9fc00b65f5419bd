"""Where a token is: learned and sinusoidal position embeddings, and rotary embeddings (RoPE).

* Learned positions (GPT-2): a table of ``max_positions`` vectors added to the token embeddings.
* Sinusoidal positions (Vaswani et al. 2017)::

      PE[p, 2i] = sin(p / base^(2i/width)),   PE[p, 2i+1] = cos(p / base^(2i/width))

* Rotary embeddings (Su et al., "RoFormer", 2021): instead of adding anything, rotate each query and
  key, pair of coordinates by pair of coordinates, by an angle proportional to its position, so that
  ``q_m . k_n`` depends on ``m - n`` only. With ``theta_i = base^(-2i/head_dim)`` and the
  "rotate half" pairing used by Llama and Hugging Face (coordinate ``i`` is paired with
  ``i + head_dim/2``)::

      x_rot = x * cos(p theta) + rotate_half(x) * sin(p theta),   rotate_half([a, b]) = [-b, a]

Later chapters add RoPE's scalings (interpolation, NTK-aware, YaRN...) by changing how the inverse
frequencies are computed; :class:`RotaryEmbedding` takes them as an argument.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def rope_inverse_frequencies(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """``theta_i = base^(-2i/head_dim)`` for ``i = 0 .. head_dim/2 - 1``, float32, ``(head_dim // 2,)``."""
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head_dim >= 2, got {head_dim}")
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[a, b] -> [-b, a]`` on the last dimension, split in two halves."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``(..., seq, head_dim)``, or any layout that ``cos``/``sin`` broadcast against) by RoPE's angles."""
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """Cosines and sines of ``position * theta_i`` for RoPE, cached up to the longest position seen.

    ``inv_freq`` (default: :func:`rope_inverse_frequencies`) and ``attention_factor`` (a scale on cos
    and sin, 1 for plain RoPE) are the hooks through which RoPE's scalings plug in.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, *, inv_freq: torch.Tensor | None = None,
                 attention_factor: float = 1.0, max_positions: int = 2048) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.attention_factor = attention_factor
        inv_freq = rope_inverse_frequencies(head_dim, base) if inv_freq is None else inv_freq.float()
        if inv_freq.shape != (head_dim // 2,):
            raise ValueError(f"inv_freq must have shape ({head_dim // 2},), got {tuple(inv_freq.shape)}")
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._build(max_positions)
        self._last: tuple | None = None  # (positions, dtype, cos, sin) of the last call

    def _build(self, length: int) -> None:
        positions = torch.arange(length, dtype=torch.int64, device=self.inv_freq.device).float()
        freqs = positions[:, None] * self.inv_freq[None, :]  # (length, head_dim/2), as Llama computes it
        angles = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", angles.cos() * self.attention_factor, persistent=False)
        self.register_buffer("sin_cached", angles.sin() * self.attention_factor, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos`` and ``sin`` for integer ``positions`` ``(seq,)``, each ``(seq, head_dim)``.

        Every layer of a model asks for the same positions in one forward pass; the answer for the
        last ``positions`` tensor is kept, so it is computed once per pass.
        """
        last = self._last
        if last is not None and last[0] is positions and last[1] == dtype:
            return last[2], last[3]
        needed = int(positions.max()) + 1 if positions.numel() else 0
        if needed > self.cos_cached.shape[0]:
            self._build(max(needed, 2 * self.cos_cached.shape[0]))
        cos, sin = self.cos_cached[positions].to(dtype), self.sin_cached[positions].to(dtype)
        self._last = (positions, dtype, cos, sin)
        return cos, sin


class LearnedPositions(nn.Module):
    """A learned vector per position, added to the token embeddings: ``(seq,)`` -> ``(seq, width)``."""

    def __init__(self, max_positions: int, width: int) -> None:
        super().__init__()
        self.table = nn.Embedding(max_positions, width)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        if positions.numel() and int(positions.max()) >= self.table.num_embeddings:
            raise ValueError(f"learned positions cover 0..{self.table.num_embeddings - 1}, "
                             f"got position {int(positions.max())}")
        return self.table(positions)


def sinusoidal_table(length: int, width: int, base: float = 10000.0) -> torch.Tensor:
    """The ``(length, width)`` table of Vaswani et al.: sines on even, cosines on odd coordinates."""
    positions = torch.arange(length, dtype=torch.float64)[:, None]
    rates = torch.exp(-math.log(base) * torch.arange(0, width, 2, dtype=torch.float64) / width)
    table = torch.zeros(length, width, dtype=torch.float64)
    table[:, 0::2] = torch.sin(positions * rates)
    table[:, 1::2] = torch.cos(positions * rates[: width // 2])
    return table.float()


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position vectors, added to the token embeddings: ``(seq,)`` -> ``(seq, width)``."""

    def __init__(self, width: int, base: float = 10000.0, max_positions: int = 2048) -> None:
        super().__init__()
        self.width, self.base = width, base
        self.register_buffer("table", sinusoidal_table(max_positions, width, base), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        needed = int(positions.max()) + 1 if positions.numel() else 0
        if needed > self.table.shape[0]:
            self.table = sinusoidal_table(max(needed, 2 * self.table.shape[0]), self.width, self.base).to(self.table.device)
        return self.table[positions]
