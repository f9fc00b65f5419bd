"""companion.widgets.flash_stepper: the online softmax's steps, the widget's state, and its JavaScript.

The Python twin (``online_softmax_steps``) is checked against the definition of every running
quantity and against the companion's attention kernels; the JavaScript is run in Node (skipped
without it) and must compute the same steps; and the widget is drawn in headless Chromium (skipped
without it) with a stand-in for the widget model, where its buttons, slider, tile-size menu and
causal switch must change what it shows, in agreement with the Python twin.
"""

import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import traitlets
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.kernels import attention, tiled_attention
from companion.widgets import FlashStepper, online_softmax_steps, softmax_attention
from companion.widgets import flash_stepper as module

from widget_browser import mount_widget, page  # noqa: F401  (page is a pytest fixture)

JS_PATH = Path(module.__file__).with_name("flash_stepper.js")
CSS_PATH = Path(module.__file__).with_name("flash_stepper.css")
TRAITS = ("q", "k", "v", "block_k", "causal", "query_start", "step")
STEP_KEYS = {"tile", "start", "stop", "skipped", "scores", "tile_max", "m_old", "m", "rescale", "p", "l", "o", "out"}
INF = float("-inf")


def close(a: float, b: float, tol: float = 1e-12) -> bool:
    """Equal within ``tol``, relative to the size of the numbers (at least 1); ``-inf`` only to itself."""
    if a == INF or b == INF:
        return a == b
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def assert_nested_close(got, expected, where, tol: float = 1e-12) -> None:
    if isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected), f"{where}: {got!r} vs {expected!r}"
        for n, (g, e) in enumerate(zip(got, expected)):
            assert_nested_close(g, e, f"{where}[{n}]", tol)
    elif isinstance(expected, bool) or isinstance(expected, int) and not isinstance(expected, float):
        assert got == expected and type(got) is type(expected), f"{where}: {got!r} vs {expected!r}"
    else:
        assert isinstance(got, float) and close(got, expected, tol), f"{where}: {got!r} vs {expected!r}"


