"""The decoder: configuration, forward shapes, parts, caching and generation.

The parity of the decoder with transformers' Llama lives in tests/test_from_hf.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from companion.models import Decoder, DecoderConfig, filter_logits, sample_next
from companion.nn import (KVCache, RMSNorm, RopeScaling, RotaryEmbedding, SinusoidalPositions, alibi_slopes,
                          apply_rotary)
from companion.nn.positions import sinusoidal_table

SMALL = dict(vocab_size=50, width=32, n_layers=2, n_heads=4)


def make(**changes) -> Decoder:
    torch.manual_seed(0)
    return Decoder(DecoderConfig(**{**SMALL, **changes})).eval()


def ids(batch=2, seq=9, vocab=50, seed=1):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("changes", [
    {}, {"n_kv_heads": 2}, {"n_kv_heads": 1}, {"head_dim": 6}, {"ffn": "gelu", "norm": "layernorm"},
    {"positions": "learned"}, {"positions": "sinusoidal"}, {"positions": "none"},
    {"norm_position": "post"}, {"tie_embeddings": True}, {"window": 3},
    {"attention_bias": True, "mlp_bias": True},
])
def test_forward_shapes_and_cache_equal_full_forward(changes):
    model = make(**changes)
    x = ids()
    with torch.no_grad():
        full = model(x)
        assert full.shape == (2, 9, 50)
        cache = model.new_cache(2, 12)
        pieces = [model(x[:, :4], cache=cache), model(x[:, 4:5], cache=cache), model(x[:, 5:], cache=cache)]
    assert cache.length == 9
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_tied_embeddings_share_one_tensor_and_count_once():
    tied, untied = make(tie_embeddings=True), make()
    assert tied.lm_head.weight is tied.embed.weight
    assert untied.num_parameters() - tied.num_parameters() == 50 * 32


def test_causal_future_tokens_do_not_change_past_logits():
    model = make()
    x = ids()
    y = x.clone()
    y[:, 6] = (y[:, 6] + 1) % 50
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-4


def test_sliding_window_limits_what_a_position_sees():
    model = make(window=3, n_layers=1)
    x = ids(seq=10)
    y = x.clone()
    y[:, 2] = (y[:, 2] + 1) % 50  # position 9 sees 7, 8, 9 in a one-layer model with window 3
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, 5:], b[:, 5:])
    assert (a[:, 2:5] - b[:, 2:5]).abs().max() > 1e-4


def test_attention_maps_are_causal_distributions_and_match_last_only():
    model = make(n_kv_heads=2)
    x = ids(seq=7)
    with torch.no_grad():
        out = model(x, return_attention=True)
        last = model(x, last_only=True)
    assert len(out.attention) == 2
    for weights in out.attention:
        assert weights.shape == (2, 4, 7, 7)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 7))
        assert torch.all(weights.triu(1) == 0)
    torch.testing.assert_close(last, out.logits[:, -1:])


def test_per_layer_pattern_picks_parts_per_layer():
    model = make(n_layers=3, feedforwards=("swiglu", "gelu", "swiglu"))
    kinds = [type(block.ffn).__name__ for block in model.blocks]
    assert kinds == ["SwiGLU", "GeluMLP", "SwiGLU"]


@pytest.mark.parametrize("bad, message", [
    (dict(width=30, n_heads=4), "divisible"), (dict(n_kv_heads=3), "multiple"),
    (dict(positions="relative"), "positions"), (dict(norm_position="middle"), "norm_position"),
    (dict(mixers=("attention",)), "one part per layer"), (dict(feedforwards=("hash_moe", "hash_moe")), "unknown"),
    (dict(vocab_size=0), "vocab_size"), (dict(head_dim=5), "even head_dim"),
])
def test_bad_configs_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        DecoderConfig(**{**SMALL, **bad})


@pytest.mark.parametrize("bad", [torch.zeros(2, 3), torch.zeros(3, dtype=torch.long),
                                 torch.full((1, 3), 50), torch.full((1, 3), -1), torch.zeros(1, 0, dtype=torch.long)])
def test_bad_ids_raise(bad):
    with pytest.raises(ValueError, match="token ids"):
        make()(bad)


def test_cache_overflow_and_batch_mismatch_raise():
    model = make()
    cache = model.new_cache(2, 5)
    with pytest.raises(ValueError, match="holds 5 positions"):
        model(ids(seq=6), cache=cache)
    with pytest.raises(ValueError, match="batch"):
        model(ids(batch=3, seq=2), cache=model.new_cache(2, 5))


def test_kv_cache_memory_is_linear_in_length():
    model = make(n_kv_heads=2)
    sizes = []
    for length in (8, 16):
        cache = model.new_cache(1, length)
        with torch.no_grad():
            model(ids(batch=1, seq=2), cache=cache)
        sizes.append(cache.nbytes())
    head_dim = 32 // 4
    assert sizes == [2 * 2 * 1 * 2 * n * head_dim * 4 for n in (8, 16)]  # k+v, layers, batch, heads


@pytest.mark.parametrize("changes", [{}, {"n_kv_heads": 1, "window": 4}, {"positions": "learned"}])
def test_greedy_generation_with_and_without_cache_agree_and_follow_argmax(changes):
    model = make(**changes)
    prompt = ids(batch=2, seq=5)
    with_cache = model.generate(prompt, 8, temperature=0)
    without = model.generate(prompt, 8, temperature=0, use_cache=False)
    assert torch.equal(with_cache, without)
    assert torch.equal(with_cache[:, :5], prompt)
    with torch.no_grad():  # every generated token is the argmax of the full forward at the step before
        logits = model(with_cache[:, :-1])
    assert torch.equal(logits[:, 4:].argmax(-1), with_cache[:, 5:])


def test_sampling_is_reproducible_with_a_generator_and_respects_top_k():
    model = make()
    prompt = ids(batch=3, seq=4)
    a = model.generate(prompt, 10, temperature=1.5, top_k=2, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, 10, temperature=1.5, top_k=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    with torch.no_grad():
        logits = model(a[:, :-1])[:, 3:]
    top2 = logits.topk(2, dim=-1).indices
    assert torch.all((top2 == a[:, 4:, None]).any(-1))


def test_filter_logits_top_k_and_top_p_against_hand_computed_sets():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda out: torch.isfinite(out[0]).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [0, 1]
    assert kept(filter_logits(logits, top_p=0.5)) == [0]          # 0.5 already reaches 0.5
    assert kept(filter_logits(logits, top_p=0.6)) == [0, 1]       # 0.5 < 0.6 <= 0.7
    assert kept(filter_logits(logits, top_p=0.86)) == [0, 1, 2, 3]
    assert kept(filter_logits(logits, top_p=1.0)) == [0, 1, 2, 3, 4]
    shuffled = logits[:, [3, 0, 4, 1, 2]]                         # order must not matter
    assert kept(filter_logits(shuffled, top_p=0.6)) == [1, 3]


@pytest.mark.parametrize("kwargs", [dict(top_k=0), dict(top_k=1.5), dict(top_p=0.0), dict(top_p=1.5)])
def test_filter_logits_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        filter_logits(torch.zeros(1, 4), **kwargs)


def test_sample_next_greedy_and_negative_temperature():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]
    with pytest.raises(ValueError):
        sample_next(logits, temperature=-1)


def test_sampling_frequencies_follow_the_tempered_distribution():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1])).repeat(20000, 1)
    draws = sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.015, rtol=0)
    hot = sample_next(logits, temperature=2.0, generator=torch.Generator().manual_seed(0))
    p = torch.tensor([0.6, 0.3, 0.1]) ** 0.5
    torch.testing.assert_close(torch.bincount(hot, minlength=3).float() / 20000, p / p.sum(), atol=0.015, rtol=0)


def test_rmsnorm_against_its_formula_in_float64():
    norm = RMSNorm(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(3, 6, dtype=torch.float64)
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * torch.arange(1.0, 7.0, dtype=torch.float64)
    torch.testing.assert_close(norm(x.float()).double(), expected, atol=1e-6, rtol=1e-6)


def test_rotary_embedding_makes_scores_depend_on_relative_position_only():
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m, n):
        cq, sq = rope(torch.tensor([m]))
        ck, sk = rope(torch.tensor([n]))
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum().item()

    assert math.isclose(score(3, 1), score(10, 8), rel_tol=1e-4, abs_tol=1e-5)
    assert math.isclose(score(0, 0), (q * k).sum().item(), rel_tol=1e-5)
    assert not math.isclose(score(3, 1), score(3, 2), rel_tol=1e-3)


def test_rotary_cache_grows_beyond_its_initial_length():
    rope = RotaryEmbedding(4, max_positions=4)
    cos, _ = rope(torch.tensor([10]))
    inv = 1.0 / 10000 ** (torch.tensor([0.0, 2.0]) / 4)
    torch.testing.assert_close(cos[0], torch.cos(10 * torch.cat([inv, inv])))


def test_sinusoidal_table_matches_the_paper_formula():
    table = sinusoidal_table(7, 6)
    for p in range(7):
        for i in range(3):
            assert math.isclose(table[p, 2 * i].item(), math.sin(p / 10000 ** (2 * i / 6)), abs_tol=1e-6)
            assert math.isclose(table[p, 2 * i + 1].item(), math.cos(p / 10000 ** (2 * i / 6)), abs_tol=1e-6)
    assert SinusoidalPositions(6, max_positions=2)(torch.tensor([6])).shape == (1, 6)


def test_training_step_reduces_loss():
    model = make().train()
    x = ids(batch=4, seq=16)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), x[:, 1:].reshape(-1))
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_kv_cache_rejects_bad_sizes():
    with pytest.raises(ValueError):
        KVCache(0, 4)


def test_without_residuals_each_sublayer_replaces_its_input():
    model = make(residual=False, n_layers=1)
    block = model.blocks[0]
    x = torch.randn(1, 5, 32)
    positions = torch.arange(5)
    with torch.no_grad():
        out, _ = block(x, positions)
        mixed, _ = block.mixer(block.norm_1(x), positions, None, False)
        expected = block.ffn(block.norm_2(mixed))
    torch.testing.assert_close(out, expected)


# ------------------------------------------------------------------------------------------------
# ALiBi and RoPE's scalings in the decoder
# ------------------------------------------------------------------------------------------------

def randomised(model: Decoder, seed: int = 0) -> Decoder:
    """Every parameter redrawn at a scale where the logits are of order one (init_std gives ~0.02)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3 + (0.5 if param.ndim == 1 else 0.0))
    return model


