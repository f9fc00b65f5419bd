"""Decoding on the CPU: time and memory per token against context length, Mamba against attention with a KV cache.

Two small decoders of about the same parameter count, both companion.models.Decoder with random
weights (the time of a step does not depend on what the weights are): a Llama-style one (width 256,
4 layers of 4-head attention with rotary positions, each followed by a SwiGLU feed-forward) and a
Mamba one (width 256, Mamba mixers with state 16, expand 2, convolution kernel 4, no feed-forward,
no positions; as many layers as bring its parameters closest to the attention model's). For each
context length (256, 1k, 4k, 16k, 64k tokens, one sequence) each model first reads the context
(the prefill, timed once: attention in chunks of --prefill-chunk tokens against its growing
key-value cache, Mamba in one call of its chunked scan, which returns the final states), then
generates tokens one at a time against its cache: the two models' steps alternated call by call
(companion.bench.compare), the median per-token time over --steps steps. The cache's bytes
(KVCache.nbytes(): keys and values of every attention layer; the convolution and SSM states of
every Mamba layer) are recorded at that context, and so is the peak of the tensors one decoding
step allocates beyond the cache (companion.bench.peak_memory). A power law fitted to each model's
per-token time and cache bytes against the context (companion.bench.fit_power_law) gives the
exponent: about 1 for attention (each new token reads every cached key and value), about 0 for
Mamba (a state of fixed size, read and replaced).

    python benchmarks/decoding_cpu.py [--threads N] [--steps 32] [--repeats 32] [--rounds 1]
        [--contexts 256 1024 4096 16384 65536] [--prefill-chunk 1024] [--device cpu]

With --device cuda the same script runs on a GPU (not run here: no GPU): Mamba's prefill takes the
Triton scan (selective_scan backend "auto"), its steps stay selective_scan_step in plain PyTorch.

Writes benchmarks/results/decoding_cpu-*.json and .md.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from companion import bench, seed_everything
from companion.models import Decoder, DecoderConfig
from companion.nn.mamba import MambaShape

from record import load_verdict, record

VOCAB, WIDTH, ATTENTION_LAYERS = 1024, 256, 4
CONTEXTS = (256, 1024, 4096, 16384, 65536)


def attention_config() -> DecoderConfig:
    return DecoderConfig(vocab_size=VOCAB, width=WIDTH, n_layers=ATTENTION_LAYERS, n_heads=4, ffn="swiglu",
                         positions="rope")


def mamba_config(layers: int) -> DecoderConfig:
    return DecoderConfig(vocab_size=VOCAB, width=WIDTH, n_layers=layers, n_heads=1, positions="none",
                         mixers=("mamba",) * layers, feedforwards=("none",) * layers,
                         ssm=MambaShape(d_state=16, d_conv=4, expand=2))


def build_models() -> tuple[Decoder, Decoder]:
    """The attention decoder and the Mamba decoder whose parameter count is closest to it."""
    seed_everything(0)
    attention = Decoder(attention_config()).eval()
    target = attention.num_parameters()
    one, two = (Decoder(mamba_config(n)).num_parameters() for n in (1, 2))
    per_layer, base = two - one, one - (two - one)
    layers = max(1, round((target - base) / per_layer))
    seed_everything(0)
    return attention, Decoder(mamba_config(layers)).eval()


class Stepper:
    """One model decoding one token per call against its cache (the context already read)."""

    def __init__(self, model: Decoder, cache, tokens: torch.Tensor) -> None:
        self.model, self.cache, self.tokens, self.index = model, cache, tokens, 0

    def __call__(self) -> torch.Tensor:
        ids = self.tokens[:, self.index:self.index + 1]
        self.index += 1
        with torch.inference_mode():
            return self.model(ids, cache=self.cache, last_only=True)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prefill(model: Decoder, context: torch.Tensor, chunk: int | None, room: int):
    """A cache holding ``context`` (and room for ``room`` more tokens), and the seconds the prefill took."""
    cache = model.new_cache(context.shape[0], context.shape[1] + room)
    _synchronize(context.device)
    start = time.perf_counter()
    with torch.inference_mode():
        if chunk is None:
            model(context, cache=cache, last_only=True)
        else:
            for s in range(0, context.shape[1], chunk):
                model(context[:, s:s + chunk], cache=cache, last_only=True)
    _synchronize(context.device)
    return cache, time.perf_counter() - start


def step_profile(stepper: Stepper, steps: int = 16, count: int = 5):
    """The operators with the largest self CPU time over ``steps`` decoding steps (torch.profiler):
    (name, share, calls per step), and the CPU time per step in ms."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            stepper()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:count]
    return [(e.key, e.self_cpu_time_total / total, e.count / steps) for e in ranked], total / 1e3 / steps


