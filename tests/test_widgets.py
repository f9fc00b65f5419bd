"""companion.widgets: for each widget, the Python twin, the widget's state, and the JavaScript's rules.

SequenceCost (chapter 1), AttentionExplorer (chapter 2), MaskExplorer (chapter 3), RopeDial and
KVCacheCalculator (chapter 4). The JavaScript is run in Node (skipped without it) and compared with
the Python twin that the site checks use.
"""

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import traitlets
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.kernels import attention_mask
from companion.widgets import (AttentionExplorer, MaskExplorer, SequenceCost, describe_query, display_token,
                               mask_matrix, sequence_costs, top_attended)
from companion.widgets import attention_explorer as attn_module
from companion.widgets import mask_explorer as mask_module
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


# ================================================================== shared: running the JavaScript
def js_pure_block(path: Path) -> str:
    """The block of pure functions of a widget's .js file (between its two marker comments)."""
    match = re.search(r"^// ---- pure functions.*?$(.*?)^// ---- end of pure functions ----$",
                      path.read_text(), re.M | re.S)
    assert match, f"no pure-function block in {path.name}"
    block = match.group(1)
    assert "document" not in block and "model." not in block, f"the pure block of {path.name} touches the page"
    return block


def run_js(node: str, path: Path, body: str):
    """Run ``body`` after the pure block of ``path`` in Node; returns what it prints (JSON)."""
    script = js_pure_block(path) + "\n" + body
    result = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def synced_names_used(source: str) -> set[str]:
    """Trait names the JavaScript reads, writes or listens to."""
    used = set(re.findall(r'model\.(?:get|set)\("(\w+)"', source))
    used |= set(re.findall(r'select\("(\w+)"', source))  # attention_explorer.js's select(name, value)
    for fields in re.findall(r"save\(\{([^}]*)\}", source):  # mask_explorer.js's save({name: value, ...})
        used |= set(re.findall(r"(\w+):", fields))
    for names in re.findall(r"const names = \[([^\]]*)\]", source):
        used |= set(re.findall(r'"(\w+)"', names))
    for names in re.findall(r"for \(const name of \[([^\]]*)\]\)", source):
        used |= set(re.findall(r'"(\w+)"', names))
    return used


# ================================================================ AttentionExplorer (chapter 2)

ATTN_JS = Path(attn_module.__file__).with_name("attention_explorer.js")
ATTN_CSS = Path(attn_module.__file__).with_name("attention_explorer.css")
TOKENS = ["def", " add", "(", "a", ",", " b", "):", "\n", "   ", " return", " a", " +", " b", "\n"]


