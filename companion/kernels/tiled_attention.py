"""FlashAttention's algorithm in plain PyTorch: attention over tiles of keys with an online softmax.

The same function as :func:`companion.kernels.attention` (same arguments, same masks, same result),
computed the way FlashAttention does it (Dao et al., "FlashAttention: Fast and Memory-Efficient Exact
Attention with IO-Awareness", 2022; the loop order of FlashAttention-2, Dao 2023): for each tile of
``block_q`` queries, walk over tiles of ``block_k`` keys and values and keep, per query row, three
running quantities instead of a whole row of scores:

    m  = the largest score seen so far
    l  = sum over seen keys of exp(s_j - m)
    o  = sum over seen keys of exp(s_j - m) * v_j

A new tile with scores ``s`` (masked ones are ``-inf``) updates them as::

    m' = max(m, max_j s_j),   c = exp(m - m')
    l' = c * l + sum_j exp(s_j - m')
    o' = c * o + sum_j exp(s_j - m') v_j

and after the last tile the output is ``o / l``. Rescaling by ``c`` whenever the maximum grows keeps
every exponential at most 1, as the ordinary "subtract the maximum" softmax does, without ever having
all the scores of a row at once. So the memory beyond the inputs and the output is one
``(block_q, block_k)`` tile of scores per head, instead of the ``(q_len, kv_len)`` matrix: linear in
the sequence length instead of quadratic. On a CPU it is slower than one big matrix product (a Python
loop over tiles); it exists to show the algorithm, and to measure its memory.

A row that sees no key keeps ``l = 0`` and returns zeros, as :func:`companion.kernels.attention` does.
Arguments are validated by the same rules (``ValueError`` naming what was expected); ``block_q`` and
``block_k`` must be positive ints. Differentiable through PyTorch's autograd (which, unlike the Triton
kernel's backward, stores the tiles it needs).
"""

from __future__ import annotations

import math

import torch

from companion.kernels.attention import _is_int, _validate


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    scale: float | None = None, window: int | None = None,
                    alibi_slopes: torch.Tensor | None = None, block_q: int = 64,
                    block_k: int = 64) -> torch.Tensor:
    """Attention ``(batch, q_heads, q_len, head_dim)`` by tiles with an online softmax.

    Arguments as :func:`companion.kernels.attention` (q ``(batch, q_heads, q_len, head_dim)``, k and v
    ``(batch, kv_heads, kv_len, head_dim)``, bottom-right causal alignment, sliding ``window``,
    ``alibi_slopes`` ``(q_heads,)``), plus the tile sizes ``block_q`` and ``block_k``. Computed in
    float32 (float64 for float64 inputs); returned in q's dtype.
    """
    _validate(q, k, v, causal, scale, window, alibi_slopes)
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"tiled_attention: expected {name} to be a positive int, got {value!r}")
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    # query heads that share a kv head sit side by side: (batch, kv_heads, group, q_len, head_dim)
    qg = q.to(compute).reshape(batch, kv_heads, group, q_len, head_dim)
    kc, vc = k.to(compute)[:, :, None], v.to(compute)[:, :, None]
    slopes = None if alibi_slopes is None else alibi_slopes.to(compute).reshape(kv_heads, group, 1, 1)
    outputs = []
    for q0 in range(0, q_len, block_q):
        q1 = min(q0 + block_q, q_len)
        q_tile = qg[:, :, :, q0:q1]
        m = torch.full((batch, kv_heads, group, q1 - q0, 1), float("-inf"), dtype=compute, device=q.device)
        l = torch.zeros_like(m)
        o = torch.zeros(batch, kv_heads, group, q1 - q0, head_dim, dtype=compute, device=q.device)
        for k0 in range(0, kv_len, block_k):
            k1 = min(k0 + block_k, kv_len)
            # p_i - j for this tile only, with query i at p_i = i + kv_len - q_len (bottom-right)
            offset = (torch.arange(q0, q1, device=q.device)[:, None] + (kv_len - q_len)
                      - torch.arange(k0, k1, device=q.device)[None, :])
            allowed = torch.ones_like(offset, dtype=torch.bool)
            if causal:
                allowed &= offset >= 0
            if window is not None:
                allowed &= (offset < window) if causal else (offset.abs() < window)
            if not bool(allowed.any()):
                continue  # a tile entirely masked changes nothing (FlashAttention skips it too)
            s = (q_tile @ kc[:, :, :, k0:k1].transpose(-1, -2)) * scale
            if slopes is not None:
                s = s - slopes * offset.abs().to(compute)
            s = s.masked_fill(~allowed, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            # rows with no allowed key so far keep m = -inf: use 0 there so exp() gives 0, not NaN
            safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(s - safe)
            correction = torch.exp(m - safe)
            l = correction * l + p.sum(dim=-1, keepdim=True)
            o = correction * o + p @ vc[:, :, :, k0:k1]
            m = m_new
        outputs.append(torch.where(l > 0, o / torch.where(l > 0, l, torch.ones_like(l)), torch.zeros_like(o)))
    out = torch.cat(outputs, dim=3) if outputs else qg.new_zeros(batch, kv_heads, group, 0, head_dim)
    return out.reshape(batch, q_heads, q_len, head_dim).to(q.dtype)
