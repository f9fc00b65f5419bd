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

* RoPE's scalings (position interpolation, NTK-aware, YaRN, LongRoPE, Llama 3) change how the
  inverse frequencies are computed: :mod:`companion.nn.rope_scaling`, passed to
  :class:`RotaryEmbedding` as ``scaling``.
* ALiBi (Press et al., "Train Short, Test Long: Attention with Linear Biases", 2022) adds no vector
  at all: each head ``h`` subtracts ``slope_h * |i - j|`` from its attention scores
  (:func:`alibi_slopes`; the attention kernel adds the bias).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from companion.nn.rope_scaling import RopeScaling, rope_frequencies


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

    ``scaling`` (a :class:`~companion.nn.rope_scaling.RopeScaling`) picks the inverse frequencies
    and the attention factor (a scale on cos and sin) with :func:`~companion.nn.rope_scaling.rope_frequencies`;
    without it, ``inv_freq`` (default: :func:`rope_inverse_frequencies`) and ``attention_factor``
    (default 1, plain RoPE) may be given directly.

    The ``"dynamic"`` and ``"longrope"`` scalings depend on the sequence length ``n`` = max position
    + 1 of each call: the inverse frequencies are recomputed whenever ``n`` moves to a length that
    gives different ones (dynamic: every ``n`` beyond the original length; LongRoPE: crossing it),
    and the cos/sin cache is rebuilt. For ``n`` up to the original length both use the frequencies
    computed at construction. For dynamic NTK beyond it, the frequencies are those that
    transformers' ``dynamic_rope_update`` computes in the forward pass (with ``n`` as a 0-dim
    tensor, see :func:`~companion.nn.rope_scaling.rope_frequencies`).

    One intentional difference: this is stateless, a call's frequencies depend on its own ``n``
    only. transformers' ``dynamic_rope_update`` keeps, for dynamic NTK, the frequencies of the
    largest ``n`` seen so far until a call with ``n`` below the original length resets them, so a
    later call with ``L <= n < max n seen`` uses a larger NTK base there than here. Starting from a
    fresh model (or one reset by a short call), a full forward agrees, and so does decoding with a
    cache, where ``n`` only grows.

    With a key-value cache, ``n`` is the cached length plus the new tokens, so a decoding step
    rotates its query and key with the frequencies for its own ``n``; keys already in the cache
    keep the rotation they were stored with and are not recomputed (as in transformers).
    """

    def __init__(self, head_dim: int, base: float = 10000.0, *, inv_freq: torch.Tensor | None = None,
                 attention_factor: float = 1.0, max_positions: int = 2048,
                 scaling: RopeScaling | None = None) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.scaling = scaling
        if scaling is not None and not isinstance(scaling, RopeScaling):
            raise ValueError(f"scaling must be a RopeScaling or None, got {type(scaling).__name__}")
        if scaling is not None and scaling.kind != "default":
            if inv_freq is not None or attention_factor != 1.0:
                raise ValueError("give either scaling or inv_freq / attention_factor, not both")
            inv_freq, attention_factor = rope_frequencies(head_dim, base, scaling)
        self.attention_factor = attention_factor
        inv_freq = rope_inverse_frequencies(head_dim, base) if inv_freq is None else inv_freq.float()
        if inv_freq.shape != (head_dim // 2,):
            raise ValueError(f"inv_freq must have shape ({head_dim // 2},), got {tuple(inv_freq.shape)}")
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._regime = scaling.regime(0) if scaling is not None else None  # the length regime of inv_freq
        self._build(max_positions)
        self._last: tuple | None = None  # (positions, dtype, cos, sin) of the last call

    def _build(self, length: int) -> None:
        positions = torch.arange(length, dtype=torch.int64, device=self.inv_freq.device).float()
        freqs = positions[:, None] * self.inv_freq[None, :]  # (length, head_dim/2), as Llama computes it
        angles = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", angles.cos() * self.attention_factor, persistent=False)
        self.register_buffer("sin_cached", angles.sin() * self.attention_factor, persistent=False)

    def _follow_length(self, length: int) -> None:
        """For length-dependent scalings: switch to ``length``'s frequencies if they differ, and rebuild the cache."""
        regime = self.scaling.regime(length)
        if regime == self._regime:
            return
        if regime == self.scaling.regime(0):  # back to the original length's frequencies, as at construction
            seq_len = None
        elif self.scaling.kind == "dynamic":  # transformers' forward passes max(position_ids) + 1 as a tensor
            seq_len = torch.tensor(length)
        else:
            seq_len = length
        inv_freq, self.attention_factor = rope_frequencies(self.head_dim, self.base, self.scaling, seq_len=seq_len)
        self.inv_freq = inv_freq.to(self.inv_freq.device)
        self._regime = regime
        # dynamic NTK changes again at the next longer length: build just what is needed
        self._build(length if self.scaling.kind == "dynamic" else max(length, self.cos_cached.shape[0]))

    def forward(self, positions: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos`` and ``sin`` for integer ``positions`` ``(seq,)``, each ``(seq, head_dim)``.

        Every layer of a model asks for the same positions in one forward pass; the answer for the
        last ``positions`` tensor is kept, so it is computed once per pass.
        """
        last = self._last
        if last is not None and last[0] is positions and last[1] == dtype:
            return last[2], last[3]
        needed = int(positions.max()) + 1 if positions.numel() else 0
        if self.scaling is not None and self.scaling.depends_on_length:
            self._follow_length(needed)
        if needed > self.cos_cached.shape[0]:
            self._build(max(needed, 2 * self.cos_cached.shape[0]))
        cos, sin = self.cos_cached[positions].to(dtype), self.sin_cached[positions].to(dtype)
        self._last = (positions, dtype, cos, sin)
        return cos, sin


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes ``(n_heads,)``, float32 (Press et al. 2022).

    For ``n`` a power of two, the geometric sequence ``m_h = 2^(-8h/n)``, ``h = 1 .. n``
    (8 heads: 1/2, 1/4, ..., 1/256). Otherwise, with ``c`` the largest power of two below ``n``: the
    ``c`` slopes for ``c`` heads, then every other slope of the ``2c``-head sequence,
    ``2^(-8h/(2c))`` for ``h = 1, 3, 5, ...``, for the remaining ``n - c`` heads (the paper's code,
    and BLOOM's ``build_alibi_tensor``). Head ``h`` then adds ``-m_h |i - j|`` to its scores.
    """
    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"ALiBi needs a positive int number of heads, got {n_heads!r}")
    closest = 2 ** math.floor(math.log2(n_heads))
    exponents = [8 * h / closest for h in range(1, closest + 1)]
    exponents += [8 * h / (2 * closest) for h in range(1, 2 * (n_heads - closest), 2)]
    return torch.tensor([2.0 ** -e for e in exponents], dtype=torch.float64).float()


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