def causal_attention(layers: int, heads: int, T: int, seed: int = 0) -> torch.Tensor:
    """Softmax of random scores with a causal mask: ``(layers, heads, T, T)``, rows summing to 1."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(layers, heads, T, T, generator=generator, dtype=torch.float64) * 2
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


def test_display_token_makes_whitespace_visible():
    assert display_token("def") == "def"
    assert display_token(" return") == "\u00b7return"
    assert display_token("\n") == "\u21b5"
    assert display_token("\t x\r\n") == "\u21e5\u00b7x\u240d\u21b5"
    assert display_token("") == "\u2205"
    assert display_token("<b>&") == "<b>&"  # drawn with textContent: no escaping needed or wanted


def test_round_rows_keeps_every_row_summing_to_one():
    weights = causal_attention(3, 2, 17, seed=1).numpy()
    rounded = attn_module.round_rows(weights)
    assert rounded.dtype == np.int64
    assert (rounded.sum(-1) == 1000).all()
    assert (np.abs(rounded / 1000 - weights) < 1e-3).all()
    assert (rounded[weights == 0] == 0).all()  # masked keys stay exactly 0
    assert (attn_module.round_rows(rounded / 1000) == rounded).all()  # idempotent


def test_round_rows_is_largest_remainder():
    # thirds: 333.33.. each; one unit is left over and goes to the first (ties to the earlier key)
    assert attn_module.round_rows(np.array([[1 / 3, 1 / 3, 1 / 3]])).tolist() == [[334, 333, 333]]
    assert attn_module.round_rows(np.array([[0.1234, 0.8766]])).tolist() == [[123, 877]]
    assert attn_module.round_rows(np.array([[0.0006, 0.0006, 0.9988]])).tolist() == [[1, 0, 999]]


def brute_force_top(row: list[float], k: int) -> list[int]:
    """Key j is ranked by how many keys beat it (more weight, or as much and earlier)."""
    rank = {j: sum(1 for i, v in enumerate(row) if v > row[j] or (v == row[j] and i < j))
            for j in range(len(row)) if row[j] > 0}
    return [j for j, r in sorted(rank.items(), key=lambda item: item[1]) if r < k]


@settings(max_examples=200, deadline=None)
@given(row=st.lists(st.sampled_from([0.0, 0.001, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0]), min_size=1, max_size=12),
       k=st.integers(0, 5))
def test_top_attended_is_the_k_largest(row, k):
    got = top_attended([[[row]]], 0, 0, 0, k, tokens=[f"t{j}" for j in range(len(row))])  # (1, 1, 1, T)
    expected = brute_force_top(row, k)
    assert [j for j, _, _ in got] == expected
    assert [(token, w) for _, token, w in got] == [(f"t{j}", row[j]) for j in expected]


def test_top_attended_of_a_widget():
    attn = causal_attention(2, 3, len(TOKENS))
    widget = AttentionExplorer(TOKENS, attn, layer=1, head=2, query=9)
    top = widget.top_attended()
    row = widget.weights[1][2][9]
    assert len(top) == 3 and top == top_attended(widget.weights, 1, 2, 9, tokens=TOKENS)
    assert [w for _, _, w in top] == sorted((w for w in row if w > 0), reverse=True)[:3]
    assert all(TOKENS[j] == token and row[j] == w for j, token, w in top)
    assert top_attended(widget.weights, 1, 2, 9)[0][1] is None  # no tokens given: no token
    assert top_attended(widget.weights, 0, 0, 0, k=3, tokens=TOKENS) == [(0, "def", 1.0)]  # causal: one key
    with pytest.raises(ValueError, match="k must be"):
        top_attended(widget.weights, 0, 0, 0, k=-1)


def test_attention_explorer_stores_rounded_weights_and_defaults():
    attn = causal_attention(2, 3, len(TOKENS))
    widget = AttentionExplorer(TOKENS, attn, title="add(a, b)")
    assert (widget.layer, widget.head, widget.query) == (0, 0, len(TOKENS) - 1)  # query=None: the last token
    assert widget.tokens == TOKENS and widget.title == "add(a, b)"
    stored = np.array(widget.weights)
    assert stored.shape == (2, 3, len(TOKENS), len(TOKENS))
    assert (np.abs(stored - attn.numpy()) < 1e-3).all()
    assert (stored * 1000 == np.round(stored * 1000)).all()  # thousandths
    assert np.allclose(stored.sum(-1), 1, atol=1e-12)
    assert widget.row() == widget.weights[0][0][len(TOKENS) - 1]
    for name in ("tokens", "weights", "layer", "head", "query", "title"):
        assert name in widget.get_state()


def test_weights_are_synced_compactly_and_exactly():
    attn = causal_attention(2, 3, len(TOKENS))
    widget = AttentionExplorer(TOKENS, attn)
    synced = widget.get_state()["weights"]
    assert set(synced) == {"shape", "rows"} and synced["shape"] == [2, 3, len(TOKENS)]
    rows = synced["rows"].split(";")
    assert len(rows) == 2 * 3 * len(TOKENS)
    assert rows[0] == "1000"  # the first query of a causal model: all on itself, no trailing zeros
    for i, row in enumerate(rows):
        units = [int(u) for u in row.split(",")]
        assert sum(units) == 1000 and len(units) <= i % len(TOKENS) + 1 and units[-1] != 0
    assert attn_module.decode_weights(synced) == widget.weights
    assert attn_module.encode_weights(attn_module.decode_weights(synced)) == synced
    assert attn_module.decode_weights(attn_module.encode_weights([])) == []
    full = np.full((1, 2, 3, 3), 1 / 3)
    assert attn_module.encode_weights(AttentionExplorer(list("abc"), full).weights)["rows"] == ";".join(["334,333,333"] * 6)
    with pytest.raises(ValueError, match="rows"):
        attn_module.decode_weights({"shape": [1, 1, 3], "rows": "1000;500,500"})


def test_attention_explorer_repr_is_stable():
    attn = causal_attention(2, 4, 5)
    widget = AttentionExplorer(list("abcde"), attn, head=3, query=2)
    text = repr(widget)
    assert not re.search(r"0x[0-9a-fA-F]+", text)
    assert text == "AttentionExplorer(tokens=5, layers=2, heads=4, layer=0, head=3, query=2)"
    widget.layer, widget.query = 1, 4
    assert repr(widget) == "AttentionExplorer(tokens=5, layers=2, heads=4, layer=1, head=3, query=4)"
    assert repr(AttentionExplorer(list("abcde"), attn, title="x")).endswith("query=4, title='x')")


def test_attention_explorer_accepts_lists_arrays_and_tensors():
    attn = causal_attention(2, 3, 6)
    tokens = list("abcdef")
    expected = AttentionExplorer(tokens, attn).weights
    assert AttentionExplorer(tokens, attn.float()).weights == expected
    assert AttentionExplorer(tokens, attn.numpy()).weights == expected
    assert AttentionExplorer(tokens, attn.tolist()).weights == expected
    assert AttentionExplorer(tokens, attn.requires_grad_(True) * 1).weights == expected  # a tensor with grad
    assert AttentionExplorer.from_tensor(tokens, attn).weights == expected
    assert AttentionExplorer.from_tensor(tokens, [attn[0], attn[1]]).weights == expected  # (heads, T, T) each
    assert AttentionExplorer.from_tensor(tokens, (attn[0:1], attn[1:2])).weights == expected  # (1, heads, T, T)
    widget = AttentionExplorer.from_tensor(tokens, list(attn), layer=1, title="t")
    assert (widget.layer, widget.title) == (1, "t")


@pytest.mark.parametrize("attn, match", [
    (lambda a: [], "at least one layer"),
    (lambda a: [a[0], a[1, :2]], "attn\\[1\\] has shape"),
    (lambda a: [torch.stack([a[0], a[0]])], "batch of 2"),
    (lambda a: [a[0, 0]], "attn\\[0\\] must have shape"),
    (lambda a: a[0], "attn must have shape"),
])
def test_from_tensor_rejects_bad_layouts(attn, match):
    with pytest.raises(ValueError, match=match):
        AttentionExplorer.from_tensor(list("abcdef"), attn(causal_attention(2, 3, 6)))


def bad_weights():
    good = causal_attention(1, 2, 4).numpy()
    nan, neg, half, wide = good.copy(), good.copy(), good.copy(), np.ones((1, 1, 4, 5)) / 5
    nan[0, 1, 2, 0] = np.nan
    neg[0, 0, 3, :2] = [-0.1, 0.1 + good[0, 0, 3, 0] + good[0, 0, 3, 1]]
    half[0, 1, 3] *= 0.5
    return [
        (None, TypeError, "must be a nested list"),
        ("0.5", TypeError, "must be a nested list"),
        ({"a": 1}, TypeError, "must be a nested list"),
        (0.5, TypeError, "must be a nested list"),
        ([[[[1.0]]], [[[1.0, 0.0]]]], ValueError, "rectangular"),
        ([[[["x"] * 4] * 4]], ValueError, "rectangular"),
        (good[0], ValueError, "shape \\(layers, heads, T, T\\)"),
        (good[:, :, :3, :3], ValueError, "for 4 tokens"),
        (wide, ValueError, "for 4 tokens"),
        (np.zeros((0, 1, 4, 4)), ValueError, "at least one layer"),
        (nan, ValueError, "finite"),
        (np.where(np.isnan(nan), np.inf, good), ValueError, "finite"),
        (neg, ValueError, "non-negative"),
        (half, ValueError, "layer 0, head 1, query 3 sums to"),
        (good * (1 + 2e-3), ValueError, "sum to 1"),
    ]


@pytest.mark.parametrize("weights, error, match", bad_weights())
def test_attention_explorer_rejects_bad_weights(weights, error, match):
    with pytest.raises(error, match=match):
        AttentionExplorer(list("abcd"), weights)


def test_attention_explorer_accepts_rows_within_tolerance():
    good = causal_attention(1, 1, 4).numpy()
    widget = AttentionExplorer(list("abcd"), good * (1 + 5e-4))
    assert np.allclose(np.array(widget.weights).sum(-1), 1, atol=1e-12)


def test_attention_explorer_rejects_too_much_data():
    T = 128  # 16 * 128 * 128 > MAX_VALUES
    with pytest.raises(ValueError, match="at most"):
        AttentionExplorer([str(i) for i in range(T)], np.full((16, 1, T, T), 1 / T))


@pytest.mark.parametrize("tokens, error", [
    ("abcd", TypeError), (None, TypeError), (["a", "b", 3, "d"], TypeError), ([b"a"] * 4, TypeError), ([], ValueError),
])
def test_attention_explorer_rejects_bad_tokens(tokens, error):
    weights = np.full((1, 1, 4, 4), 0.25)
    with pytest.raises(error, match="tokens"):
        AttentionExplorer(tokens, weights)


@pytest.mark.parametrize("name, bad", [("layer", 2), ("layer", -1), ("head", 3), ("query", 6), ("query", -1),
                                       ("layer", True), ("head", 1.5), ("query", "2")])
def test_attention_explorer_rejects_bad_indices(name, bad):
    attn = causal_attention(2, 3, 6)
    widget = AttentionExplorer(list("abcdef"), attn)
    before = getattr(widget, name)
    with pytest.raises(traitlets.TraitError):
        setattr(widget, name, bad)
    assert getattr(widget, name) == before
    with pytest.raises(traitlets.TraitError):
        AttentionExplorer(list("abcdef"), attn, **{name: bad})


def test_attention_explorer_data_can_be_replaced_consistently():
    widget = AttentionExplorer(list("abcdef"), causal_attention(2, 3, 6), layer=1, head=2, query=5)
    with pytest.raises(traitlets.TraitError, match="tokens has 3 entries"):
        widget.tokens = ["x", "y", "z"]
    with pytest.raises(traitlets.TraitError, match="for 6 tokens"):
        widget.weights = causal_attention(1, 1, 3).tolist()
    with pytest.raises(traitlets.TraitError, match="sum to 1"):
        widget.weights = (causal_attention(2, 3, 6) * 2).tolist()
    with pytest.raises(traitlets.TraitError, match="layer"):
        widget.weights = causal_attention(1, 3, 6).tolist()  # layer=1 no longer exists
    assert repr(widget) == "AttentionExplorer(tokens=6, layers=2, heads=3, layer=1, head=2, query=5)"
    with widget.hold_trait_notifications():
        widget.tokens = ["x", "y", "z"]
        widget.weights = causal_attention(1, 1, 3).tolist()
        widget.layer, widget.head, widget.query = 0, 0, 2
    assert repr(widget) == "AttentionExplorer(tokens=3, layers=1, heads=1, layer=0, head=0, query=2)"
    assert np.allclose(np.array(widget.weights).sum(-1), 1)


def test_attention_explorer_ships_its_javascript_and_css():
    widget = AttentionExplorer(["a"], [[[[1.0]]]])
    assert str(widget._esm) == ATTN_JS.read_text() and str(widget._css) == ATTN_CSS.read_text()
    esm = ATTN_JS.read_text()
    assert re.search(r"^function render\(", esm, re.M)
    assert re.search(r"^export default \{[^}]*\brender\b", esm, re.M)
    assert not re.search(r"^\s*import\b|https?://(?!www\.w3\.org/2000/svg)", esm, re.M)  # nothing from outside
    assert ".ab-attn-readout" in ATTN_CSS.read_text()
    used = synced_names_used(esm)
    assert {"tokens", "weights", "layer", "head", "query", "title"} <= used
    assert used <= set(AttentionExplorer.class_traits(sync=True)), used - set(AttentionExplorer.class_traits(sync=True))


DISPLAY_CASES = ["def", " x", "\n", "\n\n", "    ", "\t", "\r\n", "", "<b>", "é", "😀 ", "a b\tc\nd"]


def test_javascript_display_token_equals_python(node):
    js = run_js(node, ATTN_JS, f"console.log(JSON.stringify({json.dumps(DISPLAY_CASES)}.map(displayToken)));")
    assert js == [display_token(t) for t in DISPLAY_CASES]


def test_javascript_top_attended_equals_python(node):
    rng = np.random.default_rng(0)
    rows = [[1.0], [0.5, 0.5], [0.0, 0.0, 1.0], [0.2, 0.2, 0.2, 0.2, 0.2], [0.25, 0.0, 0.25, 0.5], [0.0, 1.0, 0.0]]
    rows += [AttentionExplorer(TOKENS, causal_attention(1, 1, len(TOKENS), seed=s)).weights[0][0][q]
             for s in range(4) for q in range(len(TOKENS))]
    rows += [(np.round(rng.dirichlet(np.ones(9) * 0.3), 3)).tolist() for _ in range(20)]
    cases = [(row, k) for row in rows for k in (1, 3, 5)]
    js = run_js(node, ATTN_JS, f"const cases = {json.dumps(cases)};\n"
                "console.log(JSON.stringify(cases.map(([row, k]) => topAttended(row, k))));")
    assert len(js) == len(cases)
    for (row, k), from_js in zip(cases, js):
        python = top_attended([[[row]]], 0, 0, 0, k)  # (layers=1, heads=1, queries=1, T)
        assert [[j, w] for j, _, w in python] == from_js, (row, k)


def test_javascript_decodes_the_weights_as_python(node):
    cases = [AttentionExplorer(TOKENS, causal_attention(2, 3, len(TOKENS), seed=5)).get_state()["weights"],
             AttentionExplorer(list("abc"), np.full((1, 2, 3, 3), 1 / 3)).get_state()["weights"],
             AttentionExplorer(["x"], [[[[1.0]]]]).get_state()["weights"],
             attn_module.encode_weights([])]
    js = run_js(node, ATTN_JS, f"console.log(JSON.stringify({json.dumps(cases)}.map(decodeWeights)));")
    assert js == [attn_module.decode_weights(case) for case in cases]


def test_javascript_shade_is_the_square_root(node):
    values = [0, 0.01, 0.25, 0.5, 1, 1.5, -0.1]
    js = run_js(node, ATTN_JS, f"console.log(JSON.stringify({json.dumps(values)}.map(shade)));")
    assert js == pytest.approx([min(1, max(0, v)) ** 0.5 for v in values])


# ====================================================================== MaskExplorer (chapter 3)

MASK_JS = Path(mask_module.__file__).with_name("mask_explorer.js")
MASK_CSS = Path(mask_module.__file__).with_name("mask_explorer.css")
KINDS = mask_module.KINDS


def mask_by_the_rules(kind, length, window, prefix, padding, side):
    """The module docstring's rules, one cell at a time."""
    grid = []
    for i in range(length):
        row = []
        for j in range(length):
            if side == "right":
                is_pad = j >= length - padding
            else:
                is_pad = j < padding
            if kind in ("causal", "causal + padding"):
                ok = j <= i
            elif kind == "sliding window":
                ok = i - window < j <= i
            elif kind == "prefix-LM":
                ok = j <= i or (i < prefix and j < prefix)
            else:
                ok = True
            if kind.endswith("padding") and is_pad:
                ok = False
            row.append(ok)
        grid.append(row)
    return grid


