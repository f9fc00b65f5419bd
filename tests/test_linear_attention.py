"""companion.nn.linear_attention: the parallel, recurrent and chunked forms agree; the mixer caches a constant state.

The reference is a double loop over positions written here from the paper's definition
(Katharopoulos et al. 2020): out_i = sum_{j<=i} phi(q_i).phi(k_j) v_j / (sum_{j<=i} phi(q_i).phi(k_j) + eps).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.models import Decoder, DecoderConfig
from companion.models.decoder import MIXERS
from companion.nn.cache import KVCache
from companion.nn.linear_attention import (FEATURE_MAPS, LinearAttention, linear_attention_chunked,
                                           linear_attention_parallel, linear_attention_recurrent,
                                           linear_attention_weights)

EXACT = dict(rtol=1e-10, atol=1e-10)


def qkv(batch, heads, seq, head_dim, head_dim_v=None, *, seed=0, dtype=torch.float64, positive=False):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, heads, seq, head_dim)
    q, k = torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)
    v = torch.randn(batch, heads, seq, head_dim_v or head_dim, generator=g, dtype=dtype)
    return (q.abs(), k.abs(), v) if positive else (q, k, v)


def loop_reference(q, k, v, eps=1e-6):
    """The definition, one output at a time, with phi = elu + 1 written out (not the module's map)."""
    phi = lambda x: torch.where(x > 0, x + 1, torch.exp(x))  # elu(x) + 1
    batch, heads, seq, _ = q.shape
    out = torch.zeros(batch, heads, seq, v.shape[-1], dtype=v.dtype)
    for b in range(batch):
        for h in range(heads):
            for i in range(seq):
                num, den = torch.zeros(v.shape[-1], dtype=v.dtype), torch.zeros((), dtype=v.dtype)
                for j in range(i + 1):
                    s = torch.dot(phi(q[b, h, i]), phi(k[b, h, j]))
                    num, den = num + s * v[b, h, j], den + s
                out[b, h, i] = num / (den + eps)
    return out


# ------------------------------------------------------------------------------ the three forms agree
@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 2), heads=st.integers(1, 3), seq=st.integers(1, 19), head_dim=st.integers(1, 6),
       head_dim_v=st.integers(1, 5), chunk=st.integers(1, 8), feature_map=st.sampled_from(["elu+1", "relu"]),
       seed=st.integers(0, 2**16))
def test_parallel_recurrent_and_chunked_forms_agree(batch, heads, seq, head_dim, head_dim_v, chunk, feature_map, seed):
    q, k, v = qkv(batch, heads, seq, head_dim, head_dim_v, seed=seed)
    parallel = linear_attention_parallel(q, k, v, feature_map=feature_map)
    recurrent, (s, z) = linear_attention_recurrent(q, k, v, feature_map=feature_map)
    chunked, (s_c, z_c) = linear_attention_chunked(q, k, v, feature_map=feature_map, chunk_size=chunk)
    assert parallel.shape == (batch, heads, seq, head_dim_v)
    torch.testing.assert_close(recurrent, parallel, **EXACT)
    torch.testing.assert_close(chunked, parallel, **EXACT)
    # the final state is the sum over all positions, whichever way it was accumulated
    phi_k = FEATURE_MAPS[feature_map](k)
    torch.testing.assert_close(s, phi_k.transpose(-2, -1) @ v, **EXACT)
    torch.testing.assert_close(z, phi_k.sum(2), **EXACT)
    torch.testing.assert_close(s_c, s, **EXACT)
    torch.testing.assert_close(z_c, z, **EXACT)


@pytest.mark.parametrize("normalize", [True, False])
def test_identity_map_agrees_across_forms(normalize):
    # positive q, k keep the normaliser away from zero (with signed ones it can cross zero: see the docstring)
    q, k, v = qkv(2, 2, 11, 4, seed=3, positive=normalize)
    kwargs = dict(feature_map="identity", normalize=normalize)
    parallel = linear_attention_parallel(q, k, v, **kwargs)
    torch.testing.assert_close(linear_attention_recurrent(q, k, v, **kwargs)[0], parallel, **EXACT)
    torch.testing.assert_close(linear_attention_chunked(q, k, v, chunk_size=4, **kwargs)[0], parallel, **EXACT)
    if not normalize:  # identity, no normaliser: masked (Q K^T) V, attention without softmax or scaling
        mask = torch.ones(11, 11, dtype=torch.bool).tril()
        torch.testing.assert_close(parallel, ((q @ k.transpose(-2, -1)) * mask) @ v, **EXACT)


