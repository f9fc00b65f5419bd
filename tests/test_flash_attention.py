"""companion.kernels.flash_attention: the Triton FlashAttention-2 kernel (attention's backend="triton")
against an independent float64 computation and against the reference, forward and gradients.

The oracle below writes the definition out in float64 with its own mask rule (query i at
p_i = i + kv_len - q_len; causal j <= p_i; window |p_i - j| < W, only the lower half with causal),
repeated kv heads and an explicit softmax; its gradients come from autograd. The kernel runs through
Triton's interpreter on the CPU (tests/conftest.py sets TRITON_INTERPRET=1 before triton is
imported), with small tiles (flash_attention.INTERPRETER_BLOCKS: 16 or 32 rows), so that short
sequences span several tiles and end in ragged ones. The interpreter is slow: shapes stay small.
With TRITON_INTERPRET=0 on a CUDA machine the same tests run the compiled kernels on the GPU.
"""

import importlib
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.device import triton_can_run, triton_interpreter
from companion.kernels import attention

attention_module = importlib.import_module("companion.kernels.attention")
flash_module = importlib.import_module("companion.kernels.flash_attention")

F64 = torch.float64
needs_triton = pytest.mark.skipif(not triton_can_run(),
                                  reason="Triton cannot run here (not installed, or no CUDA GPU and "
                                         "TRITON_INTERPRET is not 1)")
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not triton_interpreter() else "cpu")
KERNEL_DRAWS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Tolerance, relative to the size of the terms that each result sums (magnitudes() below: the
# same formulas with absolute values, the scale of any rounding error; 0 where nothing is summed,
# so that rows that see no key must be exact zeros). float32: IEEE products and float32 sums, which
# stay below 1e-6 of it in practice. float16/bfloat16: the oracle sees the same rounded inputs; the
# kernel rounds the output once and its probabilities (and dS) once before the tensor-core products,
# about one unit in the last place (bfloat16 under the interpreter truncates instead of rounding): 4.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 4 * torch.finfo(torch.float16).eps,
             torch.bfloat16: 4 * torch.finfo(torch.bfloat16).eps}


# ------------------------------------------------------------------------------------------------
# The oracle and the inputs
# ------------------------------------------------------------------------------------------------

def oracle(q, k, v, *, causal=False, scale=None, window=None, alibi_slopes=None, probabilities=False):
    """Attention in float64, written out: ``(batch, q_heads, q_len, head_dim)`` (and P if asked)."""
    q, k, v = q.to(F64), k.to(F64), v.to(F64)
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # head h reads h // group
    q_len, kv_len = q.shape[2], k.shape[2]
    scale = q.shape[3] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    distance = torch.tensor([[i + kv_len - q_len - j for j in range(kv_len)] for i in range(q_len)],
                            dtype=torch.long, device=q.device).reshape(q_len, kv_len)
    if alibi_slopes is not None:
        scores = scores - alibi_slopes.to(F64)[:, None, None] * distance.abs()
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device)
    if causal:
        allowed &= distance >= 0
    if window is not None:
        allowed &= (distance < window) if causal else (distance.abs() < window)
    sees = allowed.any(dim=-1, keepdim=True)
    # rows that see nothing: any finite scores, then probabilities zero (finite gradients)
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~sees, 0.0)
    probs = torch.softmax(scores, dim=-1) * sees
    return (probs @ v, probs) if probabilities else probs @ v


