"""companion.widgets.selective_memory: what each past token keeps in an SSM's state, the widget's state,
and its JavaScript.

The Python twins (``survival``, ``memory_horizon``, ...) are checked against the recurrence itself
(``h_t = exp(Delta_t A) h_{t-1} + Delta_t B x_t``, run in PyTorch) and against the closed form of the
time-invariant case; the JavaScript is run in Node (skipped without it) and must compute the same
numbers and text on random states; and the widget is drawn in headless Chromium (skipped without it)
with a stand-in for the widget model, where its token clicks, mode switch, slider and menu must change
what it shows, in agreement with the Python twins (the site's check, tests/site_helpers.py, included).
"""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import traitlets
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.widgets import SelectiveMemory, display_token, memory_horizon, step_sizes, survival
from companion.widgets import selective_memory as module

from widget_browser import mount_widget, page, run_js, stored_state  # noqa: F401  (page is a pytest fixture)

JS_PATH = Path(module.__file__).with_name("selective_memory.js")
CSS_PATH = Path(module.__file__).with_name("selective_memory.css")
TRAITS = ("tokens", "gates", "decay_rates", "delta_scale", "selective", "query", "dimension")
SLIDER_VALUES = [round(module.SLIDER_MIN + i * module.SLIDER_STEP, 2) for i in range(61)]  # -2 .. 1


def close(a: float, b: float, tol: float = 1e-12) -> bool:
    """Equal within ``tol``, relative to the size of the numbers (at least 1)."""
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def all_close(a, b, tol: float = 1e-12) -> bool:
    return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))


def random_state(seed: int, T: int | None = None) -> dict:
    """A random widget state: gates spread over four decades (some 0), random decay rates."""
    rng = np.random.default_rng(seed)
    T = int(rng.integers(2, 65)) if T is None else T
    gates = [module._round_gate(float(g)) for g in 10 ** rng.uniform(-2, 1.5, T)]
    for t in rng.choice(T, size=min(T, int(rng.integers(0, 3))), replace=False):
        gates[t] = 0.0
    N = int(rng.integers(1, 17))
    rates = [-float(round(a, 3)) for a in 10 ** rng.uniform(-1, 1.3, N)]
    return {"tokens": [f" w{t}" if t % 3 else "\n" for t in range(T)], "gates": gates, "decay_rates": rates,
            "delta_scale": module.scale_from_slider(float(rng.choice(SLIDER_VALUES))),
            "selective": bool(rng.integers(0, 2)), "query": int(rng.integers(0, T)),
            "dimension": int(rng.integers(-1, N))}


# ------------------------------------------------------------------- the twins, by definition
def recurrence_weights(deltas, rates, query) -> torch.Tensor:
    """The coefficient of every ``x_j`` (``j <= query``) in ``h_query``, ``(query + 1, N)``: the scan
    ``h_t = exp(Delta_t A) h_{t-1} + Delta_t B x_t`` (``B = 1``) run on the ``query + 1`` unit inputs at
    once, in float64."""
    A = torch.tensor(rates, dtype=torch.float64)
    h = torch.zeros(query + 1, len(rates), dtype=torch.float64)  # row j: the state for the input x = e_j
    for t in range(query + 1):
        h = torch.exp(deltas[t] * A) * h
        h[t] += deltas[t]  # Bbar_t x_t with x_t = 1 for the input e_t only
    return h


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_survival_is_what_the_recurrence_keeps(seed):
    s = random_state(seed)
    deltas = step_sizes(s["gates"], s["delta_scale"], s["selective"])
    q = s["query"]
    weights = recurrence_weights(deltas, s["decay_rates"], q)
    for n in range(len(s["decay_rates"])):
        got = module.contributions(deltas, s["decay_rates"], q, n)
        assert all_close(got, weights[:, n].tolist(), 1e-10)
        kept = survival(deltas, s["decay_rates"], q, n)
        assert all(close(k, w / deltas[j], 1e-10) for j, (k, w) in enumerate(zip(kept, weights[:, n].tolist()))
                   if deltas[j] > 0)
    mean = module.contributions(deltas, s["decay_rates"], q, -1)
    assert all_close(mean, weights.mean(dim=1).tolist(), 1e-10)
    kept = survival(deltas, s["decay_rates"], q, s["dimension"])
    assert kept[q] == 1.0 and all(0 <= k <= 1 for k in kept)
    assert all(a <= b for a, b in zip(kept, kept[1:]))  # older tokens never keep more