PARAMS = [(length, window, prefix, padding, side)
          for length in (1, 2, 5, 12)
          for window in (1, 3, 12)
          for prefix in (0, 1, 4, 12)
          for padding in (0, 1, 3, 5, 12)
          for side in ("left", "right")]


def test_kinds_are_documented():
    assert KINDS == ("causal", "causal + padding", "sliding window", "prefix-LM", "bidirectional",
                     "bidirectional + padding")
    for kind in KINDS:
        assert f'``"{kind}"``' in mask_module.__doc__
        assert kind in mask_module.KIND_DESCRIPTIONS


@pytest.mark.parametrize("kind", KINDS)
def test_mask_matrix_follows_the_rules(kind):
    for length, window, prefix, padding, side in PARAMS:
        got = mask_matrix(kind, length, window=window, prefix=prefix, padding=padding, padding_side=side)
        assert got == mask_by_the_rules(kind, length, window, prefix, padding, side), (kind, length, window, prefix,
                                                                                      padding, side)
        assert all(type(v) is bool for row in got for v in row)


@pytest.mark.parametrize("length", [1, 2, 7, 12, 32])
def test_mask_matrix_is_the_kernels_mask(length):
    assert mask_matrix("causal", length) == attention_mask(length, length, causal=True).tolist()
    for window in (1, 2, 4, length, length + 3):
        assert (mask_matrix("sliding window", length, window=window)
                == attention_mask(length, length, causal=True, window=window).tolist())
    assert mask_matrix("bidirectional", length) == attention_mask(length, length).tolist()


def test_mask_special_cases():
    L = 9
    causal = mask_matrix("causal", L)
    assert mask_matrix("prefix-LM", L, prefix=0) == causal
    assert mask_matrix("prefix-LM", L, prefix=1) == causal
    assert mask_matrix("prefix-LM", L, prefix=L) == mask_matrix("bidirectional", L)
    assert mask_matrix("sliding window", L, window=L) == causal
    assert mask_matrix("causal + padding", L, padding=0) == causal
    assert all(sum(row) == 1 for row in mask_matrix("sliding window", L, window=1))  # only itself


def test_fully_masked_rows_the_trap():
    rows = mask_module.fully_masked_rows
    # left padding + causal: the first pad queries see only pads, all masked
    assert rows(mask_matrix("causal + padding", 10, padding=3, padding_side="left")) == [0, 1, 2]
    assert rows(mask_matrix("causal + padding", 10, padding=3, padding_side="right")) == []
    assert rows(mask_matrix("bidirectional + padding", 10, padding=3, padding_side="left")) == []
    assert rows(mask_matrix("causal + padding", 10, padding=10)) == list(range(10))
    assert rows(mask_matrix("causal", 10)) == []
    assert mask_module.pad_positions(5, 2, "left") == [True, True, False, False, False]
    assert mask_module.pad_positions(5, 2, "right") == [False, False, False, True, True]
    assert mask_module.pad_positions(3, 7, "right") == [True] * 3