@pytest.mark.parametrize("seq", [1, 2, 7])
def test_elu_plus_one_matches_a_loop_over_positions(seq):
    q, k, v = qkv(2, 2, seq, 3, 4, seed=seq)
    expected = loop_reference(q, k, v)
    torch.testing.assert_close(linear_attention_parallel(q, k, v), expected, **EXACT)
    torch.testing.assert_close(linear_attention_recurrent(q, k, v)[0], expected, **EXACT)
    torch.testing.assert_close(linear_attention_chunked(q, k, v, chunk_size=3)[0], expected, **EXACT)


def test_a_callable_feature_map_with_more_features_is_accepted():
    """A Performer-style map (here fixed random positive features, not the FAVOR+ estimator)."""
    w = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    phi = lambda x: torch.exp(x @ w - 0.5 * (x * x).sum(-1, keepdim=True))
    q, k, v = qkv(1, 2, 9, 3, 5, seed=1)
    parallel = linear_attention_parallel(q, k, v, feature_map=phi)
    out, (s, z) = linear_attention_recurrent(q, k, v, feature_map=phi)
    torch.testing.assert_close(out, parallel, **EXACT)
    assert s.shape == (1, 2, 8, 5) and z.shape == (1, 2, 8)


def test_non_causal_parallel_form_sees_every_position():
    q, k, v = qkv(1, 2, 6, 3, seed=2)
    weights = linear_attention_weights(q, k, causal=False)
    assert (weights > 0).all()
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    scores = phi_q @ phi_k.transpose(-2, -1)
    torch.testing.assert_close(linear_attention_parallel(q, k, v, causal=False),
                               (scores @ v) / (scores.sum(-1, keepdim=True) + 1e-6), **EXACT)


def test_state_carries_over_between_calls():
    """Splitting a sequence anywhere and passing the state along gives the same outputs."""
    q, k, v = qkv(2, 3, 13, 4, seed=5)
    whole = linear_attention_parallel(q, k, v)
    for cut in (1, 6, 12):
        first, state = linear_attention_recurrent(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut])
        second, _ = linear_attention_chunked(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], chunk_size=4, state=state)
        torch.testing.assert_close(torch.cat([first, second], dim=2), whole, **EXACT)


def test_weights_rows_sum_to_one_and_reproduce_the_output():
    q, k, v = qkv(2, 3, 10, 4, seed=7)
    for feature_map in ("elu+1", "relu"):
        weights = linear_attention_weights(q, k, feature_map=feature_map)
        assert weights.shape == (2, 3, 10, 10)
        assert (weights >= 0).all()
        assert (weights.triu(1) == 0).all()  # causal: nothing above the diagonal
        # each row sums to den / (den + eps) with den = sum_j phi(q_i).phi(k_j): to one up to eps
        den = linear_attention_weights(q, k, feature_map=feature_map, normalize=False).sum(-1)
        sums = weights.sum(-1)
        torch.testing.assert_close(sums, den / (den + 1e-6), **EXACT)
        without_eps = linear_attention_weights(q, k, feature_map=feature_map, eps=0.0).sum(-1)
        if feature_map == "elu+1":  # phi > 0: every row is exactly a weighted average
            torch.testing.assert_close(without_eps, torch.ones_like(sums), **EXACT)
        else:  # relu can zero a whole row, whose output is then 0 (nan without eps)
            assert ((without_eps - 1).abs() < 1e-10).logical_or(den == 0).all()
        torch.testing.assert_close(weights @ v, linear_attention_parallel(q, k, v, feature_map=feature_map), **EXACT)


def test_gradients_flow_through_every_form():
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 5, 3, 2, seed=9))
    assert torch.autograd.gradcheck(lambda *t: linear_attention_parallel(*t), (q, k, v))
    assert torch.autograd.gradcheck(lambda *t: linear_attention_recurrent(*t)[0], (q, k, v))
    assert torch.autograd.gradcheck(lambda *t: linear_attention_chunked(*t, chunk_size=2)[0], (q, k, v))
    layer = LinearAttention(6, 2).double()
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: layer(x, None)[0], (x,))
    layer(x, None)[0].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


