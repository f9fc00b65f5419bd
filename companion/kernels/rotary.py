"""Rotary position embeddings (RoPE) applied to queries and keys together, behind one function.

What is computed (Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding", 2021),
in the "rotate half" convention of Llama and Hugging Face transformers (coordinate ``i`` is paired
with ``i + head_dim/2``), for every batch element ``b``, position ``s`` and head ``h``::

    y[b, s, h] = x[b, s, h] * cos[s] + rotate_half(x[b, s, h]) * sin[s],
    rotate_half([a, c]) = [-c, a]          (a, c: the two halves of the last dimension)

that is, with ``H = head_dim / 2`` and ``i < H``::

    y[i]     = x[i]     * cos[i]     - x[i + H] * sin[i]
    y[i + H] = x[i + H] * cos[i + H] + x[i]     * sin[i + H]

With RoPE's tables ``cos[s, i] = cos[s, i + H] = cos(p_s theta_i)`` and the same for ``sin``, each
pair ``(x[i], x[i + H])`` turns by the angle ``p_s theta_i``; ``theta_i = base^(-2i/head_dim)``, so
that ``q_m . k_n`` depends on ``m - n`` only. The formula above is the definition for any tables,
though: nothing here assumes or checks that their halves agree.

- ``q`` is ``(batch, seq, q_heads, head_dim)`` and ``k`` is ``(batch, seq, kv_heads, head_dim)``:
  the layout straight after the model's projections, before the transpose to ``(batch, heads,
  seq, head_dim)``. Any strides are accepted (q and k may be views into one projection output);
  the kernel reads with the strides it is given and writes new contiguous tensors.
- ``cos`` and ``sin`` are ``(seq, head_dim)``: one row per sequence element, the same for every
  batch element and head (any strides).
- The arithmetic is float32 (float64 for float64 inputs); the outputs are in the inputs' dtype.
  (transformers rounds cos and sin to the inputs' dtype first and multiplies in float16/bfloat16;
  for those dtypes the two differ by their rounding.)

The gradient. Write ``C = diag(cos)``, ``S = diag(sin)`` and ``R`` for rotate_half, the matrix
``[[0, -I], [I, 0]]``, so that ``y = C x + S R x``. Given ``g = dL/dy``, the gradient with
respect to ``x`` is::

    dL/dx = C^T g + R^T S^T g = g * cos + R^T (g * sin) = g * cos - rotate_half(g * sin)

since ``C`` and ``S`` are diagonal and ``R^T = [[0, I], [-I, 0]] = -R``. Written out::

    dx[i]     = g[i]     * cos[i]     + g[i + H] * sin[i + H]
    dx[i + H] = g[i + H] * cos[i + H] - g[i]     * sin[i]

which is the forward formula with ``sin`` negated and its two halves swapped: the kernel computes
``y[i] = x[i] c[i] - x[i+H] s_a[i]``, ``y[i+H] = x[i+H] c[i+H] + x[i] s_b[i]`` with ``(s_a, s_b)
= (sin[:H], sin[H:])`` forward and ``(-sin[H:], -sin[:H])`` backward, so one kernel serves both.
With RoPE's tables (equal halves) the backward pass is the rotation by the opposite angle, the
inverse of an orthogonal map. The backward pass is the same autograd function with the flag
flipped, so second derivatives work too. ``cos`` and ``sin`` receive no gradient on the Triton path
(they are functions of the positions, not parameters): ``backend="triton"`` refuses tables that
require a gradient, and ``"auto"`` takes the reference, whose autograd does give them one.

The file follows the kernels' layout (DESIGN.md, "Kernels"): the reference in plain PyTorch, the
Triton kernel, the autograd wrapper, the input validation, and one public dispatching function,
:func:`rotary`. Triton is imported on first use, so this module imports (and the reference runs)
where Triton is not installed. Every invalid argument raises ``ValueError`` saying what was expected.
"""

from __future__ import annotations

import torch

from companion.device import triton_installed, triton_interpreter
from companion.kernels._util import _next_power_of_2, _on_device

__all__ = ["BACKENDS", "rotary", "rotary_reference", "rotate_half"]

# the dtypes the kernel reads and writes (float8 types are "floating point" to torch, not here)
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------------
# The reference, in plain PyTorch: the definition of what is computed.
# --------------------------------------------------------------------------------------------------