ALIBI = dict(positions="alibi", width=36, n_heads=6)  # 6 heads: slopes of the non-power-of-two rule


@pytest.mark.parametrize("changes", [{}, {"n_kv_heads": 2}, {"n_kv_heads": 3, "window": 4}, {"n_heads": 4}])
def test_alibi_decoder_cache_equals_full_forward(changes):
    model = randomised(make(**{**ALIBI, **changes}))
    x = ids(seq=11)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(2, 11)
        pieces = [model(x[:, :4], cache=cache)] + [model(x[:, t:t + 1], cache=cache) for t in range(4, 9)]
        pieces.append(model(x[:, 9:], cache=cache))
        plain = randomised(make(**{**ALIBI, **changes, "positions": "none"}))(x)
    assert full.abs().max() > 1.0
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert (plain - full).abs().max() > 1e-2  # the biases change the result: same weights without them


def test_alibi_decoder_uses_the_head_slopes_and_no_position_vectors():
    model = make(**ALIBI, n_layers=3)
    assert model.rope is None and model.positions is None
    for block in model.blocks:
        assert torch.equal(block.mixer.alibi_slopes, alibi_slopes(6))
        assert block.mixer.rope is None
    assert make().blocks[0].mixer.alibi_slopes is None


def test_alibi_attention_maps_agree_with_the_fast_path():
    model = randomised(make(**ALIBI, n_kv_heads=2, n_layers=2), seed=1)
    x = ids(seq=8)
    seen = []
    hooks = [block.mixer.register_forward_hook(lambda mixer, inputs, output: seen.append((mixer, inputs, output)))
             for block in model.blocks]
    try:
        with torch.no_grad():
            out = model(x, return_attention=True)
            fast = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(out.logits, fast)
    for (mixer, (h, positions, *_), (y, _)), weights in zip(seen, out.attention):
        assert weights.shape == (2, 6, 8, 8)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 6, 8))
        assert torch.all(weights.triu(1) == 0)
        with torch.no_grad():  # the maps, applied to the values, give the fast path's output
            _, _, v = mixer.project(h, positions)
            o = weights @ v.repeat_interleave(3, dim=1)
            y_from_maps = mixer.out(o.transpose(1, 2).reshape(2, 8, 36))
        torch.testing.assert_close(y_from_maps, y, atol=1e-5, rtol=1e-5)
    # the maps are ALiBi's: recomputed here from the scores and the distance bias of each head
    mixer, (h, positions, *_), _ = seen[0]
    with torch.no_grad():
        q, k, _ = mixer.project(h, positions)
        k = k.repeat_interleave(3, dim=1)
    distance = (torch.arange(8)[:, None] - torch.arange(8)[None, :]).abs()
    scores = q @ k.transpose(-1, -2) / math.sqrt(6) - alibi_slopes(6)[:, None, None] * distance
    scores = scores.masked_fill(torch.ones(8, 8, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(out.attention[0], scores.softmax(-1), atol=1e-6, rtol=1e-5)


def test_alibi_greedy_generation_with_and_without_cache_agree():
    model = randomised(make(**ALIBI, n_kv_heads=3), seed=2)
    prompt = ids(batch=2, seq=5)
    with_cache = model.generate(prompt, 10, temperature=0)
    assert torch.equal(with_cache, model.generate(prompt, 10, temperature=0, use_cache=False))


SCALINGS = {
    "linear": RopeScaling("linear", factor=3.0),
    "yarn": RopeScaling("yarn", factor=4.0, original_max_positions=6, beta_fast=8.0, beta_slow=0.5),
    "llama3": RopeScaling("llama3", factor=4.0, original_max_positions=6, low_freq_factor=1.0,
                          high_freq_factor=4.0),
    "longrope": RopeScaling("longrope", factor=4.0, original_max_positions=6, short_factor=[1.0, 1.5, 2.0, 2.5],
                            long_factor=[1.0, 3.0, 9.0, 27.0]),
    "dynamic": RopeScaling("dynamic", factor=4.0, original_max_positions=6),
}


@pytest.mark.parametrize("kind", ["linear", "yarn", "llama3", "longrope"])
def test_scaled_rope_decoder_cache_equals_full_forward(kind):
    model = randomised(make(rope_scaling=SCALINGS[kind], rope_base=100.0))  # head_dim 8
    x = ids(seq=15)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(2, 15)
        # LongRoPE switches factors at the original length: start past it, as a long prompt would
        pieces = [model(x[:, :7], cache=cache)] + [model(x[:, t:t + 1], cache=cache) for t in range(7, 15)]
        plain = randomised(make(rope_base=100.0))(x)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert (plain - full).abs().max() > 1e-2  # the scaling changes the result


def test_dynamic_ntk_decoder_is_plain_rope_up_to_the_original_length():
    scaled = randomised(make(rope_scaling=SCALINGS["dynamic"], rope_base=100.0))
    plain = randomised(make(rope_base=100.0))
    x = ids(seq=12)
    with torch.no_grad():
        torch.testing.assert_close(scaled(x[:, :6]), plain(x[:, :6]), atol=0, rtol=0)
        assert (scaled(x) - plain(x)).abs().max() > 1e-2
        torch.testing.assert_close(scaled(x[:, :6]), plain(x[:, :6]), atol=0, rtol=0)  # and back again


# ------------------------------------------------------------------------------------ embed_scale
@pytest.mark.parametrize("positions", ["rope", "sinusoidal", "learned"])
def test_embed_scale_multiplies_the_token_embeddings_only(positions):
    """embed_scale=c equals an unscaled model whose input embedding table is c times larger
    (untied, so the output projection keeps the original weights); positions are not scaled."""
    scaled = make(positions=positions, embed_scale=3.0)
    plain = make(positions=positions)
    plain.load_state_dict(scaled.state_dict())
    x = ids()
    with torch.no_grad():
        reference = plain(x)
        plain.embed.weight.mul_(3.0)
        expected = plain(x)
        got = scaled(x)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, reference)


def test_embed_scale_with_a_cache_equals_the_full_forward():
    model = make(embed_scale=math.sqrt(32), tie_embeddings=True)
    x = ids(seq=7)
    cache = model.new_cache(2, 7)
    with torch.no_grad():
        steps = torch.cat([model(x[:, :4], cache=cache)] + [model(x[:, t:t + 1], cache=cache) for t in range(4, 7)], 1)
        torch.testing.assert_close(steps, model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True, "8"])
def test_bad_embed_scale_raises(bad):
    with pytest.raises(ValueError, match="embed_scale must be a positive number"):
        DecoderConfig(**SMALL, embed_scale=bad)
