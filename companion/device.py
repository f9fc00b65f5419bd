"""Where code runs: the best device, and whether (and how) Triton kernels can run here.

The book runs on a laptop CPU, a workstation GPU, a Mac and Colab. Kernels take their Triton path
only on CUDA; elsewhere they fall back to their PyTorch reference. Tests run the Triton path on the
CPU through Triton's interpreter, which is switched on by the environment variable
``TRITON_INTERPRET=1`` *before* ``triton`` is imported.
"""

from __future__ import annotations

import importlib.util
import os
import platform

import torch


def best_device() -> torch.device:
    """The fastest device PyTorch can use here: ``cuda``, then ``mps`` (Apple silicon), then ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def triton_installed() -> bool:
    """Whether the ``triton`` package can be imported (it is Linux-only; Macs do without it)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreter() -> bool:
    """Whether Triton kernels should run through Triton's CPU interpreter (``TRITON_INTERPRET=1``).

    True only when Triton is installed and the variable is set; this is how the kernel tests run
    on machines without a GPU. It is slow and meant for correctness, never for timing.
    """
    return triton_installed() and os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_can_run() -> bool:
    """Whether a Triton kernel can execute here: on a CUDA GPU, or on the CPU through the interpreter."""
    return triton_installed() and (torch.cuda.is_available() or triton_interpreter())


def describe() -> str:
    """One line naming the machine as the book's notebooks print it (no addresses, no timings)."""
    device = best_device()
    if device.type == "cuda":
        where = f"cuda ({torch.cuda.get_device_name(device)})"
    elif device.type == "mps":
        where = "mps (Apple GPU)"
    else:
        where = f"cpu ({platform.machine() or 'unknown'})"
    if not triton_installed():
        triton = "triton not installed (kernels use their PyTorch references)"
    elif triton_interpreter():
        triton = "triton through its interpreter"
    elif torch.cuda.is_available():
        triton = "triton on the GPU"
    else:
        triton = "triton installed, no GPU (kernels use their PyTorch references)"
    return f"device: {where}; torch {torch.__version__.split('+')[0]}; {triton}"