def test_time_invariant_survival_is_exp_a_delta_k():
    tokens = module.DEFAULT_TOKENS
    gates = module.rule_gates(tokens)
    rates = module.s4d_real_decay_rates(8)
    for scale in (0.01, 0.316, 2.0, 10.0):
        deltas = step_sizes(gates, scale, selective=False)
        assert deltas == [scale] * len(tokens)
        assert deltas == step_sizes([1.0] * len(tokens), scale)  # time-invariant is selective with every gate 1
        q = len(tokens) - 1
        for n, a in enumerate(rates):
            kept = survival(deltas, rates, q, n)
            assert all(close(kept[q - k], math.exp(a * scale * k), 1e-11) for k in range(q + 1))
        # the same horizon at every position that has enough tokens before it
        single = next(k for k in range(1, 10**4) if sum(math.exp(a * scale * k) for a in rates) / len(rates) < 0.01)
        for t in range(len(tokens)):
            assert memory_horizon(deltas, rates, t) == (single if single <= t else None), (scale, t)


def test_elapsed_sums_the_later_steps():
    deltas = [0.5, 1.0, 0.25, 2.0, 0.125]
    assert module.elapsed(deltas, 4) == [3.375, 2.375, 2.125, 0.125, 0.0]
    assert module.elapsed(deltas, 2) == [1.25, 0.25, 0.0]
    assert module.elapsed(deltas, 0) == [0.0]
    assert survival(deltas, [-1.0], 2) == [math.exp(-1.25), math.exp(-0.25), 1.0]
    assert survival(deltas, [-1.0, -3.0], 1, -1) == [(math.exp(-1.0) + math.exp(-3.0)) / 2, 1.0]


def test_memory_horizon_by_hand():
    # one dimension, A = -1, Delta = 1: exp(-k) < 1% from k = 5 (exp(-4.6) = 1%)
    assert memory_horizon([1.0] * 10, [-1.0], 9) == 5
    assert memory_horizon([1.0] * 10, [-1.0], 4) is None  # only 4 tokens before: all still above 1%
    assert memory_horizon([1.0] * 10, [-1.0], 5) == 5
    assert memory_horizon([1.0] * 10, [-1.0], 9, threshold=0.5) == 1
    # a large step erases everything before it at once; small steps keep the past
    deltas = [0.01] * 6 + [10.0] + [0.01] * 5
    assert memory_horizon(deltas, [-1.0], 11) == 6  # token 5, just before the reset
    kept = survival(deltas, [-1.0], 11)
    assert kept[6] > 0.95 and kept[5] < 1e-4
    assert memory_horizon([0.01] * 12, [-1.0], 11) is None


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), threshold=st.sampled_from([0.5, 0.1, 0.01, 1e-3]))
def test_memory_horizon_is_the_first_token_below_the_threshold(seed, threshold):
    s = random_state(seed)
    deltas = step_sizes(s["gates"], s["delta_scale"], s["selective"])
    q, d = s["query"], s["dimension"]
    kept = survival(deltas, s["decay_rates"], q, d)
    h = memory_horizon(deltas, s["decay_rates"], q, d, threshold)
    below = [k for k in range(1, q + 1) if kept[q - k] < threshold]
    assert h == (min(below) if below else None)
    if h is not None:
        assert below == list(range(h, q + 1))  # every token further back is below too


def test_default_sentence_tells_the_story():
    widget = SelectiveMemory()
    tokens, q = widget.tokens, widget.query
    assert q == len(tokens) - 1 and tokens[q] == "?" and widget.delta_scale == 0.316
    old, new = tokens.index(" 7"), tokens.index(" 3")
    selective = widget.survival()
    widget.selective = False
    invariant = widget.survival()
    # selective: the new key is kept (its fillers barely erode it), the old one was erased by "The new key is 3"
    assert selective[new] > 0.05 and selective[old] < 0.01 and selective[new] > 20 * invariant[new]
    assert invariant[new] < 0.01 and widget.horizon() < q - new  # time-invariant: both keys forgotten
    widget.selective = True
    assert widget.horizon() > q - new


# ----------------------------------------------------------------------- helpers and formats
def test_split_words_and_rule_gates():
    assert module.split_words("The key is 7. Um, so") == ["The", " key", " is", " 7", ".", " Um", ",", " so"]
    assert module.split_words("a  b\n") == ["a", " ", " b", "\n"]
    assert "".join(module.DEFAULT_TOKENS) == module.DEFAULT_TEXT
    assert module.rule_gates(["The", " key", " 7", ".", " um", " Uh", " ", "42"]) == [1.0, 1.0, 4.0, 0.1, 0.1, 0.1, 0.1, 4.0]
    assert module.rule_gates(["x", " 7"], quiet=0.5, loud=2.0, normal=0.25) == [0.25, 2.0]
    assert module.s4d_real_decay_rates(3) == [-1.0, -2.0, -3.0]
    with pytest.raises(ValueError, match="state_size must be an int in 1..16"):
        module.s4d_real_decay_rates(17)
    with pytest.raises(TypeError, match="text must be a str"):
        module.split_words(["a"])


