"""The built site works offline, in a real browser: nothing off-site, widgets and math alive.

The module builds the book as `make book` does (book/offline/assemble.py, then `jupyter-book build
--all`), with warnings as errors, into a temporary folder. It serves the result on 127.0.0.1 and
opens every page in headless Chromium, with every request to any other host aborted and recorded.
The tests then prove, for every page of the site:

* nothing is requested off-site: no CDN script, stylesheet, font or MathJax component (the URLs are
  listed when something is);
* no console error and no uncaught page error;
* no on-site request fails: no 404 for a file the site forgot to ship, and every font the page
  declares loads (html-manager's Font Awesome, MathJax's fonts, the theme's);
* every widget view in the page (`<script type="application/vnd.jupyter.widget-view+json">`) is
  rendered by html-manager. The view is drawn into the `div.widget-subarea` that html-manager
  inserts just before the script, and it is not html-manager's error view;
* MathJax typeset every math element (`.math` holds an `mjx-container`, no `mjx-merror`);
* every anywidget responds to the reader: a check registered in tests/site_helpers.py for its root
  element moves its inputs and compares what it shows with its Python twin. For "The cost of a
  sequence", that twin is `companion.widgets.sequence_costs`. An anywidget with no check fails.

Chromium comes from $CHROMIUM (default /usr/bin/chromium; Debian's package).
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, sync_playwright

from site_helpers import WIDGET_CHECKS

pytestmark = pytest.mark.site

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RENDER_TIMEOUT_MS = 30_000  # widgets and MathJax, per page
CHAPTER_1 = "notebooks/01_sequence_problem.html"
CHAPTER_2 = "notebooks/02_attention.html"
CHAPTER_3 = "notebooks/03_masking.html"
CHAPTER_4 = "notebooks/04_context_extension.html"
CHAPTER_5 = "notebooks/05_efficient_attention.html"
CHAPTER_6 = "notebooks/06_mixture_of_experts.html"
CHAPTER_7 = "notebooks/07_state_space_models.html"
# Folders of the built site that hold assets, not pages (the theme copies Jinja macro files,
# *.html, into _static).
NOT_PAGES = {"_static", "_sources", "_images", "_vendor"}

VIEW_SCRIPT = 'script[type="application/vnd.jupyter.widget-view+json"]'

# Every widget view of the page: its model, and whether html-manager has drawn it.
WIDGET_VIEWS_JS = """() => {
  const state = {};
  for (const s of document.querySelectorAll('script[type="application/vnd.jupyter.widget-state+json"]')) {
    Object.assign(state, JSON.parse(s.textContent).state);
  }
  return [...document.querySelectorAll('%s')].map((script, index) => {
    const view = JSON.parse(script.textContent);
    const model = state[view.model_id] || {};
    const area = script.previousElementSibling;
    const drawn = area && area.classList.contains('widget-subarea') ? area.firstElementChild : null;
    const error = area && area.querySelector('.jupyter-widgets-error-widget');
    return {
      index, model_id: view.model_id, module: model.model_module || null, name: model.model_name || null,
      state: model.state || null,
      rendered: !!drawn && !error && (drawn.childElementCount > 0 || drawn.textContent.trim() !== ''),
      error: error ? error.textContent.trim().slice(0, 300) : null,
    };
  });
}""" % VIEW_SCRIPT

WIDGETS_SETTLED_JS = """() => [...document.querySelectorAll('%s')].every(script => {
  const area = script.previousElementSibling;
  if (!area || !area.classList.contains('widget-subarea')) return false;
  if (area.querySelector('.jupyter-widgets-error-widget')) return true;
  const drawn = area.firstElementChild;
  return !!drawn && (drawn.childElementCount > 0 || drawn.textContent.trim() !== '');
})""" % VIEW_SCRIPT

MATH_TYPESET_JS = """() => [...document.querySelectorAll('.math')].every(m => m.querySelector('mjx-container'))"""

MATH_REPORT_JS = """() => ({
  math: document.querySelectorAll('.math').length,
  typeset: [...document.querySelectorAll('.math')].filter(m => m.querySelector('mjx-container')).length,
  errors: [...document.querySelectorAll('mjx-merror')].map(e => e.textContent),
})"""

FONTS_JS = """async () => {
  const failed = [];
  await Promise.all([...document.fonts].map(face => face.load().catch(
    error => failed.push(`${face.family} (${face.style}, ${face.weight}): ${error}`))));
  return failed;
}"""


@dataclasses.dataclass
class PageReport:
    path: str
    offsite: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)  # console errors, page errors
    local_failures: list[str] = dataclasses.field(default_factory=list)  # 4xx/5xx, failed requests, fonts
    widgets: list[dict] = dataclasses.field(default_factory=list)
    widget_problems: list[str] = dataclasses.field(default_factory=list)
    math: dict = dataclasses.field(default_factory=dict)
    checks_run: list[str] = dataclasses.field(default_factory=list)  # "selector (model id)"
    check_problems: list[str] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Build the book with warnings as errors; returns the folder of the HTML site."""
    subprocess.run([sys.executable, str(ROOT / "book" / "offline" / "assemble.py")], cwd=ROOT, check=True)
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    if not jupyter_book.exists():
        jupyter_book = Path(shutil.which("jupyter-book") or "jupyter-book")
    out = tmp_path_factory.mktemp("book")
    build = subprocess.run(
        [str(jupyter_book), "build", "--all", "-W", "--keep-going", "--path-output", str(out), "."],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    if build.returncode != 0:
        log = build.stdout + build.stderr
        warnings = [line for line in log.splitlines() if re.search(r"WARNING|ERROR|Error", line)]
        pytest.fail("the book does not build with -W:\n" + "\n".join(warnings or log.splitlines()[-40:]))
    html = out / "_build" / "html"
    assert (html / "index.html").is_file(), f"no index.html in {html}"
    return html


@pytest.fixture(scope="module")
def base_url(site):
    """Serve the site on 127.0.0.1, on a free port."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def site_pages(site: Path) -> list[str]:
    """Every .html page of the built site, relative to its root."""
    return sorted(
        path.relative_to(site).as_posix()
        for path in site.rglob("*.html")
        if path.relative_to(site).parts[0] not in NOT_PAGES
    )


@pytest.fixture(scope="module")
def reports(site, base_url) -> dict[str, PageReport]:
    """Open every page in headless Chromium, off-site requests aborted; one report per page."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium, or set CHROMIUM=/path/to/chromium")
    results: dict[str, PageReport] = {}
    start = time.monotonic()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for path in site_pages(site):
                results[path] = visit(browser, base_url, site, path)
        finally:
            browser.close()
    print(f"opened {len(results)} pages in {time.monotonic() - start:.1f} s")
    return results


