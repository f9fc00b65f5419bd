"""A byte-level byte-pair-encoding (BPE) tokenizer, written from scratch.

Byte-pair encoding for subword units follows Sennrich, Haddow and Birch, "Neural Machine
Translation of Rare Words with Subword Units" (ACL 2016): start from single symbols and repeatedly
merge the most frequent adjacent pair into a new symbol. The byte-level variant follows GPT-2
(Radford et al., "Language Models are Unsupervised Multitask Learners", 2019): the symbols are the
256 byte values of the UTF-8 encoding, so every string, in any script, is encodable without an
unknown token, and the text is first cut by a regular expression into chunks (words with their
leading space, runs of digits, of punctuation, of whitespace) that merges never cross.

Token ids: ``0..255`` are the bytes themselves; merge ``i`` creates id ``256 + i``.
Only the standard library is used (``re``, ``collections``, ``heapq``, ``json``).
"""

from __future__ import annotations

import heapq
import json
import operator
import os
import re
from collections import Counter, defaultdict
from typing import Iterable, Sequence

__all__ = ["BPETokenizer", "DEFAULT_PATTERN"]

DEFAULT_PATTERN = (
    r"'(?:[sdmt]|ll|ve|re)"  # English contractions: 's 'd 'm 't 'll 've 're
    r"| ?[^\W\d_]+"  # letters (word characters that are neither digits nor "_"), optional space
    r"| ?\d+"  # digits
    r"| ?(?:[^\s\w]|_)+"  # punctuation and "_" (GPT-2's [^\s\p{L}\p{N}])
    r"|\s+(?!\S)"  # whitespace, leaving the last space to the word that follows
    r"|\s+"  # whatever whitespace is left (at the end of the text)
)
"""GPT-2's pre-tokenisation pattern rewritten for Python's ``re`` (which lacks ``\\p{L}``).

Every character falls into one of the classes (letter, digit, punctuation-or-``_``, whitespace), so
the chunks of any text concatenate back to the text exactly."""

