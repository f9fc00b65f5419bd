"""Shared set-up for the test suite.

Kernel tests run the Triton path on the CPU through Triton's interpreter, which reads
``TRITON_INTERPRET`` when ``triton`` is first imported: so the variable is set here, at import time,
before any test module (or the companion) can import triton. ``setdefault`` leaves an explicit
``TRITON_INTERPRET=0`` alone (on a GPU machine, to run the kernels for real).

This file imports nothing heavy (hypothesis's settings only): tests/test_site.py runs in the same session
and needs none of it.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# The unit tests use tiny tensors, for which PyTorch's intra-op threads cost far more than they
# save: on a busy two-core machine a 150-step training test took 6 s with two threads and 0.1 s
# with one. Read by torch (and NumPy's BLAS) when first imported; an explicit value wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pathlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Property tests draw the same examples on every run by default ("ci": derandomized), so that a
# run's result does not depend on luck; HYPOTHESIS_PROFILE=explore draws fresh ones each run, to hunt
# for new failures (it has found real bugs: add each one found as an explicit test case).
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

if "triton" in sys.modules and os.environ["TRITON_INTERPRET"] == "1":  # pragma: no cover
    warnings.warn("triton was imported before tests/conftest.py set TRITON_INTERPRET=1; "
                  "kernel tests may not run through the interpreter", RuntimeWarning)
if "torch" in sys.modules:  # pragma: no cover - imported by a plugin before this file
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    """The repository root (the folder that holds pyproject.toml)."""
    return ROOT


@pytest.fixture(scope="session")
def node() -> str:
    """The path of Node.js, or skip: a few tests run the widgets' JavaScript to compare with Python."""
    path = shutil.which("node")
    if path is None:
        pytest.skip("node (Node.js) is not installed: cannot run the widget's JavaScript")
    return path
