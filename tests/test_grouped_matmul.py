"""companion.kernels.grouped_matmul: the reference against an independent per-row float64 product,
and the Triton kernels against both, forward and gradients.

The oracle never cuts x into groups: it gives every row its group's index
(``repeat_interleave``) and multiplies each row by its own gathered weight matrix, in float64.
The Triton path runs through Triton's interpreter on the CPU (tests/conftest.py sets
``TRITON_INTERPRET=1`` before triton is imported), on small shapes: the interpreter is slow. With
``TRITON_INTERPRET=0`` on a CUDA machine the same tests run the compiled kernels on the GPU.

Tolerances are error bounds, not fitted numbers: a result rounded to the dtype after a float32
sum of ``K`` products differs from the exact value by at most ``(u + (K + 1) u32) * (|a| @ |b|)``
elementwise (``u``: the dtype's unit roundoff, half its epsilon; ``u32`` float32's), the classical
bound for a dot product (Higham, "Accuracy and Stability of Numerical Algorithms", section 3.1),
plus half the dtype's smallest subnormal for results that round into its subnormal range.
"""

import importlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.device import triton_can_run, triton_interpreter
from companion.kernels import grouped_matmul

# `companion.kernels.grouped_matmul` is the function (the package re-exports it); this is the module
gm_module = importlib.import_module("companion.kernels.grouped_matmul")

F64 = torch.float64
needs_triton = pytest.mark.skipif(not triton_can_run(),
                                  reason="Triton cannot run here (not installed, or no CUDA GPU and "
                                         "TRITON_INTERPRET is not 1)")
# the interpreter runs on CPU tensors; with TRITON_INTERPRET=0 the kernels are compiled for the GPU
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not triton_interpreter() else "cpu")
# the interpreter costs milliseconds per program: few draws, small shapes
KERNEL_DRAWS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEATURES = [1, 5, 16, 33, 70]  # around the interpreter's tiles (16 and 32), and below them


# ------------------------------------------------------------------------------------------------
# The oracle and the error bound
# ------------------------------------------------------------------------------------------------

def oracle(x, weight, group_sizes):
    """Row by row in float64: ``y[r] = x[r] @ weight[group of r]``, the group from repeat_interleave."""
    groups = torch.arange(weight.shape[0], device=x.device)
    row_group = torch.repeat_interleave(groups, group_sizes.to(x.device, torch.int64))
    return torch.einsum("tk,tkn->tn", x.to(F64), weight.to(F64)[row_group])


def unit(dtype):
    return torch.finfo(dtype).eps / 2


def assert_near(got, exact, magnitude, terms, dtype, what, factor=1):
    """``|got - exact| <= factor * ((u + (terms + 1) u32) * magnitude + eta / 2)`` elementwise (module
    docstring); ``eta`` is the dtype's smallest subnormal, the spacing of results below its normal range."""
    assert got.shape == exact.shape, what
    assert torch.isfinite(got).all(), what
    eta = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
    bound = factor * ((unit(dtype) + (terms + 1) * unit(torch.float32)) * magnitude + eta / 2)
    err = (got.to(F64) - exact.to(F64)).abs()
    worst = (err - bound).argmax() if err.numel() else None
    assert (err <= bound).all(), (f"{what}: error {err.flatten()[worst].item():.3g} above the bound "
                                  f"{bound.flatten()[worst].item():.3g} at flat index {worst.item()}")


def random_sizes(tokens, groups, gen):
    cuts = torch.randint(0, tokens + 1, (groups - 1,), generator=gen).sort().values
    edges = torch.cat([torch.zeros(1, dtype=torch.int64), cuts, torch.tensor([tokens])])
    return edges.diff()


