"""Attention explorer: where each token of a trained model looks, layer by layer and head by head.

A model's attention weights ``A[l, h, i, j]`` (layer ``l``, head ``h``) say how much query position
``i`` takes from key position ``j``: each row is a softmax, so it is non-negative and sums to 1 over
the keys the mask allows (Vaswani et al. 2017, "Attention is all you need"; in a causal model the
upper triangle, ``j > i``, is 0). The widget holds the weights of one short text, computed by Python
when the notebook ran, and draws them in the browser:

* the tokens as chips, each key's chip shaded by its weight in the selected query's row
  (opacity ``sqrt(weight)``, so that small weights stay visible);
* the full ``T x T`` pattern of the selected layer and head (rows are queries, columns keys), with
  the selected query's row outlined;
* a readout naming the query token and the (up to) three keys it attends to most.

Hovering a token previews it as the query; clicking pins it (the synced ``query`` trait). The
JavaScript in ``attention_explorer.js`` ranks the keys as :func:`top_attended` does here: by weight,
highest first, ties to the earlier position, keys of weight 0 left out. Both read the same stored,
rounded weights, so they agree exactly.

``AttentionExplorer(tokens, weights)`` takes the weights as a nested list, a NumPy array or a
tensor of shape ``(layers, heads, T, T)``; :meth:`AttentionExplorer.from_tensor` also takes a
model's per-layer list of ``(heads, T, T)`` or ``(1, heads, T, T)`` tensors (Hugging Face's
``output_attentions``). The widget stores the weights rounded to 3 decimals, to keep the notebook
and the page small, and so that every stored row still sums to 1 (:func:`round_rows`). ``weights``
reads as that nested list in Python; it is synced (and stored in the notebook) as one compact
string of integer thousandths (:func:`encode_weights`), which the JavaScript decodes.
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import anywidget
import numpy as np
import traitlets

DECIMALS = 3  # the weights are stored in thousandths
SCALE = 10**DECIMALS
ROW_SUM_TOLERANCE = 1e-3  # every row of the weights must sum to 1 within this
MAX_VALUES = 2**17  # layers * heads * T * T: at most about 0.4 MB of state in the notebook and the page

# Whitespace made visible: the JavaScript's displayToken uses the same table.
VISIBLE = {" ": "\u00b7", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}  # · ↵ ⇥ ␍
EMPTY = "\u2205"  # ∅


def display_token(token: str) -> str:
    """How the widget shows ``token``: spaces as ``·``, newlines as ``↵``, tabs as ``⇥``, ``\\r`` as ``␍``."""
    if token == "":
        return EMPTY
    return "".join(VISIBLE.get(c, c) for c in token)


def _as_array(data: Any, what: str) -> np.ndarray:
    """``data`` (nested lists, a NumPy array or a tensor on any device) as a float64 array."""
    if hasattr(data, "detach") and hasattr(data, "cpu"):  # a torch.Tensor, without importing torch
        data = data.detach().cpu().double().numpy()
    if isinstance(data, (str, bytes, dict, set)) or data is None or np.isscalar(data):
        raise TypeError(f"{what} must be a nested list, an array or a tensor, got {type(data).__name__}")
    try:
        array = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{what} must be a rectangular array of numbers ({error})") from None
    return array


def check_tokens(tokens: Any) -> list[str]:
    """``tokens`` as a list of strings (at least one); ``TypeError``/``ValueError`` otherwise."""
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise TypeError(f"tokens must be a list of strings, got {type(tokens).__name__}")
    tokens = list(tokens)
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise TypeError(f"tokens must be strings: tokens[{i}] is {type(token).__name__} {token!r}")
    if not tokens:
        raise ValueError("tokens must hold at least one token")
    return tokens


def check_weights(weights: Any, n_tokens: int) -> list:
    """Validate attention weights of shape ``(layers, heads, T, T)`` with ``T = n_tokens``.

    Every value must be finite and non-negative and every row (query) must sum to 1 within
    ``ROW_SUM_TOLERANCE``. Returns the weights as nested lists, rounded to ``DECIMALS`` decimals by
    :func:`round_rows`, so that every stored row still sums to 1.
    Raises ``TypeError`` for something that is not an array and ``ValueError`` for a bad one.
    """
    array = _as_array(weights, "weights")
    if array.ndim != 4:
        raise ValueError(f"weights must have shape (layers, heads, T, T), got {array.ndim} dimensions {array.shape}")
    layers, heads, rows, cols = array.shape
    if layers < 1 or heads < 1:
        raise ValueError(f"weights must hold at least one layer and one head, got shape {array.shape}")
    if rows != n_tokens or cols != n_tokens:
        raise ValueError(f"weights must have shape (layers, heads, {n_tokens}, {n_tokens}) for {n_tokens} tokens, "
                         f"got {array.shape}")
    if array.size > MAX_VALUES:
        raise ValueError(f"weights hold {array.size} values (layers * heads * T * T); at most {MAX_VALUES} are "
                         f"stored in a notebook: use fewer tokens, layers or heads")
    if not np.isfinite(array).all():
        raise ValueError("weights must be finite (no NaN or infinity)")
    if (array < 0).any():
        raise ValueError(f"weights must be non-negative, found {array.min():g}")
    sums = array.sum(axis=-1)
    worst = np.unravel_index(np.argmax(np.abs(sums - 1)), sums.shape)
    if abs(sums[worst] - 1) > ROW_SUM_TOLERANCE:
        layer, head, query = (int(i) for i in worst)
        raise ValueError(f"every row of weights must sum to 1 (a softmax over the keys): layer {layer}, head {head}, "
                         f"query {query} sums to {sums[worst]:.6g}")
    return (round_rows(array) / SCALE).tolist()


def round_rows(weights: np.ndarray) -> np.ndarray:
    """Rows of ``weights`` (last axis) in integer thousandths that sum to exactly ``SCALE`` (1000).

    Each row is divided by its sum, then rounded by largest remainder (Hamilton's method): every
    value is floored and the units left over go to the largest remainders (ties to the earlier
    key). Every weight moves by less than 0.001, a weight of 0 stays 0, and rounding an already
    rounded row changes nothing.
    """
    units = np.round(weights / weights.sum(axis=-1, keepdims=True) * SCALE, 6)  # 6: drop float noise
    floors = np.floor(units)
    left = (SCALE - floors.sum(axis=-1, keepdims=True)).round().astype(np.int64)
    order = np.argsort(-(units - floors), axis=-1, kind="stable")
    rank = np.argsort(order, axis=-1, kind="stable")  # rank of each key's remainder in its row
    return (floors + (rank < left)).astype(np.int64)


def encode_weights(weights: list, widget: Any = None) -> dict:
    """The weights as the widget syncs and stores them: ``{"shape": [layers, heads, T], "rows": ...}``.

    ``rows`` holds every row (layer by layer, head by head, query by query) as comma-separated
    integer thousandths, trailing zeros dropped (a causal row ``i`` stops at key ``i``), rows
    separated by ``;``. One short string instead of a deep list keeps the notebook small: nbformat
    writes every element of a nested list on a line of its own. ``widget`` is unused (ipywidgets'
    ``to_json`` signature).
    """
    shape = [len(weights), len(weights[0]) if weights else 0, len(weights[0][0]) if weights else 0]
    rows = []
    for layer in weights:
        for head in layer:
            for row in head:
                units = [round(w * SCALE) for w in row]
                while units and units[-1] == 0:
                    units.pop()
                rows.append(",".join(map(str, units)))
    return {"shape": shape, "rows": ";".join(rows)}


def decode_weights(data: dict, widget: Any = None) -> list:
    """The nested ``(layers, heads, T, T)`` list of floats from :func:`encode_weights`' form
    (the twin of ``decodeWeights`` in attention_explorer.js)."""
    layers, heads, T = data["shape"]
    rows = data["rows"].split(";") if layers else []
    if len(rows) != layers * heads * T:
        raise ValueError(f"encoded weights hold {len(rows)} rows, shape {data['shape']} needs {layers * heads * T}")
    decoded = iter([int(u) / SCALE for u in row.split(",")] + [0.0] * (T - row.count(",") - 1) for row in rows)
    return [[[next(decoded) for _ in range(T)] for _ in range(heads)] for _ in range(layers)]


def top_attended(weights: Any, layer: int, head: int, query: int, k: int = 3, *,
                 tokens: Sequence[str] | None = None) -> list[tuple[int, str | None, float]]:
    """The ``k`` keys that ``query`` attends to most in ``weights[layer][head]``.

    Returns ``[(index, token, weight), ...]``: highest weight first, ties to the earlier position,
    keys of weight 0 left out (so fewer than ``k`` for an early query of a causal model). ``token``
    is ``tokens[index]`` (the raw string) when ``tokens`` is given, else None. ``weights`` is indexed
    as ``(layers, heads, T, T)``: nested lists (the widget's state), an array or a tensor.
    This is the Python twin of ``topAttended`` in attention_explorer.js.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    row = [float(w) for w in weights[layer][head][query]]
    order = sorted((j for j, w in enumerate(row) if w > 0), key=lambda j: (-row[j], j))[:k]
    return [(j, tokens[j] if tokens is not None else None, row[j]) for j in order]


def _index(value: Any, name: str, size: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise traitlets.TraitError(f"{name} must be an int, got {value!r}")
    if not 0 <= value < size:
        raise traitlets.TraitError(f"{name} must be in 0..{size - 1} ({size} {what}), got {value}")
    return value


class AttentionExplorer(anywidget.AnyWidget):
    """Precomputed attention of a model over a short text: a layer and a head to choose, the tokens
    shaded by the selected query's weights, the ``T x T`` pattern, and the top-3 keys.

    ``AttentionExplorer(tokens, weights, layer=0, head=0, query=None, title="")``: ``tokens`` are
    the display strings of the ``T`` tokens (kept raw; whitespace is drawn visibly), ``weights`` has
    shape ``(layers, heads, T, T)`` (see :func:`check_weights`). ``query=None`` selects the last
    token. To replace the tokens and the weights after construction, set both inside
    ``with widget.hold_trait_notifications():``.
    """

    _esm = pathlib.Path(__file__).with_name("attention_explorer.js")
    _css = pathlib.Path(__file__).with_name("attention_explorer.css")

    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    # (layers, heads, T, T), in thousandths (round_rows); synced and stored in encode_weights' form
    weights = traitlets.List().tag(sync=True, to_json=encode_weights, from_json=decode_weights)
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(0).tag(sync=True)
    query = traitlets.Int(0).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, tokens: Sequence[str], weights: Any, layer: int = 0, head: int = 0,
                 query: int | None = None, title: str = "", **kwargs):
        tokens = check_tokens(tokens)
        weights = check_weights(weights, len(tokens))
        if query is None:
            query = len(tokens) - 1
        super().__init__(tokens=tokens, weights=weights, layer=layer, head=head, query=query, title=title, **kwargs)

    @classmethod
    def from_tensor(cls, tokens: Sequence[str], attn: Any, **kwargs) -> "AttentionExplorer":
        """Build from a model's attention: one ``(layers, heads, T, T)`` tensor (or array), or a list
        with one ``(heads, T, T)`` or ``(1, heads, T, T)`` tensor per layer (as Hugging Face models
        return with ``output_attentions=True``, for a batch of one)."""
        if isinstance(attn, (list, tuple)):
            if not attn:
                raise ValueError("attn must hold at least one layer")
            layers = []
            for i, layer in enumerate(attn):
                array = _as_array(layer, f"attn[{i}]")
                if array.ndim == 4:
                    if array.shape[0] != 1:
                        raise ValueError(f"attn[{i}] has a batch of {array.shape[0]}: pass one sequence, "
                                         f"shape (1, heads, T, T)")
                    array = array[0]
                if array.ndim != 3:
                    raise ValueError(f"attn[{i}] must have shape (heads, T, T) or (1, heads, T, T), got {array.shape}")
                if layers and array.shape != layers[0].shape:
                    raise ValueError(f"attn[{i}] has shape {array.shape}, attn[0] has {layers[0].shape}")
                layers.append(array)
            attn = np.stack(layers)
        else:
            attn = _as_array(attn, "attn")
            if attn.ndim != 4:
                raise ValueError(f"attn must have shape (layers, heads, T, T), or be a list of per-layer tensors; "
                                 f"got shape {attn.shape}")
        return cls(tokens, attn, **kwargs)

    # ---------------------------------------------------------------------------- validation
    @traitlets.validate("tokens")
    def _valid_tokens(self, proposal):
        try:
            tokens = check_tokens(proposal["value"])
        except (TypeError, ValueError) as error:
            raise traitlets.TraitError(str(error)) from None
        if self.weights and len(self.weights[0][0]) != len(tokens):
            raise traitlets.TraitError(f"tokens has {len(tokens)} entries but the weights are for "
                                       f"{len(self.weights[0][0])} tokens: set both inside hold_trait_notifications()")
        return tokens

    @traitlets.validate("weights")
    def _valid_weights(self, proposal):
        try:
            weights = check_weights(proposal["value"], len(self.tokens))
        except (TypeError, ValueError) as error:
            raise traitlets.TraitError(str(error)) from None
        for name, size in (("layer", len(weights)), ("head", len(weights[0])), ("query", len(weights[0][0]))):
            if getattr(self, name) >= size:
                raise traitlets.TraitError(f"the new weights have {size} {name}s but {name} is {getattr(self, name)}: "
                                           f"set {name} too, inside hold_trait_notifications()")
        return weights

    @traitlets.validate("layer")
    def _valid_layer(self, proposal):
        return _index(proposal["value"], "layer", self.n_layers, "layers")

    @traitlets.validate("head")
    def _valid_head(self, proposal):
        return _index(proposal["value"], "head", self.n_heads, "heads")

    @traitlets.validate("query")
    def _valid_query(self, proposal):
        return _index(proposal["value"], "query", len(self.tokens), "tokens")

    # ------------------------------------------------------------------------------- reading
    @property
    def n_layers(self) -> int:
        return len(self.weights)

    @property
    def n_heads(self) -> int:
        return len(self.weights[0]) if self.weights else 0

    def row(self) -> list[float]:
        """The selected query's weights over the keys (length ``T``), as stored."""
        return list(self.weights[self.layer][self.head][self.query])

    def top_attended(self, k: int = 3) -> list[tuple[int, str | None, float]]:
        """What the readout shows: :func:`top_attended` for the current layer, head and query."""
        return top_attended(self.weights, self.layer, self.head, self.query, k, tokens=self.tokens)

    def __repr__(self) -> str:  # stable: stored notebook outputs must not hold an address
        title = f", title={self.title!r}" if self.title else ""
        return (f"AttentionExplorer(tokens={len(self.tokens)}, layers={self.n_layers}, heads={self.n_heads}, "
                f"layer={self.layer}, head={self.head}, query={self.query}{title})")
