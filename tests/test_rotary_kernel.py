"""companion.kernels.rotary: the reference against an independent float64 rotation and transformers,
and the Triton kernel against the reference, forward and backward.

The oracle turns each pair ``(x[i], x[i + H])`` as the complex number ``x[i] + 1j x[i + H]`` by
``exp(1j p theta_i)`` (Su et al. 2021, section 3.2): no rotate_half, no cos/sin tables. The Triton
path runs through Triton's interpreter on the CPU (tests/conftest.py sets ``TRITON_INTERPRET=1``
before triton is imported), on small shapes: the interpreter is slow. With ``TRITON_INTERPRET=0``
on a CUDA machine the same tests run the compiled kernel on the GPU.
"""

import importlib
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.device import triton_can_run, triton_interpreter
from companion.kernels import rotary
from companion.nn import RopeScaling

# `companion.kernels.rotary` is the function (the package re-exports it); this is the module
rotary_module = importlib.import_module("companion.kernels.rotary")

F64 = torch.float64
needs_triton = pytest.mark.skipif(not triton_can_run(),
                                  reason="Triton cannot run here (not installed, or no CUDA GPU and "
                                         "TRITON_INTERPRET is not 1)")
# the interpreter runs on CPU tensors; with TRITON_INTERPRET=0 the kernel is compiled for the GPU
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not triton_interpreter() else "cpu")
# the interpreter costs milliseconds per program: few draws, small shapes
KERNEL_DRAWS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------
# The oracle, and RoPE's tables written from the definition
# ------------------------------------------------------------------------------------------------

def oracle(x, positions, theta):
    """RoPE in float64 by complex multiplication: ``(b, s, h, 2H)`` with positions ``(s,)``, theta ``(H,)``."""
    half = x.shape[-1] // 2
    pairs = torch.complex(x[..., :half].to(F64), x[..., half:].to(F64))
    angles = positions.to(F64)[:, None] * theta.to(F64)[None, :]
    turned = pairs * torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
    return torch.cat((turned.real, turned.imag), dim=-1)


def rope_tables(positions, theta, dtype=F64):
    """``cos``, ``sin`` ``(s, 2H)``: the angle ``p theta_i`` written into both halves."""
    angles = positions.to(F64)[:, None] * theta.to(F64)[None, :]
    return torch.cat((angles.cos(), angles.cos()), -1).to(dtype), torch.cat((angles.sin(), angles.sin()), -1).to(dtype)