# ------------------------------------------------------------------------------------------------
# The reference against the oracle
# ------------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 12), min_size=1, max_size=6), in_features=st.integers(1, 9),
       out_features=st.integers(1, 9), int32=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_reference_is_the_per_row_product(sizes, in_features, out_features, int32, seed):
    gen = torch.Generator().manual_seed(seed)
    group_sizes = torch.tensor(sizes, dtype=torch.int32 if int32 else torch.int64)
    x = torch.randn(sum(sizes), in_features, generator=gen, dtype=F64, requires_grad=True)
    w = torch.randn(len(sizes), in_features, out_features, generator=gen, dtype=F64, requires_grad=True)
    y = grouped_matmul(x, w, group_sizes, backend="reference")
    expected = oracle(x, w, group_sizes)
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=1e-12)
    grad = torch.randn(y.shape, generator=gen, dtype=F64)
    got = torch.autograd.grad(y, (x, w), grad)
    want = torch.autograd.grad(expected, (x, w), grad)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, atol=1e-12, rtol=1e-12)
    for e, s in enumerate(sizes):  # an empty group's weight gets exactly zero gradient
        if s == 0:
            assert torch.equal(got[1][e], torch.zeros_like(got[1][e]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reference_in_low_precision_is_within_the_bound(dtype):
    gen = torch.Generator().manual_seed(1)
    group_sizes = torch.tensor([30, 0, 41, 7])
    x = torch.randn(78, 70, generator=gen).to(dtype)
    w = torch.randn(4, 70, 33, generator=gen).to(dtype)
    y = grouped_matmul(x, w, group_sizes, backend="reference")
    assert y.dtype == dtype
    assert_near(y, oracle(x, w, group_sizes), oracle(x.abs(), w.abs(), group_sizes), 70, dtype, "y")


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6), in_features=st.sampled_from([4, 8, 36]),
       out_features=st.sampled_from([4, 12, 64]), seed=st.integers(0, 2**31 - 1))
def test_float32_on_the_cpu_runs_torch_grouped_mm_within_the_bound(sizes, in_features, out_features, seed):
    calls = []
    real = torch.nn.functional.grouped_mm
    gen = torch.Generator().manual_seed(seed)
    group_sizes = torch.tensor(sizes)
    x = torch.randn(sum(sizes), in_features, generator=gen, requires_grad=True)
    w = torch.randn(len(sizes), in_features, out_features, generator=gen, requires_grad=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "grouped_mm", lambda *a, **kw: calls.append(1) or real(*a, **kw))
        y = grouped_matmul(x, w, group_sizes, backend="reference")
    assert calls == ([1] if sum(sizes) else [])  # no tokens: the Python loop (grouped_mm rejects some such views)
    assert_near(y, oracle(x, w, group_sizes), oracle(x.abs(), w.abs(), group_sizes), in_features, torch.float32, "y")
    grad = torch.randn(y.shape, generator=gen)
    dx, dw = torch.autograd.grad(y, (x, w), grad)
    groups = torch.repeat_interleave(torch.arange(len(sizes)), group_sizes)
    exact_dx = torch.einsum("tn,tkn->tk", grad.to(F64), w.detach().to(F64)[groups])
    assert_near(dx, exact_dx, torch.einsum("tn,tkn->tk", grad.abs().to(F64), w.detach().abs().to(F64)[groups]),
                out_features, torch.float32, "dx")
    for e, rows in enumerate(torch.split(torch.arange(x.shape[0]), sizes)):
        xe, ge = x.detach()[rows].to(F64), grad[rows].to(F64)
        assert_near(dw[e], xe.T @ ge, xe.abs().T @ ge.abs(), len(rows), torch.float32, f"dw[{e}]")
        if not len(rows):  # an empty group's weight gets exactly zero gradient
            assert torch.equal(dw[e], torch.zeros_like(dw[e]))


