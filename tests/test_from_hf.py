"""from_hf: a transformers LlamaForCausalLM and its companion conversion compute the same thing.

Every parameter is randomised (norm weights and biases too), so a weight copied to the wrong place,
a transposed matrix or a wrong RoPE pairing shows up as a difference in the logits.
"""

from __future__ import annotations

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
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}), "rope_type"),
    (dict(hidden_act="gelu"), "hidden_act"),
])
def test_unsupported_configurations_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        from_hf(random_llama(**changes))


def test_unknown_model_class_is_refused():
    with pytest.raises(ValueError, match="does not know"):
        from_hf(torch.nn.Linear(2, 2))
