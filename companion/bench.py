"""Measuring cost: wall-clock time, peak tensor memory, FLOP and byte counts, and the roofline.

Timings vary from run to run and machine to machine; the book prints them rounded and its tests
never assert on them (speed goals live in ``benchmarks/``). To make them as trustworthy as they can
be, ``time_call`` warms up, repeats and reports the median, times CUDA work with CUDA events, and
``compare`` alternates two candidates call by call, so that drift, heat or a background job slows
both alike. Peak tensor memory, by contrast, is counted exactly: on the CPU by following every
tensor that PyTorch allocates during a call, on CUDA from the caching allocator's own statistics.

FLOP and byte counts are formulas, not measurements: ``matmul_flops``, ``linear_flops``,
``attention_flops`` and ``decoder_flops`` count a multiply-add as two FLOPs (as PyTorch's
``torch.utils.flop_counter.FlopCounterMode`` and the scaling-law literature do);
``attention_bytes`` and ``naive_attention_bytes`` count the memory traffic of a fused and an
unfused attention. ``roofline`` puts the two together (Williams, Waterman and Patterson, 2009,
"Roofline: an insightful visual performance model for multicore architectures").
"""

from __future__ import annotations

import math
import numbers
import operator
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


def _as_device(device: torch.device | str | None) -> torch.device | None:
    return torch.device(device) if isinstance(device, str) else device


def _check_repeats(repeats: int, warmup: int) -> None:
    if repeats < 1 or warmup < 0:
        raise ValueError(f"expected repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")


def _time_once(fn: Callable[[], object], device: torch.device | None) -> float:
    """Seconds taken by one call of ``fn``.

    On CUDA: a pair of ``torch.cuda.Event(enable_timing=True)`` recorded on the current stream
    before and after the call, read after the second one has completed; so the time is that of the
    GPU work the call queued (and any gap while the CPU was still launching it), not only of the
    launches. Elsewhere: ``time.perf_counter`` around the call.
    """
    if device is not None and device.type == "cuda":
        with torch.cuda.device(device):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds
    start_time = time.perf_counter()
    fn()
    return time.perf_counter() - start_time


def _timing(times: list[float]) -> Timing:
    return Timing(median=statistics.median(times), minimum=min(times), repeats=len(times))


def time_call(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1,
              device: torch.device | str | None = None) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then the median and minimum of ``repeats`` calls.

    With a CUDA ``device`` each call is timed by a pair of CUDA events around it (and the device is
    synchronised after the warm-up), so the time covers the kernels and not only their launch;
    otherwise by ``time.perf_counter``. Without a ``device``, work queued on a GPU is not waited for.
    """
    _check_repeats(repeats, warmup)
    device = _as_device(device)
    for _ in range(warmup):
        fn()
    _synchronize(device)
    return _timing([_time_once(fn, device) for _ in range(repeats)])


@dataclass(frozen=True)
class Comparison:
    """Two candidates timed alternately in one run (see ``compare``).

    ``speedup = b.median / a.median``: how many times faster ``a`` is than ``b``. Above 1, ``a`` is
    faster; below 1, ``b`` is (by ``1 / speedup``).
    """

    a: Timing
    b: Timing
    names: tuple[str, str] = ("a", "b")

    @property
    def speedup(self) -> float:
        """``b.median / a.median``: ``a`` is this many times faster than ``b`` (below 1: slower)."""
        if self.a.median == 0:
            return math.inf if self.b.median > 0 else 1.0
        return self.b.median / self.a.median

    def __str__(self) -> str:
        name_a, name_b = self.names
        speedup = self.speedup
        faster, ratio = (name_a, speedup) if speedup >= 1 else (name_b, 1 / speedup)
        return (f"{name_a}: {format_seconds(self.a.median)}, {name_b}: {format_seconds(self.b.median)} "
                f"(median of {self.a.repeats}, alternated) -> {faster} is {ratio:.3g}x faster")


def compare(a: Callable[[], object], b: Callable[[], object], *, repeats: int = 7, warmup: int = 2,
            device: torch.device | str | None = None, names: tuple[str, str] = ("a", "b")) -> Comparison:
    """Time two candidates alternately: ``a, b, a, b, ...``, ``warmup`` untimed pairs, then ``repeats``.

    Timing one candidate after the other lets anything that changes during the run (clock speed as
    the chip heats up, another program starting, the allocator's cache filling) favour whichever
    ran under kinder conditions. Alternating call by call exposes both to the same conditions. Each
    call is timed as in ``time_call`` (CUDA events on a CUDA ``device``, ``perf_counter`` otherwise).

    Returns a ``Comparison`` with both ``Timing``s and ``speedup = median(b) / median(a)``, read as
    "``a`` is ``speedup`` times faster than ``b``" (below 1, ``b`` is the faster one).
    """
    _check_repeats(repeats, warmup)
    if len(names) != 2:
        raise ValueError(f"expected two names, got {names!r}")
    device = _as_device(device)
    for _ in range(warmup):
        a()
        b()
    _synchronize(device)
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(_time_once(a, device))
        times_b.append(_time_once(b, device))
    return Comparison(a=_timing(times_a), b=_timing(times_b), names=(str(names[0]), str(names[1])))


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


# ----------------------------------------------------------------------------------- FLOP counts
def _size(name: str, value: object) -> int:
    """``value`` as a non-negative int, or a ValueError that names it."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}") from None
    if number < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {number}")
    return number


