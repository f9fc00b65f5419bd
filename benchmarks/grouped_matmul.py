"""Grouped matrix multiply for mixture-of-experts: one grouped product against a loop over tokens.

A mixture-of-experts layer multiplies each token by the weight of each expert the router chose for
it. Candidates, on the same routed tokens (each token routed to its top-k of `experts` experts by a
random router, so that the experts' loads are uneven, as they are in practice), each timed
alternately with a dense matmul of the same FLOPs (companion.bench.compare): the per-token loop of
textbook MoE pseudo-code (for every token, for every chosen expert, a vector-matrix product, added
into the token's output), the companion's grouped matmul on rows already sorted by expert
(companion.kernels.grouped_matmul, backend="reference": one matmul per expert), the same with the
dispatch around it (sort the routed rows by expert, grouped matmul, add each row back into its
token's output: what the loop computes), and on CUDA the Triton kernel (backend="triton"). The
dense matmul, (tokens * top_k, in) @ (in, out), does the same arithmetic with no grouping at all: a
ceiling for the grouped product. Forward pass, and forward plus backward for the grouped and dense
products.

    python benchmarks/grouped_matmul.py [--repeats 11] [--threads N]

Runs on the best device available (CUDA if present). Writes benchmarks/results/grouped_matmul-*.json
and .md.
"""

from __future__ import annotations

import argparse
import os

import torch

from companion import bench, seed_everything
from companion.device import triton_installed, triton_interpreter
from companion.kernels import grouped_matmul

from record import load_verdict, record

# (experts, tokens, top_k, in_features, out_features)
SHAPES = {
    "cpu": [(8, 1024, 1, 256, 512), (8, 1024, 2, 256, 512)],
    "cuda": [(8, 1024, 2, 256, 512), (8, 8192, 2, 2048, 4096), (64, 16384, 2, 1024, 2048)],
}
LOOP_LIMIT = 4096  # the per-token loop is timed only up to this many routed rows (one launch each)


def route(tokens, experts, top_k, device):
    """A random router's choices: ``(tokens, top_k)`` distinct experts per token, uneven loads."""
    logits = torch.randn(tokens, experts, device=device) + torch.randn(experts, device=device)
    return logits.topk(top_k, dim=-1).indices