def magnitudes(q, k, v, grad, **kwargs):
    """Bounds on the rounding errors of out, dq, dk, dv, as pairs ``(size, reach)`` in float64.

    ``size``: the formulas with absolute values, the size of the terms behind each element (``out =
    P V``, ``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - rowsum(dO * out))``, ``dQ = scale dS
    K``, ``dK = scale dS^T Q``; dK and dV summed over the query heads of a group): a rounding error
    is a small multiple of it, where a bug is of its order. ``reach``: the same with P and dS
    replaced by 1 where query i sees key j, which times the spacing of float16's subnormals bounds
    the error of rounding tiny probabilities (and dS) to float16, whatever their relative precision.
    """
    _, probs = oracle(q, k, v, probabilities=True, **kwargs)
    scale = q.shape[3] ** -0.5 if kwargs.get("scale") is None else kwargs["scale"]
    q, k, v, grad = (x.detach().to(F64).abs() for x in (q, k, v, grad))
    batch, kv_heads, kv_len, head_dim = k.shape
    group = q.shape[1] // kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    ds = probs * (grad @ v.transpose(-1, -2) + (grad * (probs @ v)).sum(-1, keepdim=True))
    seen = (probs > 0).to(F64)

    def per_kv_head(x):  # (batch, q_heads, kv_len, head_dim) -> summed over each group
        return x.reshape(batch, kv_heads, group, kv_len, head_dim).sum(2)

    def formulas(p, s):
        return (p @ v, scale * s @ k, per_kv_head(scale * s.transpose(-1, -2) @ q),
                per_kv_head(p.transpose(-1, -2) @ grad))

    return list(zip(formulas(probs, ds), formulas(seen, seen)))


def make(gen, shape, dtype, layout):
    """A random tensor of ``shape`` in ``dtype`` on DEVICE, laid out in memory as ``layout`` says."""
    def randn(*s):
        return torch.randn(*s, generator=gen, dtype=F64).to(dtype).to(DEVICE)
    b, h, n, d = shape
    if layout == "contiguous":
        return randn(b, h, n, d)
    if layout == "sequence first":  # (batch, seq, heads, head_dim) in memory, as after a projection
        return randn(b, n, h, d).transpose(1, 2)
    if layout == "every other":  # last-dimension stride 2
        return randn(b, h, n, 2 * d)[..., ::2]
    if layout == "broadcast batch":  # stride 0 along the batch
        return randn(1, h, n, d).expand(b, h, n, d)
    raise AssertionError(layout)


def assert_near(got, truth, bounds, dtype, what, factor=1):
    """``|got - truth| <= factor * (TOLERANCE[dtype] * size + spacing * (reach + 1))`` elementwise,
    with ``(size, reach)`` from :func:`magnitudes` and ``spacing`` the distance between the dtype's
    subnormal numbers (which matters for float16 only): exact where nothing is summed."""
    size, reach = bounds
    info = torch.finfo(dtype)
    error = (got.detach().to(F64) - truth.detach().to(F64)).abs()
    bound = factor * (TOLERANCE[dtype] * size + info.smallest_normal * info.eps * (reach + 1))
    bad = error > bound
    if bad.any():
        index = tuple(i.item() for i in bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements off by more than the "
                             f"bound; at {index}: got {got[index].item():.6g}, "
                             f"expected {truth[index].item():.6g}, "
                             f"bound {bound[index].item():.3g} (size of the terms {size[index].item():.3g})")


