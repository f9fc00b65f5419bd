"""Mamba's selective scan: the chunked PyTorch scan against the reference loop and transformers' fallback.

On the CPU, forward + backward (gradients of every input) of one selective scan at batch 2, dim 512,
state 16 (a small Mamba's mixer: d_inner 512 with the paper's N = 16) at several lengths, and at
batch 4, dim 64 (a laptop-sized model, as the book trains), with D, the z gate, a delta bias and
softplus, for three PyTorch implementations of the same recurrence:
the companion's reference loop (backend="reference", autograd through one step per position), its
chunked scan (backend="chunked", the CPU default: chunks of companion.kernels.selective_scan
CHUNK_SIZE positions, a written-out backward that re-runs each chunk from its saved state), and the
PyTorch fallback of transformers' Mamba (transformers.models.mamba.modeling_mamba.mamba_selective_scan
without mamba_ssm: every step's decay and input precomputed for the whole sequence, a loop over time,
autograd). Each is timed alternately with the chunked scan (companion.bench.compare); the forward pass
alone is timed too, and the peak tensor memory of forward + backward is counted
(companion.bench.peak_memory). On CUDA (when present) the Triton kernels (backend="triton") against
the chunked scan on the GPU, at a larger shape, in bfloat16 and float32, with the bytes that must move
(each input read once, each output written once) over the time, against the card's copy bandwidth
measured here.

    python benchmarks/selective_scan.py [--repeats 5] [--threads N]

Writes benchmarks/results/selective_scan-*.json and .md.
"""

from __future__ import annotations

import argparse
import importlib
import os

import torch

from companion import bench, seed_everything
from companion.device import triton_installed, triton_interpreter
from companion.kernels import selective_scan

from record import load_verdict, record

# (batch, dim, state, length)
CPU_CASES = [(2, 512, 16, 128), (2, 512, 16, 256), (2, 512, 16, 512), (4, 64, 16, 512)]
CUDA_CASES = [(4, 1536, 16, 1024), (4, 1536, 16, 4096)]  # Mamba-130M's mixer (d_inner 1536, state 16)


def transformers_fallback():
    """transformers' PyTorch selective scan (its body, without the hub-kernel wrapper), or None."""
    try:
        modeling_mamba = importlib.import_module("transformers.models.mamba.modeling_mamba")
    except ImportError:
        return None
    fn = modeling_mamba.mamba_selective_scan
    return getattr(fn, "__wrapped__", fn)


def inputs(batch, dim, state, length, dtype, device):
    """The scan's arguments as a Mamba block produces them (float32 A, D and delta bias), requiring grad."""
    def randn(*shape):
        return torch.randn(*shape, device=device)

    args = dict(u=randn(batch, dim, length).to(dtype), delta=(randn(batch, dim, length) - 1).to(dtype),
                A=-torch.exp(randn(dim, state) * 0.5), B=randn(batch, state, length).to(dtype),
                C=randn(batch, state, length).to(dtype), D=randn(dim), z=randn(batch, dim, length).to(dtype),
                delta_bias=randn(dim) * 0.3)
    return {k: v.requires_grad_(True) for k, v in args.items()}


def candidates(args, hf, device):
    """name -> fn(**args) -> y, each computing the same y (softplus on)."""
    found = {}
    if device.type == "cuda" and triton_installed() and not triton_interpreter():
        found["triton"] = lambda **a: selective_scan(**a, delta_softplus=True, backend="triton")
    found["chunked"] = lambda **a: selective_scan(**a, delta_softplus=True, backend="chunked")
    found["reference"] = lambda **a: selective_scan(**a, delta_softplus=True, backend="reference")
    if hf is not None and device.type == "cpu":
        found["transformers fallback"] = lambda **a: hf(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"],
                                                        a["delta_bias"], True)
    return found


def check_same(found, args):
    """Every candidate's y against the chunked scan's, before timing."""
    with torch.no_grad():
        expected = found["chunked"](**args).float()
        for name, fn in found.items():
            tolerance = dict(rtol=1e-4, atol=1e-4) if args["u"].dtype == torch.float32 else dict(rtol=0.02, atol=0.02)
            torch.testing.assert_close(fn(**args).float(), expected, **tolerance,
                                       msg=lambda m, name=name: f"{name}: {m}")


def forward_backward(fn, args, grad):
    leaves = list(args.values())
    return lambda: torch.autograd.grad(fn(**args), leaves, grad)


def must_move(batch, dim, state, length, dtype, backward):
    """Bytes read and written at least: every input once and every output once (A, D, delta bias:
    negligible, counted). Forward: u, delta, z, B, C in, y out; backward adds dy, the same inputs
    again (the forward's values are not kept) and du, ddelta, dz, dB, dC out."""
    e = torch.tensor([], dtype=dtype).element_size()
    per_channel = batch * dim * length * e  # one (batch, dim, length) tensor
    per_state = batch * state * length * e  # one (batch, state, length) tensor
    small = (dim * state + 2 * dim) * 4
    forward = 4 * per_channel + 2 * per_state + small
    if not backward:
        return forward
    return forward + (4 * per_channel + 2 * per_state + small) + (3 * per_channel + 2 * per_state + small)