def data(queries: int, keys: int, head_dim: int, seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    def matrix(rows):
        return np.round(rng.standard_normal((rows, head_dim)) * spread, 2).tolist()
    return matrix(queries), matrix(keys), matrix(keys)


def torch_attention(q, k, v, causal, query_start, block_k=None):
    """The companion's attention (or tiled_attention) of the query tile, in float64: the queries are
    placed at their positions in a whole sequence of queries (the others zero), so that the causal
    mask of the kernels (bottom-right, q_len = kv_len) is the widget's."""
    keys, d = len(k), len(k[0])
    full = torch.zeros(1, 1, keys, d, dtype=torch.float64)
    full[0, 0, query_start:query_start + len(q)] = torch.tensor(q, dtype=torch.float64)
    kt = torch.tensor(k, dtype=torch.float64)[None, None]
    vt = torch.tensor(v, dtype=torch.float64)[None, None]
    if block_k is None:
        out = attention(full, kt, vt, causal=causal)
    else:
        out = tiled_attention(full, kt, vt, causal=causal, block_q=len(q), block_k=block_k)
    return out[0, 0, query_start:query_start + len(q)].tolist()


# ------------------------------------------------------------------------ the steps, by definition
CASES = [  # queries, keys, head_dim, block_k, causal, query_start, seed
    (4, 16, 4, 4, False, 12, 0), (4, 16, 4, 4, True, 12, 1), (4, 16, 4, 4, True, 4, 2), (4, 16, 4, 4, True, 0, 3),
    (4, 16, 4, 3, True, 5, 4), (4, 16, 4, 5, False, 12, 5), (1, 1, 1, 1, False, 0, 6), (1, 1, 1, 1, True, 0, 7),
    (8, 32, 8, 8, True, 24, 8), (8, 32, 8, 1, True, 3, 9), (3, 7, 2, 7, True, 4, 10), (2, 9, 3, 2, True, 0, 11),
    (5, 5, 4, 2, True, 0, 12), (6, 12, 5, 12, False, 6, 13), (4, 20, 4, 6, True, 16, 14),
]


def seen_scores(steps, t, i):
    """The unmasked scores of query ``i`` in tiles ``0..t``, with their key indices."""
    return [(step["start"] + n, s) for step in steps[:t + 1] for n, s in enumerate(step["scores"][i]) if s != INF]


@pytest.mark.parametrize("queries, keys, head_dim, block_k, causal, start, seed", CASES)
def test_every_step_is_the_definition(queries, keys, head_dim, block_k, causal, start, seed):
    q, k, v = data(queries, keys, head_dim, seed, spread=1.5)
    steps = online_softmax_steps(q, k, v, block_k, causal=causal, query_start=start)
    assert len(steps) == math.ceil(keys / block_k) == module.tile_count(keys, block_k)
    scale = 1 / math.sqrt(head_dim)
    for t, step in enumerate(steps):
        assert set(step) == STEP_KEYS
        assert (step["tile"], step["start"], step["stop"]) == (t, t * block_k, min((t + 1) * block_k, keys))
        width = step["stop"] - step["start"]
        masked = [[causal and j > start + i for j in range(step["start"], step["stop"])] for i in range(queries)]
        assert step["skipped"] == all(all(row) for row in masked)
        for i in range(queries):
            for n, j in enumerate(range(step["start"], step["stop"])):
                s = step["scores"][i][n]
                if masked[i][n]:
                    assert s == INF and step["p"][i][n] == 0.0
                else:
                    assert close(s, sum(a * b for a, b in zip(q[i], k[j])) * scale)
            assert len(step["scores"][i]) == len(step["p"][i]) == width
            assert step["tile_max"][i] == max(step["scores"][i])
            assert step["m_old"][i] == (steps[t - 1]["m"][i] if t else INF)
            seen = seen_scores(steps, t, i)
            m = max((s for _, s in seen), default=INF)
            assert step["m"][i] == m  # a maximum is exact
            if step["skipped"]:
                assert step["rescale"][i] == 1.0
            elif step["m_old"][i] == INF:
                assert step["rescale"][i] == 0.0  # the row's first key: nothing to rescale
            else:
                assert close(step["rescale"][i], math.exp(step["m_old"][i] - m))
                assert (step["rescale"][i] < 1) == (m > step["m_old"][i])
            # l and o are the sums over every key seen so far, relative to the running maximum
            l = sum(math.exp(s - m) for _, s in seen)
            o = [sum(math.exp(s - m) * v[j][c] for j, s in seen) for c in range(head_dim)]
            assert close(step["l"][i], l)
            assert all(close(a, b) for a, b in zip(step["o"][i], o))
            if seen:
                assert 1 <= step["l"][i] <= len(seen) + 1e-12  # the largest term is exp(0) = 1
                assert all(0 < p <= 1 for p, s in zip(step["p"][i], step["scores"][i]) if s != INF)
                assert all(close(a, b / l) for a, b in zip(step["out"][i], o))
            else:
                assert step["l"][i] == 0.0 and step["out"][i] == [0.0] * head_dim
            if not step["skipped"]:
                assert all(close(p, math.exp(s - m)) for p, s in zip(step["p"][i], step["scores"][i]) if s != INF)


@pytest.mark.parametrize("queries, keys, head_dim, block_k, causal, start, seed", CASES)
def test_the_last_step_is_attention(queries, keys, head_dim, block_k, causal, start, seed):
    q, k, v = data(queries, keys, head_dim, seed, spread=1.5)
    out = online_softmax_steps(q, k, v, block_k, causal=causal, query_start=start)[-1]["out"]
    reference = softmax_attention(q, k, v, causal=causal, query_start=start)
    assert module.max_abs_difference(out, reference) < module.CHECK_TOLERANCE
    assert_nested_close(reference, torch_attention(q, k, v, causal, start), "companion.kernels.attention")
    assert_nested_close(out, torch_attention(q, k, v, causal, start, block_k), "tiled_attention")
    scores = module.score_matrix(q, k, causal=causal, query_start=start)
    assert len(scores) == queries and all(len(row) == keys for row in scores)


@settings(max_examples=60, deadline=None)
@given(queries=st.integers(1, 8), extra=st.integers(0, 24), head_dim=st.integers(1, 8), block=st.integers(1, 32),
       causal=st.booleans(), where=st.floats(0, 1), seed=st.integers(0, 2**16), spread=st.sampled_from([0.1, 1, 5, 40]))
def test_the_last_step_is_softmax_for_any_tiling(queries, extra, head_dim, block, causal, where, seed, spread):
    keys = queries + extra
    block_k, start = min(block, keys), round(where * extra)
    q, k, v = data(queries, keys, head_dim, seed, spread)
    out = online_softmax_steps(q, k, v, block_k, causal=causal, query_start=start)[-1]["out"]
    assert_nested_close(out, softmax_attention(q, k, v, causal=causal, query_start=start), "softmax", tol=1e-11)
    for other in {1, keys, max(1, block_k // 2)}:  # the result does not depend on the tile size
        again = online_softmax_steps(q, k, v, other, causal=causal, query_start=start)[-1]["out"]
        assert_nested_close(again, out, f"block_k={other}", tol=1e-11)


def test_causal_tiles_past_the_queries_are_skipped():
    q, k, v = data(4, 16, 4, seed=0)
    steps = online_softmax_steps(q, k, v, 4, causal=True, query_start=4)  # queries at 4..7: tiles 2, 3 masked
    assert [s["skipped"] for s in steps] == [False, False, True, True]
    assert steps[1]["scores"][0] == [steps[1]["scores"][0][0], INF, INF, INF]  # query 4 sees key 4 only
    assert steps[3]["m"] == steps[1]["m"] and steps[3]["l"] == steps[1]["l"] and steps[3]["o"] == steps[1]["o"]
    assert steps[2]["p"] == [[0.0] * 4] * 4 and steps[2]["rescale"] == [1.0] * 4
    bottom_right = online_softmax_steps(q, k, v, 4, causal=True)  # the default: queries at 12..15
    assert [s["skipped"] for s in bottom_right] == [False] * 4
    assert bottom_right == online_softmax_steps(q, k, v, 4, causal=True, query_start=12)
    assert [row.count(INF) for row in bottom_right[-1]["scores"]] == [3, 2, 1, 0]  # the diagonal tile


def test_every_row_sees_a_key_in_the_first_tile():
    # every query sits at a position >= 0 and sees key 0: after the first tile no row is empty, so the
    # "no key seen yet" state (m = -inf, l = 0, output 0) is only the state before the first tile
    for start in (0, 3, 12):
        q, k, v = data(4, 16, 4, seed=start)
        first = online_softmax_steps(q, k, v, 1, causal=True, query_start=start)[0]
        assert not first["skipped"] and all(m > INF for m in first["m"]) and all(l >= 1 for l in first["l"])
        assert first["rescale"] == [0.0] * 4  # exp(-inf - m): nothing to rescale yet


def test_the_rescale_factor_keeps_every_exponential_at_most_one():
    q, k, v = data(4, 32, 8, seed=5, spread=30)  # scores in the hundreds: exp(s) alone would overflow
    steps = online_softmax_steps(q, k, v, 4)
    assert max(max(s["tile_max"]) for s in steps) > 710  # exp(710) is past float64's range
    for step in steps:
        assert all(0 <= p <= 1 for row in step["p"] for p in row)
        assert all(math.isfinite(x) for row in step["o"] for x in row) and all(math.isfinite(x) for x in step["l"])
    assert module.max_abs_difference(steps[-1]["out"], softmax_attention(q, k, v)) < 1e-9


def test_small_helpers():
    assert [module.tile_count(n, b) for n, b in ((16, 4), (17, 4), (1, 1), (5, 8), (32, 3))] == [4, 5, 1, 1, 11]
    f = module.step_after_retiling
    assert f(4, 4, 8) == 8 and f(4, 4, 2) == 2 and f(0, 4, 2) == 0 and f(3, 4, 2) == 2 and f(1, 4, 8) == 1
    assert module.block_choices(16, 4) == [1, 2, 3, 4, 5, 6, 8, 12, 16]
    assert module.block_choices(7, 7) == [1, 2, 3, 4, 5, 6, 7] and module.block_choices(32, 32)[-1] == 32
    assert module.max_abs_difference([[1.0, 2.0]], [[1.5, 1.0]]) == 1.0
    assert module.max_abs_difference([], []) == 0.0


FORMAT_CASES = [0.0, -0.0, 1.0, -1.0, 0.0005, -0.0005, -0.0004, 0.0015, 2.675, -2.675, 1.0005, 123.4565,
                0.1 + 0.2, -1e-9, 0.9995, 99.99949, 1e-300, -12.5, INF]


def test_format_value():
    assert [module.format_value(x) for x in (0.0, -0.0, -0.0004, -0.0005, 1.5, INF)] == [
        "0.000", "0.000", "0.000", "\u22120.001", "1.500", "\u2212\u221e"]
    assert module.format_value(2.675, 2) == "2.67"  # the binary value is below 2.675 (as toFixed sees it)
    assert module.format_value(-12.5, 0) == "\u221213"  # half away from zero, as toFixed


def test_functions_reject_bad_arguments():
    q, k, v = data(4, 16, 4, seed=0)
    with pytest.raises(ValueError, match="block_k must be an int in 1..16"):
        online_softmax_steps(q, k, v, 17)
    with pytest.raises(TypeError, match="block_k must be an int"):
        online_softmax_steps(q, k, v, 2.0)
    with pytest.raises(ValueError, match="query_start must be in 0..12"):
        online_softmax_steps(q, k, v, 4, query_start=13)
    with pytest.raises(ValueError, match="same head_dim"):
        online_softmax_steps(q, [row[:3] for row in k], v)
    with pytest.raises(ValueError, match="one row per key"):
        online_softmax_steps(q, k, v[:-1])
    with pytest.raises(ValueError, match="at most 3 queries for 3 keys"):
        softmax_attention(q, k[:3], v[:3])
    with pytest.raises(TypeError, match="causal must be a bool"):
        softmax_attention(q, k, v, causal=1)
    with pytest.raises(ValueError, match="finite"):
        online_softmax_steps([[math.nan] * 4], k, v)
    with pytest.raises(ValueError, match="rectangular"):
        online_softmax_steps([[1.0, 2.0], [1.0]], k, v)
    with pytest.raises(TypeError, match="must be a matrix"):
        online_softmax_steps("q", k, v)
    with pytest.raises(ValueError, match="2-D"):
        online_softmax_steps([1.0, 2.0], k, v)
    with pytest.raises(TypeError, match="must hold numbers"):
        online_softmax_steps([[1.0, True, 0.0, 0.0]], k, v)
    with pytest.raises(ValueError, match="at least one row"):
        online_softmax_steps([], k, v)


# ------------------------------------------------------------------------------------ the widget
def test_defaults_repr_and_state():
    widget = FlashStepper()
    text = repr(widget)
    assert not re.search(r"0x[0-9a-fA-F]+", text)
    assert text == "FlashStepper(queries=4, keys=16, head_dim=4, block_k=4, causal=False, query_start=12, step=0)"
    assert widget._repr_mimebundle_()[0]["text/plain"] == text  # what a notebook stores
    assert (widget.q, widget.k, widget.v) == module.random_qkv(4, 16, 4, module.DEFAULT_SEED)
    assert repr(FlashStepper()) == text and FlashStepper().q == widget.q  # the same data every time
    widget.step, widget.causal, widget.block_k = 3, True, 8
    assert repr(widget) == "FlashStepper(queries=4, keys=16, head_dim=4, block_k=8, causal=True, query_start=12, step=2)"
    state = widget.get_state()
    for name in TRAITS:
        assert name in state
    assert state["q"] == widget.q and state["step"] == 2 and state["causal"] is True
    assert widget.tiles == 2 and widget.steps() == online_softmax_steps(widget.q, widget.k, widget.v, 8, causal=True)
    assert widget.output() == widget.steps()[-1]["out"]
    assert module.max_abs_difference(widget.output(), widget.reference()) < module.CHECK_TOLERANCE


def test_default_data_shows_rescaling():
    # the point of the default: after the first tile some rows find a larger score (c < 1), some do not
    steps = FlashStepper().steps()
    for step in steps[1:]:
        grew = [m > old for m, old in zip(step["m"], step["m_old"])]
        assert any(grew) and not all(grew), step["tile"]
        assert min(step["rescale"]) < 0.95


def test_data_is_rounded_compact_and_exact():
    q, k, v = data(3, 10, 4, seed=1)
    noisy = [[x + 0.0012 for x in row] for row in q]
    widget = FlashStepper(noisy, k, v)
    assert widget.q == q and widget.k == k
    synced = json.dumps({name: widget.get_state()[name] for name in ("q", "k", "v")})
    assert len(synced) < 24 * (3 + 10 + 10) * 4 // 3  # a few characters per number
    for name in ("q", "k", "v"):
        values = [x for row in getattr(widget, name) for x in row]
        assert all(round(x, module.DECIMALS) == x and repr(x) == repr(round(x, 2)) for x in values)
        assert json.loads(json.dumps(getattr(widget, name))) == getattr(widget, name)  # exact through JSON
    assert FlashStepper([[-0.001] * 4], k, v).q == [[0.0] * 4]
    assert str(FlashStepper([[-0.001] * 4], k, v).q[0][0]) == "0.0"  # no -0.0


def test_widget_accepts_lists_arrays_and_tensors():
    q, k, v = data(4, 8, 2, seed=2)
    expected = FlashStepper(q, k, v)
    for convert in (np.array, lambda x: torch.tensor(x, dtype=torch.float64), lambda x: torch.tensor(x),
                    lambda x: torch.tensor(x, requires_grad=True) * 1, lambda x: tuple(map(tuple, x))):
        widget = FlashStepper(convert(q), convert(k), convert(v))
        assert (widget.q, widget.k, widget.v) == (expected.q, expected.k, expected.v)
    widget = FlashStepper(queries=2, keys=6, head_dim=3, seed=5, block_k=2, causal=True, step=3)
    assert repr(widget) == "FlashStepper(queries=2, keys=6, head_dim=3, block_k=2, causal=True, query_start=4, step=3)"
    assert (widget.q, widget.k, widget.v) == module.random_qkv(2, 6, 3, 5)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"q": [[1.0]]}, ValueError, "given together"),
    ({"queries": 9}, ValueError, "queries must be an int in 1..8"),
    ({"keys": 33}, ValueError, "keys must be an int in 1..32"),
    ({"head_dim": 0}, ValueError, "head_dim"),
    ({"queries": 5, "keys": 4}, ValueError, "at most 4 queries"),
    ({"block_k": 0}, ValueError, "block_k must be an int in 1..16"),
    ({"block_k": 17}, ValueError, "block_k"),
    ({"block_k": 4.0}, TypeError, "block_k must be an int"),
    ({"causal": "yes"}, TypeError, "causal must be a bool"),
    ({"query_start": 13}, ValueError, "query_start must be in 0..12"),
    ({"query_start": -1}, ValueError, "query_start"),
    ({"step": 5}, ValueError, "step must be an int in 0..4"),
    ({"step": -1}, ValueError, "step"),
    ({"step": True}, TypeError, "step must be an int"),
    ({"seed": -1}, ValueError, "seed"),
])
def test_widget_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        FlashStepper(**kwargs)