def _positive(name: str, value: object) -> int:
    number = _size(name, value)
    if number == 0:
        raise ValueError(f"{name} must be at least 1, got 0")
    return number


def format_flops(n: float, unit: str = "FLOP") -> str:
    """``1.5e12`` -> ``'1.5 TFLOP'`` (decimal prefixes, three significant figures); ``unit`` may be
    ``'FLOP/s'``, ``'B/s'`` or any other suffix."""
    n = float(f"{n:.3g}")
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}"


def matmul_flops(m: int, n: int, k: int) -> int:
    """FLOPs of ``(m, k) @ (k, n)``: ``2 * m * n * k``.

    Each of the ``m * n`` outputs is a dot product of length ``k``: ``k`` multiply-adds, counted as
    two FLOPs each (the convention of ``FlopCounterMode`` and of the scaling-law papers).
    """
    return 2 * _size("m", m) * _size("n", n) * _size("k", k)


def linear_flops(tokens: int, in_features: int, out_features: int) -> int:
    """FLOPs of a linear layer on ``tokens`` vectors: ``2 * tokens * in_features * out_features``.

    The matmul ``(tokens, in_features) @ (in_features, out_features)``; a bias adds
    ``tokens * out_features`` additions, which are left out (as ``FlopCounterMode`` leaves them out).
    """
    return matmul_flops(tokens, out_features, in_features)


def causal_pairs(q_len: int, kv_len: int) -> int:
    """How many (query, key) pairs a causal mask keeps, aligned at the bottom right.

    The queries are the last ``q_len`` positions of a ``kv_len``-long sequence, so query ``i``
    (from 0) sees ``min(kv_len, i + kv_len - q_len + 1)`` keys, and none if that is negative (when
    ``q_len > kv_len``). Those counts are the consecutive integers ``kv_len - q_len + 1 ... kv_len``,
    so the sum is ``T(kv_len) - T(max(0, kv_len - q_len))`` with ``T(n) = n (n + 1) / 2``: for
    ``q_len == kv_len == L``, ``L (L + 1) / 2``; for one query (decoding), ``kv_len``.

    This is FlashAttention 2's convention (and ``torch.nn.attention.bias.causal_lower_right``);
    ``is_causal=True`` in ``scaled_dot_product_attention`` aligns at the top left instead, which
    agrees when ``q_len == kv_len``.
    """
    q_len, kv_len = _size("q_len", q_len), _size("kv_len", kv_len)
    below = max(0, kv_len - q_len)
    return kv_len * (kv_len + 1) // 2 - below * (below + 1) // 2


def attention_flops(batch: int, q_heads: int, q_len: int, kv_len: int, head_dim: int, *,
                    causal: bool = False) -> int:
    """FLOPs of attention's two matmuls, ``S = Q K^T`` and ``O = P V``, per the pairs computed.

    Each (query, key) pair costs ``head_dim`` multiply-adds for its score and ``head_dim`` for its
    share of the output: ``4 * head_dim`` FLOPs. Without a mask, for ``q`` of shape
    ``(batch, q_heads, q_len, head_dim)`` and ``k, v`` of ``(batch, kv_heads, kv_len, head_dim)``::

        4 * batch * q_heads * q_len * kv_len * head_dim

    (the number of key/value heads does not matter: every query head does its own products). With
    ``causal=True`` only the unmasked pairs count, ``causal_pairs(q_len, kv_len)`` per head instead
    of ``q_len * kv_len``: what a kernel that skips masked blocks approaches (a dense kernel that
    computes and then masks does the full count). The softmax and the scaling (a few FLOPs per
    score) are left out, as in FlashAttention's (Dao et al., 2022) FLOP counts.
    """
    batch, q_heads, head_dim = _size("batch", batch), _size("q_heads", q_heads), _size("head_dim", head_dim)
    pairs = causal_pairs(q_len, kv_len) if causal else _size("q_len", q_len) * _size("kv_len", kv_len)
    return 4 * batch * q_heads * pairs * head_dim


