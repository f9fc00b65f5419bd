"""companion.kernels.selective_scan: every backend against an independent float64 recurrence, the
reference against transformers' PyTorch selective scan, decoding steps against the scan, bad input.

The oracle below writes the recurrence out in float64 with its own grouping (``repeat_interleave``
of B and C over the channels of each group) and explicit loops; its gradients come from autograd.
The Triton path runs through Triton's interpreter on the CPU (tests/conftest.py sets
``TRITON_INTERPRET=1`` before triton is imported), with small tiles (selective_scan.INTERPRETER_BLOCKS:
8 positions per chunk, 4 channels per program), so that short sequences span several chunks and end
in a ragged one. The interpreter is slow: shapes stay small. With ``TRITON_INTERPRET=0`` on a CUDA
machine the same tests run the compiled kernels on the GPU.

Tolerances are error bounds, not fitted numbers. Every result is a sum of products of nonnegative
decays ``exp(dt A)`` with signed terms; its rounding error is a small multiple of the unit roundoff
``u`` times the same sums with absolute values (:func:`magnitudes`), growing at most linearly with
the number of steps and state entries summed (each step adds a few roundings, which later decays
only shrink)::

    |got - exact| <= (SLACK * (length + state + 8) * u_compute + u_out) * magnitude + tiny

``u_compute`` is float32's (or float64's) unit roundoff, ``u_out`` that of the dtype the result is
rounded to (0 for float32 results computed in float32), ``tiny`` the output dtype's smallest normal
number. A wrong sign, a dropped term or an off-by-one position is of the order of the magnitude
itself: many orders above the bound.
"""

import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.device import triton_can_run, triton_interpreter
from companion.kernels import selective_scan, selective_scan_step

ss_module = importlib.import_module("companion.kernels.selective_scan")

F64 = torch.float64
needs_triton = pytest.mark.skipif(not triton_can_run(),
                                  reason="Triton cannot run here (not installed, or no CUDA GPU and "
                                         "TRITON_INTERPRET is not 1)")
# the interpreter runs on CPU tensors; with TRITON_INTERPRET=0 the kernels are compiled for the GPU
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not triton_interpreter() else "cpu")
KERNEL_DRAWS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# the constant of the bound (module docstring); the measured worst ratio of error to
# u * (length + state + 8) * magnitude, over 60 random cases per backend and dtype, was 0.34
SLACK = 1.0
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


# ------------------------------------------------------------------------------------------------
# The oracle, the magnitudes and the bound
# ------------------------------------------------------------------------------------------------

