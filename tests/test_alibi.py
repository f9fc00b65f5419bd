"""ALiBi (Press et al., "Train Short, Test Long", 2022): the head slopes, and the attention layer
that applies them through companion.kernels.attention, against the paper and against BLOOM's
implementation in transformers (``build_alibi_tensor`` and ``BloomAttention``).

BLOOM adds ``slope_h * j`` to the scores of key ``j`` (every query alike) instead of
``-slope_h * |i - j|``: for the keys a causal query ``i`` sees, the two differ by ``slope_h * i``,
the same for the whole row, which the softmax cancels. So the probabilities and outputs must agree.
"""

from __future__ import annotations

import math

import pytest
import torch

from companion.kernels import attention
from companion.nn import Attention, KVCache, alibi_slopes

F64 = torch.float64


def paper_slopes(n_heads):
    """The paper's slopes in float64: 2^(-8h/n) for n a power of two; otherwise the 2^floor(log2 n)
    sequence followed by every other slope (h = 1, 3, 5, ...) of the sequence for twice that."""
    closest = 2 ** int(math.log2(n_heads))
    slopes = [2.0 ** (-8.0 * h / closest) for h in range(1, closest + 1)]
    slopes += [2.0 ** (-8.0 * h / (2 * closest)) for h in range(1, 2 * closest + 1, 2)][: n_heads - closest]
    return torch.tensor(slopes, dtype=F64)


def test_slopes_for_powers_of_two_are_a_geometric_sequence():
    assert alibi_slopes(8).tolist() == [2.0 ** -h for h in range(1, 9)]
    assert alibi_slopes(1).tolist() == [2.0 ** -8]
    assert alibi_slopes(2).tolist() == [2.0 ** -4, 2.0 ** -8]
    assert alibi_slopes(4).tolist() == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]


def test_slopes_for_other_head_counts_interleave_the_next_sequence():
    # 6 heads: the 4-head slopes, then heads 1 and 3 of the 8-head sequence
    assert alibi_slopes(6).tolist() == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]
    # 12 heads: the 8-head slopes, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 (16-head sequence, odd h)
    expected = [2.0 ** -h for h in range(1, 9)] + [2.0 ** -(h / 2) for h in (1, 3, 5, 7)]
    assert torch.equal(alibi_slopes(12), torch.tensor(expected, dtype=F64).float())


def test_slopes_are_the_correctly_rounded_paper_values_for_every_head_count():
    for n in range(1, 129):
        got = alibi_slopes(n)
        assert got.dtype == torch.float32 and got.shape == (n,)
        assert torch.equal(got, paper_slopes(n).float()), n
        assert len(set(got.tolist())) == n  # every head its own slope


def test_slopes_match_bloom_build_alibi_tensor():
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    mask = torch.ones(2, 5, dtype=torch.long)
    for n in range(1, 129):
        alibi = bloom.build_alibi_tensor(mask, n, torch.float32).view(2, n, 5)
        ours = alibi_slopes(n).double()
        # BLOOM's bias is slope * j for key j: its values at j = 1 are the slopes. It computes them
        # as float32 powers base^p of a float32-rounded base (relative error u = 2^-24), so head
        # p's slope may be off by about (p + 1) u; ours are correctly rounded (test above)
        closest = 2 ** int(math.log2(n))
        powers = torch.tensor(list(range(1, closest + 1)) + list(range(1, 2 * (n - closest), 2)), dtype=F64)
        bound = (powers + 1) * 2.0 ** -24
        assert torch.all((alibi[0, :, 1].double() - ours).abs() <= bound * ours), n
        assert torch.all((alibi[1, :, 4].double() - 4 * ours).abs() <= bound * 4 * ours), n


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_bad_head_counts_raise(bad):
    with pytest.raises(ValueError, match="positive int number of heads"):
        alibi_slopes(bad)


def test_attention_rejects_slopes_of_the_wrong_shape_or_dtype():
    with pytest.raises(ValueError, match=r"shape \(n_heads,\) = \(4,\)"):
        Attention(16, 4, alibi_slopes=alibi_slopes(2))
    with pytest.raises(ValueError, match="floating-point"):
        Attention(16, 4, alibi_slopes=torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="floating-point tensor"):
        Attention(16, 4, alibi_slopes=[0.5, 0.25, 0.125, 0.0625])


def test_kernel_bias_equals_bloom_bias_up_to_a_constant_per_row():
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    gen = torch.Generator().manual_seed(0)
    heads, length, head_dim = 6, 11, 8
    q, k, v = (torch.randn(2, heads, length, head_dim, generator=gen, dtype=F64) for _ in range(3))
    slopes = alibi_slopes(heads).double()
    got = attention(q, k, v, causal=True, alibi_slopes=slopes)
    bias = bloom.build_alibi_tensor(torch.ones(2, length, dtype=torch.long), heads, F64).view(2, heads, 1, length)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + bias
    scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(got, scores.softmax(-1) @ v, rtol=1e-12, atol=1e-12)
    # and the bias matters: without it the output is different
    assert (attention(q, k, v, causal=True) - got).abs().max() > 1e-2