def candidates(x, weight, chosen, device):
    """name -> (fn() -> y (tokens, out), needs the routed rows sorted). All compute the same y."""
    tokens, top_k = chosen.shape
    experts = weight.shape[0]
    flat = chosen.flatten()  # routed row r = token r // top_k, expert flat[r]
    order = flat.argsort(stable=True)
    sizes = torch.bincount(flat, minlength=experts)
    sorted_rows = x[order // top_k]  # the routed rows, sorted by expert
    chosen_list = chosen.tolist()

    def per_token_loop():
        y = torch.zeros(tokens, weight.shape[2], dtype=x.dtype, device=device)
        for t in range(tokens):
            for e in chosen_list[t]:
                y[t] += x[t] @ weight[e]
        return y

    def dispatched(backend):
        def call():
            # everything after the router: sort the routed rows by expert, count them, gather,
            # multiply, and add each row back into its token's output
            by_expert = flat.argsort(stable=True)
            counts = torch.bincount(flat, minlength=experts)
            row_token = by_expert // top_k
            rows = grouped_matmul(x[row_token], weight, counts, backend=backend)
            return torch.zeros(tokens, weight.shape[2], dtype=x.dtype, device=device).index_add_(
                0, row_token, rows)
        return call

    found = {}
    if tokens * top_k <= LOOP_LIMIT:
        found["per-token loop"] = per_token_loop
    found["sort + grouped (reference) + combine"] = dispatched("reference")
    found["grouped matmul (reference), rows sorted"] = (
        lambda: grouped_matmul(sorted_rows, weight, sizes, backend="reference"))
    if device.type == "cuda" and triton_installed() and not triton_interpreter():
        found["sort + grouped (triton) + combine"] = dispatched("triton")
        found["grouped matmul (triton), rows sorted"] = (
            lambda: grouped_matmul(sorted_rows, weight, sizes, backend="triton"))
    return found, sorted_rows, sizes


def check_same(found, x, weight, chosen):
    """Every candidate computes the MoE output (summed over each token's experts) before timing."""
    expected = torch.stack([sum(x[t].double() @ weight[e].double() for e in es)
                            for t, es in enumerate(chosen[:64].tolist())])  # the first 64 tokens
    tolerance = {} if x.dtype == torch.float32 else dict(atol=0.1, rtol=0.05)
    for name, fn in found.items():
        if "rows sorted" in name:
            continue  # per routed row, not per token: checked by tests/test_grouped_matmul.py
        torch.testing.assert_close(fn()[:64], expected.to(x.dtype), **tolerance,
                                   msg=lambda m, name=name: f"{name}: {m}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
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
    for experts, tokens, top_k, d_in, d_out in SHAPES[device.type]:
        chosen = route(tokens, experts, top_k, device)
        for dtype in dtypes:
            x = torch.randn(tokens, d_in, dtype=dtype, device=device)
            weight = (torch.randn(experts, d_in, d_out, device=device) / d_in ** 0.5).to(dtype)
            found, sorted_rows, sizes = candidates(x, weight, chosen, device)
            check_same(found, x, weight, chosen)
            dense_w = weight[0]
            flops = bench.matmul_flops(tokens * top_k, d_out, d_in)
            shape = (f"{experts} experts, {tokens} tokens, top-{top_k}, {d_in}->{d_out} "
                     f"(loads {min(sizes.tolist())}..{max(sizes.tolist())})")

            def dense():
                return sorted_rows @ dense_w

            for name, fn in found.items():
                repeats = 3 if name == "per-token loop" else args.repeats
                with torch.no_grad():
                    cmp = bench.compare(fn, dense, repeats=repeats, warmup=1, device=device,
                                        names=(name, "dense"))
                print(f"forward, {str(dtype)[6:]}, {shape}: {cmp}", flush=True)
                rows.append(["forward", str(dtype).removeprefix("torch."), shape, name,
                             round(cmp.a.median * 1e3, 3), round(flops / cmp.a.median / 1e9, 1),
                             round(cmp.b.median * 1e3, 3), round(1 / cmp.speedup, 2)])

            # forward + backward (gradients of the rows and of the weights), grouped against dense
            grad = torch.randn(tokens * top_k, d_out, dtype=dtype, device=device)
            leaf_x = sorted_rows.detach().requires_grad_(True)
            leaf_w = weight.detach().requires_grad_(True)
            leaf_dense = dense_w.detach().requires_grad_(True)

            def dense_fb():
                return torch.autograd.grad(leaf_x @ leaf_dense, (leaf_x, leaf_dense), grad)

            backends = ["reference"] + (["triton"] if any("triton" in n for n in found) else [])
            for backend in backends:
                def grouped_fb(backend=backend):
                    return torch.autograd.grad(grouped_matmul(leaf_x, leaf_w, sizes, backend=backend),
                                               (leaf_x, leaf_w), grad)
                name = f"grouped matmul ({backend}), rows sorted"
                cmp = bench.compare(grouped_fb, dense_fb, repeats=args.repeats, warmup=1, device=device,
                                    names=(name, "dense"))
                print(f"forward + backward, {str(dtype)[6:]}, {shape}: {cmp}", flush=True)
                rows.append(["forward + backward", str(dtype).removeprefix("torch."), shape, name,
                             round(cmp.a.median * 1e3, 3), round(3 * flops / cmp.a.median / 1e9, 1),
                             round(cmp.b.median * 1e3, 3), round(1 / cmp.speedup, 2)])
    notes = [
        f"device: {device.type}; each time is the median of {args.repeats} calls (3 for the per-token loop) "
        f"alternated with the dense matmul's (companion.bench.compare); 'x dense' = the candidate's time / "
        f"the dense matmul's (1: as fast as one dense matmul of the same FLOPs; above 1: slower)",
        "routing: each token's top-k experts under random logits plus a random per-expert bias, so the "
        "experts' loads are uneven (the range is in the shape column); the same routing for every candidate",
        "GFLOP/s: 2 * tokens * top_k * in * out FLOPs per forward pass (three times that with the backward "
        "pass: dx and dweight) per second; the dispatch rows also sort, gather and scatter-add, "
        "which do no FLOPs but take time",
        "dense: (tokens * top_k, in) @ (in, out) with one expert's weight for every row: the same "
        "arithmetic without grouping",
    ]
    if load_before is not None:
        load_after = os.getloadavg()[0]
        notes.append(f"machine load (1-minute load average) {load_before:.1f} at the start and "
                     f"{load_after:.1f} at the end: {load_verdict([load_before, load_after])}")
    if device.type == "cpu":
        notes.append(f"run with {torch.get_num_threads()} torch thread(s): the ratios are more trustworthy than "
                     f"the absolute times. On the recorded "
                     f"two-core machine, under a load average near 5, two torch threads waited on each other "
                     f"and one call's time swung by up to 10x; hence --threads 1")
        notes.append("Triton kernel not timed: no CUDA GPU here (on the CPU it runs only through Triton's "
                     "interpreter, which checks correctness and is far too slow to time)")
    elif not any("triton" in r[3] for r in rows):
        notes.append("Triton kernel not timed: triton is not installed, or TRITON_INTERPRET=1 was set")
    path = record("grouped_matmul", title="Grouped matmul for mixture-of-experts: against a per-token loop "
                                          "and a dense matmul",
                  description=" ".join(__doc__.split("\n\n")[1].split()),
                  columns=["pass", "dtype", "shape", "candidate", "ms", "GFLOP/s", "dense ms", "x dense"],
                  rows=rows, notes=notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