def test_widget_rejects_bad_data():
    q, k, v = data(4, 16, 4, seed=0)
    with pytest.raises(ValueError, match="q, k and v have keys=16"):
        FlashStepper(q, k, v, keys=8)
    with pytest.raises(ValueError, match="at most 8 rows"):
        FlashStepper(data(9, 16, 4, seed=0)[0], k, v)
    with pytest.raises(ValueError, match="at most 32 rows"):
        FlashStepper(q, *data(4, 33, 4, seed=0)[1:])
    with pytest.raises(ValueError, match="at most 8 columns"):
        FlashStepper(*data(4, 16, 9, seed=0))
    with pytest.raises(ValueError, match="within -100..100"):
        FlashStepper([[100.01, 0, 0, 0]], k, v)
    with pytest.raises(ValueError, match="finite"):
        FlashStepper([[math.inf, 0, 0, 0]], k, v)
    with pytest.raises(ValueError, match="2-D"):
        FlashStepper(torch.zeros(1, 1, 4, 4), k, v)
    assert FlashStepper([[100, 0, 0, -100]], k, v).q == [[100.0, 0.0, 0.0, -100.0]]


@pytest.mark.parametrize("name, bad, match", [
    ("q", [[1.0, 2.0]], "same head_dim"), ("q", [[0.0] * 4] * 5, "query_start must be in 0..11"),
    ("q", "x", None), ("k", [[0.0] * 4] * 8, "one row per key"), ("v", [[0.0] * 3] * 16, "same head_dim"),
    ("v", [[math.nan] * 4] * 16, "finite"), ("block_k", 0, "block_k"), ("block_k", 17, "block_k"),
    ("causal", "yes", None), ("query_start", 13, "query_start"), ("step", 5, "step must be an int in 0..4"),
    ("step", -1, "step"),
])
def test_widget_rejects_bad_traits(name, bad, match):
    widget = FlashStepper(step=2)
    before = getattr(widget, name)
    with pytest.raises(traitlets.TraitError, match=match):
        setattr(widget, name, bad)
    assert getattr(widget, name) == before
    assert repr(widget) == "FlashStepper(queries=4, keys=16, head_dim=4, block_k=4, causal=False, query_start=12, step=2)"


