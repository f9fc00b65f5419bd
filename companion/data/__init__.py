"""Data for every experiment: the corpus, the tokenizer, synthetic tasks and batching.

Everything here is on every machine already (Python's own standard library and ``pydoc_data``) or
generated; nothing is downloaded.
"""

from companion.data.batches import as_token_tensor, lm_batch, lm_windows
from companion.data.bpe import BPETokenizer
from companion.data.corpus import Corpus, load_corpus
from companion.data.synthetic import (associative_recall_task, induction_task, order_task, pair_lookup_task, passkey_task,
                                      recall_task, selective_copy_task)
from companion.data.token_kinds import KINDS, character_kinds, token_kinds

__all__ = [
    "BPETokenizer", "Corpus", "KINDS", "as_token_tensor", "associative_recall_task", "character_kinds", "induction_task",
    "lm_batch", "lm_windows", "pair_lookup_task", "load_corpus", "order_task", "passkey_task", "recall_task",
    "selective_copy_task", "token_kinds",
]