def oracle(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence in float64, written out: ``(y (batch, dim, length), final state (batch, dim, state))``."""
    u, delta, A, B, C = (t.to(F64) for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    state = A.shape[1]
    if B.ndim == 3:
        B, C = B[:, None], C[:, None]
    per_group = dim // B.shape[1]
    B, C = B.repeat_interleave(per_group, dim=1), C.repeat_interleave(per_group, dim=1)  # (batch, dim, state, L)
    dt = delta if delta_bias is None else delta + delta_bias.to(F64)[None, :, None]
    if delta_softplus:
        dt = torch.log1p(torch.exp(dt))
    h = torch.zeros(batch, dim, state, dtype=F64)
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, :, t, None] * A[None]) * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * B[:, :, :, t]
        y = (C[:, :, :, t] * h).sum(-1)
        if D is not None:
            y = y + D.to(F64)[None] * u[:, :, t]
        if z is not None:
            zt = z[:, :, t].to(F64)
            y = y * zt / (1 + torch.exp(-zt))
        ys.append(y)
    y = torch.stack(ys, -1) if ys else torch.zeros(batch, dim, 0, dtype=F64)
    return y, h


def _surrogate(value, leaf, slope):
    """``value`` in value, ``slope`` as its derivative with respect to ``leaf`` (which equals its detached self)."""
    return value + (leaf - leaf.detach()) * slope


def magnitudes(inputs, grad_y, grad_last, delta_softplus):
    """The magnitudes of y, the final state and every gradient, in float64: the same computation with
    every term replaced by its absolute value, so that a result's rounding error is a small multiple of
    its magnitude (module docstring).

    Built by autograd on a surrogate recurrence whose values are the absolute values of the true
    terms and whose local derivatives are the absolute values of the true local derivatives (for
    ``exp(dt A)``, ``softplus`` and ``silu``, which change sign or are not monotone in the right way,
    through :func:`_surrogate`). Its gradient, against ``|dL/dy|`` and ``|dL/d state|``, is then the
    sum of the absolute values of the terms in the true gradient, term by term. Returns a dict:
    ``"y"``, ``"last"`` and the names of GRAD_NAMES (None for absent inputs).
    """
    x = {k: (None if v is None else v.detach().to(F64)) for k, v in inputs.items()}
    leaves = {k: (None if v is None else v.clone().requires_grad_(True)) for k, v in x.items()}
    u, delta, A, B, C, D, z, bias = (leaves[k] for k in GRAD_NAMES)
    batch, dim, length = u.shape
    raw0 = x["delta"] if bias is None else x["delta"] + x["delta_bias"][None, :, None]
    slope = torch.sigmoid(raw0) if delta_softplus else torch.ones_like(raw0)
    dt0 = torch.log1p(torch.exp(raw0)) if delta_softplus else raw0
    dt = _surrogate(dt0.abs(), delta, slope)
    if bias is not None:
        dt = dt + ((bias - bias.detach())[None, :, None] * slope)
    u_abs = _surrogate(x["u"].abs(), u, 1.0)
    B4, C4 = (t if t.ndim == 4 else t[:, None] for t in (B, C))
    B4, C4 = (_surrogate(t.detach().abs(), t, 1.0) for t in (B4, C4))
    per_group = dim // B4.shape[1]
    Bd, Cd = B4.repeat_interleave(per_group, dim=1), C4.repeat_interleave(per_group, dim=1)
    h = torch.zeros(batch, dim, x["A"].shape[1], dtype=F64)
    ys = []
    for t in range(length):
        a0 = torch.exp(dt0[:, :, t, None] * x["A"][None])
        a = a0 + (dt[:, :, t, None] - dt[:, :, t, None].detach()) * x["A"].abs()[None] * a0 \
            + (A - A.detach())[None] * dt0[:, :, t, None].abs() * a0
        h = a * h + (dt[:, :, t] * u_abs[:, :, t])[:, :, None] * Bd[:, :, :, t]
        y = (Cd[:, :, :, t] * h).sum(-1)
        if D is not None:
            y = y + _surrogate(x["D"].abs(), D, 1.0)[None] * u_abs[:, :, t]
        if z is not None:
            z0 = x["z"][:, :, t]
            sig = torch.sigmoid(z0)
            # silu'(z) = sig (1 + z (1 - sig)), whose two terms cancel near z = -1.28: their absolute sum
            gate = _surrogate((z0 * sig).abs(), z[:, :, t], sig * (1 + (z0 * (1 - sig)).abs()))
            y = y * gate
        ys.append(y)
    y = torch.stack(ys, -1) if ys else torch.zeros(batch, dim, 0, dtype=F64)
    loss = (y * grad_y.to(F64).abs()).sum() + (h * grad_last.to(F64).abs()).sum()
    present = [k for k in GRAD_NAMES if leaves[k] is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in present], allow_unused=True)
    out = {"y": y.detach(), "last": h.detach()}
    for k in GRAD_NAMES:
        out[k] = None
    for k, g in zip(present, grads):
        out[k] = torch.zeros_like(x[k]) if g is None else g
    return out


def unit(dtype):
    return torch.finfo(dtype).eps / 2


def assert_within(got, exact, magnitude, *, steps, compute, out_dtype, what):
    """``|got - exact| <= (SLACK * steps * u_compute + u_out) * magnitude + tiny`` elementwise."""
    assert got.shape == exact.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(exact.shape)}"
    assert torch.isfinite(got).all(), what
    u_out = unit(out_dtype) if unit(out_dtype) > unit(compute) else 0.0
    bound = (SLACK * steps * unit(compute) + u_out) * magnitude.to(F64) + torch.finfo(out_dtype).tiny
    err = (got.detach().to(F64).cpu() - exact.to(F64).cpu()).abs()
    bound = bound.cpu()
    if err.numel():
        worst = (err - bound).argmax()
        assert (err <= bound).all(), (f"{what}: error {err.flatten()[worst].item():.3g} above the bound "
                                      f"{bound.flatten()[worst].item():.3g} (magnitude "
                                      f"{magnitude.flatten()[worst].item():.3g}) at flat index {worst.item()}")


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------

def make_inputs(gen, *, batch=2, groups=2, per_group=3, state=4, length=11, grouped=True, with_D=True,
                with_z=True, with_bias=True, softplus=True, dtype=torch.float32, weight_dtype=None,
                growing=False, layout="contiguous", device="cpu"):
    """A dict of the scan's tensor arguments (GRAD_NAMES), drawn as Mamba's are distributed.

    ``A = -exp(N(0, 1))`` (S4D-real-like, decaying; ``growing`` makes a quarter of it positive);
    ``delta`` around ``softplus^-1`` of small steps with softplus, positive steps without it.
    ``dtype`` is the activations' (u, delta, z, B, C), ``weight_dtype`` that of A, D, delta_bias
    (float32 by default, as Mamba keeps them). ``layout="strided"`` gives every activation a
    non-contiguous layout (length-first in memory, or every other element).
    """
    weight_dtype = weight_dtype or (dtype if dtype == F64 else torch.float32)
    dim = groups * per_group

    def randn(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=gen, dtype=F64) * scale + shift

    def act(x):  # activations, in the requested layout
        x = x.to(dtype)
        if layout == "strided":
            if x.ndim == 3:
                return x.transpose(1, 2).contiguous().transpose(1, 2)  # length-first in memory
            return torch.stack([x, x], -1)[..., 0]  # every other element
        return x

    A = -torch.exp(randn(dim, state, scale=0.5))
    if growing:
        A = torch.where(torch.rand(dim, state, generator=gen, dtype=F64) < 0.25, -A * 0.3, A)
    bc_shape = (batch, groups, state, length) if grouped else (batch, state, length)
    delta = randn(batch, dim, length, scale=0.7, shift=-1.0) if softplus else \
        torch.rand(batch, dim, length, generator=gen, dtype=F64) * 0.6 + 0.02
    inputs = {
        "u": act(randn(batch, dim, length)),
        "delta": act(delta),
        "A": A.to(weight_dtype),
        "B": act(randn(*bc_shape)),
        "C": act(randn(*bc_shape)),
        "D": randn(dim).to(weight_dtype) if with_D else None,
        "z": act(randn(batch, dim, length)) if with_z else None,
        "delta_bias": randn(dim, scale=0.3).to(weight_dtype) if with_bias else None,
    }
    return {k: (None if v is None else v.to(device)) for k, v in inputs.items()}


def check_backend(backend, inputs, softplus, *, seed=0, compute=torch.float32, scan=None):
    """y, the final state and every gradient by ``backend`` (or by ``scan``, a function with
    selective_scan's arguments but ``backend``) against the oracle, within the bound; returns the
    worst error ratios ``(err - u_out magnitude) / (u_compute * steps * magnitude)`` per result."""
    gen = torch.Generator().manual_seed(seed)
    leaves = {k: (None if v is None else v.detach().clone().requires_grad_(True)) for k, v in inputs.items()}
    u = leaves["u"]
    batch, dim, length = u.shape
    state = leaves["A"].shape[1]
    if scan is None:
        y, last = selective_scan(**leaves, delta_softplus=softplus, return_last_state=True, backend=backend)
    else:
        y, last = scan(**leaves, delta_softplus=softplus, return_last_state=True)
    assert y.dtype == u.dtype and y.shape == u.shape and y.device == u.device
    assert last.shape == (batch, dim, state) and last.dtype == compute
    grad_y = torch.randn(y.shape, generator=gen, dtype=F64).to(y.dtype).to(u.device)
    grad_last = torch.randn(last.shape, generator=gen, dtype=F64).to(last.dtype).to(u.device)
    present = [k for k in GRAD_NAMES if leaves[k] is not None]
    grads = dict(zip(present, torch.autograd.grad((y, last), [leaves[k] for k in present], (grad_y, grad_last))))

    x64 = {k: (None if v is None else v.detach().cpu().to(F64).requires_grad_(True)) for k, v in inputs.items()}
    y64, last64 = oracle(**x64, delta_softplus=softplus)
    exact = dict(zip(present, torch.autograd.grad((y64, last64), [x64[k] for k in present],
                                                  (grad_y.cpu().to(F64), grad_last.cpu().to(F64)))))
    mags = magnitudes({k: (None if v is None else v.cpu()) for k, v in inputs.items()}, grad_y.cpu(),
                      grad_last.cpu(), softplus)
    steps = length + state + 8
    ratios = {}
    for name, got, ex, out_dtype in [("y", y, y64, y.dtype), ("last state", last, last64, last.dtype)] + \
            [(f"d{k}", grads[k], exact[k], inputs[k].dtype) for k in present]:
        key = "y" if name == "y" else "last" if name == "last state" else name[1:]
        assert got.dtype == out_dtype, f"{backend}: {name} has dtype {got.dtype}, expected {out_dtype}"
        assert_within(got, ex, mags[key], steps=steps, compute=compute, out_dtype=out_dtype,
                      what=f"{backend}: {name}")
        u_out = unit(out_dtype) if unit(out_dtype) > unit(compute) else 0.0
        err = (got.detach().cpu().to(F64) - ex.detach().to(F64)).abs() - u_out * mags[key]
        scale = unit(compute) * steps * mags[key] + torch.finfo(out_dtype).tiny
        ratios[name] = (err / scale).max().item() if err.numel() else 0.0
    return ratios


@st.composite
def shapes(draw, max_length=20, max_groups=3, max_per_group=3):
    groups = draw(st.integers(1, max_groups))
    return dict(batch=draw(st.integers(1, 2)), groups=groups, per_group=draw(st.integers(1, max_per_group)),
                state=draw(st.integers(1, 5)), length=draw(st.integers(1, max_length)),
                grouped=draw(st.booleans()) if groups == 1 else True,
                with_D=draw(st.booleans()), with_z=draw(st.booleans()), with_bias=draw(st.booleans()),
                softplus=draw(st.booleans()))


# ------------------------------------------------------------------------------------------------
# The PyTorch backends against the oracle
# ------------------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(case=shapes(max_length=40), dtype=st.sampled_from([torch.float32, F64]), seed=st.integers(0, 2**31 - 1))
def test_reference_matches_the_oracle(case, dtype, seed):
    inputs = make_inputs(torch.Generator().manual_seed(seed), dtype=dtype, **case)
    check_backend("reference", inputs, case["softplus"], seed=seed, compute=dtype)


@settings(max_examples=30, deadline=None)
@given(case=shapes(max_length=40), dtype=st.sampled_from([torch.float32, F64]), chunk=st.integers(1, 20),
       seed=st.integers(0, 2**31 - 1))
def test_chunked_matches_the_oracle(case, dtype, chunk, seed):
    inputs = make_inputs(torch.Generator().manual_seed(seed), dtype=dtype, **case)
    check_backend(f"chunked ({chunk} per chunk)", inputs, case["softplus"], seed=seed, compute=dtype,
                  scan=lambda **kw: ss_module.selective_scan_chunked(**kw, chunk_size=chunk))


@pytest.mark.parametrize("length", [1, 2, 7, 16, 17, 33])
@pytest.mark.parametrize("chunk", [1, 3, 16, 40])
def test_chunked_equals_the_reference_for_any_chunk_size(length, chunk):
    # chunk 1: a step per chunk; 3: not dividing most lengths; 40: longer than every sequence
    gen = torch.Generator().manual_seed(length * 100 + chunk)
    inputs = make_inputs(gen, dtype=F64, length=length, groups=3, per_group=2, state=3)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    args = list(leaves.values())
    y, last = ss_module.selective_scan_chunked(*args, delta_softplus=True, return_last_state=True,
                                               chunk_size=chunk)
    y_ref, last_ref = ss_module.selective_scan_reference(*args, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, last_ref, rtol=1e-12, atol=1e-12)
    grad_y = torch.randn(y.shape, generator=gen, dtype=F64)
    grad_last = torch.randn(last.shape, generator=gen, dtype=F64)
    got = torch.autograd.grad((y, last), args, (grad_y, grad_last))
    want = torch.autograd.grad((y_ref, last_ref), args, (grad_y, grad_last))
    for name, g, w in zip(GRAD_NAMES, got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-11, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_the_bound(backend, dtype):
    # activations in float16/bfloat16, A, D, delta_bias in float32 (as Mamba keeps them); computed in
    # float32, y and the activations' gradients rounded once; the final state float32
    inputs = make_inputs(torch.Generator().manual_seed(5), dtype=dtype, length=23, groups=2, per_group=3)
    check_backend(backend, inputs, True, seed=5)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_growing_states_and_ungated_variants(backend):
    # A partly positive (growing states: allowed, not only decaying ones), no softplus, one group in 3-D form
    inputs = make_inputs(torch.Generator().manual_seed(6), growing=True, grouped=False, groups=1, per_group=5,
                         with_z=False, with_bias=False, softplus=False, length=12)
    check_backend(backend, inputs, False, seed=6)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_only_some_outputs_and_inputs_take_part(backend):
    # the final state alone carries the loss (y gets no gradient), and only A, B require grad
    inputs = make_inputs(torch.Generator().manual_seed(7), dtype=F64, length=9)
    A = inputs["A"].clone().requires_grad_(True)
    B = inputs["B"].clone().requires_grad_(True)
    args = dict(inputs, A=A, B=B)
    _, last = selective_scan(**args, delta_softplus=True, return_last_state=True, backend=backend)
    got = torch.autograd.grad(last.sum(), (A, B))
    x64 = dict(inputs, A=inputs["A"].clone().requires_grad_(True), B=inputs["B"].clone().requires_grad_(True))
    _, last64 = oracle(**x64, delta_softplus=True)
    want = torch.autograd.grad(last64.sum(), (x64["A"], x64["B"]))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    y = selective_scan(**args, delta_softplus=True, backend=backend)  # y alone: a tensor, not a tuple
    assert isinstance(y, torch.Tensor)
    (dA,) = torch.autograd.grad(y.sum(), (A,))
    y64, _ = oracle(**x64, delta_softplus=True)
    torch.testing.assert_close(dA, torch.autograd.grad(y64.sum(), (x64["A"],))[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "chunked", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("shape", [(2, 3, 0), (0, 3, 5), (2, 0, 5)], ids=["length 0", "batch 0", "dim 0"])
def test_empty_sizes(backend, shape):
    batch, dim, length = shape
    device = DEVICE if backend == "triton" else "cpu"
    u = torch.zeros(batch, dim, length, device=device, requires_grad=True)
    A = -torch.ones(dim, 4, device=device, requires_grad=True)
    B = torch.zeros(batch, 4, length, device=device, requires_grad=True)
    y, last = selective_scan(u, u, A, B, B, return_last_state=True, backend=backend)
    assert y.shape == shape and last.shape == (batch, dim, 4)
    assert torch.equal(last, torch.zeros_like(last))
    assert y.requires_grad and last.requires_grad  # backward() works, with zero gradients
    for x, g in zip((u, A, B), torch.autograd.grad(y.sum() + last.sum(), (u, A, B), allow_unused=True)):
        assert g is None or torch.equal(g, torch.zeros_like(x))


def test_auto_on_the_cpu_is_the_chunked_backend(monkeypatch):
    inputs = make_inputs(torch.Generator().manual_seed(8), length=10)
    calls = []
    monkeypatch.setitem(ss_module._BACKEND_FUNCTIONS, "chunked",
                        lambda *a: calls.append(1) or ss_module.selective_scan_chunked(*a))
    y = selective_scan(**inputs, delta_softplus=True)
    assert calls == [1]
    assert torch.equal(y, ss_module.selective_scan_chunked(*inputs.values(), delta_softplus=True))


# ------------------------------------------------------------------------------------------------
# Against transformers' PyTorch selective scan, and decoding steps against the scan
# ------------------------------------------------------------------------------------------------

def transformers_scan():
    """transformers' ``mamba_selective_scan``, its PyTorch body: the hub-kernel decorator wraps it
    with functools.wraps, and ``__wrapped__`` is the undecorated function, which computes on the
    local tensors only (no download, no hub lookup; mamba_ssm and kernels are not needed)."""
    modeling_mamba = pytest.importorskip("transformers.models.mamba.modeling_mamba")
    fn = modeling_mamba.mamba_selective_scan
    fn = getattr(fn, "__wrapped__", fn)
    assert fn.__module__ == "transformers.models.mamba.modeling_mamba" and fn.__name__ == "mamba_selective_scan"
    return fn


@pytest.mark.parametrize("variant", [
    dict(), dict(with_D=False), dict(with_z=False), dict(with_bias=False), dict(softplus=False),
    dict(with_D=False, with_z=False, with_bias=False, softplus=False), dict(length=1), dict(state=1, per_group=1),
])
def test_reference_matches_transformers(variant):
    fn = transformers_scan()
    settings_ = dict(batch=2, groups=1, per_group=5, state=4, length=13, grouped=False)
    settings_.update(variant)
    softplus = settings_.pop("softplus", True)
    inputs = make_inputs(torch.Generator().manual_seed(9), dtype=F64, softplus=softplus, **settings_)
    # transformers casts B and u to float32 (``.float()``) before multiplying them by the float64
    # step: values that float32 holds exactly make that cast exact, and the rest float64 in both
    inputs = {k: (None if v is None else v.float().double()) for k, v in inputs.items()}
    leaves = {k: (None if v is None else v.clone().requires_grad_(True)) for k, v in inputs.items()}
    y, last = selective_scan(**leaves, delta_softplus=softplus, return_last_state=True, backend="reference")
    y_hf, last_hf = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"],
                       leaves["z"], leaves["delta_bias"], softplus, True)
    torch.testing.assert_close(y, y_hf, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, last_hf, rtol=1e-12, atol=1e-12)
    present = [k for k, v in leaves.items() if v is not None]
    got = torch.autograd.grad((y.sum() + last.sum()), [leaves[k] for k in present])
    want = torch.autograd.grad((y_hf.sum() + last_hf.sum()), [leaves[k] for k in present])
    for name, g, w in zip(present, got, want):
        # the gradients of u and B come back through transformers' float32 casts: rounded to float32
        tolerance = dict(rtol=1e-6, atol=1e-7) if name in ("u", "B") else dict(rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g, w, **tolerance, msg=lambda m, name=name: f"d{name}: {m}")


def test_reference_matches_transformers_in_float32():
    fn = transformers_scan()
    inputs = make_inputs(torch.Generator().manual_seed(10), groups=1, per_group=16, state=8, length=37,
                         grouped=False)
    y = selective_scan(**inputs, delta_softplus=True, backend="reference")
    y_hf = fn(*inputs.values(), True, False)
    torch.testing.assert_close(y, y_hf, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_steps_equal_the_scan_position_by_position(grouped, dtype):
    gen = torch.Generator().manual_seed(11)
    inputs = make_inputs(gen, dtype=dtype, length=9, grouped=grouped, groups=2 if grouped else 1)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y, last = selective_scan(**leaves, delta_softplus=True, return_last_state=True, backend="reference")
    u, delta, A, B, C, D, z, bias = (leaves[k] for k in GRAD_NAMES)
    state = torch.zeros(last.shape, dtype=last.dtype)
    steps = []
    for t in range(u.shape[2]):
        y_t, state = selective_scan_step(state, u[:, :, t], delta[:, :, t], A, B[..., t], C[..., t], D,
                                         z[:, :, t], bias, delta_softplus=True)
        assert y_t.dtype == dtype and state.dtype == last.dtype
        steps.append(y_t)
    y_steps = torch.stack(steps, -1)
    tolerance = dict(rtol=1e-12, atol=1e-12) if dtype == F64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y_steps, y, **tolerance)
    torch.testing.assert_close(state, last, **tolerance)
    # the same gradients through the steps as through the scan
    got = torch.autograd.grad(y_steps.pow(2).sum() + state.sum(), list(leaves.values()))
    want = torch.autograd.grad(y.pow(2).sum() + last.sum(), list(leaves.values()))
    for name, g, w in zip(GRAD_NAMES, got, want):
        torch.testing.assert_close(g, w, msg=lambda m, name=name: f"d{name}: {m}",
                                   **(dict(rtol=1e-10, atol=1e-11) if dtype == F64 else dict(rtol=1e-4, atol=1e-5)))


def test_steps_continue_from_the_scans_final_state():
    # decoding after a prompt: scan the prompt, then step; the same as scanning everything
    inputs = make_inputs(torch.Generator().manual_seed(12), dtype=F64, length=12, with_z=False)
    y_all = selective_scan(**inputs, delta_softplus=True)
    prompt = {k: (v[..., :8] if k in ("u", "delta", "B", "C") else v) for k, v in inputs.items()}
    _, state = selective_scan(**prompt, delta_softplus=True, return_last_state=True)
    for t in range(8, 12):
        y_t, state = selective_scan_step(state, inputs["u"][:, :, t], inputs["delta"][:, :, t], inputs["A"],
                                         inputs["B"][..., t], inputs["C"][..., t], inputs["D"],
                                         delta_bias=inputs["delta_bias"], delta_softplus=True)
        torch.testing.assert_close(y_t, y_all[:, :, t], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# The Triton kernels against the oracle and the reference
# ------------------------------------------------------------------------------------------------

@needs_triton
@KERNEL_DRAWS
@given(case=shapes(max_length=20, max_per_group=6), seed=st.integers(0, 2**31 - 1))
def test_triton_matches_the_oracle(case, seed):
    inputs = make_inputs(torch.Generator().manual_seed(seed), device=DEVICE, **case)
    check_backend("triton", inputs, case["softplus"], seed=seed)


TRITON_EDGES = {
    # 8 positions per chunk, 4 channels per program under the interpreter
    "length 1": dict(length=1),
    "one chunk exactly": dict(length=8),
    "a chunk and one position": dict(length=9),
    "two chunks exactly, 5 channels per group (2 blocks)": dict(length=16, per_group=5),
    "ragged, 4 groups of one channel": dict(length=13, groups=4, per_group=1),
    "state 8 (a power of two), 3-D B and C": dict(length=10, groups=1, per_group=3, state=8, grouped=False),
    "no D, z or bias, no softplus": dict(length=11, with_D=False, with_z=False, with_bias=False, softplus=False),
}


@needs_triton
@pytest.mark.parametrize("name", list(TRITON_EDGES))
def test_triton_on_edge_shapes(name):
    case = dict(TRITON_EDGES[name])
    softplus = case.get("softplus", True)
    check_backend("triton", make_inputs(torch.Generator().manual_seed(13), device=DEVICE, **case), softplus)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_in_half_precision(dtype):
    inputs = make_inputs(torch.Generator().manual_seed(14), dtype=dtype, length=19, device=DEVICE)
    check_backend("triton", inputs, True, seed=14)


@needs_triton
def test_triton_takes_strided_inputs_and_growing_states():
    inputs = make_inputs(torch.Generator().manual_seed(15), layout="strided", growing=True, length=12,
                         device=DEVICE)
    check_backend("triton", inputs, True, seed=15)


@needs_triton
def test_triton_agrees_with_the_reference_and_reads_only():
    inputs = make_inputs(torch.Generator().manual_seed(16), length=21, per_group=5, device=DEVICE)
    before = {k: v.clone() for k, v in inputs.items()}
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y, last = selective_scan(**leaves, delta_softplus=True, return_last_state=True, backend="triton")
    y_ref, last_ref = selective_scan(**leaves, delta_softplus=True, return_last_state=True, backend="reference")
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, last_ref, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(y.sum(), list(leaves.values()))  # an upstream gradient of stride 0; no grad for last
    want = torch.autograd.grad(y_ref.sum(), list(leaves.values()))
    for name, g, w in zip(GRAD_NAMES, got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"d{name}: {m}")
    for k, v in inputs.items():
        assert torch.equal(v, before[k]), f"{k} was written to"
    # the final state alone, and only delta_bias requiring grad
    bias = inputs["delta_bias"].clone().requires_grad_(True)
    _, last = selective_scan(**dict(inputs, delta_bias=bias), delta_softplus=True, return_last_state=True,
                             backend="triton")
    _, last_ref = selective_scan(**dict(inputs, delta_bias=bias), delta_softplus=True, return_last_state=True,
                                 backend="reference")
    torch.testing.assert_close(torch.autograd.grad(last.sum(), bias)[0],
                               torch.autograd.grad(last_ref.sum(), bias)[0], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Invalid input
# ------------------------------------------------------------------------------------------------

def valid(**changes):
    """Valid arguments (batch 2, dim 6, length 5, state 4, 2 groups), with ``changes`` applied."""
    args = dict(u=torch.zeros(2, 6, 5), delta=torch.zeros(2, 6, 5), A=-torch.ones(6, 4),
                B=torch.zeros(2, 2, 4, 5), C=torch.zeros(2, 2, 4, 5), D=torch.zeros(6), z=torch.zeros(2, 6, 5),
                delta_bias=torch.zeros(6))
    args.update(changes)
    return args


BAD = {
    "u rank 2": (valid(u=torch.zeros(6, 5)), "u of rank 3"),
    "u not a tensor": (valid(u=[[0.0] * 5] * 6), "u to be a torch.Tensor"),
    "integer u": (valid(u=torch.zeros(2, 6, 5, dtype=torch.int64)), "floating-point"),
    "complex A": (valid(A=torch.zeros(6, 4, dtype=torch.complex64)), "real floating-point"),
    "sparse u": (valid(u=torch.zeros(2, 6, 5).to_sparse()), "dense"),
    "delta shape": (valid(delta=torch.zeros(2, 6, 4)), "delta of u's shape"),
    "z shape": (valid(z=torch.zeros(2, 5, 5)), "z of u's shape"),
    "A dim": (valid(A=torch.zeros(5, 4)), r"A of shape \(dim, state\)"),
    "A rank 1": (valid(A=torch.zeros(6)), "A of rank 2"),
    "B state differs from A": (valid(B=torch.zeros(2, 2, 3, 5)), "B of shape"),
    "B length": (valid(B=torch.zeros(2, 2, 4, 6)), "B of shape"),
    "C batch": (valid(C=torch.zeros(1, 2, 4, 5)), "C of shape"),
    "B rank 2": (valid(B=torch.zeros(4, 5)), "B of rank 3 or 4"),
    "B and C in different forms": (valid(B=torch.zeros(2, 4, 5)), "B and C in the same form"),
    "B and C with different groups": (valid(B=torch.zeros(2, 3, 4, 5), C=torch.zeros(2, 2, 4, 5)), "same groups"),
    "groups not dividing dim": (valid(B=torch.zeros(2, 4, 4, 5), C=torch.zeros(2, 4, 4, 5)), "divide dim"),
    "D shape": (valid(D=torch.zeros(5)), r"D of shape \(dim,\)"),
    "D rank 2": (valid(D=torch.zeros(6, 1)), "D of rank 1"),
    "delta_bias shape": (valid(delta_bias=torch.zeros(7)), r"delta_bias of shape \(dim,\)"),
    "A on another device": (valid(A=-torch.ones(6, 4, device="meta")), "u's device"),
    "softplus not a bool": (dict(valid(), delta_softplus=1), "delta_softplus to be a bool"),
    "return_last_state not a bool": (dict(valid(), return_last_state="yes"), "return_last_state to be a bool"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_invalid_input_raises_value_error(name):
    args, words = BAD[name]
    with pytest.raises(ValueError, match=words):
        selective_scan(**args)


def test_unknown_backend_and_chunk_size():
    with pytest.raises(ValueError, match="backend to be one of"):
        selective_scan(**valid(), backend="cuda")
    for chunk in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="chunk_size to be a positive int"):
            ss_module.selective_scan_chunked(*valid().values(), chunk_size=chunk)


def valid_step(**changes):
    args = dict(state=torch.zeros(2, 6, 4), u=torch.zeros(2, 6), delta=torch.zeros(2, 6), A=-torch.ones(6, 4),
                B=torch.zeros(2, 2, 4), C=torch.zeros(2, 2, 4), D=torch.zeros(6), z=torch.zeros(2, 6),
                delta_bias=torch.zeros(6))
    args.update(changes)
    return args


BAD_STEP = {
    "u rank 3": (valid_step(u=torch.zeros(2, 6, 1)), "u of rank 2"),
    "state shape": (valid_step(state=torch.zeros(2, 6, 3)), "state of shape"),
    "delta shape": (valid_step(delta=torch.zeros(2, 5)), "delta of u's shape"),
    "B state": (valid_step(B=torch.zeros(2, 2, 3)), "B of shape"),
    "C rank 4": (valid_step(C=torch.zeros(2, 2, 4, 1)), "C of rank 2 or 3"),
    "groups not dividing dim": (valid_step(B=torch.zeros(2, 4, 4), C=torch.zeros(2, 4, 4)), "divide dim"),
    "integer state": (valid_step(state=torch.zeros(2, 6, 4, dtype=torch.int32)), "floating-point"),
    "A on another device": (valid_step(A=-torch.ones(6, 4, device="meta")), "u's device"),
}


@pytest.mark.parametrize("name", list(BAD_STEP))
def test_invalid_step_input_raises_value_error(name):
    args, words = BAD_STEP[name]
    with pytest.raises(ValueError, match=words):
        selective_scan_step(**args)


@pytest.mark.skipif(not triton_interpreter(), reason="float64 reaches the Triton path's checks on the CPU "
                                                     "only under the interpreter")
def test_triton_refuses_float64_and_auto_takes_chunked():
    args = valid(A=-torch.ones(6, 4, dtype=F64))
    with pytest.raises(ValueError, match="float16, bfloat16 or float32, got float64"):
        selective_scan(**args, backend="triton")
    assert selective_scan(**args).dtype == torch.float32


def test_triton_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.setattr(ss_module, "triton_interpreter", lambda: False)
    monkeypatch.setattr(ss_module, "triton_installed", lambda: True)
    with pytest.raises(ValueError, match="CUDA"):
        selective_scan(**valid(), backend="triton")
    monkeypatch.setattr(ss_module, "triton_installed", lambda: False)
    with pytest.raises(ValueError, match="needs the triton package"):
        selective_scan(**valid(), backend="triton")


def test_auto_chooses_triton_for_cuda_tensors_only(monkeypatch):
    # without a GPU: pretend u is a CUDA tensor to see the choice (nothing is run)
    tensors = [torch.zeros(1)]
    monkeypatch.setattr(ss_module, "triton_installed", lambda: True)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert ss_module._choose_backend("auto", tensors) == "triton"
    assert ss_module._choose_backend("auto", [torch.zeros(1, dtype=F64)]) == "chunked"
    monkeypatch.setattr(ss_module, "triton_installed", lambda: False)
    assert ss_module._choose_backend("auto", tensors) == "chunked"
