"""The patch encoder (chapter 8): patchify, shapes, errors, gradients, and from_hf against transformers' ViT.

In the from_hf tests every parameter of the transformers model is moved by noise after its
initialisation (LayerNorm weights and biases, [CLS], positions, biases too), so a weight copied to
the wrong place, transposed, or left out shows up as a difference in the last hidden states.
"""

from __future__ import annotations

import pytest
import torch

from companion.models import (Decoder, DecoderConfig, PatchEncoder, PatchEncoderConfig, PatchEncoderOutput, from_hf,
                              patchify, unpatchify)

transformers = pytest.importorskip("transformers")
from transformers import ViTConfig, ViTForImageClassification, ViTModel  # noqa: E402

SMALL = dict(image_size=28, patch_size=7, channels=3, width=24, n_layers=2, n_heads=3, mlp_hidden=40)


def images(batch: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter by noise (so a swapped or ignored weight changes the output)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.2)
    return model.eval()


def random_vit(cls=ViTModel, seed: int = 0, **changes) -> torch.nn.Module:
    settings = dict(image_size=28, patch_size=7, num_channels=3, hidden_size=45, num_hidden_layers=2,
                    num_attention_heads=3, intermediate_size=37, layer_norm_eps=1e-12, attn_implementation="eager")
    settings.update(changes)
    torch.manual_seed(seed)
    return randomised(cls(ViTConfig(**settings)), seed)


# ------------------------------------------------------------------------------------------------
# patchify and unpatchify
# ------------------------------------------------------------------------------------------------

def test_patchify_order_on_a_small_example():
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)  # 2 channels, 4x6 pixels
    patches = patchify(x, 2)
    assert patches.shape == (1, 6, 2 * 2 * 2)  # a 2x3 grid of 2x2 patches, 2 channels each
    # the second patch (top row, middle): channel 0 rows 0-1 columns 2-3, then channel 1
    expected = torch.cat([x[0, 0, 0:2, 2:4].flatten(), x[0, 1, 0:2, 2:4].flatten()])
    assert torch.equal(patches[0, 1], expected)
    # the fourth patch starts the second row of the grid
    assert torch.equal(patches[0, 3, :4], x[0, 0, 2:4, 0:2].flatten())


@pytest.mark.parametrize("shape, patch", [((2, 3, 28, 28), 7), ((1, 1, 28, 28), 4), ((3, 2, 12, 20), (4, 5)),
                                          ((1, 3, 8, 8), 8)])
def test_unpatchify_inverts_patchify(shape, patch):
    x = images(*shape)
    patches = patchify(x, patch)
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    assert patches.shape == (shape[0], (shape[2] // ph) * (shape[3] // pw), shape[1] * ph * pw)
    assert torch.equal(unpatchify(patches, patch, shape[2:]), x)
    if shape[2] == shape[3]:
        assert torch.equal(unpatchify(patches, patch), x)  # a square grid needs no image size


def test_patch_projection_is_a_linear_map_of_patchify():
    model = PatchEncoder(PatchEncoderConfig(**SMALL))
    x = images(2, 3, 28, 28)
    conv = model.patch_embed
    via_conv = conv(x).flatten(2).transpose(1, 2)
    via_patches = patchify(x, 7) @ conv.weight.flatten(1).T + conv.bias
    torch.testing.assert_close(via_patches, via_conv, atol=1e-5, rtol=1e-5)


def test_patchify_errors():
    with pytest.raises(ValueError, match=r"28x30 is not divisible by the patch size 7x7"):
        patchify(images(1, 3, 28, 30), 7)
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\)"):
        patchify(torch.zeros(3, 28, 28), 7)
    with pytest.raises(ValueError, match="patch_size must be a positive int"):
        patchify(images(1, 1, 28, 28), 0)
    with pytest.raises(ValueError, match="multiple of 49"):
        unpatchify(torch.zeros(1, 16, 50), 7)
    with pytest.raises(ValueError, match="square grid"):
        unpatchify(torch.zeros(1, 12, 49), 7)
    with pytest.raises(ValueError, match="holds 16 patches"):
        unpatchify(torch.zeros(1, 12, 49), 7, 28)


# ------------------------------------------------------------------------------------------------
# the encoder itself
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, tokens", [({}, 17), (dict(class_token=False, pooling="mean"), 16),
                                             (dict(image_size=(12, 20), patch_size=(4, 5), channels=1), 13)])