def test_widget_traits_change_together():
    widget = FlashStepper(step=4)  # at the end
    q, k, v = data(2, 8, 3, seed=4)
    with widget.hold_trait_notifications():
        widget.q, widget.k, widget.v, widget.query_start = q, k, v, 6
    assert repr(widget) == "FlashStepper(queries=2, keys=8, head_dim=3, block_k=4, causal=False, query_start=6, step=2)"
    widget.set_data(*data(3, 3, 2, seed=5))  # block_k shrinks to the keys; query_start goes to the end
    assert repr(widget) == "FlashStepper(queries=3, keys=3, head_dim=2, block_k=3, causal=False, query_start=0, step=1)"
    with pytest.raises(ValueError, match="query_start"):
        widget.set_data(*data(3, 3, 2, seed=5), query_start=1)
    with pytest.raises(ValueError, match="same head_dim"):
        widget.set_data(q, k, [row[:2] for row in v])
    assert len(widget.k) == 3  # unchanged by the failed calls


def test_changing_the_tiles_keeps_the_last_step_last():
    widget = FlashStepper(step=4)
    widget.block_k = 2  # 8 tiles; it was at the end, so it stays there
    assert (widget.tiles, widget.step) == (8, 8)
    widget.step = 3
    widget.block_k = 16  # one tile: step 3 no longer exists
    assert (widget.tiles, widget.step) == (1, 1)
    widget.block_k = 3
    assert (widget.tiles, widget.step) == (6, 6)
    widget.step = 2
    widget.block_k = 4
    assert widget.step == 2
    with widget.hold_trait_notifications():  # as the front end sends them: both at once
        widget.block_k, widget.step = 8, 1
    assert (widget.block_k, widget.step) == (8, 1)


