"""Helpers for tests/test_site.py: JavaScript's number formatting, and the interactive widget checks.

An interactive widget in the book is an anywidget whose JavaScript draws from the widget's state.
Each one gets a check here that drives it in the built site, as a reader would, and compares what
it shows with the widget's Python twin. To add a widget, write
``@widget_check(".css-class-of-its-root")`` above a function ``(page, root, state) -> None`` that
raises ``AssertionError`` when the widget misbehaves. ``root`` is a Playwright locator for the
element, and ``state`` is the widget's stored model state. test_site.py runs the check on every
page where an anywidget draws that element. It fails for an anywidget that no check matches.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Callable

from playwright.sync_api import Locator, Page, expect

# --------------------------------------------------------------- JavaScript's number formatting
# Number.prototype.toFixed and toPrecision round the exact binary value half up (ECMA-262: "if
# there are two such n, pick the larger n"). Python's format() rounds half to even, so it can
# differ on a tie. Decimal(float) is the exact binary value.


def js_to_fixed(x: float, digits: int) -> str:
    """``x.toFixed(digits)`` for 0 <= x < 1e21."""
    return f"{Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP):f}"


def js_to_precision(x: float, precision: int) -> str:
    """``x.toPrecision(precision)`` for finite x > 0, exponential form included ("1.00e+3")."""
    exact = Decimal(x)
    rounded = exact.quantize(Decimal(1).scaleb(exact.adjusted() - precision + 1), rounding=ROUND_HALF_UP)
    if rounded.adjusted() != exact.adjusted():  # 9.995 -> 10.0: one digit more, round again
        rounded = exact.quantize(Decimal(1).scaleb(rounded.adjusted() - precision + 1), rounding=ROUND_HALF_UP)
    e = rounded.adjusted()
    if e < -6 or e >= precision:
        mantissa = f"{rounded.scaleb(-e):.{precision - 1}f}"
        return f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return f"{rounded:.{max(0, precision - 1 - e)}f}"


# ------------------------------------------------------------------------- the widget checks
WidgetCheck = Callable[[Page, Locator, dict], None]
WIDGET_CHECKS: dict[str, WidgetCheck] = {}


def widget_check(selector: str) -> Callable[[WidgetCheck], WidgetCheck]:
    """Register ``check`` for every element matching ``selector`` inside a rendered anywidget."""

    def register(check: WidgetCheck) -> WidgetCheck:
        WIDGET_CHECKS[selector] = check
        return check

    return register


# ----------------------------------------------------- "The cost of a sequence" (SequenceCost)
def format_count(x: float) -> str:
    """``formatCount`` of companion/widgets/sequence_cost.js."""
    if x < 1000:
        return js_to_fixed(x, 0)
    exp = math.floor(math.log10(x))
    mantissa = js_to_fixed(x / 10**exp, 2)
    if float(mantissa) >= 10:
        exp += 1
        mantissa = js_to_fixed(x / 10**exp, 2)
    return f"{mantissa}e{exp}"


def format_bytes(n: float) -> str:
    """``formatBytes`` of companion/widgets/sequence_cost.js."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    i = 0
    while i < len(units) - 1 and (n >= 1024 or (i > 0 and float(js_to_precision(n, 3)) >= 1000)):
        n /= 1024
        i += 1
    return f"{js_to_fixed(n, 0)} B" if i == 0 else f"{js_to_precision(n, 3)} {units[i]}"


def sequence_cost_readout(length: int, d_model: int, bytes_per_value: int) -> dict[str, str]:
    """What the readout must show, from the Python twin ``companion.widgets.sequence_costs``."""
    from companion.widgets import sequence_costs

    c = sequence_costs(length, d_model, bytes_per_value)
    ratio = c["attention_ops"] / c["linear_ops"]
    return {
        "attention-ops": format_count(c["attention_ops"]),
        "scores": format_bytes(c["attention_scores_bytes"]),
        "cache": format_bytes(c["kv_cache_bytes"]),
        "linear-ops": format_count(c["linear_ops"]),
        "state": format_bytes(c["linear_state_bytes"]),
        "ratio": f"{js_to_precision(ratio, 3)}x more" if ratio >= 1 else f"{js_to_precision(1 / ratio, 3)}x less",
    }


@widget_check(".ab-cost")
def check_sequence_cost(page: Page, root: Locator, state: dict) -> None:
    """The length slider and the width menu change the readout, to the Python twin's numbers."""
    slider, width = root.locator(".ab-cost-slider"), root.locator(".ab-cost-width")
    readout, length_text = root.locator(".ab-cost-readout"), root.locator(".ab-cost-length")
    bytes_per_value = state["bytes_per_value"]

    def shown() -> tuple[int, int, dict[str, str]]:
        match = re.fullmatch(r"\s*L = ([\d,]+) tokens\s*", length_text.inner_text())
        assert match, f"unexpected length text {length_text.inner_text()!r}"
        d_model = width.input_value()
        assert d_model.isdigit(), f"the width menu shows no valid width ({d_model!r})"
        values = {key: readout.locator(f".ab-val-{key}").inner_text() for key in sequence_cost_readout(1, 1, 1)}
        return int(match.group(1).replace(",", "")), int(d_model), values

    def agrees_with_python(what: str) -> None:
        length, d_model, values = shown()
        expected = sequence_cost_readout(length, d_model, bytes_per_value)
        assert values == expected, f"{what}: L={length}, d={d_model}: the page shows {values}, Python gives {expected}"

    # As stored: the state the notebook saved.
    length, d_model, _ = shown()
    assert (length, d_model) == (state["length"], state["d_model"]), (
        f"the widget shows L={length}, d={d_model}; its stored state says L={state['length']}, d={state['d_model']}")
    agrees_with_python("as stored")

    # Move the slider (log2 of the length) to another position.
    low, high = float(slider.get_attribute("min")), float(slider.get_attribute("max"))
    before_position, before_text = float(slider.input_value()), readout.text_content()
    target = low + 0.25 * round((high - low) / 0.25 / 3)  # a third of the way, on the 0.25 grid
    if abs(target - before_position) < 1e-9:
        target = high
    slider.fill(f"{target:g}")
    expect(readout, "the readout did not change when the slider moved").not_to_have_text(before_text, timeout=5_000)
    length, _, _ = shown()
    assert length == round(2**target), f"slider at log2 L = {target:g} shows L = {length}, not {round(2 ** target)}"
    agrees_with_python("after moving the slider")

    # Choose another width.
    options = [int(v) for v in width.locator("option").evaluate_all("opts => opts.map(o => o.value)")]
    other = next(v for v in reversed(options) if v != int(width.input_value()))
    before_text = readout.text_content()
    width.select_option(str(other))
    expect(readout, "the readout did not change with the width").not_to_have_text(before_text, timeout=5_000)
    assert shown()[1] == other, f"chose width {other}, the menu shows {shown()[1]}"
    agrees_with_python("after choosing another width")


# --------------------------------------------------- The attention explorer (AttentionExplorer)
def css_alpha(color: str) -> float:
    """The alpha of a computed CSS colour, ``rgb(r, g, b)`` or ``rgba(r, g, b, a)``."""
    match = re.fullmatch(r"rgba?\(\s*[\d.]+,\s*[\d.]+,\s*[\d.]+(?:,\s*([\d.]+))?\s*\)", color.strip())
    assert match, f"unexpected colour {color!r}"
    return float(match.group(1)) if match.group(1) is not None else 1.0


