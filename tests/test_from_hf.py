"""from_hf: a transformers LlamaForCausalLM and its companion conversion compute the same thing.

Every parameter is randomised (norm weights and biases too), so a weight copied to the wrong place,
a transposed matrix or a wrong RoPE pairing shows up as a difference in the logits.
"""

from __future__ import annotations

import random

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from companion.models import from_hf  # noqa: E402


def random_llama(seed=0, **changes) -> LlamaForCausalLM:
    settings = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                    num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                    rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
                    tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    settings.update(changes)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**settings)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.2 + (1.0 if param.ndim == 1 else 0.0) * 0.5)
    return model


CASES = [
    {}, dict(num_key_value_heads=6), dict(num_key_value_heads=1), dict(head_dim=10),
    dict(tie_word_embeddings=True), dict(attention_bias=True, mlp_bias=True),
    dict(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, num_key_value_heads=2,
         intermediate_size=24, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
]


@pytest.mark.parametrize("changes", CASES)
def test_logits_match_transformers(changes):
    hf = random_llama(**changes)
    ours = from_hf(hf)
    ids = torch.randint(0, 97, (2, 23), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero numbers
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_logits_match_beyond_the_initial_rope_cache_and_with_cache():
    hf = random_llama(max_position_embeddings=8)
    ours = from_hf(hf)
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = hf(ids).logits
        cache = ours.new_cache(1, 40)
        pieces = [ours(ids[:, :17], cache=cache)] + [ours(ids[:, t:t + 1], cache=cache) for t in range(17, 40)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("changes", [{}, dict(num_key_value_heads=1, tie_word_embeddings=True)])
def test_greedy_generation_matches_transformers(changes):
    hf = random_llama(seed=5, **changes)
    ours = from_hf(hf)
    prompt = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20,
                               pad_token_id=0, attention_mask=torch.ones_like(prompt))
    got = ours.generate(prompt, 20, temperature=0)
    assert torch.equal(got, expected)


def test_gradients_match_transformers():
    hf = random_llama(seed=7)
    ours = from_hf(hf)
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(8))
    hf(ids).logits.square().mean().backward()
    ours(ids).square().mean().backward()
    torch.testing.assert_close(ours.embed.weight.grad, hf.model.embed_tokens.weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.blocks[1].ffn.down.weight.grad, hf.model.layers[1].mlp.down_proj.weight.grad,
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("changes, message", [
    (dict(rope_parameters={"rope_type": "proportional", "rope_theta": 10000.0}),
     "rope_type 'proportional' is not supported"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0,
                           "partial_rotary_factor": 0.5}), "partial_rotary_factor"),
    (dict(hidden_act="gelu"), "hidden_act"),
])
def test_unsupported_configurations_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        from_hf(random_llama(**changes))


