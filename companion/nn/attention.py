"""The attention layer: projections, rotary positions, the key-value cache, and the attention operation.

Multi-head attention (Vaswani et al. 2017) projects the input ``x`` ``(batch, seq, width)`` to
queries, keys and values for each head, attends, concatenates the heads and projects back::

    q_h = x W_q^h,  k_g = x W_k^g,  v_g = x W_v^g
    o_h = softmax(q_h k_g^T / sqrt(head_dim) + mask) v_g      with g = h // (n_heads / n_kv_heads)
    y   = concat_h(o_h) W_o

With ``n_kv_heads == n_heads`` this is multi-head attention (MHA); with fewer key-value heads,
each shared by a group of query heads, it is grouped-query attention (GQA, Ainslie et al. 2023);
with one key-value head, multi-query attention (MQA, Shazeer 2019). One class covers all three.
The three input projections are one matrix ``qkv`` (one matrix multiply instead of three).

Positions enter either by rotating queries and keys (``rope``, Su et al. 2021) or, with
``alibi_slopes``, as a bias on the scores (ALiBi, Press et al. 2022)::

    S[h, i, j] = q_h,i . k_g,j / sqrt(head_dim)  -  slope_h * |p_i - j|

where query ``i`` sits at absolute position ``p_i`` (with a cache: after the cached keys), so a
decoding step sees the same biases as the full forward.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from companion.kernels import attention, attention_mask, rotary
from companion.nn.cache import KVCache
from companion.nn.positions import RotaryEmbedding, apply_rotary


def use_rotary_kernel(x: torch.Tensor) -> bool:
    """Whether :meth:`Attention.project` rotates through :func:`companion.kernels.rotary` (CUDA tensors).

    On the CPU the layer keeps its single elementwise expression over queries and keys together
    (the same arithmetic as the kernel's reference, without its argument checks).
    """
    return x.is_cuda


class Attention(nn.Module):
    """Causal self-attention with ``n_heads`` query heads and ``n_kv_heads`` key-value heads.

    ``forward(x, positions, cache=None, return_weights=False)``: ``x`` is ``(batch, seq, width)``,
    ``positions`` the absolute positions of those tokens ``(seq,)``. Returns ``(y, weights)`` with
    ``y`` ``(batch, seq, width)`` and ``weights`` the attention probabilities
    ``(batch, n_heads, seq, keys)`` when ``return_weights`` is set (else ``None``).
    ``alibi_slopes`` ``(n_heads,)`` (see :func:`companion.nn.positions.alibi_slopes`) is kept as a
    buffer, so it follows ``.to(device)`` (and ``.to(dtype)``).
    """

    def __init__(self, width: int, n_heads: int, n_kv_heads: int | None = None, head_dim: int | None = None,
                 *, bias: bool = False, rope: RotaryEmbedding | None = None, window: int | None = None,
                 causal: bool = True, layer_index: int = 0, alibi_slopes: torch.Tensor | None = None) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        head_dim = width // n_heads if head_dim is None else head_dim
        if n_heads < 1 or n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_heads must be a positive multiple of n_kv_heads, got {n_heads} and {n_kv_heads}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.window, self.causal, self.layer_index = window, causal, layer_index
        self.rope = rope
        if alibi_slopes is not None and (not isinstance(alibi_slopes, torch.Tensor)
                                         or tuple(alibi_slopes.shape) != (n_heads,)
                                         or not alibi_slopes.is_floating_point()):
            got = (f"{tuple(alibi_slopes.shape)} {alibi_slopes.dtype}" if isinstance(alibi_slopes, torch.Tensor)
                   else type(alibi_slopes).__name__)
            raise ValueError(f"alibi_slopes must be a floating-point tensor of shape (n_heads,) = ({n_heads},), "
                             f"got {got}")
        if alibi_slopes is None:
            self.alibi_slopes = None  # a plain attribute: the path without ALiBi reads it at no cost
        else:
            self.register_buffer("alibi_slopes", alibi_slopes, persistent=False)
        self.qkv = nn.Linear(width, (n_heads + 2 * n_kv_heads) * head_dim, bias=bias)
        self.out = nn.Linear(n_heads * head_dim, width, bias=bias)

    def project(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ``(batch, n_heads, seq, head_dim)``, keys and values ``(batch, n_kv_heads, seq, head_dim)``."""
        batch, seq, _ = x.shape
        heads = self.qkv(x).view(batch, seq, self.n_heads + 2 * self.n_kv_heads, self.head_dim)
        qk, v = heads.split((self.n_heads + self.n_kv_heads, self.n_kv_heads), dim=2)
        if self.rope is not None:  # queries and keys rotate by the same angles: one operation for both
            cos, sin = self.rope(positions, dtype=qk.dtype)
            if use_rotary_kernel(qk):  # on a GPU: companion.kernels.rotary, one Triton launch for q and k
                q, k = rotary(*qk.split((self.n_heads, self.n_kv_heads), dim=2), cos, sin)
                return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            qk = apply_rotary(qk, cos[:, None, :], sin[:, None, :])
        q, k = qk.split((self.n_heads, self.n_kv_heads), dim=2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq, _ = x.shape
        q, k, v = self.project(x, positions)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)
        o = attention(q, k, v, causal=self.causal, window=self.window, alibi_slopes=self.alibi_slopes)
        y = self.out(o.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim))
        weights = self.weights(q, k) if return_weights else None
        return y, weights

    def weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The attention probabilities ``(batch, n_heads, q_len, kv_len)``, computed explicitly."""
        group = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(group, dim=1)
        scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(self.head_dim)
        if self.alibi_slopes is not None:  # query i at p_i = i + kv_len - q_len (after the cache)
            q_len, kv_len = q.shape[2], k.shape[2]
            p = torch.arange(q_len, device=q.device) + (kv_len - q_len)
            distance = (p[:, None] - torch.arange(kv_len, device=q.device)[None, :]).abs().float()
            scores = scores - self.alibi_slopes.float()[:, None, None] * distance
        allowed = attention_mask(q.shape[2], k.shape[2], causal=self.causal, window=self.window, device=q.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
        return torch.nan_to_num(scores.softmax(dim=-1), nan=0.0)