def test_scale_from_slider_reads_as_it_is():
    scales = [module.scale_from_slider(v) for v in SLIDER_VALUES]
    assert scales[0] == module.SCALE_MIN and scales[-1] == module.SCALE_MAX and scales[30] == 0.316
    assert all(a < b for a, b in zip(scales, scales[1:]))
    for v, s in zip(SLIDER_VALUES, scales):
        assert float(f"{s:.3g}") == s and close(s, 10**v, 0.005)
    assert module.scale_from_slider(module.DEFAULT_SLIDER) == module.DEFAULT_SCALE


def test_formats():
    f = module.format_number
    assert [f(x) for x in (0.0, 1.0, 0.316, 1.2649, -1.0, -0.0015, 12.3456, 1000.0, 0.0000123, 6.6e-7, 1.5e-12)] == [
        "0", "1", "0.316", "1.26", "\u22121", "\u22120.0015", "12.3", "1000", "0.0000123", "6.6e-7", "1.5e-12"]
    assert f(2.675) == "2.67" and f(9.995) == "9.99" and f(9.9951) == "10"  # toPrecision: on the exact binary value
    assert f(2.6751) == "2.68" and f(1.0005) == "1"
    p = module.format_percent
    assert [p(x) for x in (1.0, 0.9995, 0.5, 0.0123, 0.01, 0.0099, 0.00016, 0.00015, 0.0001, 0.00009, 0.0)] == [
        "100%", "100.0%", "50.0%", "1.2%", "1.0%", "0.99%", "0.02%", "0.01%", "0.01%", "< 0.01%", "0%"]
    assert module.bar_height(1.0) == 100.0 and module.bar_height(module.THRESHOLD) == 50.0
    assert module.bar_height(module.CURVE_FLOOR) == 0.0 and module.bar_height(1e-9) == 0.0 and module.bar_height(0.0) == 0.0
    assert close(module.bar_height(0.1), 75.0)


def test_texts():
    args = (["a", " key", " is", " 7"], [1.0, 0.5, 0.0, 4.0], [-1.0, -2.0], 1.0, True)
    assert module.summary_text(*args, 3, -1) == (
        "Query t = 3 (\u201c\u00b77\u201d), selective, \u0394 scale 1, the average of 2 state dimensions: "
        "memory horizon 1 step: every token 1 or more steps back keeps less than 1% of its weight.")  # (e^-4 + e^-8) / 2
    assert module.summary_text(*args, 0, 1) == (
        "Query t = 0 (\u201ca\u201d), selective, \u0394 scale 1, state dimension n = 1 (A = \u22122): "
        "the first token, nothing came before it.")
    assert module.summary_text(*args, 2, 0).endswith(
        "no earlier token has fallen below 1% (the oldest, 2 steps back, keeps 60.7%).")  # exp(-0.5)
    assert module.summary_text(["a", "b"], [1.0, 1.0], [-10.0], 1.0, False, 1, 0).endswith(
        "time-invariant, \u0394 scale 1, state dimension n = 0 (A = \u221210): memory horizon 1 step: every token 1 "
        "or more steps back keeps less than 1% of its weight.")  # exp(-10)
    assert module.token_text(*args, 3, -1, None) == module.HINT
    assert module.token_text(*args, 2, 0, 3) == "\u201c\u00b77\u201d (token 3) comes after the query: it is not in the state yet."
    assert module.token_text(*args, 3, 0, 3) == (
        "\u201c\u00b77\u201d (token 3) is the query itself: just written, with weight \u0394 = 4, 100% of it.")
    assert module.token_text(*args, 3, 0, 1) == (
        "\u201c\u00b7key\u201d (token 1), 2 steps back: written with weight \u0394 = 0.5; after \u03a3\u0394 = 4 of "
        "elapsed time it keeps 1.8% of that (weight 0.00916 in the state).")  # exp(-4) = 0.0183


def test_functions_reject_bad_arguments():
    with pytest.raises(ValueError, match="query must be an int in 0..2"):
        survival([1.0, 1.0, 1.0], [-1.0], 3)
    with pytest.raises(TypeError, match="query must be an int"):
        survival([1.0, 1.0], [-1.0], 1.0)
    with pytest.raises(ValueError, match="dimension must be -1 .* in 0..1"):
        survival([1.0, 1.0], [-1.0, -2.0], 1, 2)
    with pytest.raises(ValueError, match="decay_rates must be negative"):
        survival([1.0, 1.0], [1.0], 1)
    with pytest.raises(ValueError, match="decay_rates must hold 1 to 16"):
        survival([1.0, 1.0], [], 1)
    with pytest.raises(ValueError, match="deltas must be >= 0"):
        memory_horizon([1.0, -1.0], [-1.0], 1)
    with pytest.raises(ValueError, match="deltas must be finite"):
        memory_horizon([1.0, math.nan], [-1.0], 1)
    with pytest.raises(TypeError, match="deltas must be a list of numbers"):
        memory_horizon("12", [-1.0], 1)
    with pytest.raises(ValueError, match="delta_scale must be in 0.01..10"):
        step_sizes([1.0], 20.0)
    with pytest.raises(TypeError, match="selective must be a bool"):
        step_sizes([1.0], 1.0, selective=1)
    with pytest.raises(TypeError, match="gates must hold numbers"):
        step_sizes([1.0, "2"], 1.0)


