"""Induction-head analysis: repeated inputs, attention scores on hand-built patterns, the OV circuit
read from the weights against the layer's own forward, head ablation, and the loss on repeats."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from companion.interpret import (ablate_heads, attention_patterns, copying_scores, loss_on_repeats, ov_logits,
                                 ov_outputs, prefix_matching_scores, previous_token_scores,
                                 repeated_random_tokens)
from companion.models import Decoder, DecoderConfig

SMALL = dict(vocab_size=23, width=16, n_layers=2, n_heads=4)


def make(**changes) -> Decoder:
    torch.manual_seed(0)
    return Decoder(DecoderConfig(**{**SMALL, **changes})).eval()


def tokens(n=3, length=6, vocab=23, seed=1):
    return repeated_random_tokens(n, length=length, vocab_size=vocab, generator=torch.Generator().manual_seed(seed))


# --- inputs -------------------------------------------------------------------------------------

def test_repeated_random_tokens_repeat_and_are_seeded():
    x = tokens(n=4, length=7, vocab=11)
    assert x.shape == (4, 14) and x.dtype == torch.long
    assert torch.equal(x[:, :7], x[:, 7:])
    assert int(x.min()) >= 0 and int(x.max()) < 11
    assert torch.equal(x, tokens(n=4, length=7, vocab=11))
    assert not torch.equal(x, tokens(n=4, length=7, vocab=11, seed=2))


@pytest.mark.parametrize("kwargs, error", [
    (dict(n=0, length=3, vocab_size=5), ValueError), (dict(n=2, length=0, vocab_size=5), ValueError),
    (dict(n=2, length=3, vocab_size=0), ValueError), (dict(n=2.0, length=3, vocab_size=5), TypeError),
    (dict(n=True, length=3, vocab_size=5), TypeError), (dict(n=2, length=3, vocab_size=5, generator=1), TypeError),
])
def test_repeated_random_tokens_rejects_bad_arguments(kwargs, error):
    n = kwargs.pop("n")
    with pytest.raises(error):
        repeated_random_tokens(n, **kwargs)


# --- scores on hand-built patterns ----------------------------------------------------------------

def hand_built(length=3):
    """Two heads on 2L positions. Head 0: previous token in the first repeat (and 0 -> 0), the
    induction target i - L + 1 in the second. Head 1: uniform over the causal past."""
    seq = 2 * length
    w = torch.zeros(1, 2, seq, seq)
    w[0, 0, 0, 0] = 1
    for i in range(1, length):
        w[0, 0, i, i - 1] = 1
    for i in range(length, seq):
        w[0, 0, i, i - length + 1] = 1
    for i in range(seq):
        w[0, 1, i, : i + 1] = 1 / (i + 1)
    return w


def test_prefix_matching_on_a_hand_built_pattern():
    # L = 3: head 0 is a perfect induction head; head 1 gives 1/(i+1) to every key, i = 3, 4, 5
    scores = prefix_matching_scores(hand_built(3), 3)
    assert scores.shape == (1, 2)
    assert scores[0, 0].item() == 1.0
    assert scores[0, 1].item() == pytest.approx((1 / 4 + 1 / 5 + 1 / 6) / 3)  # 37/180


def test_previous_token_on_a_hand_built_pattern():
    # head 0: i = 1, 2 attend to i - 1; i = 3 attends to 1 (= i - L + 1, not i - 1 = 2); i = 4 to 2 (no),
    # i = 5 to 3 (no): 2 of 5 queries. Head 1: mean of 1/(i+1) over i = 1..5
    scores = previous_token_scores(hand_built(3))
    assert scores[0, 0].item() == pytest.approx(2 / 5)
    assert scores[0, 1].item() == pytest.approx(sum(1 / (i + 1) for i in range(1, 6)) / 5)


def test_scores_average_over_the_batch_and_take_layers_with_none():
    w = hand_built(3)
    batch = torch.cat([w, w.flip(1)])  # second sequence: the heads swapped
    expected = (1.0 + 37 / 180) / 2
    scores = prefix_matching_scores([batch, None, batch], 3)
    assert scores.shape == (3, 2)
    assert torch.isnan(scores[1]).all()
    torch.testing.assert_close(scores[0], torch.tensor([expected, expected]))
    assert torch.equal(scores[0], scores[2])


def test_prefix_matching_with_a_prefix_token():
    # a beginning-of-sequence token in front: the repeats are the last 2L positions
    length = 3
    w = torch.zeros(1, 1, 2 * length + 1, 2 * length + 1)
    w[0, 0, :, 0] = 1
    for i in range(length + 1, 2 * length + 1):
        w[0, 0, i] = 0
        w[0, 0, i, i - length + 1] = 1
    assert prefix_matching_scores(w, length).item() == 1.0


@pytest.mark.parametrize("weights, length, error", [
    (torch.zeros(1, 2, 6, 5), 3, ValueError), (torch.zeros(2, 6, 6), 3, ValueError),
    (torch.zeros(1, 2, 5, 5), 3, ValueError), (torch.zeros(1, 2, 6, 6), 0, ValueError),
    (torch.zeros(1, 2, 6, 6), 2.5, TypeError), ([], 3, ValueError), (["not a tensor"], 3, TypeError),
])
def test_prefix_matching_rejects_bad_input(weights, length, error):
    with pytest.raises(error):
        prefix_matching_scores(weights, length)


def test_previous_token_needs_two_positions():
    with pytest.raises(ValueError, match="2 positions"):
        previous_token_scores(torch.ones(1, 1, 1, 1))


# --- on a real decoder ----------------------------------------------------------------------------

def test_attention_patterns_are_the_decoders_own_weights():
    model = make(mixers=("attention", "s4d"))
    x = tokens()
    maps = attention_patterns(model, x)
    assert len(maps) == 2 and maps[1] is None
    assert maps[0].shape == (3, 4, 12, 12)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(3, 4, 12))
    assert torch.equal(maps[0].triu(1), torch.zeros_like(maps[0]))  # causal
    with torch.no_grad():
        assert torch.equal(maps[0], model(x, return_attention=True).attention[0])
    scores = prefix_matching_scores(maps, 6)
    assert scores.shape == (2, 4) and torch.isnan(scores[1]).all() and (scores[0] >= 0).all()
    with pytest.raises(TypeError, match="Decoder"):
        attention_patterns(torch.nn.Linear(2, 2), x)


def all_same(token: int, seq=5) -> torch.Tensor:
    return torch.full((1, seq), token, dtype=torch.long)


@pytest.mark.parametrize("changes", [{}, {"n_kv_heads": 2, "attention_bias": True},
                                     {"norm": "layernorm", "embed_scale": 2.0},
                                     {"norm_position": "post", "positions": "alibi"}])
def test_ov_outputs_are_what_layer_0_writes(changes):
    # a sequence of one repeated token: every head attends only to copies of it, so layer 0's mixer
    # output is the sum of the heads' OV outputs for that token, plus the output projection's bias
    model = make(**changes)
    outputs = ov_outputs(model, 0)
    assert outputs.shape == (4, 23, 16)
    captured = {}
    model.blocks[0].mixer.register_forward_hook(lambda m, a, out: captured.update(y=out[0]))
    bias = model.blocks[0].mixer.out.bias
    for t in (0, 7, 22):
        with torch.no_grad():
            model(all_same(t))
        expected = outputs[:, t].sum(0) + (0 if bias is None else bias)
        torch.testing.assert_close(captured["y"][0], expected.expand(5, 16), atol=1e-6, rtol=1e-5)


def copying_model(sign_1: float) -> Decoder:
    """Width = vocab = 8, one-hot embeddings and unembedding, two heads of 8 dims whose values are the
    identity; head 0 writes +value, head 1 writes sign_1 * value."""
    model = make(vocab_size=8, width=8, n_layers=1, n_heads=2, head_dim=8)
    eye = torch.eye(8)
    with torch.no_grad():
        model.embed.weight.copy_(eye)
        model.lm_head.weight.copy_(eye)
        mixer = model.blocks[0].mixer
        mixer.qkv.weight[32:40] = eye  # head 0's value (rows: 2 x 8 queries, 2 x 8 keys, then values)
        mixer.qkv.weight[40:48] = eye
        mixer.out.weight.copy_(torch.cat([eye, sign_1 * eye], dim=1))
    return model


def test_copying_scores_of_a_copying_and_a_suppressing_head():
    model = copying_model(-1.0)
    m = ov_logits(model, 0)
    assert m.shape == (2, 8, 8)
    # RMSNorm of a one-hot vector: sqrt(width) times it (up to eps)
    torch.testing.assert_close(m[0], math.sqrt(8) * torch.eye(8), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(m[1], -math.sqrt(8) * torch.eye(8), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(copying_scores(model), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(copying_scores(model, method="top1"), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(copying_scores(model, method="eigenvalues"), torch.tensor([[1.0, -1.0]]))


def test_copying_eigenvalues_equal_those_of_the_full_matrix():
    model = make(n_kv_heads=2, attention_bias=True, norm="layernorm")
    fast = copying_scores(model, method="eigenvalues")
    assert fast.shape == (2, 4)
    for layer in range(2):
        eig = torch.linalg.eigvals(ov_logits(model, layer).double())  # (heads, vocab), rank <= head_dim
        torch.testing.assert_close(fast[layer], (eig.sum(-1).real / eig.abs().sum(-1)).float(), atol=1e-5,
                                   rtol=1e-4)
    raised = copying_scores(model)
    assert ((raised >= 0) & (raised <= 1)).all()
    only_1 = copying_scores(model, layers=[1])
    assert torch.isnan(only_1[0]).all() and torch.equal(only_1[1], raised[1])


def test_copying_scores_reject_bad_arguments():
    model = make(mixers=("attention", "s4d"))
    assert torch.isnan(copying_scores(model)[1]).all()
    with pytest.raises(ValueError, match="method"):
        copying_scores(model, method="diagonal")
    with pytest.raises(ValueError, match="layers"):
        copying_scores(model, layers=[2])
    with pytest.raises(ValueError, match="not an Attention"):
        ov_outputs(model, 1)


# --- ablation -------------------------------------------------------------------------------------

ALL_HEADS = [(layer, head) for layer in range(2) for head in range(4)]


def test_ablating_no_head_is_bit_identical_and_all_heads_changes_the_output():
    model = make()
    x = tokens()
    with torch.no_grad():
        before = model(x)
        with ablate_heads(model, []) as same:
            assert same is model
            none = model(x)
        with ablate_heads(model, ALL_HEADS):
            ablated = model(x)
        after = model(x)
    assert torch.equal(none, before)
    assert torch.equal(after, before)  # the hooks are gone
    assert not torch.allclose(ablated, before, atol=1e-3)


def test_zero_ablation_equals_zeroing_the_heads_output_columns():
    model = make(n_kv_heads=2)
    x = tokens()
    for heads in (ALL_HEADS, [(0, 1), (1, 3)]):
        edited = copy.deepcopy(model)
        with torch.no_grad():
            for layer, head in heads:
                edited.blocks[layer].mixer.out.weight[:, head * 4:(head + 1) * 4] = 0
            with ablate_heads(model, heads):
                ablated = model(x)
            expected = edited(x)
        torch.testing.assert_close(ablated, expected, atol=1e-6, rtol=1e-5)
    # with every head gone, the mixers add exactly nothing: the same as weights of zero
    with torch.no_grad():
        for block in edited.blocks:
            block.mixer.out.weight.zero_()
        with ablate_heads(model, ALL_HEADS):
            assert torch.equal(model(x), edited(x))


def test_zero_ablation_of_latent_attention_heads():
    # multi-head latent attention also concatenates its heads (v_head_dim = 6 each) before `out`
    from companion.nn.latent_attention import LatentShape
    model = make(n_layers=1, mixers=("latent_attention",), latent=LatentShape(8, None, 4, 4, 6))
    edited = copy.deepcopy(model)
    x = tokens()
    with torch.no_grad():
        edited.blocks[0].mixer.out.weight[:, 6:12] = 0
        with ablate_heads(model, [(0, 1)]):
            ablated = model(x)
        torch.testing.assert_close(ablated, edited(x), atol=1e-6, rtol=1e-5)
        assert not torch.allclose(ablated, model(x), atol=1e-4)


def test_mean_ablation_replaces_a_head_by_its_average_output():
    model = make()
    x, reference = tokens(), tokens(n=5, seed=3)
    captured = {}
    out = model.blocks[1].mixer.out
    handle = out.register_forward_pre_hook(lambda m, a: captured.update(o=a[0].clone()))
    with torch.no_grad():
        model(reference)
        mean = captured["o"].reshape(-1, 16).mean(0)[8:12]
        with ablate_heads(model, [(1, 2)], mode="mean", reference=reference):
            ablated = model(x)
        assert captured["o"].shape == (3, 12, 16)  # the recording hook runs before the ablating one
        plain = model(x)
    handle.remove()
    assert not torch.allclose(ablated, plain, atol=1e-4)
    # the same as adding (mean - o_2) W_O^2 to layer 1's output: check through a hand-edited model
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.blocks[1].mixer.out.register_forward_pre_hook(
            lambda m, a: (torch.cat([a[0][..., :8], mean.expand(*a[0].shape[:-1], 4), a[0][..., 12:]], -1),))
        torch.testing.assert_close(edited(x), ablated)


def test_ablation_hooks_are_removed_after_an_exception():
    model = make()
    x = tokens()
    with torch.no_grad():
        before = model(x)
        with pytest.raises(RuntimeError, match="inside"):
            with ablate_heads(model, ALL_HEADS):
                raise RuntimeError("inside")
        assert torch.equal(model(x), before)
    assert all(not block.mixer.out._forward_pre_hooks for block in model.blocks)


@pytest.mark.parametrize("heads, kwargs, error", [
    ([(2, 0)], {}, ValueError), ([(0, 4)], {}, ValueError), ([(0, -1)], {}, ValueError),
    ([(0,)], {}, TypeError), ([(0, 1.0)], {}, TypeError), ([0], {}, TypeError),
    ([(0, 1)], {"mode": "resample"}, ValueError), ([(0, 1)], {"mode": "mean"}, ValueError),
    ([(0, 1)], {"reference": torch.zeros(1, 3, dtype=torch.long)}, ValueError),
])
def test_ablation_rejects_bad_arguments(heads, kwargs, error):
    model = make()
    with pytest.raises(error):
        with ablate_heads(model, heads, **kwargs):
            pass
    assert all(not block.mixer.out._forward_pre_hooks for block in model.blocks)


def test_ablation_refuses_a_layer_without_heads():
    with pytest.raises(ValueError, match="S4DLayer"):
        with ablate_heads(make(mixers=("attention", "s4d")), [(1, 0)]):
            pass


# --- the loss on repeats --------------------------------------------------------------------------

def test_loss_on_repeats_splits_the_per_position_loss():
    model = make()
    x = tokens(n=4, length=6)
    result = loss_on_repeats(model, x)
    with torch.no_grad():
        logits = model(x[:, :-1])
    per = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none").mean(0)
    assert result.per_position.shape == (11,)
    torch.testing.assert_close(result.per_position, per)
    assert result.first == pytest.approx(per[:5].mean().item())
    assert result.second == pytest.approx(per[6:].mean().item())
    assert result.in_context_gain == pytest.approx(result.first - result.second)
    # an untrained model cannot use the repeat: both near log(vocab)
    assert abs(result.first - math.log(23)) < 0.3 and abs(result.second - math.log(23)) < 0.3


class Inductor(Decoder):
    """A decoder whose logits are those of a perfect induction rule: after token a, predict what
    followed a's first occurrence (uniform when a has not occurred before)."""

    def forward(self, ids, **kwargs):
        logits = torch.zeros(*ids.shape, self.config.vocab_size)
        for b in range(ids.shape[0]):
            for i in range(ids.shape[1]):
                earlier = [j for j in range(i) if ids[b, j] == ids[b, i] and j + 1 < ids.shape[1]]
                if earlier:
                    logits[b, i, ids[b, earlier[0] + 1]] = 100.0
        return logits