def test_describe_query():
    mask = mask_matrix("causal + padding", 6, padding=2, padding_side="left")
    assert describe_query(mask, 0) == "query 0 sees no key: softmax of all -inf is NaN"
    assert describe_query(mask, 2) == "query 2 sees keys [2]"
    assert describe_query(mask, 5) == "query 5 sees keys [2, 3, 4, 5]"
    assert describe_query(mask_matrix("sliding window", 6, window=2), 5) == "query 5 sees keys [4, 5]"
    assert mask_module.visible_keys(mask, 4) == [2, 3, 4]


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "full"}, "kind must be one of"), ({"kind": "Causal"}, "kind must be one of"),
    ({"length": 0}, "length"), ({"length": 2.0}, "length"), ({"length": True}, "length"),
    ({"window": 0}, "window"), ({"prefix": -1}, "prefix"), ({"padding": -2}, "padding"),
    ({"padding_side": "top"}, "padding_side"),
])
def test_mask_matrix_rejects_bad_arguments(kwargs, match):
    args = {"kind": "causal", "length": 6, **kwargs}
    kind, length = args.pop("kind"), args.pop("length")
    with pytest.raises(ValueError, match=match):
        mask_matrix(kind, length, **args)


def test_mask_explorer_defaults_repr_and_readout():
    widget = MaskExplorer()
    text = repr(widget)
    assert not re.search(r"0x[0-9a-fA-F]+", text)
    assert text == ("MaskExplorer(kind='causal', length=12, window=4, prefix=4, padding=3, padding_side='right', "
                    "query=11)")
    assert widget.mask() == mask_matrix("causal", 12)
    assert widget.readout() == "query 11 sees keys [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]"
    widget.kind, widget.padding_side, widget.query = "causal + padding", "left", 1
    assert widget.readout() == "query 1 sees no key: softmax of all -inf is NaN"
    assert repr(widget) == ("MaskExplorer(kind='causal + padding', length=12, window=4, prefix=4, padding=3, "
                            "padding_side='left', query=1)")
    assert MaskExplorer(length=5).query == 4 and MaskExplorer(length=5, query=0).query == 0
    state = widget.get_state()
    for name in ("kind", "length", "window", "prefix", "padding", "padding_side", "query", "max_length"):
        assert name in state
    assert state["max_length"] == mask_module.MAX_LENGTH


@pytest.mark.parametrize("name, bad", [
    ("kind", "full"), ("kind", 3), ("padding_side", "up"), ("length", 0), ("length", mask_module.MAX_LENGTH + 1),
    ("length", True), ("window", 0), ("window", 13), ("prefix", -1), ("prefix", 13), ("padding", -1),
    ("padding", 13), ("query", -1), ("query", 12), ("query", "3"),
])
def test_mask_explorer_rejects_bad_values(name, bad):
    widget = MaskExplorer()
    before = getattr(widget, name)
    with pytest.raises(traitlets.TraitError):
        setattr(widget, name, bad)
    assert getattr(widget, name) == before
    with pytest.raises(traitlets.TraitError):
        MaskExplorer(**{name: bad})


def test_mask_explorer_shrinks_with_its_length():
    widget = MaskExplorer(kind="prefix-LM", length=12, window=10, prefix=9, padding=8, query=11)
    widget.length = 5
    assert (widget.window, widget.prefix, widget.padding, widget.query) == (5, 5, 5, 4)
    widget.length = 20  # growing leaves them alone
    assert (widget.window, widget.prefix, widget.padding, widget.query) == (5, 5, 5, 4)
    assert widget.mask() == mask_matrix("prefix-LM", 20, prefix=5)
    with widget.hold_trait_notifications():  # as the front end sends it: several traits at once
        widget.length, widget.padding, widget.query = 3, 3, 2
    assert (widget.length, widget.padding, widget.query) == (3, 3, 2)


def test_mask_explorer_ships_its_javascript_and_css():
    widget = MaskExplorer()
    assert str(widget._esm) == MASK_JS.read_text() and str(widget._css) == MASK_CSS.read_text()
    esm = MASK_JS.read_text()
    assert re.search(r"^function render\(", esm, re.M)
    assert re.search(r"^export default \{[^}]*\brender\b", esm, re.M)
    assert not re.search(r"^\s*import\b|https?://(?!www\.w3\.org/2000/svg)", esm, re.M)
    assert ".ab-mask-readout" in MASK_CSS.read_text()
    used = synced_names_used(esm)
    assert {"kind", "length", "window", "prefix", "padding", "padding_side", "query", "max_length"} <= used
    assert used <= set(MaskExplorer.class_traits(sync=True)), used - set(MaskExplorer.class_traits(sync=True))


def test_javascript_mask_equals_python(node):
    cases = [(kind, *params) for kind in KINDS for params in PARAMS]
    js = run_js(node, MASK_JS, f"const cases = {json.dumps(cases)};\n"
                "console.log(JSON.stringify(cases.map((c) => { const m = maskMatrix(...c);"
                " return [m, fullyMaskedRows(m), m.map((_, i) => describeQuery(m, i))]; })));")
    assert len(js) == len(cases)
    for (kind, length, window, prefix, padding, side), (mask, empty, readouts) in zip(cases, js):
        python = mask_matrix(kind, length, window=window, prefix=prefix, padding=padding, padding_side=side)
        assert mask == python, (kind, length, window, prefix, padding, side)
        assert empty == mask_module.fully_masked_rows(python)
        assert readouts == [describe_query(python, i) for i in range(length)]


def test_javascript_kinds_and_descriptions_equal_python(node):
    js = run_js(node, MASK_JS, "console.log(JSON.stringify([KINDS, KIND_DESCRIPTIONS]));")
    assert tuple(js[0]) == KINDS
    assert js[1] == mask_module.KIND_DESCRIPTIONS
    with pytest.raises(AssertionError):  # an unknown kind is an error in JavaScript too
        run_js(node, MASK_JS, 'console.log(JSON.stringify(maskMatrix("full", 3, 1, 0, 0, "left")));')


# ========================================================================== RopeDial (chapter 4)

from companion.nn.rope_scaling import RopeScaling  # noqa: E402
from companion.nn.rope_scaling import rope_frequencies as scaled_inverse_frequencies  # noqa: E402
from companion.widgets import RopeDial, rope_angles  # noqa: E402
from companion.widgets import rope_dial as rope_module  # noqa: E402

ROPE_JS = Path(rope_module.__file__).with_name("rope_dial.js")
ROPE_CSS = Path(rope_module.__file__).with_name("rope_dial.css")
ROPE_TRAITS = ("head_dim", "base", "position", "factor", "scaling", "pairs", "original_context")


def rope_theta_by_hand(head_dim: int, base: float, i: int, scaling: str, factor: float) -> float:
    """The module docstring's theta'_i, written out again."""
    if scaling == "ntk":
        base = base * factor ** (head_dim / (head_dim - 2))
    theta = 1.0 / base ** (2 * i / head_dim)
    return theta / factor if scaling == "interpolation" else theta


def test_rope_scalings_are_documented():
    assert rope_module.SCALINGS == ("none", "interpolation", "ntk")
    for scaling in rope_module.SCALINGS:
        assert f'``"{scaling}"``' in rope_module.__doc__
        assert scaling in rope_module.SCALING_NAMES