# ------------------------------------------------------------------------------------ the widget
def test_defaults_repr_and_state():
    widget = SelectiveMemory()
    text = repr(widget)
    assert not re.search(r"0x[0-9a-fA-F]+", text)
    assert text == "SelectiveMemory(tokens=41, state_size=4, delta_scale=0.316, selective=True, query=40, dimension=-1)"
    assert widget._repr_mimebundle_()[0]["text/plain"] == text  # what a notebook stores
    assert widget.tokens == module.DEFAULT_TOKENS and widget.gates == module.rule_gates(module.DEFAULT_TOKENS)
    assert widget.decay_rates == [-1.0, -2.0, -3.0, -4.0]
    widget.query, widget.dimension, widget.selective, widget.delta_scale = 12, 2, False, 1.0
    assert repr(widget) == "SelectiveMemory(tokens=41, state_size=4, delta_scale=1.0, selective=False, query=12, dimension=2)"
    state = widget.get_state()
    assert {name: state[name] for name in TRAITS} == {name: getattr(widget, name) for name in TRAITS}
    assert widget.deltas() == [1.0] * 41 and widget.survival() == survival([1.0] * 41, widget.decay_rates, 12, 2)
    assert widget.horizon() == memory_horizon([1.0] * 41, widget.decay_rates, 12, 2) == 2  # exp(-3k) < 1%


def test_widget_takes_gates_from_a_model():
    tokens = [f"t{i}" for i in range(6)]
    dt = torch.nn.functional.softplus(torch.linspace(-3, 2, 6, dtype=torch.float64))  # Mamba's Delta = softplus(...)
    expected = [float(f"{x:.4g}") for x in dt.tolist()]
    for gates in (dt, dt.float().requires_grad_(), dt.numpy(), dt.tolist(), tuple(dt.tolist())):
        widget = SelectiveMemory(tokens, gates, delta_scale=1.0, decay_rates=np.array([-0.5, -8.0]), query=3)
        assert widget.gates == pytest.approx(expected, rel=1e-3) and widget.decay_rates == [-0.5, -8.0]
        assert all(float(f"{g:.4g}") == g for g in widget.gates)  # stored to 4 significant digits
    assert SelectiveMemory(tokens, dt.numpy()).gates == expected
    assert json.loads(json.dumps(widget.gates)) == widget.gates  # exact through JSON
    assert SelectiveMemory(["a", "b"], [-0.0, 0.0]).gates == [0.0, 0.0]
    assert str(SelectiveMemory(["a", "b"], [-0.0, 0.0]).gates[0]) == "0.0"  # no -0.0


@pytest.mark.parametrize("kwargs, error, match", [
    ({"gates": [1.0] * 41}, ValueError, "gates were given without their tokens"),
    ({"tokens": ["a"]}, ValueError, "tokens must hold 2 to 64 tokens, got 1"),
    ({"tokens": ["a"] * 65}, ValueError, "tokens must hold 2 to 64"),
    ({"tokens": "abc"}, TypeError, "tokens must be a list of strings"),
    ({"tokens": ["a", 1]}, TypeError, "tokens must be strings"),
    ({"tokens": ["a", "b"], "gates": [1.0]}, ValueError, "one number per token: 2 tokens, got 1 gates"),
    ({"tokens": ["a", "b"], "gates": [1.0, -0.5]}, ValueError, r"gates must be in 0..100 .*gates\[1\]"),
    ({"tokens": ["a", "b"], "gates": [1.0, 101.0]}, ValueError, "gates must be in 0..100"),
    ({"tokens": ["a", "b"], "gates": [1.0, math.inf]}, ValueError, "gates must be finite"),
    ({"tokens": ["a", "b"], "gates": [[1.0], [2.0]]}, ValueError, "gates must be 1-D"),
    ({"tokens": ["a", "b"], "gates": {"a": 1}}, TypeError, "gates must be a list of numbers"),
    ({"tokens": ["a", "b"], "gates": [1.0, True]}, TypeError, "gates must hold numbers"),
    ({"decay_rates": [-1.0, 0.0]}, ValueError, r"decay_rates must be negative.*decay_rates\[1\]"),
    ({"decay_rates": [-1.0] * 17}, ValueError, "decay_rates must hold 1 to 16"),
    ({"decay_rates": [-2000.0]}, ValueError, "decay_rates must be negative, in -1000..-0.001"),
    ({"delta_scale": 0.001}, ValueError, "delta_scale must be in 0.01..10"),
    ({"delta_scale": "1"}, TypeError, "delta_scale must be a number"),
    ({"delta_scale": True}, TypeError, "delta_scale must be a number"),
    ({"selective": 1}, TypeError, "selective must be a bool"),
    ({"query": 41}, ValueError, "query must be an int in 0..40"),
    ({"query": -1}, ValueError, "query must be an int in 0..40"),
    ({"query": 2.0}, TypeError, "query must be an int"),
    ({"dimension": 4}, ValueError, r"dimension must be -1 \(the average\) or a state dimension in 0..3"),
    ({"dimension": -2}, ValueError, "dimension must be -1"),
    ({"dimension": None}, TypeError, "dimension must be an int"),
])
def test_widget_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SelectiveMemory(**kwargs)