def decoder_flops(*, layers: int, width: int, heads: int, kv_heads: int, head_dim: int,
                  ffn_hidden: int, vocab: int, tokens: int, context: int, ffn: str = "swiglu",
                  causal: bool = False) -> int:
    """Forward FLOPs of a Llama-style decoder for ``tokens`` query tokens attending ``context`` keys.

    Per layer, for ``tokens`` query positions (all matmuls, 2 FLOPs per multiply-add)::

        projections  2 * tokens * width * (heads + 2 * kv_heads) * head_dim     q, k, v
                   + 2 * tokens * heads * head_dim * width                       o
        attention    4 * tokens * context * heads * head_dim                     Q K^T and P V
        feed-forward 3 * 2 * tokens * width * ffn_hidden    (ffn="swiglu": gate, up, down)
                  or 2 * 2 * tokens * width * ffn_hidden    (ffn="gelu": up, down)

    plus the LM head once, ``2 * tokens * width * vocab``. Without ``causal`` every query attends all
    ``context`` keys (decoding one token with a cache: ``tokens=1, context=cache length + 1``). With
    ``causal=True`` the queries are the last ``tokens`` of a ``context``-long sequence and attend
    only earlier keys (``causal_pairs``); a causal forward pass over a sequence of length ``L`` is
    ``tokens=L, context=L, causal=True``. Ignored: the embedding lookup (no FLOPs), norms, RoPE, the
    activation and gating, softmax and residual additions (``O(tokens * width)`` each, small next to
    the matmuls).

    With ``context`` small, this is ``2 * tokens * N`` for ``N`` the weights in matmuls (the
    non-embedding parameters plus the LM head), as in Kaplan et al. (2020). Training costs about
    three times the forward pass (the backward pass computes gradients with respect to both the
    activations and the weights, each as expensive as the forward): about ``6 * tokens * N``.
    """
    layers, width = _size("layers", layers), _size("width", width)
    heads, kv_heads = _positive("heads", heads), _positive("kv_heads", kv_heads)
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    head_dim, ffn_hidden = _size("head_dim", head_dim), _size("ffn_hidden", ffn_hidden)
    vocab = _size("vocab", vocab)
    tokens, context = _size("tokens", tokens), _size("context", context)
    matrices = {"swiglu": 3, "gelu": 2}
    if ffn not in matrices:
        raise ValueError(f"ffn must be 'swiglu' or 'gelu', got {ffn!r}")
    projections = (linear_flops(tokens, width, heads * head_dim)
                   + 2 * linear_flops(tokens, width, kv_heads * head_dim)
                   + linear_flops(tokens, heads * head_dim, width))
    attention = attention_flops(1, heads, tokens, context, head_dim, causal=causal)
    feed_forward = matrices[ffn] * linear_flops(tokens, width, ffn_hidden)
    return layers * (projections + attention + feed_forward) + linear_flops(tokens, width, vocab)


# ----------------------------------------------------------------------------------- byte counts
def _attention_sizes(batch, q_heads, kv_heads, q_len, kv_len, head_dim, dtype_bytes):
    sizes = (_size("batch", batch), _positive("q_heads", q_heads), _positive("kv_heads", kv_heads),
             _size("q_len", q_len), _size("kv_len", kv_len), _size("head_dim", head_dim),
             _positive("dtype_bytes", dtype_bytes))
    if sizes[1] % sizes[2]:
        raise ValueError(f"q_heads ({sizes[1]}) must be a multiple of kv_heads ({sizes[2]})")
    return sizes


def attention_bytes(batch: int, q_heads: int, kv_heads: int, q_len: int, kv_len: int, head_dim: int,
                    dtype_bytes: int) -> int:
    """The least memory traffic of a fused attention kernel: read q, k, v once, write o once.

    ``q`` and ``o`` are ``(batch, q_heads, q_len, head_dim)``, ``k`` and ``v`` are
    ``(batch, kv_heads, kv_len, head_dim)``, all with ``dtype_bytes`` bytes per element::

        dtype_bytes * batch * head_dim * (2 * q_heads * q_len + 2 * kv_heads * kv_len)

    A kernel like FlashAttention (Dao et al., 2022) keeps the scores in on-chip memory and comes
    close to this; the causal mask does not change it. Grouped-query attention reads fewer k, v.
    """
    batch, q_heads, kv_heads, q_len, kv_len, head_dim, dtype_bytes = _attention_sizes(
        batch, q_heads, kv_heads, q_len, kv_len, head_dim, dtype_bytes)
    return dtype_bytes * batch * head_dim * (2 * q_heads * q_len + 2 * kv_heads * kv_len)


