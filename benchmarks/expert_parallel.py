"""Expert parallelism on two processes: the sharded layer checked against the single-process one, its bytes counted.

Every rank builds the same seeded MoE layer (companion.nn.MoE) and keeps half of its experts
(companion.nn.expert_parallel.ExpertParallelMoE); each routes its own tokens with the replicated
router, and tokens travel to their experts and back by all-to-all (torch.distributed.all_to_all_single
with split sizes; gloo on CPUs, NCCL on GPUs). The check: the outputs, the gradients of every rank's
inputs, of the local experts' weights, and of the router and shared experts (summed over ranks),
gathered on rank 0, equal the single-process layer's on all tokens with the full weights (24 + 5 r
tokens on rank r), in float64 and float32, for a Mixtral-style layer (softmax top-2) and a
DeepSeek-V3-style one (sigmoid scores, selection bias, group-limited, shared expert). The table: the
bytes each rank sends and receives in one training step (forward: dispatch rows, combine rows,
expert counts; backward: the rows again), for several expert counts and token counts.

    torchrun --nproc_per_node=2 benchmarks/expert_parallel.py [--device auto|cpu|cuda]
        [--experts 4 8 16 32 64] [--tokens 128 512 2048] [--json PATH] [--no-record] [--timeout 60]
    python benchmarks/expert_parallel.py [--nproc 2] [same options]   (launches the line above itself)

Runs on CUDA when every rank can have its own GPU (NCCL), else on the CPU (gloo). Rank 0 writes
benchmarks/results/expert_parallel-*.json and .md (unless --no-record) and, with --json, the
checks and every rank's byte counts. Exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys

import torch
import torch.distributed as dist

from companion.nn import MoE, MoEShape
from companion.nn.expert_parallel import ExpertParallelMoE, backend_for

WIDTH, HIDDEN, TOP_K = 64, 64, 2      # the byte table's layer: rows are WIDTH float32 values
CHECKS = {
    "mixtral": dict(top_k=2),
    "deepseek": dict(top_k=2, n_shared_experts=1, scoring_func="sigmoid", score_correction_bias=True,
                     n_group=2, topk_group=1, routed_scaling_factor=2.5),
}


def build(experts: int, tokens: list[int], *, width: int = 8, hidden: int = 12, seed: int = 0,
          dtype: torch.dtype = torch.float64, top_k: int = 2, **policy) -> tuple[MoE, list, list]:
    """A seeded ``MoE(width, MoEShape(experts, top_k, hidden, **policy))`` and, for each rank ``r``,
    its tokens ``(tokens[r], width)`` and the gradient of its output (the same on every rank)."""
    generator = torch.Generator().manual_seed(seed)
    layer = MoE(width, MoEShape(experts, top_k, hidden, **policy))
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * width ** -0.5)
        if layer.e_score_correction_bias is not None:
            layer.e_score_correction_bias.copy_(torch.randn(experts, generator=generator) * 0.1)
    inputs = [torch.randn(n, width, generator=generator, dtype=torch.float64).to(dtype) for n in tokens]
    grads = [torch.randn(n, width, generator=generator, dtype=torch.float64).to(dtype) for n in tokens]
    return layer.to(dtype), inputs, grads


def gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (first dimensions may differ between ranks), on every rank."""
    world = dist.get_world_size()
    lengths = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world)]
    dist.all_gather(lengths, torch.tensor([tensor.shape[0]], device=tensor.device))
    longest = max(int(n) for n in lengths)
    padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    found = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(found, padded.contiguous())
    return [t[:int(n)] for t, n in zip(found, lengths)]


