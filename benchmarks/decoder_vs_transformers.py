"""The companion decoder against transformers' Llama, same weights and shapes, on this machine.

Two measurements, each alternating the two implementations call by call (companion.bench.compare):

* a training step (forward, cross-entropy loss, backward) of a 4-layer, width-256 Llama-style model
  (4 query heads, 2 key-value heads, SwiGLU 688, vocabulary 4096) on 4 sequences of 512 tokens;
* greedy decoding of 128 tokens after a 16-token prompt, with the key-value cache (both must produce
  the same tokens; the script checks it).

Goals from the project's issue: the companion at least 1.1x transformers' speed for the training step
and 1.5x for decoding.

    python benchmarks/decoder_vs_transformers.py [--repeats 7]

Writes benchmarks/results/decoder_vs_transformers-*.json and .md.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from companion import bench, seed_everything
from companion.models import from_hf

from record import record

SHAPE = dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--rounds", type=int, default=3, help="independent comparisons; all are reported")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seed_everything(0)
    config = LlamaConfig(**SHAPE, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                         attn_implementation="sdpa")
    hf = LlamaForCausalLM(config).to(device)
    ours = from_hf(hf)
    tokens = torch.randint(0, SHAPE["vocab_size"], (args.batch, args.seq + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def train_step(model, logits_of):
        def step():
            model.zero_grad(set_to_none=True)
            logits = logits_of(model(inputs))
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).backward()
        return step

    hf.train()
    ours.train()
    trainings = [bench.compare(train_step(ours, lambda out: out), train_step(hf, lambda out: out.logits),
                               repeats=args.repeats, warmup=2, device=device, names=("companion", "transformers"))
                 for _ in range(args.rounds)]
    for training in trainings:
        print("training step:", training, flush=True)

    hf.eval()
    ours.eval()
    prompt = torch.randint(0, SHAPE["vocab_size"], (1, 16), device=device)
    mask = torch.ones_like(prompt)

    def decode_hf():
        with torch.no_grad():
            return hf.generate(prompt, attention_mask=mask, max_new_tokens=args.new_tokens,
                               min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    def decode_ours():
        return ours.generate(prompt, args.new_tokens, temperature=0)

    same = torch.equal(decode_hf(), decode_ours())
    decodings = [bench.compare(decode_ours, decode_hf, repeats=max(3, args.repeats // 2), warmup=1,
                               device=device, names=("companion", "transformers"))
                 for _ in range(args.rounds)]
    for decoding in decodings:
        print("greedy decoding:", decoding, "| same tokens:", same, flush=True)

    def row(name, comparisons, goal):
        middle = sorted(comparisons, key=lambda c: c.speedup)[len(comparisons) // 2]
        low, high = min(c.speedup for c in comparisons), max(c.speedup for c in comparisons)
        return [name, round(middle.a.median * 1e3, 1), round(middle.b.median * 1e3, 1),
                round(middle.speedup, 2), f"{low:.2f}-{high:.2f}", goal]

    rows = [row(f"training step ({args.batch}x{args.seq} tokens)", trainings, 1.1),
            row(f"greedy decoding ({args.new_tokens} tokens, cache)", decodings, 1.5)]
    training = sorted(trainings, key=lambda c: c.speedup)[len(trainings) // 2]
    flops = 3 * bench.decoder_flops(layers=4, width=256, heads=4, kv_heads=2, head_dim=64, ffn_hidden=688,
                                    vocab=4096, tokens=args.seq, context=args.seq, causal=True) * args.batch
    notes = [
        f"device: {device.type}; each row is the median of {args.rounds} rounds, each round the median of "
        f"alternated calls (companion.bench.compare); the range is over the rounds; greedy outputs "
        f"identical: {same}",
        f"training step: about {bench.format_flops(flops)} (3x the forward FLOPs); companion reaches "
        f"{bench.format_flops(flops / training.a.median, 'FLOP/s')}",
    ]
    path = record("decoder_vs_transformers", title="Companion decoder against transformers' Llama",
                  description=" ".join(__doc__.split("\n\n")[1:4]).replace("\n", " "),
                  columns=["measurement", "companion ms", "transformers ms", "speedup", "speedup range",
                           "goal"],
                  rows=rows, notes=notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
