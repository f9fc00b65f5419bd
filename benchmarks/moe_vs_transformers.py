"""The companion's mixture-of-experts decoder against transformers' Mixtral, same weights, on this machine.

A Mixtral-shaped model (2 layers, width 256, 8 query heads and 2 key-value heads, 8 experts of
SwiGLU hidden 512 with softmax top-2 routing in every layer, vocabulary 1024) is built by
transformers (MixtralForCausalLM, its own random initialisation) and converted with
companion.models.from_hf, so both hold the same weights. Before anything is timed the script checks
that both give the same logits and loss, and the same gradients for every weight (mapped through
the conversion: fused q/k/v, stacked experts transposed), for each transformers experts
implementation it times. Then, each measurement alternating the two call by call
(companion.bench.compare) over several rounds: a training step on 2 sequences of 512 tokens
(forward, cross-entropy loss, backward; and the same plus an AdamW step, a separate row); one MoE
layer alone (forward and backward, same input and weights) against transformers'
MixtralSparseMoeBlock; and the textbook per-token loop (companion.nn.moe.moe_loop_reference) against
the companion's layer.

Goal from the project's issue: the companion's training step at least 1.1x transformers' speed
(speedup = transformers' time / the companion's) against transformers' fastest experts
implementation that runs here.

    python benchmarks/moe_vs_transformers.py [--repeats 7] [--rounds 3] [--threads N]
        [--experts-implementations grouped_mm eager]

Writes benchmarks/results/moe_vs_transformers-*.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
import torch.nn.functional as F
from transformers import MixtralConfig, MixtralForCausalLM

from companion import bench, seed_everything
from companion.models import from_hf
from companion.nn.moe import moe_from_hf, moe_loop_reference

from record import load_verdict, record

SHAPE = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
             num_attention_heads=8, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
             max_position_embeddings=1024)
# transformers 5.x: "grouped_mm" (its default: sort by expert, torch's grouped matmul), "eager" (a
# loop over the experts that received tokens), "batched_mm" (gathers every assignment's expert
# matrices: (tokens * top_k, 2 * hidden, width), 2 GiB here; not timed by default, see the notes)
IMPLEMENTATIONS = ("grouped_mm", "eager")


def build_models(implementations: list[str]):
    """transformers' model for each experts implementation (same weights) and the companion's conversion."""
    seed_everything(0)
    config = MixtralConfig(**SHAPE, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                           attn_implementation="sdpa", use_cache=False, tie_word_embeddings=False,
                           pad_token_id=None, eos_token_id=None)  # no padding_idx: token 0 trains
    base = MixtralForCausalLM(config)
    with torch.no_grad():  # norm gains around 1 instead of exactly 1, so that a swapped gain shows
        for name, param in base.named_parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    hf = {}
    for name in implementations:
        model = copy.deepcopy(base)
        model.set_experts_implementation(name)
        if model.config._experts_implementation != name:
            raise RuntimeError(f"transformers did not take experts implementation {name!r}")
        hf[name] = model.train()
    return hf, from_hf(base).train()


def loss_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def companion_grads(ours) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in ours.named_parameters()}


def hf_grads_as_companion(model) -> dict[str, torch.Tensor]:
    """transformers' gradients in the companion's layout (what from_hf does to the weights)."""
    m, hidden = model.model, SHAPE["intermediate_size"]
    grads = {"embed.weight": m.embed_tokens.weight.grad, "norm.weight": m.norm.weight.grad,
             "lm_head.weight": model.lm_head.weight.grad}
    for i, layer in enumerate(m.layers):
        attn, mlp, b = layer.self_attn, layer.mlp, f"blocks.{i}."
        gate_up, down = mlp.experts.gate_up_proj.grad, mlp.experts.down_proj.grad
        grads.update({
            b + "norm_1.weight": layer.input_layernorm.weight.grad,
            b + "norm_2.weight": layer.post_attention_layernorm.weight.grad,
            b + "mixer.qkv.weight": torch.cat([attn.q_proj.weight.grad, attn.k_proj.weight.grad,
                                               attn.v_proj.weight.grad]),
            b + "mixer.out.weight": attn.o_proj.weight.grad,
            b + "ffn.router.weight": mlp.gate.weight.grad,
            b + "ffn.gate_proj": gate_up[:, :hidden].transpose(1, 2),
            b + "ffn.up_proj": gate_up[:, hidden:].transpose(1, 2),
            b + "ffn.down_proj": down.transpose(1, 2),
        })
    return grads


def check_same(hf: dict, ours, inputs, targets) -> dict:
    """Logits, loss and every gradient of the companion against each transformers model; raises if
    they differ beyond float32 rounding. Returns the largest differences, for the notes."""
    ours.zero_grad(set_to_none=True)
    logits = ours(inputs)
    loss = loss_of(logits, targets)
    loss.backward()
    mine = companion_grads(ours)
    worst = {}
    for name, model in hf.items():
        model.zero_grad(set_to_none=True)
        theirs_logits = model(inputs).logits
        theirs_loss = loss_of(theirs_logits, targets)
        theirs_loss.backward()
        torch.testing.assert_close(logits, theirs_logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loss, theirs_loss, rtol=1e-5, atol=1e-6)
        theirs = hf_grads_as_companion(model)
        if set(theirs) != set(mine):
            raise RuntimeError(f"parameters differ: {sorted(set(theirs) ^ set(mine))}")
        grad_diff = 0.0
        for key, g in mine.items():  # relative to the largest entry of that gradient
            scale = theirs[key].abs().max().clamp(min=1e-30)
            torch.testing.assert_close(g / scale, theirs[key] / scale, rtol=0, atol=1e-4,
                                       msg=lambda m, key=key: f"{name}, gradient of {key}: {m}")
            grad_diff = max(grad_diff, float(((g - theirs[key]).abs().max() / scale)))
        with torch.no_grad():
            worst[name] = dict(logits=(logits - theirs_logits).abs().max().item(),
                               loss=(loss - theirs_loss).abs().item(), grads=grad_diff)
    ours.zero_grad(set_to_none=True)
    for model in hf.values():
        model.zero_grad(set_to_none=True)
    return worst


def training_step(model, inputs, targets, logits_of, optimizer=None):
    def step():
        model.zero_grad(set_to_none=True)
        loss_of(logits_of(model(inputs)), targets).backward()
        if optimizer is not None:
            optimizer.step()
    return step


def layer_step(layer, x, grad):
    """Forward and backward of one MoE layer: gradients of the input and of the layer's weights."""
    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(grad)
    return step


