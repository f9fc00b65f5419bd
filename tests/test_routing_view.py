"""companion.widgets.routing_view: the routing's Python twins, the widget's state, and its JavaScript.

The Python twins (loads, highlighted tokens, band widths, formatting, the readout) are checked
against their definitions; the JavaScript is run in Node (skipped without it) and must compute the
same; and the widget is drawn in headless Chromium (skipped without it) with a stand-in for the
widget model, where its layer buttons, top-1/top-2 switch, legend, tokens and keys must change what
it shows, in agreement with the Python twins. The site check of tests/site_helpers.py
(``check_routing_view``) is run on that stand-in page too, since it otherwise runs only once a
chapter of the built book shows the widget.
"""

import json
import math
import re
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import traitlets
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.widgets import RoutingView, display_token, expert_load
from companion.widgets import routing_view as module

from widget_browser import mount_widget, page, run_js, stored_state  # noqa: F401  (page is a pytest fixture)

JS_PATH = Path(module.__file__).with_name("routing_view.js")
CSS_PATH = Path(module.__file__).with_name("routing_view.css")
TRAITS = ("tokens", "layers", "experts", "top_k", "choices", "weights", "layer", "show", "expert", "title")
TOKENS = ["The", " cat", " sat", " on", " the", " mat", ".", "\n", "def", " f", "(x", "):", "\n", "   ", " return",
          " x", " +", " 1", "\n", "<b>", "\u00e9t\u00e9", ""]