def step(layer: MoE, inputs: list, grads: list, device: torch.device) -> tuple[ExpertParallelMoE, dict]:
    """One forward and backward of the sharded layer on this rank's tokens; its tensors, gathered."""
    rank = dist.get_rank()
    sharded = ExpertParallelMoE(layer, None).to(device)
    x = inputs[rank].to(device).detach().requires_grad_(True)
    y = sharded(x)
    y.backward(grads[rank].to(device))
    sharded.reduce_replicated_grads()
    found = {"output": gather(y.detach()), "input grad": gather(x.grad)}
    for name in ("gate_proj", "up_proj", "down_proj"):
        found[f"{name} grad"] = gather(getattr(sharded, name).grad)
    found["router grad"] = [sharded.router.weight.grad]
    if sharded.shared is not None:
        found["shared grad"] = [torch.cat([p.grad.reshape(-1) for p in sharded.shared.parameters()])]
    return sharded, found


def check(name: str, dtype: torch.dtype, device: torch.device, tokens: list[int]) -> dict:
    """The sharded layer against the single-process layer (run on rank 0 with the full weights)."""
    layer, inputs, grads = build(4, tokens, dtype=dtype, **CHECKS[name])
    sharded, found = step(layer, inputs, grads, device)
    result = {"name": name, "dtype": str(dtype).removeprefix("torch."), "tokens": tokens, "errors": {}, "ok": True}
    if dist.get_rank() == 0:
        full = layer.to(device)
        x = torch.cat(inputs).to(device).detach().requires_grad_(True)
        y = full(x)
        y.backward(torch.cat(grads).to(device))
        expected = {"output": y.detach(), "input grad": x.grad, "gate_proj grad": full.gate_proj.grad,
                    "up_proj grad": full.up_proj.grad, "down_proj grad": full.down_proj.grad,
                    "router grad": full.router.weight.grad}
        if full.shared is not None:
            expected["shared grad"] = torch.cat([p.grad.reshape(-1) for p in full.shared.parameters()])
        tolerance = {} if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
        for key, want in expected.items():
            got = torch.cat(found[key])
            result["errors"][key] = float((got - want).abs().max())
            try:
                torch.testing.assert_close(got, want, **tolerance)
            except AssertionError as error:
                result["ok"] = False
                print(f"rank 0: {name} {dtype} {key} differs: {error}", file=sys.stderr, flush=True)
    flag = torch.tensor([int(result["ok"])], device=device)
    dist.broadcast(flag, 0)
    result["ok"] = bool(flag.item())
    result["bytes"] = all_ranks(sharded.last_bytes.as_dict())
    return result


def all_ranks(value):
    """Every rank's (picklable) ``value``, in rank order."""
    found = [None] * dist.get_world_size()
    dist.all_gather_object(found, value)
    return found


def byte_setup(experts: int, tokens: int, world: int) -> tuple[MoE, list, list]:
    """The float32 layer and inputs of the byte table's row for ``experts`` and ``tokens`` per rank."""
    return build(experts, [tokens] * world, width=WIDTH, hidden=HIDDEN, top_k=TOP_K, dtype=torch.float32,
                 seed=experts * 1000 + tokens)


def measure(experts: int, tokens: int, device: torch.device) -> dict:
    """Bytes of one training step (forward and backward) of a float32 layer with ``tokens`` per rank."""
    layer, inputs, grads = byte_setup(experts, tokens, dist.get_world_size())
    sharded, _ = step(layer, inputs, grads, device)
    return {"experts": experts, "tokens": tokens, "top_k": TOP_K, "width": WIDTH, "element_size": 4,
            "per_rank": all_ranks(sharded.last_bytes.as_dict())}


