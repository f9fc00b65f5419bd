"""Attention on the CPU: time and peak memory against sequence length, naive against tiled against SDPA.

Three ways to compute the same causal attention (one sequence, 4 heads of 64 dimensions, float32):

- ``naive``: the formula written out (``companion.kernels.attention``'s explicit path): the whole
  ``(heads, L, L)`` matrix of scores, then of probabilities, in memory;
- ``tiled``: ``companion.kernels.tiled_attention``, FlashAttention's online softmax in plain PyTorch,
  tiles of 256 queries against 256 keys (a Python loop over tiles);
- ``sdpa``: PyTorch's ``scaled_dot_product_attention`` with ``is_causal=True`` (its fused CPU kernel).

Each is checked against the naive result before it is timed. Peak memory is
``companion.bench.peak_memory``: the bytes of tensors that operators allocate during the call beyond
the inputs, counted exactly (so SDPA's internal scratch buffers, which are not tensors, are not
seen: its figure is a lower bound). Time is the median of ``--repeats`` calls.

    python benchmarks/attention_cpu.py [--repeats 3] [--threads N]

Writes benchmarks/results/attention_cpu-*.json and .md.
"""

from __future__ import annotations

import argparse
import math
import os

import torch
import torch.nn.functional as F

from companion import bench, seed_everything
from companion.kernels import tiled_attention
from companion.kernels.attention import _explicit_attention

from record import record

LENGTHS = (512, 1024, 2048, 4096, 8192)
HEADS, HEAD_DIM, BLOCK = 4, 64, 256


def candidates(scale: float) -> dict:
    return {
        "naive": lambda q, k, v: _explicit_attention(q, k, v, causal=True, scale=scale, window=None,
                                                     alibi_slopes=None),
        "tiled": lambda q, k, v: tiled_attention(q, k, v, causal=True, block_q=BLOCK, block_k=BLOCK),
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    seed_everything(0)
    scale = 1 / math.sqrt(HEAD_DIM)
    found = candidates(scale)
    rows = []
    for length in LENGTHS:
        q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM) for _ in range(3))
        with torch.no_grad():
            expected = found["naive"](q, k, v)
            for name, fn in found.items():
                torch.testing.assert_close(fn(q, k, v), expected, atol=1e-5, rtol=1e-4,
                                           msg=lambda m: f"{name} at L={length}: {m}")
            for name, fn in found.items():
                peak = bench.peak_memory(lambda: fn(q, k, v))
                timing = bench.time_call(lambda: fn(q, k, v), repeats=args.repeats, warmup=1)
                rows.append([length, name, round(timing.median * 1e3, 1), round(peak / 2**20, 2)])
                print(f"L={length:5d} {name:6s} {timing.median * 1e3:9.1f} ms  peak {peak / 2**20:9.2f} MiB",
                      flush=True)
    by_name = {name: [r for r in rows if r[1] == name] for name in found}
    notes = [
        f"one sequence, {HEADS} heads of {HEAD_DIM} dimensions, causal, float32, forward only; tiles of "
        f"{BLOCK}x{BLOCK}; time: median of {args.repeats} calls after one warm-up; torch threads "
        f"{torch.get_num_threads()}; load average before the run {load:.2f}" if load is not None else "",
        "peak MiB: tensors allocated by operators during the call beyond q, k and v (companion.bench.peak_memory); "
        "SDPA's internal scratch is not a tensor and is not counted",
    ]
    for name, found_rows in by_name.items():
        lengths = [r[0] for r in found_rows]
        exponent_mem, _ = bench.fit_power_law(lengths, [r[3] for r in found_rows])
        exponent_time, _ = bench.fit_power_law(lengths, [r[2] for r in found_rows])
        notes.append(f"{name}: peak memory grows as L^{exponent_mem:.2f}, time as L^{exponent_time:.2f} "
                     f"(least-squares fit on log-log axes, {lengths[0]} to {lengths[-1]} tokens)")
    path = record("attention_cpu", title="Attention on the CPU: naive, tiled and SDPA against sequence length",
                  description="Time and peak tensor memory of one causal attention call, three ways.",
                  columns=["tokens", "method", "time (ms)", "peak (MiB)"], rows=rows,
                  notes=[n for n in notes if n])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
