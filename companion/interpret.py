"""Induction heads in the companion's :class:`~companion.models.decoder.Decoder`: finding and ablating them.

An *induction head* (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits";
Olsson et al. 2022, "In-context Learning and Induction Heads") completes a pattern ``[A][B] ... [A]
-> [B]``: at a token ``A`` it attends to the token that came right *after* an earlier ``A`` (prefix
matching) and copies it to the output (its OV circuit raises that token's logit). It works with a
*previous-token head* in an earlier layer, which writes "the token before me was ``A``" into each
position for the induction head's keys to match.

The standard test input is a sequence of ``length`` random tokens repeated twice
(:func:`repeated_random_tokens`): nothing in the first half can be predicted, everything in the
second half can, by induction. With ``L = length`` and the repeats at positions ``0 .. 2L - 1``:

- *prefix matching* (:func:`prefix_matching_scores`): the mean attention from each position ``i`` of
  the second repeat to ``i - L + 1`` (the token after the earlier occurrence of the token at ``i``);
- *previous token* (:func:`previous_token_scores`): the mean attention from ``i`` to ``i - 1``;
- *copying* (:func:`copying_scores`): whether what a head writes when it attends to token ``t``
  raises the logit of ``t`` itself, read from the head's weights alone (the "full OV circuit"
  ``W_U W_O^h W_V^h W_E`` of Elhage et al. 2021);
- *in-context learning* (:func:`loss_on_repeats`): the next-token loss on the second repeat falls far
  below the loss on the first once induction heads form (Olsson et al. 2022's "in-context learning
  score" compares late with early tokens in the same spirit);
- *ablation* (:func:`ablate_heads`): remove heads' outputs and see what the model loses.

Every function here reads the model; none changes it (:func:`ablate_heads` hooks it only inside its
``with`` block).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from companion.models.decoder import Decoder, DecoderOutput
from companion.nn.attention import Attention

COPYING_METHODS = ("raised", "top1", "eigenvalues")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _check_decoder(model: object) -> Decoder:
    if not isinstance(model, Decoder):
        raise TypeError(f"expected a companion Decoder, got {type(model).__name__}")
    return model


def repeated_random_tokens(n: int, *, length: int, vocab_size: int,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` sequences of ``length`` uniformly random tokens, each repeated twice.

    The standard input for finding induction heads (Olsson et al. 2022): ``tokens[:, length:]``
    equals ``tokens[:, :length]``, so every token of the second repeat can be predicted by looking
    up what followed it the first time, and nothing else helps.

    Args:
        n: how many sequences (the batch).
        length: tokens in one repeat; the sequences have ``2 * length`` tokens.
        vocab_size: tokens are drawn from ``[0, vocab_size)``.
        generator: the random generator (seed it for a reproducible experiment).

    Returns:
        A ``torch.long`` tensor ``(n, 2 * length)``.
    """
    n, length, vocab_size = (_positive_int(k, v) for k, v in
                             (("n", n), ("length", length), ("vocab_size", vocab_size)))
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    half = torch.randint(0, vocab_size, (n, length), generator=generator)
    return torch.cat([half, half], dim=1)


def attention_patterns(model: Decoder, tokens: torch.Tensor) -> list[torch.Tensor | None]:
    """Every layer's attention probabilities on ``tokens``, from the decoder's ``return_attention``.

    Runs without gradients and in the model's current mode.

    Args:
        model: a :class:`~companion.models.decoder.Decoder`.
        tokens: token ids ``(batch, seq)``.

    Returns:
        One entry per layer: the probabilities ``(batch, heads, seq, seq)`` (query, key), or ``None``
        for a layer whose mixer has no attention weights (a state space layer).
    """
    model = _check_decoder(model)
    with torch.no_grad():
        out = model(tokens, return_attention=True)
    assert isinstance(out, DecoderOutput)
    return [None if w is None else w.detach() for w in out.attention]