def test_widget_ships_its_javascript_and_css():
    widget = FlashStepper()
    assert str(widget._esm) == JS_PATH.read_text() and str(widget._css) == CSS_PATH.read_text()
    esm = JS_PATH.read_text()
    assert re.search(r"^function render\(", esm, re.M)
    assert re.search(r"^export default \{[^}]*\brender\b", esm, re.M)
    assert not re.search(r"^\s*import\b|https?://", esm, re.M)  # nothing from outside
    css = CSS_PATH.read_text()
    assert css.startswith(".ab-flash {")
    for cls in ("ab-flash-scores", "ab-flash-masked", "ab-flash-state", "ab-flash-rescaled", "ab-flash-check",
                "ab-flash-ok"):
        assert f".{cls}" in css and cls in esm, cls
    for status in ("current", "seen", "later"):  # the scores' classes are ab-flash-${status(tile)}
        assert f".ab-flash-score.ab-flash-{status}" in css and f'"{status}"' in esm, status
    for selector in re.findall(r"\.(ab-[\w-]+)", css):
        assert selector.startswith("ab-flash"), selector  # every class under the widget's own root
    used = set(re.findall(r'model\.(?:get|set)\("(\w+)"', esm))
    for fields in re.findall(r"save\(\{([^}]*)\}", esm):
        used |= set(re.findall(r"(\w+):", fields))
    for names in re.findall(r"const names = \[([^\]]*)\]", esm):
        used |= set(re.findall(r'"(\w+)"', names))
    assert set(TRAITS) <= used
    assert used <= set(FlashStepper.class_traits(sync=True)), used - set(FlashStepper.class_traits(sync=True))


