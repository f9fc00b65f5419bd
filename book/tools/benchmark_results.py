"""A Sphinx directive that renders every result in ``benchmarks/results/`` as a table.

In a MyST page::

    ```{benchmark-results}
    ```

Each JSON file (written by ``benchmarks/record.py``) becomes a section: its title, the machine it ran
on, the command that produced it, a table of its rows and its notes. The page therefore always shows
what the benchmark scripts last recorded; nothing is copied by hand.
"""

from __future__ import annotations

import json
import pathlib

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

RESULTS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _machine(info: dict, versions: dict | None = None) -> str:
    """Where it ran and with what; ``versions`` is optional (files recorded before it lack it)."""
    where = info.get("gpu") or f"{info.get('cpu', 'unknown CPU')} ({info.get('cores', '?')} cores)"
    versions = versions or {"torch": info.get("torch", "?"), "python": info.get("python", "?")}
    names = {"torch": "torch", "python": "Python"}
    software = ", ".join(f"{names.get(name, name)} {version}" for name, version in versions.items())
    return f"{where}; {software}, {info.get('os', '')}".strip(", ")


def render(result: dict) -> list[str]:
    """RST lines for one result file."""
    title = result["title"]
    lines = [title, "~" * len(title), "", result.get("description", ""), "",
             f"**Machine:** {_machine(result['machine'], result.get('versions'))}. "
             f"**Date:** {result['date']}. "
             f"**Command:** ``{result['command']}``", "",
             ".. list-table::", "   :header-rows: 1", ""]
    for i, row in enumerate([result["columns"], *result["rows"]]):
        for j, value in enumerate(row):
            lines.append(f"   {'* -' if j == 0 else '  -'} {_cell(value)}")
    lines.append("")
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    lines.append("")
    return lines


class BenchmarkResults(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        files = sorted(RESULTS.glob("*.json"))
        if not files:
            return [nodes.paragraph(text="No benchmark results have been recorded yet.")]
        lines: list[str] = []
        for path in files:
            self.env.note_dependency(str(path))
            lines += render(json.loads(path.read_text()))
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines, source=str(RESULTS)), self.content_offset, container,
                                match_titles=True)
        return container.children


def setup(app):
    app.add_directive("benchmark-results", BenchmarkResults)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
