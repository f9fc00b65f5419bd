"""Measuring cost: wall-clock time, peak tensor memory, and how a cost grows with size.

Timings vary from run to run and machine to machine; the book prints them rounded and its tests
never assert on them (speed goals live in ``benchmarks/``). Peak tensor memory, by contrast, is
counted exactly: on the CPU by following every tensor that PyTorch allocates during a call, on CUDA
from the caching allocator's own statistics.
"""

from __future__ import annotations

import math
import statistics
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``repeats`` timed calls (after warm-up)."""

    median: float
    minimum: float
    repeats: int

    def __str__(self) -> str:
        return f"{format_seconds(self.median)} (median of {self.repeats})"


def format_seconds(seconds: float) -> str:
    """``0.00123`` -> ``'1.23 ms'``: three significant figures with a readable unit."""
    seconds = float(f"{seconds:.3g}")  # round first, so that 0.9996 s is '1 s', not '1e+03 ms'
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'`` (binary units, three significant figures)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if unit == "B" and abs(n) < 1024:
            return f"{int(n)} B"
        # 1000-1023 of a unit would print as '1.01e+03 KiB' at three significant figures: go up one
        if unit != "B" and (abs(float(f"{n:.3g}")) < 1000 or unit == "TiB"):
            return f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1,
              device: torch.device | str | None = None) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then the median and minimum of ``repeats`` calls.

    On CUDA the device is synchronised around each call, so the time covers the kernels and not
    only their launch.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"expected repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = torch.device(device) if isinstance(device, str) else device
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return Timing(median=statistics.median(times), minimum=min(times), repeats=repeats)


class _TensorMemoryTracker(TorchDispatchMode):
    """Counts the bytes of tensor storage allocated by operators and still alive, and the peak.

    PyTorch keeps one Python object per storage for as long as the storage lives, so a
    ``weakref.finalize`` on it runs exactly when the memory is released.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # An output that shares an input's storage (a view, an in-place op) allocates nothing; the
        # input may be a tensor that existed before the call, which must not be counted.
        inputs = {id(leaf.untyped_storage()) for leaf in tree_flatten((args, kwargs))[0]
                  if isinstance(leaf, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, torch.Tensor) and leaf.device.type == "cpu":
                storage = leaf.untyped_storage()
                key = id(storage)
                if key not in self.live and key not in inputs:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    weakref.finalize(storage, self._release, key)
        self.peak = max(self.peak, self.current)
        return out


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak bytes of tensor memory that ``fn()`` allocates beyond what existed before the call.

    On the CPU every operator's outputs are followed until they are freed (a ``TorchDispatchMode``),
    so the count is exact and repeatable: it is the memory of the tensors the computation creates,
    not including scratch space an operator uses internally. On CUDA it is
    ``torch.cuda.max_memory_allocated`` above the memory allocated before the call.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"peak_memory supports 'cpu' and 'cuda' devices, got {device.type!r}")
    tracker = _TensorMemoryTracker()
    with tracker:
        fn()
    return tracker.peak


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of ``y = c * x**p`` on log-log axes; returns ``(p, c)``.

    The exponent ``p`` is how a cost grows: about 1 for linear, about 2 for quadratic.
    """
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"expected two sequences of equal length >= 2, got lengths {len(x)} and {len(y)}")
    if min(x) <= 0 or min(y) <= 0:
        raise ValueError("fit_power_law needs positive x and y (it fits on log-log axes)")
    lx = [math.log(v) for v in x]
    ly = [math.log(v) for v in y]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    if sxx == 0:
        raise ValueError("fit_power_law needs at least two distinct x values")
    p = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx
    return p, math.exp(my - p * mx)
