"""companion.device: where code runs, and whether Triton kernels can run here."""

import importlib.util
import os
import re

import pytest
import torch

from companion import device


@pytest.fixture
def no_gpu(monkeypatch):
    """Pretend there is neither CUDA nor MPS, whatever this machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_best_device_follows_what_torch_reports():
    if torch.cuda.is_available():
        expected = "cuda"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        expected = "mps"
    else:
        expected = "cpu"
    assert device.best_device() == torch.device(expected)


def test_best_device_is_cpu_without_a_gpu(no_gpu):
    assert device.best_device() == torch.device("cpu")


def test_best_device_prefers_cuda(monkeypatch, no_gpu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.best_device() == torch.device("cuda")


def test_best_device_uses_mps_when_it_is_the_only_gpu(monkeypatch, no_gpu):
    if getattr(torch.backends, "mps", None) is None:
        pytest.skip("this torch has no torch.backends.mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device.best_device() == torch.device("mps")


def test_triton_installed_matches_the_import_system():
    assert device.triton_installed() == (importlib.util.find_spec("triton") is not None)


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False), ("", False), ("true", False)])
def test_triton_interpreter_follows_the_environment_variable(monkeypatch, value, expected):
    monkeypatch.setattr(device, "triton_installed", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert device.triton_interpreter() is expected


def test_triton_interpreter_is_off_when_the_variable_is_unset(monkeypatch):
    monkeypatch.setattr(device, "triton_installed", lambda: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert device.triton_interpreter() is False


def test_triton_interpreter_needs_triton(monkeypatch):
    monkeypatch.setattr(device, "triton_installed", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert device.triton_interpreter() is False


@pytest.mark.parametrize("installed, cuda, interpret, expected", [
    (True, False, "1", True),    # the CPU, through the interpreter (how the kernel tests run)
    (True, False, "0", False),   # the CPU, no interpreter: kernels use their references
    (True, True, "0", True),     # a CUDA GPU
    (True, True, "1", True),
    (False, True, "1", False),   # no triton at all (a Mac)
    (False, False, "1", False),
])
def test_triton_can_run(monkeypatch, installed, cuda, interpret, expected):
    monkeypatch.setattr(device, "triton_installed", lambda: installed)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    assert device.triton_can_run() is expected


def test_conftest_switched_the_interpreter_on_for_this_session():
    # tests/conftest.py sets TRITON_INTERPRET=1 unless the caller chose a value
    assert os.environ.get("TRITON_INTERPRET") in ("0", "1")


def test_describe_names_torch_and_the_device_and_holds_no_address(no_gpu, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    text = device.describe()
    assert "\n" not in text
    assert not re.search(r"0x[0-9a-fA-F]{4,}", text), text
    assert f"torch {torch.__version__.split('+')[0]}" in text
    assert text.startswith("device: cpu (")
    if device.triton_installed():
        assert "triton through its interpreter" in text
    else:
        assert "triton not installed" in text


def test_describe_says_when_kernels_fall_back_to_references(no_gpu, monkeypatch):
    monkeypatch.setattr(device, "triton_installed", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "no GPU (kernels use their PyTorch references)" in device.describe()
    monkeypatch.setattr(device, "triton_installed", lambda: False)
    assert "triton not installed" in device.describe()


def test_describe_is_stable():
    assert device.describe() == device.describe()
