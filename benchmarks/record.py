"""Write a benchmark's results, with the machine they ran on, to ``benchmarks/results/``.

Every result file is JSON with a fixed shape, which the book's benchmark appendix renders as a table
(``book/tools/benchmark_results.py``)::

    {"benchmark": "sequence_cost", "title": "...", "description": "...",
     "machine": {"cpu": "...", "cores": 2, "torch_threads": 2, "gpu": null, "torch": "2.13.0",
                 "python": "3.11.7", "os": "Linux x86_64"},
     "versions": {"torch": "2.13.0", "python": "3.11.7", "transformers": "5.24.0", "triton": "3.9.0"},
     "date": "2026-11-25", "command": "python benchmarks/sequence_cost.py",
     "columns": ["L", "..."], "rows": [[256, ...], ...], "notes": ["..."]}

``versions`` (added later, so older files may lack it) names the libraries the numbers depend on:
torch and Python always, transformers and triton when they are installed (absent otherwise).

The file name is ``<benchmark>-<machine slug>.json``, so results from different machines sit side by
side instead of overwriting each other. Beside it, ``<benchmark>-<machine slug>.md`` holds the same
result as a Markdown page (title, machine, versions, date, command, the table, the notes), readable
on GitHub without building the book. ``python benchmarks/record.py`` rewrites the Markdown of every
JSON file in ``benchmarks/results/``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import sys

import torch

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else what ``platform`` knows)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict:
    """What the numbers depend on: CPU, core count, GPU (if used), torch and Python versions."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__.split("+")[0],
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.machine()}",
    }


def slug(info: dict) -> str:
    name = info["gpu"] or f"{info['cpu']}-{info['cores']}cores"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


def versions() -> dict:
    """Versions of what the numbers depend on: torch, Python, and transformers and triton if installed."""
    found = {"torch": torch.__version__.split("+")[0], "python": platform.python_version()}
    for package in ("transformers", "triton"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def _cell(value) -> str:
    """One table cell: as the book shows it (``book/tools/benchmark_results.py``), ``|`` escaped."""
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        text = f"{value:,}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _machine_text(info: dict) -> str:
    where = info.get("gpu") or f"{info.get('cpu', 'unknown CPU')} ({info.get('cores', '?')} cores)"
    threads = f", {info['torch_threads']} torch threads" if info.get("torch_threads") else ""
    system = f", {info['os']}" if info.get("os") else ""
    return f"{where}{threads}{system}"


def _numeric_columns(result: dict) -> list[bool]:
    """Which columns hold only numbers (right-aligned in the table)."""
    return [all(isinstance(row[j], (int, float)) for row in result["rows"])
            for j in range(len(result["columns"]))]


def markdown(result: dict) -> str:
    """The Markdown page for one result (the shape in this module's docstring)."""
    info = result["machine"]
    found = result.get("versions") or {"torch": info.get("torch", "?"), "python": info.get("python", "?")}
    names = {"torch": "torch", "python": "Python"}
    lines = [f"# {result['title']}", ""]
    if result.get("description"):
        lines += [result["description"], ""]
    lines += [
        f"- **Machine:** {_machine_text(info)}",
        "- **Versions:** " + ", ".join(f"{names.get(k, k)} {v}" for k, v in found.items()),
        f"- **Date:** {result['date']}",
        f"- **Command:** `{result['command']}`",
        "",
        "| " + " | ".join(_cell(c) for c in result["columns"]) + " |",
        "|" + "|".join(" ---: " if numeric else " --- " for numeric in _numeric_columns(result)) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in result["rows"]]
    if result.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def load_verdict(loads: list[float], cores: int | None = None) -> str:
    """What the machine's load averages say about the timings: above the core count, other work shared the CPU."""
    cores = cores or os.cpu_count() or 1
    if max(loads) > cores:
        return f"above the core count ({cores}): other work shared the CPU and the times are less reliable"
    return f"at or below the core count ({cores}): the CPU was not oversubscribed"


def record(benchmark: str, *, title: str, description: str, columns: list[str], rows: list[list],
           notes: list[str] | None = None) -> pathlib.Path:
    """Write one result as JSON (and beside it as Markdown) and return the JSON file's path."""
    if any(len(row) != len(columns) for row in rows):
        raise ValueError(f"every row must have {len(columns)} values (the columns: {columns})")
    info = machine()
    result = {
        "benchmark": benchmark,
        "title": title,
        "description": description,
        "machine": info,
        "versions": versions(),
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", os.path.relpath(sys.argv[0], RESULTS.parents[1]), *sys.argv[1:]]),
        "columns": columns,
        "rows": rows,
        "notes": notes or [],
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{benchmark}-{slug(info)}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(result))
    return path


def main() -> None:
    """Rewrite the Markdown page of every JSON result (after a change to the page's layout)."""
    for path in sorted(RESULTS.glob("*.json")):
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        print(f"wrote {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
