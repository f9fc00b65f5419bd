"""Scaled dot-product attention: causal, sliding-window, ALiBi, grouped-query, behind one function.

What is computed (Vaswani et al., "Attention Is All You Need", 2017), for each batch element and
query head ``h``::

    S[i, j] = scale * q[h, i] . k[g(h), j]  -  slope[h] * |p_i - j|     (the ALiBi term is optional)
    P[i, :] = softmax over the keys j that query i may see (mask[i, j] True)
    out[h, i] = sum_j P[i, j] v[g(h), j]

- ``q`` is ``(batch, q_heads, q_len, head_dim)``; ``k`` and ``v`` are ``(batch, kv_heads, kv_len,
  head_dim)`` with ``q_heads % kv_heads == 0``. Query head ``h`` reads kv head
  ``g(h) = h // (q_heads // kv_heads)``, as transformers' ``repeat_kv`` does: ``kv_heads ==
  q_heads`` is multi-head attention, ``1 < kv_heads < q_heads`` grouped-query attention (Ainslie
  et al., "GQA", 2023), ``kv_heads == 1`` multi-query attention (Shazeer, "Fast Transformer
  Decoding: One Write-Head is All You Need", 2019).
- Positions are aligned bottom-right: query ``i`` sits at absolute position
  ``p_i = i + kv_len - q_len``, so that the last query and the last key share a position. A single
  query decoded against a cache of ``kv_len`` keys is the last row of the full causal mask; a
  chunk of queries is its last ``q_len`` rows.
- ``causal`` keeps keys ``j <= p_i``. ``window = W`` (an int >= 1) keeps keys at distance less than
  ``W``: with ``causal``, the ``W`` keys ``p_i - W < j <= p_i`` (sliding-window attention,
  Beltagy et al., "Longformer", 2020; Jiang et al., "Mistral 7B", 2023, whose ``sliding_window``
  means the same); without ``causal``, the symmetric band ``|p_i - j| < W`` (``W - 1`` keys on each
  side and the key at ``p_i``), so that the causal window is exactly the band's lower half.
  (transformers' bidirectional sliding window keeps ``|p_i - j| <= W`` instead: one more each side.)
- ``alibi_slopes`` ``(q_heads,)`` adds ``-slope[h] * |p_i - j|`` to the scaled scores (Press et
  al., "Train Short, Test Long: Attention with Linear Biases", 2022).
- A query that sees no key (``causal`` with ``q_len > kv_len`` leaves the first ``q_len - kv_len``
  queries before every key; ``kv_len == 0`` leaves every query alone) gets an output of zeros and
  passes back exactly zero gradient, never NaN.

The file follows the kernels' layout (DESIGN.md, "Kernels"): the reference in plain PyTorch, the
Triton kernel with its autograd wrapper (``backend="triton"``: FlashAttention-2, Dao 2023, in its
own file, :mod:`companion.kernels.flash_attention`), the input validation, and one public
dispatching function, :func:`attention`. Every invalid argument raises ``ValueError`` (wrong Python
types included, so that one ``except`` catches them all), with a message that says what was
expected.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from companion.kernels import flash_attention

__all__ = ["BACKENDS", "attention", "attention_mask", "attention_reference"]


# --------------------------------------------------------------------------------------------------
# The reference, in plain PyTorch: the definition of what is computed.
# --------------------------------------------------------------------------------------------------

def attention_mask(q_len: int, kv_len: int, *, causal: bool = False, window: int | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """The boolean mask ``(q_len, kv_len)``: True where query ``i`` may attend key ``j``.

    Query ``i`` sits at ``p_i = i + kv_len - q_len`` (bottom-right alignment). ``causal`` keeps
    ``j <= p_i``; ``window = W`` keeps ``p_i - W < j <= p_i`` with ``causal`` (Mistral's sliding
    window, Jiang et al. 2023) and ``|p_i - j| < W`` without it (a symmetric band, Beltagy et al.
    2020). Neither: every entry is True.
    """
    _check_length("q_len", q_len)
    _check_length("kv_len", kv_len)
    _check_causal(causal)
    _check_window(window)
    offset = _offsets(q_len, kv_len, device)  # p_i - j
    mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if causal:
        mask &= offset >= 0
    if window is not None:
        mask &= (offset < window) if causal else (offset.abs() < window)
    return mask


def _offsets(q_len: int, kv_len: int, device: torch.device | str | None) -> torch.Tensor:
    """``p_i - j`` as an int64 ``(q_len, kv_len)`` tensor, with ``p_i = i + kv_len - q_len``."""
    positions = torch.arange(q_len, device=device) + (kv_len - q_len)
    return positions[:, None] - torch.arange(kv_len, device=device)[None, :]


def _alibi_bias(slopes: torch.Tensor, q_len: int, kv_len: int) -> torch.Tensor:
    """ALiBi's bias ``-slope[h] * |p_i - j|`` as ``(q_heads, q_len, kv_len)`` in ``slopes``' dtype."""
    distance = _offsets(q_len, kv_len, slopes.device).abs().to(slopes.dtype)
    return -slopes[:, None, None] * distance


def _may_have_empty_rows(q_len: int, kv_len: int, causal: bool, window: int | None) -> bool:
    """Whether some query sees no key: exactly, from the mask rule (no tensor is looked at).

    The first query sits at ``p_0 = kv_len - q_len``, the lowest position of all. With ``causal``
    it sees a key iff ``p_0 >= 0``; with the symmetric band alone iff ``p_0 > -window`` (key 0 is
    the nearest). With no mask every query sees every key, of which there must be at least one.
    """
    first = kv_len - q_len
    if kv_len == 0:
        return True
    if causal:
        return first < 0
    if window is not None:
        return first <= -window
    return False


def _explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                        scale: float, window: int | None,
                        alibi_slopes: torch.Tensor | None) -> torch.Tensor:
    """The formula of the module docstring, written out; safe for queries that see no key.

    Grouped heads are never copied: the ``group = q_heads // kv_heads`` query heads that share a kv
    head are stacked along the query axis, ``(batch, kv_heads, group * q_len, head_dim)``, and
    multiplied with that one kv head. A query with no visible key keeps its (finite) scores
    unmasked, so that its softmax is finite, and its probabilities are then set to zero: output
    zero, exactly zero gradient back through that row, and no NaN anywhere in the forward or the
    backward pass (a row of -inf would give NaN probabilities and a NaN softmax gradient, which a
    later masked_fill happens to hide but anomaly detection reports).
    """
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    grouped_q = q.reshape(batch, kv_heads, group * q_len, head_dim)
    scores = (grouped_q @ k.transpose(-1, -2)).view(batch, kv_heads, group, q_len, kv_len) * scale
    if alibi_slopes is not None:
        bias = _alibi_bias(alibi_slopes.to(scores.dtype), q_len, kv_len)
        scores = scores + bias.view(kv_heads, group, q_len, kv_len)
    sees_a_key = None
    if causal or window is not None:
        mask = attention_mask(q_len, kv_len, causal=causal, window=window, device=q.device)
        sees_a_key = mask.any(dim=-1, keepdim=True)  # (q_len, 1)
        scores = scores.masked_fill(~(mask | ~sees_a_key), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if sees_a_key is not None:
        probs = probs.masked_fill(~sees_a_key, 0.0)
    # with kv_len == 0 probs is empty and the product below is a sum over nothing: zeros
    out = probs.view(batch, kv_heads, group * q_len, kv_len) @ v
    return out.view(batch, q_heads, q_len, head_dim)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        scale: float | None = None, window: int | None = None,
                        alibi_slopes: torch.Tensor | None = None) -> torch.Tensor:
    """Attention in plain PyTorch, ``(batch, q_heads, q_len, head_dim)``; arguments as :func:`attention`.

    Assumes valid inputs (:func:`attention` validates). float16 and bfloat16 (any float narrower
    than 32 bits) are computed in float32 throughout and the output is rounded back once.

    Decision rule. PyTorch's fused ``scaled_dot_product_attention`` (SDPA) is used wherever it
    computes exactly the formula above, which is wherever every query sees at least one key
    (:func:`_may_have_empty_rows`, decided from the sizes alone). What SDPA gives for a fully masked
    row is not part of its documented contract (older releases and some backends give NaN; torch
    2.13 on the CPU gives zeros), so those cases take the explicit path. Within SDPA:

    - no causal, no window, no ALiBi: no mask;
    - causal alone with ``q_len == kv_len``: ``is_causal=True`` (SDPA aligns ``is_causal``
      top-left, which equals bottom-right only when the lengths are equal); on the CPU, for
      ``CPU_SPLIT_ABOVE < q_len <= CPU_KEY_BLOCK``, in two query blocks instead
      (:func:`_causal_in_two_blocks`: a quarter less work);
    - a mask that allows every pair (one query, causal, sees every key: decoding against a cache;
      or a window at least as long as the keys) is left out: no mask;
    - causal or window otherwise, without ALiBi: the boolean mask of :func:`attention_mask`;
    - ALiBi: a float mask, the bias with ``-inf`` where the boolean mask is False;
    - grouped or multi-query heads: ``enable_gqa=True`` (SDPA repeats kv head ``h // group``).

    Anything with zero elements takes the explicit path too.
    """
    head_dim = q.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    out_dtype = q.dtype
    if torch.finfo(q.dtype).bits < 32:
        q, k, v = q.float(), k.float(), v.float()
    if alibi_slopes is not None:
        alibi_slopes = alibi_slopes.to(q.dtype)
    q_len, kv_len = q.shape[2], k.shape[2]
    if q.numel() == 0 or k.numel() == 0 or _may_have_empty_rows(q_len, kv_len, causal, window):
        out = _explicit_attention(q, k, v, causal=causal, scale=scale, window=window,
                                  alibi_slopes=alibi_slopes)
        return out.to(out_dtype)
    enable_gqa = q.shape[1] != k.shape[1]
    if causal and q_len == 1 and (window is None or window >= kv_len):
        causal, window = False, None  # the single query is the last position: it sees every key
    elif window is not None and window >= kv_len + max(0, q_len - kv_len) and causal:
        window = None  # the window reaches back past the first key: plain causal
    masked = causal or window is not None
    if alibi_slopes is None and not masked:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=enable_gqa)
    elif alibi_slopes is None and causal and window is None and q_len == kv_len:
        if q.device.type == "cpu" and CPU_SPLIT_ABOVE < q_len <= CPU_KEY_BLOCK:
            out = _causal_in_two_blocks(q, k, v, scale=scale, enable_gqa=enable_gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=enable_gqa)
    else:
        mask = None
        if masked:
            mask = attention_mask(q_len, kv_len, causal=causal, window=window, device=q.device)
        if alibi_slopes is not None:
            bias = _alibi_bias(alibi_slopes, q_len, kv_len)
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=enable_gqa)
    return out.to(out_dtype)


# torch's CPU flash-attention kernel (torch 2.13) multiplies each block of queries by whole blocks of
# up to 512 keys, and with is_causal=True skips only the key blocks that lie entirely after the
# queries: up to 512 tokens it computes every query-key pair, forward and backward, and masks half of
# them away. In two query blocks (_causal_in_two_blocks) it computes 3/4 of the pairs. Above 512
# tokens the kernel's own skipping of whole key blocks already saves as much. At 256 tokens and below
# it stays one call: the saving there is small, and each call is one more wait of the threads for
# each other, which costs most where other work shares the cores.
CPU_KEY_BLOCK = 512
CPU_SPLIT_ABOVE = 256


def _causal_in_two_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                          enable_gqa: bool) -> torch.Tensor:
    """Causal attention with ``q_len == kv_len`` as two SDPA calls, each over only the keys its queries see.

    The first ``h = q_len // 2`` queries see keys ``0 .. h - 1`` (causal, square); the others see
    every key, with the causal mask (bottom-right) on the last ``q_len - h`` of them::

        out[:h] = attention(q[:h], k[:h], v[:h], causal)      out[h:] = attention(q[h:], k, v, causal)

    The same softmax over the same keys as one causal call: equal up to float rounding. Like SDPA,
    the output keeps q's memory layout: for q a transposed view of ``(batch, q_len, q_heads,
    head_dim)``, as the attention layer makes it, the output is one too, and merging the heads
    afterwards copies nothing.
    """
    q_len = q.shape[2]
    half = q_len // 2
    q_first, q_second = q.split((half, q_len - half), dim=2)
    first = F.scaled_dot_product_attention(q_first, k[:, :, :half], v[:, :, :half], is_causal=True, scale=scale,
                                           enable_gqa=enable_gqa)
    mask = attention_mask(q_len - half, q_len, causal=True, device=q.device)
    second = F.scaled_dot_product_attention(q_second, k, v, attn_mask=mask, scale=scale, enable_gqa=enable_gqa)
    if q.transpose(1, 2).is_contiguous():
        return torch.cat((first.transpose(1, 2), second.transpose(1, 2)), dim=1).transpose(1, 2)
    return torch.cat((first, second), dim=2)


# --------------------------------------------------------------------------------------------------
# The Triton kernel and its autograd wrapper live in companion/kernels/flash_attention.py
# (FlashAttention-2, forward and backward): registered below as backend="triton", which "auto"
# chooses for CUDA tensors when triton is installed and the inputs are supported
# (flash_attention.unsupported). The reference's own autograd is its backward pass: its explicit
# path already gives exactly zero, finite gradients for queries that see no key.
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Input validation: every problem is a ValueError that says what was expected.
# --------------------------------------------------------------------------------------------------

def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_length(name: str, value: object) -> None:
    if not _is_int(value) or value < 0:
        raise ValueError(f"attention_mask: expected {name} to be an int >= 0, got {value!r}")


def _check_causal(causal: object) -> None:
    if not isinstance(causal, bool):
        raise ValueError(f"attention: expected causal to be True or False, got {causal!r}")


def _check_window(window: object) -> None:
    if window is not None and (not _is_int(window) or window < 1):
        raise ValueError(f"attention: expected window to be None or an int >= 1, got {window!r}")


def _validate(q: object, k: object, v: object, causal: object, scale: object, window: object,
              alibi_slopes: object) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"attention: expected {name} to be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            expected = ("(batch, q_heads, q_len, head_dim)" if name == "q"
                        else "(batch, kv_heads, kv_len, head_dim)")
            raise ValueError(f"attention: expected {name} of rank 4, {expected}, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"attention: expected {name} to have a floating-point dtype, got {t.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"attention: expected q, k and v to share one dtype, "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"attention: expected q, k and v on one device, got {q.device}, {k.device}, {v.device}")
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if not q.shape[0] == k.shape[0] == v.shape[0]:
        raise ValueError(f"attention: expected q, k and v to have the same batch size (dim 0), got {shapes}")
    if not q.shape[3] == k.shape[3] == v.shape[3]:
        raise ValueError(f"attention: expected q, k and v to have the same head_dim (dim 3), got {shapes}")
    if q.shape[3] < 1:
        raise ValueError(f"attention: expected head_dim >= 1, got {shapes}")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(f"attention: expected k and v to have the same kv_heads (dim 1) and kv_len (dim 2), "
                         f"got {shapes}")
    if k.shape[1] < 1 or q.shape[1] < 1 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"attention: expected q_heads (dim 1 of q) to be a positive multiple of kv_heads "
                         f"(dim 1 of k and v) >= 1, got {shapes}")
    _check_causal(causal)
    _check_window(window)
    if scale is not None:
        if (not isinstance(scale, numbers.Real) or isinstance(scale, bool) or not math.isfinite(scale)
                or scale <= 0):
            raise ValueError(f"attention: expected scale to be None or a finite number > 0, got {scale!r}")
    if alibi_slopes is not None:
        if not isinstance(alibi_slopes, torch.Tensor):
            raise ValueError(f"attention: expected alibi_slopes to be None or a torch.Tensor of shape "
                             f"(q_heads,) = ({q.shape[1]},), got {type(alibi_slopes).__name__}")
        if tuple(alibi_slopes.shape) != (q.shape[1],):
            raise ValueError(f"attention: expected alibi_slopes of shape (q_heads,) = ({q.shape[1]},), "
                             f"got {tuple(alibi_slopes.shape)}")
        if not alibi_slopes.is_floating_point():
            raise ValueError(f"attention: expected alibi_slopes to have a floating-point dtype, "
                             f"got {alibi_slopes.dtype}")
        if alibi_slopes.device != q.device:
            raise ValueError(f"attention: expected alibi_slopes on q's device {q.device}, "
                             f"got {alibi_slopes.device}")


# --------------------------------------------------------------------------------------------------
# The public function.
# --------------------------------------------------------------------------------------------------

_BACKEND_FUNCTIONS = {"reference": attention_reference, "triton": flash_attention.attention_triton}
BACKENDS = ("auto", *_BACKEND_FUNCTIONS)


def _choose_backend(backend: object, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    alibi_slopes: torch.Tensor | None) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"attention: expected backend to be one of {', '.join(map(repr, BACKENDS))}, "
                         f"got {backend!r}")
    if backend == "auto":
        # the Triton kernel for CUDA tensors it supports (triton installed; float16, bfloat16 or
        # float32; head_dim <= 256; ALiBi slopes that need no gradient), otherwise the reference
        if q.is_cuda and flash_attention.unsupported(q, k, v, alibi_slopes) is None:
            return "triton"
        return "reference"
    if backend == "triton":
        reason = flash_attention.unsupported(q, k, v, alibi_slopes)
        if reason is not None:
            raise ValueError(reason)
    return backend


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              scale: float | None = None, window: int | None = None,
              alibi_slopes: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Scaled dot-product attention (Vaswani et al. 2017), ``(batch, q_heads, q_len, head_dim)``.

    Args:
        q: queries ``(batch, q_heads, q_len, head_dim)``.
        k, v: keys and values ``(batch, kv_heads, kv_len, head_dim)``, ``q_heads % kv_heads == 0``;
            query head ``h`` reads kv head ``h // (q_heads // kv_heads)`` (MHA, GQA of Ainslie et
            al. 2023, MQA of Shazeer 2019).
        causal: keep keys ``j <= p_i``, with query ``i`` at ``p_i = i + kv_len - q_len``
            (bottom-right: a query decoded against a cache sees the whole cache).
        scale: multiplies ``q . k``; default ``1 / sqrt(head_dim)``.
        window: an int ``W >= 1``; with ``causal`` keeps ``p_i - W < j <= p_i`` (Mistral's sliding
            window, Jiang et al. 2023), without it ``|p_i - j| < W`` (Beltagy et al. 2020).
        alibi_slopes: ``(q_heads,)``; adds ``-slope[h] * |p_i - j|`` after scaling (Press et al. 2022).
        backend: ``"auto"`` (the Triton kernel for CUDA tensors when triton is installed and the
            inputs are supported, otherwise the reference), ``"reference"``
            (:func:`attention_reference`) or ``"triton"`` (FlashAttention-2, Dao et al. 2022, Dao
            2023: :func:`companion.kernels.flash_attention.attention_triton`; on CUDA, or on the CPU
            under Triton's interpreter; float16, bfloat16 or float32, ``head_dim <= 256``, and
            ``alibi_slopes`` that do not require grad: it gives them none). See :data:`BACKENDS`.

    Returns the output in ``q``'s dtype (float16/bfloat16 are computed in float32 by the reference;
    the Triton kernel multiplies them in their own precision and accumulates in float32). A query
    that sees no key gets zeros and passes back zero gradient. Any invalid argument raises
    ``ValueError`` naming what was expected, and so do inputs that ``backend="triton"`` does not
    support. See the module docstring for the formula.
    """
    _validate(q, k, v, causal, scale, window, alibi_slopes)
    chosen = _choose_backend(backend, q, k, v, alibi_slopes)
    return _BACKEND_FUNCTIONS[chosen](q, k, v, causal=causal, scale=scale, window=window,
                                      alibi_slopes=alibi_slopes)
