"""benchmarks/record.py: a result is written as JSON and as Markdown, with the machine it ran on."""

import importlib.util
import json
import pathlib
import platform

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def record_module(tmp_path, monkeypatch):
    """benchmarks/record.py (a script folder, not a package), writing into a temporary folder."""
    spec = importlib.util.spec_from_file_location("benchmark_record", ROOT / "benchmarks" / "record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    return module


COLUMNS = ["L", "naive ms", "fused ms", "label"]
ROWS = [[256, 0.379, 0.24, "short"], [512, 1.5, 0.648, "a|b"], [40_000, 12.0, 3.25, "long"]]


def write(module, **overrides):
    arguments = dict(title="Attention: naive against fused", description="One sequence, width 64.",
                     columns=COLUMNS, rows=ROWS, notes=["time is the median of 7 calls", "cpu only"])
    arguments.update(overrides)
    return module.record("attention_test", **arguments)


def test_record_writes_json_and_markdown_side_by_side(record_module, tmp_path):
    path = write(record_module)
    info = record_module.machine()
    assert path == tmp_path / "results" / f"attention_test-{record_module.slug(info)}.json"
    assert path.exists() and path.with_suffix(".md").exists()
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, path.stem + ".md"])


def test_record_json_has_the_documented_shape_and_the_machine(record_module):
    result = json.loads(write(record_module).read_text())
    assert set(result) == {"benchmark", "title", "description", "machine", "versions", "date", "command",
                           "columns", "rows", "notes"}
    assert result["benchmark"] == "attention_test"
    assert result["columns"] == COLUMNS and result["rows"] == ROWS
    assert result["notes"] == ["time is the median of 7 calls", "cpu only"]
    assert result["command"].startswith("python ")
    machine = result["machine"]
    assert set(machine) >= {"cpu", "cores", "torch_threads", "gpu", "torch", "python", "os"}
    assert machine["torch"] == torch.__version__.split("+")[0]
    assert machine["python"] == platform.python_version()
    assert machine["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    versions = result["versions"]
    assert versions["torch"] == machine["torch"] and versions["python"] == machine["python"]
    assert set(versions) <= {"torch", "python", "transformers", "triton"}
    for package in ("transformers", "triton"):
        if importlib.util.find_spec(package) is not None:
            assert package in versions


def test_record_without_notes_writes_an_empty_list(record_module):
    result = json.loads(write(record_module, notes=None).read_text())
    assert result["notes"] == []
    assert "Notes" not in write(record_module, notes=None).with_suffix(".md").read_text()


@pytest.mark.parametrize("rows", [[[256, 0.3, 0.2]], [[256, 0.3, 0.2, "x", "extra"]],
                                  [[256, 0.3, 0.2, "x"], [512]]])
def test_record_rejects_rows_of_the_wrong_width(record_module, tmp_path, rows):
    with pytest.raises(ValueError, match="every row must have 4 values"):
        write(record_module, rows=rows)
    assert not (tmp_path / "results").exists()


def test_markdown_holds_the_title_machine_versions_date_command_table_and_notes(record_module):
    path = write(record_module)
    result = json.loads(path.read_text())
    text = path.with_suffix(".md").read_text()
    lines = text.splitlines()
    assert lines[0] == "# Attention: naive against fused"
    assert "One sequence, width 64." in lines
    machine = result["machine"]
    assert any(line.startswith("- **Machine:**") and (machine["gpu"] or machine["cpu"]) in line
               for line in lines)
    versions_line = next(line for line in lines if line.startswith("- **Versions:**"))
    assert f"torch {result['versions']['torch']}" in versions_line
    assert f"Python {result['versions']['python']}" in versions_line
    for package in ("transformers", "triton"):
        if package in result["versions"]:
            assert f"{package} {result['versions'][package]}" in versions_line
    assert f"- **Date:** {result['date']}" in lines
    assert f"- **Command:** `{result['command']}`" in lines
    # the table: header, alignment row, then every row, in order, '|' in a cell escaped
    header = lines.index("| L | naive ms | fused ms | label |")
    assert set(lines[header + 1]) <= set("|-: ")
    assert lines[header + 2:header + 5] == [
        "| 256 | 0.379 | 0.24 | short |",
        "| 512 | 1.5 | 0.648 | a\\|b |",
        "| 40,000 | 12 | 3.25 | long |",
    ]
    assert "- time is the median of 7 calls" in lines and "- cpu only" in lines


def test_markdown_of_every_row_appears_for_a_longer_table(record_module):
    rows = [[n, n * 0.5, n // 3, f"row {n}"] for n in range(1, 30)]
    text = write(record_module, rows=rows).with_suffix(".md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ") and not set(line) <= set("|-: ")
             and line != "| L | naive ms | fused ms | label |"]
    assert len(table) == len(rows)
    for line, row in zip(table, rows):
        assert line == "| " + " | ".join(record_module._cell(value) for value in row) + " |"
        assert f"row {row[0]} |" in line


def test_markdown_renders_the_recorded_results_which_have_no_versions(record_module):
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        result = json.loads(path.read_text())
        text = record_module.markdown(result)
        assert text.startswith(f"# {result['title']}\n")
        assert f"torch {result['machine']['torch']}" in text
        assert text.count("\n| ") == len(result["rows"]) + 2  # header, alignment, rows


def test_the_book_renders_old_and_new_result_files(record_module):
    spec = importlib.util.spec_from_file_location("benchmark_results_page",
                                                  ROOT / "book" / "tools" / "benchmark_results.py")
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    new = json.loads(write(record_module).read_text())
    old = {key: value for key, value in new.items() if key != "versions"}
    for result in (old, new):
        lines = page.render(result)
        assert lines[0] == new["title"]
        assert any(f"torch {new['machine']['torch']}" in line for line in lines)
        assert sum(line.startswith("   * -") for line in lines) == len(ROWS) + 1
    if "triton" in new["versions"]:
        assert any(f"triton {new['versions']['triton']}" in line for line in page.render(new))