def check(case):
    """The kernel's output and gradients against the oracle's and the reference's."""
    gen = torch.Generator().manual_seed(case["seed"])
    dtype = case["dtype"]
    batch, kv_heads, q_heads = case["batch"], case["kv_heads"], case["kv_heads"] * case["group"]
    q_len, kv_len, head_dim = case["q_len"], case["kv_len"], case["head_dim"]
    q = make(gen, (batch, q_heads, q_len, head_dim), dtype, case["layouts"][0])
    k = make(gen, (batch, kv_heads, kv_len, head_dim), dtype, case["layouts"][1])
    v = make(gen, (batch, kv_heads, kv_len, head_dim), dtype, case["layouts"][2])
    slopes = (torch.rand(q_heads, generator=gen, dtype=F64).to(DEVICE) if case["alibi"] else None)
    kwargs = dict(causal=case["causal"], window=case["window"], scale=case["scale"], alibi_slopes=slopes)
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
    before = [x.detach().clone() for x in leaves]
    out = attention(*leaves, backend="triton", **kwargs)
    assert out.dtype == dtype and out.shape == (batch, q_heads, q_len, head_dim)
    truth_leaves = [x.detach().to(F64).requires_grad_(True) for x in leaves]
    truth = oracle(*truth_leaves, **kwargs)
    reference = attention(*leaves, backend="reference", **kwargs)
    # gradients, with an upstream gradient that is not contiguous
    grad = torch.randn(batch, q_len, q_heads, head_dim, generator=gen, dtype=F64).to(dtype).to(DEVICE)
    grad = grad.transpose(1, 2)
    got = (out, *torch.autograd.grad(out, leaves, grad))
    expected = (truth, *torch.autograd.grad(truth, truth_leaves, grad.to(F64)))
    from_reference = (reference, *torch.autograd.grad(reference, leaves, grad))
    sizes = magnitudes(*leaves, grad, **kwargs)
    for name, g, e, r, m, x in zip(("out", "dq", "dk", "dv"), got, expected, from_reference, sizes,
                                   (q, q, k, v)):
        assert g.dtype == dtype and g.shape == x.shape and torch.isfinite(g).all(), name
        assert_near(g, e, m, dtype, f"{name} against the oracle")
        # the reference is within the bound of the oracle too (in float32 for 16-bit inputs)
        assert_near(g, r, m, dtype, f"{name} against the reference", factor=2)
    for x, b in zip(leaves, before):  # inputs are read, never written
        assert torch.equal(x.detach(), b)


# ------------------------------------------------------------------------------------------------
# Random shapes, masks, dtypes and layouts
# ------------------------------------------------------------------------------------------------

LAYOUTS = ["contiguous", "sequence first", "every other", "broadcast batch"]


