"""Re-run notebooks in place to refresh their stored outputs (``make execute``).

Each notebook runs top to bottom in a fresh kernel from ``notebooks/`` as working directory, with
``PYTHONHASHSEED=0`` and the widget state stored in the notebook (the static site renders widgets
from it). The headers are stamped first, so they always match ``_config.yml``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import notebook_header  # noqa: E402

ROOT = notebook_header.ROOT


def execute(path: pathlib.Path, timeout: int) -> float:
    notebook_header.stamp(path)
    nb = nbformat.read(path, as_version=4)
    os.environ["PYTHONHASHSEED"] = "0"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=pathlib.Path)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        seconds = execute(path.resolve(), args.timeout)
        print(f"executed {path.name} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
