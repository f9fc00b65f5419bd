"""Multi-head latent attention (MLA): a key-value cache of one small latent vector per token.

DeepSeek-AI, "DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model"
(2024, arXiv 2405.04434), section 2.1; kept unchanged in "DeepSeek-V3 Technical Report" (2024,
arXiv 2412.19437), section 2.1.1. Notation of the papers, with this module's names:

=========  ====================  =====================================================
paper      here                  what it is
=========  ====================  =====================================================
``n_h``    ``n_heads``           query heads (every head has its own key and value)
``d_c``    ``kv_lora_rank``      size of the key-value latent ``c_KV`` (DeepSeek-V2/V3: 512)
``d_c'``   ``q_lora_rank``       size of the query latent ``c_Q`` (1536; None: no query latent)
``d_h``    ``qk_nope_head_dim``  per-head query/key part without positions (128)
``d_h^R``  ``qk_rope_head_dim``  per-head query part and shared key part with RoPE (64)
``d_v``    ``v_head_dim``        per-head value size (128)
=========  ====================  =====================================================

For a token ``x`` ``(width,)`` (shapes below per token; the code carries ``(batch, seq, ...)``)::

    c_Q      = RMSNorm(x W_DQ)                  (d_c')         query latent (or skip: q = x W_Q)
    [q_C,h, q_R,h] = c_Q W_UQ                   (d_h + d_h^R)  per head h
    c_KV     = RMSNorm(x W_DKV)                 (d_c)          CACHED
    k_R      = RoPE(x W_KR)                     (d_h^R)        CACHED, one key part shared by all heads
    k_C,h    = c_KV W_UK,h                      (d_h)          per head, up-projected from the latent
    v_h      = c_KV W_UV,h                      (d_v)
    q_h      = [q_C,h, RoPE(q_R,h)],   k_h = [k_C,h, k_R]
    o_h      = softmax(scale * q_h K_h^T + causal mask) V_h
    y        = concat_h(o_h) W_O

The RMSNorms on the two latents are in DeepSeek's released models (and in transformers) though not
in the papers' equations. ``scale = 1 / sqrt(d_h + d_h^R)``; with YaRN (DeepSeek's long-context
RoPE, :class:`~companion.nn.rope_scaling.RopeScaling` ``kind="yarn"`` with ``mscale_all_dim``) it is
multiplied by ``m^2``, ``m = 0.1 mscale_all_dim ln(factor) + 1`` (:func:`latent_softmax_scale`).
YaRN's temperature scales queries and keys by ``m`` each; RoPE's cos and sin only reach the rotated
``d_h^R`` coordinates, so DeepSeek puts the factor on the scores of all dimensions instead (hence
"all_dim"), and the cos/sin factor is ``m(mscale) / m(mscale_all_dim)`` (1 in V2 and V3).

Why the latent: the cache. A layer of multi-head attention caches a key and a value for every head,
``2 n_h d_h`` numbers per token; grouped-query attention (``n_g`` key-value groups) ``2 n_g d_h``;
multi-query attention ``2 d_h``. MLA caches ``c_KV`` and ``k_R`` only, ``d_c + d_h^R`` numbers per
token per layer (DeepSeek-V3: 512 + 64 = 576, against 2 x 128 x 128 = 32,768 if its 128 heads of
128 had their own keys and values), because every head's key and value is a linear function of
``c_KV`` that can be recomputed, and ``k_R`` is one rotated key part shared by all heads (RoPE
cannot ride inside the latent: a rotation between ``W_UK`` and the query would stop ``W_UK`` from
being absorbed, below). The paper equates this to GQA with 2.25 groups (section 2.1.4).
:mod:`companion.models.published` counts the bytes for real models.

Two ways to compute the same thing (``absorbed`` attribute; tests/test_latent_attention.py checks
that they agree):

* the naive form (``absorbed=False``, for training and prefill): up-project every cached latent to
  per-head keys and values and call :func:`companion.kernels.attention` on ``(batch, n_h, len,
  d_h + d_h^R)`` keys and ``(batch, n_h, len, d_v)`` values.
* the weight-absorbed form (``absorbed=True``, for decoding; DeepSeek-V2 section 2.1.2 notes that
  at inference ``W_UK`` can be absorbed into the query projection and ``W_UV`` into ``W_O``). Vectors
  are rows, so ``W_UK,h`` is ``(d_c, d_h)`` and ``W_UV,h`` is ``(d_c, d_v)``. Since
  ``q_C,h . k_C,h,j = q_C,h (c_KV,j W_UK,h)^T = (q_C,h W_UK,h^T) . c_KV,j`` and
  ``sum_j p_j v_h,j = (sum_j p_j c_KV,j) W_UV,h``, fold ``W_UK,h`` into the query and attend
  directly over the latents::

      q~_h  = [q_C,h W_UK,h^T,  RoPE(q_R,h)]             (d_c + d_h^R)
      k~_j  = [c_KV,j, k_R,j]                            (d_c + d_h^R), the same for every head
      o~_h  = softmax(scale * q~_h K~^T + mask) C_KV      (d_c)
      o_h   = o~_h W_UV,h                                (d_v)

  which is multi-query attention with one key "head" of size ``d_c + d_h^R`` whose values are the
  first ``d_c`` coordinates of the keys (so the kernel is called with ``k = v = k~`` and the output
  cut to ``d_c``). No per-head key or value is ever built: a decoding step reads ``d_c + d_h^R``
  numbers per cached token instead of up-projecting each of them to ``n_h (d_h + d_v)``. (Folding
  ``W_UK`` further into ``W_UQ`` and ``W_UV`` into ``W_O`` gives fixed matrices; here the products
  are taken at run time, so both forms share one set of weights and both train.)

The key-value cache (:class:`~companion.nn.cache.KVCache`) keeps keys and values of one shape per
layer, so the token's record ``[c_KV, k_R]`` (``d_c + d_h^R`` numbers) is stored split in two halves,
the first as "keys" and the second as "values" ``(batch, 1, len, (d_c + d_h^R) / 2)`` each (one zero
of padding when ``d_c + d_h^R`` is odd). :meth:`LatentAttention.cached_latents` reads ``c_KV`` and
``k_R`` back.

:func:`latent_attention_from_hf` converts transformers' ``DeepseekV3Attention`` (and its
interleaved RoPE layout) weight for weight.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from companion.kernels import attention, attention_mask
from companion.nn.cache import KVCache
from companion.nn.norms import RMSNorm
from companion.nn.positions import RotaryEmbedding, apply_rotary
from companion.nn.rope_scaling import RopeScaling

__all__ = ["LatentAttention", "LatentShape", "latent_attention_from_hf", "latent_softmax_scale"]


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class LatentShape:
    """The sizes of multi-head latent attention (DeepSeek-V2 section 2.1; names as transformers' config).

    ``kv_lora_rank`` is ``d_c``, the cached latent; ``q_lora_rank`` is ``d_c'`` (None: queries are
    projected from ``x`` directly, as in DeepSeek-V2-Lite); ``qk_nope_head_dim`` (``d_h``) and
    ``qk_rope_head_dim`` (``d_h^R``, even: RoPE turns pairs) make up each query and key head;
    ``v_head_dim`` is ``d_v``. DeepSeek-V2 and V3: ``LatentShape(512, 1536, 128, 64, 128)``.
    """

    kv_lora_rank: int
    q_lora_rank: int | None
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    def __post_init__(self) -> None:
        for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"LatentShape: expected {name} to be a positive int, got {value!r}")
        if self.q_lora_rank is not None and (not _is_int(self.q_lora_rank) or self.q_lora_rank < 1):
            raise ValueError(f"LatentShape: expected q_lora_rank to be None or a positive int, "
                             f"got {self.q_lora_rank!r}")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"LatentShape: expected an even qk_rope_head_dim (RoPE turns pairs), "
                             f"got {self.qk_rope_head_dim}")

    @property
    def qk_head_dim(self) -> int:
        """``d_h + d_h^R``: the size of each query and key head."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def cache_elements(self) -> int:
        """``d_c + d_h^R``: the numbers cached per token per layer."""
        return self.kv_lora_rank + self.qk_rope_head_dim