def _as_layers(weights: torch.Tensor | Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """A 4-D tensor (one layer) or a sequence of them, checked: square (query, key) maps."""
    layers = [weights] if isinstance(weights, torch.Tensor) else list(weights)
    if not layers:
        raise ValueError("expected the attention weights of at least one layer, got none")
    for index, w in enumerate(layers):
        if w is None:
            continue
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"layer {index}: expected a tensor or None, got {type(w).__name__}")
        if w.ndim != 4 or w.shape[-1] != w.shape[-2]:
            raise ValueError(f"layer {index}: expected weights (batch, heads, seq, seq), got {tuple(w.shape)}")
    return layers


def _stack_heads(values: list[torch.Tensor | None]) -> torch.Tensor:
    """``(layers, heads)``: one row per layer, NaN where a layer has no heads (or fewer)."""
    heads = max((v.shape[0] for v in values if v is not None), default=0)
    out = torch.full((len(values), heads), float("nan"), dtype=torch.float32)
    for index, v in enumerate(values):
        if v is not None:
            out[index, : v.shape[0]] = v.float().cpu()
    return out


def _mean_offset_attention(w: torch.Tensor, queries: torch.Tensor, offset: int) -> torch.Tensor:
    """Per head, the mean over batch and ``queries`` of ``w[b, h, i, i - offset]``."""
    keys = queries - offset
    return w[:, :, queries, keys].float().mean(dim=(0, 2))


def prefix_matching_scores(weights: torch.Tensor | Sequence[torch.Tensor | None], length: int) -> torch.Tensor:
    """How much each head attends to the token right after the earlier occurrence of the current token.

    The repeats occupy the last ``2 * length`` positions of the sequence (so a prefix, such as a
    beginning-of-sequence token, may come first). For each query ``i`` in the second repeat, the
    token at ``i`` occurred ``length`` positions earlier, and the token after that occurrence sits at
    ``i - length + 1``; the score of head ``h`` is the mean of ``w[b, h, i, i - length + 1]`` over
    the batch and the ``length`` queries of the second repeat. A perfect induction head scores 1, a
    head that attends uniformly to the causal past about ``log(2) / length``.

    Args:
        weights: attention probabilities ``(batch, heads, seq, seq)`` of one layer, or a sequence of
            them (one per layer, ``None`` for a layer without attention), as
            :func:`attention_patterns` returns.
        length: tokens in one repeat (``seq >= 2 * length``).

    Returns:
        ``(layers, heads)`` scores in ``[0, 1]`` (NaN for a layer without attention).
    """
    layers = _as_layers(weights)
    length = _positive_int("length", length)
    results = []
    for index, w in enumerate(layers):
        if w is None:
            results.append(None)
            continue
        seq = w.shape[-1]
        if seq < 2 * length:
            raise ValueError(f"layer {index}: {seq} positions cannot hold two repeats of length {length}")
        queries = torch.arange(seq - length, seq, device=w.device)
        results.append(_mean_offset_attention(w, queries, length - 1))
    return _stack_heads(results)


def previous_token_scores(weights: torch.Tensor | Sequence[torch.Tensor | None]) -> torch.Tensor:
    """How much each head attends to the token just before the query.

    The score of head ``h`` is the mean of ``w[b, h, i, i - 1]`` over the batch and every position
    ``i >= 1``: 1 for a perfect previous-token head.

    Args:
        weights: attention probabilities ``(batch, heads, seq, seq)`` of one layer, or a sequence of
            them (``None`` for a layer without attention), as :func:`attention_patterns` returns.

    Returns:
        ``(layers, heads)`` scores in ``[0, 1]`` (NaN for a layer without attention).
    """
    layers = _as_layers(weights)
    results = []
    for index, w in enumerate(layers):
        if w is None:
            results.append(None)
            continue
        if w.shape[-1] < 2:
            raise ValueError(f"layer {index}: previous-token scores need at least 2 positions, got {w.shape[-1]}")
        queries = torch.arange(1, w.shape[-1], device=w.device)
        results.append(_mean_offset_attention(w, queries, 1))
    return _stack_heads(results)


