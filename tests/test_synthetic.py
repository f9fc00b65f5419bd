"""companion.data.synthetic: the order task and the recall task, checked against their definitions."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.data import order_task, passkey_task, recall_task

A, B = 0, 1


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -------------------------------------------------------------------------------------- order_task
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 50), length=st.integers(2, 40), vocab_size=st.integers(3, 20), seed=st.integers(0, 2**31))
def test_order_task_rows_hold_one_a_one_b_and_the_label_says_whether_a_comes_first(n, length, vocab_size, seed):
    inputs, labels = order_task(n, length=length, vocab_size=vocab_size, generator=seeded(seed))
    assert inputs.shape == (n, length) and labels.shape == (n,)
    assert inputs.dtype == torch.long and labels.dtype == torch.long
    for row, label in zip(inputs.tolist(), labels.tolist()):
        assert row.count(A) == 1 and row.count(B) == 1
        assert all(2 <= token < vocab_size for token in row if token not in (A, B))
        assert label == int(row.index(A) < row.index(B))


def test_order_task_labels_are_balanced_and_positions_spread():
    inputs, labels = order_task(4000, length=16, generator=seeded(0))
    assert 0.45 < labels.float().mean().item() < 0.55
    positions_of_a = (inputs == A).float().argmax(dim=1)
    assert set(positions_of_a.tolist()) == set(range(16))
    # fillers cover the filler vocabulary
    assert set(inputs[(inputs != A) & (inputs != B)].tolist()) == set(range(2, 12))


def test_order_task_swapping_a_and_b_flips_the_label():
    inputs, labels = order_task(100, generator=seeded(1))
    swapped = inputs.clone()
    swapped[inputs == A], swapped[inputs == B] = B, A
    recomputed = ((swapped == A).float().argmax(1) < (swapped == B).float().argmax(1)).long()
    assert torch.equal(recomputed, 1 - labels)
    # ... with the same multiset of tokens (a bag of words cannot tell them apart)
    assert torch.equal(inputs.sort(dim=1).values, swapped.sort(dim=1).values)


def test_order_task_is_reproducible_with_a_seeded_generator():
    first = order_task(64, generator=seeded(7))
    second = order_task(64, generator=seeded(7))
    other = order_task(64, generator=seeded(8))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_order_task_smallest_case():
    inputs, labels = order_task(200, length=2, vocab_size=3, generator=seeded(2))
    assert torch.equal(labels, (inputs[:, 0] == A).long())
    assert set(labels.tolist()) == {0, 1}


@pytest.mark.parametrize("kwargs, name", [
    ({"n": 0}, "n"), ({"n": -1}, "n"), ({"n": 2.0}, "n"), ({"n": True}, "n"),
    ({"n": 4, "length": 0}, "length"), ({"n": 4, "vocab_size": 0}, "vocab_size"),
    ({"n": 4, "length": 1}, "length >= 2"), ({"n": 4, "vocab_size": 2}, "vocab_size >= 3"),
])
def test_order_task_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        order_task(**kwargs)


# ------------------------------------------------------------------------------------- recall_task
@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 30), length=st.integers(1, 50), vocab_size=st.integers(1, 20),
       seed=st.integers(0, 2**31))
def test_recall_task_label_is_the_token_distance_steps_before_the_end(data, n, length, vocab_size, seed):
    distance = data.draw(st.integers(0, length - 1))
    inputs, labels = recall_task(n, distance=distance, length=length, vocab_size=vocab_size,
                                 generator=seeded(seed))
    assert inputs.shape == (n, length) and labels.shape == (n,)
    assert inputs.dtype == torch.long and labels.dtype == torch.long
    assert 0 <= int(inputs.min()) and int(inputs.max()) < vocab_size
    for row, label in zip(inputs.tolist(), labels.tolist()):
        assert label == list(reversed(row))[distance]


def test_recall_task_ends():
    inputs, labels = recall_task(50, distance=0, length=10, generator=seeded(0))
    assert torch.equal(labels, inputs[:, -1])
    inputs, labels = recall_task(50, distance=9, length=10, generator=seeded(0))
    assert torch.equal(labels, inputs[:, 0])


def test_recall_task_labels_do_not_alias_the_inputs():
    inputs, labels = recall_task(8, distance=2, length=5, generator=seeded(0))
    before = labels.clone()
    inputs += 1
    assert torch.equal(labels, before)


def test_recall_task_is_reproducible_and_uses_the_whole_vocabulary():
    first = recall_task(500, distance=3, generator=seeded(4))
    second = recall_task(500, distance=3, generator=seeded(4))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert set(first[1].tolist()) == set(range(8))


@pytest.mark.parametrize("kwargs, name", [
    ({"distance": 10, "length": 10}, "distance"),
    ({"distance": -1}, "distance"),
    ({"distance": 1.0}, "distance"),
    ({"distance": True}, "distance"),
    ({"distance": 0, "length": 0}, "length"),
    ({"distance": 0, "vocab_size": 0}, "vocab_size"),
    ({"distance": 0, "n": 0}, "n must"),
])
def test_recall_task_rejects_bad_arguments(kwargs, name):
    kwargs.setdefault("n", 4)
    with pytest.raises(ValueError, match=name):
        recall_task(**kwargs)


# ------------------------------------------------------------------------------------ passkey_task
@given(n=st.integers(1, 20), length=st.integers(3, 40), keys=st.integers(1, 12), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_passkey_task_hides_one_marker_and_key_and_asks_at_the_end(n, length, keys, seed):
    vocab = 7
    filler = torch.randint(0, vocab, (length + 5,), generator=seeded(seed))
    original = filler.clone()
    inputs, labels = passkey_task(n, length=length, filler=filler, vocab_size=vocab, keys=keys, generator=seeded(seed))
    assert inputs.shape == (n, length) and labels.shape == (n,)
    assert inputs.dtype == labels.dtype == torch.long
    assert torch.equal(filler, original)  # the filler stream is not written into
    assert ((labels >= vocab + 2) & (labels < vocab + 2 + keys)).all()
    assert (inputs[:, -1] == vocab + 1).all()
    assert ((inputs == vocab + 1).sum(1) == 1).all()  # one question, at the end
    assert ((inputs == vocab).sum(1) == 1).all()      # one marker ...
    assert ((inputs >= vocab + 2).sum(1) == 1).all()  # ... and one key
    marker = (inputs == vocab).float().argmax(1)
    rows = torch.arange(n)
    assert (marker <= length - 3).all()
    assert torch.equal(inputs[rows, marker + 1], labels)  # the key follows the marker
    # every other token is the filler window it was cut from: find the window start for each row
    for row in range(n):
        rest = [i for i in range(length - 1) if i not in (int(marker[row]), int(marker[row]) + 1)]
        starts = [s for s in range(filler.numel() - length + 1)
                  if all(int(inputs[row, i]) == int(filler[s + i]) for i in rest)]
        assert starts, "filler tokens do not come from one window of the filler"


def test_passkey_task_draws_every_key_and_every_place():
    filler = torch.arange(100) % 5
    inputs, labels = passkey_task(3000, length=12, filler=filler, vocab_size=5, keys=4, generator=seeded(1))
    assert sorted(labels.unique().tolist()) == [7, 8, 9, 10]
    places = (inputs == 5).float().argmax(1)
    assert sorted(places.unique().tolist()) == list(range(10))
    again, _ = passkey_task(3000, length=12, filler=filler, vocab_size=5, keys=4, generator=seeded(1))
    assert torch.equal(inputs, again)


@pytest.mark.parametrize("kwargs, message", [
    (dict(length=2), "length >= 3"),
    (dict(length=0), "length must be a positive int"),
    (dict(keys=0), "keys must be a positive int"),
    (dict(filler=[1, 2, 3, 4]), "1-D torch.long tensor"),
    (dict(filler=torch.ones(2, 10, dtype=torch.long)), "1-D torch.long tensor"),
    (dict(filler=torch.ones(20)), "1-D torch.long tensor"),
    (dict(filler=torch.ones(5, dtype=torch.long)), "at least length=8"),
    (dict(filler=torch.full((20,), 9)), r"\[0, vocab_size=9\)"),
    (dict(filler=torch.full((20,), -1)), r"\[0, vocab_size=9\)"),
])
def test_passkey_task_rejects_bad_input(kwargs, message):
    arguments = dict(length=8, filler=torch.zeros(20, dtype=torch.long), vocab_size=9) | kwargs
    with pytest.raises(ValueError, match=message):
        passkey_task(4, **arguments)