# ---------------------------------------------------------------------------------- one page
def visit(browser, base_url: str, site: Path, path: str) -> PageReport:
    report = PageReport(path)
    context = browser.new_context()  # fresh: no cache, no local storage (a first visit)

    def is_local(url: str) -> bool:
        return url.startswith(base_url) or url.startswith(("data:", "blob:" + base_url.rstrip("/")))

    def route(route):
        url = route.request.url
        if is_local(url):
            route.continue_()
        else:
            report.offsite.append(url)
            route.abort("blockedbyclient")

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and report.errors.append(f"console: {m.text} ({m.location.get('url', '')})"))
    page.on("pageerror", lambda e: report.errors.append(f"page error: {e}"))
    page.on("response", lambda r: r.status >= 400 and report.local_failures.append(f"{r.status} {r.url}"))
    page.on("requestfailed", lambda r: is_local(r.url) and report.local_failures.append(f"failed ({r.failure}) {r.url}"))
    page.on("websocket", lambda ws: report.offsite.append(ws.url))
    try:
        page.goto(base_url + path, wait_until="load")
        redirect = re.search(r'http-equiv="Refresh" content="\d+;\s*url=([^"]+)"', (site / path).read_text(), re.I)
        if redirect:  # Jupyter Book's index.html: only check that it lands on an existing page
            page.wait_for_url(re.compile(re.escape(base_url + redirect.group(1).lstrip("./"))), wait_until="load")
        else:
            inspect(page, report)
        page.wait_for_load_state("networkidle")  # late requests (lazy modules, fonts) are seen too
    except PlaywrightError as error:
        report.errors.append(f"while checking the page: {error}")
    finally:
        context.close()
    return report