def test_unknown_model_class_is_refused():
    with pytest.raises(ValueError, match="does not know"):
        from_hf(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------------
# RoPE's scalings (rope_type linear, dynamic, yarn, longrope, llama3), beyond the original length
# ------------------------------------------------------------------------------------------------

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
HEAD_DIM = 8  # random_llama: hidden_size 48, 6 heads


def random_rope(rope_type, seed):
    """Random ``rope_parameters`` of ``rope_type``, with an original length ``L`` of 8 to 16 tokens.

    Returns ``(changes for random_llama, L)``. For "dynamic" ``L`` is max_position_embeddings (as
    transformers reads it); for the others max_position_embeddings is a multiple of ``L``.
    """
    rng = random.Random(seed)
    original = rng.randint(8, 16)
    theta = rng.choice([rng.uniform(50.0, 20000.0), rng.randint(100, 20000)])
    params = {"rope_type": rope_type, "rope_theta": theta}
    if rope_type != "default":
        params["factor"] = rng.uniform(1.5, 8.0)
    if rope_type in ("yarn", "longrope", "llama3"):
        params["original_max_position_embeddings"] = original
    if rope_type == "yarn":
        params["beta_fast"] = rng.uniform(2.0, 48.0)
        params["beta_slow"] = rng.uniform(0.05, 1.0) * params["beta_fast"]
        if rng.random() < 0.5:
            params["mscale"], params["mscale_all_dim"] = rng.uniform(0.2, 2.0), rng.uniform(0.2, 2.0)
        elif rng.random() < 0.5:
            params["attention_factor"] = rng.uniform(0.8, 1.5)
        params["truncate"] = rng.random() < 0.5
    elif rope_type == "longrope":
        params["short_factor"] = [rng.uniform(1.0, 2.0) for _ in range(HEAD_DIM // 2)]
        params["long_factor"] = [rng.uniform(1.0, 16.0) for _ in range(HEAD_DIM // 2)]
        if rng.random() < 0.5:
            del params["factor"]  # then max_position_embeddings / original
        if rng.random() < 0.5:
            params["attention_factor"] = rng.uniform(0.8, 1.5)
    elif rope_type == "llama3":
        params["low_freq_factor"] = rng.uniform(0.5, 2.0)
        params["high_freq_factor"] = params["low_freq_factor"] + rng.uniform(0.5, 4.0)
    max_positions = original if rope_type == "dynamic" else original * rng.randint(2, 4)
    return dict(rope_parameters=params, max_position_embeddings=max_positions), original


def without_scaling(decoder):
    """The same weights with plain RoPE: to show that the scaling changed the result."""
    from companion.models.decoder import with_changes

    plain = type(decoder)(with_changes(decoder.config, rope_scaling=None)).eval()
    plain.load_state_dict(decoder.state_dict())
    return plain


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("rope_type", ROPE_TYPES)
def test_scaled_rope_logits_match_transformers_beyond_the_original_length(rope_type, seed):
    changes, original = random_rope(rope_type, seed)
    hf = random_llama(seed=10 + seed, **changes)
    ours = from_hf(hf)
    assert (ours.config.rope_scaling is None) == (rope_type == "default")
    length = 2 * original + 7
    ids = torch.randint(0, 97, (2, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
        plain = without_scaling(ours)(ids)
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    if rope_type != "default":  # the scaling is on at this length and changes the logits
        assert (plain - expected).abs().max() > 1e-2


@pytest.mark.parametrize("rope_type", ["default", "linear", "yarn", "llama3", "longrope"])
def test_scaled_rope_cached_decoding_equals_the_full_forward(rope_type):
    changes, original = random_rope(rope_type, seed=2)
    hf = random_llama(seed=12, **changes)
    ours = from_hf(hf)
    length, prompt = 2 * original + 5, original + 2  # LongRoPE: past the original length from the start
    ids = torch.randint(0, 97, (1, length), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = hf(ids).logits
        cache = ours.new_cache(1, length)
        pieces = [ours(ids[:, :prompt], cache=cache)]
        pieces += [ours(ids[:, t:t + 1], cache=cache) for t in range(prompt, length)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])
def test_length_dependent_rope_decoding_matches_transformers_with_its_cache(rope_type):
    """Dynamic NTK and LongRoPE change their frequencies with the length: a decoding step rotates its
    query and key with the frequencies of its own length and keeps the cached keys as they were.
    Starting below the original length and decoding past it, each step must match transformers."""
    from transformers import DynamicCache

    changes, original = random_rope(rope_type, seed=3)
    hf = random_llama(seed=13, **changes)
    ours = from_hf(hf)
    length, prompt = 2 * original + 5, original - 3
    ids = torch.randint(0, 97, (2, length), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full, short = ours(ids), ours(ids[:, :original])
        theirs, cache = DynamicCache(config=hf.config), ours.new_cache(2, length)
        expected = [hf(ids[:, :prompt], cache=theirs, use_cache=True).logits]
        got = [ours(ids[:, :prompt], cache=cache)]
        for t in range(prompt, length):
            expected.append(hf(ids[:, t:t + 1], cache=theirs, use_cache=True).logits)
            got.append(ours(ids[:, t:t + 1], cache=cache))
    expected, got = torch.cat(expected, dim=1), torch.cat(got, dim=1)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # up to the original length the steps used the original frequencies; past it they changed, so
    # the full forward (one set of frequencies, for its whole length, at every position) differs
    torch.testing.assert_close(got[:, :original], short, atol=1e-4, rtol=1e-4)
    assert (got[:, original:] - full[:, original:]).abs().max() > 1e-2


@pytest.mark.parametrize("rope_type", ["dynamic", "yarn"])
def test_greedy_generation_with_scaled_rope_matches_transformers(rope_type):
    changes, original = random_rope(rope_type, seed=4)
    hf = random_llama(seed=14, eos_token_id=None, **changes)  # min_new_tokens would forbid the eos token
    ours = from_hf(hf)
    prompt = torch.randint(0, 97, (2, original - 2), generator=torch.Generator().manual_seed(7))
    new = 2 * original
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=new, do_sample=False, min_new_tokens=new,
                               pad_token_id=0, attention_mask=torch.ones_like(prompt))
    assert torch.equal(ours.generate(prompt, new, temperature=0), expected)


def test_rope_from_config_reads_the_fields_as_transformers_does():
    from companion.models import RopeScaling, rope_from_config

    def config(params, max_positions=64):
        return LlamaConfig(hidden_size=48, num_attention_heads=6, max_position_embeddings=max_positions,
                           rope_parameters=params)

    assert rope_from_config(config({"rope_type": "default", "rope_theta": 500})) == (500.0, None)
    base, scaling = rope_from_config(config({"rope_type": "dynamic", "rope_theta": 500.0, "factor": 2.0}, 40))
    assert scaling == RopeScaling("dynamic", factor=2.0, original_max_positions=40)
    _, scaling = rope_from_config(config({"rope_type": "yarn", "rope_theta": 500.0, "factor": 4.0,
                                          "original_max_position_embeddings": 16, "beta_fast": 0}))
    assert scaling.yarn_betas == (32, 1) and scaling.truncate is True and scaling.factor == 4.0
    _, scaling = rope_from_config(config({"rope_type": "longrope", "rope_theta": 500.0,
                                          "original_max_position_embeddings": 16,
                                          "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}))
    assert scaling.factor == 64 / 16 and scaling.short_factor == (1.0,) * 4
