"""The captioner (chapter 8) and the decoder's prefix embeddings that it rests on.

The decoder part checks that ``prefix=None`` is bit for bit the computation the decoder had before
prefixes existed (a copy of it lives here as :func:`old_forward`), that a prefix equal to embedded
tokens gives the logits of those tokens run as ids, and that a prefix fed into a cache and followed
by tokens one at a time gives the full forward's logits. The captioner part checks shapes, the loss,
gradients, generation (stopping at ``<eos>``, cached against uncached), attention to patches, errors,
and that a tiny captioner learns a handful of scenes' captions exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from companion.data.scenes import BOS_ID, CAPTION_WORDS, EOS_ID, PAD_ID, decode_captions, encode_captions, shape_scenes
from companion.models import (Captioner, CaptionerConfig, Decoder, DecoderConfig, DecoderOutput, caption_batches,
                              caption_exact_match, caption_loss)
from companion.train import train

SMALL = dict(vocab_size=50, width=32, n_layers=2, n_heads=4)
TINY = dict(image_size=24, patch_size=8, vision_width=32, width=32, max_caption_tokens=20)  # 9 patches
DECODER_CHANGES = [{}, {"positions": "learned", "max_positions": 64, "embed_scale": 2.0}, {"positions": "sinusoidal"},
                   {"positions": "alibi"}, {"positions": "none", "norm_position": "post"}, {"n_kv_heads": 2},
                   {"window": 5}]


def make(**changes) -> Decoder:
    torch.manual_seed(0)
    return Decoder(DecoderConfig(**{**SMALL, **changes})).eval()


def ids(batch=2, seq=9, vocab=50, seed=1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def embedded(model: Decoder, tokens: torch.Tensor) -> torch.Tensor:
    """The decoder's own input embeddings of ``tokens`` (scaled as the decoder scales them)."""
    return model.embed(tokens) * model.config.embed_scale


def old_forward(model: Decoder, tokens: torch.Tensor, cache=None, last_only=False, return_attention=False):
    """The decoder's forward pass as it was before prefixes (kept here to compare bit for bit)."""
    start = cache.length if cache is not None else 0
    positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
    x = model.embed(tokens)
    if model.config.embed_scale != 1.0:
        x = x * model.config.embed_scale
    if model.positions is not None:
        x = x + model.positions(positions)
    maps = []
    for block in model.blocks:
        x, weights = block(x, positions, cache, return_attention)
        maps.append(weights)
    if cache is not None:
        cache.advance(tokens.shape[1])
    x = model.norm(x[:, -1:] if last_only else x)
    logits = model.lm_head(x)
    return DecoderOutput(logits, maps) if return_attention else logits


def tiny_captioner(seed: int = 0, **changes) -> Captioner:
    torch.manual_seed(seed)
    return Captioner(CaptionerConfig(**{**TINY, **changes}))


def scenes(n: int = 3, seed: int = 0, size: int = 24, max_objects: int = 2):
    data = shape_scenes(n, size=size, max_objects=max_objects, generator=torch.Generator().manual_seed(seed))
    return data.images, encode_captions(data.captions), data.captions


# ------------------------------------------------------------------------------------------------
# the decoder with a prefix
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes", DECODER_CHANGES)
def test_no_prefix_is_bit_identical_to_the_old_forward(changes):
    model, x = make(**changes), ids()
    with torch.no_grad():
        assert torch.equal(model(x), old_forward(model, x))
        assert torch.equal(model(x, prefix=None, last_only=True), old_forward(model, x, last_only=True))
        new, old = model(x, return_attention=True), old_forward(model, x, return_attention=True)
        assert torch.equal(new.logits, old.logits)
        assert all(torch.equal(a, b) for a, b in zip(new.attention, old.attention))
        new_cache, old_cache = model.new_cache(2, 12), model.new_cache(2, 12)
        for part in (x[:, :5], x[:, 5:6], x[:, 6:]):
            assert torch.equal(model(part, cache=new_cache), old_forward(model, part, cache=old_cache))
        assert new_cache.length == old_cache.length == 9