def test_shapes(changes, tokens):
    config = PatchEncoderConfig(**{**SMALL, "n_classes": 5, **changes})
    model = PatchEncoder(config).eval()
    x = images(2, config.channels, *config.image_hw)
    hidden = model(x)
    assert config.n_tokens == tokens and hidden.shape == (2, tokens, 24)
    out = model(x, return_attention=True)
    assert isinstance(out, PatchEncoderOutput) and torch.equal(out.hidden, hidden)
    assert len(out.attention) == 2 and all(a.shape == (2, 3, tokens, tokens) for a in out.attention)
    assert model.pool(hidden).shape == (2, 24)
    assert model.classify(x).shape == (2, 5)


def test_attention_is_bidirectional():
    """No causal mask: the [CLS] output depends on the last patch, and the maps are full, not triangular."""
    model = PatchEncoder(PatchEncoderConfig(**SMALL)).eval()
    x = images(1, 3, 28, 28)
    changed = x.clone()
    changed[..., 21:, 21:] += 1.0  # only the last patch
    with torch.no_grad():
        out = model(x, return_attention=True)
        assert (model(changed)[:, 0] - out.hidden[:, 0]).abs().max() > 1e-3
    above_diagonal = torch.ones(17, 17, dtype=torch.bool).triu(diagonal=1)
    for maps in out.attention:
        torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))
        assert (maps[..., above_diagonal] > 0).all()  # every token sees the tokens after it


def test_pooling():
    mean = PatchEncoder(PatchEncoderConfig(**{**SMALL, "pooling": "mean"}))
    cls = PatchEncoder(PatchEncoderConfig(**SMALL))
    hidden = torch.randn(2, 17, 24)
    assert torch.equal(cls.pool(hidden), hidden[:, 0])
    torch.testing.assert_close(mean.pool(hidden), hidden[:, 1:].mean(dim=1))


