"""Grouped matrix multiply: each group of rows times its own weight matrix, behind one function.

What is computed, for ``x`` of shape ``(tokens, in_features)`` whose rows are sorted by group
(group 0's rows first, then group 1's, ...), ``weight`` of shape ``(groups, in_features,
out_features)`` and ``group_sizes`` ``(groups,)`` with ``sum(group_sizes) == tokens``::

    start[e] = group_sizes[0] + ... + group_sizes[e - 1]          (start[0] = 0)
    y[start[e] : start[e] + group_sizes[e]] = x[start[e] : start[e] + group_sizes[e]] @ weight[e]

so ``y`` is ``(tokens, out_features)``. Any group may be empty (size 0), or hold every token.

Why. In a mixture-of-experts layer each token is routed to one (or a few) of ``groups`` experts,
each a feed-forward network with its own weights (Fedus et al., "Switch Transformers: Scaling to
Trillion Parameter Models with Simple and Efficient Sparsity", 2022). Sorting the routed tokens by
expert turns "for every token, multiply by its expert's matrix" into one matrix multiply per expert,
``x_e @ weight[e]``, each a dense, efficient product. Running those as one grouped operation, one
kernel launch whose tiles each belong to one expert, with no padding of the groups to a common
capacity and no tokens dropped, is the block-sparse formulation of MegaBlocks (Gale et al.,
"MegaBlocks: Efficient Sparse Training with Mixture-of-Experts", 2023).

The gradient. With ``g = dL/dy`` cut into the same groups as ``x``::

    dL/dx_e      = g_e @ weight[e]^T        (the same grouped multiply, with transposed weights)
    dL/dweight[e] = x_e^T @ g_e             (zero for an empty group)

The file follows the kernels' layout (DESIGN.md, "Kernels"): the reference in plain PyTorch, the
Triton kernels, the autograd wrapper, the input validation, and one public dispatching function,
:func:`grouped_matmul`. Triton is imported on first use, so this module imports (and the reference
runs) where Triton is not installed. Every invalid argument raises ``ValueError`` saying what was
expected.
"""

from __future__ import annotations

import torch

from companion.device import triton_installed, triton_interpreter
from companion.kernels._util import _cdiv, _next_power_of_2, _on_device

__all__ = ["BACKENDS", "grouped_matmul", "grouped_matmul_reference"]

# the dtypes of x and weight: all four for the reference; the Triton path takes TRITON_DTYPES
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# the dtypes of group_sizes
SIZE_DTYPES = (torch.int32, torch.int64)


# --------------------------------------------------------------------------------------------------
# The reference, in plain PyTorch: the definition of what is computed.
# --------------------------------------------------------------------------------------------------

def grouped_matmul_reference(x: torch.Tensor, weight: torch.Tensor,
                             group_sizes: torch.Tensor) -> torch.Tensor:
    """``y[rows of group e] = x[rows of group e] @ weight[e]``, one ``matmul`` per group.

    Arguments as :func:`grouped_matmul`; assumes valid inputs (:func:`grouped_matmul` validates).
    ``x`` is cut into the groups' rows (reading ``group_sizes`` on the host) and each block is
    multiplied by its group's weight in ``x``'s dtype (PyTorch accumulates float16 and bfloat16
    products in float32 and rounds once), each product written straight into its rows of ``y``.

    The gradient is the module docstring's, one ``matmul`` per group again: ``dx`` is this same
    function with ``weight`` transposed, ``dweight[e] = x_e^T g_e`` written into one
    ``(groups, in, out)`` tensor (an empty group's is zero). Autograd through ``split``, ``cat`` and
    ``weight[e]`` computes the same products, but each ``weight[e]``'s backward allocates and zeroes
    a whole ``(groups, in, out)`` gradient and the groups' are summed: ``groups`` times the memory
    traffic, which dominated a mixture of experts' backward pass on the CPU. Differentiable twice
    (the backward is built from this function and ``matmul``, tracked when ``create_graph=True``).

    Contiguous float32 CPU tensors whose rows are multiples of 16 bytes go to PyTorch's own
    ``torch.nn.functional.grouped_mm`` instead (:func:`_torch_grouped_mm_takes`), which on the CPU
    runs this same loop, one ``mm`` per non-empty group forward and backward (an empty group's
    weight gradient zero), in C++ rather than Python: the same products without the Python loop's
    cost per group, and differentiable twice as well.
    """
    return _reference(x, weight, [int(s) for s in group_sizes.tolist()])