def test_loss_on_repeats_of_a_perfect_inductor():
    model = Inductor(DecoderConfig(**SMALL))
    length = 6
    x = torch.stack([torch.randperm(23, generator=torch.Generator().manual_seed(s))[:length] for s in range(3)])
    result = loss_on_repeats(model, torch.cat([x, x], 1))
    assert result.first == pytest.approx(math.log(23))
    assert result.second < 1e-6
    assert result.in_context_gain == pytest.approx(math.log(23), abs=1e-5)


@pytest.mark.parametrize("x", [torch.zeros(2, 7, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long),
                               torch.arange(8).view(1, 8), torch.zeros(8, dtype=torch.long), [[0, 0, 0, 0]]])
def test_loss_on_repeats_rejects_bad_tokens(x):
    with pytest.raises(ValueError):
        loss_on_repeats(make(), x)


# --- end to end: induction heads form in a tiny attention-only model -----------------------------

def test_a_trained_two_layer_model_grows_induction_heads():
    # two attention-only layers trained on repeated random tokens (about 3 s): the second half becomes
    # predictable, a layer-1 head matches prefixes and copies, and ablating it loses the skill
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(vocab_size=16, width=32, n_layers=2, n_heads=2, feedforwards=("none", "none")))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        x = repeated_random_tokens(32, length=8, vocab_size=16, generator=g)
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 16), x[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    x = repeated_random_tokens(64, length=8, vocab_size=16, generator=torch.Generator().manual_seed(9))
    result = loss_on_repeats(model, x)
    assert result.first > 0.8 * math.log(16) and result.second < 0.3
    prefix = prefix_matching_scores(attention_patterns(model, x), 8)
    head = int(prefix[1].argmax())
    assert prefix[1, head] > 0.8 and prefix[0].max() < 0.5
    assert copying_scores(model)[1, head] > 0.8
    assert copying_scores(model, method="eigenvalues")[1, head] > 0.5
    with ablate_heads(model, [(1, 0), (1, 1)]):
        assert loss_on_repeats(model, x).second > 1.0
    assert loss_on_repeats(model, x).second == result.second