def copy_bandwidth(device, repeats):
    """The card's memory bandwidth as measured here: bytes read + written by a 1 GiB copy over its time."""
    x = torch.empty(2**28, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    timing = bench.time_call(lambda: y.copy_(x), repeats=repeats, warmup=2, device=device)
    return 2 * x.numel() * 4 / timing.median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args_ = parser.parse_args()
    if args_.threads is not None:
        torch.set_num_threads(args_.threads)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and triton_interpreter():
        print("note: TRITON_INTERPRET=1 is set: the Triton kernel would run through the interpreter and "
              "is not timed; unset it to time the kernel", flush=True)
    hf = transformers_fallback()
    seed_everything(0)
    rows = []
    if device.type == "cpu":
        cases, dtypes = CPU_CASES, [torch.float32]
    else:
        cases, dtypes = CUDA_CASES, [torch.bfloat16, torch.float32]
    bandwidth = copy_bandwidth(device, args_.repeats) if device.type == "cuda" else None
    for batch, dim, state, length in cases:
        for dtype in dtypes:
            args = inputs(batch, dim, state, length, dtype, device)
            found = candidates(args, hf, device)
            check_same(found, args)
            grad = torch.randn(batch, dim, length, device=device).to(dtype)
            label = f"batch {batch}, dim {dim}, state {state}"
            for name, fn in found.items():
                slow = name in ("transformers fallback", "reference") and (device.type == "cuda" or length > 256)
                repeats = 3 if slow else args_.repeats
                baseline = "chunked" if name != "chunked" else "reference"
                base = found[baseline]
                with torch.no_grad():
                    fwd = bench.compare(lambda: fn(**args), lambda: base(**args), repeats=repeats, warmup=1,
                                        device=device, names=(name, baseline))
                both = bench.compare(forward_backward(fn, args, grad), forward_backward(base, args, grad),
                                     repeats=repeats, warmup=1, device=device, names=(name, baseline))
                print(f"L={length} {str(dtype)[6:]} forward: {fwd}", flush=True)
                print(f"L={length} {str(dtype)[6:]} forward + backward: {both}", flush=True)
                row = [length, str(dtype).removeprefix("torch."), label, name,
                       round(fwd.a.median * 1e3, 2), round(both.a.median * 1e3, 2), baseline,
                       round(both.b.median * 1e3, 2), round(1 / both.speedup, 2)]
                if device.type == "cpu":
                    peak = bench.peak_memory(forward_backward(fn, args, grad), device=device)
                    row.append(round(peak / 2**20, 1))
                else:
                    moved = must_move(batch, dim, state, length, dtype, backward=True)
                    achieved = moved / both.a.median
                    row += [round(achieved / 1e9, 1), round(100 * achieved / bandwidth, 1)]
                rows.append(row)
    columns = ["length", "dtype", "shape", "candidate", "forward ms", "fwd+bwd ms", "baseline", "baseline fwd+bwd ms",
               "x baseline"]
    notes = [
        f"device: {device.type}; each time is the median of {args_.repeats} calls (3 for the reference loop and "
        f"transformers' fallback at lengths above 256, and for the reference on CUDA), alternated call by call with "
        f"the baseline's (companion.bench.compare); 'x baseline' = the candidate's forward + backward time over the "
        f"baseline's (below 1: faster than the baseline)",
        "every candidate computes the same y (checked before timing); forward + backward = y and the gradients "
        "of u, delta, A, B, C, D, z and delta_bias against a random upstream gradient",
    ]
    if device.type == "cpu":
        columns.append("fwd+bwd peak MiB")
        notes += [
            "peak MiB: the largest total of tensors allocated during one forward + backward call, beyond the "
            "inputs (companion.bench.peak_memory)",
            "transformers fallback: transformers.models.mamba.modeling_mamba.mamba_selective_scan's PyTorch body "
            "(mamba_ssm not installed; its hub-kernel wrapper bypassed through __wrapped__, nothing downloaded); "
            "its backward slices every step's decay out of a (batch, dim, length, state) tensor, and autograd "
            "gives each slice a zero-filled gradient as large as that tensor, so its backward grows as length^2",
            f"run with {torch.get_num_threads()} torch thread(s): the ratios are more trustworthy than the "
            f"absolute times; on the shared two-core machine, two threads waited on each other",
            "Triton kernels not timed: no CUDA GPU here (on the CPU they run only through Triton's interpreter, "
            "which checks correctness and is far too slow to time)",
        ]
    else:
        columns += ["GB/s (must move)", "% of copy bandwidth"]
        notes += [
            f"copy bandwidth measured here: {bandwidth / 1e9:.0f} GB/s (bytes read + written by a 1 GiB "
            f"tensor copy, median of {args_.repeats})",
            "GB/s (must move): the bytes a forward + backward pass must read and write at least (every input "
            "read once per pass, every output written once; the backward pass re-reads the inputs) over its time; "
            "the Triton kernels also write and read per-chunk states and partial gradients of B and C, not counted",
        ]
        if "triton" not in [r[3] for r in rows]:
            notes.append("Triton kernel not timed: triton is not installed, or TRITON_INTERPRET=1 was set")
    if load_before is not None:
        load_after = os.getloadavg()[0]
        notes.append(f"machine load (1-minute load average) {load_before:.1f} at the start and "
                     f"{load_after:.1f} at the end: {load_verdict([load_before, load_after])}")
    path = record("selective_scan", title="Selective scan (Mamba): chunked scan against the reference loop and "
                                          "transformers' fallback",
                  description=" ".join(__doc__.split("\n\n")[1].split()), columns=columns, rows=rows, notes=notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
