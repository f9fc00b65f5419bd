"""companion.data.batches: random and consecutive windows of a token stream, with next tokens."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.data import as_token_tensor, lm_batch, lm_windows


def distinct_tokens(count: int, seed: int = 0) -> torch.Tensor:
    """A stream of distinct token ids, so that a window's first token says where it starts."""
    return torch.randperm(10 * count, generator=torch.Generator().manual_seed(seed))[:count]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------- as_token_tensor
def test_as_token_tensor():
    tensor = as_token_tensor([3, 1, 4])
    assert tensor.dtype == torch.long and tensor.tolist() == [3, 1, 4]
    assert as_token_tensor(torch.tensor([1, 2], dtype=torch.int32)).dtype == torch.long
    assert as_token_tensor([]).shape == (0,)


@pytest.mark.parametrize("bad", [[[1, 2], [3, 4]], 5])
def test_as_token_tensor_rejects_other_ranks(bad):
    with pytest.raises(ValueError, match="1-D"):
        as_token_tensor(bad)


# ----------------------------------------------------------------------------------------- lm_batch
@settings(max_examples=40, deadline=None)
@given(count=st.integers(2, 80), data=st.data(), batch_size=st.integers(1, 12), seed=st.integers(0, 2**31))
def test_lm_batch_targets_are_the_inputs_shifted_by_one_inside_the_stream(count, data, batch_size, seed):
    context = data.draw(st.integers(1, count - 1))
    tokens = distinct_tokens(count, seed % 1000)
    inputs, targets = lm_batch(tokens, batch_size=batch_size, context=context, generator=seeded(seed))
    assert inputs.shape == targets.shape == (batch_size, context)
    assert inputs.dtype == targets.dtype == torch.long
    stream = tokens.tolist()
    for row_in, row_target in zip(inputs.tolist(), targets.tolist()):
        start = stream.index(row_in[0])
        assert row_in == stream[start: start + context]
        assert row_target == stream[start + 1: start + context + 1]
        assert len(row_target) == context  # the window and its next token lie inside the stream


def test_lm_batch_reaches_every_start_including_the_last():
    tokens = distinct_tokens(20)
    inputs, targets = lm_batch(tokens, batch_size=3000, context=5, generator=seeded(0))
    starts = {tokens.tolist().index(first) for first in inputs[:, 0].tolist()}
    assert starts == set(range(20 - 5))
    assert tokens[-1].item() in targets[:, -1].tolist()


def test_lm_batch_with_exactly_one_window():
    tokens = torch.arange(6)
    inputs, targets = lm_batch(tokens, batch_size=4, context=5)
    assert torch.equal(inputs, torch.arange(5).expand(4, 5))
    assert torch.equal(targets, torch.arange(1, 6).expand(4, 5))


def test_lm_batch_is_reproducible_with_a_seeded_generator():
    tokens = distinct_tokens(100)
    first = lm_batch(tokens, batch_size=8, context=10, generator=seeded(3))
    second = lm_batch(tokens, batch_size=8, context=10, generator=seeded(3))
    other = lm_batch(tokens, batch_size=8, context=10, generator=seeded(4))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("tokens, kwargs, message", [
    (torch.arange(20).view(4, 5), {}, "1-D"),
    (torch.arange(20), {"context": 0}, "positive"),
    (torch.arange(20), {"batch_size": 0}, "positive"),
    (torch.arange(5), {"context": 5}, "more than context=5 tokens"),
    (torch.arange(3), {"context": 5}, "more than context=5 tokens"),
])
def test_lm_batch_rejects_bad_input(tokens, kwargs, message):
    kwargs = {"batch_size": 2, "context": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        lm_batch(tokens, **kwargs)


# ---------------------------------------------------------------------------------------- lm_windows
@settings(max_examples=60, deadline=None)
@given(count=st.integers(2, 100), data=st.data())
def test_lm_windows_cover_the_stream_consecutively(count, data):
    context = data.draw(st.integers(1, count - 1))
    max_windows = data.draw(st.one_of(st.none(), st.integers(1, 10)))
    tokens = distinct_tokens(count)
    inputs, targets = lm_windows(tokens, context=context, max_windows=max_windows)
    windows = (count - 1) // context
    if max_windows is not None:
        windows = min(windows, max_windows)
    assert inputs.shape == targets.shape == (windows, context)
    stream = tokens.tolist()
    for i in range(windows):
        assert inputs[i].tolist() == stream[i * context: (i + 1) * context]
        assert targets[i].tolist() == stream[i * context + 1: (i + 1) * context + 1]


def test_lm_windows_example():
    inputs, targets = lm_windows(torch.arange(10), context=3)
    assert inputs.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert targets.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


@pytest.mark.parametrize("tokens, kwargs, message", [
    (torch.arange(20).view(4, 5), {"context": 2}, "1-D"),
    (torch.arange(5), {"context": 5}, "more than context=5 tokens"),
    (torch.arange(20), {"context": 0}, "context must be positive"),
    (torch.arange(20), {"context": -2}, "context must be positive"),
    (torch.arange(20), {"context": 2, "max_windows": 0}, "max_windows"),
])
def test_lm_windows_rejects_bad_input(tokens, kwargs, message):
    with pytest.raises(ValueError, match=message):
        lm_windows(tokens, **kwargs)