def table_row(m: dict, world: int) -> list:
    ranks = m["per_rank"]
    mean = lambda key: round(sum(r[key] for r in ranks) / world)  # noqa: E731
    off_rank = round(sum(sum(r["rows_sent"]) - r["local_rows"] for r in ranks) / world)
    balanced = round(2 * m["tokens"] * m["top_k"] * (world - 1) / world * m["width"] * m["element_size"]
                     + (world - 1) * (m["experts"] // world) * 8)
    return [m["experts"], m["experts"] // world, m["tokens"], m["tokens"] * m["top_k"], off_rank,
            mean("dispatch_sent"), mean("counts_sent"), mean("sent"),
            mean("backward_sent"), mean("sent") + mean("backward_sent"), balanced,
            round(mean("sent") / balanced, 3) if balanced else "-"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--experts", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 512, 2048], help="tokens per rank")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="rank 0 writes checks and bytes here")
    parser.add_argument("--no-record", action="store_true", help="do not write benchmarks/results")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds any collective may wait")
    parser.add_argument("--nproc", type=int, default=2, help="processes, when started without torchrun")
    args = parser.parse_args()
    if "LOCAL_RANK" not in os.environ:                       # not under torchrun: start it, on this script
        launch(args.nproc, args.timeout)

    local_rank, world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", world))         # NCCL: one GPU per rank
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()
                                         and torch.cuda.device_count() >= ranks_here)
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    backend = backend_for(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.timeout))
    rank = dist.get_rank()
    try:
        checks = []
        for name in CHECKS:
            for dtype in (torch.float64, torch.float32):
                checks.append(check(name, dtype, device, [24 + 5 * r for r in range(world)]))
                if rank == 0:
                    c = checks[-1]
                    print(f"{name} {c['dtype']}: {'equal' if c['ok'] else 'DIFFERENT'} to the single-process "
                          f"layer (largest error {max(c['errors'].values()):.2e})", flush=True)
        measured = [measure(e, t, device) for e in args.experts for t in args.tokens if e % world == 0]
        rows = [table_row(m, world) for m in measured]
        if rank == 0:
            for row in rows:
                print(row, flush=True)
            if args.json is not None:
                args.json.write_text(json.dumps({"world": world, "backend": backend, "device": device.type,
                                                 "checks": checks, "bytes": measured}, indent=1))
            if not args.no_record:
                record_table(rows, world, backend, checks)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if not all(c["ok"] for c in checks):
        sys.exit(1)


def launch(nproc: int, timeout: float) -> None:
    """Run this script under ``torchrun --standalone --nproc_per_node=nproc`` (a free port, a time limit), then exit."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *sys.argv]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    root = str(pathlib.Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    sys.exit(subprocess.run(command, env=env, timeout=20 * timeout).returncode)


def record_table(rows: list, world: int, backend: str, checks: list) -> None:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from record import record   # benchmarks/record.py: imported here so that tests can import this file

    worst = max(max(c["errors"].values()) for c in checks)
    notes = [
        f"{world} processes ({backend}), experts split evenly (E / {world} each); a layer of width {WIDTH} in "
        f"float32 (a row is {WIDTH * 4} bytes), softmax top-{TOP_K} routing with a random router, the same "
        f"number of tokens on every rank",
        "bytes sent to the other ranks only: rows a rank routes to its own experts are copied, not sent; "
        "forward = dispatch rows + combine rows (the same number of rows as the others dispatched to this "
        "rank) + the exchange of int64 counts ((P - 1) x E/P x 8 bytes); backward = the rows again, mirrored; "
        "received = sent on average over the ranks",
        f"balanced prediction: every rank sends T k (P - 1)/P rows and gets as many back: 2 T k (P - 1)/P x "
        f"{WIDTH} x 4 + (P - 1) E/P x 8 bytes per forward call; the rows do not depend on the number of experts",
        f"checked first: outputs and gradients (inputs, local experts, router and shared experts summed over "
        f"ranks) equal the single-process layer's in float64 and float32 (largest difference {worst:.1e})",
        "bytes in bfloat16 are half the row bytes above; a model with L MoE layers moves L times as much per step",
    ]
    path = record("expert_parallel", title="Expert parallelism: bytes moved by the all-to-all per rank and step",
                  description=" ".join(__doc__.split("\n\n")[1].split()),
                  columns=["experts E", "experts per rank", "tokens per rank T", "assignments T k",
                           "rows sent off-rank", "dispatch bytes sent", "count bytes sent", "forward bytes sent",
                           "backward bytes sent", "step bytes sent",
                           "balanced forward prediction", "forward / prediction"],
                  rows=rows, notes=notes)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
