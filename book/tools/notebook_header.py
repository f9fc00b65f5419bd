"""Stamp every chapter notebook with its header, derived from ``_config.yml``.

The header is the first two cells of each notebook in ``notebooks/``:

1. a Markdown cell with the "Open in Colab" badge, linking to this notebook in the repository
   named by ``repository.url`` and ``repository.branch`` in ``_config.yml``;
2. a code cell that, on Colab only, installs the ``companion`` package from that repository
   (leaving Colab's own torch and triton alone) and elsewhere does nothing.

``python book/tools/notebook_header.py`` rewrites the headers in place; ``--check`` only reports
notebooks whose header differs (exit status 1), which is how the test suite keeps the repository
address in one place.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
BADGE_MARK = "<!-- colab-badge -->"
SETUP_MARK = "# Set-up (generated from _config.yml by book/tools/notebook_header.py)."


def repository() -> tuple[str, str]:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config["repository"]
    url = repo["url"].rstrip("/")
    prefix = "https://github.com/"
    if not url.startswith(prefix):
        raise ValueError(f"repository.url in _config.yml must be a GitHub URL ({prefix}...), got {url!r}")
    return url, repo.get("branch", "main")


def header_cells(notebook: pathlib.Path) -> tuple[str, str]:
    """The Markdown source of the badge cell and the code source of the set-up cell."""
    url, branch = repository()
    slug = url.removeprefix("https://github.com/")
    relative = notebook.resolve().relative_to(ROOT).as_posix()
    colab = f"https://colab.research.google.com/github/{slug}/blob/{branch}/{relative}"
    badge = (
        f"{BADGE_MARK}\n"
        f"[![Open in Colab](../book/images/colab-badge.svg)]({colab})"
    )
    setup = (
        f"{SETUP_MARK}\n"
        "# On Colab: install the book's companion package from its repository, keeping Colab's own\n"
        "# torch and triton. Anywhere else (a local clone, `make lab`) this cell does nothing.\n"
        "import sys\n"
        "\n"
        "if \"google.colab\" in sys.modules:\n"
        "    import subprocess\n"
        "\n"
        f"    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"--quiet\",\n"
        f"                    \"companion @ git+{url}@{branch}\"], check=True)\n"
        "    from google.colab import output\n"
        "\n"
        "    output.enable_custom_widget_manager()  # the book's widgets are anywidgets"
    )
    return badge, setup


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def has_header(nb: dict) -> bool:
    cells = nb.get("cells", [])
    return (len(cells) >= 2 and _source(cells[0]).startswith(BADGE_MARK)
            and _source(cells[1]).startswith(SETUP_MARK))


def stamp(path: pathlib.Path) -> bool:
    """Write the header into ``path``; returns whether the file changed."""
    nb = json.loads(path.read_text())
    badge, setup = header_cells(path)
    badge_cell = {"cell_type": "markdown", "id": "colab-badge", "metadata": {}, "source": badge}
    setup_cell = {"cell_type": "code", "execution_count": None, "id": "colab-setup",
                  "metadata": {"tags": ["hide-input"]}, "outputs": [], "source": setup}
    cells = nb["cells"]
    if has_header(nb):
        if _source(cells[0]) == badge and _source(cells[1]) == setup:
            return False
        setup_cell["execution_count"] = cells[1].get("execution_count")
        cells[0:2] = [badge_cell, setup_cell]
    else:
        cells[0:0] = [badge_cell, setup_cell]
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


def check(path: pathlib.Path) -> str | None:
    """A problem with ``path``'s header, or None when it is what ``_config.yml`` implies."""
    nb = json.loads(path.read_text())
    if not has_header(nb):
        return f"{path.name}: does not open with the Colab badge and set-up cells"
    badge, setup = header_cells(path)
    if _source(nb["cells"][0]) != badge:
        return f"{path.name}: the Colab badge does not match repository.url in _config.yml"
    if _source(nb["cells"][1]) != setup:
        return f"{path.name}: the set-up cell does not match repository.url in _config.yml"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report differences, change nothing")
    parser.add_argument("notebooks", nargs="*", type=pathlib.Path)
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    problems = []
    for path in paths:
        if args.check:
            problem = check(path)
            if problem:
                problems.append(problem)
        elif stamp(path):
            print(f"stamped {path.name}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