@widget_check(".ab-attn")
def check_attention_explorer(page: Page, root: Locator, state: dict) -> None:
    """Layer and head buttons, hovering and clicking tokens (and heatmap rows): the readout's query
    and top-3 keys, every chip's shade and the heatmap agree with ``top_attended`` on the stored
    weights."""
    from companion.widgets import display_token, top_attended
    from companion.widgets.attention_explorer import decode_weights

    tokens, weights = state["tokens"], decode_weights(state["weights"])  # stored in encode_weights' form
    n_layers, n_heads, T = len(weights), len(weights[0]), len(tokens)
    layer_buttons = root.locator(".ab-attn-layers .ab-attn-button")
    head_buttons = root.locator(".ab-attn-heads .ab-attn-button")
    chips, readout = root.locator(".ab-attn-tok"), root.locator(".ab-attn-readout")
    shown_query = readout.locator(".ab-attn-rquery")

    def pressed(buttons: Locator, what: str) -> int:
        flags = buttons.evaluate_all("bs => bs.map(b => b.getAttribute('aria-pressed'))")
        on = [i for i, flag in enumerate(flags) if flag == "true"]
        assert len(on) == 1, f"{what} buttons pressed: {on} (of {len(flags)})"
        return on[0]

    def agrees_with_python(what: str, query: int | None = None) -> None:
        layer, head = pressed(layer_buttons, "layer"), pressed(head_buttons, "head")
        q = int(shown_query.get_attribute("data-index"))
        if query is not None:
            assert q == query, f"{what}: the readout is for query {q}, not {query}"
        where = readout.locator(".ab-attn-where").text_content()
        assert where == f"layer {layer}, head {head}", f"{what}: the readout says {where!r}"
        assert shown_query.text_content() == display_token(tokens[q]), (
            f"{what}: query {q} is shown as {shown_query.text_content()!r}, not {display_token(tokens[q])!r}")
        items = readout.locator(".ab-attn-top-item").evaluate_all(
            "items => items.map(i => [Number(i.dataset.index), i.querySelector('.ab-attn-rtok').textContent,"
            " i.querySelector('.ab-attn-weight').textContent])")
        expected = [[j, display_token(token), js_to_fixed(w, 2)]
                    for j, token, w in top_attended(weights, layer, head, q, 3, tokens=tokens)]
        assert items == expected, f"{what}: layer {layer}, head {head}, query {q}: the page shows {items}, Python {expected}"
        row = weights[layer][head][q]
        shades = chips.evaluate_all("cs => cs.map(c => [c.dataset.weight, getComputedStyle(c).backgroundColor])")
        assert len(shades) == T, f"{what}: {len(shades)} token chips for {T} tokens"
        for j, (weight_text, color) in enumerate(shades):
            assert weight_text == js_to_fixed(row[j], 3), (
                f"{what}: chip {j} has weight {weight_text}, not {js_to_fixed(row[j], 3)}")
            assert abs(css_alpha(color) - math.sqrt(row[j])) < 0.01, (
                f"{what}: chip {j} (weight {row[j]}) is shaded {color}, not at opacity sqrt(weight)")
        outlined = root.locator(".ab-attn-outline").get_attribute("data-index")
        assert outlined == str(q), f"{what}: the heatmap outlines row {outlined}, not query {q}"
        cells = root.locator(".ab-attn-cell").count()
        nonzero = sum(w > 0 for r in weights[layer][head] for w in r)
        assert cells == nonzero, f"{what}: the heatmap draws {cells} cells, layer {layer} head {head} has {nonzero} weights > 0"

    # As stored.
    texts = chips.evaluate_all("cs => cs.map(c => c.textContent)")
    assert texts == [display_token(t) for t in tokens], f"the chips show {texts}, the tokens are {tokens}"
    stored = (pressed(layer_buttons, "layer"), pressed(head_buttons, "head"), int(shown_query.get_attribute("data-index")))
    assert stored == (state["layer"], state["head"], state["query"]), (
        f"the widget shows layer, head, query = {stored}; its stored state says "
        f"{(state['layer'], state['head'], state['query'])}")
    assert layer_buttons.count() == n_layers and head_buttons.count() == n_heads, (
        f"{layer_buttons.count()} layer and {head_buttons.count()} head buttons for weights of {n_layers} x {n_heads}")
    agrees_with_python("as stored")

    # Another layer, then another head.
    for buttons, name in ((layer_buttons, "layer"), (head_buttons, "head")):
        if buttons.count() > 1:
            current = pressed(buttons, name)
            other = buttons.count() - 1 if current != buttons.count() - 1 else 0
            buttons.nth(other).click()
            expect(buttons.nth(other), f"the {name} button {other} was not pressed").to_have_attribute("aria-pressed", "true")
            agrees_with_python(f"after choosing {name} {other}")

    if T > 1:
        pinned = int(shown_query.get_attribute("data-index"))
        # Hover a token: it becomes the query (a preview).
        hovered = T // 2 if T // 2 != pinned else T // 2 - 1
        chips.nth(hovered).hover()
        expect(shown_query, "hovering a token did not make it the query").to_have_attribute("data-index", str(hovered))
        agrees_with_python(f"hovering token {hovered}", hovered)
        # Click another token: it is pinned, and stays the query when the pointer leaves.
        clicked = 1 if pinned != 1 else 0
        chips.nth(clicked).click()
        root.locator(".ab-attn-controls").hover()
        expect(shown_query, "a clicked token did not stay the query").to_have_attribute("data-index", str(clicked))
        expect(chips.nth(clicked)).to_have_class(re.compile(r"\bab-attn-pinned\b"))
        agrees_with_python(f"after clicking token {clicked}", clicked)
        # Hover a row of the heatmap: that query.
        row = T - 1 if clicked != T - 1 else 0
        root.locator(".ab-attn-hit").nth(row).hover()
        expect(shown_query, "hovering a heatmap row did not make it the query").to_have_attribute("data-index", str(row))
        agrees_with_python(f"hovering heatmap row {row}", row)
        root.locator(".ab-attn-controls").hover()
        expect(shown_query, "the pinned query did not come back").to_have_attribute("data-index", str(clicked))


# ------------------------------------------------------------ The mask explorer (MaskExplorer)
@widget_check(".ab-mask")
def check_mask_explorer(page: Page, root: Locator, state: dict) -> None:
    """The kind menu, the length, window, prefix and padding sliders, the side menu and clicks on
    query rows: the readout, the filled cells and the rows marked as fully masked agree with
    ``mask_matrix`` and ``describe_query``."""
    from companion.widgets import describe_query, mask_matrix
    from companion.widgets.mask_explorer import fully_masked_rows

    kind, side = root.locator(".ab-mask-kind"), root.locator(".ab-mask-side")
    sliders = {name: root.locator(f".ab-mask-{name}") for name in ("length", "window", "prefix", "padding")}
    readout = root.locator(".ab-mask-readout")

    def shown() -> dict:
        values = {name: int(slider.input_value()) for name, slider in sliders.items()}
        return {"kind": kind.input_value(), "padding_side": side.input_value(), **values}

    def agrees_with_python(what: str, query: int | None = None) -> None:
        s = shown()
        mask = mask_matrix(s["kind"], s["length"], window=s["window"], prefix=s["prefix"], padding=s["padding"],
                           padding_side=s["padding_side"])
        text = readout.text_content()
        match = re.match(r"query (\d+) ", text)
        assert match, f"{what}: unexpected readout {text!r}"
        q = int(match.group(1))
        if query is not None:
            assert q == query, f"{what}: the readout is for query {q}, not {query}"
        assert text == describe_query(mask, q), f"{what} ({s}): the page says {text!r}, Python {describe_query(mask, q)!r}"
        outlined = root.locator(".ab-mask-seloutline").get_attribute("data-row")
        assert outlined == str(q), f"{what}: row {outlined} is highlighted, not query {q}"
        cells = root.locator(".ab-mask-cell").evaluate_all(
            "cs => cs.map(c => [Number(c.dataset.row), Number(c.dataset.col), c.classList.contains('ab-on')])")
        assert len(cells) == s["length"] ** 2, f"{what}: {len(cells)} cells for length {s['length']}"
        filled = sorted((i, j) for i, j, on in cells if on)
        expected = [(i, j) for i, row in enumerate(mask) for j, on in enumerate(row) if on]
        assert filled == expected, (f"{what} ({s}): {len(filled)} filled cells, Python's mask has {len(expected)}"
                                    f"{'' if len(filled) != len(expected) else ' (in other places)'}")
        marked = root.locator(".ab-mask-nanrow").evaluate_all("rs => rs.map(r => Number(r.dataset.row))")
        assert marked == fully_masked_rows(mask), f"{what} ({s}): rows marked fully masked {marked}, Python {fully_masked_rows(mask)}"

    # As stored.
    stored = {name: state[name] for name in ("kind", "padding_side", "length", "window", "prefix", "padding")}
    assert shown() == stored, f"the widget shows {shown()}; its stored state says {stored}"
    agrees_with_python("as stored", state["query"])

    def choose(label: str, row: int, kind_value: str | None = None, side_value: str | None = None, **values) -> None:
        if kind_value is not None:
            kind.select_option(kind_value)
        if side_value is not None:
            side.select_option(side_value)
        for name, value in values.items():
            sliders[name].fill(str(value))
            expect(sliders[name], f"{label}: {name} did not move").to_have_value(str(value))
        root.locator(f'.ab-mask-rowlabel[data-row="{row}"]').click()
        expect(readout, f"{label}: clicking row {row} did not select it").to_have_text(re.compile(rf"^query {row} "))
        agrees_with_python(label, row)

    choose("sliding window", 7, "sliding window", length=10, window=3)
    choose("prefix-LM", 2, "prefix-LM", prefix=4)
    choose("causal + left padding", 1, "causal + padding", "left", padding=3)
    assert "no key" in readout.text_content(), "with left padding, query 1 (a pad) must see no key"
    expect(root.locator(".ab-mask-warning")).to_be_visible()
    choose("causal + right padding", 9, side_value="right")
    choose("bidirectional + padding", 0, "bidirectional + padding", side_value="left", padding=2)
    choose("bidirectional", 5, "bidirectional", length=6)
    choose("causal", min(3, state["length"] - 1), "causal", length=state["length"])


# ------------------------------------------------------------------------ The RoPE dial (RopeDial)
def js_string(x: float) -> str:
    """``String(x)`` of JavaScript for a number as the widgets show one (``4`` not ``4.0``)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e21 else repr(float(x))


def rope_format_number(x: float) -> str:
    """``formatNumber`` of companion/widgets/rope_dial.js: three significant figures below 1000,
    whole numbers with commas from 1000."""
    if x == 0:
        return "0"
    if x >= 1000 or float(js_to_precision(x, 3)) >= 1000:
        return f"{math.floor(x + 0.5):,}"
    return js_to_precision(x, 3)


def rope_degrees(angle: float) -> str:
    """``degrees(angle).toFixed(1)`` of rope_dial.js, with the degree sign: the angle mod 360."""
    return js_to_fixed(((angle % (2 * math.pi)) * 180) / math.pi, 1) + "\u00b0"


def rope_rows(position: int, head_dim: int, base: float, pairs: list[int], scaling: str, factor: float,
              context: int) -> list[dict[str, str]]:
    """What each row of the dial's table must show, from the Python twins in companion.widgets.rope_dial."""
    from companion.widgets.rope_dial import rope_angles, rope_wavelengths, rotation_status, trained_angles

    angles = rope_angles(position, head_dim, base, pairs, scaling, factor)
    waves = rope_wavelengths(head_dim, base, pairs)
    scaled = rope_wavelengths(head_dim, base, pairs, scaling, factor)
    trained = trained_angles(head_dim, base, pairs, context)
    return [{
        "pair": str(i),
        "wavelength": rope_format_number(w),
        "scaled-wavelength": rope_format_number(s),
        "slowdown": rope_format_number(s / w) + "\u00d7",
        "degrees": rope_degrees(a),
        "turns": rope_format_number(a / (2 * math.pi)),
        "trained-turns": rope_format_number(t / (2 * math.pi)),
        "status": rotation_status(a, t),
    } for i, a, w, s, t in zip(pairs, angles, waves, scaled, trained)]


