"""The Triton path of :func:`companion.kernels.attention`: FlashAttention-2, forward and backward.

What is computed is exactly :func:`companion.kernels.attention.attention_reference`, for each batch
element and query head ``h`` (kv head ``g = h // group``, ``group = q_heads // kv_heads``)::

    S[i, j] = scale * q[h, i] . k[g, j]  -  slope[h] * |p_i - j|     (ALiBi term optional)
    P[i, :] = softmax over the keys j that query i may see
    out[h, i] = sum_j P[i, j] v[g, j]

with ``q`` ``(batch, q_heads, q_len, head_dim)``, ``k`` and ``v`` ``(batch, kv_heads, kv_len,
head_dim)``, query ``i`` at ``p_i = i + kv_len - q_len`` (bottom-right), causal ``j <= p_i``, the
sliding window ``p_i - W < j <= p_i`` with causal and ``|p_i - j| < W`` without, and zeros (and zero
gradient) for a query that sees no key. How it is computed is FlashAttention (Dao et al.,
"FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness", 2022) with the work
split of FlashAttention-2 (Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work
Partitioning", 2023):

- **Forward** (:func:`_forward_kernel`). One program per tile of ``BLOCK_M`` queries of one head.
  It keeps the tile of queries in registers and walks over tiles of ``BLOCK_N`` keys and values
  with the online softmax (the plain-PyTorch version, :mod:`companion.kernels.tiled_attention`,
  explains it): per query row a running maximum ``m``, a running sum ``l`` and an unnormalised
  output ``acc``, rescaled by ``exp(m_old - m_new)`` whenever the maximum grows. The
  ``(q_len, kv_len)`` matrix of scores never exists in memory: only one ``(BLOCK_M, BLOCK_N)``
  tile at a time, in registers. Key tiles that the mask hides entirely (causal, window) are not
  visited at all, so causal attention costs about half. Besides the output it writes one number per
  query row, the log-sum-exp ``lse_i = log sum_j exp(S[i, j])`` (kept in base 2, see below), which
  is all the backward pass needs to rebuild any tile of ``P`` as ``exp(S - lse)``.
- **Backward** (FlashAttention-2, section 3.1.2). Given ``dO = dL/d out``, with ``P`` rebuilt tile
  by tile from the saved ``lse``::

      dV    = P^T dO                            (out = P V)
      dP    = dO V^T
      delta = rowsum(dO * O)  = rowsum(P * dP)  (one number per query row)
      dS    = P * (dP - delta)                  (the softmax's backward, row by row)
      dQ    = dS K * scale
      dK    = dS^T Q * scale

  ``delta`` comes first, from a small kernel (:func:`_delta_kernel`), computed from the output in
  float32 (kept for the backward pass; :class:`_FlashAttentionFunction` says why). Then one kernel
  (:func:`_dkdv_kernel`) owns a tile of keys of one kv head: it walks over the query tiles that see
  it, for every query head of its group (grouped-query attention: the gradient of a shared key is
  the sum over the heads that read it), and writes ``dK`` and ``dV`` once, with no atomics. A
  second kernel (:func:`_dq_kernel`) owns a tile of queries and walks over key tiles, like the
  forward pass, for ``dQ``. (FlashAttention-2's own code computes ``dQ`` in the first kernel with
  atomic additions; two kernels recompute ``P`` twice but keep every write deterministic.)

Details shared by all kernels:

- Grouped-query heads are never copied: query head ``h`` reads the memory of kv head
  ``h // group`` through the strides.
- The exponentials are base 2 (``exp2``, one instruction on a GPU): scores are multiplied by
  ``log2(e)`` together with ``scale`` (``qk_scale``), and ``lse`` is stored in base 2. ALiBi's bias
  is scaled by ``log2(e)`` likewise.
- A query row that sees no key keeps ``l = 0``: its output is zeros and its ``lse`` is ``+inf``
  (the log of an empty sum); the backward pass masks its pairs like the forward pass, so that its
  ``P``, ``dS`` and gradients are exactly zero. A running maximum of ``-inf`` (no key seen yet) is
  replaced by 0 before it is subtracted, so that no ``-inf - (-inf)`` (NaN) ever appears.
- Any ``q_len``, ``kv_len`` (not only multiples of the tiles; ``kv_len == 0`` and ``q_len == 0``
  never reach a kernel) and any strides (they are passed to the kernels); ``head_dim`` up to 256,
  padded to the next power of two (at least 16, the smallest ``tl.dot``) with masked loads.
- float16 and bfloat16 are multiplied in their own precision on tensor cores and accumulated in
  float32 (the tile of probabilities is rounded to the inputs' dtype before it multiplies ``V``, as
  FlashAttention does); float32 uses IEEE float32 products (``input_precision="ieee"``, not
  TF32), so that it matches the reference to about 1e-6. The output is rounded to q's dtype once.
- Tile sizes are autotuned on a GPU (``triton.autotune`` over a few configurations, keyed on the
  lengths rounded up to powers of two, the padded head dim, the dtype and the mask); under Triton's
  interpreter each kernel has one small fixed configuration (:data:`INTERPRETER_BLOCKS`).

Reading the kernels. With ``TRITON_INTERPRET=1`` set before triton is imported, the kernels run as
ordinary Python on CPU tensors (:func:`companion.device.triton_interpreter`), one program after
another: a ``print(s)`` placed in a kernel shows a tile's values, and a ``breakpoint()`` stops
there (a tile ``x`` keeps its values in ``x.handle.data``, a NumPy array), so that each line can be
followed on a small example (the tests run that way)::

    TRITON_INTERPRET=1 python -c "import torch; from companion.kernels import attention; \
        q = k = v = torch.randn(1, 1, 5, 16); print(attention(q, k, v, causal=True, backend='triton'))"

Triton is imported on first use (:func:`_triton_kernel`), so this module imports where Triton is
not installed. Inputs are validated by :func:`companion.kernels.attention.attention` before they
get here; :func:`unsupported` says why valid inputs cannot take this path (float64, head_dim above
256, ALiBi slopes that require grad: this path gives them no gradient, a device Triton cannot run
on), and ``attention`` turns that into a ``ValueError`` for ``backend="triton"`` or takes the
reference for ``backend="auto"``.
"""