FORMAT_VERSION = 1
_FORMAT_NAME = "companion.data.bpe.BPETokenizer"
_CACHE_LIMIT = 1 << 16
_LONG_CHUNK = 64  # chunks longer than this (bytes) are encoded with a heap


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``ids`` by ``new_id``, left to right, no overlaps."""
    first, second = pair
    out = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == first and i + 1 < n and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _check_vocab_size(vocab_size: object) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int >= 256, got {type(vocab_size).__name__}")
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be >= 256 (the 256 byte values), got {vocab_size}")
    return vocab_size


class BPETokenizer:
    """Byte-level BPE: a regex pre-tokeniser plus an ordered list of merges.

    Args:
        merges: the merges in order; merge ``i`` joins the token pair ``(a, b)`` into id
            ``256 + i``, so ``a`` and ``b`` must be below ``256 + i``.
        pattern: the pre-tokenisation regular expression (Python ``re`` syntax). Text between
            matches, if a custom pattern leaves any, becomes a chunk of its own: no input is lost.
    """

    def __init__(self, merges: Sequence[tuple[int, int]] = (),
                 pattern: str = DEFAULT_PATTERN) -> None:
        if not isinstance(pattern, str):
            raise TypeError(f"pattern must be a str (a regular expression), got "
                            f"{type(pattern).__name__}")
        try:
            self._regex = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"pattern is not a valid regular expression: {error}") from None
        self._pattern = pattern
        self._merges: list[tuple[int, int]] = []
        self._ranks: dict[tuple[int, int], int] = {}
        self._bytes = [bytes([i]) for i in range(256)]
        for index, pair in enumerate(merges):
            if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                    or not all(isinstance(t, int) and not isinstance(t, bool) for t in pair)):
                raise TypeError(f"merge {index} must be a pair of int token ids, got {pair!r}")
            first, second = pair
            if not (0 <= first < 256 + index and 0 <= second < 256 + index):
                raise ValueError(f"merge {index} = {pair!r} uses an id outside 0..{255 + index}, "
                                 f"the tokens that exist before it")
            if (first, second) in self._ranks:
                raise ValueError(f"merge {index} = {pair!r} repeats merge "
                                 f"{self._ranks[first, second]}")
            self._ranks[first, second] = index
            self._merges.append((first, second))
            self._bytes.append(self._bytes[first] + self._bytes[second])
        self._cache: dict[bytes, tuple[int, ...]] = {}

    @property
    def merges(self) -> list[tuple[int, int]]:
        """The merges in order (a copy); merge ``i`` creates token id ``256 + i``."""
        return list(self._merges)

    @property
    def pattern(self) -> str:
        """The pre-tokenisation regular expression."""
        return self._pattern

    @property
    def vocab_size(self) -> int:
        """``256 + len(merges)``: the byte values plus one token per merge."""
        return 256 + len(self._merges)

    def __repr__(self) -> str:
        extra = "" if self.pattern == DEFAULT_PATTERN else f", pattern={self.pattern!r}"
        return f"BPETokenizer(vocab_size={self.vocab_size}{extra})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BPETokenizer):
            return NotImplemented
        return self._merges == other._merges and self.pattern == other.pattern

    def __hash__(self) -> int:
        return hash((tuple(self._merges), self.pattern))

    # ----------------------------------------------------------------------------- pre-tokenising
    def pretokenize(self, text: str | bytes) -> list[bytes]:
        """Cut ``text`` into the byte chunks that merges never cross.

        A ``str`` is matched against the pattern and each chunk encoded as UTF-8 (a ``str`` with
        lone surrogates cannot be encoded and raises ``UnicodeEncodeError``, a ``ValueError``).
        ``bytes`` are decoded as UTF-8 with ``errors="surrogateescape"``: valid UTF-8 is chunked
        exactly as the corresponding ``str`` would be, and each invalid byte becomes a lone
        surrogate (matched as punctuation) that encodes back to that same byte. So
        ``b"".join(pretokenize(b)) == b`` for every byte string ``b``.
        """
        if isinstance(text, str):
            errors = "strict"
        elif isinstance(text, (bytes, bytearray, memoryview)):
            text, errors = bytes(text).decode("utf-8", "surrogateescape"), "surrogateescape"
        else:
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        chunks = []
        end = 0
        for match in self._regex.finditer(text):
            if match.start() > end:  # a custom pattern skipped something: keep it
                chunks.append(text[end:match.start()].encode("utf-8", errors))
            if match.end() > match.start():
                chunks.append(match.group().encode("utf-8", errors))
            end = match.end()
        if end < len(text):
            chunks.append(text[end:].encode("utf-8", errors))
        return chunks

    # ----------------------------------------------------------------------------------- training
    @classmethod
    def train(cls, text: str | bytes, vocab_size: int, *,
              pattern: str = DEFAULT_PATTERN) -> "BPETokenizer":
        """Learn ``vocab_size - 256`` merges from ``text`` (Sennrich et al. 2016, on bytes).

        The rule, exactly (the book's notebook re-implements it naively and compares):

        1. Cut ``text`` into chunks with :meth:`pretokenize`; each distinct chunk is a sequence of
           byte ids with a weight, the number of times the chunk occurs.
        2. Count every adjacent pair of ids inside every chunk, overlapping occurrences included
           (``b"aaa"`` contributes 2 to ``(97, 97)``), each occurrence weighted by the chunk's
           weight. Pairs never span two chunks.
        3. Pick ``best = min(counts, key=lambda p: (-counts[p], p))``: the highest count, ties
           broken by the smallest pair in lexicographic order of ids.
        4. Stop if ``counts[best] < 2`` (no pair occurs twice) -- training may then end with fewer
           than ``vocab_size`` tokens -- or once ``vocab_size`` tokens exist.
        5. Otherwise append ``best`` to the merges; in every chunk replace its occurrences, left
           to right and non-overlapping, by the new id ``256 + merge index``; go to 2.

        The counts are kept up to date incrementally (a pair -> count table, a pair -> chunks
        index, and a heap with lazily discarded stale entries), touching only the chunks that
        hold the merged pair, which gives the same merges as recounting everything each step.
        Each touched chunk is rewritten in full, so text without spaces or punctuation (one huge
        chunk) trains slowly; ordinary text and code train to 4096 tokens on 2 MB in seconds.

        Raises:
            TypeError: ``text`` is not str/bytes, or ``vocab_size`` is not an int.
            ValueError: ``vocab_size < 256``.
        """
        vocab_size = _check_vocab_size(vocab_size)
        tokenizer = cls(pattern=pattern)
        chunk_counts = Counter(tokenizer.pretokenize(text))
        words = [list(chunk) for chunk in chunk_counts]
        weights = list(chunk_counts.values())
        counts: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)
        for index, (word, weight) in enumerate(zip(words, weights)):
            for pair in zip(word, word[1:]):
                counts[pair] += weight
                where[pair].add(index)
        heap = [(-count, pair) for pair, count in counts.items()]
        heapq.heapify(heap)
        merges: list[tuple[int, int]] = []
        while 256 + len(merges) < vocab_size and heap:
            negative_count, best = heapq.heappop(heap)
            if counts.get(best) != -negative_count:
                continue  # stale entry: this pair's count changed since it was pushed
            if -negative_count < 2:
                break
            new_id = 256 + len(merges)
            merges.append(best)
            changed = set()
            for index in where.pop(best):
                word, weight = words[index], weights[index]
                merged = _merge(word, best, new_id)
                old_pairs = list(zip(word, word[1:]))
                new_pairs = list(zip(merged, merged[1:]))
                for pair in old_pairs:
                    counts[pair] -= weight
                for pair in new_pairs:
                    counts[pair] += weight
                changed.update(old_pairs, new_pairs)
                for pair in set(old_pairs).difference(new_pairs):
                    if pair != best:
                        where[pair].discard(index)
                for pair in set(new_pairs).difference(old_pairs):
                    where[pair].add(index)
                words[index] = merged
            for pair in changed:
                if counts[pair] > 0:
                    heapq.heappush(heap, (-counts[pair], pair))
                else:
                    del counts[pair]
                    where.pop(pair, None)
        return cls(merges, pattern)

    def truncated(self, vocab_size: int) -> "BPETokenizer":
        """This tokenizer with only its first ``vocab_size - 256`` merges.

        Merges are learnt one after another and never revised, so this is exactly the tokenizer
        that training on the same text to ``vocab_size`` gives.
        """
        vocab_size = _check_vocab_size(vocab_size)
        if vocab_size > self.vocab_size:
            raise ValueError(f"vocab_size must be at most this tokenizer's {self.vocab_size}, "
                             f"got {vocab_size}")
        return BPETokenizer(self._merges[:vocab_size - 256], self.pattern)

    # --------------------------------------------------------------------------------- en/decoding
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes that token ``token_id`` stands for."""
        token_id = operator.index(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id must be in 0..{self.vocab_size - 1}, got {token_id}")
        return self._bytes[token_id]

    def _encode_chunk(self, chunk: bytes) -> tuple[int, ...]:
        """Apply merges to one chunk, lowest merge index first, as GPT-2 does.

        A merge only creates pairs with its new id, whose own merges come later, so the merges
        applied here have increasing indices: the result equals replaying the training merges.
        Each step rescans the chunk, which is quadratic, so long chunks go to
        :meth:`_encode_long_chunk`, which computes the same thing with a heap.
        """
        if len(chunk) > _LONG_CHUNK:
            return self._encode_long_chunk(chunk)
        ids = list(chunk)
        ranks = self._ranks
        missing = len(ranks)
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, missing))
            rank = ranks.get(pair)
            if rank is None:
                break
            ids = _merge(ids, pair, 256 + rank)
        return tuple(ids)

    def _encode_long_chunk(self, chunk: bytes) -> tuple[int, ...]:
        """:meth:`_encode_chunk` in O(n log n): a heap of candidate merges over a linked list.

        Heap entries ``(merge index, position, left id, right id)`` pop lowest merge index first
        and, within one merge, leftmost first, which is the left-to-right non-overlapping rule.
        An entry is stale (skipped) once either of its tokens has been merged away; ids at a
        position only grow, so a stale entry can never look current again.
        """
        ids, ranks, n = list(chunk), self._ranks, len(chunk)
        following, preceding = list(range(1, n + 1)), list(range(-1, n - 1))
        alive = [True] * n
        heap = [(ranks[pair], i, *pair) for i, pair in enumerate(zip(ids, ids[1:]))
                if pair in ranks]
        heapq.heapify(heap)
        while heap:
            rank, i, left, right = heapq.heappop(heap)
            j = following[i]
            if not alive[i] or j == n or ids[i] != left or ids[j] != right:
                continue
            ids[i], alive[j] = 256 + rank, False
            k = following[i] = following[j]
            if k < n:
                preceding[k] = i
                if (ids[i], ids[k]) in ranks:
                    heapq.heappush(heap, (ranks[ids[i], ids[k]], i, ids[i], ids[k]))
            h = preceding[i]
            if h >= 0 and (ids[h], ids[i]) in ranks:
                heapq.heappush(heap, (ranks[ids[h], ids[i]], h, ids[h], ids[i]))
        return tuple(token for token, keep in zip(ids, alive) if keep)

    def encode(self, text: str | bytes) -> list[int]:
        """Token ids of ``text`` (a ``str``, encoded as UTF-8, or any ``bytes``).

        ``decode_bytes(encode(b)) == b`` for every byte string and ``decode(encode(s)) == s`` for
        every string without lone surrogates. Chunk encodings are cached, so repeated words are
        cheap.
        """
        cache = self._cache
        ids: list[int] = []
        for chunk in self.pretokenize(text):
            encoded = cache.get(chunk)
            if encoded is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                encoded = cache[chunk] = self._encode_chunk(chunk)
            ids.extend(encoded)
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of a sequence of token ids; ids outside the vocabulary raise ``ValueError``."""
        table, size = self._bytes, len(self._bytes)
        out = []
        for token_id in ids:
            token_id = operator.index(token_id)
            if not 0 <= token_id < size:
                raise ValueError(f"token id must be in 0..{size - 1}, got {token_id}")
            out.append(table[token_id])
        return b"".join(out)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a sequence of token ids (UTF-8, invalid sequences replaced by U+FFFD)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -------------------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON: format name and version, pattern, merges."""
        data = {"format": _FORMAT_NAME, "version": FORMAT_VERSION, "pattern": self.pattern,
                "merges": [list(pair) for pair in self._merges]}
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(data, handle)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPETokenizer":
        """Read a tokenizer written by :meth:`save`; another format or version: ``ValueError``."""
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if (not isinstance(data, dict) or data.get("format") != _FORMAT_NAME
                or data.get("version") != FORMAT_VERSION):
            found = (data.get("format"), data.get("version")) if isinstance(data, dict) else data
            raise ValueError(f"{os.fspath(path)!r} is not a BPETokenizer file of format version "
                             f"{FORMAT_VERSION}: found format/version {found!r}")
        return cls([tuple(pair) for pair in data["merges"]], data["pattern"])