class PerTokenLoop(torch.nn.Module):
    """moe_loop_reference as a module around the companion's layer (so zero_grad reaches its weights)."""

    def __init__(self, layer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return moe_loop_reference(self.layer, x)


def profile_shares(step) -> dict:
    """The shares of one call's CPU time (torch.profiler, self times) in matrix multiplies and attention."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::_grouped_mm", "aten::bmm"))
    attention = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
    return {"mm": mm / total, "attention": attention / total, "total_ms": total / 1e3}


def middle(comparisons):
    return sorted(comparisons, key=lambda c: c.speedup)[len(comparisons) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="independent comparisons; all are reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--experts-implementations", nargs="+", default=list(IMPLEMENTATIONS),
                        help="transformers experts implementations to time (the first is the goal's)")
    parser.add_argument("--loop-repeats", type=int, default=3, help="calls of the per-token loop per round")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    device = torch.device("cpu")  # the companion's MoE on CUDA runs the Triton kernel: another benchmark
    names = args.experts_implementations
    hf, ours = build_models(names)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, SHAPE["vocab_size"], (args.batch, args.seq + 1), generator=generator)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    worst = check_same(hf, ours, inputs, targets)
    for name, diffs in worst.items():
        print(f"same as transformers ({name}): largest |logit difference| {diffs['logits']:.2g}, "
              f"|loss difference| {diffs['loss']:.2g}, gradient difference {diffs['grads']:.2g} of its "
              f"largest entry", flush=True)
    load = ours.blocks[0].ffn.last_load.counts.tolist()
    # the layers timed alone: copies of layer 0 taken now, before any optimizer step moves the weights
    blocks = {name: copy.deepcopy(model.model.layers[0].mlp) for name, model in hf.items()}
    layer = moe_from_hf(blocks[names[0]], hf[names[0]].config).train()  # what from_hf put in layer 0
    rows = []

    def run(label, make_a, make_b, names_ab, goal="", repeats=args.repeats, rounds=args.rounds, warmup=2):
        comparisons = [bench.compare(make_a(), make_b(), repeats=repeats, warmup=warmup, device=device,
                                     names=names_ab) for _ in range(rounds)]
        for c in comparisons:
            print(f"{label}: {c}", flush=True)
        m = middle(comparisons)
        low, high = min(c.speedup for c in comparisons), max(c.speedup for c in comparisons)
        rows.append([label, names_ab[0], round(m.a.median * 1e3, 1), names_ab[1], round(m.b.median * 1e3, 1),
                     round(m.speedup, 2), f"{low:.2f}-{high:.2f}", goal])
        return comparisons

    tokens_text = f"{args.batch}x{args.seq} tokens"
    for i, name in enumerate(names):
        run(f"training step, forward + backward ({tokens_text})",
            lambda: training_step(ours, inputs, targets, lambda out: out),
            lambda name=name: training_step(hf[name], inputs, targets, lambda out: out.logits),
            ("companion", f"transformers {name}"), goal=1.1 if i == 0 else "")
    # AdamW (foreach, the default) on both: the same numbers, in fewer tensors for the companion
    # (q, k, v fused; gate and up stacked apart where transformers stacks them together)
    n_params = sum(p.numel() for p in ours.parameters())
    n_tensors = (len(list(ours.parameters())), len(list(hf[names[0]].parameters())))
    optimizers = {"companion": torch.optim.AdamW(ours.parameters(), lr=1e-5),
                  names[0]: torch.optim.AdamW(hf[names[0]].parameters(), lr=1e-5)}
    run(f"training step + AdamW step ({tokens_text})",
        lambda: training_step(ours, inputs, targets, lambda out: out, optimizers["companion"]),
        lambda: training_step(hf[names[0]], inputs, targets, lambda out: out.logits, optimizers[names[0]]),
        ("companion", f"transformers {names[0]}"))
    # the AdamW step alone, on the gradients the last training steps left
    run(f"AdamW step alone ({n_params / 1e6:.1f}M parameters)", lambda: optimizers["companion"].step,
        lambda: optimizers[names[0]].step, ("companion", f"transformers {names[0]}"))

    # one MoE layer alone: layer 0 of each model, a fresh input of the layer's shape
    x = torch.randn(args.batch, args.seq, SHAPE["hidden_size"], generator=generator, requires_grad=True)
    grad = torch.randn(x.shape, generator=generator)
    for name, block in blocks.items():
        torch.testing.assert_close(layer(x), block(x), rtol=1e-4, atol=1e-5)
        run(f"MoE layer alone, forward + backward ({tokens_text})", lambda: layer_step(layer, x, grad),
            lambda block=block: layer_step(block, x, grad), ("companion", f"transformers {name}"))
    with torch.no_grad():
        torch.testing.assert_close(moe_loop_reference(layer, x), layer(x), rtol=1e-5, atol=1e-6)
    loop = PerTokenLoop(layer)
    run(f"MoE layer alone, forward + backward ({tokens_text})", lambda: layer_step(layer, x, grad),
        lambda: layer_step(loop, x, grad), ("companion", "per-token loop"), repeats=args.loop_repeats,
        rounds=1, warmup=1)

    profiles = {"companion": profile_shares(training_step(ours, inputs, targets, lambda out: out)),
                f"transformers {names[0]}": profile_shares(
                    training_step(hf[names[0]], inputs, targets, lambda out: out.logits))}
    load_after = os.getloadavg()
    goal_row = rows[0]
    notes = [
        f"device: cpu, {torch.get_num_threads()} torch threads on {os.cpu_count()} cores; machine load "
        f"(1, 5, 15-minute load averages) {', '.join(f'{v:.1f}' for v in load_before)} at the start and "
        f"{', '.join(f'{v:.1f}' for v in load_after)} at the end: "
        f"{load_verdict([load_before[0], load_after[0]])}",
        f"each row is the round with the median speedup of {args.rounds} rounds (1 for the per-token loop), each "
        f"round the median of {args.repeats} calls ({args.loop_repeats} for the loop) alternated with the other "
        f"candidate's (companion.bench.compare); the range is over the rounds; speedup = the second candidate's "
        f"time / the companion's (above 1: the companion is faster)",
        f"goal: the companion's training step (forward + backward) at least 1.1x transformers' fastest experts "
        f"implementation here ({names[0]}): {goal_row[5]}x (rounds {goal_row[6]}) -> "
        f"{'met' if goal_row[5] >= 1.1 else 'not met'}",
        "checked before timing, on the same tokens: the logits, the loss and every weight's gradient agree with "
        "each transformers implementation's (largest differences: " + "; ".join(
            f"{n}: logits {d['logits']:.1g}, loss {d['loss']:.1g}, gradients {d['grads']:.1g} of each "
            f"gradient's largest entry" for n, d in worst.items()) + "); the MoE layer's output too, and the "
        "per-token loop's",
        f"the optimizer is the same code for both (torch.optim.AdamW, foreach) on the same {n_params / 1e6:.1f}M "
        f"numbers, held in {n_tensors[0]} tensors by the companion and {n_tensors[1]} by transformers; the goal's "
        "row is forward + backward (as benchmarks/decoder_vs_transformers.py): the AdamW rows show what the "
        "optimizer adds, and how fast its step alone runs on each layout",
        f"routing: transformers' initialisation (router weights N(0, 0.02)); expert loads of layer 0 on the "
        f"timed tokens {load} (of {args.batch * args.seq * SHAPE['num_experts_per_tok']} assignments)",
        "transformers' experts implementations: grouped_mm (the default in 5.x: sort by expert, "
        "torch.nn.functional.grouped_mm, which runs on the CPU in torch 2.13 for these sizes: strides multiples "
        "of 16 bytes), eager (a loop over the experts that received tokens); batched_mm is not timed by default "
        "(it gathers every assignment's expert matrices: (2048, 1024, 256) floats, 2 GiB, per layer for gate_up "
        "alone; add it to --experts-implementations to time it)",
        "the companion's MoE (companion.nn.moe.moe_dispatch): assignments sorted by expert, rows gathered, "
        "three grouped matmuls (companion.kernels.grouped_matmul; on the CPU its reference, which for float32 "
        "runs torch.nn.functional.grouped_mm as transformers' grouped_mm does: one matmul per expert forward and "
        "backward), one scatter-add; attention is sdpa in both, the companion's causal attention on the CPU in "
        "two query blocks for 257 to 512 tokens (companion.kernels.attention_reference: 3/4 of the query-key "
        "pairs, where one causal call of torch's CPU kernel computes all of them up to 512 keys)",
        "where the time goes, from torch.profiler over one training step (forward + backward) of each: " + "; ".join(
            f"{who}: matrix multiplies (aten::mm, grouped_mm) {shares['mm']:.0%}, attention (sdpa) "
            f"{shares['attention']:.0%}, everything else {1 - shares['mm'] - shares['attention']:.0%} of "
            f"{shares['total_ms']:.0f} ms of CPU time" for who, shares in profiles.items()),
    ]
    path = record("moe_vs_transformers", title="Companion mixture of experts against transformers' Mixtral",
                  description=" ".join(" ".join(__doc__.split("\n\n")[1:3]).split()),
                  columns=["measurement", "A", "A ms", "B", "B ms", "speedup (B / A)", "speedup range", "goal"],
                  rows=rows, notes=notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
