"""book/tools/notebook_header.py: every chapter opens with its Colab badge and set-up cell, and both
derive from ``repository`` in ``_config.yml`` (the one place the repository's address lives)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "book" / "tools" / "notebook_header.py"


@pytest.fixture
def header(tmp_path, monkeypatch):
    """The tool as a module, with its ROOT moved to an empty project in tmp_path."""
    spec = importlib.util.spec_from_file_location("notebook_header_under_test", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    (tmp_path / "notebooks").mkdir()
    return tool


def write_config(root: Path, url: str, branch: str | None = None) -> None:
    lines = ["title: test", "repository:", f"  url: {url}"]
    if branch is not None:
        lines.append(f"  branch: {branch}")
    (root / "_config.yml").write_text("\n".join(lines) + "\n")


def write_notebook(path: Path) -> Path:
    cell = {"cell_type": "code", "execution_count": 1, "id": "c1", "metadata": {}, "outputs": [],
            "source": "print(1)"}
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_every_chapter_notebook_has_the_header_config_implies():
    result = subprocess.run([sys.executable, str(TOOL), "--check"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, (
        f"{result.stderr}\nrun `python book/tools/notebook_header.py` to restamp the notebooks")


def test_header_cells_derive_both_urls_from_the_config(header, tmp_path):
    write_config(tmp_path, "https://github.com/someone/another-book/", branch="draft")
    notebook = write_notebook(tmp_path / "notebooks" / "07_state_space.ipynb")
    badge, setup = header.header_cells(notebook)
    colab = ("https://colab.research.google.com/github/someone/another-book/blob/draft/"
             "notebooks/07_state_space.ipynb")
    assert badge.startswith(header.BADGE_MARK)
    assert f"]({colab})" in badge
    assert setup.startswith(header.SETUP_MARK)
    assert '"companion @ git+https://github.com/someone/another-book@draft"' in setup
    # nothing of the real repository's address leaks in
    for text in (badge, setup):
        assert "attention-and-beyond/attention-and-beyond" not in text
    compile(setup, "setup-cell", "exec")  # the set-up cell is valid Python


def test_branch_defaults_to_main(header, tmp_path):
    write_config(tmp_path, "https://github.com/a/b")
    badge, setup = header.header_cells(write_notebook(tmp_path / "notebooks" / "01_x.ipynb"))
    assert "https://colab.research.google.com/github/a/b/blob/main/notebooks/01_x.ipynb" in badge
    assert "git+https://github.com/a/b@main" in setup


def test_a_repository_that_is_not_on_github_is_rejected(header, tmp_path):
    write_config(tmp_path, "https://gitlab.com/a/b")
    with pytest.raises(ValueError, match="GitHub URL"):
        header.header_cells(write_notebook(tmp_path / "notebooks" / "01_x.ipynb"))


def test_stamp_then_check_and_a_changed_config_is_detected(header, tmp_path):
    write_config(tmp_path, "https://github.com/a/b")
    notebook = write_notebook(tmp_path / "notebooks" / "01_x.ipynb")
    assert header.check(notebook) and "does not open with" in header.check(notebook)
    assert header.stamp(notebook) is True
    assert header.check(notebook) is None
    assert header.stamp(notebook) is False  # idempotent
    cells = json.loads(notebook.read_text())["cells"]
    assert [c["id"] for c in cells] == ["colab-badge", "colab-setup", "c1"]  # the original cell kept
    write_config(tmp_path, "https://github.com/c/d")
    assert "Colab badge does not match" in header.check(notebook)
    assert header.main(["--check"]) == 1
    assert header.main([]) == 0  # restamps
    assert header.main(["--check"]) == 0
    cells = json.loads(notebook.read_text())["cells"]
    assert len(cells) == 3 and "github/c/d/blob/main" in "".join(cells[0]["source"])
