"""Multi-head latent attention (companion.nn.latent_attention) against transformers' DeepseekV3Attention.

Every parameter of the transformers module is randomised (norm gains and biases too), so a weight
copied to the wrong place, a missed interleave permutation or a missing YaRN factor on the softmax
scale shows up as a difference. Then, on our side only: the weight-absorbed form equals the naive
one, decoding with the cache equals the full forward, the cache holds ``kv_lora_rank +
qk_rope_head_dim`` numbers per token per layer, gradients flow, and a Decoder of latent attention
layers trains, generates, and matches transformers' DeepseekV3ForCausalLM (dense layers) logit for
logit.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.models import Decoder, DecoderConfig, rope_from_config
from companion.nn import (KVCache, LatentAttention, LatentShape, RopeScaling, RotaryEmbedding, apply_rotary,
                          latent_attention_from_hf, latent_softmax_scale)

transformers = pytest.importorskip("transformers")
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM  # noqa: E402
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (  # noqa: E402
    DeepseekV3Attention, DeepseekV3RotaryEmbedding, yarn_apply_mscale)

F64 = torch.float64
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 8,
        "mscale": 0.9, "mscale_all_dim": 0.7, "beta_fast": 32, "beta_slow": 1}
PLAIN = {"rope_type": "default", "rope_theta": 5000.0}


def hf_config(**changes) -> DeepseekV3Config:
    settings_ = dict(vocab_size=61, hidden_size=40, intermediate_size=48, num_hidden_layers=2, num_attention_heads=3,
                     q_lora_rank=24, kv_lora_rank=20, qk_nope_head_dim=10, qk_rope_head_dim=6, v_head_dim=7,
                     max_position_embeddings=32, rope_parameters=dict(PLAIN), rope_interleave=True,
                     attention_bias=False, rms_norm_eps=1e-6, first_k_dense_replace=99, num_mtp_layers=0,
                     tie_word_embeddings=False, eos_token_id=None)  # no end token: generation runs to length
    settings_.update(changes)
    settings_["num_key_value_heads"] = settings_["num_attention_heads"]
    config = DeepseekV3Config(**settings_)
    config._attn_implementation = "eager"
    return config


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter drawn afresh: gains and biases around 0.5, matrices around 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=F64).to(param.dtype)
            param.copy_(noise * 0.3 + (0.5 if param.ndim == 1 else 0.0))


def random_hf_attention(config: DeepseekV3Config, seed: int = 0, dtype=torch.float32) -> DeepseekV3Attention:
    hf = DeepseekV3Attention(config, layer_idx=0).to(dtype).eval()
    randomise(hf, seed)
    return hf


def hf_rope(config: DeepseekV3Config) -> RotaryEmbedding:
    base, scaling = rope_from_config(config)
    return RotaryEmbedding(config.qk_rope_head_dim, base, scaling=scaling, max_positions=config.max_position_embeddings)


def hf_attend(hf: DeepseekV3Attention, config: DeepseekV3Config, x: torch.Tensor) -> torch.Tensor:
    """transformers' forward with its own rotary embedding and an explicit causal mask (eager attention)."""
    seq = x.shape[1]
    cos, sin = DeepseekV3RotaryEmbedding(config)(x, torch.arange(seq)[None])
    mask = torch.full((seq, seq), -math.inf, dtype=x.dtype).triu(1)[None, None]
    with torch.no_grad():
        return hf(x, (cos, sin), mask)[0]


def make_module(shape: LatentShape, n_heads=3, width=20, seed=0, dtype=F64, **kwargs) -> LatentAttention:
    rope = RotaryEmbedding(shape.qk_rope_head_dim, 1000.0, max_positions=8)
    module = LatentAttention(width, n_heads, shape, rope=rope, **kwargs).to(dtype)
    randomise(module, seed)
    return module


# ------------------------------------------------------------------------------------------------
# Against transformers
# ------------------------------------------------------------------------------------------------

