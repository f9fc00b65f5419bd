"""companion.models: what each model can and cannot see, shapes, and input validation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.models import BagOfWordsClassifier, RecurrentClassifier, WindowLM

VOCAB = 11


def ids(batch, seq, seed=0, vocab=VOCAB):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def bag(seed=0):
    torch.manual_seed(seed)
    return BagOfWordsClassifier(VOCAB, dim=8, num_classes=3, hidden=16).double().eval()


def recurrent(cell="gru", seed=0):
    torch.manual_seed(seed)
    return RecurrentClassifier(VOCAB, dim=8, hidden=12, num_classes=3, cell=cell).double().eval()


def window_lm(window=4, seed=0):
    torch.manual_seed(seed)
    # a larger init than the default 0.02, so that a changed token visibly changes the logits
    return WindowLM(VOCAB, window=window, dim=6, hidden=16, init_std=1.0).double().eval()


# ---------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("batch, seq", [(1, 1), (3, 7), (2, 20)])
def test_output_shapes(batch, seq):
    x = ids(batch, seq)
    assert bag()(x).shape == (batch, 3)
    assert recurrent("rnn")(x).shape == (batch, 3)
    assert recurrent("gru")(x).shape == (batch, 3)
    assert window_lm()(x).shape == (batch, seq, VOCAB)


# ---------------------------------------------------------------------------- bag of words vs order
@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 4), seq=st.integers(1, 12), seed=st.integers(0, 2**31))
def test_bag_of_words_is_invariant_to_any_permutation(batch, seq, seed):
    model = bag(seed % 100)
    x = ids(batch, seq, seed)
    permutation = torch.randperm(seq, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        torch.testing.assert_close(model(x[:, permutation]), model(x))
    # a different permutation for each row too
    rows = torch.stack([x[i, torch.randperm(seq, generator=torch.Generator().manual_seed(seed + i))]
                        for i in range(batch)])
    with torch.no_grad():
        torch.testing.assert_close(model(rows), model(x))


def test_bag_of_words_sees_which_tokens_occur():
    model = bag()
    x = ids(2, 6)
    changed = x.clone()
    changed[:, 0] = (x[:, 0] + 1) % VOCAB
    with torch.no_grad():
        assert (model(changed) - model(x)).abs().max() > 1e-6


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_recurrent_classifier_depends_on_order(cell):
    model = recurrent(cell)
    x = ids(4, 8, seed=3)
    with torch.no_grad():
        original, reversed_ = model(x), model(x.flip(1))
    # same tokens, same counts, different order: the logits of every row differ
    assert ((original - reversed_).abs().amax(dim=1) > 1e-4).all()


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_unrolled_states_logits_equal_forward(cell):
    model = recurrent(cell)
    x = ids(3, 9, seed=5)
    logits, states = model.unrolled_states(x)
    assert len(states) == 9 and all(s.shape == (3, 12) for s in states)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))
        hidden, _ = model.mixer(model.embed(x))
        torch.testing.assert_close(torch.stack(states, dim=1), hidden)


# ---------------------------------------------------------------------------------------- WindowLM
def changed_at(x, position):
    y = x.clone()
    y[:, position] = (x[:, position] + 1 + torch.arange(x.shape[0])) % VOCAB
    return y


@settings(max_examples=30, deadline=None)
@given(window=st.integers(1, 6), seq=st.integers(1, 14), data=st.data(), seed=st.integers(0, 2**31))
def test_window_lm_is_causal_and_sees_only_window_tokens_back(window, seq, data, seed):
    model = window_lm(window, seed % 50)
    position = data.draw(st.integers(0, seq - 1))
    x = ids(2, seq, seed)
    with torch.no_grad():
        before, after = model(x), model(changed_at(x, position))
    for t in range(seq):
        difference = (after[:, t] - before[:, t]).abs().max().item()
        if position <= t < position + window:
            assert difference > 1e-6, f"logits at {t} ignore the token at {position} (window {window})"
        else:
            assert difference == 0, f"logits at {t} depend on the token at {position} (window {window})"


def test_window_lm_matches_its_docstring_formula():
    model = window_lm(window=3)
    x = ids(2, 5, seed=9)
    E = model.embed.weight
    pad = E[VOCAB]
    with torch.no_grad():
        logits = model(x)
        for b in range(2):
            for t in range(5):
                parts = [E[x[b, s]] if s >= 0 else pad for s in range(t - 2, t + 1)]
                e = torch.cat(parts)
                expected = model.out.weight @ torch.tanh(model.hidden.weight @ e + model.hidden.bias) + model.out.bias
                torch.testing.assert_close(logits[b, t], expected)


def test_window_lm_padding_row_is_not_an_embedding_but_fills_the_start():
    model = window_lm(window=3)
    assert model.embeddings.shape == (VOCAB, 6)
    torch.testing.assert_close(model.embeddings, model.embed.weight[:VOCAB])
    assert model.embed.weight.shape == (VOCAB + 1, 6)
    x = ids(2, 6)
    with torch.no_grad():
        before = model(x)
        model.embed.weight[VOCAB] += 1.0  # change only the padding row
        after = model(x)
        assert torch.equal(model.embeddings, model.embed.weight[:VOCAB])
    # positions 0 and 1 look back past the start (window 3); from position 2 on, no padding
    assert (after[:, :2] - before[:, :2]).abs().amax(dim=(0, 2)).min() > 1e-6
    assert torch.equal(after[:, 2:], before[:, 2:])


def test_window_lm_initial_embeddings_are_small():
    torch.manual_seed(0)
    model = WindowLM(1000, window=2, dim=32)
    assert 0.015 < model.embed.weight.std().item() < 0.025


@pytest.mark.parametrize("kwargs, message", [
    ({"window": 0}, "window"), ({"dim": 0}, "positive"), ({"hidden": 0}, "positive"),
])
def test_window_lm_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WindowLM(VOCAB, **kwargs)


def test_window_lm_rejects_an_empty_vocabulary():
    with pytest.raises(ValueError, match="positive"):
        WindowLM(0)


# ----------------------------------------------------------------------------------------- bad ids
BAD_IDS = {
    "float": torch.zeros(2, 5),
    "int32": torch.zeros(2, 5, dtype=torch.int32),
    "negative": torch.tensor([[0, -1, 2]]),
    "too large": torch.tensor([[0, VOCAB, 2]]),
    "1-D": torch.zeros(5, dtype=torch.long),
    "3-D": torch.zeros(2, 3, 4, dtype=torch.long),
}


@pytest.mark.parametrize("name", list(BAD_IDS))
@pytest.mark.parametrize("make", [bag, recurrent, window_lm], ids=["bag", "recurrent", "window_lm"])
def test_bad_ids_raise_value_error(make, name):
    model = make()
    with pytest.raises(ValueError, match="token ids|torch.long"):
        model(BAD_IDS[name])
    if isinstance(model, RecurrentClassifier):
        with pytest.raises(ValueError, match="token ids|torch.long"):
            model.unrolled_states(BAD_IDS[name])


@pytest.mark.parametrize("model", [BagOfWordsClassifier(5, 4, 2), RecurrentClassifier(5, 4, 6, 2)])
def test_empty_sequences_are_rejected(model):
    with pytest.raises(ValueError, match="at least one token"):
        model(torch.zeros(3, 0, dtype=torch.long))
