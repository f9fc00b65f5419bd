"""The companion's Mamba against transformers' Mamba (its PyTorch fallback), same weights, on this machine.

A 2-layer Mamba of width 256 (state 16, expand 2: d_inner 512, convolution kernel 4, dt_rank 16,
vocabulary 1024, untied output layer) is built by transformers (MambaForCausalLM, its own random
initialisation, every 1-D parameter then moved by noise so that a swapped or lost one shows) and
converted with companion.models.from_hf, so both hold the same weights. Without mamba_ssm and
causal_conv1d, transformers runs its PyTorch fallback: the whole sequence's decays and inputs
precomputed as (batch, d_inner, length, state) tensors, then a Python loop over time, autograd
through it. The companion runs its chunked selective scan (companion.kernels.selective_scan,
backend "auto" = "chunked" on the CPU: a loop over time inside chunks of 16 positions, a
written-out backward). Before anything is timed the script checks that both give the same logits
and loss, and the same gradient for every weight (transformers' parameter names, mapped to the
companion's). Then, each measurement alternating the two call by call (companion.bench.compare):
a training step on 2 sequences of 512 tokens (forward, cross-entropy loss, backward); the forward
alone (no gradients); and one Mamba layer alone (layer 0's mixer, forward and backward, same input
and weights). torch.profiler then says where the companion's training step spends its time.

Goal from the project's issue (issue 7): on this CPU, a training step (forward + backward) of a
2-layer, width-256 Mamba at 512 tokens at least 10x faster than transformers' fallback path on the
same weights (speedup = transformers' time / the companion's).

transformers is kept on its PyTorch path on every machine: the module-level functions of
transformers.models.mamba.modeling_mamba that it may route to mamba_ssm, causal_conv1d or hub
kernels (causal_conv1d_fn, causal_conv1d_update, mamba_inner_fn, mamba_selective_scan,
mamba_selective_state_update) are replaced by the torch functions they wrap (inspect.unwrap), as
tests/test_from_hf_mamba.py does; the model is built from a config, so nothing is downloaded. With
--device cuda the same script runs on a GPU (the companion then takes the Triton scan, backend
"auto"; no profile), but the comparison is then against the same PyTorch fallback, not against
mamba_ssm's CUDA kernels.

    python benchmarks/mamba_vs_transformers.py [--repeats 5] [--slow-repeats 3] [--rounds 2]
        [--threads N] [--batch 2] [--seq 512] [--device cpu]

Writes benchmarks/results/mamba_vs_transformers-*.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import os

import torch
import torch.nn.functional as F
from transformers import MambaConfig, MambaForCausalLM
from transformers.models.mamba import modeling_mamba

import companion.nn.mamba as companion_mamba
from companion import bench, seed_everything
from companion.models import from_hf

from record import load_verdict, record

SHAPE = dict(vocab_size=1024, hidden_size=256, state_size=16, expand=2, conv_kernel=4, num_hidden_layers=2)
GOAL = 10.0
# transformers' entry points that may dispatch to mamba_ssm / causal_conv1d / hub kernels; each is
# replaced by the PyTorch function it wraps (mamba_inner_fn's body returns None: the fused path is skipped)
FALLBACKS = ("causal_conv1d_fn", "causal_conv1d_update", "mamba_inner_fn", "mamba_selective_scan",
             "mamba_selective_state_update")
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")


def use_torch_fallback() -> None:
    """transformers' PyTorch path on every machine: no mamba_ssm, causal_conv1d or hub kernel."""
    for name in FALLBACKS:
        setattr(modeling_mamba, name, inspect.unwrap(getattr(modeling_mamba, name)))


def build_models():
    """transformers' MambaForCausalLM (random weights, 1-D parameters moved by noise) and from_hf's conversion."""
    seed_everything(0)
    config = MambaConfig(**SHAPE, tie_word_embeddings=False, use_cache=False, pad_token_id=None,
                         eos_token_id=None, bos_token_id=None)
    hf = MambaForCausalLM(config)
    with torch.no_grad():  # norm gains, D, dt bias, conv bias: not exactly their initial constants
        for name, param in hf.named_parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    return hf.train(), from_hf(hf).train()


def loss_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def companion_name(hf_name: str) -> str:
    """transformers' parameter name -> the companion's (the mixers keep transformers' own names)."""
    name = hf_name.replace("backbone.embeddings.", "embed.").replace("backbone.norm_f.", "norm.")
    name = name.replace("backbone.layers.", "blocks.")
    return name.replace(".norm.weight", ".norm_1.weight") if name.startswith("blocks.") else name


