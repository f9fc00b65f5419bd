"""Routing view: which expert each token of a text was sent to, layer by layer, in a mixture of experts.

In a mixture-of-experts layer a router scores every token against the ``E`` experts and sends it to
its top ``k`` (Shazeer et al. 2017, "Outrageously large neural networks: the sparsely-gated
mixture-of-experts layer"; ``k = 1`` in the Switch Transformer, Fedus et al. 2022; ``k = 2`` in
GShard, Lepikhin et al. 2021, and Mixtral, Jiang et al. 2024). The layer's output for the token is
the sum of the chosen experts' outputs times their routing weights (gates). This widget holds that
routing for one short text, computed by Python when the notebook ran (for instance with
:func:`companion.nn.router.token_choice` in every layer), and draws it in the browser:

* the tokens, each coloured by the expert it was routed to in the selected layer: with the top-1
  display by its first choice; with the top-2 display by two colour bands whose widths are
  proportional to the two routing weights (:func:`band_widths`);
* a legend of the experts: clicking one highlights the tokens routed to it and dims the rest
  (:func:`routed_tokens`); clicking it again, or pressing Escape, clears the highlight;
* a load bar per expert for the selected layer: the fraction of the tokens whose top-1 choice (or
  either of the top-2 choices) is that expert (:func:`expert_load`), with a mark at the load of a
  perfectly balanced router, ``top / E``;
* hovering over or focusing a token shows its choices and their weights (:func:`readout_text`).

The state: the display strings of the ``T`` tokens (whitespace is drawn visibly, as
:func:`~companion.widgets.attention_explorer.display_token` shows it), the number of layers ``L``,
of experts ``E`` and of choices per token ``top_k`` (1 or 2), ``choices`` ``(L, T, top_k)``: the
expert indices each token chose, in the router's order (the first is the "top-1" choice), and
``weights`` ``(L, T, top_k)``: their routing weights in integer thousandths (:func:`round_weights`),
so that the JavaScript reads exactly the numbers that Python computed with. Both are synced (and
stored in the notebook) as short strings (:func:`encode_choices`, :func:`encode_weights`). Then the
view: ``layer``, ``show`` (``"top-1"`` or ``"top-2"``) and ``expert`` (the highlighted expert, -1
for none).

The colours (``EXPERT_COLORS``, defined here once; the JavaScript's copy is checked against it):
Paul Tol's "light" qualitative scheme (Tol 2021, "Colour schemes", SRON/EPS/TN/09-002), eight pale
colours that stay distinct for colour-blind readers and keep dark text legible on them, in Tol's
order. No set of more than about eight hues stays distinct under colour-vision deficiencies, so
experts 8 to 15 reuse the eight colours with diagonal stripes (``EXPERT_STRIPED``); the legend, the
readout and every token's tooltip also name the experts by number.

:func:`expert_counts`, :func:`expert_load`, :func:`routed_tokens`, :func:`band_widths`,
:func:`format_weight`, :func:`format_share`, :func:`readout_text` and the decoders are the Python
twins of the functions of the same names in ``routing_view.js``; they agree exactly (the weights are
integers, and each computed number is one IEEE division in both languages).
"""

from __future__ import annotations

import math
import numbers
import pathlib
from typing import Any, Sequence

import anywidget
import numpy as np
import traitlets

from companion.widgets._traits import checked
from companion.widgets.attention_explorer import check_tokens, display_token

DECIMALS = 3  # the weights are stored in thousandths
SCALE = 10**DECIMALS
SUM_TOLERANCE = 1e-6  # a token's weights that sum to 1 within this are rounded to sum to exactly 1 (a float32
# renormalised softmax sums to 1 within about 1e-7; a looser bound let weights already rounded to thousandths
# that sum to 0.999 be renormalised on a second rounding, which then changed them)
MAX_EXPERTS = 16  # the palette's size; an expert index is one hexadecimal digit in the synced state
MAX_TOP_K = 2
MAX_LAYERS = 64
MAX_TOKENS = 1024
MAX_CELLS = 2**13  # layers * tokens: at most about 100 kB of state in the notebook and the page
MAX_WEIGHT = 1000.0
SHOW = ("top-1", "top-2")
HEX = "0123456789abcdef"

