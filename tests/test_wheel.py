"""The companion as a learner installs it: a wheel, in a fresh virtual environment, with its
dependencies, imported from outside the repository.

The wheel is built from a clean copy of the package's files (what ``git`` tracks, plus new files it
does not ignore), so nothing from this checkout's editable install (``companion.egg-info``,
``build/``, ``__pycache__``) can make it pass. Dependencies resolve under the pins of
``requirements.txt`` (the set that installs together; torch's CPU wheel is found on local disk via
this machine's pip configuration), and the install takes about a minute.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

SMOKE = r"""
import json, pathlib, sys
import torch
import companion
import companion.data, companion.nn, companion.models, companion.train, companion.bench
import companion.plot, companion.widgets
from companion.data import BPETokenizer, order_task
from companion.models import RecurrentClassifier
from companion.train import train

text = "the cat sat on the mat; the cat ate the rat. " * 20
tokenizer = BPETokenizer.train(text, 300)
assert tokenizer.vocab_size > 256
assert tokenizer.decode(tokenizer.encode(text)) == text

generator = torch.Generator().manual_seed(0)
inputs, labels = order_task(8, length=6, generator=generator)
torch.manual_seed(0)
model = RecurrentClassifier(12, dim=8, hidden=8, num_classes=2)
assert model(inputs).shape == (8, 2)
history = train(model, lambda g: order_task(16, length=6, generator=g), steps=3, progress=False, device="cpu")
assert len(history.train_loss) == 3

widgets = pathlib.Path(companion.widgets.__file__).parent
widget = companion.widgets.SequenceCost(length=64)
assert "function render" in str(widget._esm)
print(json.dumps({
    "companion": companion.__file__,
    "version": companion.__version__,
    "package_data": sorted(p.name for p in widgets.iterdir() if p.suffix in (".js", ".css")),
    "prefix": sys.prefix,
}))
"""


def run(*args, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    command = " ".join(map(str, args))
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def clean_copy(destination: Path) -> Path:
    """The files a clean checkout has for building the package (tracked or new, never ignored)."""
    wanted = ("pyproject.toml", "README", "LICENSE", "companion/")
    if shutil.which("git") and (ROOT / ".git").exists():
        listed = run("git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", cwd=ROOT).stdout
        files = [f for f in listed.split("\0") if f and f.startswith(wanted) and (ROOT / f).is_file()]
    else:  # a source tree without git: everything but build products
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                 and str(p.relative_to(ROOT)).startswith(wanted)
                 and "__pycache__" not in p.parts and not any(q.endswith(".egg-info") for q in p.parts)]
    for name in files:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    assert (destination / "companion" / "__init__.py").is_file()
    assert not list(destination.rglob("*.egg-info"))
    return destination


def constraints(path: Path) -> Path:
    """requirements.txt's pins (``name==version``, markers kept) as a pip constraints file."""
    pins = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    pins = [line for line in pins if "==" in line and not line.startswith("-")]
    assert any(line.startswith("torch==") for line in pins)
    path.write_text("\n".join(pins) + "\n")
    return path


def test_wheel_installs_with_its_dependencies_in_a_fresh_environment(tmp_path):
    name, version = PYPROJECT["name"], PYPROJECT["version"]
    source = clean_copy(tmp_path / "source")
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(source),
        timeout=600)

    wheels = list(dist.glob("*.whl"))
    assert [w.name for w in wheels] == [f"{name}-{version}-py3-none-any.whl"]
    with zipfile.ZipFile(wheels[0]) as archive:
        members = set(archive.namelist())
        metadata = archive.read(f"{name}-{version}.dist-info/METADATA").decode()
    for data in ("companion/widgets/sequence_cost.js", "companion/widgets/sequence_cost.css"):
        assert data in members
    assert not [m for m in members if m.startswith(("tests/", "notebooks/", "book/"))]
    assert f"Name: {name}\n" in metadata and f"Version: {version}\n" in metadata
    for requirement in PYPROJECT["dependencies"]:
        assert f"Requires-Dist: {requirement}" in metadata

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv), timeout=300)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(MPLBACKEND="Agg", PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    run(str(python), "-m", "pip", "install", "--quiet", "--constraint", str(constraints(tmp_path / "pins.txt")),
        str(wheels[0]), env=env, cwd=tmp_path, timeout=900)

    # from outside the repository, so that only the installed copy can be imported
    smoke = tmp_path / "smoke.py"
    smoke.write_text(SMOKE)
    result = run(str(python), str(smoke), env=env, cwd=tmp_path, timeout=300)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["companion"]).resolve().is_relative_to(venv.resolve()), report["companion"]
    assert Path(report["prefix"]).resolve() == venv.resolve()
    assert report["version"] == version
    # every widget's front end in the source tree must be installed beside its module
    source = sorted(p.name for p in (ROOT / "companion" / "widgets").iterdir() if p.suffix in (".js", ".css"))
    assert "sequence_cost.js" in source and report["package_data"] == source

    shown = run(str(python), "-m", "pip", "show", "--files", name, env=env, cwd=tmp_path).stdout
    assert f"Version: {version}" in shown
    assert "companion/widgets/sequence_cost.js" in shown and "companion/widgets/sequence_cost.css" in shown
    assert "Editable project location" not in shown
