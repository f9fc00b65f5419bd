"""Rotary embeddings on queries and keys: the companion against transformers' apply_rotary_pos_emb.

Candidates, on the same inputs (q and k as views into one fused projection output, (batch, seq,
heads, head_dim), as the model's attention layer hands them over), each call alternated with
transformers' (companion.bench.compare): the companion's PyTorch reference
(companion.kernels.rotary with backend="reference"), transformers' apply_rotary_pos_emb (Llama),
and on CUDA the companion's Triton kernel (backend="triton": one launch for q and k). Each for the
forward pass alone and for forward plus backward (gradients of q and k). On the CPU the Triton
kernel is not timed: it runs there only through Triton's interpreter, which is for correctness.

    python benchmarks/rotary.py [--repeats 15] [--rounds 3] [--threads N]

Runs on the best device available (CUDA if present). Writes benchmarks/results/rotary-*.json and .md.
"""

from __future__ import annotations

import argparse
import os

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from companion import bench, seed_everything
from companion.device import triton_installed, triton_interpreter
from companion.kernels import rotary
from companion.nn.positions import RotaryEmbedding

from record import load_verdict, record

# (batch, seq, q_heads, kv_heads, head_dim): Llama-style grouped-query heads
SHAPES = {
    "cpu": [(1, 512, 8, 2, 64), (4, 1024, 8, 2, 64), (2, 512, 12, 4, 96)],
    "cuda": [(1, 4096, 32, 8, 128), (8, 4096, 32, 8, 128), (4, 2048, 40, 8, 80)],
}


def fused_heads(batch, seq, q_heads, kv_heads, head_dim, dtype, device):
    """q and k as views into one (batch, seq, q_heads + 2 kv_heads, head_dim) projection output."""
    qkv = torch.randn(batch, seq, q_heads + 2 * kv_heads, head_dim, dtype=dtype, device=device)
    return qkv[:, :, :q_heads], qkv[:, :, q_heads:q_heads + kv_heads]


def candidates(q, k, cos, sin):
    """name -> fn(q, k) -> (q_rot, k_rot); transformers gets its tables in q's dtype, as its Llama does."""
    cos_hf, sin_hf = cos.to(q.dtype)[None], sin.to(q.dtype)[None]  # (1, seq, head_dim)
    found = {
        "companion": lambda q, k: rotary(q, k, cos, sin, backend="reference"),
        "transformers": lambda q, k: apply_rotary_pos_emb(q, k, cos_hf, sin_hf, unsqueeze_dim=2),
    }
    if q.is_cuda and triton_installed() and not triton_interpreter():  # the interpreter is not timed
        found["triton"] = lambda q, k: rotary(q, k, cos, sin, backend="triton")
    return found


def forward(fn, q, k):
    def call():
        with torch.no_grad():
            return fn(q, k)
    return call


def forward_backward(fn, q, k):
    """Forward and the gradients of q and k (views of a fused projection, as in the model)."""
    qkv = q._base.detach().requires_grad_(True)  # both are views of this one tensor
    q_heads, kv_heads = q.shape[2], k.shape[2]
    q_view, k_view = qkv[:, :, :q_heads], qkv[:, :, q_heads:q_heads + kv_heads]
    grads = torch.randn_like(q), torch.randn_like(k)

    def call():
        outs = fn(q_view, k_view)
        return torch.autograd.grad(outs, (q_view, k_view), grads)
    return call