def test_blocks_are_the_decoders_blocks_without_the_mask():
    model = PatchEncoder(PatchEncoderConfig(**SMALL))
    block_config = model.config.block_config
    assert not block_config.causal and block_config.norm == "layernorm"
    assert block_config.layer_feedforwards == ("gelu",) * 2
    assert all(not block.mixer.causal for block in model.blocks)
    # the same switch makes a decoder bidirectional: early logits now depend on later tokens
    decoder = Decoder(DecoderConfig(vocab_size=11, width=16, n_layers=1, n_heads=2, causal=False)).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert (decoder(ids)[:, 0] - decoder(torch.tensor([[1, 2, 3, 5]]))[:, 0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="causal=False needs every mixer to be 'attention'"):
        DecoderConfig(vocab_size=11, width=16, n_layers=1, n_heads=2, causal=False, mixers=("linear_attention",))


def test_gradients_reach_every_parameter():
    model = PatchEncoder(PatchEncoderConfig(**{**SMALL, "n_classes": 4}))
    x = images(3, 3, 28, 28)
    loss = torch.nn.functional.cross_entropy(model.classify(x), torch.tensor([0, 1, 3]))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_no_qkv_bias_keeps_the_output_bias():
    model = PatchEncoder(PatchEncoderConfig(**{**SMALL, "qkv_bias": False}))
    assert model.blocks[0].mixer.qkv.bias is None and model.blocks[0].mixer.out.bias is not None
    assert model(images(1, 3, 28, 28)).shape == (1, 17, 24)


def test_bad_images_are_refused():
    model = PatchEncoder(PatchEncoderConfig(**SMALL))
    with pytest.raises(ValueError, match=r"expected 3 channel\(s\), images \(batch, 3, 28, 28\), got 1"):
        model(images(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"expected images of 28x28 pixels .* got 32x32"):
        model(images(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 3, 28, 28\)"):
        model(torch.zeros(3, 28, 28))
    with pytest.raises(TypeError, match="expected images of dtype torch.float32 .* got torch.float64"):
        model(images(2, 3, 28, 28).double())
    with pytest.raises(TypeError, match=r"got torch.uint8 \(convert integer pixels"):
        model(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(TypeError, match="expected images as a torch.Tensor"):
        model([[0.0]])
    with pytest.raises(ValueError, match="no classifier head"):
        model.classify(images(1, 3, 28, 28))
    with pytest.raises(ValueError, match=r"expected hidden states \(batch, 17, 24\)"):
        model.pool(torch.zeros(1, 16, 24))


@pytest.mark.parametrize("changes, message", [
    (dict(image_size=30), "30x30 is not divisible by the patch size 7x7"),
    (dict(image_size=(28, 30), patch_size=(7, 4)), "28x30 is not divisible by the patch size 7x4"),
    (dict(patch_size=0), "patch_size must be a positive int"),
    (dict(channels=0), "channels must be a positive int"),
    (dict(width=25), r"width \(25\) must be divisible by n_heads \(3\)"),
    (dict(pooling="max"), "pooling must be one of"),
    (dict(class_token=False), "pooling='cls' needs class_token=True"),
    (dict(norm_eps=0.0), "norm_eps must be a positive number"),
    (dict(n_classes=0), "n_classes must be a positive int"),
])
def test_bad_configs_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        PatchEncoderConfig(**{**SMALL, **changes})


# ------------------------------------------------------------------------------------------------
# from_hf: transformers' ViT
# ------------------------------------------------------------------------------------------------

HF_CASES = [
    {},  # 3 channels, 3 heads of 15, 4x4 patches of 7x7
    dict(num_channels=1, hidden_size=40, num_attention_heads=5, intermediate_size=24, num_hidden_layers=3,
         qkv_bias=False, layer_norm_eps=1e-6),
    dict(image_size=[12, 20], patch_size=[4, 5], num_channels=2, hidden_size=21, num_attention_heads=7,
         intermediate_size=30, num_hidden_layers=1),
    dict(image_size=16, patch_size=16, num_channels=3, hidden_size=18, num_attention_heads=1, intermediate_size=8),
]


def _pixels(hf: torch.nn.Module, batch: int = 2, seed: int = 1) -> torch.Tensor:
    c = hf.config
    height, width = (c.image_size, c.image_size) if isinstance(c.image_size, int) else c.image_size
    return images(batch, c.num_channels, height, width, seed)


@pytest.mark.parametrize("changes", HF_CASES)
def test_last_hidden_state_matches_transformers(changes):
    hf = random_vit(**changes)
    ours = from_hf(hf)
    assert isinstance(ours, PatchEncoder) and not ours.training and ours.head is None
    x = _pixels(hf)
    with torch.no_grad():
        expected = hf(x).last_hidden_state
        got = ours(x)
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero numbers
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_attention_maps_match_transformers():
    hf = random_vit(seed=2)
    ours = from_hf(hf)
    x = _pixels(hf, seed=3)
    with torch.no_grad():
        expected = hf(x, output_attentions=True).attentions
        got = ours(x, return_attention=True).attention
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("changes", [{}, dict(num_channels=1, num_attention_heads=5, hidden_size=35)])
def test_classifier_logits_match_transformers(changes):
    hf = random_vit(ViTForImageClassification, seed=4, num_labels=6, **changes)
    ours = from_hf(hf)
    assert ours.config.n_classes == 6 and ours.config.pooling == "cls"
    x = _pixels(hf, batch=3, seed=5)
    with torch.no_grad():
        expected = hf(x).logits
        got = ours.classify(x)
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_classifier_without_labels_has_no_head():
    hf = random_vit(ViTForImageClassification, seed=6, num_labels=0)
    ours = from_hf(hf)
    assert ours.head is None
    x = _pixels(hf)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf.vit(x).last_hidden_state, atol=1e-4, rtol=0)


def test_every_parameter_but_the_pooler_is_converted():
    hf = random_vit()
    ours = from_hf(hf)
    pooler = sum(p.numel() for p in hf.pooler.parameters())
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters()) - pooler


def test_a_swapped_or_changed_weight_is_detected():
    """The comparison can fail: swapping query and key heads, or changing one LayerNorm bias, shows."""
    hf = random_vit(seed=7)
    x = _pixels(hf)
    with torch.no_grad():
        expected = hf(x).last_hidden_state
        swapped = from_hf(hf)
        qkv = swapped.blocks[1].mixer.qkv.weight
        q, k = qkv[:45].clone(), qkv[45:90].clone()
        qkv[:45], qkv[45:90] = k, q
        assert (swapped(x) - expected).abs().max() > 1e-2
        changed = from_hf(hf)
        changed.blocks[0].norm_2.bias[3] += 0.5
        assert (changed(x) - expected).abs().max() > 1e-2


def test_float64_model_converts_in_float64():
    # transformers' eager attention takes its softmax in float32 whatever the dtype; SDPA does not
    hf = random_vit(seed=8, attn_implementation="sdpa").double()
    ours = from_hf(hf)
    x = _pixels(hf).double()
    assert ours.patch_embed.weight.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).last_hidden_state, atol=1e-10, rtol=0)


@pytest.mark.parametrize("changes, message", [
    (dict(hidden_act="gelu_pytorch_tanh"), "only hidden_act='gelu'"),
    (dict(hidden_dropout_prob=0.1), "hidden_dropout_prob=0.1 is not supported"),
    (dict(attention_probs_dropout_prob=0.1), "attention_probs_dropout_prob=0.1 is not supported"),
])
def test_from_hf_refuses_what_it_cannot_reproduce(changes, message):
    with pytest.raises(ValueError, match=message):
        from_hf(random_vit(num_hidden_layers=1, **changes))