@st.composite
def hf_cases(draw):
    rope_dim = draw(st.sampled_from([2, 4, 6, 8]))
    config = hf_config(
        num_attention_heads=draw(st.integers(1, 4)), hidden_size=draw(st.sampled_from([16, 24, 40])),
        q_lora_rank=draw(st.none() | st.integers(3, 24)), kv_lora_rank=draw(st.integers(3, 24)),
        qk_nope_head_dim=draw(st.integers(1, 12)), qk_rope_head_dim=rope_dim, v_head_dim=draw(st.integers(1, 20)),
        rope_parameters=dict(draw(st.sampled_from([PLAIN, YARN]))), rope_interleave=draw(st.booleans()),
        attention_bias=draw(st.booleans()))
    return config, draw(st.integers(1, 19)), draw(st.sampled_from([torch.float32, F64])), draw(st.integers(0, 99))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hf_cases())
def test_matches_transformers_deepseek_v3_attention(case):
    config, seq, dtype, seed = case
    hf = random_hf_attention(config, seed, dtype)
    ours = latent_attention_from_hf(hf, config, rope=hf_rope(config))
    x = torch.randn(2, seq, config.hidden_size, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)
    expected = hf_attend(hf, config, x)
    size = expected.abs().max()  # compared relative to the output's size, so that small outputs count too
    assert size > 1e-3
    # float64: both sides normalise the latents in float32 (transformers' RMSNorm casts, and so
    # does companion's RMSNorm for anything but float32), which bounds the agreement near 1e-7
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-6, rtol=1e-6)
    for absorbed in (False, True):
        ours.absorbed = absorbed
        with torch.no_grad():
            got, _ = ours(x, torch.arange(seq))
        torch.testing.assert_close(got / size, expected / size, **tol)


