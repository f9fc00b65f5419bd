"""Synthetic tasks: small, generated problems that isolate one ability of a sequence model.

Each function returns ``(inputs, labels)`` as ``torch.long`` tensors drawn from the
``torch.Generator`` it is given, so the same seed gives the same data on every machine.
"""

from __future__ import annotations

import torch


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def order_task(n: int, *, length: int = 16, vocab_size: int = 12,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Does ``A`` come before ``B``? A task that only the order of the tokens decides.

    Every sequence holds token ``A = 0`` once and token ``B = 1`` once, at two random positions,
    among filler tokens ``2 .. vocab_size - 1``. The label is ``1`` if ``A`` comes first, else ``0``.
    Two sequences with swapped ``A`` and ``B`` have the same tokens with the same counts and opposite
    labels, so a model that sees only counts (a bag of words) can do no better than chance.

    Returns ``inputs`` ``(n, length)`` and ``labels`` ``(n,)``.
    """
    _check_positive(n=n, length=length, vocab_size=vocab_size)
    if length < 2 or vocab_size < 3:
        raise ValueError(f"order_task needs length >= 2 and vocab_size >= 3, got {length} and {vocab_size}")
    inputs = torch.randint(2, vocab_size, (n, length), generator=generator)
    # two distinct positions per row: the first two entries of a random permutation
    positions = torch.argsort(torch.rand(n, length, generator=generator), dim=1)[:, :2]
    rows = torch.arange(n)
    inputs[rows, positions[:, 0]] = 0
    inputs[rows, positions[:, 1]] = 1
    labels = (positions[:, 0] < positions[:, 1]).long()
    return inputs, labels


def recall_task(n: int, *, distance: int, length: int = 64, vocab_size: int = 8,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Recall the token seen ``distance`` steps before the end of the sequence.

    Inputs are uniform random tokens ``0 .. vocab_size - 1``; after reading all ``length`` tokens
    the model must output ``inputs[:, length - 1 - distance]``. ``distance = 0`` asks for the last
    token; larger distances ask a model to carry one token's identity through ``distance`` later
    tokens. Chance accuracy is ``1 / vocab_size``.

    Returns ``inputs`` ``(n, length)`` and ``labels`` ``(n,)``.
    """
    _check_positive(n=n, length=length, vocab_size=vocab_size)
    if isinstance(distance, bool) or not isinstance(distance, int) or not 0 <= distance < length:
        raise ValueError(f"distance must be an int in [0, length), got {distance!r} with length={length}")
    inputs = torch.randint(0, vocab_size, (n, length), generator=generator)
    return inputs, inputs[:, length - 1 - distance].clone()


def passkey_task(n: int, *, length: int, filler: torch.Tensor, vocab_size: int, keys: int = 10,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Passkey retrieval: find the one key hidden in a long text and repeat it at the end.

    The synthetic long-context test of Mohtashami and Jaggi ("Landmark Attention", 2023), used by
    the position-interpolation and YaRN papers. Each sequence is a random window of ``length`` tokens
    of ``filler`` (a 1-D stream of token ids, all ``< vocab_size``, such as the tokenized corpus) in
    which two tokens are replaced at a uniformly random place ``p`` (``0 <= p <= length - 3``): the
    marker ``vocab_size`` ("the pass key is") followed by the key ``vocab_size + 2 + d`` with ``d``
    uniform in ``0 .. keys - 1``. The last token is the question ``vocab_size + 1``; the label is the
    key. A model therefore needs ``vocab_size + 2 + keys`` embeddings; chance accuracy is
    ``1 / keys``. The key sits ``length - 2 - p`` positions before the question.

    Returns ``inputs`` ``(n, length)`` and ``labels`` ``(n,)``.
    """
    _check_positive(n=n, length=length, vocab_size=vocab_size, keys=keys)
    if length < 3:
        raise ValueError(f"passkey_task needs length >= 3 (marker, key and question), got {length}")
    if not isinstance(filler, torch.Tensor) or filler.ndim != 1 or filler.dtype != torch.long:
        raise ValueError("filler must be a 1-D torch.long tensor of token ids, got "
                         f"{type(filler).__name__}{'' if not isinstance(filler, torch.Tensor) else f' {filler.dtype} of shape {tuple(filler.shape)}'}")
    if filler.numel() < length:
        raise ValueError(f"filler must hold at least length={length} tokens, got {filler.numel()}")
    if filler.numel() and (int(filler.min()) < 0 or int(filler.max()) >= vocab_size):
        raise ValueError(f"filler ids must lie in [0, vocab_size={vocab_size}), got [{int(filler.min())}, {int(filler.max())}]")
    starts = torch.randint(0, filler.numel() - length + 1, (n,), generator=generator)
    inputs = filler[starts[:, None] + torch.arange(length)]
    keys_drawn = torch.randint(0, keys, (n,), generator=generator)
    places = torch.randint(0, length - 2, (n,), generator=generator)
    rows = torch.arange(n)
    labels = vocab_size + 2 + keys_drawn
    inputs[rows, places] = vocab_size
    inputs[rows, places + 1] = labels
    inputs[:, -1] = vocab_size + 1
    return inputs, labels