def inspect(page: Page, report: PageReport) -> None:
    """Wait for widgets and math, then check them, the fonts and the interactive widgets."""
    if page.locator(VIEW_SCRIPT).count():
        try:
            page.wait_for_function(WIDGETS_SETTLED_JS, timeout=RENDER_TIMEOUT_MS)
        except PlaywrightError:
            report.widget_problems.append(f"widgets not drawn within {RENDER_TIMEOUT_MS / 1000:.0f} s")
    if page.locator(".math").count():
        try:
            page.wait_for_function(MATH_TYPESET_JS, timeout=RENDER_TIMEOUT_MS)
        except PlaywrightError:
            pass  # reported below, with the counts
        report.math = page.evaluate(MATH_REPORT_JS)
    report.widgets = page.evaluate(WIDGET_VIEWS_JS)
    for view in report.widgets:
        if not view["rendered"]:
            report.widget_problems.append(
                f"view of model {view['model_id']} ({view['module']}.{view['name']}) not rendered"
                + (f": {view['error']}" if view["error"] else ""))
        elif view["module"] == "anywidget":
            run_widget_checks(page, view, report)
    report.local_failures += page.evaluate(FONTS_JS)


def run_widget_checks(page: Page, view: dict, report: PageReport) -> None:
    area = page.locator(VIEW_SCRIPT).nth(view["index"]).locator("xpath=preceding-sibling::*[1]")
    found = False
    for selector, check in WIDGET_CHECKS.items():
        roots = area.locator(selector)
        for i in range(roots.count()):
            found = True
            label = f"{selector} (model {view['model_id']})"
            report.checks_run.append(label)
            try:
                check(page, roots.nth(i), view["state"])
            except Exception as error:  # an assertion, a timeout, or a check that could not read the page
                report.check_problems.append(f"{label}: {type(error).__name__}: {error}")
    if not found:
        report.check_problems.append(
            f"anywidget {view['state'].get('_anywidget_id')} (model {view['model_id']}) has no check: "
            f"register one for its root element in tests/site_helpers.py (WIDGET_CHECKS has {sorted(WIDGET_CHECKS)})")


# ------------------------------------------------------------------------------------- tests
def problems(reports: dict[str, PageReport], field: str) -> str:
    return "\n".join(f"{path}: {item}" for path, r in reports.items() for item in getattr(r, field))


def test_every_page_was_opened(reports):
    assert CHAPTER_1 in reports and "book/intro.html" in reports, f"pages found: {sorted(reports)}"


def test_nothing_is_requested_off_site(reports):
    assert not problems(reports, "offsite"), "off-site requests (aborted):\n" + problems(reports, "offsite")


def test_no_console_or_page_errors(reports):
    assert not problems(reports, "errors"), "errors in the browser:\n" + problems(reports, "errors")


def test_no_on_site_request_fails(reports):
    assert not problems(reports, "local_failures"), "on-site failures:\n" + problems(reports, "local_failures")


def test_every_widget_renders(reports):
    assert not problems(reports, "widget_problems"), problems(reports, "widget_problems")
    assert any(v["module"] == "anywidget" for v in reports[CHAPTER_1].widgets), (
        f"no anywidget view found in {CHAPTER_1}: the test would prove nothing")


def test_math_is_typeset(reports):
    with_math = {path: r.math for path, r in reports.items() if r.math}
    assert CHAPTER_1 in with_math, f"no math found in {CHAPTER_1}: the test would prove nothing"
    bad = {path: m for path, m in with_math.items() if m["typeset"] != m["math"] or m["errors"]}
    assert not bad, f"MathJax did not typeset every math element (or reported errors): {bad}"


def test_interactive_widgets_respond(reports):
    assert not problems(reports, "check_problems"), problems(reports, "check_problems")
    for page, selector in ((CHAPTER_1, ".ab-cost "), (CHAPTER_2, ".ab-attn "), (CHAPTER_3, ".ab-mask "),
                           (CHAPTER_4, ".ab-rope "), (CHAPTER_4, ".ab-kv "),
                           (CHAPTER_5, ".ab-flash "), (CHAPTER_6, ".ab-route "),
                           (CHAPTER_7, ".ab-select ")):
        assert any(run.startswith(selector) for run in reports[page].checks_run), (
            f"the {selector.strip()} widget check did not run on {page}")
