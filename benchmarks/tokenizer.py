"""The companion's byte-level BPE against the tokenizers library: training time, encoding speed, quality.

Both are trained on the training split of the book's corpus at each vocabulary size; quality is
tokens per byte on the validation split (lower is better).

    python benchmarks/tokenizer.py [--vocab 1024 4096]

Writes benchmarks/results/tokenizer-*.json.
"""

from __future__ import annotations

import argparse
import time

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from companion.data import BPETokenizer, load_corpus

from record import record


def library_bpe(text: str, vocab_size: int) -> Tokenizer:
    lib = Tokenizer(models.BPE())
    lib.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    lib.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lib.train_from_iterator([text], trainer=trainer)
    return lib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[1024, 4096])
    args = parser.parse_args()
    corpus = load_corpus()
    val_bytes = len(corpus.validation.encode())
    rows = []
    for vocab in args.vocab:
        start = time.perf_counter()
        ours = BPETokenizer.train(corpus.train, vocab)
        ours_train = time.perf_counter() - start
        start = time.perf_counter()
        ours_ids = ours.encode(corpus.validation)
        ours_encode = time.perf_counter() - start
        start = time.perf_counter()
        lib = library_bpe(corpus.train, vocab)
        lib_train = time.perf_counter() - start
        start = time.perf_counter()
        lib_ids = lib.encode(corpus.validation).ids
        lib_encode = time.perf_counter() - start
        row = [vocab, round(ours_train, 2), round(lib_train, 2), round(ours_encode, 3), round(lib_encode, 3),
               round(len(ours_ids) / val_bytes, 4), round(len(lib_ids) / val_bytes, 4)]
        rows.append(row)
        print(row, flush=True)
    path = record(
        "tokenizer", title="Byte-level BPE: companion against the tokenizers library",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        columns=["vocabulary", "ours: train s", "library: train s", "ours: encode s", "library: encode s",
                 "ours: tokens/byte", "library: tokens/byte"],
        rows=rows,
        notes=[f"corpus: {corpus.summary().splitlines()[0]}; train {len(corpus.train.encode()):,} bytes, "
               f"validation {val_bytes:,} bytes"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
