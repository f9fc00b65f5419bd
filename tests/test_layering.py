"""The companion's layering rule: nothing imports from a layer above it.

From the bottom up (DESIGN.md, companion/__init__.py)::

    seed, device -> data -> kernels -> nn -> models -> train -> bench | interpret | calibration -> plot | widgets

``bench``, ``interpret`` and ``calibration`` are the analysis tools, one layer; ``seed`` and
``device`` import nothing from the companion; ``plot`` and ``widgets`` are both on top and do not
import each other. An import inside ``if TYPE_CHECKING:`` never runs and is allowed
(``plot`` names ``train.History`` that way). Imports inside functions run, and count.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import companion

PACKAGE = Path(companion.__file__).resolve().parent
# layer name -> rank; a module may import its own layer and any layer of lower rank
RANKS = {"seed": 0, "device": 0, "data": 1, "kernels": 2, "nn": 3, "models": 4, "train": 5,
         "bench": 6, "interpret": 6, "calibration": 6, "plot": 7, "widgets": 7}
IMPORTS_NOTHING = {"seed", "device"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> str | None:
    """``companion.nn.recurrent`` -> ``nn``; the package itself -> None."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def runtime_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every companion import in ``path`` that runs (relative ones resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:  # the else branch does run
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from companion import data` imports the submodule companion.data
            for alias in node.names:
                found.append((node.lineno, f"{target}.{alias.name}" if target == "companion" else target))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return [(line, name) for line, name in found if name == "companion" or name.startswith("companion.")]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_known_layer():
    unknown = sorted({layer_of(module_name(p)) for p in MODULES} - set(RANKS) - {None})
    assert not unknown, (f"companion has modules outside the known layers: {unknown}; add them to "
                         f"RANKS in tests/test_layering.py and to the rule in DESIGN.md")


def violations(path: Path) -> list[str]:
    here = module_name(path)
    layer = layer_of(here)
    problems = []
    for line, target in runtime_imports(path):
        target_layer = layer_of(target)
        where = f"{path.relative_to(PACKAGE.parent)}:{line}: {here} imports {target}"
        if layer is None:  # companion/__init__.py: `import companion` must stay cheap
            if target_layer not in IMPORTS_NOTHING:
                problems.append(f"{where} (the package itself may import only seed and device)")
        elif layer in IMPORTS_NOTHING:
            problems.append(f"{where} ({layer} is the bottom layer and imports nothing from companion)")
        elif target_layer is None:
            problems.append(f"{where} (import the submodule you need, not the package)")
        elif target_layer != layer and RANKS[target_layer] >= RANKS[layer]:
            problems.append(f"{where} ({target_layer} is not below {layer})")
    return problems


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_nothing_imports_from_a_layer_above_it(path):
    problems = violations(path)
    assert not problems, "\n".join(problems)


def test_the_checker_finds_upward_imports(tmp_path, monkeypatch):
    # the rule, applied to a fake package: each of these must be reported
    fake = tmp_path / "companion"
    (fake / "nn").mkdir(parents=True)
    (fake / "__init__.py").write_text("from companion.seed import seed_everything\nfrom companion import plot\n")
    (fake / "seed.py").write_text("from companion.device import best_device\n")
    (fake / "nn" / "__init__.py").write_text("")
    (fake / "nn" / "mixer.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from ..data import lm_batch\n"                 # allowed: data is below nn
        "from .other import thing\n"                    # allowed: the same layer
        "if TYPE_CHECKING:\n    from companion.train import History\n"   # allowed: never runs
        "def f():\n    from ..models import WindowLM\n"                 # not allowed: models is above
        "import companion.train as t\n")                                 # not allowed
    (fake / "plot.py").write_text("from companion.widgets import SequenceCost\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert len(violations(fake / "__init__.py")) == 1
    assert "seed is the bottom layer" in violations(fake / "seed.py")[0]
    mixer = violations(fake / "nn" / "mixer.py")
    assert [m.split(" imports ")[1].split(" ")[0] for m in mixer] == ["companion.models", "companion.train"]
    assert "widgets is not below plot" in violations(fake / "plot.py")[0]


def test_import_companion_stays_cheap():
    # `import companion` loads seed, which needs torch and numpy; nothing else outside the standard
    # library comes with it (no matplotlib, anywidget, triton, no other companion layer)
    code = ("import sys, torch, numpy\n"
            "before = set(sys.modules)\n"
            "import companion\n"
            "new = set(sys.modules) - before\n"
            "print(' '.join(sorted(m for m in new if m.split('.')[0] not in sys.stdlib_module_names)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert loaded == {"companion", "companion.seed"}, sorted(loaded)