@pytest.mark.parametrize("name, bad, match", [
    ("tokens", ["a", "b"], "one number per token: 2 tokens, got 41 gates"), ("tokens", ["a"] * 65, "2 to 64"),
    ("gates", [1.0] * 40, "one number per token"), ("gates", [-1.0] * 41, "gates must be in 0..100"),
    ("decay_rates", [-1.0, -2.0], r"dimension must be -1 \(the average\) or a state dimension in 0..1"),
    ("decay_rates", [1.0] * 4, "negative"), ("delta_scale", 11.0, "delta_scale"), ("selective", "yes", "bool"),
    ("query", 41, "query must be an int in 0..40"), ("dimension", 4, "dimension"),
])
def test_widget_rejects_bad_traits(name, bad, match):
    widget = SelectiveMemory(dimension=3)
    before = getattr(widget, name)
    with pytest.raises(traitlets.TraitError, match=match):
        setattr(widget, name, bad)
    assert getattr(widget, name) == before
    assert repr(widget) == "SelectiveMemory(tokens=41, state_size=4, delta_scale=0.316, selective=True, query=40, dimension=3)"


def test_widget_traits_change_together():
    widget = SelectiveMemory(dimension=3)
    with widget.hold_trait_notifications():
        widget.tokens, widget.gates, widget.query = ["a", "b", "c"], [1.0, 2.0, 3.0], 1
        widget.decay_rates, widget.dimension = [-1.0], 0
    assert repr(widget) == "SelectiveMemory(tokens=3, state_size=1, delta_scale=0.316, selective=True, query=1, dimension=0)"
    widget.set_sequence([" x", " 5", "."])  # gates by the rule; the query goes to the last token
    assert (widget.gates, widget.query) == ([1.0, 4.0, 0.1], 2)
    widget.set_sequence(["p", "q"], np.array([0.5, 0.25]), query=0)
    assert (widget.tokens, widget.gates, widget.query) == (["p", "q"], [0.5, 0.25], 0)
    with pytest.raises(ValueError, match="one number per token"):
        widget.set_sequence(["a", "b", "c"], [1.0])
    with pytest.raises(ValueError, match="query must be an int in 0..2"):
        widget.set_sequence(["a", "b", "c"], query=3)
    assert widget.tokens == ["p", "q"]  # unchanged by the failed calls


def test_widget_ships_its_javascript_and_css():
    widget = SelectiveMemory()
    assert str(widget._esm) == JS_PATH.read_text() and str(widget._css) == CSS_PATH.read_text()
    esm, css = JS_PATH.read_text(), CSS_PATH.read_text()
    assert re.search(r"^function render\(", esm, re.M)
    assert re.search(r"^export default \{[^}]*\brender\b", esm, re.M)
    assert not re.search(r"^\s*import\b|https?://(?!www\.w3\.org/2000/svg)", esm, re.M)  # nothing from outside
    assert not re.search(r"url\(|@import|https?://", css)
    assert css.startswith(".ab-select {")
    for cls in ("ab-select-tok", "ab-select-fill", "ab-select-forgotten", "ab-select-future", "ab-select-query",
                "ab-select-horizon", "ab-select-focus", "ab-select-eroding", "ab-select-delta", "ab-select-point",
                "ab-select-threshold", "ab-select-horizon-line", "ab-select-mode", "ab-select-summary", "ab-select-detail"):
        assert f".{cls}" in css and cls in esm, cls
    for selector in re.findall(r"\.(ab-[\w-]+)", css):
        assert selector.startswith("ab-select"), selector  # every class under the widget's own root
    used = set(re.findall(r'model\.(?:get|set)\("(\w+)"', esm))
    for fields in re.findall(r"save\(\{([^}]*)\}", esm):  # save({ name: value }) or save({ name })
        used |= {part.split(":")[0].strip() for part in fields.split(",")}
    for names in re.findall(r"const names = \[([^\]]*)\]", esm):
        used |= set(re.findall(r'"(\w+)"', names))
    assert set(TRAITS) <= used, set(TRAITS) - used
    assert used <= set(SelectiveMemory.class_traits(sync=True)), used - set(SelectiveMemory.class_traits(sync=True))


