"""Run one widget's JavaScript without a notebook: its pure functions in Node, its drawing in headless
Chromium with a stand-in model and a page.

Used by the widget tests that check a widget's JavaScript against its Python twins and click through
the widget before any chapter shows it (the built site's checks live in tests/site_helpers.py).
:func:`run_js` runs the pure-function block of a widget's ESM in Node (the ``node`` fixture of
tests/conftest.py skips without it); ``page`` is a module-scoped Playwright page (skipped without
Chromium or Playwright); :func:`mount_widget` renders an anywidget ESM with a stand-in for the widget
model (get / set / on / off / save_changes; every saved state is kept in ``window.saved``), and
:func:`stored_state` gives the state a notebook stores for a widget.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

# A stand-in for the widget model (get / set / on / off / save_changes), and render() of the ESM.
MOUNT_JS = """async ([source, css, state]) => {
  const style = document.createElement("style");
  style.textContent = css;
  document.head.appendChild(style);
  const listeners = {};
  window.saved = [];
  window.model = {
    get: (name) => state[name],
    set: (name, value) => { state[name] = value; for (const f of listeners["change:" + name] || []) f(); },
    on: (event, f) => { (listeners[event] = listeners[event] || []).push(f); },
    off: (event, f) => { listeners[event] = (listeners[event] || []).filter((g) => g !== f); },
    save_changes: () => { window.saved.push(JSON.parse(JSON.stringify(state))); },
  };
  const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
  const widget = (await import(url)).default;
  const el = document.createElement("div");
  el.id = "root";
  document.body.appendChild(el);
  widget.render({ model: window.model, el });
}"""


@pytest.fixture(scope="module")
def page():
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM}: cannot draw the widget")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        yield browser.new_page()
        browser.close()


def mount_widget(page, source: str, css: str, state: dict, selector: str) -> list[str]:
    """Render the ESM ``source`` with ``css`` and ``state`` on a fresh page; wait for ``selector`` under
    ``#root``; return the list that page errors and console errors are collected into."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.set_content("<!doctype html><html><body></body></html>")
    page.evaluate(MOUNT_JS, [source, css, state])
    page.wait_for_selector(f"#root {selector}")
    return errors


def stored_state(widget, names) -> dict:
    """The widget's state as a notebook stores it: its synced traits ``names`` (in their encoded form)."""
    state = widget.get_state()
    return {name: state[name] for name in names}


# ------------------------------------------------------------------- the JavaScript's numbers in Node
def js_pure_block(js_path: Path) -> str:
    """The widget's pure functions: the lines of ``js_path`` between ``// ---- pure functions`` and
    ``// ---- end of pure functions ----``, which must touch neither the page nor the model."""
    match = re.search(r"^// ---- pure functions.*?$(.*?)^// ---- end of pure functions ----$",
                      Path(js_path).read_text(), re.M | re.S)
    assert match, f"no pure-function block in {Path(js_path).name}"
    block = match.group(1)
    assert "document" not in block and "model." not in block, "the pure block touches the page"
    return block


def run_js(node: str, js_path: Path, body: str):
    """Run ``body`` after the pure block of ``js_path`` in Node; returns what ``show(x)`` printed, as JSON."""
    script = js_pure_block(js_path) + "\nconst show = (x) => console.log(JSON.stringify(x));\n" + body
    result = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