@widget_check(".ab-rope")
def check_rope_dial(page: Page, root: Locator, state: dict) -> None:
    """The position slider and number box, the scaling menu and the factor slider: every row of the
    table, every dial and the readout agree with ``rope_angles`` and the other Python twins; and
    position interpolation by a factor f brings position f x (the trained context) back within every
    pair's trained range."""
    from companion.widgets.rope_dial import ntk_base, position_from_slider, rope_angles

    head_dim, base, pairs, context = state["head_dim"], state["base"], state["pairs"], state["original_context"]
    slider, number = root.locator(".ab-rope-position"), root.locator(".ab-rope-position-input")
    scaling, factor_slider = root.locator(".ab-rope-scaling"), root.locator(".ab-rope-factor")
    factor_value, readout = root.locator(".ab-rope-factor-value"), root.locator(".ab-rope-readout")
    keys = list(rope_rows(0, head_dim, base, pairs[:1], "none", 1.0, 1)[0])

    def shown() -> tuple[int, str, float]:
        return int(number.input_value()), scaling.input_value(), float(factor_value.text_content())

    def agrees_with_python(what: str) -> list[str]:
        position, kind, factor = shown()
        where = f"{what} (position {position}, {kind}, factor {factor:g})"
        expected = rope_rows(position, head_dim, base, pairs, kind, factor, context)
        rows = root.locator(".ab-rope-row").evaluate_all(
            "(rows, keys) => rows.map(r => Object.fromEntries("
            "keys.map(k => [k, r.querySelector('.ab-rope-' + k).textContent])))",
            keys)
        assert rows == expected, f"{where}: the table shows {rows}, Python gives {expected}"
        angles = rope_angles(position, head_dim, base, pairs, kind, factor)
        hands = root.locator(".ab-rope-hand").evaluate_all("hs => hs.map(h => Number(h.dataset.angle))")
        assert len(hands) == len(pairs) and all(math.isclose(h, a, rel_tol=1e-12, abs_tol=1e-12)
                                                for h, a in zip(hands, angles)), (
            f"{where}: the dials' hands are at {hands} radians, Python gives {angles}")
        captions = root.locator(".ab-rope-caption").evaluate_all("cs => cs.map(c => c.textContent)")
        assert captions == [f"pair {r['pair']}: {r['degrees']}" for r in expected], f"{where}: dial captions {captions}"
        dials = root.locator(".ab-rope-dial").evaluate_all(
            "ds => ds.map(d => ['seen', 'beyond', 'unseen'].find(s => d.classList.contains('ab-rope-' + s)))")
        statuses = [r["status"] for r in expected]
        assert dials == statuses, f"{where}: the dials are marked {dials}, Python gives {statuses}"
        counts = [readout.locator(c).text_content() for c in (".ab-rope-where", ".ab-rope-past", ".ab-rope-unseen-count")]
        past, unseen = sum(s != "seen" for s in statuses), statuses.count("unseen")
        assert counts == [f"{position:,}", str(past), str(unseen)], (
            f"{where}: the readout says position, past, unseen = {counts}, Python gives {[position, past, unseen]}")
        if kind == "ntk":
            about = root.locator(".ab-rope-about").text_content()
            assert rope_format_number(ntk_base(base, head_dim, factor)) in about, (
                f"{where}: the NTK base {rope_format_number(ntk_base(base, head_dim, factor))} is not in {about!r}")
        return statuses

    def changed(before: str, what: str) -> None:
        expect(root.locator(".ab-rope-table"), f"the table did not change {what}").not_to_have_text(before, timeout=5_000)

    # As stored.
    stored = (state["position"], state["scaling"], state["factor"])
    assert shown() == stored, f"the widget shows position, scaling, factor = {shown()}; its stored state says {stored}"
    agrees_with_python("as stored")

    # The position slider (logarithmic), to about three times the trained context.
    # (a step where 2^s - 1 has a fraction above one half: rounding, not truncating, must show)
    start = round(math.log2(3 * context + 1), 2)
    target = next((t for t in (round(start + k / 100, 2) for k in range(20)) if (2**t - 1) % 1 > 0.55), start)
    before = root.locator(".ab-rope-table").text_content()
    slider.fill(f"{target:.2f}")
    expect(number, f"slider at {target:.2f}").to_have_value(str(position_from_slider(target)), timeout=5_000)
    changed(before, "when the slider moved")
    agrees_with_python("after moving the slider")

    # Each scaling, at the factor shown.
    for kind in ("interpolation", "ntk", "none"):
        if scaling.input_value() != kind:
            before = root.locator(".ab-rope-table").text_content()
            scaling.select_option(kind)
            changed(before, f"with scaling {kind}")
        agrees_with_python(f"scaling {kind}")

    # Another factor, under interpolation: at f x the trained context, every pair is back in range.
    scaling.select_option("interpolation")
    factor = 4.0 if shown()[2] != 4.0 else 8.0
    factor_slider.fill(js_string(factor))
    expect(factor_value, f"the factor did not move to {factor:g}").to_have_text(js_string(factor), timeout=5_000)
    agrees_with_python(f"factor {factor:g}")
    far = int(factor * context)
    number.fill(str(far))
    number.press("Enter")
    expect(readout.locator(".ab-rope-where"), f"typing position {far}").to_have_text(f"{far:,}", timeout=5_000)
    statuses = agrees_with_python(f"position {far}, interpolation by {factor:g}")
    assert set(statuses) == {"seen"}, (
        f"interpolation by {factor:g} must bring position {far} = {factor:g} x {context} within every pair's trained "
        f"range; the pairs are {statuses}")
    scaling.select_option("none")
    agrees_with_python(f"position {far}, no scaling")

    # A position past the slider's top, typed: the slider grows to reach it.
    far = 20 * context + 3
    number.fill(str(far))
    number.press("Enter")
    expect(readout.locator(".ab-rope-where"), f"typing position {far}").to_have_text(f"{far:,}", timeout=5_000)
    top = float(slider.get_attribute("max"))
    assert top >= math.log2(far + 1) - 0.005, f"the slider's top {top} does not reach position {far}"
    agrees_with_python(f"position {far}")


# ---------------------------------------------------------- The KV-cache calculator (KVCacheCalculator)
def kv_cache_expected(layers: int, heads: int, kv_heads: int, head_dim: int, bytes_per_element: int, context: int,
                      batch: int, parameters: int, counted: bool, gpus: list[dict]) -> dict:
    """What the calculator must show, from the Python twins in companion.widgets.kv_cache."""
    from companion.widgets.kv_cache import (GIB, MODELS, attention_kind, kv_bytes_per_token, kv_cache_bytes,
                                            tokens_that_fit, weight_bytes)

    b = bytes_per_element
    cache = kv_cache_bytes(layers, kv_heads, head_dim, context, b, batch)
    counted_parameters = parameters if counted else 0
    weights = weight_bytes(counted_parameters)
    kind = attention_kind(heads, kv_heads)
    grouped = kind != "multi-head"
    return {
        "per-token": format_bytes(kv_bytes_per_token(layers, kv_heads, head_dim, b)),
        "cache": format_bytes(cache),
        "kind": kind,
        "ratio": f"{heads // kv_heads}\u00d7" if grouped else None,
        "mha": format_bytes(kv_cache_bytes(layers, heads, head_dim, context, b, batch)) if grouped else None,
        "gpus": [[str(g["gib"]),
                  js_to_fixed((100 * float(weights + cache)) / float(g["gib"] * GIB), 0) + "%",
                  f"{tokens_that_fit(g['gib'], layers, kv_heads, head_dim, b, batch, counted_parameters):,}"]
                 for g in gpus],
        "models": [[m["name"],
                    format_bytes(kv_bytes_per_token(m["layers"], m["kv_heads"], m["head_dim"], b)),
                    format_bytes(kv_cache_bytes(m["layers"], m["kv_heads"], m["head_dim"], context, b, batch)),
                    format_bytes(weight_bytes(m["parameters"]))] for m in MODELS],
    }


