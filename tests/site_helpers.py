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