@st.composite
def cases(draw):
    head_dim = draw(st.sampled_from([16, 24, 32, 48, 64, 80, 96, 128, 256]))
    longest = 70 if head_dim <= 64 else 24  # big head dims: tiny lengths (the interpreter is slow)
    q_len = draw(st.integers(0, longest))
    kv_len = draw(st.one_of(st.integers(0, longest), st.just(q_len)))
    return dict(
        batch=draw(st.integers(1, 2)), kv_heads=draw(st.integers(1, 2)), group=draw(st.integers(1, 3)),
        q_len=q_len, kv_len=kv_len, head_dim=head_dim,
        causal=draw(st.booleans()), window=draw(st.one_of(st.none(), st.integers(1, 40))),
        # scale: the default 1/sqrt(head_dim) or a multiple of it, so that the scores' spread is 1/4 to 4
        # (a sharper softmax than usual; far sharper ones amplify float32 rounding past 1e-5 in dQ)
        alibi=draw(st.booleans()),
        scale=draw(st.one_of(st.none(), st.floats(0.25, 4.0).map(lambda f: f / head_dim ** 0.5))),
        dtype=draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16])),
        layouts=draw(st.tuples(*[st.sampled_from(LAYOUTS)] * 3)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@needs_triton
@KERNEL_DRAWS
@given(cases())
def test_triton_matches_the_oracle_and_the_reference(case):
    check(case)


def case(**overrides):
    base = dict(batch=1, kv_heads=1, group=1, q_len=37, kv_len=37, head_dim=16, causal=False, window=None,
                alibi=False, scale=None, dtype=torch.float32, layouts=("contiguous",) * 3, seed=0)
    return {**base, **overrides}


EDGE_CASES = {
    # lengths around the tiles (16 and 32 under the interpreter)
    "one query, one key": case(q_len=1, kv_len=1),
    "decoding: one query against 53 keys, causal, GQA": case(q_len=1, kv_len=53, causal=True, kv_heads=2,
                                                             group=3),
    "chunk of queries against a longer cache, causal": case(q_len=19, kv_len=50, causal=True),
    # offset kv_len - q_len = 17: a query tile's last row sees exactly the first key of a key tile
    "causal, the last row of a tile opens a new key tile": case(q_len=40, kv_len=57, causal=True),
    "more queries than keys, causal: 30 empty rows": case(q_len=40, kv_len=10, causal=True, group=2),
    "more queries than keys, causal, window 3": case(q_len=40, kv_len=17, causal=True, window=3),
    "symmetric band, queries left of every key": case(q_len=45, kv_len=5, window=4, alibi=True),
    "window 1 (each query sees one key)": case(q_len=33, kv_len=33, causal=True, window=1),
    "window 1, no causal (the diagonal)": case(q_len=20, kv_len=49, window=1),
    "exact multiples of the tiles": case(q_len=64, kv_len=32, causal=True, batch=2),
    "multi-query, ALiBi, window": case(q_len=35, kv_len=41, kv_heads=1, group=4, causal=True, window=9,
                                       alibi=True),
    "head_dim 80": case(q_len=17, kv_len=23, head_dim=80, kv_heads=2, group=2, causal=True),
    "head_dim 96, float16": case(q_len=18, kv_len=9, head_dim=96, dtype=torch.float16, alibi=True),
    "head_dim 128, bfloat16": case(q_len=9, kv_len=20, head_dim=128, dtype=torch.bfloat16, causal=True),
    "head_dim 256": case(q_len=5, kv_len=18, head_dim=256, group=2),
    "head_dim 8 (padded to 16)": case(q_len=21, kv_len=21, head_dim=8, causal=True),
    "empty keys": case(q_len=5, kv_len=0, group=2, causal=True),
    "empty queries": case(q_len=0, kv_len=7, kv_heads=2),
    "strided everything, bfloat16": case(q_len=23, kv_len=31, dtype=torch.bfloat16, kv_heads=2, group=2,
                                         batch=2, layouts=("sequence first", "every other", "broadcast batch")),
}


@needs_triton
@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_triton_on_edge_shapes(name):
    check(EDGE_CASES[name])


@needs_triton
@pytest.mark.skipif(not triton_interpreter(), reason="the tile sizes are fixed only under the interpreter")
@pytest.mark.parametrize("blocks", [(16, 16), (32, 16), (16, 64)])
def test_other_tile_sizes(blocks, monkeypatch):
    # square tiles, and the forward/dQ and dK/dV tiles swapped: the kernels are rebuilt with them
    monkeypatch.setattr(flash_module, "INTERPRETER_BLOCKS",
                        {"forward": blocks, "dq": blocks, "dkdv": blocks, "delta": (16, 16)})
    monkeypatch.setattr(flash_module, "_KERNELS", None)
    check(case(q_len=45, kv_len=50, kv_heads=2, group=2, causal=True, window=20, alibi=True))
    check(case(q_len=50, kv_len=29, window=12, seed=1))


# ------------------------------------------------------------------------------------------------
# Queries that see no key, and upstream gradients with odd strides
# ------------------------------------------------------------------------------------------------

@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("q_len, kv_len, kwargs, empty", [
    (20, 7, dict(causal=True), 13),                # the first q_len - kv_len queries come before every key
    (20, 7, dict(causal=True, window=2), 13),
    (40, 3, dict(window=5), 33),                   # the band: queries 5 or more left of key 0
    (6, 0, dict(), 6),                             # no keys at all
])
def test_rows_that_see_no_key_are_exact_zeros_with_zero_gradient(dtype, q_len, kv_len, kwargs, empty):
    gen = torch.Generator().manual_seed(q_len + kv_len)
    q = make(gen, (1, 2, q_len, 16), dtype, "contiguous").requires_grad_(True)
    k = make(gen, (1, 1, kv_len, 16), dtype, "contiguous").requires_grad_(True)
    v = make(gen, (1, 1, kv_len, 16), dtype, "contiguous").requires_grad_(True)
    out = attention(q, k, v, backend="triton", **kwargs)
    assert torch.equal(out[:, :, :empty], torch.zeros_like(out[:, :, :empty]))
    # out.sum(): an upstream gradient of ones with stride 0 everywhere
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.equal(dq[:, :, :empty], torch.zeros_like(dq[:, :, :empty]))
    for x in (out, dq, dk, dv):
        assert torch.isfinite(x).all()
    if kv_len == 0:
        assert torch.equal(dq, torch.zeros_like(dq)) and dk.shape == k.shape
    expected = attention(q, k, v, backend="reference", **kwargs)
    sizes = magnitudes(q, k, v, torch.ones(out.shape, dtype=F64, device=DEVICE), **kwargs)
    for name, g, e, m in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv),
                             (expected, *torch.autograd.grad(expected.sum(), (q, k, v))), sizes):
        assert_near(g, e, m, dtype, f"{name} against the reference", factor=2)