def _attention_mixer(model: Decoder, layer: int) -> Attention:
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(model.blocks):
        raise ValueError(f"layer must be an int in [0, {len(model.blocks)}), got {layer!r}")
    mixer = model.blocks[layer].mixer
    if not isinstance(mixer, Attention):
        raise ValueError(f"layer {layer} is a {type(mixer).__name__}, not an Attention layer")
    return mixer


def ov_outputs(model: Decoder, layer: int) -> torch.Tensor:
    """What each head of ``layer`` writes to the residual stream when it attends only to token ``t``.

    The direct path of Elhage et al. (2021): token ``t``'s embedding ``e_t`` (times the decoder's
    ``embed_scale``) enters the layer as it is, through the layer's input norm (pre-norm models),
    and head ``h`` (reading key-value group ``g``) writes ``W_O^h (W_V^g norm(e_t) + b_V^g)``.
    Rotary positions do not touch values, so for layer 0 of a RoPE, ALiBi or position-free model
    this is exactly the head's output at a query that attends to ``t`` alone; learned or sinusoidal
    position vectors, and for later layers everything earlier layers added, are left out. The output
    projection's bias is shared by all heads and not included.

    Args:
        model: a :class:`~companion.models.decoder.Decoder`.
        layer: the index of an ``"attention"`` layer.

    Returns:
        ``(heads, vocab_size, width)``, computed without gradients.
    """
    model = _check_decoder(model)
    mixer = _attention_mixer(model, layer)
    with torch.no_grad():
        values = _head_values(model, layer)  # (heads, vocab, head_dim)
        w_o = mixer.out.weight.view(-1, mixer.n_heads, mixer.head_dim)  # (width, heads, head_dim)
        return torch.einsum("whd,hvd->hvw", w_o, values)