# ------------------------------------------------------------------- the JavaScript's numbers
def test_javascript_constants_equal_python(node):
    js = run_js(node, JS_PATH, "show([MIN_TOKENS, MAX_TOKENS, MAX_STATE, SCALE_MIN, SCALE_MAX, SLIDER_MIN, SLIDER_MAX, SLIDER_STEP,"
                " THRESHOLD, CURVE_FLOOR, MINUS, VISIBLE, HINT]);")
    from companion.widgets.attention_explorer import VISIBLE
    assert js == [module.MIN_TOKENS, module.MAX_TOKENS, module.MAX_STATE, module.SCALE_MIN, module.SCALE_MAX,
                  module.SLIDER_MIN, module.SLIDER_MAX, module.SLIDER_STEP, module.THRESHOLD, module.CURVE_FLOOR,
                  module.MINUS, VISIBLE, module.HINT]


STATES = [random_state(seed) for seed in range(40)] + [random_state(100 + T, T) for T in (2, 3, 64)]
STATES += [{name: SelectiveMemory(selective=sel, dimension=d).get_state()[name] for name in TRAITS}
           for sel in (True, False) for d in (-1, 0, 3)]


def test_javascript_computes_as_python(node):
    js = run_js(node, JS_PATH, f"const states = {json.dumps(STATES)};\n"
                "show(states.map((s) => { const deltas = stepSizes(s.gates, s.delta_scale, s.selective);"
                " const q = s.query, d = s.dimension, r = s.decay_rates;"
                " return [deltas, elapsed(deltas, q), survival(deltas, r, q, d), contributions(deltas, r, q, d),"
                "  memoryHorizon(deltas, r, q, d), memoryHorizon(deltas, r, q, d, 0.2),"
                "  survival(deltas, r, q, d).map(barHeight),"
                "  summaryText(s.tokens, s.gates, r, s.delta_scale, s.selective, q, d),"
                "  [null, ...s.tokens.map((_, j) => j)].map((f) => tokenText(s.tokens, s.gates, r, s.delta_scale, s.selective, q, d, f)),"
                "  consistentState(s.tokens, s.gates, r, s.delta_scale, s.selective, q, d)]; }));")
    assert len(js) == len(STATES)
    for n, (s, (deltas, sums, kept, weights, horizon, horizon20, heights, summary, texts, ok)) in enumerate(zip(STATES, js)):
        q, d, r = s["query"], s["dimension"], s["decay_rates"]
        python = step_sizes(s["gates"], s["delta_scale"], s["selective"])
        assert [float(x) for x in deltas] == python, n  # one multiplication each: exact
        assert [float(x) for x in sums] == module.elapsed(python, q), n  # the same additions in the same order: exact
        assert all_close(kept, survival(python, r, q, d)), n  # exp may differ in the last bit
        assert all_close(weights, module.contributions(python, r, q, d)), n
        assert horizon == memory_horizon(python, r, q, d) and horizon20 == memory_horizon(python, r, q, d, 0.2), n
        assert all_close(heights, [module.bar_height(x) for x in survival(python, r, q, d)]), n
        assert summary == module.summary_text(s["tokens"], s["gates"], r, s["delta_scale"], s["selective"], q, d), n
        assert texts == [module.token_text(s["tokens"], s["gates"], r, s["delta_scale"], s["selective"], q, d, f)
                         for f in [None, *range(len(s["tokens"]))]], n
        assert ok is True, n


FORMAT_CASES = [0.0, 1.0, -1.0, 0.316, 1.2649, 2.675, 9.995, 1.0005, 0.00015, 1e-4, 9e-5, 1e-7, 6.6e-7, 1.5e-12,
                123.456, 999.5, 1000.0, 0.1 + 0.2, 0.9995, 0.99949, 0.0099, 0.01, 0.012345, 1 / 3, 2 / 3]


def test_javascript_formats_and_helpers_equal_python(node):
    rng = np.random.default_rng(0)
    numbers = FORMAT_CASES + (10 ** rng.uniform(-9, 3, 300)).tolist()
    fractions = FORMAT_CASES[:-1] + rng.uniform(0, 1, 200).tolist() + (10 ** rng.uniform(-5, 0, 200)).tolist()
    fractions = [x for x in fractions if 0 <= x <= 1]
    tokens = ["", " ", "a b", "\n", "\t\r", "x\u00b7y", "\U0001f600 ok"]
    js = run_js(node, JS_PATH, f"show([{json.dumps(numbers)}.map(formatNumber), {json.dumps(numbers)}.map((x) => formatNumber(-x)),"
                f" {json.dumps(fractions)}.map(formatPercent), {json.dumps(SLIDER_VALUES)}.map(scaleFromSlider),"
                f" {json.dumps(fractions)}.map(barHeight), {json.dumps(tokens)}.map(displayToken)]);")
    assert js[0] == [module.format_number(x) for x in numbers]
    assert js[1] == [module.format_number(-x) for x in numbers]
    assert js[2] == [module.format_percent(x) for x in fractions]
    assert js[3] == [module.scale_from_slider(v) for v in SLIDER_VALUES]  # exactly: 3 significant digits
    assert all_close(js[4], [module.bar_height(x) for x in fractions])
    assert js[5] == [display_token(t) for t in tokens]


