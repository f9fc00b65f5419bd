"""from_hf for state space models: MambaForCausalLM and Mamba2ForCausalLM against transformers.

Every parameter of the transformers model is drawn afresh (norm gains, A_log, D, dt_proj's weight
and bias or Mamba-2's dt_bias, the convolution's weights and biases, the gated norm's gain, the
projections' biases when present), so a misplaced split (x/z, dt/B/C, z/xBC/dt), a lost bias, a
wrong sign of A, a gate applied before instead of after the norm, or a conv state one step off
shows up in the logits. The configurations are small and drawn from seeded generators, with the
features that matter cycled (see ``test_the_cases_cover_the_features``).

transformers runs its torch fallback here: the ``torch_paths`` fixture replaces the module-level
functions that transformers may route to ``mamba_ssm`` / ``causal_conv1d`` or to hub kernels by the
torch functions they wrap (``inspect.unwrap``), so the comparison is with the same reference on
every machine, and the models are built from configs: nothing is downloaded.
"""

from __future__ import annotations

import inspect
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM  # noqa: E402
from transformers.models.mamba import modeling_mamba  # noqa: E402
from transformers.models.mamba2 import modeling_mamba2  # noqa: E402

from companion.models import from_hf  # noqa: E402
from companion.nn.mamba import MambaMixer  # noqa: E402
from companion.nn.mamba2 import Mamba2Mixer  # noqa: E402

VOCAB = 83
FALLBACKS = {modeling_mamba: ("causal_conv1d_fn", "causal_conv1d_update", "mamba_inner_fn", "mamba_selective_scan",
                              "mamba_selective_state_update"),
             modeling_mamba2: ("causal_conv1d_fn", "causal_conv1d_update", "mamba2_chunk_scan",
                               "mamba2_selective_state_update", "mamba2_split_conv1d_scan_combined")}


@pytest.fixture(autouse=True)
def torch_paths(monkeypatch):
    for module, names in FALLBACKS.items():
        for name in names:
            monkeypatch.setattr(module, name, inspect.unwrap(getattr(module, name)))


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter: RMSNorm gains around 0.5 (a gain near 0 would hide a wrong norm), the rest around 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64).to(tensor.dtype)
            gain = name.endswith("norm.weight") or name.endswith("norm_f.weight")
            tensor.copy_(noise * 0.3 + (0.5 if gain else 0.0))


# ------------------------------------------------------------------------------------------------
# Random configurations
# ------------------------------------------------------------------------------------------------

def mamba_config(index: int) -> MambaConfig:
    rng = random.Random(3000 + index)
    return MambaConfig(
        vocab_size=VOCAB, hidden_size=rng.choice([16, 24, 32]), state_size=rng.randint(2, 8),
        num_hidden_layers=rng.randint(1, 3), expand=[2, 1, 3][index % 3], conv_kernel=[4, 2, 1, 3][index % 4],
        use_bias=index % 2 == 1, use_conv_bias=index % 3 != 2,
        time_step_rank="auto" if index % 2 else rng.randint(1, 5),
        layer_norm_epsilon=rng.choice([1e-5, 1e-6]), tie_word_embeddings=index % 3 == 0,
        residual_in_fp32=index % 2 == 0, eos_token_id=None, pad_token_id=0, bos_token_id=0)


def mamba2_config(index: int) -> Mamba2Config:
    rng = random.Random(4000 + index)
    head_dim = rng.choice([4, 6, 8])
    heads = [4, 6, 2, 8, 4][index % 5]
    expand = 2 if index % 2 == 0 else 1
    hidden = heads * head_dim // expand
    groups = [1, 2, heads, 1, 2][index % 5]
    return Mamba2Config(
        vocab_size=VOCAB, hidden_size=hidden, num_heads=heads, head_dim=head_dim, expand=expand, n_groups=groups,
        state_size=rng.randint(2, 8), num_hidden_layers=rng.randint(1, 3), conv_kernel=[4, 3, 2, 1, 4][index % 5],
        chunk_size=[4, 7, 256, 5, 3][index % 5], use_bias=index % 2 == 1, use_conv_bias=index % 3 != 1,
        layer_norm_epsilon=rng.choice([1e-5, 1e-6]), tie_word_embeddings=index % 3 == 2,
        residual_in_fp32=index % 2 == 0, eos_token_id=None, pad_token_id=0, bos_token_id=0)


N_MAMBA, N_MAMBA2 = 4, 5
CASES = [("mamba", i) for i in range(N_MAMBA)] + [("mamba2", i) for i in range(N_MAMBA2)]


def build(kind: str, index: int, config=None):
    config = config or (mamba_config(index) if kind == "mamba" else mamba2_config(index))
    torch.manual_seed(0)
    model = (MambaForCausalLM if kind == "mamba" else Mamba2ForCausalLM)(config).eval()
    randomise(model, 100 + index)
    return model


def token_ids(seed: int, batch: int = 2, seq: int = 17) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_the_cases_cover_the_features():
    mamba = [mamba_config(i) for i in range(N_MAMBA)]
    mamba2 = [mamba2_config(i) for i in range(N_MAMBA2)]
    for configs in (mamba, mamba2):
        assert {c.use_bias for c in configs} == {True, False}
        assert {c.use_conv_bias for c in configs} == {True, False}
        assert {c.tie_word_embeddings for c in configs} == {True, False}
        assert {c.expand for c in configs} >= {1, 2}
        assert 1 in {c.conv_kernel for c in configs} and 4 in {c.conv_kernel for c in configs}
    assert len({c.time_step_rank for c in mamba}) > 2
    assert any(c.n_groups == 1 for c in mamba2) and any(1 < c.n_groups < c.num_heads for c in mamba2)
    assert any(c.n_groups == c.num_heads > 1 for c in mamba2)
    assert any(c.chunk_size < 17 and 17 % c.chunk_size for c in mamba2)      # several chunks, the last padded
    assert any(c.chunk_size >= 17 for c in mamba2)                            # one chunk