@pytest.mark.parametrize("scaling", rope_module.SCALINGS)
@pytest.mark.parametrize("head_dim, base", [(4, 10.0), (64, 10000.0), (128, 500000.0)])
def test_rope_frequencies_are_the_formulas(scaling, head_dim, base):
    pairs = list(range(head_dim // 2))
    for factor in (1.0, 1.5, 4.0, 16.0):
        got = rope_module.rope_frequencies(head_dim, base, pairs, scaling, factor)
        assert got == pytest.approx([rope_theta_by_hand(head_dim, base, i, scaling, factor) for i in pairs], rel=1e-12)
        assert rope_module.rope_wavelengths(head_dim, base, pairs, scaling, factor) == pytest.approx(
            [2 * np.pi / t for t in got], rel=1e-15)


def test_rope_scalings_slow_the_pairs_as_documented():
    head_dim, base, factor = 64, 10000.0, 4.0
    pairs = list(range(32))
    none = rope_module.rope_frequencies(head_dim, base, pairs)
    interp = rope_module.rope_frequencies(head_dim, base, pairs, "interpolation", factor)
    ntk = rope_module.rope_frequencies(head_dim, base, pairs, "ntk", factor)
    assert none[0] == 1.0 and ntk[0] == 1.0  # pair 0: one radian per token, untouched by NTK
    assert [n / i for n, i in zip(none, interp)] == pytest.approx([factor] * 32, rel=1e-14)
    slowdown = [n / t for n, t in zip(none, ntk)]
    assert slowdown[-1] == pytest.approx(factor, rel=1e-12)  # the slowest pair: exactly the factor
    assert all(a < b for a, b in zip(slowdown, slowdown[1:]))  # the slower the pair, the more it is slowed
    assert rope_module.ntk_base(base, head_dim, factor) == pytest.approx(base * factor ** (64 / 62), rel=1e-15)


@pytest.mark.parametrize("head_dim, base", [(8, 10000.0), (64, 10000.0), (128, 500000.0)])
@pytest.mark.parametrize("factor", [1.0, 1.5, 2.0, 4.0, 8.0, 16.0])
def test_rope_frequencies_match_the_companions_scalings(head_dim, base, factor):
    # interpolation is rope_scaling's "linear"; NTK-aware is its "dynamic" with factor 1 at factor x L
    pairs = list(range(head_dim // 2))
    L = 1024
    cases = {
        "none": RopeScaling(),
        "interpolation": RopeScaling("linear", factor=factor),
        "ntk": RopeScaling("dynamic", factor=1.0, original_max_positions=L),
    }
    for scaling, config in cases.items():
        expected, attention_factor = scaled_inverse_frequencies(head_dim, base, config, seq_len=int(factor * L))
        assert attention_factor == 1.0
        got = rope_module.rope_frequencies(head_dim, base, pairs, scaling, factor)
        np.testing.assert_allclose(got, expected.double().numpy(), rtol=2e-7, err_msg=scaling)  # float32 there


def test_rope_angles_and_what_interpolation_restores():
    head_dim, base, pairs, L = 64, 10000.0, [0, 5, 17, 31], 2048
    for position in (0, 1, 100, 7777):
        for scaling in ("none", "ntk"):
            thetas = rope_module.rope_frequencies(head_dim, base, pairs, scaling, 3.0)
            assert rope_angles(position, head_dim, base, pairs, scaling, 3.0) == [position * t for t in thetas]
        # interpolation reads position p as p / factor
        if position % 2 == 0:
            assert rope_angles(position, head_dim, base, pairs, "interpolation", 2.0) == \
                rope_angles(position // 2, head_dim, base, pairs)
    trained = rope_module.trained_angles(head_dim, base, pairs, L)
    for factor in (2.0, 4.0, 8.0):
        at_end = rope_angles(int(factor * L), head_dim, base, pairs, "interpolation", factor)
        assert at_end == trained  # factor x L positions land exactly on the trained range
        widget = RopeDial(position=int(factor * L), factor=factor, scaling="interpolation", pairs=pairs)
        assert widget.statuses() == ["seen"] * len(pairs)
        widget.scaling = "none"
        assert "seen" not in widget.statuses()
    assert rope_angles(0, head_dim, base, pairs) == [0.0] * 4


def test_rotation_status():
    status = rope_module.rotation_status
    assert status(1.0, 1.0) == "seen" and status(0.5, 1.0) == "seen"
    assert status(1.5, 1.0) == "unseen"  # points past the arc swept in training
    assert status(2 * np.pi + 0.5, 1.0) == "beyond"  # came round again into the arc
    assert status(100.0, 50.0) == "beyond"  # a pair that turned whole circles in training
    assert status(2 * np.pi - 0.1, 2.0) == "unseen"


def test_position_from_slider():
    f = rope_module.position_from_slider
    assert [f(0), f(1), f(10), f(11)] == [0, 1, 1023, 2047]
    assert f(np.log2(1001.6)) == 1001 and f(np.log2(1001.4)) == 1000  # rounded to the nearest


def test_rope_functions_reject_bad_arguments():
    f = rope_module.rope_frequencies
    with pytest.raises(ValueError, match="head_dim must be even"):
        f(63, 10000.0, [0])
    with pytest.raises(ValueError, match="head_dim must be an int >= 4"):
        f(2, 10000.0, [0])
    with pytest.raises(TypeError, match="head_dim must be an int"):
        f(64.0, 10000.0, [0])
    with pytest.raises(ValueError, match="base must be a finite number > 1"):
        f(64, 1.0, [0])
    with pytest.raises(TypeError, match="base must be a number"):
        f(64, "10000", [0])
    with pytest.raises(ValueError, match="pairs must be in 0..31"):
        f(64, 10000.0, [32])
    with pytest.raises(ValueError, match="pairs must be distinct"):
        f(64, 10000.0, [1, 1])
    with pytest.raises(TypeError, match="pairs must be a list"):
        f(64, 10000.0, "01")
    with pytest.raises(ValueError, match="scaling must be one of"):
        f(64, 10000.0, [0], "yarn")
    with pytest.raises(ValueError, match="factor must be in 1..16"):
        f(64, 10000.0, [0], "ntk", 0.5)
    with pytest.raises(TypeError, match="factor must be a number"):
        f(64, 10000.0, [0], "ntk", True)
    with pytest.raises(ValueError, match="position must be an int >= 0"):
        rope_angles(-1, 64, 10000.0, [0])
    with pytest.raises(TypeError, match="position must be an int"):
        rope_angles(1.5, 64, 10000.0, [0])
    with pytest.raises(ValueError, match="original_context must be an int >= 1"):
        rope_module.trained_angles(64, 10000.0, [0], 0)
    assert len(f(64, 10000.0, range(32))) == 32  # the functions take every pair; the widget's dials are few


def test_rope_dial_defaults_repr_and_state():
    widget = RopeDial()
    text = repr(widget)
    assert not re.search(r"0x[0-9a-fA-F]+", text)
    assert text == ("RopeDial(head_dim=64, base=10000, position=100, factor=4, scaling='none', pairs=(0, 8, 16, 31), "
                    "original_context=2048)")
    widget.position, widget.scaling, widget.factor = 5000, "ntk", 2.5
    assert repr(widget) == ("RopeDial(head_dim=64, base=10000, position=5000, factor=2.5, scaling='ntk', "
                            "pairs=(0, 8, 16, 31), original_context=2048)")
    assert widget.angles() == rope_angles(5000, 64, 10000.0, [0, 8, 16, 31], "ntk", 2.5)
    assert widget.angles("none") == rope_angles(5000, 64, 10000.0, [0, 8, 16, 31])
    state = widget.get_state()
    for name in ROPE_TRAITS:
        assert name in state
    assert state["pairs"] == [0, 8, 16, 31] and state["scaling"] == "ntk"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"head_dim": 63}, ValueError, "head_dim must be even"), ({"head_dim": 64.0}, TypeError, "head_dim"),
    ({"base": 0.5}, ValueError, "base"), ({"position": -1}, ValueError, "position"),
    ({"position": 2.0}, TypeError, "position"), ({"factor": 17}, ValueError, "factor"),
    ({"scaling": "linear"}, ValueError, "scaling must be one of"), ({"pairs": [0, 32]}, ValueError, "pairs"),
    ({"pairs": list(range(9))}, ValueError, "1 to 8"), ({"pairs": []}, ValueError, "pairs"),
    ({"original_context": 0}, ValueError, "original_context"),
])
def test_rope_dial_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        RopeDial(**kwargs)


@pytest.mark.parametrize("name, bad", [
    ("head_dim", 30), ("head_dim", 63), ("base", 1.0), ("position", -3), ("factor", 0.9), ("scaling", "yarn"),
    ("pairs", [40]), ("pairs", []), ("original_context", 0),
])
def test_rope_dial_rejects_bad_traits(name, bad):
    widget = RopeDial()
    before = getattr(widget, name)
    with pytest.raises(traitlets.TraitError, match=name if name != "head_dim" else "head_dim"):
        setattr(widget, name, bad)
    assert getattr(widget, name) == before
    with widget.hold_trait_notifications():  # a smaller head together with pairs that fit it
        widget.head_dim, widget.pairs = 16, [0, 7]
    assert (widget.head_dim, widget.pairs) == (16, [0, 7])


def test_rope_dial_ships_its_javascript_and_css():
    widget = RopeDial()
    assert str(widget._esm) == ROPE_JS.read_text() and str(widget._css) == ROPE_CSS.read_text()
    esm = ROPE_JS.read_text()
    assert re.search(r"^function render\(", esm, re.M)
    assert re.search(r"^export default \{[^}]*\brender\b", esm, re.M)
    assert not re.search(r"^\s*import\b|https?://(?!www\.w3\.org/2000/svg)", esm, re.M)
    css = ROPE_CSS.read_text()
    for cls in ("ab-rope", "ab-rope-dial", "ab-rope-hand", "ab-rope-arc", "ab-rope-table", "ab-rope-chart"):
        assert f".{cls} " in css or f".{cls}," in css or f".{cls}." in css, cls
    assert f'max: "{rope_module.MAX_FACTOR:g}"' in esm  # the factor slider stops where Python does
    assert f"{rope_module.SLIDER_CONTEXTS} * s.context" in esm  # the position slider's reach
    used = synced_names_used(esm)
    assert set(ROPE_TRAITS) <= used
    assert used <= set(RopeDial.class_traits(sync=True)), used - set(RopeDial.class_traits(sync=True))


ROPE_CASES = [(position, head_dim, base, pairs, scaling, factor)
              for position in (0, 1, 100, 4097, 65536)
              for head_dim, base, pairs in ((64, 10000.0, [0, 8, 16, 31]), (128, 500000.0, [0, 1, 63]), (4, 10.0, [1]))
              for scaling in rope_module.SCALINGS
              for factor in (1.0, 2.5, 4.0, 16.0)]


def test_javascript_rope_numbers_equal_python(node):
    js = run_js(node, ROPE_JS, f"const cases = {json.dumps(ROPE_CASES)};\n"
                "console.log(JSON.stringify(cases.map(([p, d, b, pairs, s, f]) => [ropeFrequencies(d, b, pairs, s, f),"
                " ropeAngles(p, d, b, pairs, s, f), ropeWavelengths(d, b, pairs, s, f), trainedAngles(d, b, pairs, 2048),"
                " ntkBase(b, d, f)])));")
    assert len(js) == len(ROPE_CASES)
    for (position, head_dim, base, pairs, scaling, factor), (thetas, angles, waves, trained, ntk) in zip(ROPE_CASES, js):
        case = (position, head_dim, base, pairs, scaling, factor)
        # the same operations in the same order; only pow may differ in the last bit between V8 and libm
        assert thetas == pytest.approx(rope_module.rope_frequencies(head_dim, base, pairs, scaling, factor), rel=1e-14), case
        assert angles == pytest.approx(rope_angles(position, head_dim, base, pairs, scaling, factor), rel=1e-14,
                                       abs=1e-300), case
        assert waves == pytest.approx(rope_module.rope_wavelengths(head_dim, base, pairs, scaling, factor), rel=1e-14), case
        assert trained == pytest.approx(rope_module.trained_angles(head_dim, base, pairs, 2048), rel=1e-14), case
        assert ntk == pytest.approx(rope_module.ntk_base(base, head_dim, factor), rel=1e-14), case


def test_javascript_rope_rules_equal_python(node):
    statuses = [(a, t) for a in (0.0, 0.5, 1.0, 1.5, 6.0, 6.5, 7.0, 100.0) for t in (0.5, 1.0, 6.0, 50.0)]
    sliders = [0, 0.01, 1, 3.3, 9.99, 10, 14.17, 17.6]
    js = run_js(node, ROPE_JS, f"console.log(JSON.stringify([{json.dumps(statuses)}.map(([a, t]) => rotationStatus(a, t)),"
                f" {json.dumps(sliders)}.map(positionFromSlider), SCALINGS, SCALING_NAMES]));")
    assert js[0] == [rope_module.rotation_status(a, t) for a, t in statuses]
    assert js[1] == [rope_module.position_from_slider(v) for v in sliders]
    assert tuple(js[2]) == rope_module.SCALINGS and js[3] == rope_module.SCALING_NAMES
    with pytest.raises(AssertionError):  # an unknown scaling is an error in JavaScript too
        run_js(node, ROPE_JS, 'console.log(JSON.stringify(ropeFrequencies(64, 10000, [0], "yarn", 2)));')


def test_javascript_rope_formatting_equals_the_site_checks(node):
    site_helpers = pytest.importorskip("site_helpers")
    values = [0.0, 1e-7, 0.000123456, 0.0435, 1.0, 6.283185307179586, 9.995, 99.95, 999.4, 999.5, 999.96, 1000.0,
              47117.3, 188469.5, 2559196.2, 123456789.0]
    angles = [0.0, 0.1, 3.14159, 6.2831, 796.2, 16384.0, 1e6]
    js = run_js(node, ROPE_JS, f"console.log(JSON.stringify([{json.dumps(values)}.map(formatNumber),"
                f" {json.dumps(angles)}.map((a) => degrees(a).toFixed(1))]));")
    assert js[0] == [site_helpers.rope_format_number(v) for v in values]
    assert [d + "\u00b0" for d in js[1]] == [site_helpers.rope_degrees(a) for a in angles]


# ================================================================= KVCacheCalculator (chapter 4)

from companion.widgets import KVCacheCalculator, kv_bytes_per_token, kv_cache_bytes, tokens_that_fit  # noqa: E402
from companion.widgets import kv_cache as kv_module  # noqa: E402

KV_JS = Path(kv_module.__file__).with_name("kv_cache.js")
KV_CSS = Path(kv_module.__file__).with_name("kv_cache.css")
KV_TRAITS = ("model", "layers", "heads", "kv_heads", "head_dim", "parameters", "bytes_per_element", "context", "batch",
             "count_weights", "models", "gpus")

# The rest of each published config.json (hidden_size, intermediate_size, vocab_size, whether q/k/v
# have biases; none ties its embeddings), from which the parameter counts in MODELS follow.
FULL_CONFIGS = {
    "Llama-2-7B": {"hidden": 4096, "intermediate": 11008, "vocab": 32000, "qkv_bias": False},
    "Llama-3-8B": {"hidden": 4096, "intermediate": 14336, "vocab": 128256, "qkv_bias": False},
    "Llama-3-70B": {"hidden": 8192, "intermediate": 28672, "vocab": 128256, "qkv_bias": False},
    "Mistral-7B-v0.3": {"hidden": 4096, "intermediate": 14336, "vocab": 32768, "qkv_bias": False},
    "Qwen2.5-7B": {"hidden": 3584, "intermediate": 18944, "vocab": 152064, "qkv_bias": True},
}


def llama_style_parameters(layers, heads, kv_heads, head_dim, hidden, intermediate, vocab, qkv_bias):
    """Embedding and untied output (vocab x hidden each); per layer q, k, v, o projections (q/k/v
    biases for Qwen), a gated MLP (3 x hidden x intermediate) and two RMSNorms; a final RMSNorm."""
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * q + 2 * hidden * kv + q * hidden + ((q + 2 * kv) if qkv_bias else 0)
    per_layer = attention + 3 * hidden * intermediate + 2 * hidden
    return 2 * vocab * hidden + layers * per_layer + hidden


def test_models_are_the_published_configurations():
    names = [m["name"] for m in kv_module.MODELS]
    assert names == list(FULL_CONFIGS)
    for m in kv_module.MODELS:
        full = FULL_CONFIGS[m["name"]]
        assert m["head_dim"] * m["heads"] == full["hidden"], m["name"]
        assert m["heads"] % m["kv_heads"] == 0, m["name"]
        assert m["parameters"] == llama_style_parameters(m["layers"], m["heads"], m["kv_heads"], m["head_dim"],
                                                         **full), m["name"]
        for key in ("layers", "heads", "kv_heads", "head_dim", "context", "parameters"):
            assert f"{m[key]:,}" in kv_module.__doc__ or str(m[key]) in kv_module.__doc__, (m["name"], key)
    by_name = {m["name"]: m for m in kv_module.MODELS}
    assert [by_name[n][k] for n in ("Llama-2-7B", "Llama-3-8B", "Llama-3-70B", "Mistral-7B-v0.3", "Qwen2.5-7B")
            for k in ("layers", "heads", "kv_heads", "head_dim")] == [
        32, 32, 32, 128, 32, 32, 8, 128, 80, 64, 8, 128, 32, 32, 8, 128, 28, 28, 4, 128]


@settings(max_examples=200, deadline=None)
@given(layers=st.integers(1, 128), kv_heads=st.integers(1, 128), head_dim=st.integers(1, 512),
       context=st.integers(1, 2**22), batch=st.integers(1, 64), b=st.sampled_from([1, 2, 4]))
def test_kv_cache_bytes_is_the_formula(layers, kv_heads, head_dim, context, batch, b):
    keys = values = layers * batch * kv_heads * context * head_dim * b  # (batch, kv_heads, context, head_dim) per layer
    assert kv_cache_bytes(layers, kv_heads, head_dim, context, b, batch) == keys + values
    assert kv_bytes_per_token(layers, kv_heads, head_dim, b) * context * batch == keys + values


def test_kv_cache_of_real_models():
    assert kv_bytes_per_token(32, 32, 128) == 512 * 1024  # Llama-2-7B: half a MiB per token in bf16
    assert kv_cache_bytes(32, 8, 128, 8192) == 2**30  # Llama-3-8B at its 8k context: exactly 1 GiB
    assert kv_bytes_per_token(80, 8, 128) == 320 * 1024  # Llama-3-70B
    assert kv_cache_bytes(28, 4, 128, 32768, 2, 1) == 1792 * 2**20  # Qwen2.5-7B at 32k
    assert kv_module.attention_kind(32, 32) == "multi-head"
    assert kv_module.attention_kind(32, 8) == "grouped-query"
    assert kv_module.attention_kind(32, 1) == "multi-query"
    assert kv_module.weight_bytes(7) == 14


@pytest.mark.parametrize("memory, layers, kv_heads, head_dim, b, batch, parameters", [
    (16, 32, 8, 128, 2, 1, 8_030_261_248), (80, 80, 8, 128, 2, 1, 70_553_706_496), (24, 32, 32, 128, 2, 4, 0),
    (40, 28, 4, 128, 1, 3, 7_615_616_512), (1, 1, 1, 1, 4, 1, 0), (16, 7, 3, 100, 4, 5, 123_456_789),
])
def test_tokens_that_fit_is_the_longest_that_fits(memory, layers, kv_heads, head_dim, b, batch, parameters):
    n = tokens_that_fit(memory, layers, kv_heads, head_dim, b, batch, parameters)
    weights = 2 * parameters
    if weights > memory * 2**30:
        assert n == 0
        return
    assert weights + kv_cache_bytes(layers, kv_heads, head_dim, max(n, 1), b, batch) * (n > 0) <= memory * 2**30
    assert weights + kv_cache_bytes(layers, kv_heads, head_dim, n + 1, b, batch) > memory * 2**30


def test_tokens_that_fit_when_the_weights_do_not():
    assert tokens_that_fit(80, 80, 8, 128, 2, 1, 70_553_706_496) == 0  # Llama-3-70B in bf16: 131 GiB of weights
    assert tokens_that_fit(80, 80, 8, 128, 2, 1, 0) == 80 * 2**30 // (320 * 1024)


@pytest.mark.parametrize("call, error, match", [
    (lambda: kv_cache_bytes(0, 8, 128, 10), ValueError, "layers must be an int >= 1"),
    (lambda: kv_cache_bytes(32, 8.0, 128, 10), TypeError, "kv_heads must be an int"),
    (lambda: kv_cache_bytes(32, 8, True, 10), TypeError, "head_dim must be an int"),
    (lambda: kv_cache_bytes(32, 8, 128, 0), ValueError, "context must be an int >= 1"),
    (lambda: kv_cache_bytes(32, 8, 128, 10, 3), ValueError, "bytes_per_element must be one of"),
    (lambda: kv_cache_bytes(32, 8, 128, 10, 2.0), TypeError, "bytes_per_element must be an int"),
    (lambda: kv_cache_bytes(32, 8, 128, 10, 2, -1), ValueError, "batch must be an int >= 1"),
    (lambda: tokens_that_fit(0, 32, 8, 128), ValueError, "memory_gib must be an int >= 1"),
    (lambda: tokens_that_fit(16, 32, 8, 128, parameters=-1), ValueError, "parameters must be an int >= 0"),
    (lambda: kv_module.attention_kind(32, 5), ValueError, "kv_heads must divide heads"),
    (lambda: kv_module.model_config("GPT-5"), ValueError, "model must be one of"),
])
def test_kv_functions_reject_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_kv_calculator_presets_custom_and_repr():
    widget = KVCacheCalculator("Llama-3-8B", context=32768)
    assert (widget.layers, widget.heads, widget.kv_heads, widget.head_dim, widget.parameters) == (
        32, 32, 8, 128, 8_030_261_248)
    text = repr(widget)
    assert not re.search(r"0x[0-9a-fA-F]+", text)
    assert text == ("KVCacheCalculator(model='Llama-3-8B', bytes_per_element=2, context=32768, batch=1, "
                    "count_weights=True)")
    assert widget.cache_bytes() == 4 * 2**30 and widget.per_token() == 128 * 1024
    assert widget.fits() == {g["gib"]: tokens_that_fit(g["gib"], 32, 8, 128, 2, 1, 8_030_261_248)
                             for g in kv_module.GPUS}
    widget.count_weights = False
    assert widget.fits()[80] == 80 * 2**30 // (128 * 1024)
    # editing a number leaves the model: it becomes custom, and its parameter count is gone
    widget.kv_heads = 32
    assert (widget.model, widget.parameters) == ("custom", 0)
    assert repr(widget) == ("KVCacheCalculator(model='custom', layers=32, heads=32, kv_heads=32, head_dim=128, "
                            "parameters=0, bytes_per_element=2, context=32768, batch=1, count_weights=False)")
    widget.model = "Qwen2.5-7B"  # choosing a model brings its numbers
    assert (widget.layers, widget.heads, widget.kv_heads, widget.head_dim) == (28, 28, 4, 128)
    custom = KVCacheCalculator(layers=12, heads=12, kv_heads=12, head_dim=64, context=1024, parameters=124_000_000)
    assert custom.model == "custom" and custom.parameters == 124_000_000
    assert custom.cache_bytes() == kv_cache_bytes(12, 12, 64, 1024)
    state = custom.get_state()
    for name in KV_TRAITS:
        assert name in state
    assert state["models"] == [dict(m) for m in kv_module.MODELS] and state["gpus"] == [dict(g) for g in kv_module.GPUS]


def test_kv_calculator_changes_heads_together():
    widget = KVCacheCalculator("Llama-3-8B")
    with pytest.raises(traitlets.TraitError, match="kv_heads must divide heads"):
        widget.heads = 28  # 8 KV heads cannot serve 28 heads
    assert (widget.heads, widget.model) == (32, "Llama-3-8B")
    with widget.hold_trait_notifications():  # as the front end sends a model's numbers: all at once
        widget.layers, widget.heads, widget.kv_heads = 28, 28, 4
    assert (widget.layers, widget.heads, widget.kv_heads, widget.model) == (28, 28, 4, "custom")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"model": "GPT-5"}, ValueError, "model must be one of"),
    ({"model": "Llama-3-8B", "layers": 40}, ValueError, "model 'Llama-3-8B' has layers=32"),
    ({"heads": 32, "kv_heads": 5}, ValueError, "kv_heads must divide heads"),
    ({"layers": 0}, ValueError, "layers"), ({"head_dim": 64.0}, TypeError, "head_dim"),
    ({"bytes_per_element": 3}, ValueError, "bytes_per_element"), ({"context": 0}, ValueError, "context"),
    ({"context": 2**24 + 1}, ValueError, "context"), ({"batch": 0}, ValueError, "batch"),
    ({"parameters": -1}, ValueError, "parameters"), ({"count_weights": 1}, TypeError, "count_weights"),
    ({"gpus": [{"gib": 0, "label": "x"}]}, ValueError, "gib"), ({"gpus": [16]}, TypeError, "GPU"),
])
def test_kv_calculator_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        KVCacheCalculator(**kwargs)