def test_javascript_waits_for_a_consistent_state(node):
    good = (["a", "b", "c"], [1.0, 0.5, 0.0], [-1.0, -2.0], 0.316, True, 2, 1)
    cases = [(good, True), ((*good[:4], False, 0, -1), True),
             ((["a", "b"], *good[1:]), False),  # tokens before the gates that go with them
             ((["a"], [1.0], *good[2:5], 0, -1), False), ((["a"] * 65, [1.0] * 65, *good[2:]), False),
             ((good[0], [1.0, -1.0, 0.0], *good[2:]), False), ((good[0], [1.0, None, 0.0], *good[2:]), False),
             ((*good[:2], [], *good[3:]), False), ((*good[:2], [-1.0, 0.0], *good[3:]), False),
             ((*good[:2], [-1.0] * 17, *good[3:]), False), ((*good[:3], 0.001, *good[4:]), False),
             ((*good[:3], 11, *good[4:]), False), ((*good[:4], 1, *good[5:]), False),
             ((*good[:5], 3, 1), False), ((*good[:5], 1.5, 1), False), ((*good[:6], 2), False), ((*good[:6], -2), False),
             (([1, 2], [1.0, 1.0], *good[2:5], 1, 0), False), ((None, *good[1:]), False)]
    js = run_js(node, JS_PATH, f"show({json.dumps([c for c, _ in cases])}.map((c) => consistentState(...c)));")
    assert js == [ok for _, ok in cases]


# ------------------------------------------------------------------ the widget drawn in a browser
def mount(page, widget: SelectiveMemory) -> list[str]:
    errors = mount_widget(page, JS_PATH.read_text(), CSS_PATH.read_text(), stored_state(widget, TRAITS), ".ab-select")
    page.locator("#root .ab-select-about").hover()  # the pointer off the tokens (it stays where a test left it)
    return errors


def shown(page) -> dict:
    return page.evaluate("""() => {
      const root = document.querySelector('#root .ab-select');
      return {
        survival: [...root.querySelectorAll('.ab-select-tok')].map((c) => c.dataset.survival),
        query: [...root.querySelectorAll('.ab-select-tok')].findIndex((c) => c.getAttribute('aria-pressed') === 'true'),
        forgotten: [...root.querySelectorAll('.ab-select-tok.ab-select-forgotten')].map((c) => Number(c.dataset.index)),
        horizonChip: [...root.querySelectorAll('.ab-select-tok.ab-select-horizon')].map((c) => Number(c.dataset.index)),
        deltas: [...root.querySelectorAll('.ab-select-delta')].map((r) => Number(r.dataset.value)),
        mode: [...root.querySelectorAll('.ab-select-mode')].map((b) => b.getAttribute('aria-pressed')),
        scale: root.querySelector('.ab-select-scale-value').textContent,
        slider: Number(root.querySelector('.ab-select-scale').value),
        dimension: root.querySelector('.ab-select-dimension').value,
        options: [...root.querySelectorAll('.ab-select-dimension option')].map((o) => o.textContent),
        summary: root.querySelector('.ab-select-summary').textContent,
        horizon: root.querySelector('.ab-select-summary').dataset.horizon,
        detail: root.querySelector('.ab-select-detail').textContent,
        saved: window.saved.length ? window.saved[window.saved.length - 1] : null,
      };
    }""")


def assert_shows(page, widget: SelectiveMemory, focus: int | None = None) -> dict:
    """The drawing agrees with the Python twins at the widget's state (set to what the page should show)."""
    s = shown(page)
    deltas, kept, horizon = widget.deltas(), widget.survival(), widget.horizon()
    T, q = len(widget.tokens), widget.query
    where = repr(widget)
    assert s["query"] == q and s["mode"] == [str(widget.selective).lower(), str(not widget.selective).lower()], where
    assert all_close([float(x) for x in s["survival"][:q + 1]], kept) and s["survival"][q + 1:] == [""] * (T - q - 1), where
    assert s["forgotten"] == [j for j, x in enumerate(kept) if x < module.THRESHOLD], where
    assert s["horizonChip"] == ([] if horizon is None else [q - horizon]), where
    assert s["horizon"] == ("" if horizon is None else str(horizon)), where
    assert all_close(s["deltas"], deltas), where
    assert s["scale"] == module.format_number(widget.delta_scale), where
    assert abs(s["slider"] - max(module.SLIDER_MIN, min(module.SLIDER_MAX, math.log10(widget.delta_scale)))) <= 0.025 + 1e-9
    assert s["dimension"] == str(widget.dimension), where
    assert s["options"] == [f"average of {len(widget.decay_rates)} dimensions"] + [
        f"n = {n} (A = {module.format_number(a)})" for n, a in enumerate(widget.decay_rates)], where
    args = (widget.tokens, widget.gates, widget.decay_rates, widget.delta_scale, widget.selective, q, widget.dimension)
    assert s["summary"] == module.summary_text(*args), where
    assert s["detail"] == module.token_text(*args, focus), where
    return s