def check_cached_decoding(attention: Decoder, mamba: Decoder, chunk: int) -> dict:
    """Before timing: for each model, the logits of a chunked (attention) or one-call (Mamba) prefill
    followed by single-token steps equal those of one uncached forward pass over the same tokens."""
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, VOCAB, (1, 3 * chunk // 2 + 8), generator=generator).to(attention.embed.weight.device)
    split = 3 * chunk // 2
    worst = {}
    for name, model, prefill_chunk in (("attention", attention, chunk), ("mamba", mamba, None)):
        with torch.inference_mode():
            expected = model(ids)[:, split - 1:]
            cache = model.new_cache(1, ids.shape[1])
            pieces = []
            if prefill_chunk is None:
                pieces.append(model(ids[:, :split], cache=cache)[:, -1:])
            else:
                for s in range(0, split, prefill_chunk):
                    out = model(ids[:, s:min(s + prefill_chunk, split)], cache=cache)
                pieces.append(out[:, -1:])
            for t in range(split, ids.shape[1] - 1):
                pieces.append(model(ids[:, t:t + 1], cache=cache))
            got = torch.cat(pieces, dim=1)
        torch.testing.assert_close(got, expected[:, :got.shape[1]], rtol=1e-4, atol=1e-4,
                                   msg=lambda m, name=name: f"{name}: cached decoding: {m}")
        worst[name] = (got - expected[:, :got.shape[1]]).abs().max().item()
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--steps", "--repeats", dest="steps", type=int, default=32,
                        help="timed decoding steps per model and round (the median is reported)")
    parser.add_argument("--rounds", type=int, default=1, help="independent comparisons per context; all reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed decoding steps of each model first")
    parser.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS))
    parser.add_argument("--prefill-chunk", type=int, default=1024, help="attention's prefill, tokens per call")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (Mamba's prefill then takes the Triton scan; "
                        "not run here)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    device = torch.device(args.device)
    attention, mamba = (model.to(device) for model in build_models())
    models = {"attention": attention, "mamba": mamba}
    n_params = {name: model.num_parameters() for name, model in models.items()}
    n_layers = {name: model.config.n_layers for name, model in models.items()}
    for name in models:
        print(f"{name}: {n_layers[name]} layers, {n_params[name] / 1e6:.2f}M parameters "
              f"({models[name].num_parameters(embeddings=False) / 1e6:.2f}M without the embedding)", flush=True)
    worst = check_cached_decoding(attention, mamba, chunk=min(args.prefill_chunk, 64))
    print(f"cached decoding equals the uncached forward pass: largest |logit difference| "
          f"{worst['attention']:.2g} (attention), {worst['mamba']:.2g} (mamba)", flush=True)

    generator = torch.Generator().manual_seed(1)
    profile_steps = 16
    room = args.rounds * (args.warmup + args.steps) + 1 + profile_steps
    profiles = {}
    rows, series = [], {name: ([], [], []) for name in models}
    loads = [load_before[0]]  # 1-minute load averages: at the start and after every context
    for length in args.contexts:
        context = torch.randint(0, VOCAB, (1, length), generator=generator).to(device)
        new_tokens = torch.randint(0, VOCAB, (1, room), generator=generator).to(device)
        caches, prefill_s = {}, {}
        for name, model in models.items():
            caches[name], prefill_s[name] = prefill(model, context, args.prefill_chunk if name == "attention" else None,
                                                    room)
        nbytes = {name: cache.nbytes() for name, cache in caches.items()}
        steppers = {name: Stepper(models[name], caches[name], new_tokens) for name in models}
        peaks = {name: bench.peak_memory(steppers[name], device) for name in models}  # one step each, untimed
        comparisons = [bench.compare(steppers["attention"], steppers["mamba"], repeats=args.steps,
                                     warmup=args.warmup, device=device, names=("attention", "mamba"))
                       for _ in range(args.rounds)]
        if device.type == "cpu" and not profiles:  # where a step's time goes, at the first context
            profiles = {name: step_profile(steppers[name], profile_steps) for name in models}
        loads.append(os.getloadavg()[0])
        for c in comparisons:
            print(f"context {length}: {c} (1-minute load {loads[-1]:.1f}); cache {bench.format_bytes(nbytes['attention'])} (attention), "
                  f"{bench.format_bytes(nbytes['mamba'])} (mamba); prefill {prefill_s['attention']:.2f} s, "
                  f"{prefill_s['mamba']:.2f} s", flush=True)
        m = sorted(comparisons, key=lambda c: c.speedup)[len(comparisons) // 2]
        per_token = {"attention": m.a.median, "mamba": m.b.median}
        for name in models:
            rows.append([length, name, round(per_token[name] * 1e3, 3), nbytes[name],
                         round(nbytes[name] / 2**20, 3), round(peaks[name] / 2**10, 1), round(prefill_s[name], 2)])
            series[name][0].append(length)
            series[name][1].append(per_token[name])
            series[name][2].append(nbytes[name])
        del caches, steppers
    load_after = os.getloadavg()

    fits = {}
    for name, (lengths, times, sizes) in series.items():
        if len(lengths) < 2:
            continue
        fits[name] = {"time": bench.fit_power_law(lengths, times)[0], "bytes": bench.fit_power_law(lengths, sizes)[0]}
        excess = [(n, t - times[0]) for n, t in zip(lengths[1:], times[1:])]  # above the shortest context's
        # only where the time at least doubles (else the differences are the steps' noise)
        if len(excess) >= 2 and all(e > 0 for _, e in excess) and times[-1] > 2 * times[0]:
            fits[name]["excess"] = bench.fit_power_law([n for n, _ in excess], [e for _, e in excess])[0]
        long = [i for i, n in enumerate(lengths) if n >= 4096]
        if len(long) >= 2:
            fits[name]["time_long"] = bench.fit_power_law([lengths[i] for i in long], [times[i] for i in long])[0]
    for name, fit in fits.items():
        print(f"{name}: per-token time ~ context^{fit['time']:.2f}"
              + (f" (contexts >= 4096: ^{fit['time_long']:.2f})" if "time_long" in fit else "")
              + (f", time above the shortest context's ^{fit['excess']:.2f}" if "excess" in fit else "")
              + f", cache bytes ~ context^{fit['bytes']:.2f}", flush=True)
    for name in models:
        rows.append([f"exponent ({', '.join(map(str, series[name][0]))})", name,
                     round(fits[name]["time"], 2) if name in fits else "", "",
                     round(fits[name]["bytes"], 2) if name in fits else "", "", ""])

    skipped = sorted(set(CONTEXTS) - set(args.contexts))
    shape = mamba.config.ssm
    notes = [
        f"device: {device.type}, {torch.get_num_threads()} torch thread(s) on {os.cpu_count()} cores; machine load "
        f"(1, 5, 15-minute load averages) {', '.join(f'{v:.1f}' for v in load_before)} at the start and "
        f"{', '.join(f'{v:.1f}' for v in load_after)} at the end, 1-minute load after each context "
        f"{', '.join(f'{v:.1f}' for v in loads[1:])} (this script's own threads count in it): "
        f"{load_verdict(loads + [load_after[0]])}",
        f"models (random weights, float32, batch 1, vocabulary {VOCAB}): attention: {n_layers['attention']} layers "
        f"of 4-head attention (head_dim 64, rotary positions) + SwiGLU (hidden {attention.config.hidden}), "
        f"{n_params['attention'] / 1e6:.2f}M parameters; mamba: {n_layers['mamba']} Mamba layers (d_inner "
        f"{shape.d_inner(WIDTH)}, state {shape.d_state}, conv {shape.d_conv}, dt_rank {shape.rank(WIDTH)}), no "
        f"feed-forward, {n_params['mamba'] / 1e6:.2f}M parameters (the layer count that comes closest)",
        f"checked first: for each model, a prefill (attention: in chunks, across a chunk boundary; Mamba: one "
        f"call) then single-token steps give the logits of one uncached forward pass over the same tokens "
        f"(largest differences {worst['attention']:.1g} and {worst['mamba']:.1g})",
        f"per-token ms: one decoding step (one token, logits of that position), the median of {args.steps} steps "
        f"after {args.warmup} warm-up steps, the two models' steps alternated call by call "
        f"(companion.bench.compare); {args.rounds} round(s) per context (the median one shown); the context "
        f"grows by one token per step ({room - 1} steps in all), which changes nothing measurable at these lengths",
        "cache bytes: KVCache.nbytes() after the prefill: attention's keys and values are allocated for the "
        f"context plus room for the {room} decoded tokens (2 x layers x heads x positions x head_dim float32 "
        "values); Mamba's cache is the convolution state (d_inner x (d_conv - 1)) and the SSM state "
        "(d_inner x state, float32) of each layer, whatever the context",
        "step peak KiB: the largest total of tensors one decoding step allocates beyond what existed before it "
        "(companion.bench.peak_memory: the attention scores, the new state tensors, activations, logits)",
        f"prefill s: reading the context once, timed once (attention: chunks of {args.prefill_chunk} tokens "
        "against the growing cache, so its cost grows as context^2; Mamba: one call of the chunked scan with "
        "return_last_state). Mamba is prefilled in one call because a later multi-token call with a cache runs "
        "companion.nn.mamba.MambaMixer's token-by-token step loop (selective_scan takes no initial state)",
        "exponent rows: the power p of a least-squares fit of per-token time (ms column) and cache bytes "
        "(MiB column) against the context on log-log axes (companion.bench.fit_power_law); "
        + "; ".join(f"{name}: time ~ context^{fit['time']:.2f}"
                    + (f" (contexts from 4096 on: ^{fit['time_long']:.2f})" if "time_long" in fit else "")
                    + (f", the time above the shortest context's ~ context^{fit['excess']:.2f}" if "excess" in fit
                       else "")
                    + f", cache ~ context^{fit['bytes']:.2f}" for name, fit in fits.items())
        + "; attention's per-token time is nearly flat at short contexts, where the weights' matrix-vector "
        "products and per-layer overheads outweigh reading the cache",
    ]
    for name, (ops, per_step) in profiles.items():
        notes.append(f"where the {name} model's decoding step spends its time at context {args.contexts[0]} (torch.profiler over "
                     f"{profile_steps} steps, self CPU times, {per_step:.2f} ms of CPU time per step): " + ", ".join(
                         f"{op} {share:.0%} ({calls:g} calls per step)" for op, share, calls in ops))
    if device.type == "cpu":
        notes.append("on CUDA (not run here: no GPU) the script runs with --device cuda: Mamba's prefill then takes "
                     "the Triton scan (selective_scan backend 'auto'), its decoding steps stay "
                     "selective_scan_step (plain PyTorch, a handful of small kernels per layer and token), "
                     "attention's steps SDPA against the cache; per-token times by CUDA events, step peaks from "
                     "the caching allocator")
    if skipped:
        notes.append(f"contexts not run this time: {', '.join(map(str, skipped))} (--contexts)")
    path = record("decoding_cpu", title="Decoding on the CPU: Mamba against attention with a KV cache",
                  description=" ".join(" ".join(__doc__.split("\n\n")[1:2]).split()),
                  columns=["context", "model", "per-token ms", "cache bytes", "cache MiB", "step peak KiB",
                           "prefill s"],
                  rows=rows, notes=notes)
    print(f"wrote {path}")
    for note in notes:
        print("-", note)


if __name__ == "__main__":
    main()