def test_torch_grouped_mm_path_takes_any_upstream_gradient_and_is_differentiable_twice():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(20, 8, generator=gen, requires_grad=True)
    w = torch.randn(3, 8, 12, generator=gen, requires_grad=True)
    sizes = torch.tensor([5, 0, 15])
    right, column = torch.randn(20, 4, generator=gen), torch.randn(1, 12, generator=gen)
    assert gm_module._torch_grouped_mm_takes(x, w)

    def loop(x, w):  # the per-group loop, which the torch path must equal
        return gm_module._ReferenceFunction.apply(x, w, sizes.tolist())

    losses = {"sum (an expanded gradient, strides 0)": lambda y: y.sum(),
              "through a transpose": lambda y: (y.t() @ right).sum(),
              "every other column": lambda y: y[:, ::2].pow(2).sum(),
              "broadcast product": lambda y: (y * column).sum()}
    for name, loss in losses.items():
        got = torch.autograd.grad(loss(grouped_matmul(x, w, sizes)), (x, w))
        want = torch.autograd.grad(loss(loop(x, w)), (x, w))
        for g, e in zip(got, want):
            torch.testing.assert_close(g, e, msg=name)
    probe = torch.randn(20, 8, generator=gen)
    second = []
    for fn in (lambda: grouped_matmul(x, w, sizes), lambda: loop(x, w)):
        dx, _ = torch.autograd.grad(fn().pow(2).sum(), (x, w), create_graph=True)
        second.append(torch.autograd.grad((dx * probe).sum(), (x, w)))
    for g, e in zip(*second):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("x, w", [
    (torch.zeros(6, 4, dtype=F64), torch.zeros(2, 4, 8, dtype=F64)),          # float64
    (torch.zeros(6, 4).half(), torch.zeros(2, 4, 8).half()),                   # half precision
    (torch.zeros(6, 5), torch.zeros(2, 5, 8)),                                 # rows of 20 bytes
    (torch.zeros(6, 4), torch.zeros(2, 4, 6)),                                 # rows of 24 bytes
    (torch.zeros(4, 6).T, torch.zeros(2, 4, 8)),                               # strided x
    (torch.zeros(6, 4), torch.zeros(2, 8, 4).transpose(1, 2)),                 # strided weight
])
def test_other_inputs_take_the_per_group_loop(x, w, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.nn.functional.grouped_mm called")
    monkeypatch.setattr(torch.nn.functional, "grouped_mm", refuse)
    y = grouped_matmul(x, w, torch.tensor([2, 4]), backend="reference")
    assert y.shape == (6, w.shape[2]) and y.dtype == x.dtype


def test_auto_on_the_cpu_is_the_reference():
    gen = torch.Generator().manual_seed(2)
    x, w, sizes = torch.randn(9, 4, generator=gen), torch.randn(3, 4, 6, generator=gen), torch.tensor([2, 7, 0])
    assert torch.equal(grouped_matmul(x, w, sizes), grouped_matmul(x, w, sizes, backend="reference"))


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_no_groups_no_tokens(backend):
    x = torch.zeros(0, 4, device=DEVICE, requires_grad=True)
    w = torch.zeros(0, 4, 3, device=DEVICE, requires_grad=True)
    y = grouped_matmul(x, w, torch.zeros(0, dtype=torch.int64), backend=backend)
    assert y.shape == (0, 3)
    y.sum().backward()
    assert x.grad.shape == (0, 4) and w.grad.shape == (0, 4, 3)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_no_in_features_gives_zeros(backend):
    x = torch.zeros(5, 0, device=DEVICE, requires_grad=True)
    w = torch.zeros(2, 0, 3, device=DEVICE, requires_grad=True)
    y = grouped_matmul(x, w, torch.tensor([2, 3]), backend=backend)
    assert torch.equal(y, torch.zeros(5, 3, device=DEVICE))
    y.sum().backward()
    assert x.grad.shape == (5, 0) and w.grad.shape == (2, 0, 3)


# ------------------------------------------------------------------------------------------------
# The Triton kernels against the oracle and the reference
# ------------------------------------------------------------------------------------------------

LAYOUTS = ["contiguous", "transposed", "every other column"]


def make(shape, layout, dtype, gen):
    """A tensor of ``shape`` (values from randn) in one of LAYOUTS: its last two dims swapped in
    memory, or every other element of a twice-as-wide tensor along the last dim."""
    if layout == "transposed":
        return torch.randn(*shape[:-2], shape[-1], shape[-2], generator=gen).to(dtype).to(DEVICE).transpose(-1, -2)
    if layout == "every other column":
        return torch.randn(*shape[:-1], 2 * shape[-1], generator=gen).to(dtype).to(DEVICE)[..., ::2]
    return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)


def check(sizes, in_features, out_features, dtype, layouts=("contiguous",) * 3, seed=0):
    """Forward and both gradients by the Triton path, against the oracle (within the bound) and
    against the reference (within twice the bound: both are within it of the oracle)."""
    gen = torch.Generator().manual_seed(seed)
    group_sizes = torch.tensor(sizes, dtype=torch.int64)
    tokens = sum(sizes)
    x = make((tokens, in_features), layouts[0], dtype, gen).requires_grad_(True)
    w = make((len(sizes), in_features, out_features), layouts[1], dtype, gen).requires_grad_(True)
    grad = make((tokens, out_features), layouts[2], dtype, gen)
    before = x.detach().clone(), w.detach().clone()

    y = grouped_matmul(x, w, group_sizes, backend="triton")
    assert y.dtype == dtype and y.shape == (tokens, out_features) and y.device == x.device
    dx, dw = torch.autograd.grad(y, (x, w), grad)
    y_ref = grouped_matmul(x, w, group_sizes, backend="reference")
    dx_ref, dw_ref = torch.autograd.grad(y_ref, (x, w), grad)

    x64, w64 = x.detach().to(F64).requires_grad_(True), w.detach().to(F64).requires_grad_(True)
    exact = oracle(x64, w64, group_sizes)
    dx_exact, dw_exact = torch.autograd.grad(exact, (x64, w64), grad.to(F64))
    # the magnitudes |a| @ |b| of each product, and its number of terms
    ax, aw, ag = x64.detach().abs(), w64.detach().abs(), grad.to(F64).abs()
    m_y = oracle(ax, aw, group_sizes)
    m_dx = oracle(ag, aw.transpose(1, 2), group_sizes)
    starts = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    m_dw = torch.stack([ax[a:b].T @ ag[a:b] for a, b in zip(starts, starts[1:])])
    for name, got, ref, ex, mag, terms in (
            ("y", y, y_ref, exact, m_y, in_features), ("dx", dx, dx_ref, dx_exact, m_dx, out_features),
            ("dweight", dw, dw_ref, dw_exact, m_dw, max(sizes, default=0))):
        assert got.dtype == dtype, name
        assert_near(got, ex, mag, terms, dtype, f"{name} against the oracle")
        assert_near(got, ref, mag, terms, dtype, f"{name} against the reference", factor=2)
    for e, s in enumerate(sizes):
        if s == 0:
            assert torch.equal(dw[e], torch.zeros_like(dw[e])), f"empty group {e}: dweight not zero"
    assert torch.equal(x.detach(), before[0]) and torch.equal(w.detach(), before[1])  # inputs only read