@pytest.mark.parametrize("changes", DECODER_CHANGES)
def test_a_prefix_of_embedded_tokens_equals_those_tokens_as_ids(changes):
    # positions run on across prefix and ids; the logits are those of the ids' positions
    model, x = make(**changes), ids(seq=10)
    with torch.no_grad():
        whole = model(x)
        prefixed = model(x[:, 4:], prefix=embedded(model, x[:, :4]))
        last = model(x[:, 4:], prefix=embedded(model, x[:, :4]), last_only=True)
    assert prefixed.shape == (2, 6, 50) and last.shape == (2, 1, 50)
    torch.testing.assert_close(prefixed, whole[:, 4:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, whole[:, -1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("changes", DECODER_CHANGES)
def test_prefix_into_the_cache_then_one_token_at_a_time_equals_the_full_forward(changes):
    model, x = make(**changes), ids(seq=7)
    prefix = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(x, prefix=prefix)
        cache = model.new_cache(2, 12)
        alone = model(x[:, :0], prefix=prefix, cache=cache)  # the prefix alone: no id positions
        assert alone.shape == (2, 0, 50) and cache.length == 5
        steps = [model(x[:, t:t + 1], cache=cache) for t in range(7)]
        assert cache.length == 12
        # a prefix and the first ids in one call, then the rest
        cache_2 = model.new_cache(2, 12)
        first = model(x[:, :3], prefix=prefix, cache=cache_2)
        rest = model(x[:, 3:], cache=cache_2)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, rtol=1e-5, atol=1e-5)


def test_last_only_with_a_prefix_alone_gives_the_last_prefix_position():
    model, x = make(), ids(seq=6)
    with torch.no_grad():
        whole = model(x)
        last = model(x[:, :0], prefix=embedded(model, x), last_only=True)
    torch.testing.assert_close(last, whole[:, -1:], rtol=1e-5, atol=1e-5)


def test_attention_with_a_prefix_covers_the_whole_sequence_causally():
    model, x = make(), ids(seq=6)
    prefix = torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(x, prefix=prefix, return_attention=True)
        cache = model.new_cache(2, 10)
        model(x[:, :0], prefix=prefix, cache=cache)
        step = model(x[:, :1], cache=cache, return_attention=True)
    assert out.logits.shape == (2, 6, 50)
    assert len(out.attention) == 2
    for weights in out.attention:
        assert weights.shape == (2, 4, 10, 10)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 10))
        assert torch.equal(weights.triu(1), torch.zeros_like(weights))  # causal over prefix and ids alike
    assert step.attention[0].shape == (2, 4, 1, 5)  # the first id attends to the 4 cached prefix positions and itself
    torch.testing.assert_close(step.attention[0][:, :, 0], out.attention[0][:, :, 4, :5], rtol=1e-5, atol=1e-6)


def test_gradients_flow_into_the_prefix():
    model = make().train()
    prefix = torch.randn(2, 3, 32, requires_grad=True)
    model(ids(seq=4), prefix=prefix).sum().backward()
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0


@pytest.mark.parametrize("prefix, error, words", [
    (torch.zeros(2, 3, 16), ValueError, "width 32"),
    (torch.zeros(3, 3, 32), ValueError, "batch=2"),
    (torch.zeros(2, 3, 32, dtype=torch.float64), TypeError, "torch.float32"),
    (torch.zeros(2, 3, 32, dtype=torch.long), TypeError, "torch.float32"),
    (torch.zeros(2, 32), ValueError, "(batch=2, P >= 1, width=32)"),
    (torch.zeros(2, 0, 32), ValueError, "P >= 1"),
    ([[0.0] * 32], TypeError, "torch.Tensor"),
])
def test_a_wrong_prefix_is_refused_saying_what_was_expected(prefix, error, words):
    with pytest.raises(error) as info:
        make()(ids(), prefix=prefix)
    assert words in str(info.value)


def test_empty_ids_need_a_prefix_and_the_cache_counts_the_prefix():
    model = make()
    with pytest.raises(ValueError, match="seq >= 1"):
        model(ids()[:, :0])
    cache = model.new_cache(2, 6)
    with pytest.raises(ValueError, match="holds 6 positions"):
        model(ids(seq=3), prefix=torch.zeros(2, 4, 32), cache=cache)


# ------------------------------------------------------------------------------------------------
# the captioner
# ------------------------------------------------------------------------------------------------