from __future__ import annotations

import math

import torch

from companion.device import triton_installed, triton_interpreter
from companion.kernels._util import _cdiv, _next_power_of_2, _on_device

__all__ = ["DTYPES", "MAX_HEAD_DIM", "attention_triton", "unsupported"]

# the dtypes the kernels take (float64: the reference)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# the largest head_dim: a (BLOCK, head_dim) tile of each of q, k, v and the accumulators must fit
# in registers and shared memory
MAX_HEAD_DIM = 256
LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e))

# the tile sizes (BLOCK_M queries, BLOCK_N keys) under Triton's interpreter: small, so that short
# test sequences span several tiles, and different for queries and keys, so that a mix-up shows
INTERPRETER_BLOCKS = {"forward": (16, 32), "delta": (16, 16), "dkdv": (32, 16), "dq": (16, 32)}
# on a GPU, the candidates that triton.autotune times: (BLOCK_M, BLOCK_N, num_warps, num_stages);
# configurations that do not fit (shared memory, at head_dim 256) are skipped by the autotuner
GPU_CONFIGS = {
    "forward": [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 3),
                (64, 32, 4, 2)],
    "delta": [(64, 16, 4, 1), (128, 16, 4, 1)],
    "dkdv": [(32, 128, 8, 3), (64, 128, 8, 3), (32, 64, 4, 3), (64, 64, 4, 3), (32, 64, 4, 2),
             (16, 32, 4, 2)],
    "dq": [(128, 32, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (32, 32, 4, 2)],
}


# --------------------------------------------------------------------------------------------------
# The Triton kernels. `triton` and `tl` are bound on first use (_triton_kernel), so that importing
# this module never imports triton; the annotations are strings (`from __future__ import
# annotations`), which Triton reads as such, and a kernel's globals are looked up when it is compiled.
# --------------------------------------------------------------------------------------------------

triton = None  # the triton module, once _triton_kernel has imported it
tl = None  # triton.language, likewise
_dot = None  # the jitted _dot_source, which the kernels call as _dot
_KERNELS = None  # name -> the autotuned kernel, built once


def _dot_source(a, b, acc, IEEE: tl.constexpr, WIDEN: tl.constexpr):
    """``acc + a @ b`` in float32 (``acc`` may be None): IEEE float32 for float32 operands.

    WIDEN is set only under Triton's interpreter for bfloat16, whose ``tl.dot`` there (triton 3.9)
    multiplies the raw 16-bit patterns as integers: the operands are widened to float32 first, which
    is exact, so the result is the tensor core's (bfloat16 products, float32 sums).
    """
    if WIDEN:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


