"""The selective scan of Mamba: a linear recurrence whose step size, input and output maps depend on
the input, behind one function.

What is computed (Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
2023, Algorithm 2 and section 3.3; the argument conventions of their ``mamba_ssm`` package's
``selective_scan_fn``). With ``u`` and ``delta`` of shape ``(batch, dim, length)``, ``A``
``(dim, state)``, ``B`` and ``C`` ``(batch, groups, state, length)`` (or ``(batch, state, length)``,
one group), channel ``d`` reading group ``g(d) = d // (dim // groups)``, and for every batch
element ``b``, channel ``d`` and state index ``n``::

    dt[b, d, t]   = delta[b, d, t] (+ delta_bias[d])             then softplus, if delta_softplus
    h[b, d, n, t] = exp(dt[b, d, t] A[d, n]) h[b, d, n, t - 1]  +  dt[b, d, t] B[b, g(d), n, t] u[b, d, t]
    y[b, d, t]    = sum_n C[b, g(d), n, t] h[b, d, n, t]  (+ D[d] u[b, d, t])  (* silu(z[b, d, t]))

with ``h[..., -1] = 0``. ``exp(dt A)`` is the zero-order-hold discretization of ``A`` and
``dt B`` the simplified (Euler) one of ``B`` that the paper uses (section 3.2, eq. 4; Algorithm 2).
The step ``dt``, ``B`` and ``C`` are functions of the input (section 3.2, "selection"), so the
recurrence is not a convolution: it must be scanned. ``y`` is ``(batch, dim, length)``; the final
state ``h[..., length - 1]`` is ``(batch, dim, state)``. :func:`selective_scan_step` advances the
same recurrence by one position (decoding, section 3.4: constant memory per token).

The backends of :func:`selective_scan` (``backend=``):

- ``"reference"`` (:func:`selective_scan_reference`): the recurrence above, a loop over time in
  plain PyTorch; the definition. Differentiable by autograd (twice as well).
- ``"chunked"`` (:func:`selective_scan_chunked`): the same recurrence cut into chunks of
  :data:`CHUNK_SIZE` steps, for speed on the CPU. Each chunk's decays ``exp(dt A)``, inputs
  ``dt B u`` and outputs ``C h`` are whole-chunk tensor operations, the steps inside a chunk one
  fused multiply-add each (``h = a * h + b``, in place), and only the state entering each chunk is
  kept; the backward pass (written out, not autograd: :class:`_ChunkedScan`) re-runs each chunk from
  its saved state and runs the adjoint recurrence backwards through it. Why not the parallel form,
  cumulative sums of ``dt A`` giving every intra-chunk decay at once: Mamba's decay depends on the
  state index ``n`` as well as the channel, so that form needs ``chunk x chunk x state`` decays per
  channel (``chunk`` times the work), and forms that run chunks side by side were 2 to 3 times
  slower than the plain loop on the CPU (see :func:`selective_scan_chunked`).
- ``"triton"`` (:func:`selective_scan_triton`): Triton kernels, forward and backward, chunked
  along time with a parallel scan inside each chunk (the design is described above
  :func:`_forward_kernel`); on CUDA, or on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``).
- ``"auto"``: ``"triton"`` for CUDA tensors of float16, bfloat16 or float32 when triton is
  installed, ``"chunked"`` otherwise.

Precision. Every backend computes in float32 (float64 when any input is float64), whatever the
inputs' dtypes (float16, bfloat16, float32, float64, freely mixed, as ``mamba_ssm`` mixes float32
``A``, ``D`` and ``delta_bias`` with half-precision activations); ``y`` is rounded to ``u``'s dtype
once. The final state is returned in the computation's dtype (float32 for half-precision inputs, as
``mamba_ssm`` does, so that decoding from it loses nothing; float64 for float64).

The gradient (the adjoint recurrence, reverse in time; the backward passes of the chunked and
Triton backends compute it, autograd the reference's). With ``g = dL/dy`` and the state's adjoint
``lam[t] = dL/dh[t]``::

    g_out[t] = g[t] silu(z[t])                       (g[t] without z)
    lam[t]   = g_out[t] C[t] + exp(dt[t+1] A) lam[t+1]   (lam[length] = dL/d final state, or 0)
    dC[t]   += g_out[t] h[t]                         (summed over the channels of the group)
    dB[t]   += lam[t] dt[t] u[t]                     (likewise)
    du[t]    = sum_n lam[t] dt[t] B[t] + g_out[t] D
    ddt[t]   = sum_n lam[t] (A exp(dt[t] A) h[t-1] + B[t] u[t])
    dA      += sum_t lam[t] dt[t] exp(dt[t] A) h[t-1]
    dD      += sum_t g_out[t] u[t];   dz[t] = g[t] (C h + D u)[t] silu'(z[t])

and ``ddelta = ddt * sigmoid(delta + delta_bias)`` with softplus (``ddt`` without), ``ddelta_bias``
its sum over batch and time.

The file follows the kernels' layout (DESIGN.md, "Kernels"): the reference in plain PyTorch (and
the chunked PyTorch scan and the decoding step), the Triton kernels, the autograd wrappers, the
input validation, and the public functions :func:`selective_scan` and :func:`selective_scan_step`.
Triton is imported on first use, so this module imports (and the PyTorch backends run) where Triton
is not installed. Every invalid argument raises ``ValueError`` saying what was expected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from companion.device import triton_installed, triton_interpreter
from companion.kernels._util import _cdiv, _next_power_of_2, _on_device

__all__ = ["BACKENDS", "CHUNK_SIZE", "selective_scan", "selective_scan_chunked", "selective_scan_reference",
           "selective_scan_step", "selective_scan_triton"]

# the dtypes every argument may have (freely mixed); the Triton path takes TRITON_DTYPES
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The chunked backend's steps per chunk. Forward + backward on a two-core AMD EPYC, one torch
# thread, quiet machine: at batch 2, dim 512, state 16, length 512, chunks of 8 took 0.146 s, of 16
# 0.139 s, of 32 0.196 s, of 64 0.207 s (a chunk's tensors, chunk * batch * dim * state floats,
# stop fitting in the cache), the reference loop 0.161 s; at batch 8, dim 128, length 256: 0.060,
# 0.060, 0.091, 0.099 s and 0.065 s; at batch 4, dim 64, length 512: 0.045, 0.036, 0.034, 0.034 s
# and 0.075 s.
CHUNK_SIZE = 16


# --------------------------------------------------------------------------------------------------
# Shared pieces: the computation's dtype, the step sizes, the groups, the skip term and the gate.
# --------------------------------------------------------------------------------------------------

def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any tensor is float64, else float32: the dtype every backend computes in."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _step_sizes(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool,
                dtype: torch.dtype) -> torch.Tensor:
    """``dt = delta (+ delta_bias)``, then ``softplus`` if asked, in ``dtype``; delta's shape,
    ``(batch, dim, length)`` or ``(batch, dim)`` (one step), with ``delta_bias`` ``(dim,)``."""
    dt = delta.to(dtype)
    if delta_bias is not None:
        bias = delta_bias.to(dtype)
        dt = dt + (bias[:, None] if dt.ndim == 3 else bias)
    return F.softplus(dt) if delta_softplus else dt


def _grouped(x: torch.Tensor) -> torch.Tensor:
    """B or C as ``(batch, groups, state, ...)``: a ``(batch, state, ...)`` tensor is one group."""
    return x.unsqueeze(1) if x.ndim == 3 else x


def _skip_and_gate(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """``y (+ D[:, None] u) (* silu(z))`` in y's dtype, for ``(batch, dim, length)`` tensors
    (``(batch, dim)`` when ``y`` is 2-D)."""
    if D is not None:
        d = D.to(y.dtype)
        y = y + (d[:, None] if y.ndim == 3 else d) * u.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


# --------------------------------------------------------------------------------------------------
# The reference, in plain PyTorch: the definition of what is computed.
# --------------------------------------------------------------------------------------------------

def selective_scan_reference(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                             C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                             delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                             return_last_state: bool = False):
    """The selective scan as a loop over time: Algorithm 2 of Gu and Dao (2023), one step per position.

    Arguments and result as :func:`selective_scan`; assumes valid inputs (``selective_scan``
    validates). For each position ``t``, on ``(batch, groups, dim // groups, state)`` tensors
    (channel ``d`` is ``(d // (dim // groups), d % (dim // groups))``, so each group's ``B`` and
    ``C`` broadcast over its channels)::

        h = exp(dt[t] A) * h + (dt[t] u[t]) B[t]         (batch, dim, state)
        y[t] = sum_n C[t] h                              (batch, dim)

    then ``y + D u`` and ``* silu(z)``. Computed in float32 (float64 if any input is float64); ``y``
    rounded to u's dtype, the final state returned in the computation's dtype. Differentiable by
    autograd, twice as well. The per-step slices come from ``unbind``, whose backward writes one
    gradient tensor (slicing ``x[..., t]`` instead would allocate a zero gradient as large as ``x``
    for every step).
    """
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    B4, C4 = _grouped(B).to(dtype), _grouped(C).to(dtype)
    groups, state = B4.shape[1], B4.shape[2]
    per_group = dim // groups
    dt = _step_sizes(delta, delta_bias, delta_softplus, dtype).reshape(batch, groups, per_group, length)
    x = dt * u.to(dtype).reshape(batch, groups, per_group, length)  # dt u, the input's weight
    A3 = A.to(dtype).reshape(groups, per_group, state)
    h = torch.zeros(batch, groups, per_group, state, dtype=dtype, device=u.device)
    ys = []
    for dt_t, x_t, B_t, C_t in zip(dt.unbind(-1), x.unbind(-1), B4.unbind(-1), C4.unbind(-1)):
        h = torch.exp(dt_t[..., None] * A3) * h + x_t[..., None] * B_t[:, :, None, :]
        ys.append((h * C_t[:, :, None, :]).sum(-1))
    if ys:
        y = torch.stack(ys, -1)
    else:  # no positions: empty y and a zero state, still connected to the inputs (zero gradients)
        y, h = x, h + 0 * A3
    y = _skip_and_gate(y.reshape(batch, dim, length), u, D, z).to(u.dtype)
    return (y, h.reshape(batch, dim, state)) if return_last_state else y


def selective_scan_step(state: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                        B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None,
                        z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                        delta_softplus: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the selective scan, for decoding (Gu and Dao 2023, section 3.4): ``(y, new_state)``.

    Args:
        state: ``(batch, dim, state)``, the state after the previous position (zeros before the
            first), e.g. ``selective_scan(..., return_last_state=True)[1]``.
        u, delta: ``(batch, dim)``, this position's input and step.
        A: ``(dim, state)``.
        B, C: ``(batch, state)`` or ``(batch, groups, state)`` (groups dividing dim).
        D, delta_bias: ``(dim,)`` or None; z: ``(batch, dim)`` or None.
        delta_softplus: as :func:`selective_scan`.

    Computes ``dt = delta (+ delta_bias)`` (softplus if asked), ``new_state = exp(dt A) state +
    dt B u`` and ``y = sum_n C new_state (+ D u) (* silu(z))``: position ``t`` of the scan, given
    the state after ``t - 1``, so that stepping through a sequence from zeros gives the scan's ``y``
    position by position and its final state. ``y`` is ``(batch, dim)`` in u's dtype; ``new_state``
    ``(batch, dim, state)`` in float32 (float64 if any input is float64), a new tensor (``state``
    is not changed). Differentiable (plain PyTorch, autograd). Invalid arguments raise ``ValueError``.
    """
    _validate_step(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    dtype = _compute_dtype(state, u, delta, A, B, C, D, z, delta_bias)
    batch, dim = u.shape
    B3, C3 = (B.unsqueeze(1) if B.ndim == 2 else B).to(dtype), (C.unsqueeze(1) if C.ndim == 2 else C).to(dtype)
    groups, size = B3.shape[1], B3.shape[2]
    per_group = dim // groups
    dt = _step_sizes(delta, delta_bias, delta_softplus, dtype).reshape(batch, groups, per_group)
    x = dt * u.to(dtype).reshape(batch, groups, per_group)
    h = state.to(dtype).reshape(batch, groups, per_group, size)
    h = torch.exp(dt[..., None] * A.to(dtype).reshape(groups, per_group, size)) * h + x[..., None] * B3[:, :, None, :]
    y = (h * C3[:, :, None, :]).sum(-1).reshape(batch, dim)
    return _skip_and_gate(y, u, D, z).to(u.dtype), h.reshape(batch, dim, size)


# --------------------------------------------------------------------------------------------------
# The chunked scan, in plain PyTorch: the same recurrence, chunk by chunk, with a written-out backward.
# --------------------------------------------------------------------------------------------------

def _time_major(x: torch.Tensor, batch: int, groups: int, per_group: int) -> torch.Tensor:
    """``(batch, dim, length)`` -> ``(length, batch, groups, per_group)``, contiguous: each
    position's slice is one block of memory."""
    return x.permute(2, 0, 1).reshape(x.shape[2], batch, groups, per_group)


class _ChunkedScan(torch.autograd.Function):
    """``(dt, u, A, B, C) -> (y_ssm, final state)`` chunk by chunk; a written-out backward.

    Inputs, all in one dtype (float32 or float64): ``dt`` and ``u`` ``(batch, dim, length)``
    (``dt`` after bias and softplus), ``A`` ``(dim, state)``, ``B`` and ``C`` ``(batch, groups,
    state, length)``. Output ``y_ssm[b, d, t] = sum_n C h`` (no skip term, no gate: autograd adds
    those around this function) and the final state ``(batch, dim, state)``.

    Everything runs time-major, ``(length, batch, groups, per_group, state)``, so that each step's
    slice is contiguous. Per chunk of ``chunk`` positions: the decays ``a = exp(dt A)`` and inputs
    ``b = dt u B`` as whole-chunk tensors, then ``h = a[t] * h + b[t]`` once per step
    (``torch.addcmul`` into a chunk buffer), then the outputs ``sum_n C h`` for the chunk at once.
    The forward pass keeps only the state entering each chunk (``ceil(length / chunk) x batch x dim
    x state`` values). The backward pass goes through the chunks in reverse: it re-runs the chunk
    from its saved state (keeping the state before each step too, so ``h[t-1]`` is read, not
    recovered by subtraction), runs the adjoint ``lam[t] = g[t] C[t] + a[t+1] lam[t+1]`` backwards
    one ``addcmul`` per step, and forms the chunk's gradients (module docstring) as whole-chunk
    products and sums; ``a[t0] lam[t0]`` carries into the previous chunk. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, dt, u, A, B, C, chunk):
        ctx.set_materialize_grads(False)
        batch, dim, length = u.shape
        groups, state = B.shape[1], B.shape[2]
        per_group = dim // groups
        dt_t = _time_major(dt, batch, groups, per_group)[..., None]  # (L, b, g, p, 1)
        x_t = _time_major(dt * u, batch, groups, per_group)[..., None]
        B_t = B.permute(3, 0, 1, 2).unsqueeze(3)  # (L, b, g, 1, n)
        C_t = C.permute(3, 0, 1, 2)  # (L, b, g, n)
        A3 = A.reshape(groups, per_group, state)
        chunks = -(-length // chunk)
        entering = u.new_empty(chunks, batch, groups, per_group, state)  # the state entering each chunk
        y = u.new_empty(length, batch, groups, per_group)
        h = u.new_zeros(batch, groups, per_group, state)
        states = u.new_empty(min(chunk, length), batch, groups, per_group, state)
        for k in range(chunks):
            t0, t1 = k * chunk, min(k * chunk + chunk, length)
            entering[k] = h
            a = torch.exp(dt_t[t0:t1] * A3)  # (m, b, g, p, n)
            b = x_t[t0:t1] * B_t[t0:t1]
            for t in range(t1 - t0):
                h = torch.addcmul(b[t], a[t], h, out=states[t])  # h = a h + b
            y[t0:t1] = torch.einsum("tbgpn,tbgn->tbgp", states[:t1 - t0], C_t[t0:t1])
            h = h.clone()  # the buffer is overwritten by the next chunk
        ctx.save_for_backward(dt, u, A, B, C, entering)
        ctx.chunk = chunk
        return y.permute(1, 2, 3, 0).reshape(batch, dim, length), h.reshape(batch, dim, state)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_last):
        dt, u, A, B, C, entering = ctx.saved_tensors
        chunk = ctx.chunk
        batch, dim, length = u.shape
        groups, state = B.shape[1], B.shape[2]
        per_group = dim // groups
        dt_t = _time_major(dt, batch, groups, per_group)  # (L, b, g, p)
        u_t = _time_major(u, batch, groups, per_group)
        x_t = dt_t * u_t
        B_t = B.permute(3, 0, 1, 2)  # (L, b, g, n)
        C_t = C.permute(3, 0, 1, 2)
        g_t = (torch.zeros_like(x_t) if grad_y is None
               else _time_major(grad_y.to(u.dtype), batch, groups, per_group))
        A3 = A.reshape(groups, per_group, state)
        d_dt, d_u = torch.empty_like(dt_t), torch.empty_like(u_t)
        d_A = torch.zeros_like(A3)
        d_B, d_C = B.new_empty(length, batch, groups, state), C.new_empty(length, batch, groups, state)
        carry = (u.new_zeros(batch, groups, per_group, state) if grad_last is None
                 else grad_last.to(u.dtype).reshape(batch, groups, per_group, state))
        m_max = min(chunk, length)
        states = u.new_empty(m_max + 1, batch, groups, per_group, state)  # h[t0 - 1], ..., h[t1 - 1]
        lam = u.new_empty(m_max, batch, groups, per_group, state)
        for k in reversed(range(entering.shape[0])):
            t0, t1 = k * chunk, min(k * chunk + chunk, length)
            m = t1 - t0
            a = torch.exp(dt_t[t0:t1, ..., None] * A3)
            b = x_t[t0:t1, ..., None] * B_t[t0:t1, :, :, None]
            states[0] = entering[k]
            for t in range(m):
                torch.addcmul(b[t], a[t], states[t], out=states[t + 1])
            gC = g_t[t0:t1, ..., None] * C_t[t0:t1, :, :, None]  # dL/dh[t] through y[t]
            torch.add(gC[m - 1], carry, out=lam[m - 1])
            for t in range(m - 2, -1, -1):
                torch.addcmul(gC[t], a[t + 1], lam[t + 1], out=lam[t])
            lm = lam[:m]
            carry = a[0] * lm[0]  # exp(dt[t0] A) lam[t0]: flows into h[t0 - 1], the previous chunk
            q = torch.mul(lm, a, out=a).mul_(states[:m])  # lam[t] exp(dt[t] A) h[t-1] (a is not needed now)
            d_A += torch.einsum("tbgpn,tbgp->gpn", q, dt_t[t0:t1])
            dx = torch.einsum("tbgpn,tbgn->tbgp", lm, B_t[t0:t1])  # sum_n lam B = dL/d(dt u)
            d_dt[t0:t1] = torch.einsum("tbgpn,gpn->tbgp", q, A3) + dx * u_t[t0:t1]
            d_u[t0:t1] = dx * dt_t[t0:t1]
            d_B[t0:t1] = torch.einsum("tbgpn,tbgp->tbgn", lm, x_t[t0:t1])
            d_C[t0:t1] = torch.einsum("tbgp,tbgpn->tbgn", g_t[t0:t1], states[1:m + 1])
        return (d_dt.permute(1, 2, 3, 0).reshape(batch, dim, length),
                d_u.permute(1, 2, 3, 0).reshape(batch, dim, length),
                d_A.reshape(dim, state), d_B.permute(1, 2, 3, 0), d_C.permute(1, 2, 3, 0), None)


def selective_scan_chunked(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                           delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                           return_last_state: bool = False, *, chunk_size: int = CHUNK_SIZE):
    """The selective scan chunk by chunk in plain PyTorch, with a written-out backward: the fast CPU path.

    Arguments and result as :func:`selective_scan` (assumes valid inputs), plus ``chunk_size``, the
    positions per chunk (any positive int; the last chunk may be shorter, one longer than the
    sequence is the whole sequence). The recurrence is :func:`selective_scan_reference`'s, in the
    same dtype; :class:`_ChunkedScan` says how it is cut. Memory kept for the backward pass: the
    inputs and one state per chunk, ``ceil(length / chunk_size) * batch * dim * state`` values,
    instead of every step's state and decay as autograd through the loop keeps.

    Why a sequential step inside each chunk. The parallel alternative computes a chunk's states at
    once from cumulative sums of ``dt A`` (the decay from ``s`` to ``t`` is ``exp(S[t] - S[s])``,
    ``s <= t``); because Mamba's ``A`` is a ``(dim, state)`` diagonal, not one number per head as in
    Mamba-2, those decays form a ``chunk x chunk`` matrix per channel and state index: ``chunk``
    times the recurrence's work, with no matrix multiply to put it in. Forms that run the chunks
    side by side instead (each chunk's steps vectorized across chunks, decays within a chunk from
    cumulative sums, then a recurrence over the chunks' states) were measured too: through autograd
    they took 0.39 to 0.62 s (forward + backward, batch 2, dim 512, state 16, length 512, one
    thread, a busy machine) where the reference loop took 0.16 to 0.24 s: each of their operations
    streams ``length * batch * dim * state`` values through memory, where a step of the loop works
    on ``batch * dim * state`` values in cache. What this function gains over the reference
    (``benchmarks/selective_scan.py``, one thread: 1.07 times faster at batch 2, dim 512, 1.9 times
    at batch 4, dim 64, where the loop's small operations cost more than their arithmetic; a third
    of the memory; 7 to 137 times faster than transformers' PyTorch fallback) comes from the
    written-out backward and from batching the exponentials and contractions per chunk, not from
    parallelism across chunks. With more threads, the per-chunk operations, large enough to be
    split, gain more than the loop's.
    """
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"selective_scan_chunked: expected chunk_size to be a positive int, got {chunk_size!r}")
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    dt = _step_sizes(delta, delta_bias, delta_softplus, dtype)
    y, last = _ChunkedScan.apply(dt, u.to(dtype), A.to(dtype), _grouped(B).to(dtype), _grouped(C).to(dtype),
                                 chunk_size)
    y = _skip_and_gate(y, u, D, z).to(u.dtype)
    return (y, last) if return_last_state else y


# --------------------------------------------------------------------------------------------------
# The Triton kernels. `triton` and `tl` are bound on first use (_triton_kernels), so that importing
# this module never imports triton; the annotations are strings (`from __future__ import
# annotations`), which Triton reads as such, and a kernel's globals are looked up when it is compiled.
#
# Design. One program owns BLOCK_D channels of one group of one batch element (grid
# (cdiv(dim // groups, BLOCK_D), groups, batch)), so its B and C are one (state, BLOCK_T) tile
# shared by all its channels, and it walks the sequence in chunks of BLOCK_T positions, holding the
# state (BLOCK_D, BLOCK_N) in registers between chunks. Inside a chunk the recurrence
# h[t] = a[t] h[t-1] + b[t] is a parallel scan along time (tl.associative_scan over (BLOCK_D,
# BLOCK_N, BLOCK_T) tiles, with the operator (a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2); the state
# entering the chunk is folded into the first position's b), as in the chunked parallel scan of
# mamba_ssm's CUDA kernel. Positions past the end load dt = 0 and u = 0, so a = 1 and b = 0 there:
# the state passes through unchanged, and the chunk's last column is the state after the last real
# position.
#
# Forward: writes y (in u's dtype), the final state (float32) and the state entering each chunk
# (float32, (batch, dim, state, chunks): the checkpoints, 1/BLOCK_T of all the states).
# Backward: the chunks in reverse. Each chunk's states are recomputed from its checkpoint by the
# same scan; the adjoint lam[t] = g_out[t] C[t] + a[t+1] lam[t+1] runs backwards in time, which is
# computed as a forward scan over the chunk read in reverse order (every tensor is loaded at
# positions t0 + BLOCK_T - 1 - i), not with associative_scan(reverse=True), which some Triton
# versions get wrong for non-commutative operators on GPUs (triton-lang/triton#4362). The
# recomputed states, in forward order in registers, reach the reversed layout through a per-program
# scratch buffer in global memory (stored reversed, read back after a barrier), which also gives
# h[t-1] beside h[t]. Gradients of u, delta, z are written per position; those of B and C summed
# over the program's channels (one partial per channel block, summed by the host); those of A, D and
# delta_bias accumulated over time in registers (one partial per batch element, summed by the host).
# No atomics: the results do not depend on the order in which programs run.
# --------------------------------------------------------------------------------------------------

triton = None  # the triton module, once _triton_kernels has imported it
tl = None  # triton.language, likewise
_HELPERS = None  # name -> the jitted helper, bound to this module's globals by _triton_kernels
_KERNELS = None  # name -> the jitted kernel, built once

# Under Triton's interpreter: small tiles, so that short test sequences span several chunks and
# small dims several channel blocks. On a GPU: BLOCK_T positions per chunk and a BLOCK_D chosen so
# that a (BLOCK_D, BLOCK_N, BLOCK_T) tile holds about GPU_TILE values (about 16 per thread at 4
# warps). Not tuned on a GPU.
INTERPRETER_BLOCKS = {"BLOCK_D": 4, "BLOCK_T": 8}
GPU_BLOCK_T = 32
GPU_TILE = 2048
GPU_WARPS = 4


def _combine_source(a1, b1, a2, b2):
    """The scan's operator: first (a1, b1), then (a2, b2): ``h -> a2 (a1 h + b1) + b2``."""
    return a1 * a2, a2 * b1 + b2


def _softplus_source(x):
    """``log(1 + exp(x))`` in float32, accurately for every x: ``max(x, 0) + log1p(exp(-|x|))``,
    with ``log1p(e) = e log(w) / (w - 1)``, ``w = 1 + e`` (exact where ``w`` rounds to 1)."""
    e = tl.exp(-tl.abs(x))
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, e * tl.log(w) / (w - 1.0))
    return tl.maximum(x, 0.0) + log1p


def _sigmoid_source(x):
    return 1.0 / (1.0 + tl.exp(-x))


def _step_sizes_source(delta_ptr, bias, d_sb, d_sd, d_sl, b, channels, times, ok,
                       HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """``(raw, dt)``, both ``(BLOCK_D, BLOCK_T)`` float32: ``raw = delta (+ bias)`` and ``dt =
    softplus(raw)`` (or ``raw``), 0 where ``ok`` is false (so that ``exp(dt A) = 1`` there)."""
    raw = tl.load(delta_ptr + b * d_sb + channels[:, None] * d_sd + times[None, :] * d_sl,
                  mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += bias[:, None]
    dt = raw
    if SOFTPLUS:
        dt = _kernel_softplus(raw)
    return raw, tl.where(ok, dt, 0.0)


def _last_column_source(x, BLOCK_T: tl.constexpr):
    """``x[:, :, BLOCK_T - 1]`` of a 3-D tile, as a 2-D tile (a masked sum: tiles have no indexing)."""
    last = tl.arange(0, BLOCK_T)[None, None, :] == BLOCK_T - 1
    return tl.sum(tl.where(last, x, 0.0), 2)


def _forward_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
                    y_ptr, last_ptr, ckpt_ptr,
                    dim, length, state, per_group, chunks,
                    u_sb, u_sd, u_sl, d_sb, d_sd, d_sl, A_sd, A_sn,
                    B_sb, B_sg, B_sn, B_sl, C_sb, C_sg, C_sn, C_sl, D_s, z_sb, z_sd, z_sl, bias_s,
                    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    """Channels ``[blk * BLOCK_D, ...)`` of group ``g`` of batch element ``b``; grid
    ``(cdiv(per_group, BLOCK_D), groups, batch)``. Writes ``y`` ``(batch, dim, length)`` (contiguous),
    the final state ``last`` ``(batch, dim, state)`` and the checkpoints ``ckpt`` ``(batch, dim,
    state, chunks)`` (float32, contiguous): the state entering each chunk."""
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    local = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = local < per_group
    channels = g * per_group + local.to(tl.int64)  # (BLOCK_D,)
    ns = tl.arange(0, BLOCK_N)
    n_ok = ns < state
    dn_ok = d_ok[:, None] & n_ok[None, :]
    ts = tl.arange(0, BLOCK_T)
    A = tl.load(A_ptr + channels[:, None] * A_sd + ns[None, :] * A_sn, mask=dn_ok, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + channels * D_s, mask=d_ok, other=0.0).to(tl.float32)
    bias = tl.zeros([BLOCK_D], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channels * bias_s, mask=d_ok, other=0.0).to(tl.float32)
    B_base = B_ptr + b * B_sb + g * B_sg
    C_base = C_ptr + b * C_sb + g * C_sg
    ckpt_rows = ((b * dim + channels[:, None]) * state + ns[None, :]) * chunks  # (BLOCK_D, BLOCK_N)

    h = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    for k in range(0, chunks):
        tl.store(ckpt_ptr + ckpt_rows + k, h, mask=dn_ok)
        times = k * BLOCK_T + ts
        t_ok = times < length
        ok = d_ok[:, None] & t_ok[None, :]
        raw, dt = _kernel_step_sizes(delta_ptr, bias, d_sb, d_sd, d_sl, b, channels, times, ok, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + b * u_sb + channels[:, None] * u_sd + times[None, :] * u_sl,
                    mask=ok, other=0.0).to(tl.float32)
        nt_ok = n_ok[:, None] & t_ok[None, :]
        Bt = tl.load(B_base + ns[:, None] * B_sn + times[None, :] * B_sl, mask=nt_ok, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + ns[:, None] * C_sn + times[None, :] * C_sl, mask=nt_ok, other=0.0).to(tl.float32)
        a = tl.exp(dt[:, None, :] * A[:, :, None])  # (BLOCK_D, BLOCK_N, BLOCK_T)
        x = (dt * u)[:, None, :] * Bt[None, :, :]
        x = tl.where(ts[None, None, :] == 0, x + a * h[:, :, None], x)  # the entering state, at t0
        _, hs = tl.associative_scan((a, x), 2, _combine)  # the states h[t0], ..., h[t0 + BLOCK_T - 1]
        y = tl.sum(hs * Ct[None, :, :], 1)  # (BLOCK_D, BLOCK_T)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zt = tl.load(z_ptr + b * z_sb + channels[:, None] * z_sd + times[None, :] * z_sl,
                         mask=ok, other=0.0).to(tl.float32)
            y *= zt * _kernel_sigmoid(zt)
        tl.store(y_ptr + (b * dim + channels[:, None]) * length + times[None, :],
                 y.to(y_ptr.dtype.element_ty), mask=ok)
        h = _kernel_last_column(hs, BLOCK_T)
    tl.store(last_ptr + (b * dim + channels[:, None]) * state + ns[None, :], h, mask=dn_ok)


def _backward_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, gy_ptr, glast_ptr,
                     ckpt_ptr, scratch_ptr,
                     du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
                     dim, length, state, per_group, chunks, blocks,
                     u_sb, u_sd, u_sl, d_sb, d_sd, d_sl, A_sd, A_sn,
                     B_sb, B_sg, B_sn, B_sl, C_sb, C_sg, C_sn, C_sl, D_s, z_sb, z_sd, z_sl, bias_s,
                     gy_sb, gy_sd, gy_sl,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     HAS_GLAST: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    """The gradients for the channels of one forward program (same grid). Writes ``du``,
    ``ddelta``, ``dz`` ``(batch, dim, length)`` (contiguous); ``dA`` ``(batch, dim, state)``,
    ``dD`` and ``dbias`` ``(batch, dim)``: per batch element, summed over time; ``dB`` and ``dC``
    ``(batch, groups, blocks, state, length)``: per channel block, summed over its channels. The
    partials are float32; the host sums them. ``glast`` is the gradient of the final state
    ``(batch, dim, state)`` (contiguous), read when HAS_GLAST."""
    blk = tl.program_id(0)
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    groups = tl.num_programs(1)
    local = blk * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = local < per_group
    channels = g * per_group + local.to(tl.int64)
    ns = tl.arange(0, BLOCK_N)
    n_ok = ns < state
    dn_ok = d_ok[:, None] & n_ok[None, :]
    ii = tl.arange(0, BLOCK_T)
    A = tl.load(A_ptr + channels[:, None] * A_sd + ns[None, :] * A_sn, mask=dn_ok, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + channels * D_s, mask=d_ok, other=0.0).to(tl.float32)
    bias = tl.zeros([BLOCK_D], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channels * bias_s, mask=d_ok, other=0.0).to(tl.float32)
    B_base = B_ptr + b * B_sb + g * B_sg
    C_base = C_ptr + b * C_sb + g * C_sg
    ckpt_rows = ((b * dim + channels[:, None]) * state + ns[None, :]) * chunks
    rows = b * dim + channels  # (BLOCK_D,): row of (batch, dim, ...) outputs
    part = ((b * groups + g) * blocks + blk) * state  # first row of this program's dB, dC partials
    program = (b * groups + g) * blocks + blk
    scratch = (scratch_ptr + program * (BLOCK_D * BLOCK_N * BLOCK_T)
               + tl.arange(0, BLOCK_D)[:, None, None] * (BLOCK_N * BLOCK_T)
               + ns[None, :, None] * BLOCK_T)  # + position, (BLOCK_D, BLOCK_N, 1)

    lam_next = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)  # lam at the first position after the chunk
    if HAS_GLAST:
        lam_next = tl.load(glast_ptr + (b * dim + channels[:, None]) * state + ns[None, :], mask=dn_ok,
                           other=0.0).to(tl.float32)
    dA = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dD = tl.zeros([BLOCK_D], tl.float32)
    dbias = tl.zeros([BLOCK_D], tl.float32)
    for kk in range(0, chunks):
        k = chunks - 1 - kk
        t0 = k * BLOCK_T
        # 1. this chunk's states, in forward order, from its checkpoint (as in the forward kernel)
        h0 = tl.load(ckpt_ptr + ckpt_rows + k, mask=dn_ok, other=0.0)
        times = t0 + ii
        t_ok = times < length
        ok = d_ok[:, None] & t_ok[None, :]
        _, dt = _kernel_step_sizes(delta_ptr, bias, d_sb, d_sd, d_sl, b, channels, times, ok, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + b * u_sb + channels[:, None] * u_sd + times[None, :] * u_sl,
                    mask=ok, other=0.0).to(tl.float32)
        Bt = tl.load(B_base + ns[:, None] * B_sn + times[None, :] * B_sl,
                     mask=n_ok[:, None] & t_ok[None, :], other=0.0).to(tl.float32)
        a = tl.exp(dt[:, None, :] * A[:, :, None])
        x = (dt * u)[:, None, :] * Bt[None, :, :]
        x = tl.where(ii[None, None, :] == 0, x + a * h0[:, :, None], x)
        _, hs = tl.associative_scan((a, x), 2, _combine)
        # stored reversed: slot i holds position t0 + BLOCK_T - 1 - i
        tl.store(scratch + (BLOCK_T - 1 - ii)[None, None, :], hs)
        tl.debug_barrier()

        # 2. everything in reversed order: slot i is position t0 + BLOCK_T - 1 - i
        times = t0 + BLOCK_T - 1 - ii
        t_ok = times < length
        ok = d_ok[:, None] & t_ok[None, :]
        nt_ok = n_ok[:, None] & t_ok[None, :]
        h = tl.load(scratch + ii[None, None, :])  # h[t]
        h_prev = tl.load(scratch + (ii + 1)[None, None, :], mask=(ii < BLOCK_T - 1)[None, None, :], other=0.0)
        h_prev = tl.where(ii[None, None, :] == BLOCK_T - 1, h0[:, :, None], h_prev)  # h[t - 1]
        raw, dt = _kernel_step_sizes(delta_ptr, bias, d_sb, d_sd, d_sl, b, channels, times, ok, HAS_BIAS, SOFTPLUS)
        _, dt_next = _kernel_step_sizes(delta_ptr, bias, d_sb, d_sd, d_sl, b, channels, times + 1,
                                 d_ok[:, None] & (times + 1 < length)[None, :], HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + b * u_sb + channels[:, None] * u_sd + times[None, :] * u_sl,
                    mask=ok, other=0.0).to(tl.float32)
        Bt = tl.load(B_base + ns[:, None] * B_sn + times[None, :] * B_sl, mask=nt_ok, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + ns[:, None] * C_sn + times[None, :] * C_sl, mask=nt_ok, other=0.0).to(tl.float32)
        gy = tl.load(gy_ptr + b * gy_sb + channels[:, None] * gy_sd + times[None, :] * gy_sl,
                     mask=ok, other=0.0).to(tl.float32)
        g_out = gy
        if HAS_Z:
            zt = tl.load(z_ptr + b * z_sb + channels[:, None] * z_sd + times[None, :] * z_sl,
                         mask=ok, other=0.0).to(tl.float32)
            sig = _kernel_sigmoid(zt)
            g_out = gy * zt * sig
            out = tl.sum(Ct[None, :, :] * h, 1) + Dv[:, None] * u  # y before the gate
            dz = gy * out * sig * (1.0 + zt * (1.0 - sig))  # silu'(z) = sig (1 + z (1 - sig))
            tl.store(dz_ptr + rows[:, None] * length + times[None, :], dz.to(dz_ptr.dtype.element_ty), mask=ok)
        # the adjoint, lam[t] = g_out[t] C[t] + a[t+1] lam[t+1], as a forward scan over the slots
        alpha = tl.exp(dt_next[:, None, :] * A[:, :, None])  # a[t + 1] (1 past the end)
        beta = g_out[:, None, :] * Ct[None, :, :]
        beta = tl.where(ii[None, None, :] == 0, beta + alpha * lam_next[:, :, None], beta)
        _, lam = tl.associative_scan((alpha, beta), 2, _combine)
        lam_next = _kernel_last_column(lam, BLOCK_T)  # lam[t0], for the previous chunk
        a = tl.exp(dt[:, None, :] * A[:, :, None])
        q = lam * a * h_prev  # lam[t] a[t] h[t-1]
        dx = tl.sum(lam * Bt[None, :, :], 1)  # dL/d(dt u)
        du = dx * dt + g_out * Dv[:, None]
        ddt = tl.sum(q * A[:, :, None], 1) + dx * u
        ddelta = ddt
        if SOFTPLUS:
            ddelta = ddt * _kernel_sigmoid(raw)
        ddelta = tl.where(ok, ddelta, 0.0)
        tl.store(du_ptr + rows[:, None] * length + times[None, :], du.to(du_ptr.dtype.element_ty), mask=ok)
        tl.store(ddelta_ptr + rows[:, None] * length + times[None, :], ddelta.to(ddelta_ptr.dtype.element_ty),
                 mask=ok)
        dA += tl.sum(q * dt[:, None, :], 2)
        dD += tl.sum(g_out * u, 1)
        dbias += tl.sum(ddelta, 1)
        dB = tl.sum(lam * (dt * u)[:, None, :], 0)  # (BLOCK_N, BLOCK_T), summed over the channels
        dC = tl.sum(g_out[:, None, :] * h, 0)
        tl.store(dB_ptr + (part + ns[:, None]) * length + times[None, :], dB, mask=nt_ok)
        tl.store(dC_ptr + (part + ns[:, None]) * length + times[None, :], dC, mask=nt_ok)
        tl.debug_barrier()  # every read of the scratch buffer is done before the next chunk's store
    tl.store(dA_ptr + rows[:, None] * state + ns[None, :], dA, mask=dn_ok)
    tl.store(dD_ptr + rows, dD, mask=d_ok)
    tl.store(dbias_ptr + rows, dbias, mask=d_ok)


def _triton_kernels() -> dict:
    """Import triton (first call only) and build the kernels; TRITON_INTERPRET is read at this point.

    Returns ``{"forward", "backward"}`` -> the jitted kernel (fixed tiles, no autotuning: the
    checkpoints' spacing BLOCK_T must be the same in both kernels).
    """
    global triton, tl, _HELPERS, _KERNELS
    if _KERNELS is None:
        import triton as triton_module
        import triton.language as language

        triton, tl = triton_module, language
        if _HELPERS is None:
            _HELPERS = {name: triton.jit(source) for name, source in (
                ("_combine", _combine_source), ("_kernel_softplus", _softplus_source),
                ("_kernel_sigmoid", _sigmoid_source), ("_kernel_step_sizes", _step_sizes_source),
                ("_kernel_last_column", _last_column_source))}
            globals().update(_HELPERS)
        _KERNELS = {"forward": triton.jit(_forward_kernel), "backward": triton.jit(_backward_kernel)}
    return _KERNELS


def _blocks(state: int) -> dict:
    """The tile sizes: BLOCK_N (the state, padded to a power of two), BLOCK_D, BLOCK_T."""
    block_n = _next_power_of_2(state)
    if triton_interpreter():
        return {"BLOCK_N": block_n, **INTERPRETER_BLOCKS}
    return {"BLOCK_N": block_n, "BLOCK_T": GPU_BLOCK_T,
            "BLOCK_D": max(1, min(64, GPU_TILE // (block_n * GPU_BLOCK_T)))}


def _written_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a kernel writes a per-position result in: the tensor's own, except bfloat16 under
    the interpreter, whose float32 -> bfloat16 cast (triton 3.9) rounds toward zero, not to nearest:
    there the kernel writes float32 and PyTorch rounds."""
    return torch.float32 if dtype == torch.bfloat16 and triton_interpreter() else dtype


def _strides(*tensors: torch.Tensor | None, sizes: tuple[int, ...]) -> list[int]:
    """The strides of each tensor (zeros of ``sizes[i]`` entries for a missing one), flattened."""
    out: list[int] = []
    for t, n in zip(tensors, sizes):
        out += list(t.stride()) if t is not None else [0] * n
    return out


class _TritonScan(torch.autograd.Function):
    """``(u, delta, A, B, C, D, z, delta_bias) -> (y, final state)`` by the forward kernel;
    backward by the backward kernel. ``B`` and ``C`` are ``(batch, groups, state, length)``; the
    gradients of 3-D ``B`` and ``C`` come back 3-D through autograd's ``unsqueeze``. Not twice
    differentiable."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus):
        ctx.set_materialize_grads(False)
        batch, dim, length = u.shape
        groups, state = B.shape[1], B.shape[2]
        per_group = dim // groups
        blocks = _blocks(state)
        chunks = _cdiv(length, blocks["BLOCK_T"])
        y = torch.empty(batch, dim, length, dtype=_written_dtype(u.dtype), device=u.device)
        last = torch.zeros(batch, dim, state, dtype=torch.float32, device=u.device)
        ckpt = torch.empty(batch, dim, state, chunks, dtype=torch.float32, device=u.device)
        grid = (_cdiv(per_group, blocks["BLOCK_D"]), groups, batch)
        if y.numel():
            dummy = u  # stands for an absent D, z or delta_bias (never read: its flag is off)
            with _on_device(u):
                _triton_kernels()["forward"][grid](
                    u, delta, A, B, C, dummy if D is None else D, dummy if z is None else z,
                    dummy if delta_bias is None else delta_bias, y, last, ckpt,
                    dim, length, state, per_group, chunks,
                    *_strides(u, delta, A, B, C, D, z, delta_bias, sizes=(3, 3, 2, 4, 4, 1, 3, 1)),
                    HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                    SOFTPLUS=softplus, num_warps=GPU_WARPS, **blocks)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.softplus = softplus
        return y.to(u.dtype), last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_last):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        batch, dim, length = u.shape
        groups, state = B.shape[1], B.shape[2]
        per_group = dim // groups
        blocks = _blocks(state)
        chunks = ckpt.shape[3]
        n_blocks = _cdiv(per_group, blocks["BLOCK_D"])
        f32 = dict(dtype=torch.float32, device=u.device)
        du = torch.zeros(u.shape, dtype=_written_dtype(u.dtype), device=u.device)
        ddelta = torch.zeros(delta.shape, dtype=_written_dtype(delta.dtype), device=u.device)
        dz = None if z is None else torch.zeros(z.shape, dtype=_written_dtype(z.dtype), device=u.device)
        dA = torch.zeros(batch, dim, state, **f32)
        dD = torch.zeros(batch, dim, **f32)
        dbias = torch.zeros(batch, dim, **f32)
        dB = torch.zeros(batch, groups, n_blocks, state, length, **f32)
        dC = torch.zeros(batch, groups, n_blocks, state, length, **f32)
        if grad_y is None:
            grad_y = torch.zeros(1, 1, 1, dtype=u.dtype, device=u.device).expand(batch, dim, length)
        if du.numel():
            scratch = torch.empty(batch * groups * n_blocks * blocks["BLOCK_D"] * blocks["BLOCK_N"]
                                  * blocks["BLOCK_T"], **f32)
            glast = None if grad_last is None else grad_last.to(torch.float32).contiguous()
            dummy = u
            with _on_device(u):
                _triton_kernels()["backward"][(n_blocks, groups, batch)](
                    u, delta, A, B, C, dummy if D is None else D, dummy if z is None else z,
                    dummy if delta_bias is None else delta_bias, grad_y, dA if glast is None else glast,
                    ckpt, scratch, du, ddelta, dummy if dz is None else dz, dA, dD, dbias, dB, dC,
                    dim, length, state, per_group, chunks, n_blocks,
                    *_strides(u, delta, A, B, C, D, z, delta_bias, grad_y, sizes=(3, 3, 2, 4, 4, 1, 3, 1, 3)),
                    HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                    SOFTPLUS=ctx.softplus, HAS_GLAST=glast is not None, num_warps=GPU_WARPS, **blocks)
        needs = ctx.needs_input_grad
        return (du.to(u.dtype) if needs[0] else None,
                ddelta.to(delta.dtype) if needs[1] else None,
                dA.sum(0).to(A.dtype) if needs[2] else None,
                dB.sum(2).to(B.dtype) if needs[3] else None,
                dC.sum(2).to(C.dtype) if needs[4] else None,
                dD.sum(0).to(D.dtype) if D is not None and needs[5] else None,
                dz.to(z.dtype) if z is not None and needs[6] else None,
                dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None and needs[7] else None,
                None)


def selective_scan_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                          C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                          delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                          return_last_state: bool = False):
    """The Triton path of :func:`selective_scan` (forward and backward in Triton); assumes inputs that
    are valid and supported (float16, bfloat16 or float32, on CUDA or on the CPU under the interpreter).

    Arguments and result as :func:`selective_scan`. Computed in float32 whatever the inputs' dtypes
    (``exp`` and the scan's products and sums; no ``tl.dot``), ``y`` rounded to u's dtype once, the
    final state float32. Memory besides inputs and outputs: the state entering every chunk of
    BLOCK_T positions, saved for the backward pass (``batch * dim * state * length / BLOCK_T``
    float32 values), plus, during the backward pass, float32 partial gradients of ``B`` and ``C``
    per block of channels. The design is described above :func:`_forward_kernel`.
    """
    y, last = _TritonScan.apply(u, delta, A, _grouped(B), _grouped(C), D, z, delta_bias, bool(delta_softplus))
    return (y, last) if return_last_state else y


# --------------------------------------------------------------------------------------------------
# Input validation: every problem is a ValueError that says what was expected.
# --------------------------------------------------------------------------------------------------

def _check_tensor(where: str, name: str, t: object, rank: int | tuple[int, ...], layout: str) -> None:
    ranks = (rank,) if isinstance(rank, int) else rank
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{where}: expected {name} to be a torch.Tensor {layout}, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise ValueError(f"{where}: expected {name} to be a dense (strided) tensor, got layout {t.layout}")
    if t.ndim not in ranks:
        raise ValueError(f"{where}: expected {name} of rank {' or '.join(map(str, ranks))}, {layout}, "
                         f"got shape {tuple(t.shape)}")
    if t.dtype not in DTYPES:
        raise ValueError(f"{where}: expected {name} to have a real floating-point dtype (float16, bfloat16, "
                         f"float32 or float64), got {t.dtype}")


def _check_common(where: str, u: torch.Tensor, named: dict, dim: int, B: torch.Tensor, C: torch.Tensor,
                  bc_layouts: tuple[str, str], grouped_rank: int) -> None:
    """Devices, and the groups of B and C (of rank ``grouped_rank`` when grouped); ``named``: name ->
    tensor or None."""
    for name, t in named.items():
        if t is not None and t.device != u.device:
            raise ValueError(f"{where}: expected every tensor on u's device ({u.device}), got {name} on {t.device}")
    grouped = [x.shape[1] if x.ndim == grouped_rank else 1 for x in (B, C)]
    if grouped[0] != grouped[1] or B.ndim != C.ndim:
        raise ValueError(f"{where}: expected B and C in the same form, {bc_layouts[0]} or {bc_layouts[1]} with "
                         f"the same groups, got B {tuple(B.shape)} and C {tuple(C.shape)}")
    groups = grouped[0]
    if groups < 1 or dim % groups:
        raise ValueError(f"{where}: expected the groups of B and C ({groups}) to divide dim ({dim}), "
                         f"got B {tuple(B.shape)}")


def _check_arguments(where: str, u, delta, A, B, C, D, z, delta_bias, flags: dict, state=None) -> None:
    """The checks of :func:`selective_scan` (``u`` ``(batch, dim, length)``) and, when ``state`` is
    given, of :func:`selective_scan_step` (``u`` ``(batch, dim)``, ``state`` ``(batch, dim, state)``);
    ``flags``: name -> a value that must be a bool. ``where`` begins every message."""
    step = state is not None
    rank, layout = (2, "(batch, dim)") if step else (3, "(batch, dim, length)")
    _check_tensor(where, "u", u, rank, layout)
    batch, dim = u.shape[:2]
    if step:
        _check_tensor(where, "state", state, 3, "(batch, dim, state)")
    _check_tensor(where, "delta", delta, rank, layout)
    _check_tensor(where, "A", A, 2, "(dim, state)")
    size = A.shape[1]
    if step:
        bc = ("(batch, state)", "(batch, groups, state)")
    else:
        bc = ("(batch, state, length)", "(batch, groups, state, length)")
    _check_tensor(where, "B", B, (rank, rank + 1), f"{bc[0]} or {bc[1]}")
    _check_tensor(where, "C", C, (rank, rank + 1), f"{bc[0]} or {bc[1]}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            _check_tensor(where, name, t, 1, "(dim,)")
    if z is not None:
        _check_tensor(where, "z", z, rank, layout)
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and tuple(t.shape) != tuple(u.shape):
            raise ValueError(f"{where}: expected {name} of u's shape {layout} = {tuple(u.shape)}, "
                             f"got {tuple(t.shape)}")
    if A.shape[0] != dim:
        raise ValueError(f"{where}: expected A of shape (dim, state) with dim = {dim} (u's dim), "
                         f"got {tuple(A.shape)}")
    if step and tuple(state.shape) != (batch, dim, size):
        raise ValueError(f"{where}: expected state of shape (batch, dim, state) = ({batch}, {dim}, {size}), "
                         f"got {tuple(state.shape)}")
    sizes = (f"batch = {batch} and state = {size} (A's)" if step
             else f"batch = {batch}, state = {size} (A's) and length = {u.shape[2]}")
    for name, x in (("B", B), ("C", C)):
        # (batch, state) or (batch, state, length), whether grouped or not
        if (x.shape[0], *x.shape[1 - rank:]) != (batch, size, *u.shape[2:]):
            raise ValueError(f"{where}: expected {name} of shape {bc[0]} or {bc[1]} with {sizes}, "
                             f"got {tuple(x.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape[0] != dim:
            raise ValueError(f"{where}: expected {name} of shape (dim,) = ({dim},), got {tuple(t.shape)}")
    _check_common(where, u, {**({"state": state} if step else {}), "delta": delta, "A": A, "B": B, "C": C,
                             "D": D, "z": z, "delta_bias": delta_bias}, dim, B, C, bc, grouped_rank=rank + 1)
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise ValueError(f"{where}: expected {name} to be a bool, got {flag!r}")


def _validate(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state) -> None:
    _check_arguments("selective_scan", u, delta, A, B, C, D, z, delta_bias,
                     {"delta_softplus": delta_softplus, "return_last_state": return_last_state})


def _validate_step(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> None:
    _check_arguments("selective_scan_step", u, delta, A, B, C, D, z, delta_bias,
                     {"delta_softplus": delta_softplus}, state=state)


# --------------------------------------------------------------------------------------------------
# The public function.
# --------------------------------------------------------------------------------------------------

BACKENDS = ("auto", "reference", "chunked", "triton")


def _triton_unsupported(tensors: list[torch.Tensor]) -> str | None:
    """Why the Triton path cannot take these valid inputs (a ValueError message), or None."""
    u = tensors[0]
    if not triton_installed():
        return ("selective_scan: backend='triton' needs the triton package, which is not installed; "
                "use backend='auto', 'chunked' or 'reference'")
    if not (u.is_cuda or (u.device.type == "cpu" and triton_interpreter())):
        return (f"selective_scan: backend='triton' expected CUDA tensors (or CPU tensors with "
                f"TRITON_INTERPRET=1 set before triton is imported), got device {u.device}")
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors if t.dtype not in TRITON_DTYPES})
    if dtypes:
        return (f"selective_scan: backend='triton' expected tensors of dtype float16, bfloat16 or float32, "
                f"got {', '.join(dtypes)}; use backend='chunked' (or 'auto') for it")
    return None


def _choose_backend(backend: object, tensors: list[torch.Tensor]) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"selective_scan: expected backend to be one of {', '.join(map(repr, BACKENDS))}, "
                         f"got {backend!r}")
    if backend == "auto":
        return "triton" if tensors[0].is_cuda and _triton_unsupported(tensors) is None else "chunked"
    if backend == "triton":
        why = _triton_unsupported(tensors)
        if why is not None:
            raise ValueError(why)
    return backend


_BACKEND_FUNCTIONS = {"reference": selective_scan_reference, "chunked": selective_scan_chunked,
                      "triton": selective_scan_triton}


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, backend: str = "auto"):
    """Mamba's selective scan (Gu and Dao 2023, Algorithm 2): ``y`` ``(batch, dim, length)``.

    For every batch element, channel ``d`` (of group ``g(d) = d // (dim // groups)``) and state
    index ``n``, with ``dt = delta (+ delta_bias[d])``, softplus'd if ``delta_softplus``::

        h[t] = exp(dt[t] A[d, n]) h[t-1] + dt[t] B[g(d), n, t] u[t]      (h[-1] = 0)
        y[t] = sum_n C[g(d), n, t] h[t]  (+ D[d] u[t])  (* silu(z[t]))

    The arguments follow the conventions of ``mamba_ssm``'s ``selective_scan_fn``.

    Args:
        u: ``(batch, dim, length)``, the input.
        delta: ``(batch, dim, length)``, the step sizes before bias and softplus.
        A: ``(dim, state)``, the diagonal state matrix, real (negative in practice for a decaying
            state; not required).
        B, C: ``(batch, state, length)`` (one group: every channel reads them) or ``(batch, groups,
            state, length)`` with ``groups`` dividing ``dim``; both in the same form.
        D: ``(dim,)`` or None, the skip connection. z: ``(batch, dim, length)`` or None, the gate.
        delta_bias: ``(dim,)`` or None. delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the state after the last position.
        backend: ``"auto"`` (``"triton"`` for CUDA tensors of dtype float16, bfloat16 or float32 when
            triton is installed, else ``"chunked"``), ``"reference"``
            (:func:`selective_scan_reference`, the loop over time), ``"chunked"``
            (:func:`selective_scan_chunked`, the fast PyTorch path) or ``"triton"``
            (:func:`selective_scan_triton`; on CUDA, or on the CPU under Triton's interpreter).

    Tensors may have any strides, any of the dtypes float16, bfloat16, float32, float64 (mixed
    freely), and must share u's device. Computed in float32 (float64 if any input is float64).
    Returns ``y`` in u's dtype, or ``(y, last_state)`` with ``last_state`` ``(batch, dim, state)``
    in the computation's dtype (float32 for half-precision inputs, as ``mamba_ssm``). Gradients
    flow to every tensor argument (autograd for the reference, written-out backward passes for
    chunked and triton, which are not twice differentiable). Invalid arguments raise ``ValueError``.
    """
    _validate(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    chosen = _choose_backend(backend, tensors)
    return _BACKEND_FUNCTIONS[chosen](u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