@pytest.mark.parametrize("call, message", [
    (lambda q, k, v: linear_attention_parallel(q[0], k, v), "q must be a floating-point"),
    (lambda q, k, v: linear_attention_parallel(q, k.long(), v), "k must be a floating-point"),
    (lambda q, k, v: linear_attention_parallel(q, k[..., :2], v), "same shape"),
    (lambda q, k, v: linear_attention_parallel(q, k, v[:, :, :3]), "v must be"),
    (lambda q, k, v: linear_attention_parallel(q, k, v.float()), "one dtype"),
    (lambda q, k, v: linear_attention_parallel(q[:, :, :0], k[:, :, :0], v[:, :, :0]), "at least one position"),
    (lambda q, k, v: linear_attention_parallel(q, k, v, feature_map="softmax"), "feature_map must be one of"),
    (lambda q, k, v: linear_attention_parallel(q, k, v, eps=-1.0), "eps must be"),
    (lambda q, k, v: linear_attention_parallel(q, k, v, feature_map=lambda x: x[..., 0]), "feature map must return"),
    (lambda q, k, v: linear_attention_chunked(q, k, v, chunk_size=0), "chunk_size must be"),
    (lambda q, k, v: linear_attention_recurrent(q, k, v, state=(torch.zeros(1),)), "state must be"),
    (lambda q, k, v: linear_attention_recurrent(q, k, v, state=(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 3))),
     "state must be"),
    (lambda q, k, v: linear_attention_recurrent(q, k, v, state=(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4))),
     "float64"),
])
def test_bad_input_raises(call, message):
    q, k, v = qkv(1, 2, 5, 4)
    with pytest.raises(ValueError, match=message):
        call(q, k, v)


# -------------------------------------------------------------------------------- the mixer module
def test_module_output_is_the_projected_parallel_form():
    torch.manual_seed(0)
    layer = LinearAttention(12, 3, bias=True).double()
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    y, weights = layer(x, torch.arange(9), return_weights=True)
    assert y.shape == (2, 9, 12) and weights.shape == (2, 3, 9, 9)
    q, k, v = (layer.qkv(x).view(2, 9, 3, 3, 4).permute(2, 0, 3, 1, 4))  # (q/k/v, batch, heads, seq, head_dim)
    torch.testing.assert_close(weights, linear_attention_weights(q, k), **EXACT)
    o = (weights @ v).transpose(1, 2).reshape(2, 9, 12)
    torch.testing.assert_close(y, layer.out(o), **EXACT)
    assert layer(x, None)[1] is None


@pytest.mark.parametrize("prompt", [1, 4, 10])
def test_prefill_then_decoding_through_the_cache_equals_the_full_forward(prompt):
    torch.manual_seed(1)
    layer = LinearAttention(8, 2, layer_index=3, chunk_size=3).double()
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    full, _ = layer(x, torch.arange(13))
    cache = KVCache(2, 13, dtype=torch.float64)
    pieces = [layer(x[:, :prompt], torch.arange(prompt), cache)[0]]
    cache.advance(prompt)
    for t in range(prompt, 13):
        pieces.append(layer(x[:, t:t + 1], torch.arange(t, t + 1), cache)[0])
        cache.advance(1)
        s, z = cache.state(3)
        assert s.shape == (2, 2, 4, 4) and z.shape == (2, 2, 4)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **EXACT)
    assert cache.keys == {} and cache.values == {}  # no keys or values kept


def test_cache_errors():
    layer = LinearAttention(8, 2)
    cache = KVCache(2, 4)
    layer(torch.randn(2, 3, 8), None, cache)
    cache.advance(3)
    with pytest.raises(ValueError, match="holds 4 positions"):
        layer(torch.randn(2, 2, 8), None, cache)
    with pytest.raises(ValueError, match="recurrent state"):
        layer(torch.randn(2, 1, 8), None, cache, return_weights=True)
    with pytest.raises(ValueError, match="batch 2"):
        layer(torch.randn(3, 1, 8), None, cache)


@pytest.mark.parametrize("kwargs, message", [
    (dict(width=10, n_heads=3), "divisible"), (dict(width=8, n_heads=0), "n_heads"),
    (dict(width=8, n_heads=2, feature_map="tanh"), "feature_map"), (dict(width=8, n_heads=2, chunk_size=0), "chunk_size"),
    (dict(width=8, n_heads=2, eps=float("nan")), "eps"), (dict(width=8, n_heads=2, head_dim=0), "head_dim"),
])
def test_bad_module_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LinearAttention(**kwargs)