def test_the_widget_draws_and_responds(page):
    widget = SelectiveMemory()
    errors = mount(page, widget)
    root = page.locator("#root .ab-select")
    assert_shows(page, widget)
    root.locator(".ab-select-tok").nth(24).click()
    widget.query = 24
    assert assert_shows(page, widget, focus=24)["saved"]["query"] == 24  # the change is sent to the model
    root.locator(".ab-select-tok").nth(24).press("ArrowLeft")
    assert_shows(page, widget, focus=23)
    root.locator(".ab-select-tok").nth(3).hover()
    assert_shows(page, widget, focus=3)
    root.locator(".ab-select-mode").nth(1).click()  # time-invariant; the focus leaves the tokens
    root.locator(".ab-select-about").hover()
    widget.selective = False
    assert assert_shows(page, widget)["saved"]["selective"] is False
    root.locator(".ab-select-scale").fill("0.5")
    widget.delta_scale = module.scale_from_slider(0.5)
    assert assert_shows(page, widget)["saved"]["delta_scale"] == 3.16
    root.locator(".ab-select-scale").fill("-2")
    widget.delta_scale = 0.01
    s = assert_shows(page, widget)  # a tiny step: nothing is forgotten within the sentence
    assert s["horizon"] == "" and s["forgotten"] == []
    root.locator(".ab-select-dimension").select_option("3")
    widget.dimension = 3
    assert assert_shows(page, widget)["saved"]["dimension"] == 3
    root.locator(".ab-select-mode").nth(0).click()
    root.locator(".ab-select-about").hover()
    widget.selective = True
    assert_shows(page, widget)
    root.locator(".ab-select-tok").nth(0).click()
    widget.query = 0
    assert "the first token" in assert_shows(page, widget, focus=0)["summary"]
    assert not errors, errors


def test_the_widget_follows_changes_from_python(page):
    widget = SelectiveMemory(query=10, dimension=2)
    errors = mount(page, widget)
    assert_shows(page, widget)
    # a new sequence arrives one trait at a time: nothing is drawn from a half-changed state
    widget.set_sequence([" a", " 1", ".", " b"], [2.0, 5.0, 0.01, 1.0], query=3)
    with widget.hold_trait_notifications():
        widget.decay_rates, widget.dimension = [-0.5], 0
    page.evaluate("([s]) => { for (const name of ['tokens', 'gates', 'query', 'dimension', 'decay_rates'])"
                  " model.set(name, s[name]); }", [stored_state(widget, TRAITS)])
    assert_shows(page, widget)
    page.evaluate("() => { model.set('delta_scale', 5.62); model.set('selective', false); }")
    widget.delta_scale, widget.selective = 5.62, False
    assert_shows(page, widget)
    assert not errors, errors


@pytest.mark.parametrize("kwargs", [
    {}, {"selective": False, "query": 20, "dimension": 0, "delta_scale": 1.0},
    {"tokens": ["x", " y", " z"], "gates": [0.0, 3.0, 0.5], "decay_rates": [-0.2, -5.0], "query": 0, "delta_scale": 10.0},
])
def test_the_site_check_passes_on_the_widget(page, kwargs):
    site_helpers = pytest.importorskip("site_helpers")
    assert site_helpers.WIDGET_CHECKS[".ab-select"] is site_helpers.check_selective_memory
    widget = SelectiveMemory(**kwargs)
    errors = mount(page, widget)
    site_helpers.check_selective_memory(page, page.locator("#root .ab-select"), stored_state(widget, TRAITS))
    assert not errors, errors


def test_the_site_check_catches_a_wrong_drawing(page):
    site_helpers = pytest.importorskip("site_helpers")
    widget = SelectiveMemory()
    mount(page, widget)
    wrong = dict(stored_state(widget, TRAITS), gates=[1.0] * len(widget.tokens))  # Python would draw other step sizes
    with pytest.raises(AssertionError, match=r"as stored: token 0 \(query 40\): keeps .*, Python gives"):
        site_helpers.check_selective_memory(page, page.locator("#root .ab-select"), wrong)
    mount(page, widget)  # a bar drawn at the wrong height is caught too
    page.evaluate("() => { document.querySelectorAll('.ab-select-fill')[30].style.height = '100%'; }")
    with pytest.raises(AssertionError, match="filled"):
        site_helpers.check_selective_memory(page, page.locator("#root .ab-select"), stored_state(widget, TRAITS))