# ------------------------------------------------------------------------------------------------
# Against transformers
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, index", CASES)
def test_logits_cache_and_greedy_generation_match_transformers(kind, index):
    hf = build(kind, index)
    ours = from_hf(hf)
    c = hf.config
    mixer_type = MambaMixer if kind == "mamba" else Mamba2Mixer
    assert all(type(b.mixer) is mixer_type and b.ffn is None and b.norm_2 is None for b in ours.blocks)
    assert ours.config.positions == "none" and ours.config.tie_embeddings == c.tie_word_embeddings
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())  # tied weights counted once by both
    for block, layer in zip(ours.blocks, hf.backbone.layers):              # transformers' own parameter names
        assert ({k: v.shape for k, v in block.mixer.state_dict().items()}
                == {k: v.shape for k, v in layer.mixer.state_dict().items()})

    ids = token_ids(index)
    with torch.no_grad():
        expected = hf(ids, use_cache=False).logits
        got = ours(ids)
        cache = ours.new_cache(2, ids.shape[1])
        pieces = [ours(ids[:, :6], cache=cache)] + [ours(ids[:, t:t + 1], cache=cache) for t in range(6, 15)]
        pieces.append(ours(ids[:, 15:], cache=cache))                     # two tokens at once from a state
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero numbers
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, atol=1e-4, rtol=1e-4)

    prompt = ids[:, :5]
    want = hf.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0,
                       attention_mask=torch.ones_like(prompt))
    assert want.shape[1] == 15
    got_tokens = ours.generate(prompt, 10, temperature=0)
    assert torch.equal(got_tokens, want)
    assert torch.equal(got_tokens, ours.generate(prompt, 10, temperature=0, use_cache=False))


def test_transformers_own_cached_decoding_matches_ours_step_by_step():
    """Token by token through transformers' cache (its one-token update paths) and ours."""
    from transformers import DynamicCache

    for kind in ("mamba", "mamba2"):
        hf = build(kind, 1)
        ours = from_hf(hf)
        ids = token_ids(7, seq=12)
        with torch.no_grad():
            theirs, cache = DynamicCache(config=hf.config), ours.new_cache(2, 12)
            expected = [hf(ids[:, :4], cache=theirs, use_cache=True).logits]
            got = [ours(ids[:, :4], cache=cache)]
            for t in range(4, 12):
                expected.append(hf(ids[:, t:t + 1], cache=theirs, use_cache=True).logits)
                got.append(ours(ids[:, t:t + 1], cache=cache))
        torch.testing.assert_close(torch.cat(got, 1), torch.cat(expected, 1), atol=1e-4, rtol=1e-4)


def test_the_randomised_details_change_the_logits():
    """Undo one detail on our side and the parity breaks: so the test above checks each of them."""
    for kind, names in (("mamba", ["D", "dt_proj.bias", "conv1d.bias", "A_log"]),
                        ("mamba2", ["D", "dt_bias", "conv1d.bias", "A_log", "norm.weight"])):
        hf = build(kind, 0)
        ours = from_hf(hf)
        ids = token_ids(8, seq=12)
        with torch.no_grad():
            expected = hf(ids, use_cache=False).logits
            torch.testing.assert_close(ours(ids), expected, atol=1e-4, rtol=1e-4)
            mixer = ours.blocks[0].mixer
            for name in names:
                param = mixer.get_parameter(name)
                saved = param.clone()
                param.copy_(torch.ones_like(param) if name.endswith("norm.weight") else torch.zeros_like(param))
                assert (ours(ids) - expected).abs().max() > 1e-2, (kind, name)
                param.copy_(saved)


# ------------------------------------------------------------------------------------------------
# Refused configurations
# ------------------------------------------------------------------------------------------------

def changed(config, **changes):
    return config.__class__(**{**config.to_dict(), **changes})


@pytest.mark.parametrize("kind, changes, message", [
    ("mamba", dict(hidden_act="gelu"), "hidden_act"),
    ("mamba2", dict(hidden_act="relu"), "hidden_act"),
    ("mamba2", dict(time_step_limit=(0.0, 1.0)), "time_step_limit"),
    ("mamba2", dict(num_heads=4, head_dim=4, hidden_size=8, n_groups=3), "n_groups"),
])
def test_unsupported_configurations_are_refused(kind, changes, message):
    base = mamba_config(0) if kind == "mamba" else mamba2_config(0)
    model = (MambaForCausalLM if kind == "mamba" else Mamba2ForCausalLM)(changed(base, **changes)).eval()
    with pytest.raises(ValueError, match=message):
        from_hf(model)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_residual_in_fp32_is_refused_only_where_it_matters(kind):
    base = mamba_config(0) if kind == "mamba" else mamba2_config(0)
    cls = MambaForCausalLM if kind == "mamba" else Mamba2ForCausalLM
    with pytest.raises(ValueError, match="residual_in_fp32"):
        from_hf(cls(changed(base, residual_in_fp32=True)).to(torch.bfloat16))
    ours = from_hf(cls(changed(base, residual_in_fp32=False)).to(torch.bfloat16))
    assert ours.embed.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(ours(token_ids(1, seq=5)).float()).all()