def test_bad_module_input_raises():
    with pytest.raises(ValueError, match=r"\(batch, seq >= 1, width=8\)"):
        LinearAttention(8, 2)(torch.randn(2, 3, 7), None)


def test_kv_cache_state_api():
    cache = KVCache(2, 5)
    assert cache.state(0) is None and cache.nbytes() == 0
    cache.set_state(0, (torch.zeros(2, 3), torch.zeros(2, dtype=torch.float64)))
    assert cache.nbytes() == 2 * 3 * 4 + 2 * 8
    cache.set_state(0, [torch.ones(2, 3), torch.ones(2, dtype=torch.float64)])  # replaced, not added
    assert cache.nbytes() == 2 * 3 * 4 + 2 * 8 and isinstance(cache.state(0), tuple)
    cache.update(1, torch.zeros(2, 1, 1, 4), torch.zeros(2, 1, 1, 4))
    assert cache.nbytes() == 2 * 3 * 4 + 2 * 8 + 2 * (2 * 1 * 5 * 4) * 4
    for bad, message in [((torch.zeros(3, 1),), "batch 2"), ((), "non-empty tuple"), (torch.zeros(2), "tuple"),
                         ((torch.zeros(2), 1.0), "tuple of tensors"), ((torch.tensor(1.0),), "batch 2")]:
        with pytest.raises(ValueError, match=message):
            cache.set_state(0, bad)


# ----------------------------------------------------------------------------- inside the decoder
def linear_mixer(config, index, rope):
    return LinearAttention(config.width, config.n_heads, head_dim=config.dim_per_head, bias=config.attention_bias,
                           layer_index=index, chunk_size=4)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(MIXERS, "test_linear", linear_mixer)


def decoder(mixers, **changes):
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=40, width=16, n_layers=len(mixers), n_heads=2, mixers=mixers,
                           positions="none", **changes)
    return Decoder(config).eval()


@pytest.mark.parametrize("mixers", [("test_linear", "test_linear"), ("test_linear", "attention")])
def test_decoder_with_linear_attention_generates_the_same_with_and_without_cache(registered, mixers):
    model = decoder(mixers)
    prompt = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(prompt)
        cache = model.new_cache(2, 5)
        stepwise = torch.cat([model(prompt[:, t:t + 1], cache=cache) for t in range(5)], dim=1)
    torch.testing.assert_close(stepwise, full, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.generate(prompt, 6, temperature=0), model.generate(prompt, 6, temperature=0, use_cache=False))
    weights = model(prompt, return_attention=True).attention[0]
    assert weights.shape == (2, 2, 5, 5)


def test_cached_state_size_does_not_grow_with_length(registered):
    model = decoder(("test_linear", "test_linear", "test_linear"))
    sizes = []
    for length in (3, 12, 48):
        cache = model.new_cache(1, length)
        with torch.no_grad():
            model(torch.zeros(1, length, dtype=torch.long), cache=cache)
        sizes.append(cache.nbytes())
    head_dim = 16 // 2
    assert sizes == [3 * 1 * 2 * head_dim * (head_dim + 1) * 4] * 3  # layers, batch, heads, S and z, float32
    # ... where an attention layer's cache grows with it
    hybrid = decoder(("test_linear", "attention"))
    grown = []
    for length in (3, 12):
        cache = hybrid.new_cache(1, length)
        with torch.no_grad():
            hybrid(torch.zeros(1, 1, dtype=torch.long), cache=cache)
        grown.append(cache.nbytes() - 2 * head_dim * (head_dim + 1) * 4)
    assert grown == [2 * 2 * length * head_dim * 4 for length in (3, 12)]


def test_the_decoder_registers_linear_attention():
    model = decoder(("linear_attention", "attention"), head_dim=4)
    mixer = model.blocks[0].mixer
    assert isinstance(mixer, LinearAttention) and mixer.layer_index == 0
    assert (mixer.n_heads, mixer.head_dim) == (2, 4)
    prompt = torch.randint(0, 40, (1, 7), generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.generate(prompt, 5, temperature=0), model.generate(prompt, 5, temperature=0, use_cache=False))
