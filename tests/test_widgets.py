"""companion.widgets.sequence_cost: the Python twin, the widget's state, and the JavaScript's formulas."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import traitlets
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.widgets import SequenceCost, sequence_costs
from companion.widgets import sequence_cost as module

JS_PATH = Path(module.__file__).with_name("sequence_cost.js")
CSS_PATH = Path(module.__file__).with_name("sequence_cost.css")
KEYS = {"attention_ops", "linear_ops", "attention_scores_bytes", "kv_cache_bytes", "linear_state_bytes"}


def from_the_docstring(L, d, b):
    """The module docstring, in integers: 2 L^2 d and 2 L d^2 multiply-adds; L^2 scores, a 2 L d
    KV cache and a d^2 state, each value ``b`` bytes."""
    return {
        "attention_ops": (L * L * d) + (L * L * d),   # QK^T, then the weighted sum of values
        "linear_ops": 2 * d * d * L,                  # 2 d^2 per token
        "attention_scores_bytes": L * L * b,
        "kv_cache_bytes": (L * d + L * d) * b,        # keys and values
        "linear_state_bytes": d * d * b,
    }


# -------------------------------------------------------------------------------- sequence_costs
@settings(max_examples=200, deadline=None)
@given(L=st.integers(1, 2**16), d=st.integers(1, 2**12), b=st.sampled_from([1, 2, 4, 8]))
def test_sequence_costs_are_the_docstring_formulas(L, d, b):
    # below 2**53 every value is exact in a float, so equality is exact
    costs = sequence_costs(L, d, b)
    assert set(costs) == KEYS
    expected = from_the_docstring(L, d, b)
    for key in KEYS:
        assert isinstance(costs[key], float)
        assert costs[key] == expected[key], key


def test_sequence_costs_defaults_and_crossing():
    assert sequence_costs(4096) == sequence_costs(4096, 512, 2)
    # attention and a linear-time mixer do the same work at L = d (the widget's readout says so)
    costs = sequence_costs(777, 777)
    assert costs["attention_ops"] == costs["linear_ops"]
    assert sequence_costs(1024, 512)["attention_ops"] == 2 * sequence_costs(1024, 512)["linear_ops"]


@pytest.mark.parametrize("name", ["length", "d_model", "bytes_per_value"])
@pytest.mark.parametrize("bad", [0, -1, 1.5, 2.0, True, "8", None])
def test_sequence_costs_rejects_bad_values(name, bad):
    kwargs = {"length": 64, "d_model": 8, "bytes_per_value": 2, name: bad}
    with pytest.raises(ValueError, match=f"{name} must be a positive int"):
        sequence_costs(**kwargs)


# ------------------------------------------------------------------------------------ the widget
def test_widget_repr_is_stable_and_reflects_state():
    widget = SequenceCost(length=1024, d_model=256)
    text = repr(widget)
    assert not re.search(r"0x[0-9a-fA-F]+", text)
    assert text == "SequenceCost(length=1024, d_model=256, bytes_per_value=2)"
    widget.length = 77
    widget.bytes_per_value = 4
    assert repr(widget) == "SequenceCost(length=77, d_model=256, bytes_per_value=4)"
    assert repr(SequenceCost(length=77, d_model=256, bytes_per_value=4)) == repr(widget)


def test_widget_costs_follow_its_state():
    widget = SequenceCost()
    assert (widget.length, widget.d_model, widget.bytes_per_value) == (4096, 512, 2)
    assert widget.costs() == sequence_costs(4096, 512, 2)
    widget.length, widget.d_model = 300, 40
    assert widget.costs() == sequence_costs(300, 40, 2)


@pytest.mark.parametrize("name", ["length", "d_model", "bytes_per_value"])
@pytest.mark.parametrize("bad", [0, -5])
def test_widget_rejects_non_positive_traits(name, bad):
    widget = SequenceCost()
    before = getattr(widget, name)
    with pytest.raises(traitlets.TraitError, match=name):
        setattr(widget, name, bad)
    assert getattr(widget, name) == before
    with pytest.raises(traitlets.TraitError, match=name):
        SequenceCost(**{name: bad})


def test_widget_state_is_synced():
    widget = SequenceCost(length=128)
    state = widget.get_state()
    for name in ("length", "d_model", "bytes_per_value", "min_log2", "max_log2"):
        assert name in state
    assert state["length"] == 128


def test_widget_ships_its_javascript_and_css():
    widget = SequenceCost()
    assert JS_PATH.is_file() and CSS_PATH.is_file()
    esm = str(widget._esm)
    assert esm == JS_PATH.read_text()
    assert re.search(r"^function render\(", esm, re.M)
    assert re.search(r"^export default \{[^}]*\brender\b", esm, re.M)
    css = str(widget._css)
    assert css == CSS_PATH.read_text() and ".ab-cost" in css


# ------------------------------------------------------------------- the JavaScript's formulas
def js_function(source: str, name: str) -> str:
    """The text of the top-level ``function name(...) { ... }`` in ``source``."""
    match = re.search(rf"^function {name}\(.*?^\}}", source, re.M | re.S)
    assert match, f"no top-level function {name} in {JS_PATH.name}"
    return match.group(0)


CASES = [(1, 1, 1), (64, 64, 2), (4096, 512, 2), (1000, 3, 1), (7, 4096, 4), (2**20, 4096, 2),
         (123457, 1031, 8)]


def test_javascript_costs_equal_python(node):
    source = js_function(JS_PATH.read_text(), "costs")
    script = (f"{source}\n"
              f"const cases = {json.dumps(CASES)};\n"
              "console.log(JSON.stringify(cases.map(([L, d, b]) => costs(L, d, b))));\n")
    result = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    js = json.loads(result.stdout)
    assert len(js) == len(CASES)
    for (L, d, b), from_js in zip(CASES, js):
        python = sequence_costs(L, d, b)
        assert set(from_js) == set(python), (L, d, b)
        for key in python:
            assert float(from_js[key]) == python[key], (L, d, b, key)


def test_javascript_reads_and_writes_only_synced_traits():
    # a name the JavaScript uses that Python does not sync would be undefined in the browser
    source = JS_PATH.read_text()
    synced = set(SequenceCost.class_traits(sync=True))
    used = set(re.findall(r'model\.(?:get|set)\("(\w+)"', source))
    for names in re.findall(r"for \(const name of \[([^\]]*)\]\)", source):  # model.on/off lists
        used |= set(re.findall(r'"(\w+)"', names))
    assert {"length", "d_model", "bytes_per_value", "min_log2", "max_log2"} <= used
    assert used <= synced, used - synced