@pytest.mark.parametrize("name, bad", [
    ("model", "GPT-5"), ("layers", 0), ("heads", 31), ("kv_heads", 3), ("head_dim", 0), ("parameters", -1),
    ("bytes_per_element", 8), ("context", 0), ("batch", 2000), ("gpus", []),
])
def test_kv_calculator_rejects_bad_traits(name, bad):
    widget = KVCacheCalculator("Llama-3-8B")
    before = getattr(widget, name)
    with pytest.raises(traitlets.TraitError, match=name if name not in ("heads", "kv_heads") else "divide"):
        setattr(widget, name, bad)
    assert getattr(widget, name) == before
    with pytest.raises(traitlets.TraitError, match="read-only"):
        widget.models = []


def test_kv_calculator_ships_its_javascript_and_css():
    widget = KVCacheCalculator()
    assert str(widget._esm) == KV_JS.read_text() and str(widget._css) == KV_CSS.read_text()
    esm = KV_JS.read_text()
    assert re.search(r"^function render\(", esm, re.M)
    assert re.search(r"^export default \{[^}]*\brender\b", esm, re.M)
    assert not re.search(r"^\s*import\b|https?://", esm, re.M)
    assert ".ab-kv " in KV_CSS.read_text() and ".ab-kv-bar-cache" in KV_CSS.read_text()
    used = synced_names_used(esm)
    assert set(KV_TRAITS) <= used
    assert used <= set(KVCacheCalculator.class_traits(sync=True)), used - set(KVCacheCalculator.class_traits(sync=True))
    # the limits of the number boxes are the Python limits
    for name in ("MAX_CONTEXT", "MAX_BATCH", "MAX_SIZE"):
        match = re.search(rf"^const {name} = (.+);$", esm, re.M)
        assert match and eval(match.group(1)) == getattr(kv_module, name), name  # "2 ** 24", "1024"