def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[a, c] -> [-c, a]`` on the last dimension, split into two halves."""
    a, c = x.chunk(2, dim=-1)
    return torch.cat((-c, a), dim=-1)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rotary_reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                     sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x * cos + rotate_half(x) * sin`` for ``x`` in ``q`` and ``k``; arguments as :func:`rotary`.

    Assumes valid inputs (:func:`rotary` validates). Computes in float32 (float64 for float64
    inputs) and rounds back to the inputs' dtype once. Its autograd gives gradients to all four
    arguments, ``cos`` and ``sin`` included.
    """
    compute = _compute_dtype(q.dtype)
    cos = cos.to(compute)[None, :, None, :]  # (1, seq, 1, head_dim) against (batch, seq, heads, head_dim)
    sin = sin.to(compute)[None, :, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        wide = x.to(compute)
        return (wide * cos + rotate_half(wide) * sin).to(x.dtype)

    return rotate(q), rotate(k)


# --------------------------------------------------------------------------------------------------
# The Triton kernel. `triton` and `tl` are bound on first use (_triton_kernel), so that importing
# this module never imports triton; the kernel's annotations are strings (`from __future__ import
# annotations`), which Triton reads as such, and its globals are looked up when it is compiled.
# --------------------------------------------------------------------------------------------------

triton = None  # the triton module, once _triton_kernel has imported it
tl = None  # triton.language, likewise
_KERNEL = None  # the jitted kernel, built once

# elements of one (BLOCK_H, BLOCK_D) tile: heads per program are capped so that a tile stays this
# small (for head_dim 128: 32 heads)
_TILE = 2048


def _rotary_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, q_out_ptr, k_out_ptr,
                   seq, q_heads, kv_heads, half,
                   q_sb, q_ss, q_sh, q_sd, k_sb, k_ss, k_sh, k_sd,
                   qo_sb, qo_ss, qo_sh, ko_sb, ko_ss, ko_sh,
                   cos_ss, cos_sd, sin_ss, sin_sd,
                   TRANSPOSE: tl.constexpr, COMPUTE_F64: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program: one (batch, position) row and one block of BLOCK_H heads, of q and of k.

    Grid ``(batch * seq, cdiv(max(q_heads, kv_heads), BLOCK_H))``. The program loads the row's
    cos and sin once (both halves, BLOCK_D >= half lanes), then the block's query heads and the
    block's key heads (masked: a block past kv_heads touches no memory of k), each as two
    (BLOCK_H, BLOCK_D) halves, and writes both outputs (contiguous in the last dimension).
    TRANSPOSE computes the gradient instead (module docstring): sin negated, halves swapped.
    """
    row = tl.program_id(0)
    block = tl.program_id(1)
    b = (row // seq).to(tl.int64)
    s = (row % seq).to(tl.int64)
    d = tl.arange(0, BLOCK_D).to(tl.int64)
    d_ok = d < half
    heads = (block * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)

    c1 = tl.load(cos_ptr + s * cos_ss + d * cos_sd, mask=d_ok, other=0.0)
    c2 = tl.load(cos_ptr + s * cos_ss + (d + half) * cos_sd, mask=d_ok, other=0.0)
    s1 = tl.load(sin_ptr + s * sin_ss + d * sin_sd, mask=d_ok, other=0.0)
    s2 = tl.load(sin_ptr + s * sin_ss + (d + half) * sin_sd, mask=d_ok, other=0.0)
    if COMPUTE_F64:
        c1, c2, s1, s2 = c1.to(tl.float64), c2.to(tl.float64), s1.to(tl.float64), s2.to(tl.float64)
    else:
        c1, c2, s1, s2 = c1.to(tl.float32), c2.to(tl.float32), s1.to(tl.float32), s2.to(tl.float32)
    if TRANSPOSE:  # dx[i] = g[i] c[i] + g[i+H] s[i+H];  dx[i+H] = g[i+H] c[i+H] - g[i] s[i]
        s_a = -s2
        s_b = -s1
    else:  # y[i] = x[i] c[i] - x[i+H] s[i];  y[i+H] = x[i+H] c[i+H] + x[i] s[i+H]
        s_a = s1
        s_b = s2
    c1, c2, s_a, s_b = c1[None, :], c2[None, :], s_a[None, :], s_b[None, :]

    # queries
    mask = (heads < q_heads)[:, None] & d_ok[None, :]
    src = q_ptr + b * q_sb + s * q_ss + heads[:, None] * q_sh + d[None, :] * q_sd
    x1 = tl.load(src, mask=mask, other=0.0)
    x2 = tl.load(src + half * q_sd, mask=mask, other=0.0)
    if COMPUTE_F64:
        x1, x2 = x1.to(tl.float64), x2.to(tl.float64)
    else:
        x1, x2 = x1.to(tl.float32), x2.to(tl.float32)
    dst = q_out_ptr + b * qo_sb + s * qo_ss + heads[:, None] * qo_sh + d[None, :]
    tl.store(dst, (x1 * c1 - x2 * s_a).to(q_out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + half, (x2 * c2 + x1 * s_b).to(q_out_ptr.dtype.element_ty), mask=mask)

    # keys
    mask = (heads < kv_heads)[:, None] & d_ok[None, :]
    src = k_ptr + b * k_sb + s * k_ss + heads[:, None] * k_sh + d[None, :] * k_sd
    x1 = tl.load(src, mask=mask, other=0.0)
    x2 = tl.load(src + half * k_sd, mask=mask, other=0.0)
    if COMPUTE_F64:
        x1, x2 = x1.to(tl.float64), x2.to(tl.float64)
    else:
        x1, x2 = x1.to(tl.float32), x2.to(tl.float32)
    dst = k_out_ptr + b * ko_sb + s * ko_ss + heads[:, None] * ko_sh + d[None, :]
    tl.store(dst, (x1 * c1 - x2 * s_a).to(k_out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + half, (x2 * c2 + x1 * s_b).to(k_out_ptr.dtype.element_ty), mask=mask)


def _triton_kernel():
    """Import triton (first call only) and jit the kernel; TRITON_INTERPRET is read at this point."""
    global triton, tl, _KERNEL
    if _KERNEL is None:
        import triton as triton_module
        import triton.language as language

        triton, tl = triton_module, language
        _KERNEL = triton.jit(_rotary_kernel)
    return _KERNEL


def _launch(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            transpose: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the kernel once over q and k; new contiguous outputs in q's (and k's) dtype."""
    batch, seq, q_heads, head_dim = q.shape
    kv_heads = k.shape[2]
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    heads = max(q_heads, kv_heads)
    if batch * seq == 0 or heads == 0:
        return q_out, k_out
    half = head_dim // 2
    block_d = _next_power_of_2(half)
    block_h = min(_next_power_of_2(heads), max(1, _TILE // block_d))
    grid = (batch * seq, (heads + block_h - 1) // block_h)
    kernel = _triton_kernel()
    # Triton launches on the current CUDA device: make it q's (a no-op for CPU tensors, interpreter)
    with _on_device(q):
        kernel[grid](
            q, k, cos, sin, q_out, k_out,
            seq, q_heads, kv_heads, half,
            *q.stride(), *k.stride(),
            *q_out.stride()[:3], *k_out.stride()[:3],
            *cos.stride(), *sin.stride(),
            TRANSPOSE=transpose, COMPUTE_F64=q.dtype == torch.float64,
            BLOCK_H=block_h, BLOCK_D=block_d,
        )
    return q_out, k_out


# --------------------------------------------------------------------------------------------------
# The autograd wrapper.
# --------------------------------------------------------------------------------------------------

class _RotaryFunction(torch.autograd.Function):
    """``(q, k) -> (q_rot, k_rot)`` by the kernel; backward: the same kernel, transposed.

    The backward pass calls this function again with ``transpose`` flipped (the transpose of the
    transpose is the forward map), so that it is itself differentiable: second derivatives work.
    ``cos`` and ``sin`` get no gradient (``None``). Gradients that autograd does not have (one
    output unused) arrive as zeros (``ctx.set_materialize_grads`` is on by default).
    """

    @staticmethod
    def forward(ctx, q, k, cos, sin, transpose):
        ctx.save_for_backward(cos, sin)
        ctx.transpose = transpose
        return _launch(q, k, cos, sin, transpose)

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        cos, sin = ctx.saved_tensors
        dq, dk = _RotaryFunction.apply(grad_q, grad_k, cos, sin, not ctx.transpose)
        return (dq if ctx.needs_input_grad[0] else None, dk if ctx.needs_input_grad[1] else None,
                None, None, None)


def rotary_triton(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton path of :func:`rotary` (forward and backward in Triton); assumes valid inputs."""
    return _RotaryFunction.apply(q, k, cos, sin, False)


# --------------------------------------------------------------------------------------------------
# Input validation: every problem is a ValueError that says what was expected.
# --------------------------------------------------------------------------------------------------

def _validate(q: object, k: object, cos: object, sin: object) -> None:
    for name, t, rank, layout in (("q", q, 4, "(batch, seq, q_heads, head_dim)"),
                                  ("k", k, 4, "(batch, seq, kv_heads, head_dim)"),
                                  ("cos", cos, 2, "(seq, head_dim)"), ("sin", sin, 2, "(seq, head_dim)")):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"rotary: expected {name} to be a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:  # the kernel reads memory through strides; sparse tensors have none
            raise ValueError(f"rotary: expected {name} to be a dense (strided) tensor, got layout {t.layout}")
        if t.ndim != rank:
            raise ValueError(f"rotary: expected {name} of rank {rank}, {layout}, got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise ValueError(f"rotary: expected {name} to have a floating-point dtype (float16, bfloat16, "
                             f"float32 or float64), got {t.dtype}")
    if q.dtype != k.dtype:
        raise ValueError(f"rotary: expected q and k to share one dtype, got {q.dtype} and {k.dtype}")
    if not q.device == k.device == cos.device == sin.device:
        raise ValueError(f"rotary: expected q, k, cos and sin on one device, "
                         f"got {q.device}, {k.device}, {cos.device}, {sin.device}")
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}"
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1]:
        raise ValueError(f"rotary: expected q and k to have the same batch (dim 0) and seq (dim 1), got {shapes}")
    head_dim = q.shape[3]
    if k.shape[3] != head_dim:
        raise ValueError(f"rotary: expected q and k to have the same head_dim (dim 3), got {shapes}")
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"rotary: expected an even head_dim >= 2 (coordinate i pairs with i + head_dim/2), "
                         f"got {shapes}")
    expected = (q.shape[1], head_dim)
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape) != expected:
            raise ValueError(f"rotary: expected {name} of shape (seq, head_dim) = {expected}, "
                             f"got {tuple(t.shape)}")


# --------------------------------------------------------------------------------------------------
# The public function.
# --------------------------------------------------------------------------------------------------

_BACKEND_FUNCTIONS = {"reference": rotary_reference, "triton": rotary_triton}
BACKENDS = ("auto", *_BACKEND_FUNCTIONS)


def _tables_need_grad(cos: torch.Tensor, sin: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (cos.requires_grad or sin.requires_grad)


def _choose_backend(backend: object, q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"rotary: expected backend to be one of {', '.join(map(repr, BACKENDS))}, "
                         f"got {backend!r}")
    if backend == "auto":
        if q.is_cuda and triton_installed() and not _tables_need_grad(cos, sin):
            return "triton"
        return "reference"
    if backend == "triton":
        if not triton_installed():
            raise ValueError("rotary: backend='triton' needs the triton package, which is not installed; "
                             "use backend='auto' or 'reference'")
        if not (q.is_cuda or (q.device.type == "cpu" and triton_interpreter())):
            raise ValueError(f"rotary: backend='triton' expected CUDA tensors (or CPU tensors with "
                             f"TRITON_INTERPRET=1 set before triton is imported), got device {q.device}")
        if _tables_need_grad(cos, sin):
            raise ValueError("rotary: backend='triton' passes no gradient to cos and sin; expected them not "
                             "to require grad (detach them, or use backend='reference')")
    return backend


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
           backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embeddings (Su et al. 2021) on queries and keys: ``(q_rot, k_rot)``.

    ``x * cos + rotate_half(x) * sin`` for ``x`` in ``q`` and ``k`` ("rotate half" pairing of
    coordinates ``i`` and ``i + head_dim/2``, as in Llama and transformers' ``apply_rotary_pos_emb``).

    Args:
        q: queries ``(batch, seq, q_heads, head_dim)``, any strides.
        k: keys ``(batch, seq, kv_heads, head_dim)``, any strides, q's dtype.
        cos, sin: ``(seq, head_dim)``, row ``s`` for sequence element ``s`` (typically float32).
        backend: ``"auto"`` (the Triton kernel for CUDA tensors when triton is installed, otherwise
            the reference), ``"reference"`` (:func:`rotary_reference`) or ``"triton"`` (one kernel
            launch for q and k, forward and backward; on CUDA, or on the CPU under Triton's
            interpreter). See :data:`BACKENDS`.

    Returns ``q_rot`` and ``k_rot`` in the shapes and dtype of ``q`` and ``k`` (computed in float32,
    float64 for float64 inputs). Gradients flow to ``q`` and ``k``; on the Triton path ``cos`` and
    ``sin`` get none (``"triton"`` refuses tables that require grad; ``"auto"`` then takes the
    reference). Any invalid argument raises ``ValueError`` naming what was expected. See the module
    docstring for the formula and its gradient.
    """
    _validate(q, k, cos, sin)
    chosen = _choose_backend(backend, q, cos, sin)
    return _BACKEND_FUNCTIONS[chosen](q, k, cos, sin)