def _head_values(model: Decoder, layer: int) -> torch.Tensor:
    """``(heads, vocab, head_dim)``: head ``h``'s value ``W_V^g norm(e_t) + b_V^g`` of every token ``t``."""
    mixer = _attention_mixer(model, layer)
    block = model.blocks[layer]
    x = model.embed.weight * model.config.embed_scale
    if block.pre:
        x = block.norm_1(x)
    heads, groups, d = mixer.n_heads, mixer.n_kv_heads, mixer.head_dim
    start = (heads + groups) * d  # qkv's rows: queries, keys, values (heads, then groups, then groups)
    w_v = mixer.qkv.weight[start:].view(groups, d, -1)
    values = torch.einsum("gdw,vw->gvd", w_v, x)  # (groups, vocab, head_dim)
    if mixer.qkv.bias is not None:
        values = values + mixer.qkv.bias[start:].view(groups, 1, d)
    return values.repeat_interleave(heads // groups, dim=0)


def _unembed_direct(model: Decoder, vectors: torch.Tensor) -> torch.Tensor:
    """Logits that ``vectors`` ``(..., width)`` add on the direct path through the final norm.

    The final norm's division by the whole residual stream's scale is unknown for a single
    contribution and left out (a positive factor per vector, which changes no comparison made
    here); its gain is applied, after centring for a LayerNorm; its bias is not the head's.
    """
    norm = model.norm
    if isinstance(norm, nn.LayerNorm):
        vectors = vectors - vectors.mean(dim=-1, keepdim=True)
    if getattr(norm, "weight", None) is not None:
        vectors = vectors * norm.weight
    return vectors @ model.lm_head.weight.T


def ov_logits(model: Decoder, layer: int) -> torch.Tensor:
    """The full OV circuit of each head: ``M[h, t, u]``, the logit of ``u`` that head ``h`` adds when it
    attends to token ``t``.

    ``M[h] = unembed(W_O^h W_V^h norm(W_E))`` (Elhage et al. 2021), with the direct-path reading of
    :func:`ov_outputs` and the final norm applied as its gain only (see :func:`copying_scores`).

    Args:
        model: a :class:`~companion.models.decoder.Decoder`.
        layer: the index of an ``"attention"`` layer.

    Returns:
        ``(heads, vocab_size, vocab_size)``, indexed (head, attended token, logit).
    """
    with torch.no_grad():
        return _unembed_direct(model, ov_outputs(model, layer))


def copying_scores(model: Decoder, *, method: str = "raised", layers: Iterable[int] | None = None) -> torch.Tensor:
    """How much each head copies the token it attends to into the output, from its weights alone.

    All methods read the full OV circuit ``M[h, t, u]`` (:func:`ov_logits`: the logit of ``u`` that
    head ``h`` adds when it attends to ``t``, through the direct path embedding -> norm -> values ->
    output projection -> final norm's gain -> unembedding; Elhage et al. 2021). Softmax ignores a
    shift common to all logits, so what counts is ``M[h, t, t]`` against the other entries of its row.

    - ``"raised"`` (default): the fraction of tokens ``t`` whose own logit rises more than the
      average logit, ``M[h, t, t] > mean_u M[h, t, u]``: 1 for a copying head, about 0.5 for a head
      with random weights, 0 for an anti-copying (suppressing) head.
    - ``"top1"``: the fraction of tokens ``t`` for which ``t`` is the logit raised most,
      ``argmax_u M[h, t, u] == t`` (about ``1 / vocab_size`` at random).
    - ``"eigenvalues"``: Olsson et al. (2022)'s copying score ``sum(lambda) / sum(|lambda|)`` over
      the eigenvalues of ``M[h]``, in ``[-1, 1]``: 1 when every eigenvalue is positive (the map
      increases the logits of what it reads), -1 when every one is negative. Computed from the
      ``head_dim x head_dim`` product whose nonzero eigenvalues are those of ``M[h]``.

    For layers after the first this reads only the direct path (what the head would copy from the
    token embeddings themselves), as the papers above do.

    Args:
        model: a :class:`~companion.models.decoder.Decoder`.
        method: ``"raised"``, ``"top1"`` or ``"eigenvalues"``.
        layers: which layers to score (default: all); others get NaN.

    Returns:
        ``(layers, heads)`` scores, NaN for layers not scored or not ``"attention"``.
    """
    model = _check_decoder(model)
    if method not in COPYING_METHODS:
        raise ValueError(f"method must be one of {COPYING_METHODS}, got {method!r}")
    chosen = range(len(model.blocks)) if layers is None else list(layers)
    for layer in chosen:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(model.blocks):
            raise ValueError(f"layers must be ints in [0, {len(model.blocks)}), got {layer!r}")
    results: list[torch.Tensor | None] = []
    with torch.no_grad():
        for layer, block in enumerate(model.blocks):
            if layer not in chosen or not isinstance(block.mixer, Attention):
                results.append(None)
                continue
            if method == "eigenvalues":
                # M[h] = A B with A = values (vocab, head_dim) and B = the unembedded columns of W_O^h
                # (head_dim, vocab), as unembedding is linear; A B and the small B A share their
                # nonzero eigenvalues
                mixer = block.mixer
                values = _head_values(model, layer).double()  # (heads, vocab, d)
                w_o = mixer.out.weight.view(-1, mixer.n_heads, mixer.head_dim).permute(1, 2, 0)  # (heads, d, width)
                small = _unembed_direct(model, w_o).double() @ values  # (heads, d, d)
                eig = torch.linalg.eigvals(small)
                total, scale = eig.sum(dim=-1).real, eig.abs().sum(dim=-1)
                results.append(torch.where(scale > 0, total / scale.clamp_min(torch.finfo(scale.dtype).tiny),
                                           torch.zeros_like(total)))
                continue
            m = ov_logits(model, layer).float()  # (heads, vocab, vocab)
            own = m.diagonal(dim1=1, dim2=2)  # (heads, vocab)
            if method == "raised":
                results.append((own > m.mean(dim=-1)).float().mean(dim=-1))
            else:
                target = torch.arange(m.shape[-1], device=m.device)
                results.append((m.argmax(dim=-1) == target).float().mean(dim=-1))
    return _stack_heads(results)


ABLATIONS = ("zero", "mean")


def _heads_by_layer(model: Decoder, heads: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    """``{layer: [head, ...]}`` from ``(layer, head)`` pairs, each checked against the model."""
    by_layer: dict[int, list[int]] = {}
    for pair in heads:
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) for v in pair)):
            raise TypeError(f"heads must be (layer, head) pairs of ints, got {pair!r}")
        layer, head = pair
        if not 0 <= layer < len(model.blocks):
            raise ValueError(f"layer must lie in [0, {len(model.blocks)}), got {layer}")
        mixer = model.blocks[layer].mixer
        n_heads, out = getattr(mixer, "n_heads", None), getattr(mixer, "out", None)
        if not isinstance(n_heads, int) or not isinstance(out, nn.Linear) or out.in_features % n_heads:
            raise ValueError(f"layer {layer} is a {type(mixer).__name__}, which has no heads concatenated "
                             f"before an output projection `out`")
        if not 0 <= head < n_heads:
            raise ValueError(f"layer {layer} has {n_heads} heads, got head {head}")
        if head not in by_layer.setdefault(layer, []):
            by_layer[layer].append(head)
    return by_layer