KV_CASES = [(layers, heads, kv_heads, head_dim, b, context, batch, parameters, memory)
            for layers, heads, kv_heads, head_dim, parameters in ((32, 32, 8, 128, 8_030_261_248), (80, 64, 8, 128, 70_553_706_496),
                                                                  (28, 28, 4, 128, 7_615_616_512), (12, 12, 12, 64, 0),
                                                                  (3, 6, 1, 7, 1000))
            for b in (1, 2, 4) for context in (1, 4096, 131072, 2**20) for batch in (1, 8)
            for memory in (16, 80)]


def test_javascript_kv_numbers_equal_python(node):
    js = run_js(node, KV_JS, f"const cases = {json.dumps(KV_CASES)};\n"
                "console.log(JSON.stringify(cases.map(([l, h, kv, d, b, c, n, p, m]) => [kvBytesPerToken(l, kv, d, b),"
                " kvCacheBytes(l, kv, d, c, b, n), tokensThatFit(m, l, kv, d, b, n, p), weightBytes(p), attentionKind(h, kv),"
                " validHeads(h, kv)])));")
    assert len(js) == len(KV_CASES)
    for case, (per_token, cache, fit, weights, kind, valid) in zip(KV_CASES, js):
        layers, heads, kv_heads, head_dim, b, context, batch, parameters, memory = case
        assert per_token == kv_bytes_per_token(layers, kv_heads, head_dim, b), case
        assert cache == kv_cache_bytes(layers, kv_heads, head_dim, context, b, batch), case  # exact below 2**53
        assert fit == tokens_that_fit(memory, layers, kv_heads, head_dim, b, batch, parameters), case
        assert weights == kv_module.weight_bytes(parameters) and valid is True, case
        assert kind == kv_module.attention_kind(heads, kv_heads), case