def _forward_kernel(q_ptr, k_ptr, v_ptr, slopes_ptr, out_ptr, out32_ptr, lse_ptr,
                    q_sb, q_sh, q_sm, q_sd, k_sb, k_sh, k_sn, k_sd, v_sb, v_sh, v_sn, v_sd,
                    o_sb, o_sh, o_sm,
                    q_heads, group, q_len, kv_len, head_dim, window, qk_scale, q_bucket, kv_bucket,
                    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_ALIBI: tl.constexpr,
                    WRITE_F32: tl.constexpr, IEEE: tl.constexpr, WIDEN: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program: queries ``[m0, m0 + BLOCK_M)`` of one (batch, query head); grid ``(cdiv(q_len,
    BLOCK_M), batch * q_heads)``. Writes ``out`` for those rows, with WRITE_F32 also their float32
    values to ``out32`` (contiguous, for the backward pass's delta), and ``lse`` (base 2; +inf for a
    row that sees no key). ``q_bucket`` and ``kv_bucket`` are only the autotuner's key."""
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // q_heads).to(tl.int64)
    h = bh % q_heads
    g = (h // group).to(tl.int64)  # the kv head this query head reads (grouped-query attention)
    h = h.to(tl.int64)
    offset = kv_len - q_len  # p_i - i
    rows = m0 + tl.arange(0, BLOCK_M)  # query indices i
    pos = rows + offset  # their positions p_i (bottom-right alignment)
    cols = tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim  # head_dim padded to BLOCK_D: the padding loads zeros and is never stored

    q_tile = tl.load(q_ptr + b * q_sb + h * q_sh + rows[:, None] * q_sm + d[None, :] * q_sd,
                     mask=(rows < q_len)[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    k_base = k_ptr + b * k_sb + g * k_sh
    v_base = v_ptr + b * v_sb + g * v_sh
    if HAS_ALIBI:
        slope = tl.load(slopes_ptr + h) * 1.4426950408889634  # in base-2 units, like the scores

    # the key tiles this query tile can see: [lo, hi), lo rounded down to a tile boundary
    lo = 0
    hi = kv_len
    if CAUSAL:  # j <= p_i, largest for the tile's last row
        hi = tl.minimum(hi, m0 + BLOCK_M + offset)
    if HAS_WINDOW:
        lo = tl.maximum(0, m0 + offset - window + 1)  # j > p_i - W, smallest for the first row
        if not CAUSAL:  # j < p_i + W (the band's upper half)
            hi = tl.minimum(hi, m0 + BLOCK_M - 1 + offset + window)
    lo = (lo // BLOCK_N) * BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running maximum of the scores (base 2)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # running sum of exp2(s - m_i) v_j
    for n0 in range(lo, hi, BLOCK_N):
        keys = n0 + cols  # key indices j
        k_t = tl.load(k_base + keys[None, :] * k_sn + d[:, None] * k_sd,
                      mask=(keys < kv_len)[None, :] & d_ok[:, None], other=0.0)  # K^T: (BLOCK_D, BLOCK_N)
        s = _dot(q_tile, k_t, None, IEEE, WIDEN) * qk_scale  # scale * q.k * log2(e): (BLOCK_M, BLOCK_N)
        distance = pos[:, None] - keys[None, :]  # p_i - j
        if HAS_ALIBI:
            s -= slope * tl.abs(distance).to(tl.float32)
        allowed = (keys < kv_len)[None, :]
        if CAUSAL:
            allowed &= distance >= 0
        if HAS_WINDOW:
            if CAUSAL:
                allowed &= distance < window
            else:
                allowed &= tl.abs(distance) < window
        s = tl.where(allowed, s, float("-inf"))
        # the online softmax: a new maximum rescales what was summed so far by exp2(m_old - m_new)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key seen yet: subtract 0, not -inf
        p = tl.exp2(s - m_safe[:, None])  # masked scores give exp2(-inf) = 0
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v_tile = tl.load(v_base + keys[:, None] * v_sn + d[None, :] * v_sd,
                         mask=(keys < kv_len)[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
        # P is rounded to the inputs' dtype for the tensor cores (a no-op for float32)
        acc = _dot(p.to(v_tile.dtype), v_tile, acc * alpha[:, None], IEEE, WIDEN)
        m_i = m_new

    empty = l_i == 0.0  # rows that saw no key: output 0, lse +inf (so that P is 0 in the backward)
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    row_ok = rows < q_len
    tl.store(out_ptr + b * o_sb + h * o_sh + rows[:, None] * o_sm + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    if WRITE_F32:  # same layout as out
        tl.store(out32_ptr + b * o_sb + h * o_sh + rows[:, None] * o_sm + d[None, :], out,
                 mask=row_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + bh.to(tl.int64) * q_len + rows, lse, mask=row_ok)


def _delta_kernel(out_ptr, do_ptr, delta_ptr, o_sb, o_sh, o_sm, do_sb, do_sh, do_sm, do_sd,
                  q_heads, q_len, head_dim, q_bucket,
                  BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``delta_i = rowsum(dO * O)`` for queries ``[m0, m0 + BLOCK_M)`` of one (batch, head), in float32.

    It equals ``rowsum(P * dP)`` (since ``O = P V`` and ``dP = dO V^T``), the term the softmax's
    backward subtracts; computing it once from ``O`` saves a pass over the keys. (BLOCK_N is unused:
    every kernel has the same two tile parameters.)"""
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // q_heads).to(tl.int64)
    h = (bh % q_heads).to(tl.int64)
    rows = m0 + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    mask = (rows < q_len)[:, None] & (d < head_dim)[None, :]
    o = tl.load(out_ptr + b * o_sb + h * o_sh + rows[:, None] * o_sm + d[None, :], mask=mask, other=0.0)
    do = tl.load(do_ptr + b * do_sb + h * do_sh + rows[:, None] * do_sm + d[None, :] * do_sd,
                 mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(delta_ptr + bh.to(tl.int64) * q_len + rows, delta, mask=rows < q_len)


def _dkdv_kernel(q_ptr, k_ptr, v_ptr, slopes_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                 q_sb, q_sh, q_sm, q_sd, k_sb, k_sh, k_sn, k_sd, v_sb, v_sh, v_sn, v_sd,
                 do_sb, do_sh, do_sm, do_sd, dk_sb, dk_sh, dk_sn, dv_sb, dv_sh, dv_sn,
                 q_heads, kv_heads, group, q_len, kv_len, head_dim, window, qk_scale, scale,
                 q_bucket, kv_bucket,
                 CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_ALIBI: tl.constexpr,
                 IEEE: tl.constexpr, WIDEN: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program: keys ``[n0, n0 + BLOCK_N)`` of one (batch, kv head); grid ``(cdiv(kv_len,
    BLOCK_N), batch * kv_heads)``. Sums ``dK`` and ``dV`` over the query tiles that see these keys,
    for each of the ``group`` query heads that read this kv head, and writes them once.

    The tiles are handled transposed, keys by queries (``S^T = K Q^T``, ``(BLOCK_N, BLOCK_M)``), so
    that ``P^T`` and ``dS^T``, which multiply ``dO`` and ``Q``, come out of ``tl.dot`` directly."""
    n0 = tl.program_id(0) * BLOCK_N
    bg = tl.program_id(1)
    b = (bg // kv_heads).to(tl.int64)
    g = (bg % kv_heads).to(tl.int64)
    offset = kv_len - q_len
    keys = n0 + tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    kv_mask = (keys < kv_len)[:, None] & d_ok[None, :]
    k_tile = tl.load(k_ptr + b * k_sb + g * k_sh + keys[:, None] * k_sn + d[None, :] * k_sd,
                     mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
    v_tile = tl.load(v_ptr + b * v_sb + g * v_sh + keys[:, None] * v_sn + d[None, :] * v_sd,
                     mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    # the query tiles that can see this key tile: [lo, hi), lo rounded down to a tile boundary
    lo = 0
    hi = q_len
    if CAUSAL:  # j <= p_i  <=>  i >= j - offset, smallest for the tile's first key
        lo = tl.maximum(0, n0 - offset)
    if HAS_WINDOW:  # p_i - j < W  <=>  i < j + W - offset, largest for the tile's last key
        hi = tl.minimum(hi, n0 + BLOCK_N - 1 + window - offset)
        if not CAUSAL:  # j - p_i < W  <=>  i > j - W - offset
            lo = tl.maximum(0, n0 - window + 1 - offset)
    lo = (lo // BLOCK_M) * BLOCK_M

    for hg in range(0, group):  # the query heads of this kv head's group share its keys: sum over them
        h = g * group + hg
        bh = b * q_heads + h
        q_base = q_ptr + b * q_sb + h * q_sh
        do_base = do_ptr + b * do_sb + h * do_sh
        if HAS_ALIBI:
            slope = tl.load(slopes_ptr + h) * 1.4426950408889634
        for m0 in range(lo, hi, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            row_ok = rows < q_len
            q_t = tl.load(q_base + rows[None, :] * q_sm + d[:, None] * q_sd,
                          mask=row_ok[None, :] & d_ok[:, None], other=0.0)  # Q^T: (BLOCK_D, BLOCK_M)
            do = tl.load(do_base + rows[:, None] * do_sm + d[None, :] * do_sd,
                         mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
            lse = tl.load(lse_ptr + bh * q_len + rows, mask=row_ok, other=float("inf"))
            delta = tl.load(delta_ptr + bh * q_len + rows, mask=row_ok, other=0.0)
            s_t = _dot(k_tile, q_t, None, IEEE, WIDEN) * qk_scale  # S^T in base 2: (BLOCK_N, BLOCK_M)
            distance = (rows + offset)[None, :] - keys[:, None]  # p_i - j
            if HAS_ALIBI:
                s_t -= slope * tl.abs(distance).to(tl.float32)
            allowed = (keys < kv_len)[:, None] & row_ok[None, :]
            if CAUSAL:
                allowed &= distance >= 0
            if HAS_WINDOW:
                if CAUSAL:
                    allowed &= distance < window
                else:
                    allowed &= tl.abs(distance) < window
            # P^T rebuilt from the saved log-sum-exp (a row that saw no key has lse = +inf: P = 0)
            p_t = tl.where(allowed, tl.exp2(s_t - lse[None, :]), 0.0)
            # dV += P^T dO
            dv = _dot(p_t.to(do.dtype), do, dv, IEEE, WIDEN)
            # dP^T = (dO V^T)^T = V dO^T
            dp_t = _dot(v_tile, tl.trans(do), None, IEEE, WIDEN)
            # dS^T = P^T * (dP^T - delta): the softmax's backward, delta_i = rowsum(dO * O)_i
            ds_t = p_t * (dp_t - delta[None, :])
            # dK += dS^T Q  (times scale, once at the end)
            dk = _dot(ds_t.to(q_t.dtype), tl.trans(q_t), dk, IEEE, WIDEN)

    dk *= scale  # S = scale * Q K^T, so dK = scale * dS^T Q
    tl.store(dk_ptr + b * dk_sb + g * dk_sh + keys[:, None] * dk_sn + d[None, :],
             dk.to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + b * dv_sb + g * dv_sh + keys[:, None] * dv_sn + d[None, :],
             dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


def _dq_kernel(q_ptr, k_ptr, v_ptr, slopes_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
               q_sb, q_sh, q_sm, q_sd, k_sb, k_sh, k_sn, k_sd, v_sb, v_sh, v_sn, v_sd,
               do_sb, do_sh, do_sm, do_sd, dq_sb, dq_sh, dq_sm,
               q_heads, group, q_len, kv_len, head_dim, window, qk_scale, scale, q_bucket, kv_bucket,
               CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_ALIBI: tl.constexpr,
               IEEE: tl.constexpr, WIDEN: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program: ``dQ`` for queries ``[m0, m0 + BLOCK_M)`` of one (batch, query head); grid
    ``(cdiv(q_len, BLOCK_M), batch * q_heads)``. Walks the same key tiles as the forward pass."""
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // q_heads).to(tl.int64)
    h = bh % q_heads
    g = (h // group).to(tl.int64)
    h = h.to(tl.int64)
    offset = kv_len - q_len
    rows = m0 + tl.arange(0, BLOCK_M)
    row_ok = rows < q_len
    pos = rows + offset
    cols = tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    q_mask = row_ok[:, None] & d_ok[None, :]
    q_tile = tl.load(q_ptr + b * q_sb + h * q_sh + rows[:, None] * q_sm + d[None, :] * q_sd,
                     mask=q_mask, other=0.0)
    do = tl.load(do_ptr + b * do_sb + h * do_sh + rows[:, None] * do_sm + d[None, :] * do_sd,
                 mask=q_mask, other=0.0)
    lse = tl.load(lse_ptr + bh.to(tl.int64) * q_len + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(delta_ptr + bh.to(tl.int64) * q_len + rows, mask=row_ok, other=0.0)
    k_base = k_ptr + b * k_sb + g * k_sh
    v_base = v_ptr + b * v_sb + g * v_sh
    if HAS_ALIBI:
        slope = tl.load(slopes_ptr + h) * 1.4426950408889634

    lo = 0  # the same key range as the forward pass
    hi = kv_len
    if CAUSAL:
        hi = tl.minimum(hi, m0 + BLOCK_M + offset)
    if HAS_WINDOW:
        lo = tl.maximum(0, m0 + offset - window + 1)
        if not CAUSAL:
            hi = tl.minimum(hi, m0 + BLOCK_M - 1 + offset + window)
    lo = (lo // BLOCK_N) * BLOCK_N

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        keys = n0 + cols
        kv_mask = (keys < kv_len)[None, :] & d_ok[:, None]
        k_t = tl.load(k_base + keys[None, :] * k_sn + d[:, None] * k_sd, mask=kv_mask, other=0.0)  # K^T
        v_t = tl.load(v_base + keys[None, :] * v_sn + d[:, None] * v_sd, mask=kv_mask, other=0.0)  # V^T
        s = _dot(q_tile, k_t, None, IEEE, WIDEN) * qk_scale
        distance = pos[:, None] - keys[None, :]
        if HAS_ALIBI:
            s -= slope * tl.abs(distance).to(tl.float32)
        allowed = (keys < kv_len)[None, :]
        if CAUSAL:
            allowed &= distance >= 0
        if HAS_WINDOW:
            if CAUSAL:
                allowed &= distance < window
            else:
                allowed &= tl.abs(distance) < window
        p = tl.where(allowed, tl.exp2(s - lse[:, None]), 0.0)  # P rebuilt from lse
        dp = _dot(do, v_t, None, IEEE, WIDEN)  # dP = dO V^T
        ds = p * (dp - delta[:, None])  # dS = P * (dP - delta)
        dq = _dot(ds.to(k_t.dtype), tl.trans(k_t), dq, IEEE, WIDEN)  # dQ += dS K
    dq *= scale  # dQ = scale * dS K
    tl.store(dq_ptr + b * dq_sb + h * dq_sh + rows[:, None] * dq_sm + d[None, :],
             dq.to(dq_ptr.dtype.element_ty), mask=q_mask)


def _configs(kind: str) -> list:
    """The tile configurations the autotuner may choose from: one fixed, small one under the
    interpreter (autotuning there would time Python), a few on a GPU."""
    if triton_interpreter():
        block_m, block_n = INTERPRETER_BLOCKS[kind]
        return [triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n})]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in GPU_CONFIGS[kind]]


def _triton_kernel() -> dict:
    """Import triton (first call only) and build the kernels; TRITON_INTERPRET is read at this point.

    Returns ``{"forward", "delta", "dkdv", "dq"}`` -> the autotuned kernel. The autotuner's key is
    the lengths rounded up to powers of two (so that decoding, one key longer each step, does not
    tune again every step), the padded head dim and the mask flags; Triton adds the dtypes.
    """
    global triton, tl, _dot, _KERNELS
    if _KERNELS is None:
        import triton as triton_module
        import triton.language as language

        triton, tl = triton_module, language
        if _dot is None:
            _dot = triton.jit(_dot_source)
        flags = ["CAUSAL", "HAS_WINDOW", "HAS_ALIBI", "BLOCK_D"]
        _KERNELS = {
            "forward": triton.autotune(_configs("forward"), key=["q_bucket", "kv_bucket", *flags])(
                triton.jit(_forward_kernel)),
            "delta": triton.autotune(_configs("delta"), key=["q_bucket", "BLOCK_D"])(
                triton.jit(_delta_kernel)),
            "dkdv": triton.autotune(_configs("dkdv"), key=["q_bucket", "kv_bucket", *flags])(
                triton.jit(_dkdv_kernel)),
            "dq": triton.autotune(_configs("dq"), key=["q_bucket", "kv_bucket", *flags])(
                triton.jit(_dq_kernel)),
        }
    return _KERNELS


def _options(q: torch.Tensor, k: torch.Tensor, causal: bool, window: int | None,
             alibi_slopes: torch.Tensor | None) -> dict:
    """The arguments every kernel shares besides tensors and strides (window None -> 0, flag off)."""
    q_len, kv_len = q.shape[2], k.shape[2]
    if window is not None and window >= max(q_len, kv_len):
        window = None  # every |p_i - j| is below max(q_len, kv_len): the window hides nothing
    return dict(
        q_len=q_len, kv_len=kv_len, head_dim=q.shape[3], window=0 if window is None else int(window),
        q_bucket=_next_power_of_2(q_len), kv_bucket=_next_power_of_2(kv_len),
        CAUSAL=causal, HAS_WINDOW=window is not None, HAS_ALIBI=alibi_slopes is not None,
        IEEE=q.dtype == torch.float32, WIDEN=q.dtype == torch.bfloat16 and triton_interpreter(),
        BLOCK_D=max(16, _next_power_of_2(q.shape[3])),
    )


def _forward(q, k, v, slopes, causal, scale, window, keep_f32):
    """``(out, out32, lse)``: out like q (contiguous); out32 the float32 output (out itself for
    float32 inputs; None unless ``keep_f32``); lse float32 ``(batch * q_heads, q_len)``, base 2."""
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    write_f32 = keep_f32 and q.dtype != torch.float32
    out32 = torch.empty(q.shape, dtype=torch.float32, device=q.device) if write_f32 else None
    lse = torch.empty(batch * q_heads, q_len, dtype=torch.float32, device=q.device)
    if keep_f32 and not write_f32:
        out32 = out
    if out.numel() == 0 or kv_len == 0:  # no query sees a key: zeros, and lse +inf as the kernel would write
        for t in (out, out32):
            if t is not None:
                t.zero_()
        return out, out32, lse.fill_(float("inf"))
    options = _options(q, k, causal, window, slopes)
    kernel = _triton_kernel()["forward"]
    with _on_device(q):
        kernel[lambda meta: (_cdiv(q_len, meta["BLOCK_M"]), batch * q_heads)](
            q, k, v, lse if slopes is None else slopes, out, out if out32 is None else out32, lse,
            *q.stride(), *k.stride(), *v.stride(), *out.stride()[:3],
            q_heads=q_heads, group=q_heads // kv_heads, qk_scale=scale * LOG2E, WRITE_F32=write_f32,
            **options)
    return out, out32, lse


def _backward(q, k, v, slopes, out32, lse, grad_out, causal, scale, window, need_dq):
    """``(dq, dk, dv)`` in the inputs' dtypes (dq None when not needed); out32: the float32 output."""
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device) if need_dq else None
    if q.numel() == 0 or kv_len == 0:  # nothing was summed: every gradient is zero
        return (None if dq is None else dq.zero_()), dk.zero_(), dv.zero_()
    options = _options(q, k, causal, window, slopes)
    kernels = _triton_kernel()
    slopes_or_dummy = lse if slopes is None else slopes
    delta = torch.empty_like(lse)
    group = q_heads // kv_heads
    with _on_device(q):
        kernels["delta"][lambda meta: (_cdiv(q_len, meta["BLOCK_M"]), batch * q_heads)](
            out32, grad_out, delta, *out32.stride()[:3], *grad_out.stride(),
            q_heads=q_heads, q_len=q_len, head_dim=head_dim, q_bucket=options["q_bucket"],
            BLOCK_D=options["BLOCK_D"])
        kernels["dkdv"][lambda meta: (_cdiv(kv_len, meta["BLOCK_N"]), batch * kv_heads)](
            q, k, v, slopes_or_dummy, grad_out, lse, delta, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dk.stride()[:3], *dv.stride()[:3],
            q_heads=q_heads, kv_heads=kv_heads, group=group, qk_scale=scale * LOG2E, scale=scale, **options)
        if need_dq:
            kernels["dq"][lambda meta: (_cdiv(q_len, meta["BLOCK_M"]), batch * q_heads)](
                q, k, v, slopes_or_dummy, grad_out, lse, delta, dq,
                *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dq.stride()[:3],
                q_heads=q_heads, group=group, qk_scale=scale * LOG2E, scale=scale, **options)
    return dq, dk, dv


# --------------------------------------------------------------------------------------------------
# The autograd wrapper.
# --------------------------------------------------------------------------------------------------

class _FlashAttentionFunction(torch.autograd.Function):
    """``(q, k, v) -> out`` by the forward kernel, saving the log-sum-exp and the output in float32;
    backward by the three backward kernels. ``alibi_slopes`` gets no gradient (``None``). Not twice
    differentiable.

    Why the float32 output. ``delta_i = rowsum(dO * O)`` stands for ``rowsum(P * dP)``, and
    ``dS = P * (dP - delta)`` subtracts the two; where a row's softmax is nearly one-hot both are
    almost equal and the true ``dS`` is tiny. FlashAttention-2 computes ``delta`` from the output as
    stored, rounded to float16/bfloat16: its rounding error (``eps |dO| |O|``) then survives the
    subtraction, and gave ``dQ`` errors 15 times those of a plain bfloat16 PyTorch softmax on such a
    row. Computing ``delta`` from the float32 output (kept only while autograd records, for 16-bit
    inputs: 4 more bytes per output element) removes it. For float32 inputs the output is float32.
    """

    @staticmethod
    def forward(ctx, q, k, v, slopes, causal, scale, window):
        keep_f32 = any(ctx.needs_input_grad[:3])
        out, out32, lse = _forward(q, k, v, slopes, causal, scale, window, keep_f32)
        ctx.save_for_backward(q, k, v, slopes, out32, lse)
        ctx.options = (causal, scale, window)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, slopes, out32, lse = ctx.saved_tensors
        causal, scale, window = ctx.options
        dq, dk, dv = _backward(q, k, v, slopes, out32, lse, grad_out, causal, scale, window,
                               need_dq=ctx.needs_input_grad[0])
        return (dq, dk if ctx.needs_input_grad[1] else None, dv if ctx.needs_input_grad[2] else None,
                None, None, None, None)


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                     scale: float | None = None, window: int | None = None,
                     alibi_slopes: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton path of :func:`companion.kernels.attention` (``backend="triton"``), forward and
    backward in Triton; ``(batch, q_heads, q_len, head_dim)`` in q's dtype.

    Arguments as :func:`companion.kernels.attention`. Assumes inputs that are valid and supported
    (``attention`` checks both: :func:`unsupported`). ``alibi_slopes`` are read in float32 and get
    no gradient.
    """
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    slopes = None if alibi_slopes is None else alibi_slopes.detach().to(torch.float32).contiguous()
    return _FlashAttentionFunction.apply(q, k, v, slopes, causal, scale, window)


# --------------------------------------------------------------------------------------------------
# What this path supports (the inputs are already valid: companion.kernels.attention._validate).
# --------------------------------------------------------------------------------------------------

def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                alibi_slopes: torch.Tensor | None) -> str | None:
    """Why the Triton path cannot take these valid inputs (a message for a ``ValueError``), or None.

    Checked: triton installed; CUDA tensors, or CPU tensors under the interpreter; dense tensors;
    dtype float16, bfloat16 or float32; ``head_dim <= 256``; ALiBi slopes that do not require grad
    (while autograd is recording: this path gives them no gradient).
    """
    if not triton_installed():
        return ("attention: backend='triton' needs the triton package, which is not installed; "
                "use backend='auto' or 'reference'")
    if not (q.is_cuda or (q.device.type == "cpu" and triton_interpreter())):
        return (f"attention: backend='triton' expected CUDA tensors (or CPU tensors with "
                f"TRITON_INTERPRET=1 set before triton is imported), got device {q.device}")
    tensors = {"q": q, "k": k, "v": v, "alibi_slopes": alibi_slopes}
    for name, t in tensors.items():
        if t is not None and t.layout != torch.strided:  # the kernels read through strides; sparse has none
            return (f"attention: backend='triton' expected {name} to be a dense (strided) tensor, "
                    f"got layout {t.layout}")
    if q.dtype not in DTYPES:
        return (f"attention: backend='triton' expected q, k and v of dtype float16, bfloat16 or float32, "
                f"got {q.dtype}; use backend='reference' (or 'auto') for it")
    if q.shape[3] > MAX_HEAD_DIM:
        return (f"attention: backend='triton' expected head_dim <= {MAX_HEAD_DIM}, got {q.shape[3]}; "
                f"use backend='reference' (or 'auto') for it")
    if alibi_slopes is not None and alibi_slopes.requires_grad and torch.is_grad_enabled():
        return ("attention: backend='triton' passes no gradient to alibi_slopes; expected them not to "
                "require grad (detach them, or use backend='reference')")
    return None
