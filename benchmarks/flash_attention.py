"""FlashAttention-2 in Triton: the companion's kernel against PyTorch's own FlashAttention (SDPA).

Candidates, on the same bfloat16 inputs (batch, heads, seq, head_dim): the companion's Triton
kernel (companion.kernels.attention with backend="triton") and torch's
scaled_dot_product_attention restricted to its FlashAttention-2 backend
(torch.nn.attention.sdpa_kernel(SDPBackend.FLASH_ATTENTION)), timed alternately call by call
(companion.bench.compare), for the forward pass alone and for forward plus backward, with and
without the causal mask, head dims 64 and 128, sequences of 1k to 16k tokens. As in the
FlashAttention-2 paper (Dao 2023, section 4.1), batch x seq = 16k tokens and heads x head_dim =
2048. Before anything is timed, each size checks that both compute the same output and gradients.
Throughput is in TFLOP/s beside the card's dense bfloat16 matmul peak as measured here (a large
torch.matmul), not the datasheet's.

    python benchmarks/flash_attention.py [--repeats 10] [--max-seq 16384]

Needs a CUDA GPU and triton (without TRITON_INTERPRET=1); elsewhere it says so and exits without
writing anything. Writes benchmarks/results/flash_attention-*.json and .md.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from companion import bench, seed_everything
from companion.device import triton_installed, triton_interpreter
from companion.kernels import attention

from record import record

TOKENS = 16 * 1024  # batch x seq
WIDTH = 2048  # heads x head_dim
SEQ_LENS = [1024, 2048, 4096, 8192, 16384]
HEAD_DIMS = [64, 128]
# forward plus backward counted as 3.5 times the forward pass: the backward pass's five matmuls
# (dV, dP, dQ, dK and the recomputed S) against the forward's two, as FlashAttention-2 counts;
# the work a kernel repeats beyond that (our dQ kernel recomputes S and dP) is not counted
BACKWARD_FACTOR = 3.5


def why_not_runnable() -> str | None:
    if not torch.cuda.is_available():
        return "this benchmark needs a CUDA GPU (none found): nothing measured, nothing written"
    if not triton_installed():
        return "this benchmark needs triton, which is not installed: nothing measured, nothing written"
    if triton_interpreter():
        return ("TRITON_INTERPRET=1 is set: the kernel would run through Triton's interpreter; unset it "
                "to time the kernel. Nothing measured, nothing written")
    return None


def matmul_peak(device, repeats: int) -> float:
    """FLOP/s of a dense bfloat16 8192^3 matmul on this card (the median of ``repeats`` calls)."""
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    timing = bench.time_call(lambda: a @ b, repeats=repeats, warmup=3, device=device)
    return bench.matmul_flops(n, n, n) / timing.median


def triton_attention(q, k, v, causal):
    return attention(q, k, v, causal=causal, backend="triton")


def sdpa_flash(q, k, v, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises rather than fall back to another backend
        # seq_q == seq_k: SDPA's top-left is_causal equals the companion's bottom-right causal
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def forward(fn, q, k, v, causal):
    def call():
        with torch.no_grad():
            return fn(q, k, v, causal)
    return call


def forward_backward(fn, q, k, v, causal, grad):
    def call():
        out = fn(q, k, v, causal)
        return torch.autograd.grad(out, (q, k, v), grad)
    return call


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``||got - expected|| / ||expected||`` in float32 (Frobenius norms)."""
    got, expected = got.float(), expected.float()
    return ((got - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def check_same(q, k, v, causal, grad) -> float:
    """Output and gradients of both candidates agree to bfloat16's precision: the largest relative
    error (norm of the difference over the norm of SDPA's), which must stay below 2%. Two correct
    bfloat16 implementations differ by a fraction of bfloat16's 0.8% step; a bug, by order one."""
    results = []
    for fn in (triton_attention, sdpa_flash):
        out = fn(q, k, v, causal)
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad)))
    worst = 0.0
    for name, got, expected in zip(("out", "dq", "dk", "dv"), *results):
        error = relative_error(got, expected)
        if not error < 0.02:
            raise AssertionError(f"triton and SDPA disagree on {name}: relative error {error:.3g} "
                                 f"(shape {tuple(q.shape)}, causal={causal})")
        worst = max(worst, error)
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--max-seq", type=int, default=SEQ_LENS[-1], help="longest sequence to time")
    args = parser.parse_args()
    reason = why_not_runnable()
    if reason is not None:
        print(reason)
        return 0
    device = torch.device("cuda")
    seed_everything(0)
    peak = matmul_peak(device, args.repeats)
    print(f"dense bfloat16 matmul: {peak / 1e12:.1f} TFLOP/s", flush=True)
    rows = []
    for head_dim in HEAD_DIMS:
        heads = WIDTH // head_dim
        for seq in [s for s in SEQ_LENS if s <= args.max_seq]:
            batch = TOKENS // seq
            q, k, v = (torch.randn(batch, heads, seq, head_dim, device=device, dtype=torch.bfloat16,
                                   requires_grad=True) for _ in range(3))
            grad = torch.randn_like(q)
            for causal in (False, True):
                error = check_same(q, k, v, causal, grad)
                flops = bench.attention_flops(batch, heads, seq, seq, head_dim, causal=causal)
                for label, make, factor in (("forward", forward, 1.0),
                                            ("forward + backward", forward_backward, BACKWARD_FACTOR)):
                    extra = () if make is forward else (grad,)
                    result = bench.compare(make(triton_attention, q, k, v, causal, *extra),
                                           make(sdpa_flash, q, k, v, causal, *extra),
                                           repeats=args.repeats, warmup=3, device=device,
                                           names=("triton", "sdpa flash"))
                    ours = factor * flops / result.a.median / 1e12
                    theirs = factor * flops / result.b.median / 1e12
                    print(f"{label}, d {head_dim}, seq {seq}, causal={causal}: {result}; "
                          f"{ours:.1f} vs {theirs:.1f} TFLOP/s", flush=True)
                    rows.append([label, head_dim, seq, f"{batch}x{heads}", "yes" if causal else "no",
                                 round(result.a.median * 1e3, 3), round(result.b.median * 1e3, 3),
                                 round(ours, 1), round(theirs, 1), round(100 * ours / (peak / 1e12), 1),
                                 round(result.speedup, 2), float(f"{error:.2g}")])
            del q, k, v, grad
            torch.cuda.empty_cache()
    notes = [
        f"device: {torch.cuda.get_device_name(device)}; dense bfloat16 matmul peak measured here: "
        f"{peak / 1e12:.1f} TFLOP/s (an 8192^3 torch.matmul, median of {args.repeats})",
        f"each time is the median of {args.repeats} calls alternated with SDPA's (companion.bench.compare); "
        "speedup = SDPA's time / triton's (above 1: the Triton kernel is faster)",
        "TFLOP/s: companion.bench.attention_flops (4 x head_dim FLOPs per (query, key) pair; causal "
        "counts only the pairs it keeps, about half) over the median time; forward + backward counts "
        f"{BACKWARD_FACTOR} times the forward FLOPs, as FlashAttention-2's paper does",
        "% peak: the Triton kernel's TFLOP/s over the measured matmul peak",
        "rel. error: the largest of ||triton - sdpa|| / ||sdpa|| over the output and the three "
        "gradients (bfloat16 inputs, random normal q, k, v and upstream gradient)",
        "the first calls (warm-up, not timed) include Triton's compilation and autotuning",
    ]
    path = record("flash_attention",
                  title="FlashAttention-2 in Triton against PyTorch's FlashAttention (SDPA), bfloat16",
                  description=" ".join(__doc__.split("\n\n")[1].split()),
                  columns=["pass", "head_dim", "seq", "batch x heads", "causal", "triton ms", "sdpa ms",
                           "triton TFLOP/s", "sdpa TFLOP/s", "% peak", "speedup", "rel. error"],
                  rows=rows, notes=notes)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
