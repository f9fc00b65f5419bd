"""Draw one widget's JavaScript in headless Chromium without a notebook: a stand-in model and a page.

Used by the widget tests that click through a widget before any chapter shows it (the built site's
checks live in tests/site_helpers.py). ``page`` is a module-scoped Playwright page (skipped without
Chromium or Playwright); :func:`mount_widget` renders an anywidget ESM with a stand-in for the widget
model (get / set / on / off / save_changes; every saved state is kept in ``window.saved``).
"""

from __future__ import annotations

import os
import shutil

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