@needs_triton
def test_only_the_gradients_asked_for():
    gen = torch.Generator().manual_seed(4)
    q = make(gen, (1, 2, 20, 16), torch.float32, "contiguous")
    k = make(gen, (1, 2, 20, 16), torch.float32, "contiguous").requires_grad_(True)
    v = make(gen, (1, 2, 20, 16), torch.float32, "contiguous")
    out = attention(q, k, v, causal=True, backend="triton")
    (dk,) = torch.autograd.grad(out.sum(), k)
    kk = k.detach().to(F64).requires_grad_(True)
    truth = oracle(q, kk, v, causal=True)
    (expected,) = torch.autograd.grad(truth.sum(), kk)
    sizes = magnitudes(q, k, v, torch.ones(out.shape, dtype=F64, device=DEVICE), causal=True)
    assert_near(dk, expected, sizes[2], torch.float32, "dk")
    with torch.no_grad():  # and no graph at all
        assert_near(attention(q, k, v, causal=True, backend="triton"), truth, sizes[0], torch.float32, "out")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_one_hot_softmax_keeps_dq_accurate(dtype):
    # each query is 6 times one of the keys: every row's softmax is nearly one-hot, dP_ij - delta_i
    # cancels and the true dQ is small. delta from the output rounded to 16 bits (FlashAttention-2's
    # choice) leaves an error of order eps |dO| |O| |K| there, larger than a plain 16-bit PyTorch
    # softmax's; from the float32 output (this kernel) it is 5 to 30 times smaller than that
    gen = torch.Generator().manual_seed(2)
    k, v, grad = (make(gen, (1, 2, 24, 16), dtype, "contiguous") for _ in range(3))
    q = (6 * k[:, :, torch.randperm(24, generator=gen)]).requires_grad_(True)
    k.requires_grad_(True)
    v.requires_grad_(True)
    leaves64 = [x.detach().to(F64).requires_grad_(True) for x in (q, k, v)]
    (truth,) = torch.autograd.grad(oracle(*leaves64), leaves64[0], grad.to(F64))
    (dq,) = torch.autograd.grad(attention(q, k, v, backend="triton"), q, grad)
    plain = torch.softmax((q @ k.transpose(-1, -2)) * 0.25, dim=-1) @ v  # in the 16-bit dtype throughout
    (plain_dq,) = torch.autograd.grad(plain, q, grad)
    assert (dq.to(F64) - truth).abs().max() <= 0.5 * (plain_dq.to(F64) - truth).abs().max()


# ------------------------------------------------------------------------------------------------
# Masked tiles are skipped: the kernels visit exactly the tiles with at least one visible pair
# ------------------------------------------------------------------------------------------------

def tiles_with_a_visible_pair(q_len, kv_len, block_m, block_n, causal, window):
    distance = (torch.arange(q_len)[:, None] + kv_len - q_len) - torch.arange(kv_len)[None, :]
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool)
    if causal:
        allowed &= distance >= 0
    if window is not None:
        allowed &= (distance < window) if causal else (distance.abs() < window)
    return sum(bool(allowed[m:m + block_m, n:n + block_n].any())
               for m in range(0, q_len, block_m) for n in range(0, kv_len, block_n))


