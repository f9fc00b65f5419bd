"""Data for every experiment: the corpus, the tokenizer, synthetic tasks and batching.

Everything here is on every machine already (Python's own standard library and ``pydoc_data``) or
generated; nothing is downloaded.
"""

from companion.data.bpe import BPETokenizer
from companion.data.corpus import Corpus, load_corpus

__all__ = ["BPETokenizer", "Corpus", "load_corpus"]