@st.composite
def cases(draw):
    groups = draw(st.integers(1, 5))
    shape = draw(st.sampled_from(["random", "some empty", "one group holds all"]))
    if shape == "one group holds all":
        sizes = [0] * groups
        sizes[draw(st.integers(0, groups - 1))] = draw(st.integers(0, 50))
    else:
        most = 40 if shape == "random" else 50
        sizes = draw(st.lists(st.integers(0, most), min_size=groups, max_size=groups))
        if shape == "some empty":
            for e in draw(st.lists(st.integers(0, groups - 1), min_size=1, max_size=groups)):
                sizes[e] = 0
    return dict(sizes=sizes, in_features=draw(st.sampled_from(FEATURES)),
                out_features=draw(st.sampled_from(FEATURES)),
                dtype=draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16])),
                layouts=draw(st.tuples(*[st.sampled_from(LAYOUTS)] * 3)),
                seed=draw(st.integers(0, 2**31 - 1)))


@needs_triton
@KERNEL_DRAWS
@given(cases())
def test_triton_matches_the_oracle_and_the_reference(case):
    check(**case)


@needs_triton
@pytest.mark.parametrize("layouts", [("contiguous", "transposed", "transposed"),
                                     ("contiguous", "contiguous", "transposed")])
def test_no_tokens_with_transposed_views(layouts):
    # hypothesis found these: a (0, 16) view counts as contiguous with strides (1, 1), and PyTorch's
    # grouped_mm (the CPU reference's fast path) rejected it in the backward pass
    check(sizes=[0], in_features=16, out_features=16, dtype=torch.float32, layouts=layouts)


EDGE_CASES = {
    # tiles of 16 rows under the interpreter: groups ending inside a tile, on its edge, one row long
    "groups ending mid-tile, an empty group between": dict(sizes=[17, 0, 15, 1, 33]),
    "groups on tile edges": dict(sizes=[16, 32, 16]),
    "one group holds every token": dict(sizes=[0, 0, 53, 0]),
    "the last group holds every token": dict(sizes=[0, 0, 0, 21]),
    "tokens = 0": dict(sizes=[0, 0, 0]),
    "one group, one token": dict(sizes=[1]),
    "every group empty but the first, one row": dict(sizes=[1, 0, 0, 0, 0, 0]),
}