@needs_triton
@pytest.mark.skipif(not triton_interpreter(), reason="counts calls inside the kernels: interpreter only")
@pytest.mark.parametrize("q_len, kv_len, causal, window", [
    (128, 128, False, None), (128, 128, True, None), (100, 130, True, None), (100, 117, True, None),
    (130, 60, True, None),
    (128, 128, True, 20), (90, 120, False, 10),
])
def test_masked_tiles_are_skipped(q_len, kv_len, causal, window, monkeypatch):
    flash_module._triton_kernel()
    calls = []
    real_dot = flash_module._dot

    def counting_dot(*args, **kwargs):
        calls.append(1)
        return real_dot(*args, **kwargs)

    monkeypatch.setattr(flash_module, "_dot", counting_dot)
    gen = torch.Generator().manual_seed(0)
    q = make(gen, (1, 2, q_len, 16), torch.float32, "contiguous").requires_grad_(True)
    k = make(gen, (1, 1, kv_len, 16), torch.float32, "contiguous").requires_grad_(True)
    v = make(gen, (1, 1, kv_len, 16), torch.float32, "contiguous").requires_grad_(True)
    out = attention(q, k, v, causal=causal, window=window, backend="triton")
    blocks = flash_module.INTERPRETER_BLOCKS
    # forward: two products per visited tile (S = Q K^T, then P V), for each of the 2 query heads
    assert len(calls) == 2 * 2 * tiles_with_a_visible_pair(q_len, kv_len, *blocks["forward"], causal, window)
    calls.clear()
    out.sum().backward()
    # backward: four products per tile in the dK/dV kernel (S^T, dV, dP^T, dK), three in the dQ kernel
    # (S, dP, dQ)
    assert len(calls) == 2 * (4 * tiles_with_a_visible_pair(q_len, kv_len, *blocks["dkdv"], causal, window)
                              + 3 * tiles_with_a_visible_pair(q_len, kv_len, *blocks["dq"], causal, window))
    if causal and window is None and q_len == kv_len == 128:  # 8 x 4 tiles, of which 20 are visited
        assert tiles_with_a_visible_pair(128, 128, 16, 32, True, None) == 20


# ------------------------------------------------------------------------------------------------
# Backends and what the Triton path refuses
# ------------------------------------------------------------------------------------------------

def small(dtype=torch.float32, head_dim=8, **overrides):
    gen = torch.Generator().manual_seed(0)
    args = dict(q=torch.randn(2, 4, 5, head_dim, generator=gen).to(dtype),
                k=torch.randn(2, 2, 7, head_dim, generator=gen).to(dtype),
                v=torch.randn(2, 2, 7, head_dim, generator=gen).to(dtype))
    return {**args, **overrides}


def test_the_backends():
    assert attention_module.BACKENDS == ("auto", "reference", "triton")


@needs_triton
@pytest.mark.skipif(DEVICE.type != "cpu", reason="CPU tensors under the interpreter")
def test_triton_refuses_what_it_does_not_support():
    with pytest.raises(ValueError, match="expected q, k and v of dtype float16, bfloat16 or float32, "
                                         "got torch.float64"):
        attention(**small(F64), backend="triton")
    with pytest.raises(ValueError, match="head_dim <= 256, got 264"):
        attention(**small(head_dim=264), backend="triton")
    slopes = torch.rand(4, requires_grad=True)
    with pytest.raises(ValueError, match="no gradient to alibi_slopes"):
        attention(**small(), alibi_slopes=slopes, backend="triton")
    with torch.no_grad():  # no gradient recorded: accepted
        out = attention(**small(), alibi_slopes=slopes, backend="triton")
    torch.testing.assert_close(out, attention(**small(), alibi_slopes=slopes.detach(), backend="reference"))
    # "auto" on the CPU: the reference, float64 and trainable slopes included
    out = attention(**small(F64), alibi_slopes=slopes.double(), backend="auto")
    assert out.dtype == F64 and out.requires_grad