def _reference(x: torch.Tensor, weight: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """:func:`grouped_matmul_reference` with the group sizes as Python ints."""
    if not sizes:  # no groups, so no tokens: x @ (zeros) keeps y connected to x and weight
        return x @ weight.sum(0)
    if _torch_grouped_mm_takes(x, weight):
        offsets = torch.tensor(sizes, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        y = torch.nn.functional.grouped_mm(x, weight, offs=offsets)
        if y.requires_grad:  # its backward takes the same strides only: not y.sum()'s expanded gradient
            y.register_hook(torch.Tensor.contiguous)
        return y
    return _ReferenceFunction.apply(x, weight, sizes)


def _torch_grouped_mm_takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether PyTorch's own ``torch.nn.functional.grouped_mm`` computes the reference for these inputs.

    On the CPU (torch 2.13) it runs the same loop, one ``mm`` per non-empty group forward and
    backward, in C++: float32 only, every stride a multiple of 16 bytes. Contiguous float32 CPU
    tensors with ``in_features`` and ``out_features`` multiples of 4 qualify; everything else
    (float64, half precision, odd sizes, strided views) takes :class:`_ReferenceFunction`, and so do
    inputs with no tokens: a tensor with no elements counts as contiguous whatever its strides (a
    transposed ``(0, 16)`` view has strides ``(1, 1)``), which ``grouped_mm`` and its backward reject.
    """
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.is_contiguous() and weight.is_contiguous()
            and weight.shape[1] % 4 == 0 and weight.shape[2] % 4 == 0
            and x.shape[0] > 0)


def _row_blocks(sizes: list[int]):
    """``(group, first row, end row)`` of every non-empty group, in order."""
    start = 0
    for e, size in enumerate(sizes):
        if size:
            yield e, start, start + size
        start += size


def _mm_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """``out = a @ b`` (no autograd), as ``a @ b`` computes it: in place where ``out`` starts on a
    64-byte boundary, as a fresh tensor does, else computed apart and copied (PyTorch's CPU matmul
    may take another kernel, with another summation order, for an output that is not aligned)."""
    if out.data_ptr() % 64 == 0:
        torch.mm(a, b, out=out)
    else:
        out.copy_(a @ b)


def _grouped_products(x: torch.Tensor, weight: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """``y[rows of e] = x[rows of e] @ weight[e]`` into one preallocated ``y`` (no autograd)."""
    y = x.new_empty((x.shape[0], weight.shape[2]))
    for e, start, end in _row_blocks(sizes):
        _mm_into(x[start:end], weight[e], y[start:end])
    return y


def _weight_grad(x: torch.Tensor, grad: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """``dweight[e] = x_e^T @ grad_e`` ``(groups, in, out)``; zero for an empty group."""
    if torch.is_grad_enabled() and (x.requires_grad or grad.requires_grad):  # create_graph: tracked ops
        blocks = zip(torch.split(x, sizes), torch.split(grad, sizes))
        return torch.stack([xe.transpose(0, 1) @ ge for xe, ge in blocks])
    dw = x.new_zeros((len(sizes), x.shape[1], grad.shape[1])) if 0 in sizes else \
        x.new_empty((len(sizes), x.shape[1], grad.shape[1]))
    for e, start, end in _row_blocks(sizes):
        _mm_into(x[start:end].transpose(0, 1), grad[start:end], dw[e])
    return dw


class _ReferenceFunction(torch.autograd.Function):
    """The reference's forward and backward, one ``matmul`` per group each (see grouped_matmul_reference)."""

    @staticmethod
    def forward(ctx, x, weight, sizes):
        ctx.save_for_backward(x, weight)
        ctx.sizes = sizes
        return _grouped_products(x, weight, sizes)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = _reference(grad, weight.transpose(1, 2), ctx.sizes)
        if ctx.needs_input_grad[1]:
            dw = _weight_grad(x, grad, ctx.sizes)
        return dx, dw, None


# --------------------------------------------------------------------------------------------------
# The Triton kernels. `triton` and `tl` are bound on first use (_triton_kernels), so that importing
# this module never imports triton; the annotations are strings (`from __future__ import
# annotations`), which Triton reads as such, and a kernel's globals are looked up when it is compiled.
#
# The forward kernel (also dx, with weight transposed) runs over a list of row tiles: the host cuts
# every group's rows into tiles of BLOCK_M rows (an empty group gets none; a group's last tile may
# be short) and hands the kernel, per tile, its group, its first row and its group's end. Program
# (t, j) multiplies tile t's rows by columns j*BLOCK_N.. of its group's weight, masking rows at or
# past the group's end: no padding of groups to a common size, no work for empty groups (the
# block-sparse layout of MegaBlocks, Gale et al. 2023, with a block per tile). The dweight kernel
# runs one program per (group, BLOCK_K rows of dweight, BLOCK_N columns) and sums x_e^T dy_e over
# the group's rows, BLOCK_M at a time; an empty group's loop runs zero times and stores zeros.
# Every output element is written by exactly one program, so the result does not depend on the order
# in which tiles run (tests/test_grouped_matmul.py shuffles them: the interpreter runs them in order).
# The row mask on the stores is what keeps a group's last tile out of the next group's rows; the
# one on the loads only keeps the last group's tile from reading past the end of x.
# --------------------------------------------------------------------------------------------------

triton = None  # the triton module, once _triton_kernels has imported it
tl = None  # triton.language, likewise
_dot = None  # the jitted _dot_source, which the kernels call as _dot
_rounded = None  # the jitted _rounded_source, likewise
_KERNELS = None  # name -> the (autotuned) kernel, built once

# Under Triton's interpreter: small fixed tiles, so that small test shapes span several tiles, and
# different along each dimension, so that a mix-up of rows, columns or the reduction shows.
# forward: BLOCK_M (rows per tile), BLOCK_N, BLOCK_K; dweight: BLOCK_M (rows summed per step),
# BLOCK_K (rows of dweight), BLOCK_N.
INTERPRETER_BLOCKS = {"forward": (16, 32, 16), "dweight": (16, 32, 16)}
# On a GPU: the rows per tile of the forward kernel (fixed: the host's tile list depends on it),
# and the candidates triton.autotune times, (BLOCK_N, BLOCK_K, num_warps, num_stages) for the
# forward kernel and (BLOCK_M, BLOCK_K, BLOCK_N, num_warps, num_stages) for dweight. Not tuned on
# a particular GPU: standard matmul tiles.
GPU_BLOCK_M = 64
GPU_CONFIGS = {
    "forward": [(128, 32, 4, 4), (64, 32, 4, 4), (128, 64, 4, 3), (256, 32, 8, 3), (64, 64, 4, 3)],
    "dweight": [(32, 64, 64, 4, 3), (64, 64, 64, 4, 3), (32, 128, 128, 8, 3), (64, 128, 64, 4, 3),
                (32, 64, 128, 4, 4)],
}


def _dot_source(a, b, acc, IEEE: tl.constexpr, BF16_INTERPRETED: tl.constexpr):
    """``acc + a @ b`` in float32: IEEE float32 products for float32 operands.

    BF16_INTERPRETED is set only under Triton's interpreter for bfloat16, whose ``tl.dot`` there
    (triton 3.9) multiplies the raw 16-bit patterns as integers: the operands are widened to float32
    first, which is exact, so the result is the tensor core's (bfloat16 products, float32 sums).
    """
    if BF16_INTERPRETED:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


def _rounded_source(acc, BF16_INTERPRETED: tl.constexpr):
    """``acc`` (float32) ready to be cast to the output's dtype.

    Under Triton's interpreter (triton 3.9) the cast float32 -> bfloat16 rounds toward zero (and
    mishandles zero), not to nearest as a GPU does: with BF16_INTERPRETED set, the rounding to
    nearest, ties to even, is done here on the bits (add ``0x7FFF`` plus the lowest kept bit, keep
    the upper 16 bits) and the result reinterpreted as bfloat16, bit-identical to PyTorch's
    ``.to(torch.bfloat16)`` for finite values. Otherwise ``acc`` unchanged.
    """
    if BF16_INTERPRETED:
        bits = acc.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return acc


def _forward_kernel(x_ptr, w_ptr, y_ptr, tile_group_ptr, tile_start_ptr, tile_end_ptr,
                    in_features, out_features, x_sm, x_sk, w_sg, w_sk, w_sn, y_sm, y_sn,
                    IEEE: tl.constexpr, BF16_INTERPRETED: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``y[tile's rows, block of columns] = x[tile's rows] @ weight[tile's group][:, block]``.

    Grid ``(tiles, cdiv(out_features, BLOCK_N))``. Rows at or past the group's end (the end of a
    group's last, short tile) are masked: they belong to the next group, or lie past ``tokens``.
    """
    tile = tl.program_id(0)
    group = tl.load(tile_group_ptr + tile).to(tl.int64)
    start = tl.load(tile_start_ptr + tile).to(tl.int64)
    end = tl.load(tile_end_ptr + tile).to(tl.int64)
    rows = start + tl.arange(0, BLOCK_M).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_ok = rows < end
    col_ok = cols < out_features
    ks = tl.arange(0, BLOCK_K).to(tl.int64)
    w_group = w_ptr + group * w_sg
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, in_features, BLOCK_K):
        k = k0 + ks
        k_ok = k < in_features
        a = tl.load(x_ptr + rows[:, None] * x_sm + k[None, :] * x_sk,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_group + k[:, None] * w_sk + cols[None, :] * w_sn,
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = _dot(a, b, acc, IEEE, BF16_INTERPRETED)
    y = _rounded(acc, BF16_INTERPRETED).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + rows[:, None] * y_sm + cols[None, :] * y_sn, y, mask=row_ok[:, None] & col_ok[None, :])


def _dweight_kernel(x_ptr, dy_ptr, dw_ptr, offsets_ptr, in_features, out_features,
                    x_sm, x_sk, dy_sm, dy_sn, dw_sg, dw_sk, dw_sn, rows_bucket,
                    IEEE: tl.constexpr, BF16_INTERPRETED: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """``dweight[e][block of k, block of n] = x_e[:, block of k]^T @ dy_e[:, block of n]``.

    Grid ``(groups, cdiv(in_features, BLOCK_K), cdiv(out_features, BLOCK_N))``; group e's rows are
    ``offsets[e] <= row < offsets[e + 1]``, summed BLOCK_M at a time (zero times for an empty group,
    which stores zeros). ``rows_bucket`` is only the autotuner's key.
    """
    group = tl.program_id(0).to(tl.int64)
    start = tl.load(offsets_ptr + group).to(tl.int64)
    end = tl.load(offsets_ptr + group + 1).to(tl.int64)
    k = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    n = tl.program_id(2).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    k_ok = k < in_features
    n_ok = n < out_features
    ms = tl.arange(0, BLOCK_M).to(tl.int64)
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for m0 in range(start, end, BLOCK_M):
        rows = m0 + ms
        row_ok = rows < end
        x_t = tl.load(x_ptr + rows[None, :] * x_sm + k[:, None] * x_sk,  # (BLOCK_K, BLOCK_M): x_e^T
                      mask=k_ok[:, None] & row_ok[None, :], other=0.0)
        g = tl.load(dy_ptr + rows[:, None] * dy_sm + n[None, :] * dy_sn,  # (BLOCK_M, BLOCK_N)
                    mask=row_ok[:, None] & n_ok[None, :], other=0.0)
        acc = _dot(x_t, g, acc, IEEE, BF16_INTERPRETED)
    dw = _rounded(acc, BF16_INTERPRETED).to(dw_ptr.dtype.element_ty)
    tl.store(dw_ptr + group * dw_sg + k[:, None] * dw_sk + n[None, :] * dw_sn, dw,
             mask=k_ok[:, None] & n_ok[None, :])


def _configs(kind: str) -> list:
    """The configurations the autotuner may choose from: one fixed, small one under the
    interpreter (autotuning there would time Python), a few on a GPU."""
    if triton_interpreter():
        if kind == "forward":
            _, block_n, block_k = INTERPRETER_BLOCKS["forward"]
            return [triton.Config({"BLOCK_N": block_n, "BLOCK_K": block_k})]
        block_m, block_k, block_n = INTERPRETER_BLOCKS["dweight"]
        return [triton.Config({"BLOCK_M": block_m, "BLOCK_K": block_k, "BLOCK_N": block_n})]
    if kind == "forward":
        return [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
                for n, k, w, s in GPU_CONFIGS["forward"]]
    return [triton.Config({"BLOCK_M": m, "BLOCK_K": k, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, k, n, w, s in GPU_CONFIGS["dweight"]]


def _triton_kernels() -> dict:
    """Import triton (first call only) and build the kernels; TRITON_INTERPRET is read at this point.

    Returns ``{"forward", "dweight"}`` -> the autotuned kernel. The keys are the feature sizes (and,
    for dweight, the largest group rounded up to a power of two); Triton adds the dtypes.
    """
    global triton, tl, _dot, _rounded, _KERNELS
    if _KERNELS is None:
        import triton as triton_module
        import triton.language as language

        triton, tl = triton_module, language
        if _dot is None:
            _dot, _rounded = triton.jit(_dot_source), triton.jit(_rounded_source)
        _KERNELS = {
            "forward": triton.autotune(_configs("forward"), key=["in_features", "out_features"])(
                triton.jit(_forward_kernel)),
            "dweight": triton.autotune(_configs("dweight"),
                                       key=["in_features", "out_features", "rows_bucket"])(
                triton.jit(_dweight_kernel)),
        }
    return _KERNELS


def _block_m() -> int:
    return INTERPRETER_BLOCKS["forward"][0] if triton_interpreter() else GPU_BLOCK_M


def _plan(sizes: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel's tile list and the groups' row offsets, on ``device``.

    Returns ``tiles`` ``(3, n_tiles)`` int64, rows (group, first row, group's end) per tile of at
    most BLOCK_M rows (the groups' tiles in order; an empty group has none), and ``offsets``
    ``(groups + 1,)`` int64, the cumulative sizes (group e's rows are ``offsets[e]:offsets[e + 1]``).
    Built on the CPU from the sizes already read for validation, and copied over once.
    """
    block_m = _block_m()
    counts = torch.tensor(sizes, dtype=torch.int64)
    offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    tiles_per_group = (counts + block_m - 1) // block_m
    group = torch.repeat_interleave(torch.arange(len(sizes)), tiles_per_group)
    first_tile = torch.cumsum(tiles_per_group, 0) - tiles_per_group  # index of each group's first tile
    index_in_group = torch.arange(group.numel()) - first_tile[group]
    start = offsets[group] + index_in_group * block_m
    end = offsets[group + 1]
    plan = torch.cat([torch.stack([group, start, end]).flatten(), offsets]).to(device)
    n = group.numel()
    return plan[:3 * n].view(3, n), plan[3 * n:]


def _grouped_forward(x: torch.Tensor, weight: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
    """``y = grouped x @ weight`` by the forward kernel; ``weight`` may be any view (transposed for
    dx). A new contiguous ``(tokens, weight.shape[2])`` tensor in x's dtype."""
    tokens, in_features = x.shape
    out_features = weight.shape[2]
    y = torch.empty((tokens, out_features), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    if in_features == 0:
        return y.zero_()
    n_tiles = tiles.shape[1]
    with _on_device(x):
        _triton_kernels()["forward"][lambda meta: (n_tiles, _cdiv(out_features, meta["BLOCK_N"]))](
            x, weight, y, tiles[0], tiles[1], tiles[2], in_features, out_features,
            *x.stride(), *weight.stride(), *y.stride(),
            IEEE=x.dtype == torch.float32, BF16_INTERPRETED=x.dtype == torch.bfloat16 and triton_interpreter(),
            BLOCK_M=_block_m())
    return y


def _grouped_dweight(x: torch.Tensor, grad: torch.Tensor, offsets: torch.Tensor, sizes: list[int],
                     dtype: torch.dtype) -> torch.Tensor:
    """``dweight[e] = x_e^T grad_e`` by the dweight kernel (zeros for empty groups); a new
    contiguous ``(groups, in_features, out_features)`` tensor of ``dtype``."""
    in_features, out_features = x.shape[1], grad.shape[1]
    groups = len(sizes)
    dw = torch.empty((groups, in_features, out_features), dtype=dtype, device=x.device)
    if dw.numel() == 0:
        return dw
    with _on_device(x):
        _triton_kernels()["dweight"][lambda meta: (groups, _cdiv(in_features, meta["BLOCK_K"]),
                                                   _cdiv(out_features, meta["BLOCK_N"]))](
            x, grad, dw, offsets, in_features, out_features,
            *x.stride(), *grad.stride(), *dw.stride(), _next_power_of_2(max(sizes)),
            IEEE=x.dtype == torch.float32, BF16_INTERPRETED=x.dtype == torch.bfloat16 and triton_interpreter())
    return dw


# --------------------------------------------------------------------------------------------------
# The autograd wrapper.
# --------------------------------------------------------------------------------------------------

class _GroupedMatmulFunction(torch.autograd.Function):
    """``y = grouped x @ weight`` by the forward kernel; backward by the two kernels.

    ``dx`` is the forward kernel over the same tiles with ``weight`` transposed (a strided view, no
    copy); ``dweight`` is the dweight kernel. The backward pass is not itself differentiable
    (``once_differentiable``).
    """

    @staticmethod
    def forward(ctx, x, weight, sizes):
        tiles, offsets = _plan(sizes, x.device)
        ctx.save_for_backward(x, weight)
        ctx.tiles, ctx.offsets, ctx.sizes = tiles, offsets, sizes
        return _grouped_forward(x, weight, tiles)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = _grouped_forward(grad, weight.transpose(1, 2), ctx.tiles)
        if ctx.needs_input_grad[1]:
            dw = _grouped_dweight(x, grad, ctx.offsets, ctx.sizes, weight.dtype)
        return dx, dw, None


def grouped_matmul_triton(x: torch.Tensor, weight: torch.Tensor,
                          group_sizes: torch.Tensor) -> torch.Tensor:
    """The Triton path of :func:`grouped_matmul` (forward and backward in Triton); assumes valid
    inputs of dtype float16, bfloat16 or float32 on CUDA (or on the CPU under the interpreter).

    Products are accumulated in float32 (IEEE float32 products for float32 inputs, not TF32) and
    rounded to x's dtype once. Gradients: ``dx`` by the same kernel with transposed weights,
    ``dweight`` by a second kernel that sums ``x_e^T dy_e`` over each group's rows. That kernel runs
    one program per (group, tile of dweight), so a group holding most tokens is summed by few
    programs: correct, but slower than a split-K reduction would be.
    """
    sizes = [int(s) for s in group_sizes.tolist()]
    return _GroupedMatmulFunction.apply(x, weight, sizes)


# --------------------------------------------------------------------------------------------------
# Input validation: every problem is a ValueError that says what was expected.
# --------------------------------------------------------------------------------------------------

def _validate(x: object, weight: object, group_sizes: object) -> list[int]:
    """Check the arguments; return the group sizes as Python ints (read on the host)."""
    for name, t, rank, layout in (("x", x, 2, "(tokens, in_features)"),
                                  ("weight", weight, 3, "(groups, in_features, out_features)")):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"grouped_matmul: expected {name} to be a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise ValueError(f"grouped_matmul: expected {name} to be a dense (strided) tensor, "
                             f"got layout {t.layout}")
        if t.ndim != rank:
            raise ValueError(f"grouped_matmul: expected {name} of rank {rank}, {layout}, "
                             f"got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise ValueError(f"grouped_matmul: expected {name} to have a floating-point dtype (float16, "
                             f"bfloat16, float32 or float64), got {t.dtype}")
    if x.dtype != weight.dtype:
        raise ValueError(f"grouped_matmul: expected x and weight to share one dtype, "
                         f"got {x.dtype} and {weight.dtype}")
    if x.device != weight.device:
        raise ValueError(f"grouped_matmul: expected x and weight on one device, "
                         f"got {x.device} and {weight.device}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"grouped_matmul: expected x (tokens, in_features) and weight (groups, in_features, "
                         f"out_features) to have the same in_features, got x {tuple(x.shape)} and "
                         f"weight {tuple(weight.shape)}")
    if not isinstance(group_sizes, torch.Tensor):
        raise ValueError(f"grouped_matmul: expected group_sizes to be a torch.Tensor of int64 or int32, "
                         f"got {type(group_sizes).__name__}")
    if group_sizes.layout != torch.strided or group_sizes.dtype not in SIZE_DTYPES:
        raise ValueError(f"grouped_matmul: expected group_sizes to be a dense int64 or int32 tensor, "
                         f"got dtype {group_sizes.dtype} (layout {group_sizes.layout})")
    if group_sizes.device not in (x.device, torch.device("cpu")):
        raise ValueError(f"grouped_matmul: expected group_sizes on x's device ({x.device}) or on the CPU, "
                         f"got {group_sizes.device}")
    groups = weight.shape[0]
    if tuple(group_sizes.shape) != (groups,):
        raise ValueError(f"grouped_matmul: expected group_sizes of shape (groups,) = ({groups},), one count "
                         f"per weight matrix, got {tuple(group_sizes.shape)}")
    sizes = [int(s) for s in group_sizes.tolist()]
    if any(s < 0 for s in sizes):
        raise ValueError(f"grouped_matmul: expected non-negative group_sizes, got {sizes}")
    if sum(sizes) != x.shape[0]:
        raise ValueError(f"grouped_matmul: expected group_sizes to sum to tokens = x.shape[0] = {x.shape[0]}, "
                         f"got sum {sum(sizes)}")
    return sizes


# --------------------------------------------------------------------------------------------------
# The public function.
# --------------------------------------------------------------------------------------------------

BACKENDS = ("auto", "reference", "triton")


def _triton_unsupported(x: torch.Tensor) -> str | None:
    """Why the Triton path cannot take these valid inputs (a ValueError message), or None."""
    if not triton_installed():
        return ("grouped_matmul: backend='triton' needs the triton package, which is not installed; "
                "use backend='auto' or 'reference'")
    if not (x.is_cuda or (x.device.type == "cpu" and triton_interpreter())):
        return (f"grouped_matmul: backend='triton' expected CUDA tensors (or CPU tensors with "
                f"TRITON_INTERPRET=1 set before triton is imported), got device {x.device}")
    if x.dtype not in TRITON_DTYPES:
        return (f"grouped_matmul: backend='triton' expected x and weight of dtype float16, bfloat16 or "
                f"float32, got {x.dtype}; use backend='reference' (or 'auto') for it")
    return None


def _choose_backend(backend: object, x: torch.Tensor) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"grouped_matmul: expected backend to be one of {', '.join(map(repr, BACKENDS))}, "
                         f"got {backend!r}")
    if backend == "auto":
        return "triton" if x.is_cuda and _triton_unsupported(x) is None else "reference"
    if backend == "triton":
        why = _triton_unsupported(x)
        if why is not None:
            raise ValueError(why)
    return backend


def grouped_matmul(x: torch.Tensor, weight: torch.Tensor, group_sizes: torch.Tensor, *,
                   backend: str = "auto") -> torch.Tensor:
    """Grouped matrix multiply: ``y[rows of group e] = x[rows of group e] @ weight[e]``.

    The core of mixture-of-experts dispatch (tokens sorted by expert, Switch Transformers, Fedus et
    al. 2022; one grouped multiply for all experts, MegaBlocks, Gale et al. 2023).

    Args:
        x: ``(tokens, in_features)``, rows sorted by group: group 0's ``group_sizes[0]`` rows first,
            then group 1's, and so on. Any strides.
        weight: ``(groups, in_features, out_features)``, ``weight[e]`` for group ``e``; x's dtype and
            device. Any strides.
        group_sizes: ``(groups,)`` int64 or int32, non-negative, summing to ``tokens`` (on x's device
            or on the CPU; it is read on the host). Empty groups are allowed.
        backend: ``"auto"`` (the Triton kernels for CUDA tensors of dtype float16, bfloat16 or
            float32 when triton is installed, otherwise the reference), ``"reference"``
            (:func:`grouped_matmul_reference`) or ``"triton"`` (forward and backward in Triton; on
            CUDA, or on the CPU under Triton's interpreter). See :data:`BACKENDS`.

    Returns ``y`` ``(tokens, out_features)`` in x's dtype (products accumulated in float32, or
    float64 for float64). Gradients flow to ``x`` and ``weight`` (``dx_e = dy_e weight[e]^T``,
    ``dweight[e] = x_e^T dy_e``); ``group_sizes`` gets none. Any invalid argument raises
    ``ValueError`` naming what was expected.
    """
    sizes = _validate(x, weight, group_sizes)
    if _choose_backend(backend, x) == "triton":
        return _GroupedMatmulFunction.apply(x, weight, sizes)
    return _reference(x, weight, sizes)

