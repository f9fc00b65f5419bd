"""Expert parallelism (companion.nn.expert_parallel): experts split over processes, tokens moved by all-to-all.

Single-process: the split sizes and the byte formula against hand counts; unsupported policies
raise; with a process group of one (gloo, in this process) the layer equals the MoE it was built
from, gradients included. Two processes: benchmarks/expert_parallel.py under torchrun (gloo, CPU,
OMP_NUM_THREADS=1, a timeout on every collective and on the whole run) checks outputs and gradients
against the single-process layer on rank 0, and its bytes per rank equal a hand count from each
rank's routing.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from companion.nn import MoE, MoEShape
from companion.nn.expert_parallel import (COUNT_BYTES, ExpertParallelMoE, backend_for, exchange_bytes,
                                          split_sizes)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "expert_parallel.py"


def load_script():
    """benchmarks/expert_parallel.py as a module (benchmarks/ is a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location("benchmark_expert_parallel", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------
# Split sizes and bytes, by hand
# ------------------------------------------------------------------------------------------------

def test_split_sizes_by_hand():
    expert = torch.tensor([3, 0, 1, 3, 2, 0, 3])
    per_expert, per_rank = split_sizes(expert, 4, 2)        # rank 0: experts 0, 1; rank 1: experts 2, 3
    assert per_expert.tolist() == [2, 1, 1, 3]
    assert per_rank.tolist() == [3, 4]
    assert split_sizes(expert, 4, 4)[1].tolist() == [2, 1, 1, 3]
    assert split_sizes(expert, 4, 1)[1].tolist() == [7]
    assert split_sizes(torch.zeros(0, dtype=torch.long), 4, 2)[1].tolist() == [0, 0]


@pytest.mark.parametrize("args", [(torch.tensor([0, 1]), 4, 3), (torch.tensor([0, 4]), 4, 2),
                                  (torch.tensor([0.0]), 4, 2), (torch.tensor([-1]), 4, 2)])
def test_split_sizes_rejects(args):
    with pytest.raises(ValueError):
        split_sizes(*args)


def test_exchange_bytes_by_hand():
    # rank 0 of 2 sends 7 rows to rank 1 (5 stay), receives 3 from rank 1; rows of 16 float32 = 64 bytes
    b = exchange_bytes([5, 7], [5, 3], rank=0, width=16, element_size=4, local_experts=2)
    assert (b.dispatch_sent, b.dispatch_received) == (7 * 64, 3 * 64)
    assert (b.combine_sent, b.combine_received) == (3 * 64, 7 * 64)
    assert b.counts_sent == b.counts_received == 1 * 2 * 8
    assert b.sent == b.received == 7 * 64 + 3 * 64 + 16
    assert b.local_rows == 5 and b.backward_sent == 0
    # rank 1 of 3, 4 experts each: sends 2 + 4 rows away, gets 1 + 6; rows of 8 bfloat16 = 16 bytes
    b = exchange_bytes([2, 9, 4], [1, 9, 6], rank=1, width=8, element_size=2, local_experts=4)
    assert b.sent == (2 + 4) * 16 + (1 + 6) * 16 + 2 * 4 * COUNT_BYTES
    assert b.received == b.sent and COUNT_BYTES == 8
    assert b.as_dict()["sent"] == b.sent


@pytest.mark.parametrize("args", [([1, 2], [1], 0), ([1, 2], [1, 2], 2), ([-1, 2], [1, 2], 0)])
def test_exchange_bytes_rejects(args):
    with pytest.raises(ValueError):
        exchange_bytes(*args, width=4, element_size=4, local_experts=1)


def test_backend_for():
    assert backend_for("cpu") == "gloo"
    assert backend_for(torch.device("cuda", 1)) == "nccl"


@pytest.mark.parametrize("policy", [dict(routing="expert_choice"), dict(capacity_factor=1.25)])
def test_unsupported_policies_raise(policy):
    with pytest.raises(ValueError, match="not supported|only token-choice"):
        ExpertParallelMoE(MoE(8, MoEShape(4, 2, 8, **policy)))


# ------------------------------------------------------------------------------------------------
# One process: a group of one is the layer itself
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def group_of_one():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_group_of_one_equals_layer(group_of_one):
    script = load_script()
    layer, (x,), (grad,) = script.build(4, [19], **script.CHECKS["deepseek"])
    sharded = ExpertParallelMoE(layer)
    assert sharded.local_experts == 4 and sharded.first_expert == 0
    ours = x.clone().requires_grad_(True)
    theirs = x.clone().requires_grad_(True)
    y = sharded(ours)
    y.backward(grad)
    expected = layer(theirs)
    expected.backward(grad)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(ours.grad, theirs.grad)
    for name in ("gate_proj", "up_proj", "down_proj"):
        torch.testing.assert_close(getattr(sharded, name).grad, getattr(layer, name).grad)
    torch.testing.assert_close(sharded.router.weight.grad, layer.router.weight.grad)
    torch.testing.assert_close(sharded.aux_loss, layer.aux_loss)
    b = sharded.last_bytes
    assert b.rows_sent == b.rows_received == (19 * 2,) and b.sent == b.received == 0
    assert b.backward_sent == 0


# ------------------------------------------------------------------------------------------------
# Two processes under torchrun
# ------------------------------------------------------------------------------------------------

EXPERTS, TOKENS = (4, 8), (16, 40)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """benchmarks/expert_parallel.py on 2 CPU processes (gloo); its JSON (rank 0)."""
    out = tmp_path_factory.mktemp("expert_parallel") / "result.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(SCRIPT), "--device", "cpu", "--no-record", "--timeout", "30", "--json", str(out),
               "--experts", *map(str, EXPERTS), "--tokens", *map(str, TOKENS)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)     # its own group: killed whole on timeout
    try:
        log, _ = process.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        log, _ = process.communicate()
        pytest.fail(f"torchrun did not finish in 150 s:\n{log[-4000:]}")
    assert process.returncode == 0, f"torchrun failed ({process.returncode}):\n{log[-4000:]}"
    return json.loads(out.read_text())


def hand_count(layer: MoE, inputs: list, width: int, element_size: int) -> list[dict]:
    """Each rank's bytes, counted from its routing: rows to rank s are assignments to experts of rank s."""
    world, experts = len(inputs), layer.shape.n_routed_experts
    local = experts // world
    with torch.no_grad():
        to = [[int(((layer.route(x).expert // local) == s).sum()) for s in range(world)] for x in inputs]
    found = []
    for r in range(world):
        rows_out = sum(to[r][s] for s in range(world) if s != r)          # dispatched away, and returned
        rows_in = sum(to[s][r] for s in range(world) if s != r)           # received, and sent back
        rows = (rows_out + rows_in) * width * element_size
        found.append({"rows_sent": to[r], "rows_received": [to[s][r] for s in range(world)],
                      "sent": rows + (world - 1) * local * 8, "backward_sent": rows})
    return found


def test_two_processes_equal_single_process(two_processes):
    assert two_processes["world"] == 2 and two_processes["backend"] == "gloo"
    checks = two_processes["checks"]
    assert {(c["name"], c["dtype"]) for c in checks} == {(n, d) for n in ("mixtral", "deepseek")
                                                        for d in ("float64", "float32")}
    for c in checks:
        assert c["ok"], c
        assert c["tokens"] == [24, 29]                                    # uneven: 24 tokens on rank 0, 29 on 1
        keys = {"output", "input grad", "gate_proj grad", "up_proj grad", "down_proj grad", "router grad"}
        assert keys | ({"shared grad"} if c["name"] == "deepseek" else set()) == set(c["errors"])
        limit = 1e-12 if c["dtype"] == "float64" else 1e-4
        assert max(c["errors"].values()) < limit, c["errors"]


def test_two_processes_bytes_match_hand_count(two_processes):
    script = load_script()
    measured = two_processes["bytes"]
    assert [(m["experts"], m["tokens"]) for m in measured] == [(e, t) for e in EXPERTS for t in TOKENS]
    for m in measured:
        layer, inputs, _ = script.byte_setup(m["experts"], m["tokens"], 2)
        for got, want in zip(m["per_rank"], hand_count(layer, inputs, script.WIDTH, 4)):
            assert got["rows_sent"] == want["rows_sent"] and got["rows_received"] == want["rows_received"]
            assert got["sent"] == got["received"] == want["sent"], (m["experts"], m["tokens"], got, want)
            assert got["backward_sent"] == got["backward_received"] == want["backward_sent"]
            assert sum(got["rows_sent"]) == m["tokens"] * m["top_k"]      # every assignment goes somewhere
    for c in two_processes["checks"]:                                     # uneven tokens, float64 and float32
        layer, inputs, _ = script.build(4, c["tokens"], dtype=getattr(torch, c["dtype"]), **script.CHECKS[c["name"]])
        element_size = 8 if c["dtype"] == "float64" else 4
        for got, want in zip(c["bytes"], hand_count(layer, inputs, 8, element_size)):
            assert got["sent"] == want["sent"] and got["backward_sent"] == want["backward_sent"]