@needs_triton
@pytest.mark.parametrize("name", ["q of rank 3", "k of rank 5", "different dtypes", "k and v differ in kv_len",
                                  "q_heads not a multiple", "window 0", "negative scale",
                                  "slopes shape"])
def test_bad_input_raises_as_the_reference_does(name):
    args, message = BAD[name]
    for backend in ("reference", "triton", "auto"):
        with pytest.raises(ValueError, match=message):
            attention(**args, backend=backend)


BAD = {
    "q of rank 3": ({**small(), "q": torch.zeros(2, 5, 8)}, "expected q of rank 4"),
    "k of rank 5": ({**small(), "k": torch.zeros(1, 2, 2, 7, 8)}, "expected k of rank 4"),
    "different dtypes": ({**small(), "v": torch.zeros(2, 2, 7, 8, dtype=torch.float16)}, "share one dtype"),
    "k and v differ in kv_len": ({**small(), "v": torch.zeros(2, 2, 6, 8)}, "same kv_heads"),
    "q_heads not a multiple": ({**small(), "q": torch.zeros(2, 3, 5, 8)}, "positive multiple of kv_heads"),
    "window 0": ({**small(), "window": 0}, "window to be None or an int >= 1"),
    "negative scale": ({**small(), "scale": -1.0}, "finite number > 0"),
    "slopes shape": ({**small(), "alibi_slopes": torch.ones(3)}, r"alibi_slopes of shape \(q_heads,\)"),
}


def test_auto_takes_the_reference_on_the_cpu(monkeypatch):
    args = small()
    expected = attention(**args, causal=True, backend="reference")

    def no_kernel(*_, **__):
        raise AssertionError("the Triton kernel was launched for CPU tensors by backend='auto'")

    monkeypatch.setattr(flash_module, "_forward", no_kernel)
    assert torch.equal(attention(**args, causal=True), expected)


def fake_cuda(dtype=torch.float32, head_dim=64):
    """Stand-ins for CUDA tensors: what _choose_backend looks at."""
    return SimpleNamespace(is_cuda=True, device=torch.device("cuda"), dtype=dtype, layout=torch.strided,
                           shape=(1, 4, 8, head_dim))


def test_auto_chooses_triton_for_supported_cuda_tensors_only(monkeypatch):
    monkeypatch.setattr(flash_module, "triton_installed", lambda: True)
    choose = attention_module._choose_backend
    q = fake_cuda()
    assert choose("auto", q, q, q, None) == "triton"
    assert choose("auto", q, q, q, torch.ones(4)) == "triton"
    for dtype in (torch.float16, torch.bfloat16):
        assert choose("auto", fake_cuda(dtype), fake_cuda(dtype), fake_cuda(dtype), None) == "triton"
    # the reference for what the kernel does not take
    wide = fake_cuda(F64)
    assert choose("auto", wide, wide, wide, None) == "reference"
    big = fake_cuda(head_dim=512)
    assert choose("auto", big, big, big, None) == "reference"
    assert choose("auto", q, q, q, torch.ones(4, requires_grad=True)) == "reference"
    cpu = SimpleNamespace(is_cuda=False, device=torch.device("cpu"), dtype=torch.float32,
                          layout=torch.strided, shape=(1, 4, 8, 64))
    assert choose("auto", cpu, cpu, cpu, None) == "reference"
    # and without triton: the reference, and a ValueError for backend="triton"
    monkeypatch.setattr(flash_module, "triton_installed", lambda: False)
    assert choose("auto", q, q, q, None) == "reference"
    with pytest.raises(ValueError, match="needs the triton package"):
        choose("triton", q, q, q, None)
