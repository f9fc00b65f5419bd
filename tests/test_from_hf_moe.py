"""from_hf for mixtures of experts: MixtralForCausalLM and DeepseekV3ForCausalLM against transformers.

Every parameter of the transformers model is drawn afresh (router weights, stacked expert weights,
norm gains, biases) and so is DeepSeek-V3's ``e_score_correction_bias`` buffer, so a transposed
expert matrix, a gate/up swap, a lost bias, scaling factor or group limit, a missed rotary
interleave or YaRN factor shows up in the logits. The configurations are small and drawn from
seeded generators, with the features that matter cycled so that every one of them is covered (see
``test_the_cases_cover_the_features``): the logits must agree within 1e-4, decoding with the cache
must equal transformers' full forward, and greedy generation must give transformers' tokens.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (DeepseekV3Config, DeepseekV3ForCausalLM, MixtralConfig,  # noqa: E402
                          MixtralForCausalLM)

from companion.models import from_hf  # noqa: E402
from companion.nn.moe import MoE  # noqa: E402

VOCAB = 89
# transformers builds DeepSeek's shared-expert MLP even with n_shared_experts=0, as zero-size layers
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter, and the selection bias buffers: gains around 0.5, everything else around 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tensors = list(model.named_parameters())
        tensors += [(n, b) for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")]
        for name, tensor in tensors:
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64).to(tensor.dtype)
            gain = tensor.ndim == 1 and name.endswith("weight")  # RMSNorm gains
            tensor.copy_(noise * 0.2 + (0.5 if gain else 0.0))


# ------------------------------------------------------------------------------------------------
# Random configurations
# ------------------------------------------------------------------------------------------------

def mixtral_config(index: int) -> MixtralConfig:
    """The ``index``-th Mixtral case: random sizes; sliding window, GQA and top-k cycled."""
    rng = random.Random(1000 + index)
    heads = rng.choice([2, 4, 6])
    kv_heads = [heads, 1, 2 if heads % 2 == 0 else 1][index % 3]              # MHA, MQA, GQA
    experts = rng.randint(4, 8)
    top_k = [1, 2, experts, rng.randint(1, experts)][index % 4]
    head_dim = rng.choice([None, 6, 8]) if index % 2 else None
    width = rng.choice([32, 48]) if head_dim else heads * rng.choice([6, 8])
    rope = {"rope_type": "default", "rope_theta": rng.choice([500.0, 10000.0])}
    if index % 5 == 4:
        rope = {"rope_type": "yarn", "rope_theta": 1000.0, "factor": 4.0, "original_max_position_embeddings": 16}
        head_dim = head_dim or width // heads  # transformers' YaRN reads head_dim and fails on None
    return MixtralConfig(
        vocab_size=VOCAB, hidden_size=width, intermediate_size=rng.randint(16, 40), num_hidden_layers=rng.randint(2, 3),
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, num_local_experts=experts,
        num_experts_per_tok=top_k, sliding_window=None if index % 2 == 0 else rng.randint(3, 7),
        max_position_embeddings=64, rms_norm_eps=rng.choice([1e-5, 1e-6]), rope_parameters=rope,
        tie_word_embeddings=index % 3 == 2, eos_token_id=None, pad_token_id=0)


YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 8,
        "mscale": 0.9, "mscale_all_dim": 0.7, "beta_fast": 32, "beta_slow": 1}


def deepseek_config(index: int) -> DeepseekV3Config:
    """The ``index``-th DeepSeek-V3 case: random sizes; the routing and attention features cycled."""
    rng = random.Random(2000 + index)
    n_layers = rng.randint(2, 3)
    experts, n_group, topk_group = [(8, 4, 2), (8, 2, 1), (6, 1, 1), (8, 4, 4), (4, 2, 1)][index % 5]
    per_group = experts // n_group
    top_k = rng.randint(1, min(experts, topk_group * per_group))
    rope = dict(YARN) if index % 2 == 0 else {"rope_type": "default", "rope_theta": rng.choice([500.0, 10000.0])}
    if index % 4 == 2:
        rope.update(mscale=1.0, mscale_all_dim=1.0)  # as DeepSeek-V3's own config: mscale == mscale_all_dim
    heads = rng.randint(2, 4)
    scaling = 1.0 if index == 5 else 2.5 if index % 2 == 0 else rng.uniform(0.5, 3.0)
    return DeepseekV3Config(
        vocab_size=VOCAB, hidden_size=rng.choice([32, 48]), intermediate_size=rng.randint(40, 64),
        moe_intermediate_size=rng.randint(12, 24), num_hidden_layers=n_layers,
        first_k_dense_replace=[1, 0, n_layers - 1, n_layers][index % 4] if index < 8 else rng.randint(0, n_layers),
        n_routed_experts=experts, num_experts_per_tok=top_k, n_group=n_group, topk_group=topk_group,
        n_shared_experts=index % 3, routed_scaling_factor=scaling,
        norm_topk_prob=index % 5 != 3, num_attention_heads=heads, num_key_value_heads=heads,
        q_lora_rank=None if index % 3 == 1 else rng.randint(8, 20), kv_lora_rank=rng.randint(8, 20),
        qk_nope_head_dim=rng.randint(4, 10), qk_rope_head_dim=rng.choice([2, 4, 6]), v_head_dim=rng.randint(4, 10),
        rope_interleave=(index // 2) % 2 == 0, rope_parameters=rope, attention_bias=index % 4 == 3,
        max_position_embeddings=32, rms_norm_eps=1e-6, tie_word_embeddings=index % 5 == 1, num_mtp_layers=0,
        eos_token_id=None, pad_token_id=0)


N_MIXTRAL, N_DEEPSEEK = 6, 10
CASES = ([("mixtral", i) for i in range(N_MIXTRAL)] + [("deepseek", i) for i in range(N_DEEPSEEK)])


def build(kind: str, index: int, seed: int | None = None, config=None):
    config = config or (mixtral_config(index) if kind == "mixtral" else deepseek_config(index))
    # transformers' plain loop over experts (its grouped_mm path needs sizes in multiples of 16 bytes)
    config._experts_implementation = config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = (MixtralForCausalLM if kind == "mixtral" else DeepseekV3ForCausalLM)(config).eval()
    assert model.config._experts_implementation == "eager"
    randomise(model, index if seed is None else seed)
    return model


def token_ids(seed: int, batch: int = 2, seq: int = 19) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_the_cases_cover_the_features():
    mixtral = [mixtral_config(i) for i in range(N_MIXTRAL)]
    deepseek = [deepseek_config(i) for i in range(N_DEEPSEEK)]
    assert {c.sliding_window is None for c in mixtral} == {True, False}
    assert {c.num_key_value_heads == c.num_attention_heads for c in mixtral} == {True, False}
    assert any(1 < c.num_key_value_heads < c.num_attention_heads for c in mixtral)            # GQA proper
    assert {c.num_experts_per_tok == 1 for c in mixtral} == {True, False}
    assert any(c.num_experts_per_tok == c.num_local_experts for c in mixtral)
    assert {c.first_k_dense_replace == 0 for c in deepseek} == {True, False}
    assert any(0 < c.first_k_dense_replace < c.num_hidden_layers for c in deepseek)         # dense, then MoE
    assert {c.n_shared_experts for c in deepseek} == {0, 1, 2}
    assert any(1 < c.n_group and c.topk_group < c.n_group for c in deepseek)
    assert {c.q_lora_rank is None for c in deepseek} == {True, False}
    assert {c.rope_interleave for c in deepseek} == {True, False}
    assert {c.norm_topk_prob for c in deepseek} == {True, False}
    assert any(c.rope_parameters.get("mscale_all_dim") for c in deepseek)
    assert any(c.rope_parameters["rope_type"] == "default" for c in deepseek)
    assert len({c.routed_scaling_factor for c in deepseek}) > 2


# ------------------------------------------------------------------------------------------------
# Against transformers
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, index", CASES)
def test_logits_cache_and_greedy_generation_match_transformers(kind, index):
    hf = build(kind, index)
    ours = from_hf(hf)
    c = hf.config
    # the structure: which layers are mixtures of experts, and their sizes
    moe_layers = [i for i, block in enumerate(ours.blocks) if isinstance(block.ffn, MoE)]
    first_dense = 0 if kind == "mixtral" else min(c.first_k_dense_replace, c.num_hidden_layers)
    assert moe_layers == list(range(first_dense, c.num_hidden_layers))
    for i in range(first_dense):
        assert ours.blocks[i].ffn.gate.weight.shape == (c.intermediate_size, c.hidden_size)
    if moe_layers:
        shape = ours.config.moe
        assert shape.n_routed_experts == c.num_local_experts and shape.num_experts_per_tok == c.num_experts_per_tok
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())  # tied weights counted once by both

    ids = token_ids(index)
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
        cache = ours.new_cache(2, ids.shape[1])
        pieces = [ours(ids[:, :7], cache=cache)] + [ours(ids[:, t:t + 1], cache=cache) for t in range(7, ids.shape[1])]
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero numbers
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, atol=1e-4, rtol=1e-4)

    prompt = ids[:, :4]
    new = 12  # past DeepSeek's YaRN original length (8) and past Mixtral's sliding windows
    want = hf.generate(prompt, max_new_tokens=new, do_sample=False, pad_token_id=0,
                       attention_mask=torch.ones_like(prompt))
    assert want.shape[1] == 4 + new
    assert torch.equal(ours.generate(prompt, new, temperature=0), want)


def test_the_routing_details_change_the_logits():
    """Our side without the bias, the scaling factor, the group limit or the shared experts differs from
    transformers: so the parity above checks each of them."""
    config = deepseek_config(0)
    assert config.n_group > config.topk_group and config.first_k_dense_replace < config.num_hidden_layers
    config.routed_scaling_factor, config.n_shared_experts, config.first_k_dense_replace = 2.5, 1, 0
    hf = build("deepseek", 0, seed=31, config=config)
    ours = from_hf(hf)
    ids = token_ids(8, seq=16)
    with torch.no_grad():
        expected = hf(ids).logits
        torch.testing.assert_close(ours(ids), expected, atol=1e-4, rtol=1e-4)
        moes = [block.ffn for block in ours.blocks]

        def differs(**changes) -> bool:
            saved = [(m.shape, m.e_score_correction_bias.clone(), m.shared) for m in moes]
            for m in moes:
                if changes.get("bias_zero"):
                    m.e_score_correction_bias.zero_()
                if changes.get("no_shared"):
                    m.shared = None
                m.shape = replace(m.shape, **changes.get("shape", {}))
            result = (ours(ids) - expected).abs().max() > 1e-2
            for m, (shape, bias, shared) in zip(moes, saved):
                m.shape, m.shared = shape, shared
                m.e_score_correction_bias.copy_(bias)
            return bool(result)

        assert differs(bias_zero=True)
        assert differs(shape=dict(routed_scaling_factor=1.0))
        assert differs(shape=dict(n_group=1, topk_group=1))
        assert differs(shape=dict(norm_topk_prob=False))
        assert differs(no_shared=True)
        torch.testing.assert_close(ours(ids), expected, atol=1e-4, rtol=1e-4)  # restored


def test_sliding_window_changes_mixtral_logits():
    hf = build("mixtral", 1)
    assert hf.config.sliding_window is not None
    ours = from_hf(hf)
    assert ours.config.window == hf.config.sliding_window
    ids = token_ids(9)
    full = from_hf(build("mixtral", 1, config=changed(hf.config, sliding_window=None)))
    with torch.no_grad():
        assert (full(ids) - ours(ids)).abs().max() > 1e-2


def test_selection_bias_stays_float32_in_a_bfloat16_model():
    hf = build("deepseek", 0).to(torch.bfloat16)
    ours = from_hf(hf)
    assert ours.embed.weight.dtype == torch.bfloat16
    biases = [m.e_score_correction_bias for m in ours.modules() if isinstance(m, MoE)]
    assert biases and all(b.dtype == torch.float32 for b in biases)
    with torch.no_grad():
        assert torch.isfinite(ours(token_ids(1, seq=5)).float()).all()


# ------------------------------------------------------------------------------------------------
# Refused configurations
# ------------------------------------------------------------------------------------------------

def changed(config, **changes):
    return config.__class__(**{**config.to_dict(), **changes})


@pytest.mark.parametrize("kind, changes, message", [
    ("mixtral", dict(hidden_act="gelu"), "hidden_act"),
    ("mixtral", dict(router_jitter_noise=0.1), "router_jitter_noise"),
    ("mixtral", dict(attention_dropout=0.1), "attention_dropout"),
    ("mixtral", dict(rope_parameters={"rope_type": "proportional", "rope_theta": 10000.0}), "rope_type 'proportional'"),
    ("deepseek", dict(hidden_act="gelu"), "hidden_act"),
    ("deepseek", dict(attention_dropout=0.1), "attention_dropout"),
    ("deepseek", dict(num_key_value_heads=1), "num_key_value_heads"),
    ("deepseek", dict(first_k_dense_replace=-1), "first_k_dense_replace"),
    ("deepseek", dict(n_group=3), "n_group"),
    ("deepseek", dict(n_group=4, topk_group=1, num_experts_per_tok=3), "num_experts_per_tok"),
    ("deepseek", dict(rope_parameters={**YARN, "partial_rotary_factor": 0.5}), "partial_rotary_factor"),
])
def test_unsupported_configurations_are_refused(kind, changes, message):
    base = mixtral_config(0) if kind == "mixtral" else deepseek_config(0)
    base = changed(base, first_k_dense_replace=0) if kind == "deepseek" and "first_k_dense_replace" not in changes \
        else base
    config = changed(base, **changes)
    model = (MixtralForCausalLM if kind == "mixtral" else DeepseekV3ForCausalLM)(config).eval()
    with pytest.raises(ValueError, match=message):
        from_hf(model)