# ------------------------------------------------------------------- the JavaScript's numbers
def js_pure_block() -> str:
    match = re.search(r"^// ---- pure functions.*?$(.*?)^// ---- end of pure functions ----$",
                      JS_PATH.read_text(), re.M | re.S)
    assert match, "no pure-function block in flash_stepper.js"
    block = match.group(1)
    assert "document" not in block and "model." not in block, "the pure block touches the page"
    return block


def run_js(node: str, body: str):
    """Run ``body`` after the pure block in Node; returns what it prints as JSON, with -Infinity
    written as the string "-inf" (JSON has no infinities)."""
    script = (js_pure_block() + "\nconst show = (x) => console.log(JSON.stringify(x, (key, value) => "
              "(value === -Infinity ? '-inf' : value)));\n" + body)
    result = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout, object_hook=None, parse_constant=None)


def from_js(x):
    """JSON from :func:`run_js` back to Python numbers: "-inf" to -inf, whole numbers where Python has
    floats (JSON writes 1.0 as 1) to float, indices and flags left as they are."""
    if x == "-inf":
        return INF
    if isinstance(x, list):
        return [from_js(y) for y in x]
    if isinstance(x, dict):
        return {key: (value if key in ("tile", "start", "stop", "skipped") else from_js(value)) for key, value in x.items()}
    return float(x) if isinstance(x, int) and not isinstance(x, bool) else x


JS_CASES = [(q, k, v, block_k, causal, start)
            for queries, keys, head_dim, block_k, causal, start, seed in CASES
            for q, k, v in [data(queries, keys, head_dim, seed, spread=1.5)]]
JS_CASES += [(*data(4, 32, 8, 5, spread=30), 4, True, 28), (*data(8, 32, 8, 6, spread=100), 5, False, 24)]
JS_CASES += [(w.q, w.k, w.v, w.block_k, causal, w.query_start) for w in [FlashStepper()] for causal in (False, True)]


def test_javascript_steps_equal_python(node):
    js = run_js(node, f"const cases = {json.dumps(JS_CASES)};\n"
                "show(cases.map(([q, k, v, b, causal, start]) => [onlineSoftmaxSteps(q, k, v, b, causal, start),"
                " softmaxAttention(q, k, v, causal, start), scoreMatrix(q, k, causal, start)]));")
    assert len(js) == len(JS_CASES)
    for n, ((q, k, v, block_k, causal, start), (steps, reference, scores)) in enumerate(zip(JS_CASES, js)):
        python = online_softmax_steps(q, k, v, block_k, causal=causal, query_start=start)
        steps = [from_js(step) for step in steps]
        assert [set(step) for step in steps] == [STEP_KEYS] * len(python), n
        for t, (a, b) in enumerate(zip(steps, python)):
            for key in sorted(STEP_KEYS):
                # the same operations in the same order; only exp may differ in the last bit (V8 vs libm)
                assert_nested_close(a[key], b[key], f"case {n}, tile {t}, {key}")
            assert a["scores"] == b["scores"] and a["m"] == b["m"] and a["tile_max"] == b["tile_max"]  # no exp: exact
        assert_nested_close(from_js(reference), softmax_attention(q, k, v, causal=causal, query_start=start),
                            f"case {n}, softmaxAttention")
        assert from_js(scores) == module.score_matrix(q, k, causal=causal, query_start=start), n


