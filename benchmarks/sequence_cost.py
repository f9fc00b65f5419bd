"""Time and peak memory of four sequence mixers against sequence length (chapter 1's bottleneck).

Mixers, at width 64, one sequence, forward pass without gradients:
naive attention (materialises the L x L scores), PyTorch's fused scaled_dot_product_attention, a GRU
(PyTorch's fused recurrent kernel) and a depthwise causal convolution with kernel 4.

    python benchmarks/sequence_cost.py [--max-length 8192] [--repeats 5]

Runs on the best device available (CUDA if present). Writes benchmarks/results/sequence_cost-*.json.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from companion import bench, seed_everything
from companion.device import best_device

from record import record


def naive_attention(q, k, v):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return scores.softmax(dim=-1) @ v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    device = best_device() if best_device().type == "cuda" else torch.device("cpu")
    seed_everything(0)
    d = args.width
    gru = torch.nn.GRU(d, d, batch_first=True).to(device)
    conv = torch.nn.Conv1d(d, d, kernel_size=4, groups=d, padding=3).to(device)
    mixers = {
        "naive attention": lambda x: naive_attention(x, x, x),
        "fused attention": lambda x: F.scaled_dot_product_attention(x, x, x),
        "GRU": lambda x: gru(x[0])[0],
        "causal conv": lambda x: conv(x[0].transpose(1, 2))[..., : x.shape[2]],
    }
    lengths = [256 * 2 ** i for i in range(int(math.log2(args.max_length // 256)) + 1)]
    rows = []
    times = {name: [] for name in mixers}
    mems = {name: [] for name in mixers}
    with torch.no_grad():
        for length in lengths:
            x = torch.randn(1, 1, length, d, device=device)
            row = [length]
            for name, mixer in mixers.items():
                t = bench.time_call(lambda: mixer(x), repeats=args.repeats, device=device).minimum
                m = bench.peak_memory(lambda: mixer(x), device=device)
                times[name].append(t)
                mems[name].append(m)
                row += [round(t * 1e3, 3), m]
            rows.append(row)
            print(row, flush=True)
    half = slice(len(lengths) // 2, None)
    notes = [f"device: {device.type}; width {d}; time is the minimum of {args.repeats} calls; "
             "memory is the peak of tensors created during the call (companion.bench.peak_memory)."]
    for name in mixers:
        p_time, _ = bench.fit_power_law(lengths[half], times[name][half])
        p_mem, _ = bench.fit_power_law(lengths[half], mems[name][half])
        notes.append(f"{name}: time ~ L^{p_time:.2f}, memory ~ L^{p_mem:.2f} (fitted on L >= {lengths[half][0]})")
    columns = ["L"] + [f"{name} {unit}" for name in mixers for unit in ("ms", "bytes")]
    path = record("sequence_cost", title="Sequence mixers: time and memory against length",
                  description=__doc__.split("\n\n")[1].replace("\n", " "), columns=columns,
                  rows=rows, notes=notes)
    print("\n".join(notes))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
