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


IGNORE_INDEX = -100  # the target that torch.nn.functional.cross_entropy skips (its default ignore_index)


def associative_recall_task(n: int, *, pairs: int, vocab_size: int, key_vocab: int | None = None,
                            queries: int = 1, next_token: bool = False,
                            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Associative recall: read ``pairs`` key-value pairs, then answer a key with its value.

    The task of Ba et al. 2016 ("Using Fast Weights to Attend to the Recent Past") that Zoology
    (Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models") uses
    to show where fixed-size-state models (linear attention, state space models) fall behind
    attention: a model must store every pair it has read, since any key may be asked. Each row is::

        k_1 v_1 k_2 v_2 ... k_pairs v_pairs q        (2 * pairs + 1 tokens)

    with distinct keys ``k_i`` drawn from tokens ``0 .. key_vocab - 1`` (default
    ``vocab_size // 2``), values ``v_i`` drawn independently (repeats allowed) from
    ``key_vocab .. vocab_size - 1``, and the query ``q`` one of the row's keys, chosen uniformly. The
    label is the value paired with ``q``. Chance accuracy is ``1 / (vocab_size - key_vocab)``; a model
    that picks one of the row's values without knowing which does about ``1 / pairs``.

    With ``queries = Q > 1`` (Zoology's multi-query associative recall, MQAR), ``Q`` distinct keys of
    the row are asked one after another, each followed by its answer except the last::

        k_1 v_1 ... k_pairs v_pairs q_1 a_1 q_2 a_2 ... q_Q      (2 * pairs + 2 * Q - 1 tokens)

    so that one row trains and tests ``Q`` recalls (an answer shown in the row is the value of an
    earlier query: it gives nothing away about the later ones, whose keys are different).

    Returns ``inputs`` ``(n, 2 * pairs + 2 * queries - 1)`` and ``labels``: ``(n,)`` for one query,
    ``(n, queries)`` for several. With ``next_token=True`` the second tensor is instead ``targets``
    of the inputs' shape: ``-100`` (``IGNORE_INDEX``, which ``F.cross_entropy`` and so
    :func:`companion.train.next_token_loss` skip) everywhere except the query positions, which hold
    the answers, so that a decoder is trained on the answers alone.
    """
    _check_positive(n=n, pairs=pairs, vocab_size=vocab_size)
    key_vocab = vocab_size // 2 if key_vocab is None else key_vocab
    if isinstance(key_vocab, bool) or not isinstance(key_vocab, int) or not pairs <= key_vocab < vocab_size:
        raise ValueError(f"key_vocab must be an int with pairs <= key_vocab < vocab_size (room for {pairs} distinct "
                         f"keys and at least one value token), got key_vocab={key_vocab!r} with pairs={pairs}, "
                         f"vocab_size={vocab_size}")
    if isinstance(queries, bool) or not isinstance(queries, int) or not 1 <= queries <= pairs:
        raise ValueError(f"queries must be an int with 1 <= queries <= pairs (distinct keys are asked), "
                         f"got queries={queries!r} with pairs={pairs}")
    if not isinstance(next_token, bool):
        raise ValueError(f"next_token must be True or False, got {next_token!r}")
    # distinct keys per row: the first `pairs` entries of a random permutation of the key tokens
    keys = torch.argsort(torch.rand(n, key_vocab, generator=generator), dim=1)[:, :pairs]
    values = torch.randint(key_vocab, vocab_size, (n, pairs), generator=generator)
    if queries == 1:
        asked = torch.randint(0, pairs, (n, 1), generator=generator)
    else:  # distinct pairs asked, in random order
        asked = torch.argsort(torch.rand(n, pairs, generator=generator), dim=1)[:, :queries]
    asked_keys, answers = keys.gather(1, asked), values.gather(1, asked)
    length = 2 * pairs + 2 * queries - 1
    inputs = torch.empty(n, length, dtype=torch.long)
    inputs[:, 0:2 * pairs:2] = keys
    inputs[:, 1:2 * pairs:2] = values
    inputs[:, 2 * pairs::2] = asked_keys
    inputs[:, 2 * pairs + 1::2] = answers[:, :-1]
    labels = answers[:, 0] if queries == 1 else answers
    if not next_token:
        return inputs, labels
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, 2 * pairs::2] = answers
    return inputs, targets


def pair_lookup_task(n: int, *, pairs: int, queries: int = 1, keys: int = 64, values: int = 8,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Associative recall with each key-value pair written as one token: store ``pairs``, answer ``queries``.

    :func:`associative_recall_task` writes a pair as two tokens, so a model must first learn to
    connect each value with the key before it (a previous-token head) and only then to look keys
    up: a two-step circuit that small models learn only after a long plateau. Here each pair is a
    single token, so the task measures the lookup alone: can the sequence mixer retrieve, for a
    query, the one stored item that matches it, among ``pairs`` items? Attention can look every
    item up; a fixed-size state (linear attention, state space models) must hold them all at once,
    and a sliding window holds only the last few (Arora et al. 2023, "Zoology").

    Token ids: the pair of key ``a`` and value ``b`` is ``a * values + b`` (``0 .. keys * values
    - 1``); the query for key ``a`` is ``keys * values + a``; the answer ``b`` is the token
    ``keys * values + keys + b``. So ``vocab_size = keys * values + keys + values``. Each row is::

        pair_1 ... pair_pairs query_1 ... query_queries     (pairs + queries tokens)

    with distinct keys among a row's pairs, values drawn independently (repeats allowed), and
    ``queries`` distinct stored keys asked in random order. Returns ``inputs`` ``(n, pairs +
    queries)`` and ``targets`` of the same shape: ``-100`` (skipped by ``F.cross_entropy``) except at
    the query positions, which hold the answer tokens. Chance accuracy is ``1 / values``.
    """
    _check_positive(n=n, pairs=pairs, queries=queries, keys=keys, values=values)
    if pairs > keys:
        raise ValueError(f"pairs must be at most keys (the keys of a row are distinct), got pairs={pairs}, keys={keys}")
    if queries > pairs:
        raise ValueError(f"queries must be at most pairs (distinct stored keys are asked), "
                         f"got queries={queries}, pairs={pairs}")
    stored = torch.argsort(torch.rand(n, keys, generator=generator), dim=1)[:, :pairs]
    stored_values = torch.randint(0, values, (n, pairs), generator=generator)
    asked = torch.argsort(torch.rand(n, pairs, generator=generator), dim=1)[:, :queries]
    pair_tokens = stored * values + stored_values
    query_tokens = keys * values + stored.gather(1, asked)
    inputs = torch.cat((pair_tokens, query_tokens), dim=1)
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, pairs:] = keys * values + keys + stored_values.gather(1, asked)
    return inputs, targets


def selective_copy_task(n: int, *, length: int, tokens: int, vocab: int,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective copying: copy the ``tokens`` content tokens scattered among blanks, in their order.

    The synthetic task of Gu and Dao 2023 ("Mamba: Linear-Time Sequence Modeling with Selective
    State Spaces", section 3.1 and Figure 2), a variant of the copying task of Arjovsky et al. 2016
    ("Unitary Evolution Recurrent Neural Networks") in which the content tokens sit at random
    positions instead of at the start. A linear time-invariant model (a fixed convolution, such as
    S4 in its convolution mode) applies the same weights at every offset, so it cannot tell which
    positions to keep when they change from row to row; a model whose mixing depends on the input
    (attention, Mamba's selective scan) can: skip the blanks, keep the content.

    Token ids: content ``0 .. vocab - 1``, the blank (noise) token ``vocab``, the copy marker
    ``vocab + 1``; so ``vocab_size = vocab + 2`` (the paper counts the blank in its vocabulary of 16).
    Each row is::

        [length positions: c_1 .. c_tokens in order, at random distinct positions, blank elsewhere]
        [tokens positions: marker marker ... marker]                      (length + tokens tokens)

    with content ``c_j`` drawn uniformly from ``0 .. vocab - 1`` (repeats allowed) and the
    ``tokens`` positions drawn uniformly among the ``length`` first ones. Returns ``inputs`` ``(n,
    length + tokens)`` and ``targets`` of the same shape: ``-100`` (``IGNORE_INDEX``, skipped by
    ``F.cross_entropy``) everywhere except the marker positions, where ``targets[:, length + j] =
    c_{j+1}``. So a causal decoder whose output at position ``p`` sees ``inputs[:, :p + 1]`` is trained
    with ``F.cross_entropy(model(inputs), targets)`` (no shift: the answer is due *at* its marker, whose
    prefix holds every content token, and the ``j``-th answer is due at the ``j``-th marker: the model
    must count the markers it has read). Chance accuracy per answer is ``1 / vocab``.
    """
    _check_positive(n=n, length=length, tokens=tokens, vocab=vocab)
    if tokens > length:
        raise ValueError(f"tokens must be at most length (the content tokens fill distinct positions of "
                         f"the first part), got tokens={tokens}, length={length}")
    content = torch.randint(0, vocab, (n, tokens), generator=generator)
    # distinct positions per row, in increasing order: the first `tokens` entries of a random permutation
    places = torch.argsort(torch.rand(n, length, generator=generator), dim=1)[:, :tokens].sort(dim=1).values
    inputs = torch.full((n, length + tokens), vocab, dtype=torch.long)
    inputs.scatter_(1, places, content)
    inputs[:, length:] = vocab + 1
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, length:] = content
    return inputs, targets


def induction_task(n: int, *, length: int, vocab: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Induction heads: after ``trigger value ... trigger``, predict ``value`` again.

    The synthetic task of Gu and Dao 2023 ("Mamba", section 4.1.2), after the induction heads that
    Olsson et al. 2022 ("In-context Learning and Induction Heads") found in transformers: having
    seen a bigram such as "Harry Potter", predict "Potter" the next time "Harry" appears. It needs
    associative recall and copying. Mamba trains at one length and evaluates at others (shorter and
    far longer); call this function again with another ``length`` for that.

    Token ids: content ``0 .. vocab - 1``, the trigger ``vocab``; so ``vocab_size = vocab + 1``. Each
    row is::

        x_0 ... x_{t-1} trigger value x_{t+2} ... x_{length-2} trigger        (length tokens)

    with every ``x_i`` and ``value`` drawn uniformly from the content tokens (repeats allowed) and
    the first trigger's place ``t`` uniform in ``0 .. length - 3``; the trigger appears exactly
    twice, the second time at the last position. Returns ``inputs`` ``(n, length)`` and ``targets``
    of the same shape: ``-100`` (``IGNORE_INDEX``) everywhere except the last position, which holds
    ``value``: the token a causal decoder should predict after reading the final trigger (train with
    ``F.cross_entropy(model(inputs), targets)``, no shift). The value sits ``length - 2 - t``
    positions before the question. Chance accuracy is ``1 / vocab``.
    """
    _check_positive(n=n, length=length, vocab=vocab)
    if length < 3:
        raise ValueError(f"induction_task needs length >= 3 (trigger, value and the final trigger), got {length}")
    inputs = torch.randint(0, vocab, (n, length), generator=generator)
    places = torch.randint(0, length - 2, (n,), generator=generator)
    rows = torch.arange(n)
    inputs[rows, places] = vocab
    inputs[:, -1] = vocab
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, -1] = inputs[rows, places + 1]
    return inputs, targets