def test_javascript_helpers_equal_python(node):
    retiling = [(s, a, b) for a in (1, 2, 4, 8) for b in (1, 3, 4, 16) for s in range(a + 1)]
    choices = [(n, b) for n in (1, 2, 5, 7, 16, 32) for b in (1, 3, 7) if b <= n]
    tiles = [(n, b) for n in (1, 5, 16, 17, 32) for b in (1, 3, 4, 32)]
    formats = [x for x in FORMAT_CASES if x != INF]
    js = run_js(node, f"show([{json.dumps(retiling)}.map(([s, a, b]) => stepAfterRetiling(s, a, b)),"
                f" {json.dumps(choices)}.map(([n, b]) => blockChoices(n, b)),"
                f" {json.dumps(tiles)}.map(([n, b]) => tileCount(n, b)),"
                f" {json.dumps(formats)}.map((x) => [0, 2, 3].map((d) => formatValue(x, d))), formatValue(-Infinity),"
                " BLOCK_SIZES, CHECK_TOLERANCE, maxAbsDifference([[1, 2], [3, 4]], [[1, 2.5], [2, 4]])]);")
    assert js[0] == [module.step_after_retiling(*case) for case in retiling]
    assert js[1] == [module.block_choices(*case) for case in choices]
    assert js[2] == [module.tile_count(*case) for case in tiles]
    assert js[3] == [[module.format_value(x, d) for d in (0, 2, 3)] for x in formats]
    assert js[4] == module.format_value(INF)
    assert tuple(js[5]) == module.BLOCK_SIZES and js[6] == module.CHECK_TOLERANCE
    assert js[7] == module.max_abs_difference([[1, 2], [3, 4]], [[1, 2.5], [2, 4]])


def test_javascript_waits_for_a_consistent_state(node):
    q, k, v = data(4, 16, 4, seed=0)
    cases = [(q, k, v, 4, 12, True), (q, k, v, 16, 0, True), (q, k, v, 17, 0, False), (q, k, v, 0, 0, False),
             (q, k, v, 4, 13, False), (q, k[:8], v, 4, 0, False), (q, [r[:3] for r in k], v, 4, 0, False),
             (q[:1], k[:1], v[:1], 1, 0, True), ([], k, v, 4, 0, False), (q, k[:3], v[:3], 1, 0, False),
             ([[1.0], [1.0, 2.0]], k, v, 4, 0, False)]
    js = run_js(node, f"show({json.dumps([c[:5] for c in cases])}.map((c) => consistentState(...c)));")
    assert js == [c[5] for c in cases]


# ------------------------------------------------------------------ the widget drawn in a browser
def mount(page, widget: FlashStepper) -> list[str]:
    state = {name: widget.get_state()[name] for name in TRAITS}
    return mount_widget(page, JS_PATH.read_text(), CSS_PATH.read_text(), state, ".ab-flash")


def shown_state(page) -> dict:
    """What the running-state table and the readout show."""
    return page.evaluate("""() => {
      const root = document.querySelector('#root .ab-flash');
      const cells = (cls) => [...root.querySelectorAll('.ab-flash-row')].map(
        (r) => [...r.querySelectorAll('.' + cls)].map((c) => [c.textContent, c.dataset.value]));
      return {
        m: cells('ab-flash-m'), l: cells('ab-flash-l'), rescale: cells('ab-flash-rescale'),
        o: cells('ab-flash-o'), out: cells('ab-flash-out'),
        where: root.querySelector('.ab-flash-where').textContent,
        step: root.querySelector('.ab-flash-step').value, max: root.querySelector('.ab-flash-step').max,
        current: [...root.querySelectorAll('.ab-flash-score.ab-flash-current')].map((c) => Number(c.dataset.key)),
        later: root.querySelectorAll('.ab-flash-score.ab-flash-later').length,
        masked: root.querySelectorAll('.ab-flash-score.ab-flash-masked').length,
        check: root.querySelector('.ab-flash-check').className,
        result: (root.querySelector('.ab-flash-check-result') || {}).textContent || null,
        resultValue: (root.querySelector('.ab-flash-check-result') || { dataset: {} }).dataset.value || null,
        refs: [...root.querySelectorAll('.ab-flash-ref')].map((c) => Number(c.dataset.value)),
        rescaled: (root.querySelector('.ab-flash-rescaled-count') || {}).textContent || null,
        saved: window.saved.length ? window.saved[window.saved.length - 1] : null,
      };
    }""")