def test_config_defaults_and_errors():
    config = CaptionerConfig()
    assert config.n_patches == 16 and config.vocab_size == len(CAPTION_WORDS)
    assert config.decoder_config.max_positions == 16 + 40 and config.decoder_config.width == 64
    assert config.vision_config.class_token is False
    with pytest.raises(ValueError, match="projector"):
        CaptionerConfig(projector="conv")
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        CaptionerConfig(image_size=30)
    with pytest.raises(ValueError, match="max_caption_tokens"):
        CaptionerConfig(max_caption_tokens=2)
    with pytest.raises(TypeError, match="CaptionerConfig"):
        Captioner(DecoderConfig(**SMALL))


@pytest.mark.parametrize("projector", ["linear", "mlp"])
def test_shapes(projector):
    model = tiny_captioner(projector=projector, vision_width=48)
    images, caption_ids, _ = scenes(3)
    assert model.image_prefix(images).shape == (3, 9, 32)
    logits = model(images, caption_ids[:, :-1])
    assert logits.shape == (3, caption_ids.shape[1] - 1, len(CAPTION_WORDS))
    attention = model.caption_attention(images, caption_ids)
    assert attention.shape == (2, 3, 4, caption_ids.shape[1], 9)  # (layers, batch, heads, caption, patches)


def test_the_default_captioner_is_small():
    assert 100_000 < Captioner().num_parameters() < 400_000


