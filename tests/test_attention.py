"""companion.kernels.attention against an independent float64 oracle, and against transformers.

The oracle below is written from the definition (Vaswani et al. 2017 with bottom-right positions,
Mistral's sliding window, ALiBi, grouped-query heads) with its own position arithmetic, its own
head indexing and its own empty-row handling; it calls nothing from the companion.
"""

import importlib
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.kernels import attention, attention_mask

# `companion.kernels.attention` is the function (the package re-exports it); this is the module
attention_module = importlib.import_module("companion.kernels.attention")

F64 = torch.float64
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------
# The oracle
# ------------------------------------------------------------------------------------------------

def oracle_mask(q_len, kv_len, causal, window):
    """True where query i may see key j; query i sits at position i + kv_len - q_len."""
    rows = []
    for i in range(q_len):
        p = i + kv_len - q_len
        row = []
        for j in range(kv_len):
            ok = True
            if causal and j > p:
                ok = False
            if window is not None:
                if causal:
                    ok = ok and j > p - window
                else:
                    ok = ok and abs(p - j) < window
            row.append(ok)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool).reshape(q_len, kv_len)


def oracle(q, k, v, causal=False, scale=None, window=None, alibi_slopes=None):
    """Attention in float64 over explicitly repeated K/V; a query that sees no key gives zeros."""
    q, k, v = q.to(F64), k.to(F64), v.to(F64)
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    kv_head_of = torch.tensor([h // group for h in range(q_heads)])
    k_rep, v_rep = k[:, kv_head_of], v[:, kv_head_of]
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    scores = torch.einsum("bhid,bhjd->bhij", q, k_rep) * scale
    if alibi_slopes is not None:
        distance = torch.tensor([[abs((i + kv_len - q_len) - j) for j in range(kv_len)] for i in range(q_len)],
                                dtype=F64).reshape(q_len, kv_len)
        scores = scores - alibi_slopes.to(F64)[:, None, None] * distance
    mask = oracle_mask(q_len, kv_len, causal, window)
    # a stabilising shift (it cancels, so it carries no gradient); rows with no key shift by 0
    shift = 0.0
    if kv_len > 0:
        shift = torch.where(mask, scores, -math.inf).amax(dim=-1, keepdim=True).detach()
        shift = torch.where(torch.isfinite(shift), shift, 0.0)
    weights = torch.where(mask, torch.exp(scores - shift), 0.0)
    total = weights.sum(dim=-1, keepdim=True)
    probs = weights / torch.where(total > 0, total, 1.0)
    return torch.einsum("bhij,bhjd->bhid", probs, v_rep)


# ------------------------------------------------------------------------------------------------
# Drawing cases
# ------------------------------------------------------------------------------------------------

@st.composite
def cases(draw):
    kv_len = draw(st.integers(1, 40))
    return dict(
        batch=draw(st.integers(1, 3)),
        kv_heads=draw(st.integers(1, 4)),
        group=draw(st.integers(1, 4)),
        q_len=draw(st.integers(1, 40)),
        kv_len=kv_len,
        head_dim=draw(st.sampled_from([1, 3, 8, 16, 33])),
        causal=draw(st.booleans()),
        window=draw(st.none() | st.integers(1, kv_len + 2)),
        alibi=draw(st.booleans()),
        scale=draw(st.none() | st.floats(0.05, 2.0)),
        strided=draw(st.booleans()),  # q, k, v as transposed views of (batch, seq, heads, dim)
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def make_inputs(case, dtype, requires_grad=False):
    gen = torch.Generator().manual_seed(case["seed"])
    q_heads = case["kv_heads"] * case["group"]

    def tensor(heads, length):
        shape = (case["batch"], length, heads, case["head_dim"])
        t = torch.randn(shape, generator=gen, dtype=F64).to(dtype)
        t = t.transpose(1, 2) if case["strided"] else t.transpose(1, 2).contiguous()
        return t.detach().requires_grad_(requires_grad)

    q = tensor(q_heads, case["q_len"])
    k = tensor(case["kv_heads"], case["kv_len"])
    v = tensor(case["kv_heads"], case["kv_len"])
    slopes = None
    if case["alibi"]:
        slopes = (torch.rand(q_heads, generator=gen, dtype=F64) * 0.9 + 0.05).to(dtype)
        slopes.requires_grad_(requires_grad)
    kwargs = dict(causal=case["causal"], scale=case["scale"], window=case["window"], alibi_slopes=slopes)
    return q, k, v, kwargs


def explicit(q, k, v, causal=False, scale=None, window=None, alibi_slopes=None):
    """The module's explicit (non-SDPA) path, which serves the cases where a query may see no key."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return attention_module._explicit_attention(q, k, v, causal=causal, scale=scale, window=window,
                                                alibi_slopes=alibi_slopes)


# ------------------------------------------------------------------------------------------------
# Values and gradients against the oracle
# ------------------------------------------------------------------------------------------------

@FAST
@given(cases())
def test_float32_matches_the_float64_oracle(case):
    q, k, v, kwargs = make_inputs(case, torch.float32)
    expected = oracle(q, k, v, **kwargs)
    for out in (attention(q, k, v, **kwargs), explicit(q, k, v, **kwargs)):
        assert out.dtype == torch.float32 and out.shape == q.shape
        torch.testing.assert_close(out.to(F64), expected, atol=1e-5, rtol=1e-4)


def grads(fn, q, k, v, kwargs, grad_out):
    out = fn(q, k, v, **kwargs)
    leaves = [q, k, v] + ([kwargs["alibi_slopes"]] if kwargs["alibi_slopes"] is not None else [])
    return out, torch.autograd.grad((out * grad_out).sum(), leaves)


@FAST
@given(cases())
def test_float64_values_and_gradients_match_the_oracle(case):
    q, k, v, kwargs = make_inputs(case, F64, requires_grad=True)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(case["seed"] + 1), dtype=F64)
    expected, expected_grads = grads(oracle, q, k, v, kwargs, grad_out)
    empty = ~oracle_mask(case["q_len"], case["kv_len"], case["causal"], case["window"]).any(dim=-1)
    for fn in (attention, explicit):
        out, got = grads(fn, q, k, v, kwargs, grad_out)
        torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
        for g, e in zip(got, expected_grads):
            assert torch.isfinite(g).all()
            torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10)
        # a query that sees no key: exactly zero out, exactly zero gradient for its q row
        assert (out[:, :, empty] == 0).all()
        assert (got[0][:, :, empty] == 0).all()


# ------------------------------------------------------------------------------------------------
# Queries that see no key
# ------------------------------------------------------------------------------------------------

EMPTY_ROW_CASES = {
    # name: (q_len, kv_len, causal, window); the first rows see nothing
    "causal, more queries than keys": (7, 3, True, None),
    "causal window, more queries than keys": (7, 3, True, 2),
    "band far before the keys": (9, 3, False, 2),
    "no keys at all": (4, 0, False, None),
    "no keys, causal": (4, 0, True, None),
}


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.bfloat16])
@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("name", list(EMPTY_ROW_CASES))
def test_a_query_that_sees_no_key_gives_zeros_and_zero_gradient(name, alibi, dtype):
    q_len, kv_len, causal, window = EMPTY_ROW_CASES[name]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, q_len, 8, generator=gen).to(dtype).requires_grad_()
    k = torch.randn(2, 2, kv_len, 8, generator=gen).to(dtype).requires_grad_()
    v = torch.randn(2, 2, kv_len, 8, generator=gen).to(dtype).requires_grad_()
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625], requires_grad=True) if alibi else None
    empty = ~oracle_mask(q_len, kv_len, causal, window).any(dim=-1)
    assert empty.any()
    # anomaly mode raises if any step of the backward pass produces a NaN, even one masked later
    with torch.autograd.detect_anomaly(check_nan=True):
        out = attention(q, k, v, causal=causal, window=window, alibi_slopes=slopes)
        torch.autograd.grad(out.float().sum(), [q, k, v], retain_graph=True)
    assert out.dtype == dtype
    assert (out[:, :, empty] == 0).all() and torch.isfinite(out).all()
    # the loss reads only the empty rows: every gradient is exactly zero (and finite)
    leaves = [q, k, v] + ([slopes] if alibi else [])
    loss = (out[:, :, empty] * torch.randn(out[:, :, empty].shape).to(dtype)).sum()
    for g in torch.autograd.grad(loss, leaves, allow_unused=True, retain_graph=True):
        assert g is None or (g == 0).all()
    # the loss reads every row: gradients are finite, and the empty rows of q's gradient are zero
    g_q, *rest = torch.autograd.grad(out.float().pow(2).sum(), leaves, allow_unused=True)
    assert torch.isfinite(g_q).all() and (g_q[:, :, empty] == 0).all()
    assert all(g is None or torch.isfinite(g).all() for g in rest)


# ------------------------------------------------------------------------------------------------
# Each branch of the reference's decision rule
# ------------------------------------------------------------------------------------------------

# name: (q_heads, kv_heads, q_len, kv_len, causal, window, alibi, expected SDPA call, a list of calls, or None)
BLOCKS = [dict(mask=None, is_causal=True, gqa=True), dict(mask="bool", is_causal=False, gqa=True)]
BRANCHES = {
    "no mask, MHA": (4, 4, 6, 6, False, None, False, dict(mask=None, is_causal=False, gqa=False)),
    "no mask, more queries than keys": (4, 2, 9, 5, False, None, False, dict(mask=None, is_causal=False, gqa=True)),
    "causal, equal lengths, GQA": (6, 2, 7, 7, True, None, False, dict(mask=None, is_causal=True, gqa=True)),
    "causal, equal lengths, 256 tokens": (4, 2, 256, 256, True, None, False, dict(mask=None, is_causal=True, gqa=True)),
    "causal, equal lengths, 257 tokens: two query blocks": (4, 2, 257, 257, True, None, False, BLOCKS),
    "causal, equal lengths, 512 tokens: two query blocks": (4, 2, 512, 512, True, None, False, BLOCKS),
    "causal, equal lengths, 513 tokens": (4, 2, 513, 513, True, None, False, dict(mask=None, is_causal=True, gqa=True)),
    "causal chunk, fewer queries": (4, 2, 3, 8, True, None, False, dict(mask="bool", is_causal=False, gqa=True)),
    "causal decode, MQA": (4, 1, 1, 9, True, None, False, dict(mask=None, is_causal=False, gqa=True)),
    "causal decode, window shorter than the keys": (4, 1, 1, 9, True, 4, False, dict(mask="bool", is_causal=False, gqa=True)),
    "causal decode, window covering the keys": (4, 2, 1, 9, True, 9, False, dict(mask=None, is_causal=False, gqa=True)),
    "causal chunk, window covering the keys": (4, 4, 3, 8, True, 8, False, dict(mask="bool", is_causal=False, gqa=False)),
    "causal window": (4, 4, 8, 8, True, 3, False, dict(mask="bool", is_causal=False, gqa=False)),
    "band, within reach of the keys": (2, 1, 7, 5, False, 3, False, dict(mask="bool", is_causal=False, gqa=True)),
    "alibi, no mask": (4, 2, 5, 7, False, None, True, dict(mask="float", is_causal=False, gqa=True)),
    "alibi, causal equal lengths": (4, 4, 6, 6, True, None, True, dict(mask="float", is_causal=False, gqa=False)),
    "alibi, causal window chunk": (4, 2, 3, 8, True, 4, True, dict(mask="float", is_causal=False, gqa=True)),
    "explicit: causal, more queries": (4, 2, 8, 5, True, None, False, None),
    "explicit: band far before the keys": (4, 2, 9, 3, False, 2, True, None),
    "explicit: no keys": (4, 2, 3, 0, False, None, False, None),
}


@pytest.mark.parametrize("name", list(BRANCHES))
def test_each_branch_of_the_decision_rule_matches_the_oracle(name, monkeypatch):
    q_heads, kv_heads, q_len, kv_len, causal, window, alibi, expected_call = BRANCHES[name]
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        kind = None if attn_mask is None else ("bool" if attn_mask.dtype == torch.bool else "float")
        calls.append(dict(mask=kind, is_causal=is_causal, gqa=enable_gqa))
        return real_sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                         scale=scale, enable_gqa=enable_gqa)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, h, n, 16, generator=gen, dtype=F64, requires_grad=True)
               for h, n in ((q_heads, q_len), (kv_heads, kv_len), (kv_heads, kv_len)))
    slopes = torch.linspace(0.1, 0.8, q_heads, dtype=F64, requires_grad=True) if alibi else None
    kwargs = dict(causal=causal, scale=0.3, window=window, alibi_slopes=slopes)
    out = attention(q, k, v, **kwargs)
    assert calls == ([] if expected_call is None else expected_call if isinstance(expected_call, list)
                     else [expected_call])
    grad_out = torch.randn(out.shape, generator=gen, dtype=F64)
    _, got = grads(attention, q, k, v, kwargs, grad_out)
    expected, expected_grads = grads(oracle, q, k, v, kwargs, grad_out)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    for g, e in zip(got, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10)
    # and in float32, where SDPA takes its fused CPU kernels
    slopes32 = None if slopes is None else slopes.float()
    out32 = attention(q.float(), k.float(), v.float(), **{**kwargs, "alibi_slopes": slopes32})
    torch.testing.assert_close(out32.to(F64), expected, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# Backends, low precision
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["contiguous", "transposed views of (batch, seq, heads, head_dim)"])
def test_two_query_blocks_equal_one_causal_call_and_keep_its_layout(layout):
    gen = torch.Generator().manual_seed(5)

    def tensor(heads):
        t = torch.randn(2, 300, heads, 16, generator=gen).transpose(1, 2)
        return (t.contiguous() if layout == "contiguous" else t).requires_grad_(True)

    q, k, v = tensor(6), tensor(2), tensor(2)
    out = attention(q, k, v, causal=True)
    one_call = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert out.stride() == one_call.stride()
    torch.testing.assert_close(out, one_call)
    grad_out = torch.randn(out.shape, generator=gen)
    for g, e in zip(torch.autograd.grad(out, (q, k, v), grad_out), torch.autograd.grad(one_call, (q, k, v), grad_out)):
        torch.testing.assert_close(g, e)


def test_reference_and_auto_agree_on_cpu_and_unknown_backends_raise():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 5, 8, generator=gen)
    k, v = torch.randn(2, 2, 7, 8, generator=gen), torch.randn(2, 2, 7, 8, generator=gen)
    for kwargs in (dict(), dict(causal=True, window=3), dict(alibi_slopes=torch.ones(4))):
        assert torch.equal(attention(q, k, v, backend="auto", **kwargs),
                           attention(q, k, v, backend="reference", **kwargs))
    for backend in ("flash", "", None, 3):
        with pytest.raises(ValueError, match="backend.*'auto', 'reference', 'triton'"):
            attention(q, k, v, backend=backend)
    assert attention_module.BACKENDS == ("auto", "reference", "triton")


LOW_PRECISION_CASES = [
    dict(batch=2, kv_heads=2, group=2, q_len=9, kv_len=9, head_dim=16, causal=True, window=None, alibi=False),
    dict(batch=1, kv_heads=1, group=4, q_len=5, kv_len=12, head_dim=33, causal=True, window=4, alibi=True),
    dict(batch=2, kv_heads=3, group=1, q_len=11, kv_len=6, head_dim=8, causal=True, window=None, alibi=False),
    dict(batch=1, kv_heads=2, group=3, q_len=7, kv_len=10, head_dim=16, causal=False, window=None, alibi=True),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("index", range(len(LOW_PRECISION_CASES)))
def test_half_precision_is_computed_in_float32_and_rounded_once(dtype, index):
    case = dict(LOW_PRECISION_CASES[index], scale=None, strided=False, seed=index)
    q, k, v, kwargs = make_inputs(case, dtype, requires_grad=True)
    out = attention(q, k, v, **kwargs)
    assert out.dtype == dtype
    # the oracle sees the same (rounded) inputs; only the final rounding separates the two
    expected = oracle(q, k, v, **kwargs)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.to(F64), expected, atol=1e-5, rtol=eps / 2 + 1e-5)
    for g, leaf in zip(torch.autograd.grad(out.float().sum(), [q, k, v]), [q, k, v]):
        assert g.dtype == dtype and torch.isfinite(g).all()


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------

def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.zeros(shape, dtype=dtype, device=device)


Q, KV = _t(2, 4, 5, 8), _t(2, 2, 6, 8)
BAD = {
    # name: (q, k, v, keyword arguments, a fragment of the message)
    "q of rank 3": (_t(2, 5, 8), KV, KV, {}, "expected q of rank 4"),
    "k of rank 5": (Q, _t(1, 2, 2, 6, 8), KV, {}, "expected k of rank 4"),
    "q not a tensor": ([[1.0]], KV, KV, {}, "expected q to be a torch.Tensor"),
    "integer dtype": (_t(2, 4, 5, 8, dtype=torch.int64), _t(2, 2, 6, 8, dtype=torch.int64),
                      _t(2, 2, 6, 8, dtype=torch.int64), {}, "floating-point dtype"),
    "bool dtype": (Q, KV, _t(2, 2, 6, 8, dtype=torch.bool), {}, "floating-point dtype"),
    "complex dtype": (_t(2, 4, 5, 8, dtype=torch.complex64), KV, KV, {}, "floating-point dtype"),
    "dtypes differ": (Q, KV.double(), KV, {}, "share one dtype"),
    "devices differ": (Q, _t(2, 2, 6, 8, device="meta"), KV, {}, "on one device"),
    "batch differs": (Q, _t(3, 2, 6, 8), _t(3, 2, 6, 8), {}, "same batch size"),
    "head_dim of k differs": (Q, _t(2, 2, 6, 4), KV, {}, "same head_dim"),
    "head_dim of v differs": (Q, KV, _t(2, 2, 6, 4), {}, "same head_dim"),
    "head_dim zero": (_t(2, 4, 5, 0), _t(2, 2, 6, 0), _t(2, 2, 6, 0), {}, "head_dim >= 1"),
    "q_heads not a multiple": (_t(2, 5, 5, 8), KV, KV, {}, "multiple of kv_heads"),
    "no kv heads": (Q, _t(2, 0, 6, 8), _t(2, 0, 6, 8), {}, "multiple of kv_heads"),
    "k and v heads differ": (Q, KV, _t(2, 4, 6, 8), {}, "same kv_heads"),
    "k and v lengths differ": (Q, KV, _t(2, 2, 7, 8), {}, "kv_len"),
    "alibi of shape (kv_heads,)": (Q, KV, KV, dict(alibi_slopes=_t(2)),
                                   r"alibi_slopes of shape \(q_heads,\) = \(4,\)"),
    "alibi of shape (1, q_heads)": (Q, KV, KV, dict(alibi_slopes=_t(1, 4)), r"alibi_slopes of shape \(q_heads,\)"),
    "alibi a list": (Q, KV, KV, dict(alibi_slopes=[0.5] * 4), "alibi_slopes to be None or a torch.Tensor"),
    "alibi integers": (Q, KV, KV, dict(alibi_slopes=torch.ones(4, dtype=torch.int64)),
                       "alibi_slopes to have a floating"),
    "alibi elsewhere": (Q, KV, KV, dict(alibi_slopes=_t(4, device="meta")), "alibi_slopes on q's device"),
    "window 0": (Q, KV, KV, dict(window=0), "window to be None or an int >= 1"),
    "window -2": (Q, KV, KV, dict(window=-2, causal=True), "window to be None or an int >= 1"),
    "window 2.5": (Q, KV, KV, dict(window=2.5), "window to be None or an int >= 1"),
    "window True": (Q, KV, KV, dict(window=True), "window to be None or an int >= 1"),
    "window a string": (Q, KV, KV, dict(window="3"), "window to be None or an int >= 1"),
    "scale 0": (Q, KV, KV, dict(scale=0.0), "scale to be None or a finite number > 0"),
    "scale negative": (Q, KV, KV, dict(scale=-1), "scale to be None or a finite number > 0"),
    "scale nan": (Q, KV, KV, dict(scale=math.nan), "scale to be None or a finite number > 0"),
    "scale inf": (Q, KV, KV, dict(scale=math.inf), "scale to be None or a finite number > 0"),
    "scale a string": (Q, KV, KV, dict(scale="0.5"), "scale to be None or a finite number > 0"),
    "scale a tensor": (Q, KV, KV, dict(scale=torch.tensor(0.5)), "scale to be None or a finite number > 0"),
    "causal not a bool": (Q, KV, KV, dict(causal="yes"), "causal to be True or False"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_raises_a_value_error_that_says_what_was_expected(name):
    q, k, v, kwargs, message = BAD[name]
    with pytest.raises(ValueError, match=message):
        attention(q, k, v, **kwargs)


def test_good_edge_inputs_are_accepted():
    # numpy-style numbers and an int scale are numbers; an empty batch gives an empty output
    import numpy as np
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 1, 3, 4)
    torch.testing.assert_close(attention(q, k, k, scale=np.float32(0.5), window=np.int64(2), causal=True),
                               attention(q, k, k, scale=0.5, window=2, causal=True))
    torch.testing.assert_close(attention(q, k, k, scale=1), attention(q, k, k, scale=1.0))
    assert attention(q[:0], k[:0], k[:0]).shape == (0, 2, 3, 4)
    assert attention(q[:, :, :0], k, k, causal=True).shape == (1, 2, 0, 4)


# ------------------------------------------------------------------------------------------------
# The mask
# ------------------------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.integers(0, 40), st.integers(0, 40), st.booleans(), st.none() | st.integers(1, 45))
def test_attention_mask_follows_the_rule(q_len, kv_len, causal, window):
    mask = attention_mask(q_len, kv_len, causal=causal, window=window)
    assert mask.dtype == torch.bool and mask.shape == (q_len, kv_len)
    assert torch.equal(mask, oracle_mask(q_len, kv_len, causal, window))


def test_attention_mask_special_cases():
    # decoding one query against a cache sees the whole cache; with a window, the last W keys
    assert attention_mask(1, 9, causal=True).all()
    assert attention_mask(1, 9, causal=True, window=4).tolist() == [[False] * 5 + [True] * 4]
    # equal lengths: the usual lower triangle; a window keeps W diagonals of it
    assert torch.equal(attention_mask(5, 5, causal=True), torch.ones(5, 5, dtype=torch.bool).tril())
    assert torch.equal(attention_mask(5, 5, causal=True, window=2),
                       torch.ones(5, 5, dtype=torch.bool).tril() & torch.ones(5, 5, dtype=torch.bool).triu(-1))
    # the causal window is the symmetric band's lower half
    for q_len, kv_len in ((6, 6), (3, 8), (8, 3)):
        assert torch.equal(attention_mask(q_len, kv_len, causal=True, window=3),
                           attention_mask(q_len, kv_len, window=3) & attention_mask(q_len, kv_len, causal=True))
    assert attention_mask(2, 3, device="meta").device.type == "meta"
    for bad in (dict(window=0), dict(window=1.5), dict(causal=None)):
        with pytest.raises(ValueError):
            attention_mask(3, 3, **bad)
    with pytest.raises(ValueError, match="q_len to be an int >= 0"):
        attention_mask(-1, 3)
    with pytest.raises(ValueError, match="kv_len to be an int >= 0"):
        attention_mask(3, 2.0)


# ------------------------------------------------------------------------------------------------
# Against transformers
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("q_heads, kv_heads, q_len, kv_len, window", [
    (8, 2, 10, 10, None),   # GQA, prefill
    (8, 2, 4, 13, None),    # GQA, a chunk of queries against a longer cache
    (4, 1, 1, 9, None),     # MQA, decoding one token
    (6, 3, 12, 12, 5),      # GQA, Mistral's sliding window
    (6, 3, 3, 11, 4),       # GQA, sliding window, a chunk against a cache
])
def test_matches_transformers_eager_attention_for_grouped_causal_cases(q_heads, kv_heads, q_len, kv_len, window):
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    masking = pytest.importorskip("transformers.masking_utils")
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, q_heads, q_len, 16, generator=gen, dtype=F64)
    k = torch.randn(2, kv_heads, kv_len, 16, generator=gen, dtype=F64)
    v = torch.randn(2, kv_heads, kv_len, 16, generator=gen, dtype=F64)
    mask_function = (masking.causal_mask_function if window is None
                     else masking.sliding_window_causal_mask_function(window))
    allowed = masking.sdpa_mask(batch_size=2, q_length=q_len, kv_length=kv_len, q_offset=kv_len - q_len,
                                mask_function=mask_function, allow_is_causal_skip=False)
    # transformers' eager attention takes its softmax in float32 whatever the input: compare in float32
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    module = SimpleNamespace(num_key_value_groups=q_heads // kv_heads, training=False)
    expected, _ = llama.eager_attention_forward(module, q.float(), k.float(), v.float(), additive,
                                                scaling=16 ** -0.5)
    out32 = attention(q.float(), k.float(), v.float(), causal=True, window=window)
    torch.testing.assert_close(out32.transpose(1, 2), expected, atol=1e-5, rtol=1e-4)
    # and, in float64, SDPA on K/V repeated by transformers' repeat_kv, with the same mask
    out = attention(q, k, v, causal=True, window=window)
    repeated = F.scaled_dot_product_attention(q, llama.repeat_kv(k, q_heads // kv_heads),
                                              llama.repeat_kv(v, q_heads // kv_heads), attn_mask=allowed)
    torch.testing.assert_close(out, repeated, atol=1e-12, rtol=1e-12)
