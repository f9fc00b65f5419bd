"""Gather the front-end files the static site serves itself: widgets, RequireJS and MathJax.

The pages of the book must load nothing from a CDN. This script fills ``_build/offline/_vendor``
(or ``--out DIR``/_vendor). ``_config.yml`` names that folder in ``html_extra_path``, so Sphinx
copies it to the root of the site as ``_vendor/``. It copies:

* ``require.js``: RequireJS (npm ``requirejs``), which embed-amd.js needs;
* ``widgets-config.js``: this folder's RequireJS configuration (paths for ``anywidget``, the
  html-manager assets folder, a local CDN fallback);
* ``@jupyter-widgets/html-manager/dist/``: ``embed-amd.js``, which renders the widget state
  stored in a page, and the Font Awesome fonts its CSS refers to;
* ``anywidget/index.js``: anywidget's AMD front end. It comes from the anywidget *pip* package
  installed beside this script's Python (``anywidget/nbextension/index.js``), the same package
  that wrote the widget state, so the two versions match;
* ``mathjax/``: MathJax 3's ``tex-chtml.js`` with the files it loads on demand (TeX extensions,
  CHTML fonts, the menu's accessibility components).

The npm packages come from ``book/offline/node_modules`` (``npm ci`` in ``book/offline``; ``make
book`` does it). The files are synchronised: a changed file is rewritten, a stale one removed. The
folder is never deleted as a whole, so a build that is reading it at the same time still finds it.
Sphinx does not recopy files on an incremental build, so build the book with ``--all``.

Usage: ``python book/offline/assemble.py [--out DIR]``.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.metadata
import importlib.util
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NODE_MODULES = HERE / "node_modules"
DEFAULT_OUT = ROOT / "_build" / "offline"

# html-manager's own assets: the bundle, and the fonts its CSS refers to (hashed file names).
HTML_MANAGER_FILES = ("embed-amd.js", "*.woff2", "*.woff", "*.ttf", "*.eot", "*.svg", "*.LICENSE.txt")
# MathJax: the combined TeX-to-CHTML component and what it loads on demand. That is the TeX
# extensions (autoload), the CHTML web fonts, and the menu's UI and accessibility parts (a11y,
# plus the speech-rule engine's maps). The other input and output formats are left out.
MATHJAX_FILES = (
    "tex-chtml.js",
    "input/tex/extensions/**/*.js",
    "output/chtml/fonts/woff-v2/*.woff",
    "ui/*.js",
    "a11y/*.js",
    "sre/**/*",
)


def npm_package(name: str) -> Path:
    """The folder of an installed npm package, checked against the version package.json pins."""
    wanted = json.loads((HERE / "package.json").read_text())["dependencies"][name]
    folder = NODE_MODULES / name
    manifest = folder / "package.json"
    if not manifest.is_file():
        sys.exit(f"error: {folder} is missing: run `npm ci` in {HERE} (or `make book`)")
    found = json.loads(manifest.read_text())["version"]
    if found != wanted:
        sys.exit(f"error: {name} {found} is installed but package.json pins {wanted}: run `npm ci` in {HERE}")
    return folder


def anywidget_front_end() -> Path:
    """anywidget's AMD module, from the installed pip package (never a hard-coded path)."""
    spec = importlib.util.find_spec("anywidget")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: the anywidget package is not installed in this Python: pip install -r requirements.txt")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "nbextension" / "index.js"
        if candidate.is_file():
            return candidate
    version = importlib.metadata.version("anywidget")
    sys.exit(f"error: anywidget {version} ships no nbextension/index.js; the site cannot render its widgets")


def plan() -> dict[str, Path]:
    """Every file to serve: path under _vendor -> source file."""
    files: dict[str, Path] = {}

    def add(source_dir: Path, patterns, dest: str) -> None:
        for pattern in patterns:
            matches = [p for p in sorted(source_dir.glob(pattern)) if p.is_file()]
            if not matches:
                sys.exit(f"error: nothing matches {pattern} in {source_dir}")
            for path in matches:
                files[f"{dest}/{path.relative_to(source_dir).as_posix()}".lstrip("/")] = path

    files["require.js"] = npm_package("requirejs") / "require.js"
    files["widgets-config.js"] = HERE / "widgets-config.js"
    add(npm_package("@jupyter-widgets/html-manager") / "dist", HTML_MANAGER_FILES,
        "@jupyter-widgets/html-manager/dist")
    files["anywidget/index.js"] = anywidget_front_end()
    mathjax = npm_package("mathjax")
    add(mathjax / "es5", MATHJAX_FILES, "mathjax")
    files["mathjax/LICENSE"] = mathjax / "LICENSE"
    for name, path in files.items():
        if not path.is_file():
            sys.exit(f"error: {path} is missing (for _vendor/{name})")
    return files


def synchronise(files: dict[str, Path], vendor: Path) -> tuple[int, int]:
    """Make ``vendor`` hold exactly ``files``; returns (files written, files removed)."""
    written = removed = 0
    for name, source in files.items():
        target = vendor / name
        if target.is_file() and filecmp.cmp(source, target, shallow=False):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written += 1
    if vendor.is_dir():
        for path in sorted(vendor.rglob("*"), reverse=True):  # children before their folders
            if path.is_file() and path.relative_to(vendor).as_posix() not in files:
                path.unlink()
                removed += 1
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    return written, removed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder named in html_extra_path (default: %(default)s)")
    args = parser.parse_args(argv)
    files = plan()
    vendor = args.out.resolve() / "_vendor"
    written, removed = synchronise(files, vendor)
    size = sum(path.stat().st_size for path in files.values())
    print(f"assemble: {len(files)} files ({size / 2**20:.1f} MiB) in {vendor} "
          f"({written} written, {removed} removed); anywidget {importlib.metadata.version('anywidget')}")


if __name__ == "__main__":
    main()