def check_same(hf, ours, inputs, targets) -> dict:
    """Logits, loss and every gradient of the companion against transformers; raises if they differ
    beyond float32 rounding. Returns the largest differences, for the notes."""
    for model in (hf, ours):
        model.zero_grad(set_to_none=True)
    logits = ours(inputs)
    loss = loss_of(logits, targets)
    loss.backward()
    theirs_logits = hf(inputs).logits
    theirs_loss = loss_of(theirs_logits, targets)
    theirs_loss.backward()
    torch.testing.assert_close(logits, theirs_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, theirs_loss, rtol=1e-5, atol=1e-6)
    mine = dict(ours.named_parameters())
    theirs = {companion_name(name): p for name, p in hf.named_parameters()}
    if set(theirs) != set(mine):
        raise RuntimeError(f"parameters differ: {sorted(set(theirs) ^ set(mine))}")
    grad_diff, worst_name = 0.0, ""
    for key, p in mine.items():  # relative to the largest entry of that gradient
        g, h = p.grad, theirs[key].grad
        if g is None or h is None:
            raise RuntimeError(f"no gradient for {key}: companion {g is not None}, transformers {h is not None}")
        scale = h.abs().max().clamp(min=1e-30)
        torch.testing.assert_close(g / scale, h / scale, rtol=0, atol=1e-4,
                                   msg=lambda m, key=key: f"gradient of {key}: {m}")
        diff = float((g - h).abs().max() / scale)
        if diff > grad_diff:
            grad_diff, worst_name = diff, key
    with torch.no_grad():
        worst = dict(logits=(logits - theirs_logits).abs().max().item(), loss=(loss - theirs_loss).abs().item(),
                     grads=grad_diff, grads_where=worst_name, n_grads=len(mine))
    for model in (hf, ours):
        model.zero_grad(set_to_none=True)
    return worst


def training_step(model, inputs, targets, logits_of):
    def step():
        model.zero_grad(set_to_none=True)
        loss_of(logits_of(model(inputs)), targets).backward()
    return step


def forward_only(model, inputs):
    def step():
        with torch.no_grad():
            model(inputs)
    return step


class CompanionLayer(torch.nn.Module):
    """The companion's mixer as ``x -> y`` (its forward returns ``(y, None)``)."""

    def __init__(self, mixer) -> None:
        super().__init__()
        self.mixer = mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(x)[0]


def layer_step(layer, x, grad):
    """Forward and backward of one Mamba layer: gradients of the input and of the layer's weights."""
    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(grad)
    return step


@contextlib.contextmanager
def scan_labelled():
    """Name the companion's selective_scan calls in the profile (a record_function around each)."""
    original = companion_mamba.selective_scan

    def labelled(*args, **kwargs):
        with torch.profiler.record_function("companion.selective_scan"):
            return original(*args, **kwargs)

    companion_mamba.selective_scan = labelled
    try:
        yield
    finally:
        companion_mamba.selective_scan = original


def profile_shares(step) -> dict:
    """Shares of one call's CPU time (torch.profiler, self times): the selective scan (everything
    under the selective_scan call and the _ChunkedScan backward), matrix multiplies outside the scan
    (the projections and the output layer, forward and backward), the causal convolution, the rest;
    and inside the scan, its exponentials, its per-step fused multiply-adds and its contractions."""
    from torch.profiler import ProfilerActivity, profile

    with scan_labelled():
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
    scan_roots = ("companion.selective_scan", "_ChunkedScanBackward", "_TritonScanBackward")

    def in_scan(event) -> bool:
        while event is not None:
            if event.name in scan_roots:
                return True
            event = event.cpu_parent
        return False

    shares = dict(scan=0.0, matmul=0.0, conv=0.0, rest=0.0, scan_exp=0.0, scan_addcmul=0.0, scan_contract=0.0,
                  scan_calls=0)
    for event in prof.events():
        t = event.self_cpu_time_total
        if in_scan(event):
            shares["scan"] += t
            if event.name == "aten::exp":
                shares["scan_exp"] += t
            elif event.name == "aten::addcmul":
                shares["scan_addcmul"] += t
                shares["scan_calls"] += 1
            elif event.name in MATMULS or event.name == "aten::einsum":
                shares["scan_contract"] += t
        elif event.name in MATMULS:
            shares["matmul"] += t
        elif "convolution" in event.name or "conv1d" in event.name:
            shares["conv"] += t
        else:
            shares["rest"] += t
    total = shares["scan"] + shares["matmul"] + shares["conv"] + shares["rest"]
    out = {k: v / total for k, v in shares.items() if k != "scan_calls"}
    out["total_ms"] = total / 1e3
    out["scan_addcmul_calls"] = shares["scan_calls"]
    return out