@widget_check(".ab-kv")
def check_kv_cache(page: Page, root: Locator, state: dict) -> None:
    """The model menu, the numbers, the data type, the context slider and box, the batch and the
    weights box (and a click on a model's row): the readout, the GPU table and the models' table
    agree with ``kv_cache_bytes``, ``tokens_that_fit`` and the other Python twins; a number that
    breaks the heads' grouping is refused with a warning."""
    from companion.widgets.kv_cache import CUSTOM, MODELS, model_config

    controls = {name: root.locator(f".ab-kv-{name}") for name in
                ("model", "dtype", "batch", "layers", "heads", "kv-heads", "head-dim", "context-input")}
    slider, weights_box = root.locator(".ab-kv-context"), root.locator(".ab-kv-count-weights")
    readout, warning = root.locator(".ab-kv-readout"), root.locator(".ab-kv-warning")
    parameters = state["parameters"]  # what the reader's edits make of it, as the widget's docstring says

    def shown() -> dict:
        values = {name: c.input_value() for name, c in controls.items()}
        return {"model": values.pop("model"), **{k: int(v) for k, v in values.items()},
                "count": weights_box.is_checked()}

    def agrees_with_python(what: str) -> None:
        s = shown()
        where = f"{what} ({s})"
        expected_parameters = model_config(s["model"])["parameters"] if s["model"] != CUSTOM else parameters
        assert weights_box.is_disabled() == (expected_parameters == 0), (
            f"{where}: the weights box is {'dis' if weights_box.is_disabled() else 'en'}abled with "
            f"{expected_parameters} parameters")
        expected = kv_cache_expected(s["layers"], s["heads"], s["kv-heads"], s["head-dim"], s["dtype"],
                                     s["context-input"], s["batch"], expected_parameters, s["count"], state["gpus"])
        def optional(cls: str) -> str | None:
            return readout.locator(cls).text_content() if readout.locator(cls).count() else None

        page_values = {
            "per-token": readout.locator(".ab-kv-val-per-token").text_content(),
            "cache": readout.locator(".ab-kv-val-cache").text_content(),
            "kind": readout.locator(".ab-kv-val-kind").get_attribute("data-kind"),
            "ratio": optional(".ab-kv-val-ratio"),
            "mha": optional(".ab-kv-val-mha"),
            "gpus": root.locator(".ab-kv-gpu").evaluate_all(
                "rs => rs.map(r => [r.dataset.gib, r.querySelector('.ab-kv-used').textContent,"
                " r.querySelector('.ab-kv-tokens').textContent])"),
            "models": root.locator(".ab-kv-model-row").evaluate_all(
                "rs => rs.map(r => ['name', 'per-token', 'cache', 'weights']"
                ".map(k => r.querySelector('.ab-kv-model-' + k).textContent))"),
        }
        for key, value in expected.items():
            assert page_values[key] == value, (
                f"{where}: {key}: the page shows {page_values[key]!r}, Python gives {value!r}")
        if expected_parameters:
            weights = readout.locator(".ab-kv-val-weights").text_content()
            assert weights == format_bytes(2 * expected_parameters), f"{where}: the weights shown are {weights}"
        chosen = root.locator(".ab-kv-model-row.ab-kv-chosen").evaluate_all("rs => rs.map(r => r.dataset.model)")
        assert chosen == ([] if s["model"] == CUSTOM else [s["model"]]), f"{where}: rows marked as chosen: {chosen}"

    def changed(before: str, what: str) -> None:
        expect(root.locator(".ab-kv-gpus"), f"the GPU table did not change {what}").not_to_have_text(before, timeout=5_000)

    def type_number(name: str, value: int) -> None:
        controls[name].fill(str(value))
        controls[name].press("Enter")

    # As stored.
    s = shown()
    stored = {"model": state["model"], "dtype": state["bytes_per_element"], "batch": state["batch"],
              "layers": state["layers"], "heads": state["heads"], "kv-heads": state["kv_heads"],
              "head-dim": state["head_dim"], "context-input": state["context"],
              "count": state["count_weights"] and state["parameters"] > 0}
    assert s == stored, f"the widget shows {s}; its stored state says {stored}"
    agrees_with_python("as stored")

    # The context slider (powers of two).
    low, high = int(float(slider.get_attribute("min"))), int(float(slider.get_attribute("max")))
    target = next(e for e in (17, 15, 12, low, high) if low <= e <= high and 2**e != s["context-input"])
    before = root.locator(".ab-kv-gpus").text_content()
    slider.fill(str(target))
    expect(controls["context-input"], f"slider at {target}").to_have_value(str(2**target), timeout=5_000)
    changed(before, "when the context slider moved")
    agrees_with_python("after moving the context slider")

    # Each data type.
    for b in ("4", "1", "2"):
        if controls["dtype"].input_value() != b:
            controls["dtype"].select_option(b)
            expect(controls["dtype"]).to_have_value(b)
        agrees_with_python(f"{b}-byte cache")

    # Each published model from the menu; its numbers fill the boxes.
    for m in MODELS:
        if controls["model"].input_value() != m["name"]:
            controls["model"].select_option(m["name"])
            expect(controls["layers"], f"choosing {m['name']}").to_have_value(str(m["layers"]), timeout=5_000)
        s = shown()
        assert (s["layers"], s["heads"], s["kv-heads"], s["head-dim"]) == (m["layers"], m["heads"], m["kv_heads"],
                                                                            m["head_dim"]), f"{m['name']}: shows {s}"
        agrees_with_python(f"model {m['name']}")

    # The weights box, then the batch.
    if not weights_box.is_disabled():
        before = root.locator(".ab-kv-gpus").text_content()
        weights_box.click()
        changed(before, "when the weights box was clicked")
        agrees_with_python("weights box clicked")
        weights_box.click()
    type_number("batch", 4)
    expect(controls["batch"]).to_have_value("4")
    agrees_with_python("batch 4")
    type_number("batch", 1)

    # Multi-head attention: kv heads = heads makes the model custom (and its parameters unknown).
    heads = shown()["heads"]
    type_number("kv-heads", heads)
    expect(controls["model"], "editing the KV heads did not make the model custom").to_have_value(CUSTOM, timeout=5_000)
    parameters = 0
    agrees_with_python("kv heads = heads")
    assert readout.locator(".ab-kv-val-kind").get_attribute("data-kind") == "multi-head"

    # A number that breaks the grouping is refused, with a warning.
    bad = next((k for k in range(2, heads) if heads % k), heads + 1)
    type_number("kv-heads", bad)
    expect(warning, f"{bad} KV heads for {heads} heads were not refused").to_be_visible(timeout=5_000)
    expect(controls["kv-heads"]).to_have_value(str(heads))
    agrees_with_python("after a refused number")
    type_number("kv-heads", 1)
    expect(warning).to_be_hidden()
    agrees_with_python("multi-query")

    # A click on a model's row chooses it.
    name = MODELS[-1]["name"]
    root.locator(f'.ab-kv-model-row[data-model="{name}"]').click()
    expect(controls["model"], f"clicking the row of {name}").to_have_value(name, timeout=5_000)
    agrees_with_python(f"clicked {name}")


# ------------------------------------------------------------- The FlashAttention stepper (FlashStepper)
@widget_check(".ab-flash")
def check_flash_stepper(page: Page, root: Locator, state: dict) -> None:
    """The buttons, the slider, the causal switch and the tile-size menu: at every step the running
    m, l, rescale factor, o and o / l of each query row agree with ``online_softmax_steps``, the
    current tile is highlighted, and after the last tile o / l is ``softmax_attention`` (checked ✔)."""
    from companion.widgets.flash_stepper import (CHECK_TOLERANCE, format_value, online_softmax_steps,
                                                 softmax_attention, tile_count)

    q, k, v, start = state["q"], state["k"], state["v"], state["query_start"]
    where, slider, causal_box = root.locator(".ab-flash-where"), root.locator(".ab-flash-step"), root.locator(".ab-flash-causal")
    block_menu, check = root.locator(".ab-flash-block"), root.locator(".ab-flash-check")

    def agrees_with_python(what: str, step: int, causal: bool, block_k: int) -> None:
        tiles = tile_count(len(k), block_k)
        expect(where, what).to_have_text(f"{step} of {tiles} tiles done", timeout=5_000)
        assert (slider.input_value(), slider.get_attribute("max")) == (str(step), str(tiles)), what
        assert causal_box.is_checked() == causal and block_menu.input_value() == str(block_k), what
        steps = online_softmax_steps(q, k, v, block_k, causal=causal, query_start=start)
        if step == 0:
            expected = {"m": [[float("-inf")]] * len(q), "l": [[0.0]] * len(q), "o": [[0.0] * len(q[0])] * len(q)}
        else:
            s = steps[step - 1]
            expected = {"m": [[x] for x in s["m"]], "l": [[x] for x in s["l"]], "rescale": [[x] for x in s["rescale"]],
                        "o": s["o"], "out": s["out"]}
            keys = root.locator(".ab-flash-score.ab-flash-current").evaluate_all("cs => cs.map(c => Number(c.dataset.key))")
            assert keys == list(range(s["start"], s["stop"])) * len(q), f"{what}: the current tile is {keys}"
            grew = sum(old > float("-inf") and m > old for m, old in zip(s["m"], s["m_old"]))
            if not s["skipped"]:
                assert root.locator(".ab-flash-rescaled-count").text_content() == str(grew), what
        for cls, rows in expected.items():
            cells = root.locator(".ab-flash-row").evaluate_all(
                "(rs, cls) => rs.map(r => [...r.querySelectorAll('.ab-flash-' + cls)].map(c => [c.textContent, c.dataset.value]))", cls)
            shown = [[float(value) for _, value in row] for row in cells]
            assert all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12) or a == b
                       for ra, rb in zip(shown, rows) for a, b in zip(ra, rb)) and len(shown) == len(rows), (
                f"{what}: {cls} is {shown}, Python gives {rows}")
            texts = [[text for text, _ in row] for row in cells]
            assert texts == [[format_value(x) for x in row] for row in rows], f"{what}: {cls} shows {texts}"
        if step == tiles:
            expect(check, f"{what}: the check").to_have_class(re.compile(r"\bab-flash-ok\b"), timeout=5_000)
            result = root.locator(".ab-flash-check-result")
            assert result.text_content().endswith("\u2714") and float(result.get_attribute("data-value")) < CHECK_TOLERANCE
            refs = root.locator(".ab-flash-ref").evaluate_all("cs => cs.map(c => Number(c.dataset.value))")
            reference = [x for row in softmax_attention(q, k, v, causal=causal, query_start=start) for x in row]
            assert len(refs) == len(reference) and all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
                                                       for a, b in zip(refs, reference)), f"{what}: the reference row"
        else:
            expect(check, f"{what}: the check").to_have_class(re.compile(r"\bab-flash-pending\b"), timeout=5_000)

    causal, block_k = state["causal"], state["block_k"]
    tiles = tile_count(len(k), block_k)
    agrees_with_python("as stored", state["step"], causal, block_k)
    if state["step"] > 0:  # (at step 0 the backward buttons are disabled)
        root.locator(".ab-flash-first").click()
        agrees_with_python("at the start", 0, causal, block_k)
    assert root.locator(".ab-flash-prev").is_disabled() and root.locator(".ab-flash-first").is_disabled()
    for step in range(1, tiles + 1):  # every tile, with the "next tile" button
        root.locator(".ab-flash-next").click()
        agrees_with_python(f"after next tile {step}", step, causal, block_k)
    assert root.locator(".ab-flash-next").is_disabled()
    causal_box.set_checked(not causal)  # the mask switched: the same step, other numbers, still o / l = softmax
    causal = not causal
    agrees_with_python(f"causal {causal}", tiles, causal, block_k)
    if causal:
        masked = root.locator(".ab-flash-score.ab-flash-masked").count()
        assert masked == sum(max(0, len(k) - 1 - (start + i)) for i in range(len(q))), f"{masked} masked scores"
    other = 3 if block_k != 3 else 2  # another tile size, at the end: the widget stays at the end
    block_menu.select_option(str(other))
    agrees_with_python(f"tile size {other}", tile_count(len(k), other), causal, other)
    slider.fill("1")
    agrees_with_python("slider at 1", 1, causal, other)
    root.locator(".ab-flash-prev").click()
    agrees_with_python("previous", 0, causal, other)
    root.locator(".ab-flash-last").click()
    agrees_with_python("end", tile_count(len(k), other), causal, other)