def check_same(found, q, k, dtype):
    """All candidates compute the same rotation (to the dtype's precision) before anything is timed."""
    expected = found["transformers"](q, k)
    # bfloat16: transformers multiplies in bfloat16 (several roundings), so only a wrong rotation,
    # off by order one, should stop the run
    tolerance = {} if dtype == torch.float32 else dict(atol=0.1, rtol=0.05)
    for name, fn in found.items():
        for got, e in zip(fn(q, k), expected):
            torch.testing.assert_close(got, e, **tolerance, msg=lambda m: f"{name}: {m}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3, help="independent comparisons; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and triton_interpreter():
        print("note: TRITON_INTERPRET=1 is set: the Triton kernel would run through the interpreter and "
              "is not timed; unset it to time the kernel", flush=True)
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    seed_everything(0)
    rows = []
    for batch, seq, q_heads, kv_heads, head_dim in SHAPES[device.type]:
        rope = RotaryEmbedding(head_dim).to(device)
        cos, sin = rope(torch.arange(seq, device=device))  # (seq, head_dim), float32
        for dtype in dtypes:
            q, k = fused_heads(batch, seq, q_heads, kv_heads, head_dim, dtype, device)
            found = candidates(q, k, cos, sin)
            check_same(found, q, k, dtype)
            # bytes that must move at least: read q and k, write q_rot and k_rot (tables are small)
            moved = 2 * (q.numel() + k.numel()) * q.element_size()
            for label, make, factor in (("forward", forward, 1), ("forward + backward", forward_backward, 2)):
                timed = {}
                for name in [n for n in found if n != "transformers"]:
                    rounds = [bench.compare(make(found[name], q, k), make(found["transformers"], q, k),
                                            repeats=args.repeats, warmup=3, device=device,
                                            names=(name, "transformers")) for _ in range(args.rounds)]
                    timed[name] = sorted(rounds, key=lambda c: c.speedup)[len(rounds) // 2]
                    print(f"{label}, {str(dtype)[6:]}, {(batch, seq, q_heads, kv_heads, head_dim)}: "
                          f"{timed[name]}", flush=True)
                ours = timed["companion"]
                triton_cmp = timed.get("triton")
                best = min([c.a.median for c in timed.values()] + [ours.b.median])
                rows.append([
                    label, str(dtype).removeprefix("torch."),
                    f"{batch}x{seq}, {q_heads}/{kv_heads} heads, d {head_dim}",
                    round(ours.a.median * 1e3, 3), round(ours.b.median * 1e3, 3), round(ours.speedup, 2),
                    round(triton_cmp.a.median * 1e3, 3) if triton_cmp else f"not timed ({device.type})",
                    round(triton_cmp.speedup, 2) if triton_cmp else "-",
                    round(factor * moved / best / 1e9, 1),
                ])
    notes = [
        f"device: {device.type}; each time is the median of {args.repeats} calls alternated with transformers' "
        f"(companion.bench.compare), the round with the median speedup of {args.rounds}; speedup = "
        f"transformers' time / the candidate's (above 1: faster than transformers)",
        "q and k are views into one fused projection output (batch, seq, q_heads + 2 kv_heads, head_dim); "
        "cos and sin are float32 (seq, head_dim) tables; transformers gets them in q's dtype, as its Llama "
        "does, and multiplies in that dtype, where the companion computes in float32 and rounds once",
        "GB/s: the fastest candidate's bytes that must move (read q and k, write the rotated q and k; "
        "twice that with the backward pass) per second",
    ]
    if load_before is not None:
        load_after = os.getloadavg()[0]
        notes.append(f"machine load (1-minute load average) {load_before:.1f} at the start and "
                     f"{load_after:.1f} at the end: {load_verdict([load_before, load_after])}")
    if device.type == "cuda" and "triton" not in found:
        notes.append("Triton kernel not timed: triton is not installed, or TRITON_INTERPRET=1 was set")
    if device.type == "cpu":
        notes.append("Triton kernel not timed: no CUDA GPU here (on the CPU it runs only through Triton's "
                     "interpreter, which checks correctness and is far too slow to time)")
    path = record("rotary", title="Rotary embeddings: companion against transformers' apply_rotary_pos_emb",
                  description=" ".join(__doc__.split("\n\n")[1].split()),
                  columns=["pass", "dtype", "shape", "companion ms", "transformers ms", "speedup",
                           "triton ms", "triton speedup", "GB/s (fastest)"],
                  rows=rows, notes=notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