def bloom_and_companion_attention(heads, width, seed=0):
    """A BloomAttention with random weights (biases too) and the companion Attention with the same weights."""
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    from transformers import BloomConfig

    config = BloomConfig(hidden_size=width, n_head=heads, attention_dropout=0.0, hidden_dropout=0.0)
    torch.manual_seed(seed)
    theirs = bloom.BloomAttention(config, layer_idx=0).eval()
    with torch.no_grad():
        for param in theirs.parameters():
            param.copy_(torch.randn_like(param) * 0.5)
    ours = Attention(width, heads, bias=True, alibi_slopes=alibi_slopes(heads)).eval()
    head_dim = width // heads
    # BLOOM's fused projection is laid out (heads, 3, head_dim); ours is (3, heads, head_dim)
    w = theirs.query_key_value.weight.view(heads, 3, head_dim, width).transpose(0, 1).reshape(3 * width, width)
    b = theirs.query_key_value.bias.view(heads, 3, head_dim).transpose(0, 1).reshape(3 * width)
    with torch.no_grad():
        ours.qkv.weight.copy_(w)
        ours.qkv.bias.copy_(b)
        ours.out.weight.copy_(theirs.dense.weight)
        ours.out.bias.copy_(theirs.dense.bias)
    return bloom, theirs, ours


def bloom_causal_mask(q_len, kv_len):
    """BLOOM's eager additive mask (batch 1): 0 where query i (at kv_len - q_len + i) may see key j."""
    offset = kv_len - q_len
    blocked = torch.arange(kv_len)[None, :] > (torch.arange(q_len)[:, None] + offset)
    return torch.zeros(q_len, kv_len).masked_fill(blocked, torch.finfo(torch.float32).min)[None, None]


@pytest.mark.parametrize("heads, width", [(4, 32), (6, 36), (12, 48)])
def test_attention_matches_bloom_attention(heads, width):
    bloom, theirs, ours = bloom_and_companion_attention(heads, width)
    length = 13
    x = torch.randn(1, length, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        alibi = bloom.build_alibi_tensor(torch.ones(1, length, dtype=torch.long), heads, torch.float32)
        expected, expected_probs = theirs(x, torch.zeros_like(x), alibi, bloom_causal_mask(length, length))
        got, probs = ours(x, torch.arange(length), return_weights=True)
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs, expected_probs, atol=1e-6, rtol=1e-5)


def test_cached_attention_steps_match_bloom_with_its_cache():
    bloom, theirs, ours = bloom_and_companion_attention(6, 36, seed=2)
    from transformers import DynamicCache

    length, prompt = 12, 5
    x = torch.randn(1, length, 36, generator=torch.Generator().manual_seed(3))
    their_cache, our_cache = DynamicCache(), KVCache(1, length)
    with torch.no_grad():
        for start, end in [(0, prompt)] + [(t, t + 1) for t in range(prompt, length)]:
            piece = x[:, start:end]
            alibi = bloom.build_alibi_tensor(torch.ones(1, end, dtype=torch.long), 6, torch.float32)
            expected, _ = theirs(piece, torch.zeros_like(piece), alibi, bloom_causal_mask(end - start, end),
                                 layer_past=their_cache, use_cache=True)
            got, _ = ours(piece, torch.arange(start, end), cache=our_cache)
            our_cache.advance(end - start)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_weights_reproduce_the_fast_path_output_with_and_without_cache():
    torch.manual_seed(4)
    layer = Attention(40, 10, n_kv_heads=5, alibi_slopes=alibi_slopes(10), window=6).eval()
    x = torch.randn(2, 9, 40)
    cache = KVCache(2, 9)
    with torch.no_grad():
        full, weights = layer(x, torch.arange(9), return_weights=True)
        first, _ = layer(x[:, :4], torch.arange(4), cache=cache)
        cache.advance(4)
        rest, rest_weights = layer(x[:, 4:], torch.arange(4, 9), cache=cache, return_weights=True)
        _, _, v = layer.project(x, torch.arange(9))
        from_weights = weights @ v.repeat_interleave(2, dim=1)
        y = layer.out(from_weights.transpose(1, 2).reshape(2, 9, 40))
    torch.testing.assert_close(y, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rest_weights, weights[:, :, 4:], atol=1e-6, rtol=1e-5)
    assert torch.all(weights.triu(1) == 0) and torch.all(weights.tril(-6) == 0)  # causal, window of 6


def test_slopes_follow_the_module_to_another_dtype():
    layer = Attention(16, 4, alibi_slopes=alibi_slopes(4)).to(torch.float64)
    assert layer.alibi_slopes.dtype == torch.float64
    assert "alibi_slopes" not in layer.state_dict()  # derived from the head count, not a weight
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    y, _ = layer(x, torch.arange(5))
    assert y.dtype == torch.float64