@needs_triton
@pytest.mark.parametrize("name", list(EDGE_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_on_edge_shapes(name, dtype):
    check(in_features=33, out_features=70, dtype=dtype, **EDGE_CASES[name])


@needs_triton
@pytest.mark.parametrize("name", ["groups ending mid-tile, an empty group between", "groups on tile edges"])
def test_triton_does_not_depend_on_the_order_of_the_tiles(name, monkeypatch):
    # The interpreter runs programs one after another, in order: a tile that wrote past its group's
    # end into the next group's rows would be overwritten by the next group's tiles, and go unseen.
    # In reverse or shuffled order such a write lands after the rows were finished, and shows.
    plan = gm_module._plan

    def permuted(sizes, device):
        tiles, offsets = plan(sizes, device)
        order = torch.randperm(tiles.shape[1], generator=torch.Generator().manual_seed(0))
        order = torch.cat([order[::2], order[1::2].flip(0)])
        return tiles[:, order.to(tiles.device)].contiguous(), offsets

    monkeypatch.setattr(gm_module, "_plan", permuted)
    check(in_features=33, out_features=70, dtype=torch.float32, **EDGE_CASES[name])
    monkeypatch.setattr(gm_module, "_plan", lambda sizes, device: (lambda t, o: (t.flip(1).contiguous(), o))(
        *plan(sizes, device)))
    check(in_features=5, out_features=17, dtype=torch.float16, **EDGE_CASES[name])


@needs_triton
@pytest.mark.parametrize("features", [(1, 1), (5, 70), (70, 5), (32, 16)])
def test_triton_odd_feature_sizes(features):
    check([9, 0, 20], *features, torch.float16, layouts=("transposed", "every other column", "transposed"))


@needs_triton
def test_triton_int32_sizes_on_the_cpu_and_requires_grad_on_one_input():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(20, 5, generator=gen).to(DEVICE)
    w = torch.randn(3, 5, 7, generator=gen).to(DEVICE).requires_grad_(True)
    sizes = torch.tensor([4, 0, 16], dtype=torch.int32)  # on the CPU, whatever the device
    y = grouped_matmul(x, w, sizes, backend="triton")
    (dw,) = torch.autograd.grad(y.sum(), (w,))  # x needs no gradient; the upstream gradient has stride 0
    torch.testing.assert_close(dw, torch.autograd.grad(
        grouped_matmul(x, w, sizes, backend="reference").sum(), (w,))[0])
    # the Triton path called directly (documented in the API) is the same function
    assert torch.equal(gm_module.grouped_matmul_triton(x, w, sizes), y)


# ------------------------------------------------------------------------------------------------
# Invalid input
# ------------------------------------------------------------------------------------------------

def _x():
    return torch.zeros(6, 4)


def _w():
    return torch.zeros(3, 4, 5)


def _s():
    return torch.tensor([1, 2, 3])


BAD = {
    "x rank 1": (lambda: (torch.zeros(4), _w(), _s()), "rank 2"),
    "x rank 3": (lambda: (torch.zeros(1, 6, 4), _w(), _s()), "rank 2"),
    "weight rank 2": (lambda: (_x(), torch.zeros(4, 5), _s()), "rank 3"),
    "x not a tensor": (lambda: ([[0.0] * 4] * 6, _w(), _s()), "torch.Tensor"),
    "integer x": (lambda: (_x().long(), _w().long(), _s()), "floating-point"),
    "dtypes differ": (lambda: (_x(), _w().double(), _s()), "share one dtype"),
    "in_features differ": (lambda: (_x(), torch.zeros(3, 5, 5), _s()), "in_features"),
    "group_sizes a list": (lambda: (_x(), _w(), [1, 2, 3]), "group_sizes to be a torch.Tensor"),
    "group_sizes float": (lambda: (_x(), _w(), _s().float()), "int64 or int32"),
    "group_sizes int16": (lambda: (_x(), _w(), _s().short()), "int64 or int32"),
    "group_sizes 2-D": (lambda: (_x(), _w(), _s()[None]), r"shape \(groups,\)"),
    "group_sizes too short": (lambda: (_x(), _w(), torch.tensor([3, 3])), r"shape \(groups,\)"),
    "group_sizes negative": (lambda: (_x(), _w(), torch.tensor([4, -1, 3])), "non-negative"),
    "group_sizes sum too small": (lambda: (_x(), _w(), torch.tensor([1, 2, 2])), "sum to tokens"),
    "group_sizes sum too large": (lambda: (_x(), _w(), torch.tensor([1, 2, 4])), "sum to tokens"),
    "sparse x": (lambda: (_x().to_sparse(), _w(), _s()), "dense"),
    "x on the meta device": (lambda: (_x().to("meta"), _w(), _s()), "one device"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_invalid_input_raises_value_error(name):
    make_args, words = BAD[name]
    with pytest.raises(ValueError, match=words):
        grouped_matmul(*make_args())


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        grouped_matmul(_x(), _w(), _s(), backend="cuda")


@pytest.mark.skipif(not triton_interpreter(), reason="float64 reaches the Triton path's checks on the CPU "
                                                     "only under the interpreter")
def test_triton_refuses_float64_and_auto_takes_the_reference():
    x, w = _x().double(), _w().double()
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        grouped_matmul(x, w, _s(), backend="triton")
    assert grouped_matmul(x, w, _s()).dtype == F64


def test_triton_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.setattr(gm_module, "triton_interpreter", lambda: False)
    monkeypatch.setattr(gm_module, "triton_installed", lambda: True)
    with pytest.raises(ValueError, match="CUDA"):
        grouped_matmul(_x(), _w(), _s(), backend="triton")