@pytest.mark.parametrize("interleave", [True, False])
def test_full_model_logits_and_greedy_generation_match_transformers(interleave):
    """A Decoder of latent attention layers (dense SwiGLU, as DeepSeek's first layers) against DeepseekV3ForCausalLM."""
    config = hf_config(rope_parameters=dict(YARN), rope_interleave=interleave, max_position_embeddings=32)
    torch.manual_seed(0)
    hf = DeepseekV3ForCausalLM(config).eval()
    randomise(hf, 1)
    base, scaling = rope_from_config(config)
    shape = LatentShape(config.kv_lora_rank, config.q_lora_rank, config.qk_nope_head_dim, config.qk_rope_head_dim,
                        config.v_head_dim)
    ours = Decoder(DecoderConfig(vocab_size=config.vocab_size, width=config.hidden_size,
                                 n_layers=config.num_hidden_layers, n_heads=config.num_attention_heads,
                                 ffn_hidden=config.intermediate_size, norm_eps=config.rms_norm_eps,
                                 rope_base=base, rope_scaling=scaling, max_positions=config.max_position_embeddings,
                                 mixers=("latent_attention",) * config.num_hidden_layers, latent=shape)).eval()
    with torch.no_grad():
        ours.embed.weight.copy_(hf.model.embed_tokens.weight)
        for block, layer in zip(ours.blocks, hf.model.layers):
            block.mixer = latent_attention_from_hf(layer.self_attn, config, rope=ours.rope)
            block.ffn.load_separate(layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
            block.norm_1.weight.copy_(layer.input_layernorm.weight)
            block.norm_2.weight.copy_(layer.post_attention_layernorm.weight)
        ours.norm.weight.copy_(hf.model.norm.weight)
        ours.lm_head.weight.copy_(hf.lm_head.weight)
    ids = torch.randint(0, config.vocab_size, (2, 15), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    prompt = ids[:, :5]  # the generated positions run past YaRN's original length of 8
    want = hf.generate(prompt, max_new_tokens=14, do_sample=False, pad_token_id=0,
                       attention_mask=torch.ones_like(prompt))
    assert torch.equal(ours.generate(prompt, 14, temperature=0), want)


def test_softmax_scale_has_yarn_mscale_as_transformers():
    shape = LatentShape(512, 1536, 128, 64, 128)
    assert latent_softmax_scale(shape) == 192 ** -0.5
    v3 = {"rope_type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
          "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1}
    yarn = RopeScaling("yarn", 40.0, 4096, beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0)
    expected = yarn_apply_mscale(v3, 192 ** -0.5)
    assert math.isclose(latent_softmax_scale(shape, yarn), expected, rel_tol=1e-15)
    assert math.isclose(expected * math.sqrt(192), (0.1 * math.log(40) + 1) ** 2)  # m^2 = 1.87
    # YaRN without mscale_all_dim, or another scaling: no factor on the scores
    assert latent_softmax_scale(shape, RopeScaling("yarn", 4.0, 8)) == 192 ** -0.5
    assert latent_softmax_scale(shape, RopeScaling("linear", 4.0)) == 192 ** -0.5


def test_from_hf_refuses_a_rope_whose_scaling_disagrees():
    config = hf_config(rope_parameters=dict(YARN))
    hf = random_hf_attention(config)
    with pytest.raises(ValueError, match="rope_from_config"):
        latent_attention_from_hf(hf, config)  # yarn: the rope must be given
    with pytest.raises(ValueError, match="softmax scale"):
        latent_attention_from_hf(hf, config, rope=RotaryEmbedding(config.qk_rope_head_dim, 10000.0))
    plain = hf_config()
    module = latent_attention_from_hf(random_hf_attention(plain), plain)  # plain RoPE is built from rope_theta
    assert module.rope.base == 5000.0 and module.softmax_scale == 16 ** -0.5


def test_gradients_match_transformers():
    config = hf_config(rope_interleave=False, attention_bias=True)
    hf = random_hf_attention(config, seed=3, dtype=F64).train()
    ours = latent_attention_from_hf(hf, config, rope=hf_rope(config))
    x = torch.randn(2, 9, config.hidden_size, dtype=F64, generator=torch.Generator().manual_seed(4))
    cos, sin = DeepseekV3RotaryEmbedding(config)(x, torch.arange(9)[None])
    mask = torch.full((9, 9), -math.inf, dtype=F64).triu(1)[None, None]
    hf(x, (cos, sin), mask)[0].square().sum().backward()
    ours(x, torch.arange(9))[0].square().sum().backward()
    pairs = [(ours.q_down, hf.q_a_proj), (ours.q_up, hf.q_b_proj), (ours.kv_down, hf.kv_a_proj_with_mqa),
             (ours.kv_up, hf.kv_b_proj), (ours.out, hf.o_proj), (ours.kv_norm, hf.kv_a_layernorm)]
    for mine, theirs in pairs:
        torch.testing.assert_close(mine.weight.grad, theirs.weight.grad, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Our two forms, the cache, gradients
# ------------------------------------------------------------------------------------------------

@st.composite
def shapes(draw):
    return LatentShape(draw(st.integers(1, 12)), draw(st.none() | st.integers(1, 9)), draw(st.integers(1, 8)),
                       draw(st.sampled_from([2, 4])), draw(st.integers(1, 12)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes(), st.integers(1, 4), st.integers(1, 13), st.none() | st.integers(1, 5), st.integers(0, 99))
def test_absorbed_form_equals_naive_form(shape, n_heads, seq, window, seed):
    module = make_module(shape, n_heads, seed=seed, window=window)
    x = torch.randn(2, seq, 20, dtype=F64, generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(seq)
    naive, w_naive = module(x, positions, return_weights=True)
    module.absorbed = True
    absorbed, w_absorbed = module(x, positions, return_weights=True)
    torch.testing.assert_close(absorbed, naive, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(w_absorbed, w_naive, atol=1e-12, rtol=1e-10)
    assert w_naive.shape == (2, n_heads, seq, seq)
    torch.testing.assert_close(w_naive.sum(-1), torch.ones(2, n_heads, seq, dtype=F64))
    assert (w_naive.triu(1) == 0).all()  # causal


@pytest.mark.parametrize("prefill_absorbed, decode_absorbed", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("shape", [LatentShape(12, 8, 6, 4, 5), LatentShape(7, None, 3, 2, 11)])
def test_cached_decoding_equals_the_full_forward(shape, prefill_absorbed, decode_absorbed):
    module = make_module(shape, n_heads=4, seed=5)
    x = torch.randn(2, 11, 20, dtype=F64, generator=torch.Generator().manual_seed(6))
    full, _ = module(x, torch.arange(11))
    cache = KVCache(2, 16, dtype=F64)
    module.absorbed = prefill_absorbed
    pieces = [module(x[:, :4], torch.arange(4), cache)[0]]
    cache.advance(4)
    module.absorbed = decode_absorbed
    for t in range(4, 11):
        pieces.append(module(x[:, t:t + 1], torch.arange(t, t + 1), cache)[0])
        cache.advance(1)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-12, rtol=1e-10)
    # what is cached is the normalised latent and the rotated shared key, nothing else
    c_kv, k_rope = module.cached_latents(cache)
    want_c, want_k = module.latents(x)
    cos, sin = module.rope(torch.arange(11), dtype=F64)
    torch.testing.assert_close(c_kv, want_c)
    torch.testing.assert_close(k_rope, apply_rotary(want_k, cos, sin))


@pytest.mark.parametrize("shape", [LatentShape(16, None, 8, 4, 8), LatentShape(9, 4, 8, 2, 8)])
def test_cache_holds_the_latent_and_the_rope_key_only(shape):
    """``kv_lora_rank + qk_rope_head_dim`` numbers per token per layer (one more when that is odd)."""
    config = DecoderConfig(vocab_size=30, width=24, n_layers=3, n_heads=4, mixers=("latent_attention",) * 3,
                           latent=shape)
    model = Decoder(config).eval()
    cache = model.new_cache(2, 10)
    with torch.no_grad():
        model(torch.zeros(2, 3, dtype=torch.long), cache=cache)
    per_token = shape.cache_elements + shape.cache_elements % 2
    assert cache.nbytes() == 3 * 2 * 10 * per_token * 4
    if shape.cache_elements % 2 == 0:
        assert cache.nbytes() == 3 * 2 * 10 * (shape.kv_lora_rank + shape.qk_rope_head_dim) * 4
    mha = 2 * 4 * (shape.qk_head_dim) * 3 * 2 * 10 * 4  # what per-head keys and values would take
    assert cache.nbytes() < mha


@pytest.mark.parametrize("absorbed", [False, True])
def test_gradients_reach_every_parameter_and_agree_between_forms(absorbed):
    shape = LatentShape(10, 6, 4, 4, 6)
    module = make_module(shape, n_heads=3, bias=True, absorbed=absorbed)
    reference = make_module(shape, n_heads=3, bias=True, absorbed=not absorbed)
    x = torch.randn(2, 7, 20, dtype=F64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    for m in (module, reference):
        m(x, torch.arange(7))[0].square().sum().backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    assert set(grads) == {n for n, _ in module.named_parameters()}
    for name, p in reference.named_parameters():
        assert grads[name] is not None and torch.isfinite(grads[name]).all() and grads[name].abs().sum() > 0, name
        torch.testing.assert_close(grads[name], p.grad, atol=1e-10, rtol=1e-8)


# ------------------------------------------------------------------------------------------------
# In the decoder
# ------------------------------------------------------------------------------------------------

LATENT = LatentShape(kv_lora_rank=12, q_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)


def latent_decoder(**changes) -> Decoder:
    torch.manual_seed(0)
    settings_ = dict(vocab_size=50, width=32, n_layers=2, n_heads=4, mixers=("latent_attention",) * 2, latent=LATENT)
    return Decoder(DecoderConfig(**{**settings_, **changes}))


def test_latent_decoder_trains_and_generates_the_same_tokens_with_and_without_cache():
    model = latent_decoder().train()
    assert model.rope.head_dim == 4  # the shared RoPE rotates qk_rope_head_dim coordinates
    assert all(block.mixer.rope is model.rope for block in model.blocks)
    x = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(1))
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, 50), x[:, 1:].reshape(-1))
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    prompt = x[:2, :5]
    with_cache = model.generate(prompt, 12, temperature=0)
    without = model.generate(prompt, 12, temperature=0, use_cache=False)
    assert torch.equal(with_cache, without)
    for block in model.blocks:
        block.mixer.absorbed = True
    assert torch.equal(model.generate(prompt, 12, temperature=0), with_cache)


def test_latent_and_ordinary_attention_layers_mix_in_one_decoder():
    model = latent_decoder(mixers=("attention", "latent_attention"), window=5).eval()
    assert model.rope.head_dim == 8 and model.blocks[1].mixer.rope.head_dim == 4
    x = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(x, return_attention=True)
        cache = model.new_cache(2, 11)
        pieces = [model(x[:, :6], cache=cache)] + [model(x[:, t:t + 1], cache=cache) for t in range(6, 11)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), out.logits, atol=1e-5, rtol=1e-5)
    maps = out.attention[1]
    assert maps.shape == (2, 4, 11, 11) and (maps.tril(-5) == 0).all()  # the sliding window applies


# ------------------------------------------------------------------------------------------------
# Invalid arguments
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    ((0, None, 4, 4, 4), "kv_lora_rank"), ((8, 0, 4, 4, 4), "q_lora_rank"), ((8, None, 4, 3, 4), "even"),
    ((8, None, 4, 4, 2.0), "v_head_dim"), ((8, True, 4, 4, 4), "q_lora_rank"),
])
def test_bad_shapes_raise(fields, message):
    with pytest.raises(ValueError, match=message):
        LatentShape(*fields)


def test_bad_module_arguments_raise():
    shape = LatentShape(8, None, 4, 4, 4)
    rope = RotaryEmbedding(4)
    with pytest.raises(ValueError, match="qk_rope_head_dim = 4"):
        LatentAttention(16, 2, shape, rope=RotaryEmbedding(8))
    with pytest.raises(ValueError, match="n_heads"):
        LatentAttention(16, 0, shape, rope=rope)
    with pytest.raises(ValueError, match="LatentShape"):
        LatentAttention(16, 2, (8, None, 4, 4, 4), rope=rope)
    with pytest.raises(ValueError, match="window"):
        LatentAttention(16, 2, shape, rope=rope, window=0)
    with pytest.raises(ValueError, match="softmax_scale"):
        LatentAttention(16, 2, shape, rope=rope, softmax_scale=-1.0)
    module = LatentAttention(16, 2, shape, rope=rope)
    with pytest.raises(ValueError, match="width=16"):
        module(torch.zeros(1, 3, 12), torch.arange(3))
    with pytest.raises(ValueError, match="nothing for layer 0"):
        module.cached_latents(KVCache(1, 4))


@pytest.mark.parametrize("changes, message", [
    (dict(latent=None), "need latent"),
    (dict(mixers=None), "no layer is 'latent_attention'"),
    (dict(positions="alibi"), "positions='rope'"),
    (dict(latent=(12, 16, 8, 4, 8)), "LatentShape"),
])
def test_bad_decoder_configs_raise(changes, message):
    settings_ = dict(vocab_size=50, width=32, n_layers=2, n_heads=4, mixers=("latent_attention",) * 2, latent=LATENT)
    with pytest.raises(ValueError, match=message):
        DecoderConfig(**{**settings_, **changes})