def test_javascript_kv_constants_and_rules_equal_python(node):
    site_helpers = pytest.importorskip("site_helpers")
    sizes = [0, 1, 1023, 1024, 1025, 1023 * 1024, 1024**2 - 1, 1.5 * 2**30, 131072 * 2**20, 2**50, 2**60]
    js = run_js(node, KV_JS, f"console.log(JSON.stringify([GIB, WEIGHT_BYTES, DTYPE_BYTES, DTYPES, CUSTOM,"
                f" {json.dumps(sizes)}.map(formatBytes), [8, 12, 20.0, 21].map(contextFromSlider),"
                " [[32, 5], [4, 8], [6, 3]].map(([h, kv]) => validHeads(h, kv))]));")
    gib, weight, dtype_bytes, dtypes, custom, formatted, contexts, valid = js
    assert (gib, weight, custom) == (kv_module.GIB, kv_module.WEIGHT_BYTES, kv_module.CUSTOM)
    assert dtype_bytes == sorted(kv_module.DTYPES, reverse=True)
    assert {int(k): v for k, v in dtypes.items()} == kv_module.DTYPES
    assert formatted == [site_helpers.format_bytes(n) for n in sizes]
    assert contexts == [256, 4096, 2**20, 2**21]
    assert valid == [False, False, True]
    with pytest.raises(AssertionError):  # grouping that does not divide is an error in JavaScript too
        run_js(node, KV_JS, "console.log(JSON.stringify(attentionKind(32, 5)));")