# Paul Tol's "light" scheme (light blue, orange, light yellow, pink, light cyan, mint, pear, olive).
BASE_COLORS = ("#77AADD", "#EE8866", "#EEDD88", "#FFAABB", "#99DDFF", "#44BB99", "#BBCC33", "#AAAA00")
EXPERT_COLORS = BASE_COLORS + BASE_COLORS  # expert e has colour EXPERT_COLORS[e]
EXPERT_STRIPED = (False,) * len(BASE_COLORS) + (True,) * len(BASE_COLORS)  # experts 8-15: striped


# ------------------------------------------------------------------------------ validation
def _int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ValueError(f"{name} must be an int {bounds}, got {value}")
    return value


def _plain(value: Any, name: str) -> Any:
    """Tensors (on any device, requiring grad or not) and arrays, also inside lists, as nested lists;
    a bool anywhere is a ``TypeError`` (NumPy would silently take it for 0 or 1)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.double()  # bfloat16 has no NumPy type
        return value.numpy().tolist()
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "b":
            raise TypeError(f"{name} must hold numbers, got an array of bools")
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(x, name) for x in value]
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must hold numbers, got {value!r}")
    return value


def _array(value: Any, name: str, integer: bool) -> np.ndarray:
    """``value`` (nested lists, an array or a tensor) as an ``(L, T, k)`` array of ints or floats."""
    if isinstance(value, (str, bytes, dict, set)) or value is None or np.isscalar(value):
        raise TypeError(f"{name} must be a nested list, an array or a tensor of shape (layers, tokens, k), "
                        f"got {type(value).__name__}")
    try:
        array = np.asarray(_plain(value, name))
    except ValueError as error:
        raise ValueError(f"{name} must be a rectangular array of shape (layers, tokens, k) ({error})") from None
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape (layers, tokens, k), got {array.ndim} dimensions {array.shape}")
    if 0 in array.shape:
        raise ValueError(f"{name} must hold at least one layer, token and choice, got shape {array.shape}")
    if integer and array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer expert indices, got {array.dtype} values")
    if not integer and array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold numbers, got {array.dtype} values")
    return array


def _experts(experts: Any) -> int:
    return _int("experts", experts, 1, MAX_EXPERTS)


def round_weights(weights: Sequence[float]) -> list[int]:
    """One token's routing weights in integer thousandths.

    Weights that sum to 1 within ``SUM_TOLERANCE`` (a softmax renormalised over the chosen experts,
    as in Mixtral) are divided by their sum and rounded by largest remainder (Hamilton's method):
    each is floored and the thousandths left over go to the largest remainders (ties to the earlier
    choice), so that the stored weights sum to exactly 1000. Any others (Switch's top-1 gate, gates
    that keep their share of the whole softmax, sigmoid gates) are each rounded to the nearest
    thousandth, half up. Every weight moves by less than 0.001, and rounding again changes nothing.
    """
    w = [float(x) for x in weights]
    total = sum(w)
    if abs(total - 1) <= SUM_TOLERANCE:
        units = [round(x / total * SCALE, 6) for x in w]  # 6: drop float noise
        floors = [math.floor(u) for u in units]
        left = SCALE - sum(floors)
        order = sorted(range(len(w)), key=lambda i: (-(units[i] - floors[i]), i))
        rank = {i: r for r, i in enumerate(order)}
        return [f + (rank[i] < left) for i, f in enumerate(floors)]
    return [math.floor(round(x * SCALE, 6) + 0.5) for x in w]


def check_routing(tokens: Any, choices: Any, weights: Any, experts: Any) -> tuple[list[str], list, list, int]:
    """Validate a routing and return ``(tokens, choices, weights, experts)`` as the widget stores them.

    ``tokens``: ``T`` strings. ``choices``: ``(L, T, k)`` integer expert indices in ``0..experts-1``,
    distinct for each token, in the router's order (the first is the top-1 choice); ``k`` is 1 or 2.
    ``weights``: ``(L, T, k)`` finite non-negative routing weights of those choices (at most
    ``MAX_WEIGHT``). Nested lists, NumPy arrays or tensors. ``weights`` come back in integer
    thousandths (:func:`round_weights`). Raises ``TypeError`` for something of the wrong kind and
    ``ValueError`` for a bad value, a bad shape or more data than ``MAX_LAYERS``, ``MAX_TOKENS`` and
    ``MAX_CELLS`` allow.
    """
    tokens = check_tokens(tokens)
    experts = _experts(experts)
    index = _array(choices, "choices", integer=True)
    gates = _array(weights, "weights", integer=False)
    layers, T, k = index.shape
    if k > MAX_TOP_K:
        raise ValueError(f"choices has {k} choices per token; the widget shows the top-1 and top-2: "
                         f"pass the first two, choices[..., :2] and weights[..., :2]")
    if T != len(tokens):
        raise ValueError(f"choices must have shape (layers, {len(tokens)}, k) for {len(tokens)} tokens, "
                         f"got {index.shape}")
    if gates.shape != index.shape:
        raise ValueError(f"weights must have the shape of choices, {index.shape}, got {gates.shape}")
    if layers > MAX_LAYERS:
        raise ValueError(f"at most {MAX_LAYERS} layers, got {layers}")
    if T > MAX_TOKENS:
        raise ValueError(f"at most {MAX_TOKENS} tokens, got {T}")
    if layers * T > MAX_CELLS:
        raise ValueError(f"{layers} layers x {T} tokens is {layers * T} routings; at most {MAX_CELLS} are stored in "
                         f"a notebook: use fewer tokens or layers")
    bad = np.argwhere((index < 0) | (index >= experts))
    if len(bad):
        layer, token, rank = (int(i) for i in bad[0])
        raise ValueError(f"choices must be expert indices in 0..{experts - 1} ({experts} experts): layer {layer}, "
                         f"token {token} has {int(index[layer, token, rank])}")
    if k == 2:
        same = np.argwhere(index[..., 0] == index[..., 1])
        if len(same):
            layer, token = (int(i) for i in same[0])
            raise ValueError(f"a token's choices must be distinct experts: layer {layer}, token {token} chose "
                             f"expert {int(index[layer, token, 0])} twice")
    gates = gates.astype(np.float64)
    if not np.isfinite(gates).all():
        raise ValueError("weights must be finite (no NaN or infinity)")
    if (gates < 0).any() or (gates > MAX_WEIGHT).any():
        worst = gates.min() if (gates < 0).any() else gates.max()
        raise ValueError(f"weights must be in 0..{MAX_WEIGHT:g}, found {worst:g}")
    units = [[round_weights(row) for row in layer] for layer in gates.tolist()]
    return tokens, index.tolist(), units, experts


def _check_stored(choices: Any, units: Any) -> None:
    """The synced traits as stored: ``choices`` and ``weights`` nested ``(L, T, k)`` lists of ints,
    the same shape, ``k`` in 1..2, weights in thousandths."""
    for name, value in (("choices", choices), ("weights", units)):
        if not isinstance(value, list) or not value or not all(isinstance(layer, list) and layer for layer in value):
            raise ValueError(f"{name} must be a nested (layers, tokens, k) list")
        for layer in value:
            for row in layer:
                if not isinstance(row, list) or not 1 <= len(row) <= MAX_TOP_K or len(row) != len(value[0][0]):
                    raise ValueError(f"{name} must be a rectangular (layers, tokens, k) list with k in 1..{MAX_TOP_K}")
                if any(isinstance(x, bool) or not isinstance(x, int) for x in row):
                    what = "integer thousandths (use set_routing for float weights)" if name == "weights" else "ints"
                    raise TypeError(f"{name} must hold {what}, got {row!r}")
        if len({len(layer) for layer in value}) != 1:
            raise ValueError(f"{name} must have the same number of tokens in every layer")
    if _shape(choices) != _shape(units):
        raise ValueError(f"choices and weights must have the same shape, got {_shape(choices)} and {_shape(units)}")
    if any(u < 0 or u > MAX_WEIGHT * SCALE for layer in units for row in layer for u in row):
        raise ValueError(f"weights must be integer thousandths in 0..{int(MAX_WEIGHT * SCALE)}")


def _shape(nested: list) -> tuple[int, int, int]:
    return (len(nested), len(nested[0]), len(nested[0][0])) if nested else (0, 0, 0)


# ------------------------------------------------------------------------- the synced form
def encode_choices(choices: list, widget: Any = None) -> dict:
    """``choices`` as the widget syncs and stores them: ``{"shape": [L, T, k], "values": "3a01..."}``,
    one hexadecimal digit per choice (experts 0-15), layer by layer, token by token, choice by
    choice. A short string instead of a deep list keeps the notebook small (nbformat writes every
    element of a nested list on a line of its own). ``widget`` is unused (ipywidgets' signature)."""
    return {"shape": list(_shape(choices)),
            "values": "".join(HEX[e] for layer in choices for row in layer for e in row)}


def decode_choices(data: dict, widget: Any = None) -> list:
    """The nested ``(L, T, k)`` list of ints from :func:`encode_choices`' form (the twin of
    ``decodeChoices`` in routing_view.js)."""
    layers, T, k = data["shape"]
    values = data["values"]
    if len(values) != layers * T * k or any(c not in HEX for c in values):
        raise ValueError(f"encoded choices must be {layers * T * k} hexadecimal digits for shape {data['shape']}, "
                         f"got {values[:40]!r}")
    it = iter(HEX.index(c) for c in values)
    return [[[next(it) for _ in range(k)] for _ in range(T)] for _ in range(layers)]


def encode_weights(units: list, widget: Any = None) -> dict:
    """``weights`` (integer thousandths) as the widget syncs and stores them:
    ``{"shape": [L, T, k], "values": "712,288,1000,0,..."}``, in the order of :func:`encode_choices`."""
    return {"shape": list(_shape(units)), "values": ",".join(str(u) for layer in units for row in layer for u in row)}


def decode_weights(data: dict, widget: Any = None) -> list:
    """The nested ``(L, T, k)`` list of integer thousandths from :func:`encode_weights`' form (the
    twin of ``decodeWeights`` in routing_view.js)."""
    layers, T, k = data["shape"]
    parts = data["values"].split(",") if data["values"] else []
    if len(parts) != layers * T * k or not all(p.isdigit() and p.isascii() for p in parts):
        raise ValueError(f"encoded weights must be {layers * T * k} non-negative integers for shape {data['shape']}")
    it = iter(int(p) for p in parts)
    return [[[next(it) for _ in range(k)] for _ in range(T)] for _ in range(layers)]


# ------------------------------------------------------------------------------ the twins
def expert_color(expert: int) -> str:
    """The colour of ``expert`` (``EXPERT_COLORS``); experts 8 and up are also striped."""
    return EXPERT_COLORS[_int("expert", expert, 0, MAX_EXPERTS - 1)]


def top_of(show: str) -> int:
    """``"top-1"`` -> 1, ``"top-2"`` -> 2."""
    if show not in SHOW:
        raise ValueError(f"show must be one of {SHOW}, got {show!r}")
    return SHOW.index(show) + 1


def _layer_choices(choices: Any, top: Any) -> tuple[list[list[int]], int]:
    rows = [[int(e) for e in row] for row in _plain(choices, "choices")]
    top = _int("top", top, 1, MAX_TOP_K)
    if not rows or any(len(row) < top for row in rows):
        raise ValueError(f"choices must be one layer's (tokens, k) choices with k >= top = {top}")
    return rows, top


def expert_counts(choices: Any, experts: int, top: int) -> list[int]:
    """For one layer's ``choices`` ``(T, k)``: how many tokens have expert ``e`` among their first
    ``top`` choices, for ``e`` in ``0..experts-1`` (with ``top = 2`` the counts sum to ``2 T``)."""
    rows, top = _layer_choices(choices, top)
    counts = [0] * _experts(experts)
    for row in rows:
        for e in row[:top]:
            counts[e] += 1
    return counts


def expert_load(choices: Any, experts: int, top: int) -> list[float]:
    """For one layer's ``choices`` ``(T, k)``: the fraction of the ``T`` tokens whose top-1 choice
    (``top = 1``), or either of whose top-2 choices (``top = 2``), is expert ``e``, for ``e`` in
    ``0..experts-1``. A perfectly balanced router gives every expert ``top / experts``."""
    counts = expert_counts(choices, experts, top)
    T = len(choices)
    return [c / T for c in counts]


def routed_tokens(choices: Any, expert: int, top: int) -> list[int]:
    """For one layer's ``choices`` ``(T, k)``: the tokens that have ``expert`` among their first
    ``top`` choices (the ones the widget highlights; the others are dimmed)."""
    rows, top = _layer_choices(choices, top)
    return [t for t, row in enumerate(rows) if expert in row[:top]]


def band_widths(units: Sequence[int], top: int) -> list[float]:
    """The widths, in percent of the token, of its colour bands: ``[100.0]`` for the top-1 display;
    for the top-2 display, ``100 w_i / (w_1 + w_2)`` (half and half if both weights are 0).
    ``units`` are the token's weights in thousandths."""
    top = _int("top", top, 1, MAX_TOP_K)
    if top == 1:
        return [100.0]
    a, b = int(units[0]), int(units[1])
    if a + b == 0:
        return [50.0, 50.0]
    return [100 * a / (a + b), 100 * b / (a + b)]


def format_weight(units: int) -> str:
    """A weight in thousandths as the widget shows it: 712 -> ``"0.712"``, 1000 -> ``"1.000"``."""
    units = _int("units", units, 0)
    return f"{units // SCALE}.{units % SCALE:03d}"


def format_share(count: int, total: int) -> str:
    """``count / total`` in percent with one decimal, rounded half up, computed in integers:
    3 of 8 -> ``"37.5%"``, 1 of 3 -> ``"33.3%"``."""
    count, total = _int("count", count, 0), _int("total", total, 1)
    tenths = (2000 * count + total) // (2 * total)
    return f"{tenths // 10}.{tenths % 10}%"


def describe_token(token: str, index: int, choices: Sequence[int], units: Sequence[int], layer: int) -> str:
    """What the readout and a token's tooltip say about it:
    ``layer 2, token 5 “·the” → expert 3 (0.712), expert 1 (0.288)``."""
    parts = ", ".join(f"expert {e} ({format_weight(u)})" for e, u in zip(choices, units))
    return f"layer {layer}, token {index} \u201c{display_token(token)}\u201d \u2192 {parts}"


def readout_text(tokens: Sequence[str], choices: Any, units: Any, layer: int, experts: int, show: str,
                 expert: int = -1, token: int | None = None) -> str:
    """The widget's readout, for one layer's ``choices`` and ``units`` ``(T, k)``: the hovered or
    focused ``token`` (:func:`describe_token`); else the highlighted ``expert``'s load; else the
    layer's summary with the load of a balanced router."""
    top = top_of(show)
    T = len(tokens)
    balanced = format_share(top, experts)
    if token is not None:
        return describe_token(tokens[token], token, choices[token], units[token], layer)
    if expert >= 0:
        count = expert_counts(choices, experts, top)[expert]
        where = "as their top-1 choice" if top == 1 else "among their top-2 choices"
        return (f"layer {layer}, expert {expert}: {count} of {T} tokens ({format_share(count, T)}) {where}; "
                f"balanced: {balanced}")
    return (f"layer {layer}: {T} tokens routed among {experts} experts ({show} shown); a balanced router "
            f"gives each expert {balanced}")


# ---------------------------------------------------------------------------------- widget
def _per_layer(value: Any, name: str) -> Any:
    """A list with one ``(T, k)`` or ``(1, T, k)`` tensor or array per layer, stacked to ``(L, T, k)``;
    anything else as it is."""
    if not isinstance(value, (list, tuple)) or not value:
        return value
    if not all(hasattr(x, "shape") for x in value):
        return value  # nested lists
    layers = []
    for i, x in enumerate(value):
        rows = _plain(x, name)
        shape = np.shape(rows)
        if len(shape) == 3:
            if shape[0] != 1:
                raise ValueError(f"{name}[{i}] has a batch of {shape[0]}: pass one sequence, shape (1, T, k)")
            rows = rows[0]
        elif len(shape) != 2:
            raise ValueError(f"{name}[{i}] must have shape (T, k) or (1, T, k), got {shape}")
        layers.append(rows)
    return layers


class RoutingView(anywidget.AnyWidget):
    """The routing of a mixture-of-experts model over a short text (module docstring): a layer to
    choose, top-1 or top-2 display, the tokens coloured by their experts, a legend to highlight one
    expert's tokens, and each expert's load.

    ``RoutingView(tokens, choices, weights, experts=E)`` (or :meth:`from_routing`, which also takes
    one tensor per layer): ``tokens`` are the ``T`` display strings, ``choices`` ``(L, T, k)`` the
    chosen experts in the router's order and ``weights`` ``(L, T, k)`` their routing weights, ``k``
    1 or 2 (see :func:`check_routing`). ``layer``, ``show`` (``"top-1"`` or ``"top-2"``; top-2 needs
    ``k = 2``), ``expert`` (the highlighted expert, -1 for none) and ``title`` set the view. To replace
    the routing, use :meth:`set_routing`.
    """

    _esm = pathlib.Path(__file__).with_name("routing_view.js")
    _css = pathlib.Path(__file__).with_name("routing_view.css")

    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    layers = traitlets.Int(1).tag(sync=True)
    experts = traitlets.Int(1).tag(sync=True)
    top_k = traitlets.Int(1).tag(sync=True)
    # (L, T, k) ints, synced and stored in encode_choices' form
    choices = traitlets.List().tag(sync=True, to_json=encode_choices, from_json=decode_choices)
    # (L, T, k) integer thousandths, synced and stored in encode_weights' form
    weights = traitlets.List().tag(sync=True, to_json=encode_weights, from_json=decode_weights)
    layer = traitlets.Int(0).tag(sync=True)
    show = traitlets.Unicode("top-1").tag(sync=True)
    expert = traitlets.Int(-1).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, tokens: Sequence[str], choices: Any, weights: Any, *, experts: int, layer: int = 0,
                 show: str = "top-1", expert: int = -1, title: str = "", **kwargs):
        # plain arguments are checked here, with ValueError / TypeError; later changes by the traits
        tokens, choices, units, experts = check_routing(tokens, choices, weights, experts)
        layers, _, top_k = _shape(choices)
        layer = _int("layer", layer, 0, layers - 1)
        if top_of(show) > top_k:
            raise ValueError(f"show={show!r} needs two choices per token; the routing has top_k={top_k}")
        expert = _int("expert", expert, -1, experts - 1)
        if not isinstance(title, str):
            raise TypeError(f"title must be a string, got {type(title).__name__}")
        super().__init__(tokens=tokens, layers=layers, experts=experts, top_k=top_k, choices=choices, weights=units,
                         layer=layer, show=show, expert=expert, title=title, **kwargs)

    @classmethod
    def from_routing(cls, tokens: Sequence[str], choices: Any, weights: Any, *, experts: int,
                     **kwargs) -> "RoutingView":
        """Build from a model's routing: ``choices`` (ints) and ``weights`` (floats) as one
        ``(L, T, k)`` tensor, array or nested list each, or as a list with one ``(T, k)`` or
        ``(1, T, k)`` tensor per layer (as :func:`companion.nn.router.token_choice` returns them,
        ``index`` and ``gate``, for each layer). ``experts`` is the number of experts per layer."""
        return cls(tokens, _per_layer(choices, "choices"), _per_layer(weights, "weights"), experts=experts, **kwargs)

    def set_routing(self, tokens: Sequence[str], choices: Any, weights: Any, *, experts: int | None = None) -> None:
        """Replace the routing (any shapes within the limits; ``experts`` defaults to the current
        number). The layer, the display and the highlight are kept where they still exist."""
        tokens, choices, units, experts = check_routing(tokens, choices, weights,
                                                        self.experts if experts is None else experts)
        layers, _, top_k = _shape(choices)
        with self.hold_sync(), self.hold_trait_notifications():  # one message to the front end
            self.tokens, self.choices, self.weights = tokens, choices, units
            self.layers, self.experts, self.top_k = layers, experts, top_k
            self.layer = min(self.layer, layers - 1)
            self.show = SHOW[min(top_of(self.show), top_k) - 1]
            self.expert = self.expert if self.expert < experts else -1

    # ---------------------------------------------------------------------------- validation
    # Each trait is checked against the others as they are: to change several together, set them
    # inside ``with widget.hold_trait_notifications():``, or use set_routing().
    @traitlets.validate("tokens", "layers", "experts", "top_k", "choices", "weights")
    def _valid_data(self, proposal):
        name = proposal["trait"].name

        def check(value):
            state = {n: getattr(self, n) for n in ("tokens", "layers", "experts", "top_k", "choices", "weights")}
            if name == "tokens":
                value = check_tokens(value)
            elif name in ("layers", "top_k"):
                value = _int(name, value, 1)
            elif name == "experts":
                value = _experts(value)
            state[name] = value
            _check_stored(state["choices"], state["weights"])
            shape = _shape(state["choices"])
            if shape != (state["layers"], len(state["tokens"]), state["top_k"]):
                raise ValueError(f"choices and weights have shape {shape}, but layers={state['layers']}, "
                                 f"{len(state['tokens'])} tokens and top_k={state['top_k']}: set them together, "
                                 f"inside hold_trait_notifications(), or use set_routing()")
            rows = [row for layer in state["choices"] for row in layer]
            if any(not 0 <= e < state["experts"] for row in rows for e in row):
                raise ValueError(f"choices must be expert indices in 0..{state['experts'] - 1}")
            if any(len(set(row)) != len(row) for row in rows):
                raise ValueError("a token's choices must be distinct experts")
            if self.layer >= state["layers"] or self.expert >= state["experts"] or top_of(self.show) > state["top_k"]:
                raise ValueError(f"layer={self.layer}, expert={self.expert} or show={self.show!r} does not fit "
                                 f"the new routing: set them too, or use set_routing()")
            return value
        return checked(proposal, check)

    @traitlets.validate("layer")
    def _valid_layer(self, proposal):
        return checked(proposal, lambda value: _int("layer", value, 0, self.layers - 1))

    @traitlets.validate("show")
    def _valid_show(self, proposal):
        def check(value):
            if top_of(value) > self.top_k:
                raise ValueError(f"show={value!r} needs two choices per token; the routing has top_k={self.top_k}")
            return value
        return checked(proposal, check)

    @traitlets.validate("expert")
    def _valid_expert(self, proposal):
        return checked(proposal, lambda value: _int("expert", value, -1, self.experts - 1))

    # ------------------------------------------------------------------------------- reading
    @property
    def top(self) -> int:
        """1 for the top-1 display, 2 for the top-2 display."""
        return top_of(self.show)

    def load(self) -> list[float]:
        """What the load bars show: :func:`expert_load` of the selected layer and display."""
        return expert_load(self.choices[self.layer], self.experts, self.top)

    def routed_tokens(self, expert: int | None = None) -> list[int]:
        """:func:`routed_tokens` of ``expert`` (default: the highlighted one) in the shown layer."""
        expert = self.expert if expert is None else expert
        return routed_tokens(self.choices[self.layer], expert, self.top)

    def routing_weights(self) -> list:
        """The stored weights as floats (thousandths / 1000), ``(L, T, k)``."""
        return [[[u / SCALE for u in row] for row in layer] for layer in self.weights]

    def readout(self, token: int | None = None) -> str:
        """:func:`readout_text` at the current state (for ``token`` hovered, if given)."""
        return readout_text(self.tokens, self.choices[self.layer], self.weights[self.layer], self.layer,
                            self.experts, self.show, self.expert, token)

    def __repr__(self) -> str:  # stable: stored notebook outputs must not hold an address
        title = f", title={self.title!r}" if self.title else ""
        return (f"RoutingView(tokens={len(self.tokens)}, layers={self.layers}, experts={self.experts}, "
                f"top_k={self.top_k}, layer={self.layer}, show={self.show!r}, expert={self.expert}{title})")