def test_loss_is_cross_entropy_on_the_words_after_bos_and_ignores_pad():
    model = tiny_captioner()
    images, caption_ids, _ = scenes(3)
    assert (caption_ids == PAD_ID).any()  # captions of different lengths: some targets are padding
    loss = caption_loss(model, (images, caption_ids))
    logits = model(images, caption_ids[:, :-1])
    targets = caption_ids[:, 1:]
    keep = targets != PAD_ID
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, expected)
    # more padding changes nothing (causal: later positions do not reach earlier ones)
    padded = torch.cat([caption_ids, torch.full((3, 5), PAD_ID)], dim=1)
    torch.testing.assert_close(caption_loss(model, (images, padded)), loss, rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_vision_tower_and_the_projector():
    model = tiny_captioner()
    images, caption_ids, _ = scenes(3)
    caption_loss(model, (images, caption_ids)).backward()
    for name, module in (("patch projection", model.vision.patch_embed), ("vision block", model.vision.blocks[0]),
                         ("projector", model.projector), ("token embeddings", model.decoder.embed)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


def rig(model: Captioner, script: list[list[int]]) -> None:
    """Make the decoder's head emit ``script[row][call]`` (one scripted token per call, per row)."""
    calls = []

    def hook(module, inputs, output):
        step = len(calls)
        calls.append(step)
        logits = torch.full_like(output, -10.0)
        for row, tokens in enumerate(script):
            logits[row, :, tokens[min(step, len(tokens) - 1)]] = 10.0
        return logits

    model.decoder.lm_head.register_forward_hook(hook)


def test_generation_stops_at_eos_and_pads_after_it():
    model = tiny_captioner()
    images, _, _ = scenes(3)
    red, blue, square = (CAPTION_WORDS.index(w) for w in ("red", "blue", "square"))
    rig(model, [[red, square, EOS_ID, red], [EOS_ID, blue], [blue, blue, blue, blue, EOS_ID]])
    out = model.generate(images, max_len=12)
    expected = torch.tensor([[BOS_ID, red, square, EOS_ID, PAD_ID, PAD_ID, PAD_ID],
                             [BOS_ID, EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
                             [BOS_ID, blue, blue, blue, blue, EOS_ID, PAD_ID]])
    assert torch.equal(out[:, :6], expected[:, :6]) and out.shape == (3, 6)  # stops once every row has ended
    assert out.dtype == torch.long
    assert decode_captions(out) == ["red square", "", "blue blue blue blue"]


def test_generation_without_eos_stops_at_max_len():
    model = tiny_captioner()
    images, _, _ = scenes(2)
    rig(model, [[CAPTION_WORDS.index("a")], [CAPTION_WORDS.index("and")]])
    out = model.generate(images, max_len=5)
    assert out.shape == (2, 5) and not (out == EOS_ID).any()
    with pytest.raises(ValueError, match="max_len"):
        model.generate(images, max_len=1)


def test_cached_generation_equals_greedy_decoding_by_full_forwards():
    model = tiny_captioner(seed=3).eval()
    images, _, _ = scenes(3)
    out = model.generate(images, max_len=8)
    tokens = torch.full((3, 1), BOS_ID)
    with torch.no_grad():
        for _ in range(out.shape[1] - 1):
            tokens = torch.cat([tokens, model(images, tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    ended = (tokens == EOS_ID).long().cumsum(1)
    after_eos = (ended - (tokens == EOS_ID).long()) > 0  # positions after a row's first EOS become PAD
    assert torch.equal(out, tokens.masked_fill(after_eos, PAD_ID))


def test_sampling_is_reproducible_and_restores_training_mode():
    model = tiny_captioner().train()
    images, _, _ = scenes(2)
    first = model.generate(images, 10, greedy=False, temperature=1.5, generator=torch.Generator().manual_seed(0))
    again = model.generate(images, 10, greedy=False, temperature=1.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, again) and model.training
    assert first[:, 0].eq(BOS_ID).all() and int(first.max()) < len(CAPTION_WORDS)
    assert not first.requires_grad and not first.is_inference()


def test_caption_attention_is_the_decoders_attention_from_captions_to_patches():
    model = tiny_captioner()
    images, caption_ids, _ = scenes(2)
    attention = model.caption_attention(images, caption_ids)
    with torch.no_grad():
        maps = model.decoder(caption_ids, prefix=model.image_prefix(images), return_attention=True).attention
    assert torch.equal(attention[1], maps[1][:, :, 9:, :9])
    assert (attention >= 0).all() and (attention.sum(-1) <= 1 + 1e-6).all()
    # the first caption position (<bos>) sees only the patches and itself
    to_itself = torch.stack([weights[:, :, 9, 9] for weights in maps])  # (layers, batch, heads)
    torch.testing.assert_close(attention[:, :, :, 0].sum(-1) + to_itself, torch.ones(2, 2, 4))


def test_captioner_errors_say_what_was_expected():
    model = tiny_captioner()
    images, caption_ids, _ = scenes(2)
    with pytest.raises(ValueError, match="24x24 pixels"):
        model(torch.zeros(2, 3, 32, 32), caption_ids)
    with pytest.raises(TypeError, match="dtype torch.float32"):
        model((images * 255).to(torch.uint8), caption_ids)
    with pytest.raises(ValueError, match="for the 2 images"):
        model(images, caption_ids[:1])
    with pytest.raises(ValueError, match="token ids"):
        model(images, caption_ids.float())
    with pytest.raises(ValueError, match="for the 2 images"):
        model.caption_attention(images, torch.cat([caption_ids, caption_ids]))


def test_caption_batches_and_exact_match():
    images, caption_ids, _ = scenes(5, max_objects=1)
    wide = torch.cat([caption_ids, torch.full((5, 4), PAD_ID)], dim=1)
    batches = caption_batches(images, wide, 3)
    batch_images, batch_ids = batches(torch.Generator().manual_seed(0))
    again = batches(torch.Generator().manual_seed(0))
    assert batch_images.shape == (3, 3, 24, 24) and torch.equal(batch_ids, again[1])
    assert batch_ids.shape[1] == caption_ids.shape[1]  # all-PAD columns dropped
    with pytest.raises(ValueError, match="one caption row per image"):
        caption_batches(images, caption_ids[:4], 3)
    with pytest.raises(ValueError, match="batch_size"):
        caption_batches(images, caption_ids, 0)
    model = tiny_captioner()
    generated = model.generate(images, 12)
    reference = torch.cat([generated, torch.full((5, 12 - generated.shape[1]), PAD_ID)], dim=1)
    assert caption_exact_match(model, images, reference) == 1.0
    reference[0, 1] = (reference[0, 1] + 1) % len(CAPTION_WORDS)
    assert caption_exact_match(model, images, reference) == pytest.approx(0.8)


def test_a_tiny_captioner_learns_a_handful_of_captions_exactly():
    images, caption_ids, captions = scenes(8, seed=3)
    assert len(set(captions)) == 8  # telling them apart needs the image
    model = tiny_captioner(vision_layers=1, n_layers=1)
    history = train(model, lambda generator: (images, caption_ids), steps=300, loss_fn=caption_loss, lr=1e-2,
                    warmup=10, progress=False, device="cpu", eval_every=25,
                    evaluate=lambda m: {"exact": caption_exact_match(m, images, caption_ids)},
                    stop=lambda metrics: metrics["exact"] == 1.0)
    assert history.final("exact") == 1.0, history.eval_metrics
    assert history.train_loss[-1] < 0.1 * history.train_loss[0]
    assert decode_captions(model.generate(images, caption_ids.shape[1])) == captions