def _head_means(model: Decoder, by_layer: dict[int, list[int]], reference: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per layer, the mean over ``reference``'s sequences and positions of each head's output
    ``(heads, head_dim)`` (the input of the output projection, split by head)."""
    means: dict[int, torch.Tensor] = {}
    handles = []

    def record(layer: int):
        def hook(module: nn.Module, args: tuple) -> None:
            o = args[0]
            means[layer] = o.reshape(-1, o.shape[-1]).mean(dim=0).view(model.blocks[layer].mixer.n_heads, -1)
        return hook

    try:
        for layer in by_layer:
            handles.append(model.blocks[layer].mixer.out.register_forward_pre_hook(record(layer)))
        with torch.no_grad():
            model(reference)
    finally:
        for handle in handles:
            handle.remove()
    return means


@contextlib.contextmanager
def ablate_heads(model: Decoder, heads: Iterable[tuple[int, int]], *, mode: str = "zero",
                 reference: torch.Tensor | None = None) -> Iterator[Decoder]:
    """Inside the ``with`` block, the given heads' outputs are replaced before the output projection.

    Multi-head attention computes ``y = concat_h(o_h) W_O`` (:class:`~companion.nn.attention.Attention`,
    and multi-head latent attention alike); a forward pre-hook on the layer's output projection ``out``
    replaces the slice ``o_h`` ``(batch, seq, head_dim)`` of each ablated head by zeros (``"zero"``)
    or by its mean over every position of every sequence of ``reference`` (``"mean"``, computed once
    on entry, with no head ablated). Nothing else changes: the layer's code, its weights, and the
    other heads' outputs are untouched, and the hooks are removed on exit (also after an exception),
    so the model then computes exactly what it computed before. With no heads, no hook is installed.

    Args:
        model: a :class:`~companion.models.decoder.Decoder`.
        heads: ``(layer, head)`` pairs (repeats are ignored).
        mode: ``"zero"`` or ``"mean"``.
        reference: token ids ``(batch, seq)`` whose mean head outputs ``"mean"`` uses (required
            with ``"mean"``, not allowed with ``"zero"``).

    Yields:
        The model itself.
    """
    model = _check_decoder(model)
    if mode not in ABLATIONS:
        raise ValueError(f"mode must be one of {ABLATIONS}, got {mode!r}")
    if (mode == "mean") != (reference is not None):
        raise ValueError("mode='mean' needs reference token ids (and mode='zero' takes none)")
    by_layer = _heads_by_layer(model, heads)
    means = _head_means(model, by_layer, reference) if mode == "mean" and by_layer else {}

    def replace(layer: int, chosen: list[int]):
        index = torch.tensor(chosen)
        n_heads = model.blocks[layer].mixer.n_heads

        def hook(module: nn.Module, args: tuple) -> tuple:
            o = args[0]
            split = o.reshape(*o.shape[:-1], n_heads, o.shape[-1] // n_heads).clone()
            if mode == "zero":
                split[..., index.to(o.device), :] = 0
            else:
                split[..., index.to(o.device), :] = means[layer][index.to(o.device)].to(o.dtype)
            return (split.reshape(o.shape),) + tuple(args[1:])
        return hook

    handles = []
    try:
        for layer, chosen in by_layer.items():
            handles.append(model.blocks[layer].mixer.out.register_forward_pre_hook(replace(layer, chosen)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class RepeatLoss:
    """Next-token loss on a sequence repeated twice (see :func:`loss_on_repeats`)."""

    first: float            # mean loss predicting tokens 1 .. L-1 (first repeat)
    second: float           # mean loss predicting tokens L+1 .. 2L-1 (second repeat)
    per_position: torch.Tensor  # (2L - 1,): loss predicting token p + 1 from tokens 0 .. p, batch mean

    @property
    def in_context_gain(self) -> float:
        """``first - second``: how much the earlier copy lowers the loss (log(vocab) for perfect induction)."""
        return self.first - self.second


def loss_on_repeats(model: Decoder, tokens: torch.Tensor) -> RepeatLoss:
    """Next-token cross-entropy on the first and on the second repeat of ``tokens``.

    ``tokens`` ``(batch, 2L)`` must be two copies of ``L`` tokens (:func:`repeated_random_tokens`).
    ``first`` averages the losses of predicting tokens ``1 .. L-1`` (each from the tokens before it,
    all in the first copy: a model can do no better than ``log(vocab_size)`` on random tokens);
    ``second`` averages those of tokens ``L+1 .. 2L-1``, each of which followed its predecessor in
    the first copy, so an induction head predicts it. Token ``L`` (the second copy's first) is in
    neither: its predecessor gives no clue to it. Both therefore average ``L - 1`` positions per
    sequence. Runs without gradients, in the model's current mode.

    Args:
        model: a :class:`~companion.models.decoder.Decoder`.
        tokens: token ids ``(batch, 2L)`` with ``L >= 2`` and ``tokens[:, L:] == tokens[:, :L]``.

    Returns:
        A :class:`RepeatLoss`.
    """
    model = _check_decoder(model)
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"expected token ids (batch, 2 * length), got {shape}")
    seq = tokens.shape[1]
    if seq % 2 or seq < 4:
        raise ValueError(f"expected two repeats of at least 2 tokens (an even length >= 4), got {seq} tokens")
    length = seq // 2
    if not torch.equal(tokens[:, :length], tokens[:, length:]):
        raise ValueError("tokens[:, length:] must repeat tokens[:, :length] (see repeated_random_tokens)")
    with torch.no_grad():
        logits = model(tokens[:, :-1]).float()
        losses = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")  # (batch, 2L - 1)
    per_position = losses.mean(dim=0)
    # position p predicts token p + 1: tokens 1 .. L-1 are p = 0 .. L-2; tokens L+1 .. 2L-1 are p = L .. 2L-2
    first = per_position[: length - 1].mean().item()
    second = per_position[length:].mean().item()
    return RepeatLoss(first=first, second=second, per_position=per_position)