def theta_for(head_dim, base=10000.0):
    return base ** (-torch.arange(head_dim // 2, dtype=F64) * 2 / head_dim)


# ------------------------------------------------------------------------------------------------
# The reference against the oracle and against transformers
# ------------------------------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(batch=st.integers(1, 3), seq=st.integers(1, 9), q_heads=st.integers(1, 4), kv_heads=st.integers(1, 4),
       half=st.integers(1, 40), start=st.integers(0, 100_000), base=st.sampled_from([10.0, 1e4, 5e5]),
       seed=st.integers(0, 2**31 - 1))
def test_reference_is_the_complex_rotation(batch, seq, q_heads, kv_heads, half, start, base, seed):
    gen = torch.Generator().manual_seed(seed)
    head_dim = 2 * half
    positions = start + torch.randperm(3 * seq, generator=gen)[:seq]  # any positions, not only 0..seq-1
    theta = theta_for(head_dim, base)
    cos, sin = rope_tables(positions, theta)
    q = torch.randn(batch, seq, q_heads, head_dim, generator=gen, dtype=F64)
    k = torch.randn(batch, seq, kv_heads, head_dim, generator=gen, dtype=F64)
    q_rot, k_rot = rotary(q, k, cos, sin, backend="reference")
    torch.testing.assert_close(q_rot, oracle(q, positions, theta), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(k_rot, oracle(k, positions, theta), atol=1e-12, rtol=1e-12)
    # float32 inputs and tables: computed in float32, the rotation to float32's precision
    q32, k32 = rotary(q.float(), k.float(), cos.float(), sin.float(), backend="reference")
    assert q32.dtype == k32.dtype == torch.float32
    torch.testing.assert_close(q32.to(F64), oracle(q.float(), positions, theta), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k32.to(F64), oracle(k.float(), positions, theta), atol=1e-5, rtol=1e-5)


def test_reference_keeps_dot_products_relative():
    # q_m . k_n depends on m - n only: shift both positions by 1000 and nothing changes
    gen = torch.Generator().manual_seed(0)
    head_dim, theta = 16, theta_for(16)
    q, k = (torch.randn(1, 1, 1, head_dim, generator=gen, dtype=F64) for _ in range(2))
    scores = []
    for m, n in ((7, 3), (1007, 1003)):
        q_rot = rotary(q, q, *rope_tables(torch.tensor([m]), theta), backend="reference")[0]
        k_rot = rotary(k, k, *rope_tables(torch.tensor([n]), theta), backend="reference")[0]
        scores.append((q_rot * k_rot).sum().item())
    assert scores[0] == pytest.approx(scores[1], rel=1e-10)
    assert scores[0] != pytest.approx((q * k).sum().item(), rel=1e-3)  # and the rotation did something


def test_reference_follows_the_formula_for_any_tables():
    # the documented definition holds for tables whose halves differ (not RoPE's): index by index
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 3, 2, 10, generator=gen, dtype=F64), torch.randn(2, 3, 1, 10, generator=gen, dtype=F64)
    cos, sin = torch.randn(3, 10, generator=gen, dtype=F64), torch.randn(3, 10, generator=gen, dtype=F64)
    for x, got in zip((q, k), rotary(q, k, cos, sin, backend="reference")):
        expected = torch.empty_like(x)
        for i in range(5):
            expected[..., i] = x[..., i] * cos[None, :, None, i] - x[..., i + 5] * sin[None, :, None, i]
            expected[..., i + 5] = x[..., i + 5] * cos[None, :, None, i + 5] + x[..., i] * sin[None, :, None, i + 5]
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("batch, seq, q_heads, kv_heads, head_dim, start", [
    (2, 7, 4, 2, 16, 0),      # GQA, prefill
    (1, 1, 8, 1, 64, 300),    # MQA, one decoded token far into the sequence
    (3, 5, 3, 3, 48, 11),     # MHA, head_dim not a power of two
    (1, 4, 2, 1, 6, 2),       # head_dim 6
])
def test_reference_matches_transformers(dtype, batch, seq, q_heads, kv_heads, head_dim, start):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = LlamaConfig(hidden_size=q_heads * head_dim, num_attention_heads=q_heads,
                         num_key_value_heads=kv_heads, head_dim=head_dim,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    gen = torch.Generator().manual_seed(head_dim)
    q = torch.randn(batch, seq, q_heads, head_dim, generator=gen, dtype=dtype)
    k = torch.randn(batch, seq, kv_heads, head_dim, generator=gen, dtype=dtype)
    positions = torch.arange(start, start + seq)[None]
    cos, sin = LlamaRotaryEmbedding(config)(q, positions)  # (1, seq, head_dim) in q's dtype
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)  # (batch, seq, heads, dim)
    got_q, got_k = rotary(q, k, cos[0], sin[0], backend="reference")
    tolerance = dict(atol=1e-12, rtol=1e-12) if dtype == F64 else {}
    torch.testing.assert_close(got_q, expected_q, **tolerance)
    torch.testing.assert_close(got_k, expected_k, **tolerance)
    # and the rotation by transformers' angles is the oracle's (tables from float32 angles: 1e-5)
    theta = config.rope_parameters["rope_theta"] ** (-torch.arange(0, head_dim, 2, dtype=F64) / head_dim)
    torch.testing.assert_close(got_q.to(F64), oracle(q, positions[0], theta), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# The Triton kernel against the reference: random shapes, strides and tables, values and gradients
# ------------------------------------------------------------------------------------------------

def make_heads(gen, layout, batch, seq, q_heads, kv_heads, head_dim, dtype):
    """q ``(batch, seq, q_heads, head_dim)`` and k, laid out in memory as ``layout`` says."""
    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).to(dtype).to(DEVICE)

    if layout == "contiguous":
        return randn(batch, seq, q_heads, head_dim), randn(batch, seq, kv_heads, head_dim)
    if layout == "fused":  # views into one projection output (batch, seq, q_heads + 2 kv_heads, head_dim)
        qkv = randn(batch, seq, q_heads + 2 * kv_heads, head_dim)
        return qkv[:, :, :q_heads], qkv[:, :, q_heads:q_heads + kv_heads]
    if layout == "heads first":  # (batch, heads, seq, head_dim) in memory, transposed
        return (randn(batch, q_heads, seq, head_dim).transpose(1, 2),
                randn(batch, kv_heads, seq, head_dim).transpose(1, 2))
    if layout == "every other":  # last-dimension stride 2
        return randn(batch, seq, q_heads, 2 * head_dim)[..., ::2], randn(batch, seq, kv_heads, 2 * head_dim)[..., 1::2]
    raise AssertionError(layout)


def make_tables(gen, layout, seq, head_dim, dtype):
    """Random tables ``(seq, head_dim)`` with unequal halves, so that a swapped half shows."""
    if layout == "contiguous":
        cos, sin = (torch.randn(seq, head_dim, generator=gen, dtype=F64) for _ in range(2))
    elif layout == "transposed":
        cos, sin = (torch.randn(head_dim, seq, generator=gen, dtype=F64).t() for _ in range(2))
    elif layout == "broadcast row":  # stride 0 along seq
        cos, sin = (torch.randn(1, head_dim, generator=gen, dtype=F64).expand(seq, head_dim) for _ in range(2))
    else:
        raise AssertionError(layout)
    return cos.to(dtype).to(DEVICE), sin.to(dtype).to(DEVICE)


HEAD_DIMS = [2, 4, 6, 8, 10, 16, 30, 48, 64, 80, 96, 128, 256]
LAYOUTS = ["contiguous", "fused", "heads first", "every other"]
TABLE_LAYOUTS = ["contiguous", "transposed", "broadcast row"]


@st.composite
def kernel_cases(draw):
    kv_heads = draw(st.integers(1, 3))
    return dict(
        batch=draw(st.integers(1, 2)),
        seq=draw(st.sampled_from([1, 2, 3, 5, 7])),
        kv_heads=kv_heads,
        q_heads=kv_heads * draw(st.integers(1, 3)),  # MHA, GQA, MQA
        head_dim=draw(st.sampled_from(HEAD_DIMS)),
        layout=draw(st.sampled_from(LAYOUTS)),
        tables=draw(st.sampled_from(TABLE_LAYOUTS)),
        dtype=draw(st.sampled_from([torch.float32, F64])),
        table_dtype=draw(st.sampled_from([torch.float32, F64])),
        k_grad=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def check_against_reference(case):
    """Values and gradients of the Triton path against the reference's autograd, in the case's dtype."""
    gen = torch.Generator().manual_seed(case["seed"])
    dtype = case["dtype"]
    q, k = make_heads(gen, case["layout"], case["batch"], case["seq"], case["q_heads"], case["kv_heads"],
                      case["head_dim"], dtype)
    cos, sin = make_tables(gen, case["tables"], case["seq"], case["head_dim"], case["table_dtype"])
    q.requires_grad_(True)
    k.requires_grad_(case["k_grad"])
    before = q.detach().clone(), k.detach().clone()
    got = rotary(q, k, cos, sin, backend="triton")
    expected = rotary_module.rotary_reference(q, k, cos, sin)
    tolerance = dict(atol=1e-12, rtol=1e-12) if dtype == F64 else {}  # float32: assert_close's own
    for g, e, x in zip(got, expected, (q, k)):
        assert g.dtype == dtype and g.shape == x.shape and g.is_contiguous()
        torch.testing.assert_close(g, e, **tolerance)
    # the inputs are read, never written
    assert torch.equal(q.detach(), before[0]) and torch.equal(k.detach(), before[1])
    # gradients, with upstream gradients that are themselves not contiguous
    grad_q = torch.randn(case["batch"], case["q_heads"], case["seq"], case["head_dim"], generator=gen,
                         dtype=F64).to(dtype).to(DEVICE).transpose(1, 2)
    grad_k = torch.randn(got[1].shape, generator=gen, dtype=F64).to(dtype).to(DEVICE)
    leaves = (q, k) if case["k_grad"] else (q,)
    got_grads = torch.autograd.grad((got[0] * grad_q).sum() + (got[1] * grad_k).sum(), leaves)
    expected_grads = torch.autograd.grad((expected[0] * grad_q).sum() + (expected[1] * grad_k).sum(), leaves)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, **tolerance)


@needs_triton
@KERNEL_DRAWS
@given(kernel_cases())
def test_triton_matches_the_reference_on_random_shapes(case):
    check_against_reference(case)


EDGE_CASES = {
    "one position (decoding)": dict(batch=2, seq=1, q_heads=8, kv_heads=2, head_dim=64),
    "head_dim 2 (one pair)": dict(batch=1, seq=3, q_heads=2, kv_heads=2, head_dim=2),
    "head_dim 6": dict(batch=1, seq=5, q_heads=3, kv_heads=1, head_dim=6),
    "head_dim 80": dict(batch=1, seq=3, q_heads=4, kv_heads=2, head_dim=80),
    "head_dim 96": dict(batch=2, seq=3, q_heads=2, kv_heads=1, head_dim=96),
    "head_dim 256": dict(batch=1, seq=2, q_heads=4, kv_heads=4, head_dim=256),
    "more kv heads than query heads": dict(batch=1, seq=3, q_heads=1, kv_heads=3, head_dim=8),
    "many heads, one kv head": dict(batch=1, seq=2, q_heads=33, kv_heads=1, head_dim=48),
}


@needs_triton
@pytest.mark.parametrize("layout", ["fused", "heads first"])
@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_triton_matches_the_reference_on_edge_shapes(name, layout):
    check_against_reference(dict(EDGE_CASES[name], layout=layout, tables="contiguous", dtype=torch.float32,
                                 table_dtype=torch.float32, k_grad=True, seed=len(name)))


@needs_triton
@pytest.mark.parametrize("tile", [2, 8])
def test_heads_split_over_several_programs(tile, monkeypatch):
    # a tiny tile caps the heads per program, so q and k spread over several head blocks, and the
    # blocks past kv_heads must leave k alone; the ragged head_dim is masked in every block
    monkeypatch.setattr(rotary_module, "_TILE", tile)
    check_against_reference(dict(batch=1, seq=3, q_heads=6, kv_heads=2, head_dim=6, layout="fused",
                                 tables="contiguous", dtype=torch.float32, table_dtype=torch.float32,
                                 k_grad=True, seed=tile))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [6, 64])