def latent_softmax_scale(shape: LatentShape, scaling: RopeScaling | None = None) -> float:
    """The scale on the scores: ``1 / sqrt(d_h + d_h^R)``, times ``m^2`` for DeepSeek's YaRN.

    ``m = 0.1 * mscale_all_dim * ln(factor) + 1`` when ``scaling`` is YaRN with a nonzero
    ``mscale_all_dim`` and ``factor > 1`` (else 1): transformers' ``yarn_get_mscale`` and
    ``DeepseekV3Attention.scaling``, and DeepSeek's released ``modeling_deepseek.py``. DeepSeek-V3's
    config (factor 40, mscale_all_dim 1) gives ``m^2 = 1.87``.
    """
    if not isinstance(shape, LatentShape):
        raise ValueError(f"expected shape to be a LatentShape, got {type(shape).__name__}")
    scale = shape.qk_head_dim ** -0.5
    if scaling is not None and scaling.kind == "yarn" and scaling.mscale_all_dim and scaling.factor > 1:
        m = 0.1 * scaling.mscale_all_dim * math.log(scaling.factor) + 1.0
        scale = scale * m * m
    return scale


class LatentAttention(nn.Module):
    """Causal multi-head latent attention (DeepSeek-V2/V3), a mixer like :class:`~companion.nn.attention.Attention`.

    ``forward(x, positions, cache=None, return_weights=False)``: ``x`` ``(batch, seq, width)``,
    ``positions`` the absolute positions of those tokens ``(seq,)``. Returns ``(y, weights)``, ``y``
    ``(batch, seq, width)`` and ``weights`` the attention probabilities ``(batch, n_heads, seq,
    keys)`` when ``return_weights`` is set (else None). With a ``cache``, only ``[c_KV, k_R]`` is
    stored per token (see the module docstring).

    Args:
        width: model width (``x``'s last dimension).
        n_heads: query heads ``n_h``.
        shape: a :class:`LatentShape`.
        rope: a :class:`~companion.nn.positions.RotaryEmbedding` of ``shape.qk_rope_head_dim``
            (rotates ``q_R`` and ``k_R``; its scaling also sets the softmax scale).
        layer_index: which layer's entry of the cache this layer uses.
        bias: biases on the down-projections ``W_DQ``, ``[W_DKV; W_KR]`` and on ``W_O``
            (transformers' ``attention_bias``; the up-projections never have one).
        window: sliding-window attention, as :func:`companion.kernels.attention`.
        norm_eps: epsilon of the RMSNorms on ``c_Q`` and ``c_KV`` (DeepSeek: 1e-6).
        softmax_scale: overrides :func:`latent_softmax_scale`.
        absorbed: compute with the weight-absorbed form (an attribute; may be changed any time).

    Parameters, named after the paper's matrices: ``q_down`` (``W_DQ``), ``q_norm``, ``q_up``
    (``[W_UQ; W_QR]``, per head ``d_h`` rows then ``d_h^R`` rows), or ``q_proj`` without a query
    latent; ``kv_down`` (``[W_DKV; W_KR]``: ``d_c`` rows for the latent, then ``d_h^R`` for ``k_R``),
    ``kv_norm``, ``kv_up`` (``[W_UK; W_UV]``, per head ``d_h`` rows then ``d_v`` rows), ``out``
    (``W_O``).
    """

    def __init__(self, width: int, n_heads: int, shape: LatentShape, *, rope: RotaryEmbedding,
                 layer_index: int = 0, bias: bool = False, window: int | None = None, norm_eps: float = 1e-6,
                 softmax_scale: float | None = None, absorbed: bool = False) -> None:
        super().__init__()
        for name, value in (("width", width), ("n_heads", n_heads)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"LatentAttention: expected {name} to be a positive int, got {value!r}")
        if not isinstance(shape, LatentShape):
            raise ValueError(f"LatentAttention: expected shape to be a LatentShape, got {type(shape).__name__}")
        if not isinstance(rope, RotaryEmbedding) or rope.head_dim != shape.qk_rope_head_dim:
            got = f"head_dim {rope.head_dim}" if isinstance(rope, RotaryEmbedding) else type(rope).__name__
            raise ValueError(f"LatentAttention: expected rope to be a RotaryEmbedding of qk_rope_head_dim = "
                             f"{shape.qk_rope_head_dim}, got {got}")
        if not _is_int(layer_index) or layer_index < 0:
            raise ValueError(f"LatentAttention: expected layer_index to be an int >= 0, got {layer_index!r}")
        if window is not None and (not _is_int(window) or window < 1):
            raise ValueError(f"LatentAttention: expected window to be None or an int >= 1, got {window!r}")
        if softmax_scale is not None and (not isinstance(softmax_scale, numbers.Real) or isinstance(softmax_scale, bool)
                                          or not math.isfinite(softmax_scale) or softmax_scale <= 0):
            raise ValueError(f"LatentAttention: expected softmax_scale to be None or a finite number > 0, "
                             f"got {softmax_scale!r}")
        self.width, self.n_heads, self.shape = width, n_heads, shape
        self.layer_index, self.window, self.rope = layer_index, window, rope
        self.absorbed = bool(absorbed)
        self.softmax_scale = (latent_softmax_scale(shape, rope.scaling) if softmax_scale is None
                              else float(softmax_scale))
        s = shape
        if s.q_lora_rank is None:  # q = x W_Q (DeepSeek-V2-Lite)
            self.q_proj = nn.Linear(width, n_heads * s.qk_head_dim, bias=False)
        else:                      # c_Q = RMSNorm(x W_DQ),  q = c_Q W_UQ
            self.q_down = nn.Linear(width, s.q_lora_rank, bias=bias)
            self.q_norm = RMSNorm(s.q_lora_rank, eps=norm_eps)
            self.q_up = nn.Linear(s.q_lora_rank, n_heads * s.qk_head_dim, bias=False)
        self.kv_down = nn.Linear(width, s.kv_lora_rank + s.qk_rope_head_dim, bias=bias)  # [W_DKV; W_KR]
        self.kv_norm = RMSNorm(s.kv_lora_rank, eps=norm_eps)
        self.kv_up = nn.Linear(s.kv_lora_rank, n_heads * (s.qk_nope_head_dim + s.v_head_dim), bias=False)
        self.out = nn.Linear(n_heads * s.v_head_dim, width, bias=bias)

    # ----------------------------------------------------------------------------------------------
    # Projections
    # ----------------------------------------------------------------------------------------------

    def queries(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q_C`` ``(batch, n_h, seq, d_h)`` and the unrotated ``q_R`` ``(batch, n_h, seq, d_h^R)``."""
        batch, seq, _ = x.shape
        s = self.shape
        q = self.q_proj(x) if s.q_lora_rank is None else self.q_up(self.q_norm(self.q_down(x)))
        q = q.view(batch, seq, self.n_heads, s.qk_head_dim).transpose(1, 2)
        q_nope, q_rope = q.split((s.qk_nope_head_dim, s.qk_rope_head_dim), dim=-1)
        return q_nope, q_rope

    def latents(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``c_KV = RMSNorm(x W_DKV)`` ``(batch, 1, seq, d_c)`` and the unrotated ``x W_KR`` ``(batch, 1, seq, d_h^R)``.

        The key-value heads axis is 1: one latent and one rope key serve every head.
        """
        c_kv, k_rope = self.kv_down(x).split((self.shape.kv_lora_rank, self.shape.qk_rope_head_dim), dim=-1)
        return self.kv_norm(c_kv)[:, None], k_rope[:, None]

    def up_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W_UK`` ``(n_h, d_h, d_c)`` and ``W_UV`` ``(n_h, d_v, d_c)``: views of ``kv_up.weight``.

        Laid out as ``nn.Linear`` stores them (output rows), i.e. each head's ``W_UK,h^T`` and
        ``W_UV,h^T`` in the row-vector notation of the module docstring.
        """
        s = self.shape
        w = self.kv_up.weight.view(self.n_heads, s.qk_nope_head_dim + s.v_head_dim, s.kv_lora_rank)
        return w[:, :s.qk_nope_head_dim], w[:, s.qk_nope_head_dim:]

    # ----------------------------------------------------------------------------------------------
    # The cache: [c_KV, k_R] per token, in two halves
    # ----------------------------------------------------------------------------------------------

    def _record_halves(self) -> tuple[int, int]:
        """(half, padding): the record of ``d_c + d_h^R`` numbers is stored as two halves of ``half``."""
        total = self.shape.cache_elements
        return (total + 1) // 2, total % 2

    def _cache_update(self, cache: KVCache, c_kv: torch.Tensor,
                      k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' ``[c_KV, k_R]``; return those of every cached token ``(batch, 1, len, .)``."""
        half, padding = self._record_halves()
        record = torch.cat((c_kv, k_rope), dim=-1)
        if padding:
            record = F.pad(record, (0, padding))
        first, second = cache.update(self.layer_index, record[..., :half], record[..., half:])
        return self._unpack(torch.cat((first, second), dim=-1))

    def _unpack(self, record: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.shape
        return record[..., :s.kv_lora_rank], record[..., s.kv_lora_rank:s.cache_elements]

    def cached_latents(self, cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``cache`` holds for this layer: ``c_KV`` ``(batch, 1, length, d_c)`` and the rotated ``k_R``
        ``(batch, 1, length, d_h^R)`` of its ``length`` tokens."""
        if self.layer_index not in cache.keys:
            raise ValueError(f"the cache holds nothing for layer {self.layer_index} yet")
        end = cache.length
        return self._unpack(torch.cat((cache.keys[self.layer_index][:, :, :end],
                                       cache.values[self.layer_index][:, :, :end]), dim=-1))

    # ----------------------------------------------------------------------------------------------
    # Forward
    # ----------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != self.width:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"LatentAttention: expected x of shape (batch, seq, width={self.width}), got {got}")
        batch, seq, _ = x.shape
        q_nope, q_rope = self.queries(x)                    # (b, h, s, d_h), (b, h, s, d_h^R)
        c_kv, k_rope = self.latents(x)                      # (b, 1, s, d_c), (b, 1, s, d_h^R)
        cos, sin = self.rope(positions, dtype=x.dtype)      # (s, d_h^R): broadcast over batch and heads
        q_rope = apply_rotary(q_rope, cos, sin)             # RoPE(q_R,h)
        k_rope = apply_rotary(k_rope, cos, sin)             # k_R = RoPE(x W_KR): one for all heads
        if cache is not None:                               # cache [c_KV, k_R]; read every cached token's
            c_kv, k_rope = self._cache_update(cache, c_kv, k_rope)
        if self.absorbed:
            o, q, k = self._absorbed(q_nope, q_rope, c_kv, k_rope)
        else:
            o, q, k = self._naive(q_nope, q_rope, c_kv, k_rope)
        y = self.out(o.transpose(1, 2).reshape(batch, seq, self.n_heads * self.shape.v_head_dim))  # concat_h(o_h) W_O
        return y, (self.weights(q, k) if return_weights else None)

    def _naive(self, q_nope: torch.Tensor, q_rope: torch.Tensor, c_kv: torch.Tensor,
               k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Up-project every latent to per-head keys and values; ``o`` ``(b, h, s, d_v)``, and ``q``, ``k``."""
        s = self.shape
        batch, _, length, _ = c_kv.shape
        kv = self.kv_up(c_kv[:, 0]).view(batch, length, self.n_heads, s.qk_nope_head_dim + s.v_head_dim)
        k_nope, v = kv.transpose(1, 2).split((s.qk_nope_head_dim, s.v_head_dim), dim=-1)  # c_KV W_UK,h; c_KV W_UV,h
        q = torch.cat((q_nope, q_rope), dim=-1)                                             # q_h = [q_C,h, RoPE(q_R,h)]
        k = torch.cat((k_nope, k_rope.expand(-1, self.n_heads, -1, -1)), dim=-1)           # k_h = [k_C,h, k_R]
        # the attention op takes one head size for q, k and v: zero-pad the smaller side (the scale
        # is given explicitly, and zero coordinates add nothing to q . k nor to the output)
        dq, dv = s.qk_head_dim, s.v_head_dim
        qp, kp, vp = (q, k, F.pad(v, (0, dq - dv))) if dv < dq else (F.pad(q, (0, dv - dq)), F.pad(k, (0, dv - dq)), v)
        o = attention(qp, kp, vp, causal=True, window=self.window, scale=self.softmax_scale)[..., :dv]
        return o, q, k

    def _absorbed(self, q_nope: torch.Tensor, q_rope: torch.Tensor, c_kv: torch.Tensor,
                  k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend over the latents with ``W_UK`` folded into the query and ``W_UV`` into the output."""
        w_uk, w_uv = self.up_weights()                                  # (h, d_h, d_c), (h, d_v, d_c)
        q_latent = torch.einsum("bhsn,hnc->bhsc", q_nope, w_uk)         # q_C,h W_UK,h^T  (b, h, s, d_c)
        q = torch.cat((q_latent, q_rope), dim=-1)                       # q~_h (b, h, s, d_c + d_h^R)
        k = torch.cat((c_kv, k_rope), dim=-1)                           # k~   (b, 1, len, d_c + d_h^R)
        # multi-query attention over k~, whose first d_c coordinates are the values c_KV
        o_latent = attention(q, k, k, causal=True, window=self.window, scale=self.softmax_scale)
        o_latent = o_latent[..., :self.shape.kv_lora_rank]              # o~_h (b, h, s, d_c)
        o = torch.einsum("bhsc,hvc->bhsv", o_latent, w_uv)              # o_h = o~_h W_UV,h  (b, h, s, d_v)
        return o, q, k

    def weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Attention probabilities ``(batch, n_heads, q_len, kv_len)`` from either form's ``q`` and ``k``.

        Computed explicitly, in float32 (float64 for float64 inputs).
        """
        dtype = torch.promote_types(q.dtype, torch.float32)
        scores = (q.to(dtype) @ k.to(dtype).transpose(-2, -1)) * self.softmax_scale  # k broadcasts over heads
        allowed = attention_mask(q.shape[2], k.shape[2], causal=True, window=self.window, device=q.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
        return torch.nan_to_num(scores.softmax(dim=-1), nan=0.0)

    def extra_repr(self) -> str:
        return (f"width={self.width}, n_heads={self.n_heads}, {self.shape}, "
                f"softmax_scale={self.softmax_scale:.6g}, absorbed={self.absorbed}")


# --------------------------------------------------------------------------------------------------
# From transformers
# --------------------------------------------------------------------------------------------------

def _deinterleave(rope_dim: int) -> torch.Tensor:
    """``[0, 2, 4, ..., 1, 3, 5, ...]``: interleaved pairs ``(2i, 2i+1)`` to "rotate half" pairs ``(i, i + d/2)``."""
    return torch.cat((torch.arange(0, rope_dim, 2), torch.arange(1, rope_dim, 2)))


@torch.no_grad()
def latent_attention_from_hf(hf_attention: nn.Module, config, *, rope: RotaryEmbedding | None = None,
                             layer_index: int | None = None) -> LatentAttention:
    """A :class:`LatentAttention` computing what transformers' ``DeepseekV3Attention`` computes.

    ``config`` is its ``DeepseekV3Config``. ``rope`` is the RotaryEmbedding to use (of
    ``qk_rope_head_dim``, with the config's scaling: ``base, scaling =
    companion.models.rope_from_config(config)``); without it, plain RoPE from ``rope_theta`` is
    built, and a config with another ``rope_type`` is refused. ``layer_index`` defaults to the HF
    module's ``layer_idx``.

    DeepSeek's checkpoints lay the rotary coordinates out in interleaved pairs ``(2i, 2i+1)``;
    transformers (``rope_interleave=True``, the default) rotates those pairs and writes the result
    in "rotate half" order ``[evens, odds]``. That equals "rotate half" RoPE applied to the
    coordinates permuted by ``[0, 2, 4, ..., 1, 3, 5, ...]``, so the rows of ``W_QR`` (per head) and
    ``W_KR`` are permuted here and the module uses plain "rotate half" RoPE. The softmax scale is
    checked against the HF module's ``scaling`` (YaRN's ``mscale_all_dim``): a ``rope`` with the
    wrong scaling raises ``ValueError``. The result is in the HF module's dtype, device and mode.
    """
    s = LatentShape(config.kv_lora_rank, config.q_lora_rank, config.qk_nope_head_dim, config.qk_rope_head_dim,
                    config.v_head_dim)
    n_heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
    if kv_heads != n_heads:
        raise ValueError(f"MLA gives every head its own key and value: expected num_key_value_heads == "
                         f"num_attention_heads ({n_heads}), got {kv_heads}")
    if rope is None:
        params = dict(getattr(config, "rope_parameters", None) or {})
        if params.get("rope_type", "default") != "default":
            raise ValueError(f"rope_type {params.get('rope_type')!r}: pass rope=RotaryEmbedding(qk_rope_head_dim, "
                             "base, scaling=scaling), with (base, scaling) = companion.models.rope_from_config(config)")
        rope = RotaryEmbedding(s.qk_rope_head_dim, float(params.get("rope_theta", 10000.0)),
                               max_positions=config.max_position_embeddings)
    eps = hf_attention.kv_a_layernorm.variance_epsilon
    module = LatentAttention(config.hidden_size, n_heads, s, rope=rope,
                             layer_index=hf_attention.layer_idx if layer_index is None else layer_index,
                             bias=bool(config.attention_bias), norm_eps=eps)
    if not math.isclose(module.softmax_scale, hf_attention.scaling, rel_tol=1e-12):
        raise ValueError(f"the softmax scale {module.softmax_scale!r} (from rope's scaling) differs from "
                         f"transformers' {hf_attention.scaling!r}: give rope the config's YaRN scaling")
    param = next(hf_attention.parameters())
    module = module.to(dtype=param.dtype, device=param.device)
    interleaved = bool(getattr(config, "rope_interleave", False))
    perm = _deinterleave(s.qk_rope_head_dim).to(param.device)

    def query_rows(weight: torch.Tensor) -> torch.Tensor:  # (n_h * (d_h + d_h^R), in): permute each head's rope rows
        if not interleaved:
            return weight
        w = weight.view(n_heads, s.qk_head_dim, -1)
        return torch.cat((w[:, :s.qk_nope_head_dim], w[:, s.qk_nope_head_dim:][:, perm]), dim=1).reshape(weight.shape)

    def latent_rows(t: torch.Tensor) -> torch.Tensor:  # (d_c + d_h^R, ...): permute the k_R rows
        return torch.cat((t[:s.kv_lora_rank], t[s.kv_lora_rank:][perm])) if interleaved else t

    if s.q_lora_rank is None:
        module.q_proj.weight.copy_(query_rows(hf_attention.q_proj.weight))
    else:
        module.q_down.weight.copy_(hf_attention.q_a_proj.weight)
        if module.q_down.bias is not None:
            module.q_down.bias.copy_(hf_attention.q_a_proj.bias)
        module.q_norm.weight.copy_(hf_attention.q_a_layernorm.weight)
        module.q_norm.eps = hf_attention.q_a_layernorm.variance_epsilon
        module.q_up.weight.copy_(query_rows(hf_attention.q_b_proj.weight))
    module.kv_down.weight.copy_(latent_rows(hf_attention.kv_a_proj_with_mqa.weight))
    if module.kv_down.bias is not None:
        module.kv_down.bias.copy_(latent_rows(hf_attention.kv_a_proj_with_mqa.bias))
        module.out.bias.copy_(hf_attention.o_proj.bias)
    module.kv_norm.weight.copy_(hf_attention.kv_a_layernorm.weight)
    module.kv_up.weight.copy_(hf_attention.kv_b_proj.weight)
    module.out.weight.copy_(hf_attention.o_proj.weight)
    return module.train(hf_attention.training)