def routing(layers: int, T: int, experts: int, k: int = 2, seed: int = 0, renormalize: bool = True,
            spread: float = 1.5):
    """Token-choice routing of random logits ``(layers, T, experts)``: softmax, the top ``k`` (ties to
    the lower index), their probabilities (renormalised over the ``k``, as Mixtral, or not)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((layers, T, experts)) * spread
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    index = np.argsort(-p, axis=-1, kind="stable")[..., :k]
    gate = np.take_along_axis(p, index, -1)
    if renormalize:
        gate = gate / gate.sum(-1, keepdims=True)
    return index, gate


def make(layers=3, T=len(TOKENS), experts=8, k=2, seed=0, **kwargs) -> RoutingView:
    index, gate = routing(layers, T, experts, k, seed)
    tokens = TOKENS[:T] if T <= len(TOKENS) else [f" t{i}" for i in range(T)]
    return RoutingView(tokens, index, gate, experts=experts, **kwargs)


# ------------------------------------------------------------------------------ the weights
@settings(max_examples=300, deadline=None)
@given(w=st.lists(st.floats(0, 1), min_size=1, max_size=2), normalize=st.booleans())
def test_round_weights(w, normalize):
    if normalize and sum(w) > 0:
        w = [x / sum(w) for x in w]
    units = module.round_weights(w)
    assert all(isinstance(u, int) and u >= 0 for u in units)
    total = sum(w)
    exact = [x / total * 1000 for x in w] if abs(total - 1) <= module.SUM_TOLERANCE else [x * 1000 for x in w]
    assert all(abs(u - e) < 1 for u, e in zip(units, exact)), (w, units)  # less than a thousandth off
    if abs(total - 1) <= module.SUM_TOLERANCE:
        assert sum(units) == 1000  # the shown weights of a renormalised token sum to exactly 1.000
    else:
        assert all(abs(u - e) <= 0.5 + 1e-6 for u, e in zip(units, exact))  # the nearest thousandth
    if len(w) == 2 and w[0] >= w[1]:
        assert units[0] >= units[1]  # the order is kept
    assert module.round_weights([u / 1000 for u in units]) == units  # rounding again changes nothing


def test_round_weights_cases():
    f = module.round_weights
    assert f([0.5004, 0.4996]) == [500, 500]
    assert f([0.0005, 0.9995]) == [1, 999]  # a tie of remainders: the unit goes to the earlier choice
    assert f([0.9995, 0.0005]) == [1000, 0]  # 999.5 and 0.5: the earlier
    assert f([0.1004, 0.1004]) == [100, 100]  # not renormalised: each to the nearest thousandth
    assert f([0.0005]) == [1] and f([0.0004999]) == [0]  # half up
    assert f([1.0]) == [1000] and f([0.6, 0.4]) == [600, 400] and f([0.7, 0.3000001]) == [700, 300]
    assert f([0.9, 0.8]) == [900, 800]  # sigmoid gates: need not sum to 1
    assert f([1.0000004, 0.0]) == [1000, 0]  # sums to 1 within SUM_TOLERANCE: renormalised first
    assert f([0.5005, 0.5005]) == [501, 501]  # sums to 1.001: not a renormalised token, each half up
    assert f([0.544, 0.455]) == [544, 455] == f([0.5444, 0.4554])  # sums to 0.999: rounding again changes nothing
    assert f([2.5]) == [2500]


# -------------------------------------------------------------------------------- the twins
def counts_by_definition(choices, experts, top):
    array = np.asarray(choices)[:, :top]
    return [int((array == e).any(axis=1).sum()) for e in range(experts)]


@settings(max_examples=150, deadline=None)
@given(T=st.integers(1, 40), experts=st.integers(2, 16), k=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_loads_and_highlights_are_the_definitions(T, experts, k, seed):
    index, _ = routing(1, T, experts, k, seed, spread=3.0)
    choices = index[0].tolist()
    for top in range(1, k + 1):
        counts = module.expert_counts(choices, experts, top)
        assert counts == counts_by_definition(choices, experts, top)
        assert sum(counts) == top * T  # each token counts once for each of its (distinct) choices
        load = expert_load(choices, experts, top)
        assert load == [c / T for c in counts] and all(0 <= x <= 1 for x in load)
        assert math.isclose(sum(load), top)
        for e in range(experts):
            routed = module.routed_tokens(choices, e, top)
            assert routed == [t for t in range(T) if e in choices[t][:top]] and len(routed) == counts[e]
    if k == 2:  # top-1 tokens are among the top-2 ones
        assert all(set(module.routed_tokens(choices, e, 1)) <= set(module.routed_tokens(choices, e, 2))
                   for e in range(experts))


def test_expert_load_by_hand():
    choices = [[0, 1], [0, 2], [1, 0], [3, 2]]
    assert expert_load(choices, 4, 1) == [0.5, 0.25, 0.0, 0.25]
    assert expert_load(choices, 4, 2) == [0.75, 0.5, 0.5, 0.25]
    assert expert_load(torch.tensor(choices), 5, 1) == [0.5, 0.25, 0.0, 0.25, 0.0]
    assert module.routed_tokens(choices, 2, 2) == [1, 3] and module.routed_tokens(choices, 2, 1) == []
    with pytest.raises(ValueError, match="k >= top = 2"):
        expert_load([[0], [1]], 2, 2)
    with pytest.raises(ValueError, match="top must be an int in 1..2"):
        expert_load(choices, 4, 3)
    with pytest.raises(ValueError, match="experts must be an int in 1..16"):
        expert_load(choices, 17, 1)


def test_band_widths():
    assert module.band_widths([712, 288], 1) == [100.0]
    assert module.band_widths([712, 288], 2) == [71.2, 28.8]
    assert module.band_widths([0, 0], 2) == [50.0, 50.0]
    assert module.band_widths([900, 800], 2) == [100 * 900 / 1700, 100 * 800 / 1700]
    for a in range(0, 1001, 7):
        b = 1000 - a
        widths = module.band_widths([a, b], 2)
        assert widths == [float(Fraction(100 * a, 1000)), float(Fraction(100 * b, 1000))]  # correctly rounded
        assert abs(sum(widths) - 100) < 1e-12


def test_formats():
    assert [module.format_weight(u) for u in (0, 5, 42, 712, 1000, 2500)] == [
        "0.000", "0.005", "0.042", "0.712", "1.000", "2.500"]
    for u in range(0, 3001, 13):
        assert module.format_weight(u) == f"{Decimal(u) / 1000:.3f}"
    assert [module.format_share(c, t) for c, t in ((3, 8), (1, 3), (2, 3), (0, 5), (5, 5), (1, 16), (1, 2000))] == [
        "37.5%", "33.3%", "66.7%", "0.0%", "100.0%", "6.3%", "0.1%"]  # 6.25 and 0.05: half up
    for total in range(1, 60):
        for count in range(0, 2 * total + 1):
            tenths = math.floor(Fraction(1000 * count, total) + Fraction(1, 2))
            assert module.format_share(count, total) == f"{tenths // 10}.{tenths % 10}%"
    with pytest.raises(ValueError, match="total"):
        module.format_share(1, 0)


def test_readout_text():
    tokens = ["a", " b", "\n"]
    choices, units = [[2, 0], [1, 2], [0, 1]], [[712, 288], [500, 500], [1000, 0]]
    assert module.readout_text(tokens, choices, units, 3, 4, "top-2", -1, 1) == (
        "layer 3, token 1 \u201c\u00b7b\u201d \u2192 expert 1 (0.500), expert 2 (0.500)")
    assert module.readout_text(tokens, choices, units, 0, 4, "top-1", 2) == (
        "layer 0, expert 2: 1 of 3 tokens (33.3%) as their top-1 choice; balanced: 25.0%")
    assert module.readout_text(tokens, choices, units, 0, 4, "top-2", 2) == (
        "layer 0, expert 2: 2 of 3 tokens (66.7%) among their top-2 choices; balanced: 50.0%")
    assert module.readout_text(tokens, choices, units, 1, 4, "top-1") == (
        "layer 1: 3 tokens routed among 4 experts (top-1 shown); a balanced router gives each expert 25.0%")
    assert module.describe_token("\n", 2, [0, 1], [1000, 0], 0) == "layer 0, token 2 \u201c\u21b5\u201d \u2192 expert 0 (1.000), expert 1 (0.000)"


def test_palette():
    assert len(module.EXPERT_COLORS) == len(module.EXPERT_STRIPED) == module.MAX_EXPERTS == 16
    assert len(set(module.BASE_COLORS)) == 8 and all(re.fullmatch(r"#[0-9A-F]{6}", c) for c in module.BASE_COLORS)
    # every expert is told apart by its colour, or, past the eighth, by the colour and the stripes
    assert len(set(zip(module.EXPERT_COLORS, module.EXPERT_STRIPED))) == 16
    assert module.EXPERT_STRIPED == (False,) * 8 + (True,) * 8
    assert [module.expert_color(e) for e in (0, 8, 15)] == ["#77AADD", "#77AADD", "#AAAA00"]

    def luminance(color):  # WCAG relative luminance
        channels = [int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    text = luminance("#111111")
    for color in module.BASE_COLORS:  # the tokens' dark text stays legible on every colour (WCAG AA: 4.5)
        assert (luminance(color) + 0.05) / (text + 0.05) > 6, color


# ------------------------------------------------------------------------- the synced form
def test_encoding_round_trips_compactly_and_exactly():
    widget = make(layers=4, T=22, experts=16, seed=3)
    state = widget.get_state()
    assert state["choices"] == module.encode_choices(widget.choices)
    assert state["choices"]["shape"] == [4, 22, 2] and len(state["choices"]["values"]) == 4 * 22 * 2
    assert module.decode_choices(state["choices"]) == widget.choices
    assert module.decode_weights(state["weights"]) == widget.weights
    assert json.loads(json.dumps(state["weights"])) == state["weights"]  # strings and ints: exact through JSON
    synced = json.dumps({name: state[name] for name in ("choices", "weights")})
    assert len(synced) < 4 * 22 * 2 * 6  # a few characters per choice
    assert set(state["choices"]["values"]) <= set(module.HEX)
    assert module.decode_choices(module.encode_choices([[[15, 0]]])) == [[[15, 0]]]
    assert module.encode_choices([]) == {"shape": [0, 0, 0], "values": ""} and module.decode_choices(
        {"shape": [0, 0, 0], "values": ""}) == []
    with pytest.raises(ValueError, match="hexadecimal"):
        module.decode_choices({"shape": [1, 1, 2], "values": "0g"})
    with pytest.raises(ValueError, match="hexadecimal"):
        module.decode_choices({"shape": [1, 1, 2], "values": "012"})
    with pytest.raises(ValueError, match="non-negative integers"):
        module.decode_weights({"shape": [1, 1, 2], "values": "1,-2"})
    with pytest.raises(ValueError, match="non-negative integers"):
        module.decode_weights({"shape": [1, 2, 1], "values": "1"})


def test_from_json_sets_the_traits():
    widget = make(layers=2, T=5, experts=4)
    other = make(layers=2, T=5, experts=4, seed=9)
    state = other.get_state()
    widget.set_state({"choices": state["choices"], "weights": state["weights"]})  # as the front end would send
    assert (widget.choices, widget.weights) == (other.choices, other.weights)


# ------------------------------------------------------------------------------------ the widget
def test_widget_repr_state_and_reading():
    widget = make(layers=3, T=22, experts=8)
    text = repr(widget)
    assert not re.search(r"0x[0-9a-fA-F]+", text)
    assert text == "RoutingView(tokens=22, layers=3, experts=8, top_k=2, layer=0, show='top-1', expert=-1)"
    assert widget._repr_mimebundle_()[0]["text/plain"] == text  # what a notebook stores
    assert repr(make(layers=3, T=22, experts=8)) == text
    widget.layer, widget.show, widget.expert, widget.title = 2, "top-2", 5, "A 8-expert model"
    assert repr(widget) == ("RoutingView(tokens=22, layers=3, experts=8, top_k=2, layer=2, show='top-2', expert=5, "
                            "title='A 8-expert model')")
    state = widget.get_state()
    assert set(TRAITS) <= set(state) and set(TRAITS) <= set(RoutingView.class_traits(sync=True))
    assert (state["layers"], state["experts"], state["top_k"], state["layer"], state["show"], state["expert"]) == (
        3, 8, 2, 2, "top-2", 5)
    index, gate = routing(3, 22, 8, 2, 0)
    assert widget.choices == index.tolist() and widget.tokens == TOKENS
    assert widget.weights == [[module.round_weights(row) for row in layer] for layer in gate.tolist()]
    assert all(sum(row) == 1000 for layer in widget.weights for row in layer)  # renormalised top-2
    assert np.abs(np.array(widget.routing_weights()) - gate).max() < 1e-3
    assert widget.top == 2 and widget.load() == expert_load(widget.choices[2], 8, 2)
    assert widget.routed_tokens() == module.routed_tokens(widget.choices[2], 5, 2)
    assert widget.readout() == module.readout_text(TOKENS, widget.choices[2], widget.weights[2], 2, 8, "top-2", 5)
    assert widget.readout(4).startswith("layer 2, token 4 \u201c\u00b7the\u201d \u2192 expert ")


def test_widget_accepts_lists_arrays_tensors_and_per_layer_lists():
    index, gate = routing(2, 6, 4, 2, seed=1)
    expected = RoutingView(TOKENS[:6], index.tolist(), gate.tolist(), experts=4)
    conversions = [
        (np.asarray, np.asarray), (lambda x: torch.tensor(x), lambda x: torch.tensor(x)),
        (lambda x: torch.tensor(x, dtype=torch.int32), lambda x: torch.tensor(x, dtype=torch.float32)),
        (lambda x: torch.tensor(x), lambda x: torch.tensor(x, requires_grad=True) * 1),
        (lambda x: tuple(map(tuple, map(tuple, x.tolist()))), lambda x: x.tolist()),
    ]
    for to_choices, to_weights in conversions:
        widget = RoutingView(tuple(TOKENS[:6]), to_choices(index), to_weights(gate), experts=4)
        assert (widget.choices, widget.weights) == (expected.choices, expected.weights)
    # bfloat16 weights: rounded from what the tensor holds
    widget = RoutingView(TOKENS[:6], torch.tensor(index), torch.tensor(gate).to(torch.bfloat16), experts=4)
    assert widget.choices == expected.choices
    assert np.abs(np.array(widget.routing_weights()) - gate).max() < 5e-3
    # from_routing: one (T, k) or (1, T, k) tensor per layer, as a router returns them
    for per_layer in (lambda x: [torch.tensor(layer) for layer in x], lambda x: [torch.tensor(layer)[None] for layer in x],
                      lambda x: list(x)):
        widget = RoutingView.from_routing(TOKENS[:6], per_layer(index), per_layer(gate), experts=4, show="top-2")
        assert (widget.choices, widget.weights, widget.show) == (expected.choices, expected.weights, "top-2")
    with pytest.raises(ValueError, match="batch of 2"):
        RoutingView.from_routing(TOKENS[:6], [torch.tensor(np.stack([index[0]] * 2))], [torch.tensor(gate[0])], experts=4)
    with pytest.raises(ValueError, match=r"shape \(T, k\) or \(1, T, k\)"):
        RoutingView.from_routing(TOKENS[:6], [torch.tensor(index[0, :, 0])], [torch.tensor(gate[0])], experts=4)
    # top-1 routing (Switch): gates that do not sum to 1
    widget = RoutingView(["a", "b"], [[[1], [0]]], [[[0.61], [0.5]]], experts=2)
    assert (widget.top_k, widget.weights) == (1, [[[610], [500]]])


def test_widget_takes_a_routers_output():
    try:
        from companion.nn.router import token_choice
    except Exception as error:  # written alongside this widget; its absence is not this widget's failure
        pytest.skip(f"companion.nn.router.token_choice is not available: {error}")
    torch.manual_seed(0)
    logits = [torch.randn(len(TOKENS), 8, requires_grad=True) for _ in range(3)]
    routed = [token_choice(x, 2)[:2] for x in logits]
    widget = RoutingView.from_routing(TOKENS, [i for i, _ in routed], [g for _, g in routed], experts=8)
    assert widget.choices == [i.tolist() for i, _ in routed]
    assert all(sum(row) == 1000 for layer in widget.weights for row in layer)


@pytest.mark.parametrize("change, error, match", [
    ({"tokens": "abc"}, TypeError, "tokens must be a list of strings"),
    ({"tokens": ["a", 1]}, TypeError, r"tokens\[1\]"),
    ({"tokens": TOKENS[:5]}, ValueError, r"shape \(layers, 5, k\) for 5 tokens"),
    ({"choices": "x"}, TypeError, "choices must be a nested list"),
    ({"choices": [[[0, 1]]]}, ValueError, r"shape \(layers, 6, k\)"),
    ({"choices": [[0, 1]] * 6}, ValueError, "3 dimensions|got 2 dimensions"),
    ({"choices": [[[0, 1]] * 5 + [[0]]]}, ValueError, "rectangular"),
    ({"choices": [[[0.0, 1.0]] * 6]}, TypeError, "integer expert indices"),
    ({"choices": [[[True, 1]] * 6]}, TypeError, "must hold numbers"),
    ({"choices": [[[0, 4]] * 6] * 2}, ValueError, r"expert indices in 0..3 \(4 experts\): layer 0, token 0 has 4"),
    ({"choices": [[[0, -1]] * 6] * 2}, ValueError, "expert indices in 0..3"),
    ({"choices": [[[2, 2]] * 6] * 2}, ValueError, "distinct experts: layer 0, token 0 chose expert 2 twice"),
    ({"choices": [[[0, 1, 2]] * 6]}, ValueError, r"the first two, choices\[..., :2\]"),
    ({"choices": np.zeros((1, 6, 0), dtype=int)}, ValueError, "at least one layer, token and choice"),
    ({"weights": [[[0.5, 0.5]] * 6]}, ValueError, "weights must have the shape of choices"),
    ({"weights": "w"}, TypeError, "weights must be a nested list"),
    ({"weights": np.full((2, 6, 2), math.nan)}, ValueError, "finite"),
    ({"weights": np.full((2, 6, 2), -0.1)}, ValueError, r"in 0..1000, found -0.1"),
    ({"weights": np.full((2, 6, 2), 1e4)}, ValueError, "in 0..1000"),
    ({"weights": [[["a", "b"]] * 6] * 2}, TypeError, "weights must hold numbers"),
    ({"experts": 17}, ValueError, "experts must be an int in 1..16"),
    ({"experts": 4.0}, TypeError, "experts must be an int"),
    ({"experts": 3}, ValueError, "expert indices in 0..2"),
    ({"layer": 2}, ValueError, "layer must be an int in 0..1"),
    ({"layer": True}, TypeError, "layer must be an int"),
    ({"show": "top-3"}, ValueError, "show must be one of"),
    ({"expert": 4}, ValueError, r"expert must be an int in -1..3"),
    ({"expert": -2}, ValueError, "expert"),
    ({"title": 3}, TypeError, "title must be a string"),
])
def test_widget_rejects_bad_arguments(change, error, match):
    index, gate = routing(2, 6, 4, 2, seed=0)
    kwargs = {"tokens": TOKENS[:6], "choices": index, "weights": gate, "experts": 4, **change}
    with pytest.raises(error, match=match):
        RoutingView(**kwargs)


def test_widget_rejects_too_much_data_and_top2_of_top1():
    index, gate = routing(1, 6, 4, 1)
    with pytest.raises(ValueError, match="needs two choices per token"):
        RoutingView(TOKENS[:6], index, gate, experts=4, show="top-2")
    T = module.MAX_TOKENS + 1
    with pytest.raises(ValueError, match=f"at most {module.MAX_TOKENS} tokens"):
        RoutingView(["x"] * T, np.zeros((1, T, 1), dtype=int), np.ones((1, T, 1)), experts=1)
    with pytest.raises(ValueError, match=f"at most {module.MAX_LAYERS} layers"):
        RoutingView(["x"], np.zeros((65, 1, 1), dtype=int), np.ones((65, 1, 1)), experts=1)
    with pytest.raises(ValueError, match="8256 routings; at most 8192"):
        RoutingView(["x"] * 258, np.zeros((32, 258, 1), dtype=int), np.ones((32, 258, 1)), experts=1)
    widget = RoutingView(["x"] * 256, np.zeros((32, 256, 1), dtype=int), np.ones((32, 256, 1)), experts=1)
    assert len(json.dumps(widget.get_state())) < 100_000  # the largest routing stays small in the notebook


@pytest.mark.parametrize("name, bad, match", [
    ("layer", 3, "layer must be an int in 0..2"), ("layer", -1, "layer"), ("show", "top-3", "show must be one of"),
    ("expert", 8, "expert must be an int in -1..7"), ("expert", -2, "expert"),
    ("tokens", ["a"], r"set them together"), ("tokens", [], "at least one token"),
    ("layers", 2, "set them together"), ("top_k", 1, "set them together"), ("experts", 3, "expert indices in 0..2"),
    ("experts", 17, "experts must be an int in 1..16"),
    ("choices", [[[0, 0]] * 22] * 3, "distinct experts"), ("choices", [[[0, 9]] * 22] * 3, "expert indices in 0..7"),
    ("choices", [[[0, 1]] * 22] * 2, "same shape"),
    ("weights", [[[0.5, 0.5]] * 22] * 3, "integer thousandths"), ("weights", [[[-1, 0]] * 22] * 3, "thousandths in 0.."),
    ("weights", [[[500]] * 22] * 3, "same shape"),
])
def test_widget_rejects_bad_traits(name, bad, match):
    widget = make(layers=3, T=22, experts=8, layer=1, show="top-2", expert=3)
    before = (repr(widget), widget.get_state())
    with pytest.raises(traitlets.TraitError, match=match):
        setattr(widget, name, bad)
    assert (repr(widget), widget.get_state()) == before


def test_widget_view_must_fit_new_data():
    widget = make(layers=3, T=22, experts=8, layer=2)
    index, gate = routing(2, 22, 8, 2, seed=5)
    with pytest.raises(traitlets.TraitError, match="does not fit the new routing"):
        with widget.hold_trait_notifications():
            widget.choices, widget.weights, widget.layers = index.tolist(), module.check_routing(
                TOKENS, index, gate, 8)[2], 2
    assert widget.layers == 3 and widget.layer == 2


def test_set_routing_replaces_the_data_together():
    widget = make(layers=3, T=22, experts=8, layer=2, show="top-2", expert=7)
    index, gate = routing(2, 5, 4, 1, seed=5)
    widget.set_routing(TOKENS[:5], index, gate, experts=4)  # fewer layers, experts and choices
    assert repr(widget) == "RoutingView(tokens=5, layers=2, experts=4, top_k=1, layer=1, show='top-1', expert=-1)"
    assert widget.choices == index.tolist()
    index, gate = routing(2, 7, 4, 2, seed=6)
    widget.expert = 3
    widget.set_routing(TOKENS[:7], index, gate)  # experts stay 4; the highlight stays
    assert repr(widget) == "RoutingView(tokens=7, layers=2, experts=4, top_k=2, layer=1, show='top-1', expert=3)"
    with pytest.raises(ValueError, match="expert indices in 0..1"):
        widget.set_routing(TOKENS[:7], index, gate, experts=2)
    assert widget.experts == 4 and len(widget.tokens) == 7  # unchanged by the failed call
    with widget.hold_trait_notifications():  # the traits themselves, set together
        widget.tokens, widget.choices, widget.weights = TOKENS[:3], [[[0, 1]] * 3] * 2, [[[600, 400]] * 3] * 2
    assert widget.load() == [1.0, 0.0, 0.0, 0.0]


def test_widget_ships_its_javascript_and_css():
    widget = make(layers=1, T=3, experts=2)
    assert str(widget._esm) == JS_PATH.read_text() and str(widget._css) == CSS_PATH.read_text()
    esm, css = JS_PATH.read_text(), CSS_PATH.read_text()
    assert re.search(r"^function render\(", esm, re.M)
    assert re.search(r"^export default \{[^}]*\brender\b", esm, re.M)
    assert not re.search(r"^\s*import\b|https?://", esm, re.M)  # nothing from outside
    assert css.startswith(".ab-route {")
    for cls in ("ab-route-tok", "ab-route-band", "ab-route-dim", "ab-route-hit", "ab-route-striped", "ab-route-bar",
                "ab-route-balanced", "ab-route-legend-item", "ab-route-readout", "ab-route-muted"):
        assert f".{cls}" in css and cls in esm, cls
    for selector in re.findall(r"\.(ab-[\w-]+)", css):
        assert selector.startswith("ab-route"), selector  # every class under the widget's own root
    used = set(re.findall(r'model\.(?:get|set)\("(\w+)"', esm))
    for fields in re.findall(r"save\(\{([^}]*)\}", esm):  # save({ name: value, ... }) or save({ name })
        used |= {part.split(":")[0].strip() for part in fields.split(",")}
    for names in re.findall(r"const (?:names|dataNames) = \[([^\]]*)\]", esm):
        used |= set(re.findall(r'"(\w+)"', names))
    assert set(TRAITS) <= used, set(TRAITS) - used
    assert used <= set(RoutingView.class_traits(sync=True)), used - set(RoutingView.class_traits(sync=True))


# ------------------------------------------------------------------- the JavaScript's numbers
def test_javascript_constants_equal_python(node):
    js = run_js(node, JS_PATH, "show([EXPERT_COLORS, EXPERT_STRIPED, SHOW, HEX, SCALE, VISIBLE]);")
    assert js[0] == list(module.EXPERT_COLORS) and js[1] == list(module.EXPERT_STRIPED)
    assert js[2] == list(module.SHOW) and js[3] == module.HEX and js[4] == module.SCALE
    from companion.widgets.attention_explorer import VISIBLE
    assert js[5] == VISIBLE


def test_javascript_decodes_and_computes_as_python(node):
    cases = []
    for layers, T, experts, k, seed in ((1, 1, 1, 1, 0), (2, 7, 4, 2, 1), (3, 22, 16, 2, 2), (4, 40, 8, 1, 3),
                                        (2, 30, 3, 2, 4), (1, 17, 16, 1, 5)):
        widget = make(layers=layers, T=T, experts=experts, k=k, seed=seed)
        state = widget.get_state()
        cases.append((widget, state["choices"], state["weights"]))
    js = run_js(node, JS_PATH, f"const cases = {json.dumps([[c, w, wd.experts, wd.top_k] for wd, c, w in cases])};\n"
                "show(cases.map(([c, w, experts, k]) => { const choices = decodeChoices(c), weights = decodeWeights(w);"
                " const tops = k === 2 ? [1, 2] : [1];"
                " return [choices, weights, choices.map((layer, l) => tops.map((top) => ["
                "  expertCounts(layer, experts, top), expertLoad(layer, experts, top),"
                "  Array.from({length: experts}, (_, e) => routedTokens(layer, e, top)),"
                "  weights[l].map((u) => bandWidths(u, top))]))]; }));")
    for (widget, _, _), (choices, weights, per_layer) in zip(cases, js):
        assert choices == widget.choices and weights == widget.weights
        for l, tops in enumerate(per_layer):
            for top, (counts, load, routed, bands) in enumerate(tops, start=1):
                c = widget.choices[l]
                assert counts == module.expert_counts(c, widget.experts, top)
                assert load == expert_load(c, widget.experts, top)  # exactly: the same division
                assert routed == [module.routed_tokens(c, e, top) for e in range(widget.experts)]
                assert bands == [module.band_widths(u, top) for u in widget.weights[l]]


def test_javascript_formats_and_readouts_equal_python(node):
    weights = list(range(0, 2501, 7)) + [1000, 999, 1, 0]
    shares = [(c, t) for t in (1, 2, 3, 7, 8, 16, 40, 333, 1024) for c in range(0, 2 * t + 1, max(1, t // 9))]
    bands = [[a, 1000 - a] for a in range(0, 1001, 3)] + [[0, 0], [900, 800], [1, 0], [2500, 3]]
    widget = make(layers=2, T=len(TOKENS), experts=5, seed=7)
    readouts = [(widget.tokens, widget.choices[l], widget.weights[l], l, 5, show, expert, token)
                for l in (0, 1) for show in module.SHOW for expert in (-1, 0, 4) for token in (None, 0, 7, 21)]
    js = run_js(node, JS_PATH, f"show([{json.dumps(weights)}.map(formatWeight), {json.dumps(shares)}.map(([c, t]) => formatShare(c, t)),"
                f" {json.dumps(bands)}.map((u) => bandWidths(u, 2)), {json.dumps(TOKENS)}.map(displayToken),"
                f" {json.dumps(readouts)}.map((r) => readoutText(...r)), topOf('top-1'), topOf('top-2')]);")
    assert js[0] == [module.format_weight(u) for u in weights]
    assert js[1] == [module.format_share(c, t) for c, t in shares]
    assert js[2] == [module.band_widths(u, 2) for u in bands]
    assert js[3] == [display_token(t) for t in TOKENS]
    assert js[4] == [module.readout_text(*r) for r in readouts]
    assert js[5:] == [1, 2]


def test_javascript_waits_for_a_consistent_state(node):
    c2, w2 = [[[0, 1], [2, 0]]], [[[600, 400], [1000, 0]]]
    good = (["a", "b"], 1, 3, 2, c2, w2, 0, "top-2", -1)
    cases = [(good, True), ((*good[:7], "top-1", 2), True),
             ((["a"], *good[1:]), False),  # tokens before the routing that goes with them
             ((good[0], 2, *good[2:]), False), ((good[0], 1, 2, *good[3:]), False),  # an expert index too large
             ((*good[:3], 1, *good[4:]), False), ((*good[:4], None, *good[5:]), False),
             ((*good[:5], [[[600], [1000]]], *good[6:]), False), ((*good[:6], 1, *good[7:]), False),
             ((*good[:7], "top-3", -1), False), ((*good[:8], 3), False), ((*good[:3], 1, [[[0], [2]]],
                                                                             [[[1000], [1000]]], 0, "top-2", -1), False),
             (([], 1, 3, 2, [[]], [[]], 0, "top-1", -1), False), ((good[0], 1, 17, *good[3:]), False)]
    js = run_js(node, JS_PATH, f"show({json.dumps([c for c, _ in cases])}.map((c) => consistentState(...c)));")
    assert js == [ok for _, ok in cases]
    js = run_js(node, JS_PATH, "show([decodeChoices({shape: [1, 1, 2], values: '0g'}), decodeChoices({shape: [1, 1, 2], values: '012'}),"
                " decodeWeights({shape: [1, 1, 2], values: '1,-2'}), decodeWeights(null), decodeChoices({shape: [1, 1, 1]})]);")
    assert js == [None] * 5


# ------------------------------------------------------------------ the widget drawn in a browser
def mount(page, widget: RoutingView) -> list[str]:
    return mount_widget(page, JS_PATH.read_text(), CSS_PATH.read_text(), stored_state(widget, TRAITS), ".ab-route")


def shown(page) -> dict:
    return page.evaluate("""() => {
      const root = document.querySelector('#root .ab-route');
      const pressed = (sel) => [...root.querySelectorAll(sel)].map((b) => b.getAttribute('aria-pressed') === 'true');
      return {
        layers: pressed('.ab-route-layer'), show: pressed('.ab-route-show .ab-route-button'),
        legend: pressed('.ab-route-legend-item'),
        chips: [...root.querySelectorAll('.ab-route-tok')].map((c) => ({
          text: c.querySelector('.ab-route-text').textContent, experts: c.dataset.experts,
          dim: c.classList.contains('ab-route-dim'), hit: c.classList.contains('ab-route-hit'),
          bands: [...c.querySelectorAll('.ab-route-band')].map((b) => [Number(b.dataset.expert), Number(b.dataset.width),
            getComputedStyle(b).backgroundColor, b.classList.contains('ab-route-striped')])})),
        counts: [...root.querySelectorAll('.ab-route-bar')].map((b) => Number(b.dataset.count)),
        shares: [...root.querySelectorAll('.ab-route-share')].map((s) => s.textContent),
        readout: root.querySelector('.ab-route-readout').textContent,
        title: root.querySelector('.ab-route-title').hidden ? null : root.querySelector('.ab-route-title').textContent,
        saved: window.saved.length ? window.saved[window.saved.length - 1] : null,
      };
    }""")


def hex_rgb(color: str) -> str:
    return "rgb({}, {}, {})".format(*(int(color[i:i + 2], 16) for i in (1, 3, 5)))


def assert_shows(page, widget: RoutingView, layer: int, show: str, expert: int, token: int | None = None) -> dict:
    """The drawing agrees with the Python twins at this view."""
    s = shown(page)
    where = f"layer {layer}, {show}, expert {expert}"
    assert s["layers"] == [l == layer for l in range(widget.layers)], where
    assert s["show"] == [x == show for x in module.SHOW], where
    assert s["legend"] == [e == expert for e in range(widget.experts)], where
    top, c, u = module.top_of(show), widget.choices[layer], widget.weights[layer]
    hit = set(module.routed_tokens(c, expert, top)) if expert >= 0 else set()
    for t, chip in enumerate(s["chips"]):
        assert chip["text"] == display_token(widget.tokens[t])
        assert chip["experts"] == ",".join(map(str, c[t][:top])), (where, t)
        assert chip["bands"] == [[e, w, hex_rgb(module.EXPERT_COLORS[e]), module.EXPERT_STRIPED[e]]
                                 for e, w in zip(c[t][:top], module.band_widths(u[t], top))], (where, t)
        assert (chip["hit"], chip["dim"]) == (expert >= 0 and t in hit, expert >= 0 and t not in hit), (where, t)
    counts = module.expert_counts(c, widget.experts, top)
    assert s["counts"] == counts and s["shares"] == [module.format_share(n, len(c)) for n in counts], where
    assert s["readout"] == module.readout_text(widget.tokens, c, u, layer, widget.experts, show, expert, token), where
    return s


def test_the_widget_draws_and_responds(page):
    widget = make(layers=3, T=len(TOKENS), experts=12, seed=4, title="Routing of a toy model")
    errors = mount(page, widget)
    root = page.locator("#root .ab-route")
    s = assert_shows(page, widget, 0, "top-1", -1)
    assert s["title"] == "Routing of a toy model"
    root.locator(".ab-route-layer").nth(2).click()
    assert assert_shows(page, widget, 2, "top-1", -1)["saved"]["layer"] == 2  # the change is sent to the model
    root.locator(".ab-route-top2").click()
    s = assert_shows(page, widget, 2, "top-2", -1)
    assert s["saved"]["show"] == "top-2" and all(len(chip["bands"]) == 2 for chip in s["chips"])
    assert any(chip["bands"][0][3] for chip in s["chips"])  # experts 8-11 are striped
    root.locator(".ab-route-legend-item").nth(9).click()
    s = assert_shows(page, widget, 2, "top-2", 9)
    assert s["saved"]["expert"] == 9 and any(chip["hit"] for chip in s["chips"])
    root.locator(".ab-route-layer").nth(1).click()
    assert_shows(page, widget, 1, "top-2", 9)
    root.locator(".ab-route-top1").click()
    assert_shows(page, widget, 1, "top-1", 9)
    root.locator(".ab-route-legend-item").nth(9).click()  # again: cleared
    assert assert_shows(page, widget, 1, "top-1", -1)["saved"]["expert"] == -1
    root.locator(".ab-route-legend-item").nth(0).click()
    root.locator(".ab-route-legend-item").nth(0).press("Escape")
    assert_shows(page, widget, 1, "top-1", -1)
    root.locator(".ab-route-tok").nth(5).hover()
    assert_shows(page, widget, 1, "top-1", -1, token=5)
    root.locator(".ab-route-controls").hover()
    assert_shows(page, widget, 1, "top-1", -1)
    root.locator(".ab-route-tok").nth(7).focus()
    assert_shows(page, widget, 1, "top-1", -1, token=7)
    root.locator(".ab-route-tok").nth(7).press("ArrowLeft")
    assert_shows(page, widget, 1, "top-1", -1, token=6)
    root.locator(".ab-route-layer").nth(0).focus()
    assert_shows(page, widget, 1, "top-1", -1)
    assert not errors, errors


def test_the_widget_follows_changes_from_python(page):
    widget = make(layers=2, T=6, experts=4, k=1, seed=2)
    errors = mount(page, widget)
    root = page.locator("#root .ab-route")
    assert root.locator(".ab-route-top2").is_disabled()
    assert_shows(page, widget, 0, "top-1", -1)
    # a new routing arrives one trait at a time: nothing is drawn from a half-changed state
    index, gate = routing(3, 9, 16, 2, seed=8)
    widget.set_routing([f"w{i}" for i in range(9)], index, gate, experts=16)
    new = stored_state(widget, TRAITS)
    page.evaluate("([state]) => { for (const name of ['tokens', 'choices', 'layers', 'weights', 'experts', 'top_k',"
                  " 'layer', 'show', 'expert']) model.set(name, state[name]); }", [new])
    assert not root.locator(".ab-route-top2").is_disabled()
    assert_shows(page, widget, 0, "top-1", -1)
    page.evaluate("() => { model.set('layer', 2); model.set('expert', 15); model.set('show', 'top-2'); }")
    assert_shows(page, widget, 2, "top-2", 15)
    assert not errors, errors


@pytest.mark.parametrize("layers, T, experts, k, view", [
    (3, len(TOKENS), 8, 2, {}), (2, 9, 16, 2, {"layer": 1, "show": "top-2", "expert": 11}),
    (1, 5, 3, 1, {"expert": 2}), (4, 60, 6, 2, {"layer": 3, "show": "top-2"}),
])
def test_the_site_check_passes_on_the_widget(page, layers, T, experts, k, view):
    site_helpers = pytest.importorskip("site_helpers")
    assert ".ab-route" in site_helpers.WIDGET_CHECKS
    widget = make(layers=layers, T=T, experts=experts, k=k, seed=T, **view)
    errors = mount(page, widget)
    site_helpers.check_routing_view(page, page.locator("#root .ab-route"), stored_state(widget, TRAITS))
    assert not errors, errors


def test_the_site_check_catches_a_wrong_drawing(page):
    site_helpers = pytest.importorskip("site_helpers")
    widget = make(layers=2, T=8, experts=4, seed=1)
    mount(page, widget)
    state = stored_state(widget, TRAITS)
    wrong = dict(state, choices=module.encode_choices([[[(e + 1) % 4 for e in row] for row in layer]
                                                       for layer in widget.choices]))
    with pytest.raises(AssertionError, match="bands"):
        site_helpers.check_routing_view(page, page.locator("#root .ab-route"), wrong)
    mount(page, widget)  # the load of a miscounted expert is caught too: the page's first bar says one more
    page.evaluate("() => { const bar = document.querySelector('.ab-route-bar'); bar.dataset.count = '99'; }")
    with pytest.raises(AssertionError, match="loads"):
        site_helpers.check_routing_view(page, page.locator("#root .ab-route"), state)