def top_ops(step, count: int = 4):
    """The operators with the largest self CPU time in one call (already warmed up), with their shares
    and call counts, and the call's total CPU time in ms."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:count]
    return [(e.key, e.self_cpu_time_total / total, e.count) for e in ranked], total / 1e3


def middle(comparisons):
    return sorted(comparisons, key=lambda c: c.speedup)[len(comparisons) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="calls per round for the forward passes")
    parser.add_argument("--slow-repeats", type=int, default=3,
                        help="calls per round where transformers' fallback runs a backward (seconds each)")
    parser.add_argument("--rounds", type=int, default=2, help="independent comparisons; all are reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--device", default="cpu",
                        help="cpu (the goal's machine) or cuda (the companion then takes the Triton scan; not run here)")
    parser.add_argument("--no-profile-transformers", action="store_true",
                        help="skip profiling transformers' step (one more slow call)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    use_torch_fallback()
    device = torch.device(args.device)
    hf, ours = build_models()
    hf, ours = hf.to(device), ours.to(device)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, SHAPE["vocab_size"], (args.batch, args.seq + 1), generator=generator).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    worst = check_same(hf, ours, inputs, targets)
    print(f"same as transformers: largest |logit difference| {worst['logits']:.2g}, |loss difference| "
          f"{worst['loss']:.2g}, gradient difference {worst['grads']:.2g} of its largest entry "
          f"({worst['grads_where']}; {worst['n_grads']} gradients)", flush=True)
    hf_layer = copy.deepcopy(hf.backbone.layers[0].mixer).train()
    our_layer = CompanionLayer(copy.deepcopy(ours.blocks[0].mixer)).train()
    rows, loads = [], [load_before[0]]  # 1-minute load averages: at the start and after every round

    def run(label, make_a, make_b, repeats, goal=""):
        comparisons = []
        for _ in range(args.rounds):
            comparisons.append(bench.compare(make_a(), make_b(), repeats=repeats, warmup=1, device=device,
                                             names=("companion", "transformers fallback")))
            loads.append(os.getloadavg()[0])
            print(f"{label}: {comparisons[-1]} (1-minute load {loads[-1]:.1f})", flush=True)
        m = middle(comparisons)
        low, high = min(c.speedup for c in comparisons), max(c.speedup for c in comparisons)
        rows.append([label, round(m.a.median * 1e3, 1), round(m.b.median * 1e3, 1), round(m.speedup, 1),
                     f"{low:.1f}-{high:.1f}", goal])
        return m

    tokens_text = f"{args.batch}x{args.seq} tokens"
    run(f"training step, forward + backward ({tokens_text})",
        lambda: training_step(ours, inputs, targets, lambda out: out),
        lambda: training_step(hf, inputs, targets, lambda out: out.logits), args.slow_repeats, goal=GOAL)
    run(f"forward alone, no gradients ({tokens_text})", lambda: forward_only(ours, inputs),
        lambda: forward_only(hf, inputs), args.repeats)

    x = torch.randn(args.batch, args.seq, SHAPE["hidden_size"], generator=generator).to(device).requires_grad_()
    grad = torch.randn(x.shape, generator=generator).to(device)
    with torch.no_grad():
        torch.testing.assert_close(our_layer(x), hf_layer(x), rtol=1e-4, atol=1e-5)
    run(f"one Mamba layer alone, forward + backward ({tokens_text})", lambda: layer_step(our_layer, x, grad),
        lambda: layer_step(hf_layer, x, grad), args.slow_repeats)

    shares = theirs_top = None
    if device.type == "cpu":  # CPU self times; on CUDA they would be launch times: not profiled
        shares = profile_shares(training_step(ours, inputs, targets, lambda out: out))
    if device.type == "cpu" and not args.no_profile_transformers:
        theirs_top = top_ops(training_step(hf, inputs, targets, lambda out: out.logits))
    load_after = os.getloadavg()

    goal_row = rows[0]
    met = goal_row[3] >= GOAL
    low = float(goal_row[4].split("-")[0])
    n_params = sum(p.numel() for p in hf.parameters())
    notes = [
        f"device: {device.type}, {torch.get_num_threads()} torch thread(s) on {os.cpu_count()} cores; machine load "
        f"(1, 5, 15-minute load averages) {', '.join(f'{v:.1f}' for v in load_before)} at the start and "
        f"{', '.join(f'{v:.1f}' for v in load_after)} at the end, 1-minute load after each round "
        f"{', '.join(f'{v:.1f}' for v in loads[1:])} (this script's own threads count in it): "
        f"{load_verdict(loads + [load_after[0]])}",
        f"batch {args.batch}, {args.seq} tokens per sequence; {n_params / 1e6:.2f}M parameters "
        f"(d_inner {SHAPE['expand'] * SHAPE['hidden_size']}, state {SHAPE['state_size']}, dt_rank "
        f"{hf.config.time_step_rank}, vocabulary {SHAPE['vocab_size']}), float32",
        f"each row is the round with the median speedup of {args.rounds} round(s), each round the median of "
        f"{args.slow_repeats} calls (forward + backward rows) or {args.repeats} (forward row) after one warm-up "
        f"pair, alternated call by call with the other candidate's (companion.bench.compare); the range is over "
        f"the rounds; speedup = transformers' time / the companion's",
        f"goal (issue 7): the companion's training step (forward + backward) at least {GOAL:g}x transformers' "
        f"fallback on the same weights: {goal_row[3]}x (rounds {goal_row[4]}) -> "
        f"{'met' if met and low >= GOAL else 'met in the median round, not in every round' if met else 'not met'}",
        "checked before timing, on the timed tokens: logits, loss and the gradients of all "
        f"{worst['n_grads']} weights agree with transformers' (largest differences: logits {worst['logits']:.1g}, "
        f"loss {worst['loss']:.1g}, gradients {worst['grads']:.1g} of each gradient's largest entry, worst for "
        f"{worst['grads_where']}; tolerances: logits rtol 1e-4 atol 1e-5, loss rtol 1e-5, gradients 1e-4 of "
        "their largest entry); the layer's output too",
        "transformers' fallback (mamba_ssm, causal_conv1d and the kernels package are not installed; its "
        "dispatching entry points replaced by the torch functions they wrap, as tests/test_from_hf_mamba.py "
        "does): exp(dt A) and dt B u for the whole sequence as (batch, d_inner, length, state) tensors, then a "
        "Python loop over the positions (one multiply-add and one matmul with C each), autograd through the "
        "loop; each step's slice of the precomputed tensors gets, in the backward pass, a zero-filled gradient "
        "as large as the whole tensor (benchmarks/selective_scan.py), so its backward grows as length^2. "
        "use_mambapy (not installed) and use_associative_scan (only under torch.compile) take no part",
        "the companion: companion.kernels.selective_scan backend 'auto' = 'chunked' on the CPU (chunks of "
        "16 positions: each chunk's decays and inputs as whole-chunk tensors, one in-place addcmul per position, "
        "the outputs as one contraction per chunk; a written-out backward that re-runs each chunk from its "
        "saved state); projections and the output layer are the same matmuls as transformers'",
    ]
    if shares is not None:
        notes.append(
            "where the companion's training step spends its time (torch.profiler, self CPU times of one step, "
            f"{shares['total_ms']:.0f} ms of CPU time): the selective scan {shares['scan']:.0%} (its exponentials "
            f"{shares['scan_exp']:.0%}, its {shares['scan_addcmul_calls']} per-position addcmuls "
            f"{shares['scan_addcmul']:.0%}, its contractions (einsum/bmm) {shares['scan_contract']:.0%}, the rest "
            f"of it: elementwise products, copies, softplus, gate {shares['scan'] - shares['scan_exp'] - shares['scan_addcmul'] - shares['scan_contract']:.0%}), "
            f"matrix multiplies outside the scan (projections, output layer) {shares['matmul']:.0%}, the causal "
            f"convolution {shares['conv']:.0%}, everything else {shares['rest']:.0%}")
    if theirs_top is not None:
        ops, total_ms = theirs_top
        notes.append("where transformers' fallback step spends its time (self CPU times of one step, "
                     f"{total_ms:.0f} ms of CPU time): " + ", ".join(
                         f"{name} {share:.0%} ({count} calls)" for name, share, count in ops))
    if device.type == "cpu":
        notes.append("on CUDA (not run here: no GPU) the script runs with --device cuda: the companion's scan is "
                     "then the Triton kernel (backend 'auto' = 'triton'), and transformers still takes its PyTorch "
                     "fallback (its entry points are replaced as above), so the ratio there says nothing about "
                     "mamba_ssm's CUDA kernels; benchmarks/selective_scan.py times the Triton scan itself")
    path = record("mamba_vs_transformers", title="Companion Mamba against transformers' Mamba (PyTorch fallback)",
                  description=" ".join(" ".join(__doc__.split("\n\n")[1:3]).split()),
                  columns=["measurement", "companion ms", "transformers fallback ms", "speedup", "speedup range",
                           "goal"],
                  rows=rows, notes=notes)
    print(f"wrote {path}")
    for note in notes:
        print("-", note)


if __name__ == "__main__":
    main()