def test_triton_half_precision_is_within_one_unit_in_the_last_place(dtype, head_dim):
    # computed in float32 and rounded once. On a GPU the rounding is to nearest (half a unit);
    # Triton's interpreter truncates float32 -> bfloat16, so the bound for the kernel is one unit
    # (relative error below eps); the reference rounds to nearest: half a unit
    gen = torch.Generator().manual_seed(head_dim)
    seq, theta = 5, theta_for(head_dim)
    positions = torch.arange(40, 40 + seq)
    cos, sin = (t.float().to(DEVICE) for t in rope_tables(positions, theta))
    q, k = make_heads(gen, "fused", 2, seq, 4, 2, head_dim, dtype)
    q.requires_grad_(True)
    k.requires_grad_(True)
    eps = torch.finfo(dtype).eps
    # the truth: the float64 rotation of the rounded inputs by the float32 tables' angles
    tables64 = cos.cpu().to(F64), sin.cpu().to(F64)
    truth = rotary_module.rotary_reference(q.detach().cpu().to(F64), k.detach().cpu().to(F64), *tables64)
    got = rotary(q, k, cos, sin, backend="triton")
    reference = rotary(q, k, cos, sin, backend="reference")
    for g, r, t in zip(got, reference, truth):
        assert g.dtype == r.dtype == dtype
        torch.testing.assert_close(g.cpu().to(F64), t, atol=1e-5, rtol=eps)
        torch.testing.assert_close(r.cpu().to(F64), t, atol=1e-5, rtol=eps / 2)
    # gradients: the rotation of the upstream gradient by the opposite angle, rounded once
    grad_q, grad_k = (torch.randn(x.shape, generator=gen, dtype=F64).to(dtype).to(DEVICE) for x in got)
    dq, dk = torch.autograd.grad(got, (q, k), (grad_q, grad_k))
    for d, g in ((dq, grad_q), (dk, grad_k)):
        assert d.dtype == dtype
        expected = oracle(g.cpu(), positions, -theta.float().to(F64))
        torch.testing.assert_close(d.cpu().to(F64), expected, atol=1e-5, rtol=eps)


