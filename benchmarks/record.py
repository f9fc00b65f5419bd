"""Write a benchmark's results, with the machine they ran on, to ``benchmarks/results/``.

Every result file is JSON with a fixed shape, which the book's benchmark appendix renders as a table
(``book/tools/benchmark_results.py``)::

    {"benchmark": "sequence_cost", "title": "...", "description": "...",
     "machine": {"cpu": "...", "cores": 2, "gpu": null, "torch": "2.13.0", "python": "3.11.7"},
     "date": "2026-11-25", "command": "python benchmarks/sequence_cost.py",
     "columns": ["L", "..."], "rows": [[256, ...], ...], "notes": ["..."]}

The file name is ``<benchmark>-<machine slug>.json``, so results from different machines sit side by
side instead of overwriting each other.
"""

from __future__ import annotations

import datetime
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


def record(benchmark: str, *, title: str, description: str, columns: list[str], rows: list[list],
           notes: list[str] | None = None) -> pathlib.Path:
    """Write one result file and return its path."""
    if any(len(row) != len(columns) for row in rows):
        raise ValueError(f"every row must have {len(columns)} values (the columns: {columns})")
    info = machine()
    result = {
        "benchmark": benchmark,
        "title": title,
        "description": description,
        "machine": info,
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", os.path.relpath(sys.argv[0], RESULTS.parents[1]), *sys.argv[1:]]),
        "columns": columns,
        "rows": rows,
        "notes": notes or [],
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{benchmark}-{slug(info)}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path
