"""The Mamba mixer against the paper's equations, its constant-state decoding, and SSM layers in the decoder.

The parity with transformers' MambaForCausalLM / Mamba2ForCausalLM is in tests/test_from_hf_mamba.py;
the SSD of Mamba-2 is in tests/test_mamba2.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from companion.models import Decoder, DecoderConfig
from companion.nn import KVCache
from companion.nn.mamba import MambaMixer, MambaShape, causal_conv1d
from companion.nn.mamba2 import Mamba2Mixer
from companion.nn.ssm import S4DLayer

EXACT = dict(atol=1e-10, rtol=1e-10)


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Every parameter redrawn (biases, A_log, D, conv weights included) so that none keeps a telling value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale
                    + (0.5 if name.endswith("norm_1.weight") or name.endswith("norm.weight") else 0.0))
    return module


# ----------------------------------------------------------------------------------- the mixer
def mamba_by_the_equations(mixer: MambaMixer, x: torch.Tensor) -> torch.Tensor:
    """Figure 3 and Algorithm 2 of Gu and Dao 2023, written out with loops (float64)."""
    k = mixer.shape.d_conv
    xi, z = F.linear(x, mixer.in_proj.weight, mixer.in_proj.bias).chunk(2, dim=-1)        # (b, L, d_inner)
    w = mixer.conv1d.weight[:, 0]                                                          # (d_inner, k)
    conv = torch.zeros_like(xi) + (0 if mixer.conv1d.bias is None else mixer.conv1d.bias)
    for t in range(x.shape[1]):
        for i in range(k):
            if t - (k - 1) + i >= 0:
                conv[:, t] += w[:, i] * xi[:, t - (k - 1) + i]
    u = F.silu(conv)
    dt, B, C = (u @ mixer.x_proj.weight.T).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    delta = F.softplus(dt @ mixer.dt_proj.weight.T + mixer.dt_proj.bias)                   # (b, L, d_inner)
    A = -torch.exp(mixer.A_log)
    h = x.new_zeros(x.shape[0], mixer.d_inner, mixer.d_state)
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * B[:, t, None, :] * u[:, t, :, None]
        ys.append((h * C[:, t, None, :]).sum(-1) + mixer.D * u[:, t])
    y = torch.stack(ys, dim=1) * F.silu(z)
    return F.linear(y, mixer.out_proj.weight, mixer.out_proj.bias)


@pytest.mark.parametrize("shape", [MambaShape(d_state=4, d_conv=3, dt_rank=2),
                                   MambaShape(d_state=3, d_conv=1, expand=1, conv_bias=False, bias=True),
                                   MambaShape(d_state=5, d_conv=4)])
def test_mixer_computes_the_equations_of_the_paper(shape):
    torch.manual_seed(0)
    mixer = randomise(MambaMixer(6, shape, layer_index=1).double())
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    with torch.no_grad():
        y, weights = mixer(x, torch.arange(9))
        expected = mamba_by_the_equations(mixer, x)
    assert y.shape == (2, 9, 6) and weights is None and expected.abs().max() > 0.1
    torch.testing.assert_close(y, expected, **EXACT)


def test_causal_conv1d_is_nn_conv1d_cut_to_causal_and_continues_from_its_state():
    conv = torch.nn.Conv1d(5, 5, 4, groups=5, padding=3).double()
    x = torch.randn(2, 5, 11, dtype=torch.float64)
    whole, state = causal_conv1d(x, conv.weight, conv.bias)
    torch.testing.assert_close(whole, conv(x)[..., :11], **EXACT)   # padding on both sides, keep the first 11
    torch.testing.assert_close(state, x[..., -3:], **EXACT)
    first, state = causal_conv1d(x[..., :6], conv.weight, conv.bias)
    pieces = [first]
    for t in range(6, 11):
        y, state = causal_conv1d(x[..., t:t + 1], conv.weight, conv.bias, state)
        pieces.append(y)
        assert state.shape == (2, 5, 3)
    torch.testing.assert_close(torch.cat(pieces, -1), whole, **EXACT)
    with pytest.raises(ValueError, match=r"conv state must be \(batch, channels, d_conv - 1\)"):
        causal_conv1d(x, conv.weight, conv.bias, torch.zeros(2, 5, 4, dtype=torch.float64))


@pytest.mark.parametrize("prompt", [1, 4, 11])
@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_prefill_then_decoding_with_a_constant_state_equals_the_full_forward(kind, prompt):
    torch.manual_seed(1)
    if kind == "mamba":
        mixer = MambaMixer(8, MambaShape(d_state=4, d_conv=4), layer_index=2)
    else:
        mixer = Mamba2Mixer(8, MambaShape(d_state=4, d_conv=4, head_dim=4, n_groups=2, chunk_size=3), layer_index=2)
    mixer = randomise(mixer.double())
    x = torch.randn(2, 14, 8, dtype=torch.float64)
    with torch.no_grad():
        full, _ = mixer(x)
        cache = KVCache(2, 14, dtype=torch.float64)
        pieces = [mixer(x[:, :prompt], None, cache)[0]]
        cache.advance(prompt)
        sizes = set()
        for start, stop in [(t, t + 1) for t in range(prompt, 12)] + [(12, 14)]:   # steps, then two at once
            pieces.append(mixer(x[:, start:stop], None, cache)[0])
            cache.advance(stop - start)
            sizes.add(cache.nbytes())
    torch.testing.assert_close(torch.cat(pieces, 1), full, **EXACT)
    conv_state, ssm_state = cache.state(2)
    channels = mixer.d_inner if kind == "mamba" else mixer.conv_dim
    assert conv_state.shape == (2, channels, 3)
    assert ssm_state.shape == ((2, mixer.d_inner, 4) if kind == "mamba" else (2, mixer.n_heads, 4, 4))
    assert len(sizes) == 1 and cache.keys == {}   # the same bytes at every step, no keys or values


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_mixers_are_causal_and_every_parameter_gets_a_gradient(kind):
    torch.manual_seed(2)
    mixer = (MambaMixer(8, MambaShape(d_state=3)) if kind == "mamba"
             else Mamba2Mixer(8, MambaShape(d_state=3, head_dim=4, chunk_size=4)))
    x = torch.randn(2, 10, 8)
    changed = x.clone()
    changed[:, 6] += 1.0
    with torch.no_grad():
        a, b = mixer(x)[0], mixer(changed)[0]
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-4
    mixer(x)[0].square().mean().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name


def test_mixer_initialisation_follows_the_paper():
    torch.manual_seed(3)
    mixer = MambaMixer(32, MambaShape(d_state=8))
    assert mixer.dt_rank == 2 and mixer.d_inner == 64                          # ceil(32 / 16), expand 2
    torch.testing.assert_close(-torch.exp(mixer.A_log), -torch.arange(1.0, 9.0).repeat(64, 1))   # S4D-Real
    dt = F.softplus(mixer.dt_proj.bias.detach())
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001 and dt.max() / dt.min() > 10
    assert torch.equal(mixer.D.detach(), torch.ones(64))


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_state=0), "d_state"), (dict(d_conv=1.5), "d_conv"), (dict(dt_rank=0), "dt_rank"),
    (dict(conv_bias=1), "conv_bias"), (dict(n_groups=0), "n_groups"),
])
def test_bad_shapes_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"MambaShape: expected {message}"):
        MambaShape(**kwargs)


def test_bad_mixer_arguments_and_inputs_raise():
    with pytest.raises(ValueError, match="shape must be a MambaShape"):
        MambaMixer(8, dict(d_state=4))
    with pytest.raises(ValueError, match="width must be a positive int"):
        MambaMixer(0)
    with pytest.raises(ValueError, match="multiple of head_dim"):
        Mamba2Mixer(8, MambaShape(head_dim=5))
    with pytest.raises(ValueError, match="multiple of n_groups"):
        Mamba2Mixer(8, MambaShape(head_dim=4, n_groups=3))
    for mixer in (MambaMixer(8), Mamba2Mixer(8, MambaShape(head_dim=4))):
        with pytest.raises(ValueError, match=r"\(batch, seq >= 1, width=8\)"):
            mixer(torch.zeros(2, 3, 7))
        cache = KVCache(2, 4)
        with pytest.raises(ValueError, match="batch 2"):
            mixer(torch.zeros(3, 1, 8), None, cache)
        mixer(torch.zeros(2, 3, 8), None, cache)
        cache.advance(3)
        with pytest.raises(ValueError, match="holds 4 positions"):
            mixer(torch.zeros(2, 2, 8), None, cache)


# ------------------------------------------------------------------------------- in the decoder
SSM = MambaShape(d_state=4, d_conv=3, head_dim=8, n_groups=2, chunk_size=4)


def decoder(mixers, feedforwards=None, positions="none", seed=0, **changes):
    torch.manual_seed(seed)
    config = DecoderConfig(vocab_size=40, width=16, n_layers=len(mixers), n_heads=2, mixers=tuple(mixers),
                           feedforwards=None if feedforwards is None else tuple(feedforwards),
                           positions=positions, ssm=SSM, **changes)
    return Decoder(config).eval()


def test_feedforward_none_makes_a_block_of_one_mixer_and_one_norm():
    model = decoder(["mamba", "mamba"], ["none", "swiglu"])
    plain, with_mlp = model.blocks
    assert plain.ffn is None and plain.norm_2 is None and with_mlp.norm_2 is not None
    names = [n for n, _ in plain.named_parameters()]
    assert not any(n.startswith(("norm_2", "ffn")) for n in names)
    expected = (40 * 16 * 2 + 16                                               # embed, head, final norm
                + sum(p.numel() for b in model.blocks for p in b.parameters()))
    assert model.num_parameters() == expected
    assert model.num_parameters() - decoder(["mamba", "mamba"], ["none", "none"]).num_parameters() == \
        sum(p.numel() for p in with_mlp.ffn.parameters()) + 16                 # the MLP and its norm, nothing else
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        out, _ = plain(x, torch.arange(5))
        torch.testing.assert_close(out, x + plain.mixer(plain.norm_1(x))[0])
        post = decoder(["mamba"], ["none"], norm_position="post").blocks[0]
        torch.testing.assert_close(post(x, torch.arange(5))[0], post.norm_1(x + post.mixer(x)[0]))


def test_the_decoder_registers_the_ssm_mixers_and_keeps_their_initialisation():
    model = decoder(["mamba", "mamba2", "s4d"], ["none", "none", "gelu"])
    kinds = [type(b.mixer) for b in model.blocks]
    assert kinds == [MambaMixer, Mamba2Mixer, S4DLayer]
    assert [b.mixer.layer_index for b in model.blocks] == [0, 1, 2]
    assert model.blocks[2].mixer.state_size == 4                                # s4d reads d_state
    mamba, mamba2 = model.blocks[0].mixer, model.blocks[1].mixer
    assert mamba.shape == SSM and (mamba2.n_heads, mamba2.n_groups, mamba2.head_dim) == (4, 2, 8)
    dt = F.softplus(mamba.dt_proj.bias.detach())                                # not zeroed by the decoder's init
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    out_std = 0.02 / (2 * 3) ** 0.5                                             # the residual projections, scaled
    assert abs(mamba.out_proj.weight.std().item() - out_std) < 0.3 * out_std
    assert abs(mamba.in_proj.weight.std().item() - 0.02) < 0.3 * 0.02
    lti = Decoder(DecoderConfig(vocab_size=40, width=16, n_layers=1, n_heads=2, mixers=("s4d",), positions="none"))
    assert lti.config.ssm is None and lti.blocks[0].mixer.state_size == 64        # s4d needs no MambaShape


HYBRIDS = [
    (("mamba", "mamba", "mamba"), ("none",) * 3, "none"),
    (("mamba2", "mamba2"), ("none", "none"), "none"),
    (("mamba", "attention", "mamba2", "s4d"), ("none", "swiglu", "none", "gelu"), "rope"),   # Jamba-like
    (("s4d", "linear_attention", "mamba"), ("gelu", "swiglu", "none"), "learned"),
]


@pytest.mark.parametrize("mixers, feedforwards, positions", HYBRIDS)
def test_cached_decoding_of_ssm_and_hybrid_decoders_equals_the_full_forward(mixers, feedforwards, positions):
    model = decoder(mixers, feedforwards, positions).double()
    randomise(model, seed=4, scale=0.2)
    x = torch.randint(0, 40, (2, 13), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(2, 13)
        pieces = [model(x[:, :5], cache=cache)] + [model(x[:, t:t + 1], cache=cache) for t in range(5, 10)]
        pieces.append(model(x[:, 10:], cache=cache))
    assert full.abs().max() > 1.0
    torch.testing.assert_close(torch.cat(pieces, 1), full, **EXACT)
    prompt = x[:, :4]
    with_cache = model.generate(prompt, 8, temperature=0)
    assert torch.equal(with_cache, model.generate(prompt, 8, temperature=0, use_cache=False))
    with torch.no_grad():
        logits = model(with_cache[:, :-1])
    assert torch.equal(logits[:, 3:].argmax(-1), with_cache[:, 4:])


def test_ssm_states_do_not_grow_with_the_length_where_attention_keys_do():
    model = decoder(("mamba", "attention", "mamba2"), ("none", "none", "none"), "rope")
    sizes = {}
    for length in (4, 32):
        cache = model.new_cache(1, length)
        with torch.no_grad():
            model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
        states = sum(t.numel() * t.element_size() for s in cache.states.values() for t in s)
        sizes[length] = (states, cache.nbytes() - states)
    assert sizes[4][0] == sizes[32][0] > 0                                    # Mamba and Mamba-2 states
    assert sizes[32][1] == 8 * sizes[4][1]                                    # the attention layer's keys and values


def test_training_a_small_mamba_decoder_reduces_the_loss():
    model = decoder(("mamba", "mamba2"), ("none", "none")).train()
    x = torch.randint(0, 40, (4, 12), generator=torch.Generator().manual_seed(6))
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(x[:, :-1]).reshape(-1, 40), x[:, 1:].reshape(-1))
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("changes, message", [
    (dict(mixers=("mamba", "attention"), ssm=None), "need ssm, a MambaShape"),
    (dict(mixers=("attention", "attention")), "no layer is 's4d', 'mamba' or 'mamba2'"),
    (dict(mixers=("mamba", "mamba"), ssm={"d_state": 4}), "ssm must be a MambaShape"),
    (dict(mixers=("mamba2", "mamba"), ssm=MambaShape(head_dim=6)), "multiple of head_dim"),
    (dict(mixers=("mamba", "mamba"), feedforwards=("none", "mlp")), "unknown feedforwards"),
])
def test_bad_ssm_configs_raise(changes, message):
    settings = {**dict(vocab_size=40, width=16, n_layers=2, n_heads=2, ssm=SSM), **changes}
    with pytest.raises(ValueError, match=message):
        DecoderConfig(**settings)