@needs_triton
def test_triton_agrees_with_the_oracle_on_rope_tables():
    # the kernel against the complex rotation directly (float64), the backward as the opposite turn
    gen = torch.Generator().manual_seed(5)
    positions, theta = torch.tensor([0, 3, 4, 1000, 99999]), theta_for(80, 5e5)
    cos, sin = (t.to(DEVICE) for t in rope_tables(positions, theta))
    q, k = make_heads(gen, "fused", 1, 5, 3, 1, 80, F64)
    q.requires_grad_(True)
    q_rot, k_rot = rotary(q, k, cos, sin, backend="triton")
    torch.testing.assert_close(q_rot.cpu(), oracle(q.detach().cpu(), positions, theta), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(k_rot.cpu(), oracle(k.cpu(), positions, theta), atol=1e-12, rtol=1e-12)
    grad = torch.randn(q_rot.shape, generator=gen, dtype=F64).to(DEVICE)
    (dq,) = torch.autograd.grad(q_rot, q, grad)
    torch.testing.assert_close(dq.cpu(), oracle(grad.cpu(), positions, -theta), atol=1e-12, rtol=1e-12)


@needs_triton
def test_triton_gradcheck_and_second_derivatives():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 2, 6, generator=gen, dtype=F64).to(DEVICE).requires_grad_(True)
    k = torch.randn(1, 2, 1, 6, generator=gen, dtype=F64).to(DEVICE).requires_grad_(True)
    cos, sin = make_tables(gen, "contiguous", 2, 6, F64)  # unequal halves: the transpose must swap them

    def fn(q, k):
        return rotary(q, k, cos, sin, backend="triton")

    assert torch.autograd.gradcheck(fn, (q, k), eps=1e-6, atol=1e-9)
    assert torch.autograd.gradgradcheck(fn, (q, k), eps=1e-6, atol=1e-9, fast_mode=True)