# ------------------------------------------------------------------- The routing view (RoutingView)
def css_rgb(hex_color: str) -> str:
    """``#RRGGBB`` as a computed CSS colour, ``rgb(r, g, b)``."""
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


@widget_check(".ab-route")
def check_routing_view(page: Page, root: Locator, state: dict) -> None:
    """The layer buttons, the top-1/top-2 switch, clicks on the experts' legend (again to clear, and
    Escape), hovering and focusing tokens: every token's colour bands (experts, colours, widths), the
    highlighted and dimmed tokens, the load bars and shares and the readout agree with the Python
    twins in ``companion.widgets.routing_view`` on the stored routing."""
    from companion.widgets import display_token
    from companion.widgets.routing_view import (EXPERT_COLORS, EXPERT_STRIPED, SHOW, band_widths, decode_choices,
                                                decode_weights, describe_token, expert_counts, format_share,
                                                readout_text, routed_tokens, top_of)

    tokens, experts, top_k, layers = state["tokens"], state["experts"], state["top_k"], state["layers"]
    choices, weights = decode_choices(state["choices"]), decode_weights(state["weights"])  # the stored form
    T = len(tokens)
    layer_buttons, show_buttons = root.locator(".ab-route-layer"), root.locator(".ab-route-show .ab-route-button")
    legend, chips, readout = root.locator(".ab-route-legend-item"), root.locator(".ab-route-tok"), root.locator(".ab-route-readout")
    away = root.locator(".ab-route-controls")  # where the pointer rests when no token is hovered

    def flags(buttons: Locator) -> list[bool]:
        return buttons.evaluate_all("bs => bs.map(b => b.getAttribute('aria-pressed') === 'true')")

    def pressed(buttons: Locator, what: str) -> int:
        on = [i for i, flag in enumerate(flags(buttons)) if flag]
        assert len(on) == 1, f"{what} buttons pressed: {on} (of {buttons.count()})"
        return on[0]

    def shown_view() -> tuple[int, str, int]:
        layer = pressed(layer_buttons, "layer")
        show = show_buttons.nth(pressed(show_buttons, "show")).get_attribute("data-show")
        highlighted = [e for e, flag in enumerate(flags(legend)) if flag]
        assert len(highlighted) <= 1, f"experts highlighted in the legend: {highlighted}"
        return layer, show, highlighted[0] if highlighted else -1

    def agrees_with_python(what: str, view: tuple[int, str, int] | None = None, token: int | None = None) -> None:
        layer, show, expert = shown_view()
        if view is not None:
            assert (layer, show, expert) == view, f"{what}: the widget shows (layer, show, expert) = " \
                                                  f"{(layer, show, expert)}, expected {view}"
        top, c, u = top_of(show), choices[layer], weights[layer]
        hit = set(routed_tokens(c, expert, top)) if expert >= 0 else set()
        drawn = chips.evaluate_all("""cs => cs.map(c => ({
            text: c.querySelector('.ab-route-text').textContent, title: c.title,
            hit: c.classList.contains('ab-route-hit'), dim: c.classList.contains('ab-route-dim'),
            inner: c.querySelector('.ab-route-bands').getBoundingClientRect().width,
            bands: [...c.querySelectorAll('.ab-route-band')].map(b => ({expert: Number(b.dataset.expert),
              width: Number(b.dataset.width), color: getComputedStyle(b).backgroundColor,
              striped: b.classList.contains('ab-route-striped'), px: b.getBoundingClientRect().width}))}))""")
        assert len(drawn) == T, f"{what}: {len(drawn)} tokens drawn for {T} tokens"
        for t, chip in enumerate(drawn):
            where = f"{what}: layer {layer}, {show}, token {t}"
            expected = list(zip(c[t][:top], band_widths(u[t], top)))
            bands = [(b["expert"], b["width"]) for b in chip["bands"]]
            assert bands == expected, f"{where}: bands (expert, width %) {bands}, Python gives {expected}"
            for b in chip["bands"]:
                e = b["expert"]
                assert b["color"] == css_rgb(EXPERT_COLORS[e]) and b["striped"] == EXPERT_STRIPED[e], (
                    f"{where}: expert {e}'s band is {b['color']} (striped: {b['striped']}), not {EXPERT_COLORS[e]}")
                assert abs(b["px"] - b["width"] / 100 * chip["inner"]) < 1.0, (
                    f"{where}: expert {e}'s band is {b['px']:.1f} px of {chip['inner']:.1f}, not {b['width']:.2f}%")
            assert (chip["hit"], chip["dim"]) == (expert >= 0 and t in hit, expert >= 0 and t not in hit), (
                f"{where}: highlighted {chip['hit']}, dimmed {chip['dim']}; expert {expert} has tokens {sorted(hit)}")
            assert chip["title"] == describe_token(tokens[t], t, c[t], u[t], layer), f"{where}: tooltip {chip['title']!r}"
        rows = root.locator(".ab-route-expert").evaluate_all("""rs => rs.map(r => {
            const bar = r.querySelector('.ab-route-bar'), track = r.querySelector('.ab-route-track');
            return {count: Number(bar.dataset.count), width: Number(bar.dataset.width),
              share: r.querySelector('.ab-route-share').textContent, muted: r.classList.contains('ab-route-muted'),
              px: bar.getBoundingClientRect().width, track: track.getBoundingClientRect().width,
              color: getComputedStyle(bar).backgroundColor}; })""")
        counts = expert_counts(c, experts, top)
        assert [r["count"] for r in rows] == counts, f"{what}: loads {[r['count'] for r in rows]}, Python gives {counts}"
        assert [r["width"] for r in rows] == [100 * n / T for n in counts], f"{what}: bar widths {[r['width'] for r in rows]}"
        assert [r["share"] for r in rows] == [format_share(n, T) for n in counts], f"{what}: shares {[r['share'] for r in rows]}"
        assert [r["muted"] for r in rows] == [expert >= 0 and e != expert for e in range(experts)], f"{what}: muted rows"
        for e, r in enumerate(rows):
            assert abs(r["px"] - r["width"] / 100 * r["track"]) < 1.0 and r["color"] == css_rgb(EXPERT_COLORS[e]), (
                f"{what}: expert {e}'s load bar is {r['px']:.1f} px of {r['track']:.1f} in {r['color']}")
        text = readout_text(tokens, c, u, layer, experts, show, expert, token)
        expect(readout, f"{what}: the readout").to_have_text(text, timeout=5_000)

    # As stored.
    texts = chips.evaluate_all("cs => cs.map(c => c.querySelector('.ab-route-text').textContent)")
    assert texts == [display_token(t) for t in tokens], f"the tokens show {texts}, the tokens are {tokens}"
    assert (layer_buttons.count(), legend.count()) == (layers, experts), (
        f"{layer_buttons.count()} layer buttons and {legend.count()} experts for a routing of {layers} x {experts}")
    disabled = show_buttons.evaluate_all("bs => bs.map(b => b.disabled)")
    assert disabled == [False, top_k < 2], f"the top-1/top-2 buttons' disabled flags are {disabled} with top_k={top_k}"
    away.hover()
    view = (state["layer"], state["show"], state["expert"])
    agrees_with_python("as stored", view)

    # Another layer.
    if layers > 1:
        other = layers - 1 if view[0] != layers - 1 else 0
        layer_buttons.nth(other).click()
        expect(layer_buttons.nth(other), f"layer button {other} was not pressed").to_have_attribute("aria-pressed", "true")
        view = (other, view[1], view[2])
        agrees_with_python(f"after choosing layer {other}", view)

    # The other display, then back; each time with the bands and the loads of the new display.
    if top_k == 2:
        for show in (SHOW[1] if view[1] == SHOW[0] else SHOW[0], view[1]):
            show_buttons.nth(SHOW.index(show)).click()
            expect(show_buttons.nth(SHOW.index(show)), f"{show} was not pressed").to_have_attribute("aria-pressed", "true")
            view = (view[0], show, view[2])
            agrees_with_python(f"after choosing {show}", view)
            if show != SHOW[1]:
                continue
            for t in range(T):  # top-2: two bands, whose widths sum to the token's
                widths = band_widths(weights[view[0]][t], 2)
                assert abs(sum(widths) - 100) < 1e-9, f"token {t}: band widths {widths}"
    else:
        show_buttons.nth(1).click(force=True)  # disabled: nothing changes
        agrees_with_python("after clicking the disabled top-2 button", view)

    # Highlight the expert with the most tokens in the shown layer, clear it, highlight, Escape.
    counts = expert_counts(choices[view[0]], experts, top_of(view[1]))
    busiest = max(range(experts), key=lambda e: (counts[e], -e))
    for _ in range(3 if view[2] != busiest else 2):  # a click highlights the expert, the next clears it
        legend.nth(busiest).click()
        away.hover()
        view = (view[0], view[1], -1 if view[2] == busiest else busiest)
        agrees_with_python(f"after clicking expert {busiest} (highlight {view[2]})", view)
        dimmed = root.locator(".ab-route-tok.ab-route-dim").count()
        assert dimmed == (T - counts[busiest] if view[2] >= 0 else 0), f"{dimmed} tokens dimmed"
    if layers > 1:  # the highlight follows the layer
        other = (view[0] + 1) % layers
        layer_buttons.nth(other).click()
        view = (other, view[1], view[2])
        agrees_with_python(f"expert {busiest} highlighted, layer {other}", view)
    legend.nth(busiest).press("Escape")
    view = (view[0], view[1], -1)
    agrees_with_python("after Escape", view)

    # Hover a token, then leave: the readout describes it, then the layer again.
    for t in sorted({0, T // 2, T - 1}):
        chips.nth(t).hover()
        expect(readout, f"hovering token {t}").to_have_attribute("data-token", str(t), timeout=5_000)
        agrees_with_python(f"hovering token {t}", view, token=t)
    away.hover()
    expect(readout, "the pointer left the tokens").to_have_attribute("data-token", "", timeout=5_000)
    agrees_with_python("after the pointer left", view)

    # Focus a token from the keyboard, and move with the arrow keys.
    chips.nth(0).focus()
    agrees_with_python("token 0 focused", view, token=0)
    if T > 1:
        chips.nth(0).press("ArrowRight")
        expect(chips.nth(1), "ArrowRight did not move the focus").to_be_focused()
        agrees_with_python("token 1 focused", view, token=1)
    layer_buttons.nth(view[0]).focus()  # the focus leaves the tokens
    agrees_with_python("after the focus left", view)


# -------------------------------------------------------- Selective memory (SelectiveMemory)
@widget_check(".ab-select")
def check_selective_memory(page: Page, root: Locator, state: dict) -> None:
    """Clicks on tokens (the query), the arrow keys and hovering (the token described), the
    selective / time-invariant switch, the Delta-scale slider and the state-dimension menu: every
    token's survival, bar and marks, the step sizes, the survival chart, the memory horizon and the
    text agree with the Python twins in ``companion.widgets.selective_memory`` on the stored state."""
    from companion.widgets import display_token
    from companion.widgets.selective_memory import (SLIDER_MAX, SLIDER_MIN, THRESHOLD, bar_height, memory_horizon,
                                                    scale_from_slider, step_sizes, summary_text, survival,
                                                    token_text)

    tokens, gates, rates = state["tokens"], state["gates"], state["decay_rates"]
    T = len(tokens)
    chips, modes = root.locator(".ab-select-tok"), root.locator(".ab-select-mode")
    menu, slider = root.locator(".ab-select-dimension"), root.locator(".ab-select-scale")
    summary, detail = root.locator(".ab-select-summary"), root.locator(".ab-select-detail")
    away = root.locator(".ab-select-about")  # where the pointer rests when no token is hovered

    def close(a: float, b: float) -> bool:  # the same sums; exp and log10 may differ in the last bit
        return abs(a - b) <= 1e-12 * max(1.0, abs(a), abs(b))

    def shown_view() -> tuple[bool, float, int, int]:
        """(selective, delta_scale, query, dimension) as the controls show them."""
        pressed = modes.evaluate_all("bs => bs.map(b => [b.dataset.mode, b.getAttribute('aria-pressed')])")
        on = [mode for mode, flag in pressed if flag == "true"]
        assert len(on) == 1, f"mode buttons pressed: {pressed}"
        queries = [j for j, flag in enumerate(chips.evaluate_all("cs => cs.map(c => c.getAttribute('aria-pressed'))"))
                   if flag == "true"]
        assert len(queries) == 1, f"tokens marked as the query: {queries}"
        scale = float(root.locator(".ab-select-scale-value").get_attribute("data-value"))
        return on[0] == "selective", scale, queries[0], int(menu.input_value())

    def agrees_with_python(what: str, view: tuple[bool, float, int, int], focus: int | None = None) -> None:
        shown = shown_view()
        assert shown == view, f"{what}: the widget shows (selective, scale, query, dimension) = {shown}, expected {view}"
        selective, scale, query, dimension = view
        expect(detail, f"{what}: the token described").to_have_attribute(
            "data-token", "" if focus is None else str(focus), timeout=5_000)
        deltas = step_sizes(gates, scale, selective)
        kept = survival(deltas, rates, query, dimension)
        horizon = memory_horizon(deltas, rates, query, dimension)
        drawn = chips.evaluate_all("""cs => cs.map(c => ({text: c.querySelector('.ab-select-text').textContent,
            survival: c.dataset.survival, height: Number(c.dataset.height), delta: Number(c.dataset.delta),
            classes: [...c.classList], title: c.title,
            fill: c.querySelector('.ab-select-fill').getBoundingClientRect().height,
            bar: c.querySelector('.ab-select-bar').getBoundingClientRect().height}))""")
        assert len(drawn) == T, f"{what}: {len(drawn)} tokens drawn for {T} tokens"
        for j, chip in enumerate(drawn):
            where = f"{what}: token {j} (query {query})"
            assert chip["text"] == display_token(tokens[j]), f"{where}: shows {chip['text']!r}"
            assert close(chip["delta"], deltas[j]), f"{where}: step {chip['delta']}, Python gives {deltas[j]}"
            marks = {c.removeprefix("ab-select-") for c in chip["classes"]} - {"tok"}
            expected = {"query"} if j == query else set()
            if j > query:
                expected.add("future")
                assert chip["survival"] == "" and chip["height"] == 0, f"{where}: after the query, but drawn as kept"
            else:
                assert close(float(chip["survival"]), kept[j]), f"{where}: keeps {chip['survival']}, Python gives {kept[j]}"
                assert close(chip["height"], bar_height(kept[j])), f"{where}: bar {chip['height']}%, not {bar_height(kept[j])}%"
                if kept[j] < THRESHOLD:
                    expected.add("forgotten")
            if horizon is not None and j == query - horizon:
                expected.add("horizon")
            if j == focus:
                expected.add("focus")
            assert marks == expected, f"{where}: marked {sorted(marks)}, expected {sorted(expected)}"
            assert abs(chip["fill"] - chip["height"] / 100 * chip["bar"]) < 1.0, (
                f"{where}: the bar is filled {chip['fill']:.1f} px of {chip['bar']:.1f}, not {chip['height']:.2f}%")
            text = token_text(tokens, gates, rates, scale, selective, query, dimension, j)
            assert chip["title"] == text, f"{where}: tooltip {chip['title']!r}, Python gives {text!r}"
        bars = root.locator(".ab-select-delta").evaluate_all("rs => rs.map(r => Number(r.dataset.value))")
        assert len(bars) == T and all(close(a, b) for a, b in zip(bars, deltas)), f"{what}: step sizes {bars}, Python {deltas}"
        eroding = root.locator(".ab-select-delta.ab-select-eroding").evaluate_all("rs => rs.map(r => Number(r.dataset.index))")
        expected_eroding = list(range(focus + 1, query + 1)) if focus is not None and focus < query else []
        assert eroding == expected_eroding, f"{what}: steps marked as eroding token {focus}: {eroding}"
        points = root.locator(".ab-select-point").evaluate_all("ps => ps.map(p => Number(p.dataset.value))")
        assert len(points) == query + 1 and all(close(a, b) for a, b in zip(points, kept)), (
            f"{what}: the survival chart has {points}, Python gives {kept}")
        line = root.locator(".ab-select-horizon-line")
        assert line.count() == (horizon is not None), f"{what}: {line.count()} horizon lines for horizon {horizon}"
        assert summary.get_attribute("data-horizon") == ("" if horizon is None else str(horizon)), (
            f"{what}: the horizon is {summary.get_attribute('data-horizon')!r}, Python gives {horizon}")
        text = summary_text(tokens, gates, rates, scale, selective, query, dimension)
        assert summary.text_content() == text, f"{what}: the summary says {summary.text_content()!r}, Python {text!r}"
        text = token_text(tokens, gates, rates, scale, selective, query, dimension, focus)
        assert detail.text_content() == text, f"{what}: the detail says {detail.text_content()!r}, Python {text!r}"

    # As stored.
    assert menu.locator("option").count() == len(rates) + 1, f"{menu.locator('option').count()} dimension options"
    away.hover()
    view = (state["selective"], state["delta_scale"], state["query"], state["dimension"])
    agrees_with_python("as stored", view)

    # Click a token: it becomes the query (and is described, as the token the pointer is on).
    query = T // 2 if T // 2 != view[2] else T // 2 - 1
    chips.nth(query).click()
    view = (view[0], view[1], query, view[3])
    agrees_with_python(f"after clicking token {query}", view, focus=query)
    if query >= 1:  # the arrow keys move the keyboard's focus; hovering wins while the pointer stays
        chips.nth(query).press("ArrowLeft")
        agrees_with_python("after ArrowLeft", view, focus=query - 1)
        chips.nth(0).hover()
        agrees_with_python("hovering token 0", view, focus=0)
        away.hover()
        agrees_with_python("the pointer left: the focused token again", view, focus=query - 1)
    later = T - 1 if query != T - 1 else 0
    chips.nth(later).hover()
    agrees_with_python(f"hovering token {later}", view, focus=later)

    # The other mode, then the Delta scale and the dimensions in it, then the stored mode again.
    stored_mode = view[0]
    for selective in (not stored_mode, stored_mode):
        modes.nth(0 if selective else 1).click()  # the focus leaves the tokens
        away.hover()
        view = (selective, view[1], view[2], view[3])
        agrees_with_python("after choosing " + ("selective" if selective else "time-invariant"), view)
        if selective != stored_mode:
            for value in (SLIDER_MIN + 0.5, SLIDER_MAX - 0.25):
                slider.fill(f"{value:g}")
                view = (view[0], scale_from_slider(value), view[2], view[3])
                agrees_with_python(f"slider at {value:g}", view)
            for dimension in sorted({len(rates) - 1, 0, -1} - {view[3]}):
                menu.select_option(str(dimension))
                view = (view[0], view[1], view[2], dimension)
                agrees_with_python(f"dimension {dimension}", view)


# ----------------------------------------------------- The patchify explorer (PatchifyExplorer)
# Reads back what a canvas drew: the colour at the centre of every image pixel (scaled by
# data-scale), or every pixel of a small canvas (a tile, the token's values), as [r, g, b, ...].
READ_CANVAS_JS = """c => {
  const s = Number(c.dataset.scale || 1), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const out = [];
  for (let y = Math.floor(s / 2); y < c.height; y += s) {
    for (let x = Math.floor(s / 2); x < c.width; x += s) {
      const i = 4 * (y * c.width + x);
      out.push(d[i], d[i + 1], d[i + 2]);
    }
  }
  return out;
}"""


@widget_check(".ab-patch")
def check_patchify_explorer(page: Page, root: Locator, state: dict) -> None:
    """The patch-size buttons, the CLS checkbox, hovering over the image and the tiles, and the arrow
    keys on both: the image's pixels, the grid, the readout, the chart, the tiles (their number, order
    and pixels), the highlighted patch, its text and its values agree with the Python twins in
    ``companion.widgets.patchify_explorer`` on the stored state."""
    from companion.widgets.patchify_explorer import (attention_entries, labels_shown, patch_bytes, patch_grid,
                                                     patch_text, patchify, readout, sequence_length, to_byte)

    pixels, h, w, c, sizes = state["pixels"], state["height"], state["width"], state["channels"], state["patch_sizes"]
    buttons, cls_box = root.locator(".ab-patch-size"), root.locator(".ab-patch-cls")
    image, overlay = root.locator(".ab-patch-pixels"), root.locator(".ab-patch-overlay")
    tiles, detail = root.locator(".ab-patch-tile"), root.locator(".ab-patch-detail")
    vector = root.locator(".ab-patch-vector")
    away = root.locator(".ab-patch-about")  # where the pointer rests when no patch is hovered

    def shown_view() -> tuple[int, bool]:
        """(patch_size, cls_token) as the controls show them."""
        flags = buttons.evaluate_all("bs => bs.map(b => [Number(b.dataset.size), b.getAttribute('aria-pressed')])")
        assert [p for p, _ in flags] == sizes, f"the patch-size buttons are {[p for p, _ in flags]}, not {sizes}"
        on = [p for p, flag in flags if flag == "true"]
        assert len(on) == 1, f"patch-size buttons pressed: {on}"
        return on[0], cls_box.is_checked()

    def agrees_with_python(what: str, view: tuple[int, bool], focus: int | None = None) -> None:
        shown = shown_view()
        assert shown == view, f"{what}: the widget shows (patch_size, cls_token) = {shown}, expected {view}"
        p, cls = view
        expect(detail, f"{what}: the patch described").to_have_attribute(
            "data-patch", "" if focus is None else str(focus), timeout=5_000)
        rows, cols = patch_grid(h, w, p)
        expected = readout(h, w, c, p, cls, sizes)
        values = {key: root.locator(f".ab-patch-val-{key}").text_content() for key in expected}
        assert values == expected, f"{what}: the readout shows {values}, Python gives {expected}"
        grid = overlay.evaluate("o => [o.dataset.rows, o.dataset.cols, o.dataset.labels, o.dataset.focus]")
        assert grid == [str(rows), str(cols), str(labels_shown(h, w, p)).lower(), "" if focus is None else str(focus)], (
            f"{what}: the image's grid (rows, cols, labels, focus) is {grid}")
        drawn = tiles.evaluate_all("""ts => ts.map(t => [Number(t.dataset.index), Number(t.dataset.position),
            t.querySelector('.ab-patch-tile-label').textContent, t.classList.contains('ab-patch-focus'), t.title])""")
        order = ([-1] if cls else []) + list(range(rows * cols))
        assert [d[0] for d in drawn] == order, f"{what}: the tiles are patches {[d[0] for d in drawn][:12]}..., not {order[:12]}..."
        for position, (index, at, label, marked, title) in enumerate(drawn):
            where = f"{what}: tile {position} (patch {index})"
            assert at == position and label == str(position), f"{where}: numbered {label!r}"
            assert marked == (index == focus), f"{where}: highlighted {marked}, the focus is {focus}"
            text = patch_text(h, w, c, p, cls, index)
            assert title == text, f"{where}: tooltip {title!r}, Python gives {text!r}"
        for index in sorted({0, rows * cols - 1} | ({focus} if focus is not None and focus >= 0 else set())):
            got = tiles.nth(index + cls).locator("canvas").evaluate(READ_CANVAS_JS)
            assert got == patch_bytes(pixels, h, w, c, p, index), f"{what}: tile of patch {index} has other colours"
        points = root.locator(".ab-patch-point-n").evaluate_all("ps => ps.map(q => [Number(q.dataset.size), Number(q.dataset.value)])")
        assert points == [[q, sequence_length(h, w, q, cls)] for q in sizes], f"{what}: the chart's N are {points}"
        points = root.locator(".ab-patch-point-scores").evaluate_all(
            "ps => ps.map(q => [Number(q.dataset.size), Number(q.dataset.value)])")
        assert points == [[q, attention_entries(h, w, q, cls)] for q in sizes], f"{what}: the chart's N^2 are {points}"
        current = root.locator(".ab-patch-point-n.ab-patch-point-current").get_attribute("data-size")
        assert current == str(p), f"{what}: the chart marks p = {current}"
        text = patch_text(h, w, c, p, cls, focus)
        assert detail.text_content() == text, f"{what}: the detail says {detail.text_content()!r}, Python {text!r}"
        if focus is None or focus < 0:
            assert vector.is_hidden(), f"{what}: a token's values are shown for no patch"
        else:
            got = vector.evaluate(READ_CANVAS_JS)[::3]
            want = [to_byte(v) for v in patchify(pixels, h, w, c, p)[focus]]
            assert got == want, f"{what}: the values drawn for patch {focus} are not its values"

    def hover_patch(p: int, index: int) -> None:
        """Put the pointer on the centre of patch ``index`` of the image."""
        cols = w // p
        box = image.bounding_box()
        row, col = divmod(index, cols)
        image.hover(position={"x": (col + 0.5) * p / w * box["width"], "y": (row + 0.5) * p / h * box["height"]})

    # As stored: the image's pixels, then the controls.
    got = image.evaluate(READ_CANVAS_JS)
    want = [to_byte(pixels[ch * h * w + i]) for i in range(h * w) for ch in ((0, 0, 0) if c == 1 else (0, 1, 2))]
    assert got == want, "the image is not drawn with the stored pixels"
    away.hover()
    view = (state["patch_size"], state["cls_token"])
    agrees_with_python("as stored", view)

    # Hover over tiles, and over patches of the image.
    rows, cols = patch_grid(h, w, view[0])
    n = rows * cols
    for index in sorted({0, n // 2, n - 1}):
        tiles.nth(index + view[1]).hover()
        agrees_with_python(f"hovering the tile of patch {index}", view, focus=index)
        hover_patch(view[0], index)
        agrees_with_python(f"hovering patch {index} of the image", view, focus=index)
    away.hover()
    agrees_with_python("the pointer left", view)

    # Another patch size, the CLS token switched, and the keyboard on the image and on the tiles.
    other = sizes[-1] if view[0] != sizes[-1] else sizes[0]
    for p in ([other, view[0]] if other != view[0] else [view[0]]):
        buttons.nth(sizes.index(p)).click()
        away.hover()
        view = (p, view[1])
        agrees_with_python(f"after choosing p = {p}", view)
        cls_box.click()
        view = (p, not view[1])
        agrees_with_python(f"p = {p}, after switching the CLS token {'on' if view[1] else 'off'}", view)
        rows, cols = patch_grid(h, w, p)
        root.locator(".ab-patch-image").focus()
        agrees_with_python(f"p = {p}, the image focused", view, focus=0)
        at = 0
        for key, to in (("ArrowRight", 1 if cols > 1 else 0), ("ArrowDown", cols if rows > 1 else 0), ("End", None)):
            at = rows * cols - 1 if to is None else at + to
            root.locator(".ab-patch-image").press(key)
            agrees_with_python(f"p = {p}, after {key} on the image", view, focus=at)
        tiles.nth(0).focus()
        agrees_with_python(f"p = {p}, the first tile focused", view, focus=-1 if view[1] else 0)
        order = [-1] * view[1] + list(range(rows * cols))
        if len(order) > 1:
            tiles.nth(0).press("ArrowRight")
            expect(tiles.nth(1), "ArrowRight did not move the focus").to_be_focused()
            agrees_with_python(f"p = {p}, after ArrowRight on the tiles", view, focus=order[1])
        buttons.nth(sizes.index(p)).focus()  # the focus leaves the tiles
        agrees_with_python(f"p = {p}, after the focus left", view)


# ----------------------------------------------------------------------- The course map (CourseMap)
@widget_check(".ab-map")
def check_course_map(page: Page, root: Locator, state: dict) -> None:
    """Hovering over chapters, clicking one, the keyboard (arrows, Enter, Space, Escape) and the panel's
    buttons: the boxes, the arrows, which of them light up, the summary and the panel (question, key
    ideas, what the chapter builds on and leads to, its reading path and link) agree with the Python
    twins in ``companion.widgets.course_map`` on the stored state."""
    from companion.widgets.course_map import (arrow_points, chapter_link, dependents, drawn_edges, edge_kinds,
                                              edge_path, map_layout, node_label, prerequisites, summary_text)

    chapters, link_base = state["chapters"], state["link_base"]
    graph = [c["builds_on"] for c in chapters]
    count, layout, edges = len(chapters), map_layout(chapters), drawn_edges(graph)
    nodes, links = root.locator(".ab-map-node"), root.locator(".ab-map-link")
    summary, detail = root.locator(".ab-map-summary"), root.locator(".ab-map-detail")
    away = root.locator(".ab-map-about")  # where the pointer rests, and a click that takes the focus away

    # The drawing: every box and arrow where Python puts it.
    drawn = nodes.evaluate_all("""gs => gs.map(g => { const r = g.querySelector('rect');
        return [Number(g.dataset.chapter), ...['x', 'y', 'width', 'height'].map(a => Number(r.getAttribute(a))),
                [...g.querySelectorAll('.ab-map-name tspan')].map(t => t.textContent),
                g.querySelector('.ab-map-number').textContent, g.querySelector('title').textContent,
                g.getAttribute('tabindex')]; })""")
    expected = [[n + 1, node["x"], node["y"], layout["node_width"], layout["node_height"], node["lines"], str(n + 1),
                 node_label(chapters, n + 1), "0"] for n, node in enumerate(layout["nodes"])]
    assert drawn == expected, f"the boxes drawn are {drawn}, Python puts them at {expected}"
    arrows = links.evaluate_all("""ls => ls.map(l => [Number(l.dataset.from), Number(l.dataset.to),
        l.querySelector('path').getAttribute('d'), l.querySelector('polygon').getAttribute('points')])""")
    expected = [[a, b, edge_path(layout, a, b), arrow_points(layout, a, b)] for a, b in edges]
    assert arrows == expected, f"the arrows drawn are {arrows}, Python draws {expected}"
    size = root.locator(".ab-map-graph").bounding_box()
    assert size and size["width"] > 100 and size["height"] > 20, f"the map is drawn {size}"

    def agrees_with_python(what: str, selected: int | None, focus: int | None = None) -> None:
        shown = focus if focus is not None else selected
        expect(summary, f"{what}: the chapter summarised").to_have_attribute(
            "data-chapter", "" if shown is None else str(shown), timeout=5_000)
        expect(detail, f"{what}: the chapter in the panel").to_have_attribute(
            "data-chapter", "" if selected is None else str(selected), timeout=5_000)
        flags = nodes.evaluate_all("""gs => gs.map(g => [g.getAttribute('aria-pressed'),
            ...['selected', 'focus', 'before', 'after'].map(c => g.classList.contains('ab-map-' + c))])""")
        before = set(prerequisites(graph, shown)) if shown is not None else set()
        after = set(dependents(graph, shown)) if shown is not None else set()
        expected = [[str(n == selected).lower(), n == selected, n == focus, n in before, n in after]
                    for n in range(1, count + 1)]
        assert flags == expected, (f"{what}: the boxes are marked (pressed, selected, focus, before, after) "
                                   f"{flags}, expected {expected}")
        kinds = links.evaluate_all("""ls => ls.map(l => l.classList.contains('ab-map-in') ? 'in'
            : l.classList.contains('ab-map-out') ? 'out' : '')""")
        assert kinds == edge_kinds(graph, shown), f"{what}: the arrows lit are {kinds}, Python {edge_kinds(graph, shown)}"
        text = summary_text(chapters, shown)
        assert summary.text_content() == text, f"{what}: the summary says {summary.text_content()!r}, Python {text!r}"
        if selected is None:
            assert detail.is_hidden(), f"{what}: the panel shows a chapter with none selected"
            return
        c = chapters[selected - 1]
        panel = detail.evaluate("""d => ({
            title: d.querySelector('.ab-map-detail-title').textContent,
            question: d.querySelector('.ab-map-question').textContent,
            ideas: [...d.querySelectorAll('.ab-map-ideas li')].map(li => li.textContent),
            buildsOn: [...d.querySelectorAll('.ab-map-builds-on .ab-map-goto')].map(b => Number(b.dataset.chapter)),
            leadsTo: [...d.querySelectorAll('.ab-map-leads-to .ab-map-goto')].map(b => Number(b.dataset.chapter)),
            path: d.querySelector('.ab-map-path span:last-child').textContent,
            href: d.querySelector('.ab-map-open').getAttribute('href')})""")
        want = {"title": f"Chapter {selected} \u00b7 {c['title']}", "question": c["question"], "ideas": c["ideas"],
                "buildsOn": prerequisites(graph, selected, direct=True),
                "leadsTo": dependents(graph, selected, direct=True),
                "path": " \u2192 ".join(str(n) for n in [*prerequisites(graph, selected), selected]),
                "href": chapter_link(link_base, c["page"])}
        assert panel == want, f"{what}: the panel shows {panel}, Python gives {want}"

    # As stored.
    away.hover()
    selected = state["selected"]
    agrees_with_python("as stored", selected)

    # Hover over chapters: they light up, the selection stays.
    for n in sorted({1, (count + 1) // 2, count}):
        nodes.nth(n - 1).hover()
        agrees_with_python(f"hovering chapter {n}", selected, focus=n)
    away.hover()
    agrees_with_python("the pointer left", selected)

    # Click a chapter: it is selected (and has the keyboard focus).
    clicked = count // 2 + 1 if count // 2 + 1 != selected else 1
    nodes.nth(clicked - 1).click()
    selected = clicked
    agrees_with_python(f"after clicking chapter {clicked}", selected, focus=clicked)
    away.hover()
    agrees_with_python("the pointer left: the focused chapter again", selected, focus=clicked)

    # The keyboard: the arrows move the focus, Enter and Space select, Escape clears the selection.
    at = clicked
    for key, to in (("ArrowRight", at + 1), ("End", count), ("ArrowLeft", count - 1), ("Home", 1)):
        if 1 <= to <= count:
            nodes.nth(at - 1).press(key)
            at = to
            expect(nodes.nth(at - 1), f"{key} did not move the focus to chapter {at}").to_be_focused()
            agrees_with_python(f"after {key}", selected, focus=at)
    nodes.nth(at - 1).press("Enter")
    selected = at
    agrees_with_python(f"after Enter on chapter {at}", selected, focus=at)
    if count > 1:
        nodes.nth(at - 1).press("ArrowRight")
        at += 1
        nodes.nth(at - 1).press(" ")
        selected = at
        agrees_with_python(f"after Space on chapter {at}", selected, focus=at)
    nodes.nth(at - 1).press("Escape")
    selected = None
    agrees_with_python("after Escape", selected, focus=at)

    # The panel's buttons select the chapters they name (and take the focus to their boxes).
    target = next((n for n in range(1, count + 1) if prerequisites(graph, n, True) or dependents(graph, n, True)), 1)
    nodes.nth(target - 1).press("Enter")
    selected = target
    agrees_with_python(f"after Enter on chapter {target}", selected, focus=target)
    buttons = detail.locator(".ab-map-goto")
    if buttons.count():
        to = int(buttons.nth(buttons.count() - 1).get_attribute("data-chapter"))
        buttons.nth(buttons.count() - 1).click()
        selected = to
        expect(nodes.nth(to - 1), "the panel's button did not take the focus to its chapter").to_be_focused()
        agrees_with_python(f"after the panel's button for chapter {to}", selected, focus=to)
    away.click()  # the focus leaves the map
    agrees_with_python("after the focus left", selected)