def assert_shows(page, widget: FlashStepper, step: int, causal: bool, block_k: int) -> dict:
    """The drawing at ``step`` agrees with online_softmax_steps (values exactly, through data-value,
    within 1e-12; text as format_value)."""
    shown = shown_state(page)
    tiles = module.tile_count(len(widget.k), block_k)
    where = f"step {step}, causal {causal}, block_k {block_k}"
    assert (shown["step"], shown["max"]) == (str(step), str(tiles)), where
    assert shown["where"] == f"{step} of {tiles} tiles done", where
    steps = online_softmax_steps(widget.q, widget.k, widget.v, block_k, causal=causal, query_start=widget.query_start)
    queries, d = len(widget.q), len(widget.q[0])
    if step == 0:
        expected = {"m": [[INF]] * queries, "l": [[0.0]] * queries, "o": [[0.0] * d] * queries}
        assert shown["current"] == [] and shown["later"] == queries * len(widget.k), where
    else:
        s = steps[step - 1]
        expected = {"m": [[x] for x in s["m"]], "l": [[x] for x in s["l"]], "rescale": [[x] for x in s["rescale"]],
                    "o": s["o"], "out": s["out"]}
        assert shown["current"] == list(range(s["start"], s["stop"])) * queries, where
        rescaled = sum(old > INF and m > old for m, old in zip(s["m"], s["m_old"]))
        assert shown["rescaled"] == (None if s["skipped"] else str(rescaled)), where
    for key, values in expected.items():
        cells = shown[key]
        got = [[float(value) for _, value in row] for row in cells]
        assert_nested_close(got, values, f"{where}: {key}")
        assert [[text for text, _ in row] for row in cells] == [[module.format_value(x) for x in row] for row in values], (
            f"{where}: {key} shows {cells}")
    if step == tiles:
        assert "ab-flash-ok" in shown["check"] and shown["result"].endswith("\u2714"), (where, shown["result"])
        reference = softmax_attention(widget.q, widget.k, widget.v, causal=causal, query_start=widget.query_start)
        assert_nested_close(shown["refs"], [x for row in reference for x in row], f"{where}: reference")
        assert float(shown["resultValue"]) < module.CHECK_TOLERANCE
    else:
        assert "ab-flash-pending" in shown["check"] and shown["result"] is None, where
    return shown


def test_the_widget_draws_and_responds(page):
    widget = FlashStepper()
    errors = mount(page, widget)
    root = page.locator("#root .ab-flash")
    assert_shows(page, widget, 0, False, 4)
    assert root.locator(".ab-flash-prev").is_disabled() and root.locator(".ab-flash-first").is_disabled()
    for step in range(1, 5):
        root.locator(".ab-flash-next").click()
        shown = assert_shows(page, widget, step, False, 4)
        assert shown["saved"]["step"] == step  # the change is sent to the model
    assert root.locator(".ab-flash-next").is_disabled()
    readout = root.locator(".ab-flash-readout").text_content()
    assert "rescaled" in readout
    # the causal mask: the diagonal tile is masked above the diagonal; the check still holds
    root.locator(".ab-flash-causal").check()
    shown = assert_shows(page, widget, 4, True, 4)
    assert shown["masked"] == 3 + 2 + 1 and shown["saved"]["causal"] is True
    # another tile size, at the end: it stays at the end, and o / l is still the softmax
    root.locator(".ab-flash-block").select_option("3")
    shown = assert_shows(page, widget, 6, True, 3)
    assert (shown["saved"]["block_k"], shown["saved"]["step"]) == (3, 6)
    root.locator(".ab-flash-prev").click()
    assert_shows(page, widget, 5, True, 3)
    root.locator(".ab-flash-step").fill("2")
    assert_shows(page, widget, 2, True, 3)
    root.locator(".ab-flash-first").click()
    assert_shows(page, widget, 0, True, 3)
    root.locator(".ab-flash-last").click()
    assert_shows(page, widget, 6, True, 3)
    root.locator(".ab-flash-causal").uncheck()
    assert_shows(page, widget, 6, False, 3)
    assert not errors, errors


def test_the_widget_shows_skipped_tiles_and_partial_changes(page):
    widget = FlashStepper(causal=True, query_start=4, step=3)  # queries at 4..7: tiles 2 and 3 masked
    errors = mount(page, widget)
    root = page.locator("#root .ab-flash")
    assert_shows(page, widget, 3, True, 4)
    assert "skipped" in root.locator(".ab-flash-readout").text_content()
    assert root.locator(".ab-flash-tile-head.ab-flash-skipped").count() == 2
    # a change from Python may arrive one trait at a time: block_k before the step that goes with it
    page.evaluate("() => { model.set('block_k', 16); }")  # step 3 of a single tile: drawn as the last
    assert root.locator(".ab-flash-where").text_content() == "1 of 1 tiles done"
    page.evaluate("() => { model.set('step', 1); }")
    assert_shows(page, widget, 1, True, 16)
    q, k, v = data(2, 6, 3, seed=1)
    page.evaluate("([q]) => { model.set('q', q); }", [q])  # inconsistent until k and v come: not drawn
    page.evaluate("([k, v]) => { model.set('block_k', 2); model.set('step', 0); model.set('k', k); model.set('v', v);"
                  " model.set('query_start', 4); }", [k, v])
    widget.set_data(q, k, v)
    widget.block_k = 2
    with widget.hold_trait_notifications():
        widget.step, widget.causal = 0, True
    assert_shows(page, widget, 0, True, 2)
    for step in range(1, 4):
        root.locator(".ab-flash-next").click()
        assert_shows(page, widget, step, True, 2)
    assert not errors, errors