# ------------------------------------------------------------------------------------------------
# Inside the model: the attention layer's projection, with the kernel in place of apply_rotary
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_rotary_in_the_attention_layer_matches_apply_rotary(backend, monkeypatch):
    attention_layer = importlib.import_module("companion.nn.attention")
    from companion.nn.positions import RotaryEmbedding

    n_heads, n_kv_heads, head_dim = 4, 2, 12
    torch.manual_seed(0)
    layer = attention_layer.Attention(48, n_heads, n_kv_heads, head_dim, rope=RotaryEmbedding(head_dim)).to(DEVICE)
    x = torch.randn(2, 5, 48, device=DEVICE)
    positions = torch.arange(3, 8, device=DEVICE)

    def run():
        layer.zero_grad(set_to_none=True)
        y, _ = layer(x, positions)
        y.square().sum().backward()
        return y.detach(), layer.qkv.weight.grad.clone()

    expected_y, expected_grad = run()
    calls = []

    def via_kernel(qk, cos, sin):
        # the layer rotates q and k together: (batch, seq, n_heads + n_kv_heads, head_dim), tables
        # (seq, 1, head_dim); here q and k are views into the fused projection, as the kernel expects
        q, k = qk.split((n_heads, n_kv_heads), dim=2)
        calls.append((q.is_contiguous(), k.is_contiguous()))
        return torch.cat(rotary(q, k, cos[:, 0], sin[:, 0], backend=backend), dim=2)

    monkeypatch.setattr(attention_layer, "apply_rotary", via_kernel)
    got_y, got_grad = run()
    assert calls == [(False, False)]
    torch.testing.assert_close(got_y, expected_y)
    torch.testing.assert_close(got_grad, expected_grad)


# ------------------------------------------------------------------------------------------------
# Backends
# ------------------------------------------------------------------------------------------------

def small_inputs(**overrides):
    gen = torch.Generator().manual_seed(0)
    args = dict(q=torch.randn(2, 3, 4, 8, generator=gen), k=torch.randn(2, 3, 2, 8, generator=gen),
                cos=torch.randn(3, 8, generator=gen), sin=torch.randn(3, 8, generator=gen))
    args.update(overrides)
    return args


def test_auto_takes_the_reference_on_the_cpu(monkeypatch):
    args = small_inputs()
    expected = rotary(**args, backend="reference")

    def no_kernel(*_, **__):
        raise AssertionError("the Triton kernel was launched for CPU tensors by backend='auto'")

    monkeypatch.setattr(rotary_module, "_launch", no_kernel)
    for got, e in zip(rotary(**args), expected):
        assert torch.equal(got, e)


