"""companion.data.synthetic: every synthetic task, checked against its definition."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.data import (associative_recall_task, induction_task, order_task, pair_lookup_task, passkey_task,
                            recall_task, selective_copy_task)

A, B = 0, 1


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def drawn_reproducibly(task, seed: int, **kwargs):
    """``task(**kwargs)`` drawn with ``seed`` twice and with ``seed + 1``: the same seed must give the same
    tensors, another seed other inputs. Returns the first draw."""
    first = task(generator=seeded(seed), **kwargs)
    again = task(generator=seeded(seed), **kwargs)
    other = task(generator=seeded(seed + 1), **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    return first


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
    drawn_reproducibly(order_task, 7, n=64)


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
    first = drawn_reproducibly(recall_task, 4, n=500, distance=3)
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


# ------------------------------------------------------------------------- associative_recall_task
@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 30), pairs=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_associative_recall_label_is_the_value_paired_with_the_query_key(data, n, pairs, seed):
    key_vocab = data.draw(st.integers(pairs, pairs + 6))
    vocab_size = data.draw(st.integers(key_vocab + 1, key_vocab + 8))
    inputs, labels = associative_recall_task(n, pairs=pairs, vocab_size=vocab_size, key_vocab=key_vocab,
                                             generator=seeded(seed))
    assert inputs.shape == (n, 2 * pairs + 1) and labels.shape == (n,)
    assert inputs.dtype == labels.dtype == torch.long
    for row, label in zip(inputs.tolist(), labels.tolist()):
        keys, values, query = row[0:-1:2], row[1::2], row[-1]
        assert len(set(keys)) == pairs                      # distinct keys ...
        assert all(0 <= key < key_vocab for key in keys)     # ... from the key part of the vocabulary
        assert all(key_vocab <= value < vocab_size for value in values)
        assert query in keys
        assert label == dict(zip(keys, values))[query]


def test_associative_recall_default_split_and_next_token_targets():
    inputs, labels = associative_recall_task(200, pairs=3, vocab_size=10, generator=seeded(0))
    assert int(inputs[:, 0:-1:2].max()) < 5 <= int(inputs[:, 1::2].min())  # keys 0..4, values 5..9
    again, targets = associative_recall_task(200, pairs=3, vocab_size=10, next_token=True, generator=seeded(0))
    assert torch.equal(again, inputs)
    assert targets.shape == inputs.shape
    assert torch.equal(targets[:, -1], labels) and (targets[:, :-1] == -100).all()
    # the default loss skips -100: only the answer position counts
    logits = torch.randn(200, 7, 10)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), targets.reshape(-1))
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits[:, -1], labels))


def test_associative_recall_is_reproducible_and_spread():
    first = drawn_reproducibly(associative_recall_task, 3, n=3000, pairs=4, vocab_size=16)
    inputs, labels = first
    assert set(labels.tolist()) == set(range(8, 16))
    asked = (inputs[:, 0:-1:2] == inputs[:, -1:]).float().argmax(1)  # which pair the query asks for
    assert set(asked.tolist()) == set(range(4))
    assert set(inputs[:, 0:-1:2].flatten().tolist()) == set(range(8))


def test_associative_recall_smallest_case():
    inputs, labels = associative_recall_task(20, pairs=1, vocab_size=2, generator=seeded(5))
    assert (inputs == torch.tensor([0, 1, 0])).all() and (labels == 1).all()


@pytest.mark.parametrize("kwargs, name", [
    ({"n": 0}, "n must"), ({"pairs": 0}, "pairs"), ({"pairs": 2.0}, "pairs"), ({"pairs": True}, "pairs"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"pairs": 5, "vocab_size": 8}, "key_vocab"),                     # 4 key tokens cannot hold 5 distinct keys
    ({"key_vocab": 8}, "key_vocab"), ({"key_vocab": 2}, "key_vocab"),  # no value token left; too few keys
    ({"key_vocab": 4.0}, "key_vocab"), ({"next_token": 1}, "next_token"),
])
def test_associative_recall_rejects_bad_arguments(kwargs, name):
    arguments = {"n": 4, "pairs": 3, "vocab_size": 8} | kwargs
    with pytest.raises(ValueError, match=name):
        associative_recall_task(**arguments)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), pairs=st.integers(1, 7), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_multi_query_recall_asks_distinct_keys_and_answers_them(n, pairs, data, seed):
    queries = data.draw(st.integers(1, pairs))
    vocab_size = data.draw(st.integers(2 * pairs + 1, 3 * pairs + 4))
    inputs, labels = associative_recall_task(n, pairs=pairs, vocab_size=vocab_size, queries=queries,
                                             generator=seeded(seed))
    _, targets = associative_recall_task(n, pairs=pairs, vocab_size=vocab_size, queries=queries,
                                         next_token=True, generator=seeded(seed))
    assert inputs.shape == (n, 2 * pairs + 2 * queries - 1)
    labels = labels.view(n, -1)
    assert labels.shape == (n, queries)
    for row, answers, target in zip(inputs.tolist(), labels.tolist(), targets.tolist()):
        table = dict(zip(row[0:2 * pairs:2], row[1:2 * pairs:2]))   # key -> value, as written in the row
        asked = row[2 * pairs::2]
        assert len(set(asked)) == queries and set(asked) <= set(table)
        assert answers == [table[key] for key in asked]
        assert row[2 * pairs + 1::2] == answers[:-1]            # each answer is shown after its query
        expected = [-100] * len(row)
        expected[2 * pairs::2] = answers                        # supervised exactly at the queries
        assert target == expected


@pytest.mark.parametrize("queries", [0, 4, 2.0, True])
def test_multi_query_recall_rejects_bad_query_counts(queries):
    with pytest.raises(ValueError, match="queries"):
        associative_recall_task(4, pairs=3, vocab_size=8, queries=queries)


# ------------------------------------------------------------------------------ pair_lookup_task
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_pair_lookup_answers_each_query_with_its_stored_value(n, data, seed):
    keys, values = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 6))
    pairs = data.draw(st.integers(1, keys))
    queries = data.draw(st.integers(1, pairs))
    inputs, targets = pair_lookup_task(n, pairs=pairs, queries=queries, keys=keys, values=values,
                                       generator=seeded(seed))
    assert inputs.shape == targets.shape == (n, pairs + queries)
    assert int(inputs.max()) < keys * values + keys and int(targets.max()) < keys * values + keys + values
    for row, target in zip(inputs.tolist(), targets.tolist()):
        stored = {token // values: token % values for token in row[:pairs]}  # key -> value
        assert len(stored) == pairs and all(token < keys * values for token in row[:pairs])
        asked = [token - keys * values for token in row[pairs:]]
        assert len(set(asked)) == queries and set(asked) <= set(stored)
        assert target[:pairs] == [-100] * pairs
        assert target[pairs:] == [keys * values + keys + stored[key] for key in asked]


def test_pair_lookup_is_reproducible_and_uses_every_value():
    first = drawn_reproducibly(pair_lookup_task, 1, n=500, pairs=8, queries=3)
    answers = first[1][:, 8:] - (64 * 8 + 64)
    assert set(answers.flatten().tolist()) == set(range(8))


@pytest.mark.parametrize("kwargs, name", [
    ({"n": 0}, "n must"), ({"pairs": 0}, "pairs"), ({"queries": 0}, "queries"), ({"keys": 1.5}, "keys"),
    ({"values": True}, "values"), ({"pairs": 65}, "pairs must be at most keys"), ({"queries": 5}, "queries must be at most"),
])
def test_pair_lookup_rejects_bad_arguments(kwargs, name):
    arguments = {"n": 2, "pairs": 4} | kwargs
    with pytest.raises(ValueError, match=name):
        pair_lookup_task(**arguments)


# --------------------------------------------------------------------------- selective_copy_task
def copy_oracle(prefix: list[int], vocab: int) -> int | None:
    """What a causal reader can answer after reading ``prefix`` (a row's ``inputs[:p + 1]``) alone.

    After the ``j``-th copy marker, the ``j``-th content token read so far; before any marker, nothing.
    """
    markers = prefix.count(vocab + 1)
    content = [token for token in prefix if token < vocab]
    return content[markers - 1] if markers else None


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), data=st.data(), vocab=st.integers(1, 10), seed=st.integers(0, 2**31 - 1))
def test_selective_copy_rows_hold_the_content_in_order_among_blanks_then_markers(n, data, vocab, seed):
    length = data.draw(st.integers(1, 24))
    tokens = data.draw(st.integers(1, length))
    inputs, targets = selective_copy_task(n, length=length, tokens=tokens, vocab=vocab, generator=seeded(seed))
    assert inputs.shape == targets.shape == (n, length + tokens)
    assert inputs.dtype == targets.dtype == torch.long
    blank, marker = vocab, vocab + 1
    for row, target in zip(inputs.tolist(), targets.tolist()):
        first, copy = row[:length], row[length:]
        content = [token for token in first if token != blank]
        assert len(content) == tokens and all(0 <= token < vocab for token in content)
        assert first.count(blank) == length - tokens
        assert copy == [marker] * tokens
        assert target == [-100] * length + content    # scored exactly at the markers, content in order


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 4), data=st.data(), vocab=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_selective_copy_targets_are_computable_from_the_causal_prefix(n, data, vocab, seed):
    """The next-token alignment: every scored target follows from inputs[:p + 1], so a causal model can learn it."""
    length = data.draw(st.integers(1, 20))
    tokens = data.draw(st.integers(1, length))
    inputs, targets = selective_copy_task(n, length=length, tokens=tokens, vocab=vocab, generator=seeded(seed))
    for row, target in zip(inputs.tolist(), targets.tolist()):
        for p, expected in enumerate(target):
            answer = copy_oracle(row[:p + 1], vocab)
            if expected == -100:
                assert answer is None  # unscored positions are exactly those with no answer yet
            else:
                assert answer == expected


def test_selective_copy_oracle_fed_the_prefix_scores_perfectly_under_cross_entropy():
    vocab = 5
    inputs, targets = selective_copy_task(64, length=12, tokens=4, vocab=vocab, generator=seeded(0))
    logits = torch.full((*inputs.shape, vocab + 2), -30.0)
    for row in range(inputs.shape[0]):
        for p in range(inputs.shape[1]):
            answer = copy_oracle(inputs[row, :p + 1].tolist(), vocab)  # the causal prefix only
            logits[row, p, vocab if answer is None else answer] = 30.0
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab + 2), targets.reshape(-1))
    assert loss.item() < 1e-6
    # the same oracle one position late (answering from inputs[:p]) misses the first answer of every row
    late = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab + 2), targets[:, 1:].reshape(-1))
    assert late.item() > 1.0


def test_selective_copy_is_reproducible_and_its_content_moves():
    first = drawn_reproducibly(selective_copy_task, 2, n=2000, length=16, tokens=4, vocab=6)
    inputs, targets = first
    assert set(targets[:, 16:].flatten().tolist()) == set(range(6))
    # the content is not at fixed offsets (what defeats a time-invariant convolution): the first content
    # token's place ranges over 0 .. length - tokens, the last one's over tokens - 1 .. length - 1
    is_content = inputs[:, :16] < 6
    first_place = is_content.float().argmax(1)
    last_place = 15 - is_content.flip(1).float().argmax(1)
    assert set(first_place.tolist()) == set(range(13)) and set(last_place.tolist()) == set(range(3, 16))


def test_selective_copy_smallest_and_full_cases():
    inputs, targets = selective_copy_task(10, length=1, tokens=1, vocab=1, generator=seeded(0))
    assert (inputs == torch.tensor([0, 2])).all() and (targets == torch.tensor([-100, 0])).all()
    inputs, targets = selective_copy_task(10, length=5, tokens=5, vocab=3, generator=seeded(1))  # no blanks
    assert torch.equal(targets[:, 5:], inputs[:, :5]) and (inputs[:, 5:] == 4).all()


@pytest.mark.parametrize("kwargs, name", [
    ({"n": 0}, "n must"), ({"length": 0}, "length must"), ({"tokens": 0}, "tokens must"), ({"vocab": 0}, "vocab must"),
    ({"tokens": 2.0}, "tokens must"), ({"length": True}, "length must"), ({"vocab": None}, "vocab must"),
    ({"tokens": 9}, "tokens must be at most length"),
])
def test_selective_copy_rejects_bad_arguments(kwargs, name):
    arguments = {"n": 2, "length": 8, "tokens": 3, "vocab": 4} | kwargs
    with pytest.raises(ValueError, match=name):
        selective_copy_task(**arguments)


# -------------------------------------------------------------------------------- induction_task
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 8), length=st.integers(3, 40), vocab=st.integers(1, 10), seed=st.integers(0, 2**31 - 1))
def test_induction_rows_repeat_the_trigger_at_the_end_and_ask_for_the_value(n, length, vocab, seed):
    inputs, targets = induction_task(n, length=length, vocab=vocab, generator=seeded(seed))
    assert inputs.shape == targets.shape == (n, length)
    assert inputs.dtype == targets.dtype == torch.long
    trigger = vocab
    for row, target in zip(inputs.tolist(), targets.tolist()):
        assert row.count(trigger) == 2 and row[-1] == trigger        # once inside, once at the end
        assert all(0 <= token <= trigger for token in row)
        place = row.index(trigger)
        assert place <= length - 3
        value = row[place + 1]
        assert 0 <= value < vocab                                     # a content token follows the trigger
        assert target == [-100] * (length - 1) + [value]


def test_induction_is_reproducible_spread_and_works_at_other_lengths():
    first = drawn_reproducibly(induction_task, 5, n=3000, length=10, vocab=4)
    inputs, targets = first
    assert set((inputs == 4).float().argmax(1).tolist()) == set(range(8))  # every place 0 .. length - 3
    assert set(targets[:, -1].tolist()) == set(range(4))
    for length in (3, 64, 300):  # train short, test long: the same generator at another length
        inputs, targets = induction_task(50, length=length, vocab=4, generator=seeded(7))
        assert inputs.shape == (50, length) and ((inputs == 4).sum(1) == 2).all()
        place = (inputs == 4).float().argmax(1)
        assert torch.equal(targets[:, -1], inputs[torch.arange(50), place + 1])


def test_induction_smallest_case():
    inputs, targets = induction_task(10, length=3, vocab=1, generator=seeded(0))
    assert (inputs == torch.tensor([1, 0, 1])).all() and (targets == torch.tensor([-100, -100, 0])).all()


@pytest.mark.parametrize("kwargs, name", [
    ({"n": 0}, "n must"), ({"length": 0}, "length must"), ({"vocab": 0}, "vocab must"), ({"vocab": 3.0}, "vocab must"),
    ({"length": True}, "length must"), ({"length": 2}, "length >= 3"),
])
def test_induction_rejects_bad_arguments(kwargs, name):
    arguments = {"n": 2, "length": 8, "vocab": 4} | kwargs
    with pytest.raises(ValueError, match=name):
        induction_task(**arguments)