def naive_attention_bytes(batch: int, q_heads: int, kv_heads: int, q_len: int, kv_len: int,
                          head_dim: int, dtype_bytes: int) -> int:
    """Memory traffic of unfused attention, ``softmax(q k^T) v`` as three separate operations.

    ``attention_bytes`` plus four passes over the ``(batch, q_heads, q_len, kv_len)`` scores, stored
    in the same dtype: ``q k^T`` writes the scores, the softmax reads them and writes the
    probabilities, ``p v`` reads those::

        attention_bytes(...) + 4 * dtype_bytes * batch * q_heads * q_len * kv_len

    The least for three kernels: a separate scaling or masking pass, or copying k and v to repeat
    them for grouped-query heads, adds more. A causal mask saves nothing here (the full matrix is
    written).
    """
    batch, q_heads, kv_heads, q_len, kv_len, head_dim, dtype_bytes = _attention_sizes(
        batch, q_heads, kv_heads, q_len, kv_len, head_dim, dtype_bytes)
    fused = attention_bytes(batch, q_heads, kv_heads, q_len, kv_len, head_dim, dtype_bytes)
    return fused + 4 * dtype_bytes * batch * q_heads * q_len * kv_len


# -------------------------------------------------------------------------------------- roofline
def _amount(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a finite float that is >= 0 (or > 0), or a ValueError that names it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a finite {kind} number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Roofline:
    """Where ``flops`` of work over ``bytes_moved`` bytes of memory traffic sits under a roofline.

    Williams, Waterman and Patterson (2009): a kernel can run no faster than the peak arithmetic
    rate allows (``flops / peak_flops``), nor than memory can feed it (``bytes / peak_bandwidth``).
    """

    flops: float
    bytes_moved: float
    peak_flops: float        # FLOP/s
    peak_bandwidth: float    # bytes/s

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per byte moved (``inf`` when nothing is moved)."""
        return self.flops / self.bytes_moved if self.bytes_moved else math.inf

    @property
    def ridge(self) -> float:
        """The intensity at which the two roofs meet, ``peak_flops / peak_bandwidth`` FLOP/byte."""
        return self.peak_flops / self.peak_bandwidth

    @property
    def attainable_flops(self) -> float:
        """``min(peak_flops, intensity * peak_bandwidth)``: the best FLOP/s this work can reach."""
        return min(self.peak_flops, self.intensity * self.peak_bandwidth)

    @property
    def bound(self) -> str:
        """``'compute'`` at or above the ridge, ``'memory'`` below it."""
        return "compute" if self.intensity >= self.ridge else "memory"

    @property
    def time_lower_bound(self) -> float:
        """Seconds at least: ``max(flops / peak_flops, bytes_moved / peak_bandwidth)``."""
        return max(self.flops / self.peak_flops, self.bytes_moved / self.peak_bandwidth)

    def efficiency(self, seconds: float) -> float:
        """The fraction of the attainable rate that a measured time reached: bound / ``seconds``."""
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        return self.time_lower_bound / seconds

    def __str__(self) -> str:
        return (f"{format_flops(self.flops)} over {format_bytes(self.bytes_moved)}: "
                f"{_plain(self.intensity)} FLOP/B against a ridge of {_plain(self.ridge)} FLOP/B -> "
                f"{self.bound}-bound, at most {format_flops(self.attainable_flops, 'FLOP/s')}, "
                f"at least {format_seconds(self.time_lower_bound)}")


def _plain(x: float) -> str:
    """``3277.4`` -> ``'3,277'``: whole numbers with separators from 1,000 to a billion, else 3 figures."""
    return f"{x:,.0f}" if 1000 <= x < 1e9 else f"{x:.3g}"


def roofline(flops: float, bytes_moved: float, *, peak_flops: float, peak_bandwidth: float) -> Roofline:
    """The roofline of ``flops`` FLOPs over ``bytes_moved`` bytes on a machine with ``peak_flops``
    FLOP/s and ``peak_bandwidth`` bytes/s (see ``Roofline`` for what it tells).

    For example an H100 SXM's dense bf16 tensor cores (about 989e12 FLOP/s) and HBM3 (about
    3.35e12 B/s) meet at about 295 FLOP/byte: below that a kernel is limited by memory.
    """
    flops, bytes_moved = _amount("flops", flops), _amount("bytes_moved", bytes_moved)
    peak_flops = _amount("peak_flops", peak_flops, positive=True)
    peak_bandwidth = _amount("peak_bandwidth", peak_bandwidth, positive=True)
    if flops == 0 and bytes_moved == 0:
        raise ValueError("roofline needs some work: flops and bytes_moved are both 0")
    return Roofline(flops=flops, bytes_moved=bytes_moved, peak_flops=peak_flops,
                    peak_bandwidth=peak_bandwidth)