def test_auto_chooses_triton_for_cuda_tensors_only(monkeypatch):
    monkeypatch.setattr(rotary_module, "triton_installed", lambda: True)
    cuda_q = SimpleNamespace(is_cuda=True, device=torch.device("cuda"))
    cos, sin = torch.zeros(3, 8), torch.zeros(3, 8)
    assert rotary_module._choose_backend("auto", cuda_q, cos, sin) == "triton"
    assert rotary_module._choose_backend("auto", SimpleNamespace(is_cuda=False, device=torch.device("cpu")),
                                         cos, sin) == "reference"
    # tables that want a gradient go to the reference, whose autograd gives them one
    assert rotary_module._choose_backend("auto", cuda_q, cos.requires_grad_(), sin) == "reference"
    with torch.no_grad():
        assert rotary_module._choose_backend("auto", cuda_q, cos, sin) == "triton"
    monkeypatch.setattr(rotary_module, "triton_installed", lambda: False)
    assert rotary_module._choose_backend("auto", cuda_q, cos.detach(), sin) == "reference"


def test_reference_gives_the_tables_a_gradient():
    args = small_inputs(cos=torch.randn(3, 8, requires_grad=True), sin=torch.randn(3, 8, requires_grad=True))
    q_rot, k_rot = rotary(**args)  # auto on the CPU: the reference
    grads = torch.autograd.grad(q_rot.sum() + k_rot.sum(), (args["cos"], args["sin"]))
    # d/dcos[s, j] = sum over batch and heads of x[..., j]; d/dsin = of rotate_half(x)
    torch.testing.assert_close(grads[0], args["q"].sum((0, 2)) + args["k"].sum((0, 2)))
    rotated = torch.cat((-args["q"][..., 4:], args["q"][..., :4]), -1).sum((0, 2)) + \
        torch.cat((-args["k"][..., 4:], args["k"][..., :4]), -1).sum((0, 2))
    torch.testing.assert_close(grads[1], rotated)


@needs_triton
def test_triton_refuses_tables_that_want_a_gradient():
    args = small_inputs(cos=torch.randn(3, 8, requires_grad=True))
    with pytest.raises(ValueError, match="passes no gradient to cos and sin"):
        rotary(**args, backend="triton")
    with torch.no_grad():  # no graph, no gradient wanted: accepted
        q_rot, _ = rotary(**args, backend="triton")
    torch.testing.assert_close(q_rot, rotary(**args, backend="reference")[0].detach())


def test_triton_on_the_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' expected CUDA tensors .*TRITON_INTERPRET=1"):
        rotary(**small_inputs(), backend="triton")


def test_triton_needs_triton_installed(monkeypatch):
    monkeypatch.setattr(rotary_module, "triton_installed", lambda: False)
    with pytest.raises(ValueError, match="needs the triton package"):
        rotary(**small_inputs(), backend="triton")


# ------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------

Q, K, COS = (2, 3, 4, 8), (2, 3, 2, 8), (3, 8)


def _t(*shape, **kwargs):
    return torch.zeros(*shape, **kwargs)


BAD = {
    "q a list": (dict(q=[[0.0]]), "q to be a torch.Tensor, got list"),
    "k None": (dict(k=None), "k to be a torch.Tensor, got NoneType"),
    "q rank 3": (dict(q=_t(2, 3, 32)), r"q of rank 4, \(batch, seq, q_heads, head_dim\)"),
    "cos with a batch dimension": (dict(cos=_t(1, 3, 8)), r"cos of rank 2, \(seq, head_dim\)"),
    "q integers": (dict(q=_t(*Q, dtype=torch.int64), k=_t(*K, dtype=torch.int64)), "q to have a floating-point dtype"),
    "q complex": (dict(q=_t(*Q, dtype=torch.complex64)), "q to have a floating-point dtype"),
    "q float8": (dict(q=_t(*Q).to(torch.float8_e4m3fn), k=_t(*K).to(torch.float8_e4m3fn)),
                 "q to have a floating-point dtype"),
    "sin integers": (dict(sin=_t(*COS, dtype=torch.int32)), "sin to have a floating-point dtype"),
    "q and k dtypes differ": (dict(k=_t(*K, dtype=F64)), "q and k to share one dtype"),
    "cos on another device": (dict(cos=_t(*COS, device="meta")), "on one device"),
    "q sparse": (dict(q=_t(*Q).to_sparse()), "q to be a dense"),
    "batch differs": (dict(k=_t(1, 3, 2, 8)), r"same batch \(dim 0\) and seq \(dim 1\)"),
    "seq differs": (dict(k=_t(2, 4, 2, 8)), r"same batch \(dim 0\) and seq \(dim 1\)"),
    "head_dim differs": (dict(k=_t(2, 3, 2, 6)), r"same head_dim \(dim 3\)"),
    "odd head_dim": (dict(q=_t(2, 3, 4, 7), k=_t(2, 3, 2, 7), cos=_t(3, 7), sin=_t(3, 7)), "even head_dim >= 2"),
    "head_dim 0": (dict(q=_t(2, 3, 4, 0), k=_t(2, 3, 2, 0), cos=_t(3, 0), sin=_t(3, 0)), "even head_dim >= 2"),
    "the whole cos cache": (dict(cos=_t(2048, 8)), r"cos of shape \(seq, head_dim\) = \(3, 8\), got \(2048, 8\)"),
    "half-width sin": (dict(sin=_t(3, 4)), r"sin of shape \(seq, head_dim\) = \(3, 8\), got \(3, 4\)"),
    "backend unknown": (dict(backend="cuda"), "backend to be one of 'auto', 'reference', 'triton'"),
    "backend None": (dict(backend=None), "backend to be one of 'auto', 'reference', 'triton'"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_raises_a_value_error_that_says_what_was_expected(name):
    overrides, message = BAD[name]
    args = dict(q=_t(*Q), k=_t(*K), cos=_t(*COS), sin=_t(*COS))
    args.update(overrides)
    with pytest.raises(ValueError, match=message):
        rotary(**args)


def test_good_edge_inputs_are_accepted():
    # empty batch, sequence or head count; tables in another float dtype than q
    for q_shape, k_shape in (((0, 3, 4, 8), (0, 3, 2, 8)), ((2, 0, 4, 8), (2, 0, 2, 8)), ((2, 3, 0, 8), (2, 3, 2, 8))):
        q, k = torch.randn(q_shape), torch.randn(k_shape)
        tables = torch.randn(q_shape[1], 8), torch.randn(q_shape[1], 8)
        backends = ["reference"] + (["triton"] if triton_can_run() and DEVICE.type == "cpu" else [])
        for backend in backends:
            q_rot, k_rot = rotary(q, k, *tables, backend=backend)
            assert q_rot.shape == q_shape and k_rot.shape == k_shape
    args = small_inputs()
    q_rot, _ = rotary(args["q"], args["k"], args["cos"].to(F64), args["sin"].half())
    assert q_rot.dtype == torch.float32
    torch.testing.assert_close(q_rot, rotary(args["q"], args["k"], args["cos"], args["sin"].half().float())[0])


# ------------------------------------------------------- the model's path on a GPU (use_rotary_kernel)
@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("changes", [{}, {"n_kv_heads": 1},
                                     {"rope_scaling": RopeScaling(kind="yarn", factor=4.0, original_max_positions=4)}])
def test_decoder_through_the_rotary_kernel_equals_its_cpu_path(monkeypatch, backend, changes):
    """On CUDA, Attention.project rotates with kernels.rotary (split q and k); on the CPU with one
    expression over both. Forcing the kernel branch here must change nothing: full forward, cached
    decoding and gradients."""
    import functools

    import companion.nn.attention as attention_module
    from companion.models import Decoder, DecoderConfig

    torch.manual_seed(0)
    model = Decoder(DecoderConfig(vocab_size=40, width=32, n_layers=2, n_heads=4, **changes))
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(1))

    def run():
        model.zero_grad()
        logits = model(ids)
        logits.square().mean().backward()
        cache = model.new_cache(2, 9)
        with torch.no_grad():
            steps = torch.cat([model(ids[:, :5], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(5, 9)], 1)
        return logits.detach(), steps, [p.grad.clone() for p in model.parameters()]

    expected = run()
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return rotary(*args, **kwargs, backend=backend)

    monkeypatch.setattr(attention_module, "use_rotary_kernel", lambda x: True)
    monkeypatch.setattr(attention_module, "rotary", counted)
    got = run()
    assert calls, "the kernel branch was not taken"
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])
    for a, b in zip(got[2], expected[2]):
        torch.testing.assert_close(a, b)
