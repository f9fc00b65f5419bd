"""The book's text corpus: Python's own standard library source plus the prose of its help topics.

Every Python installation carries about 10 MB of its standard library as ``.py`` files and about
0.5 MB of English reference prose in ``pydoc_data.topics`` (the text ``help("assert")`` prints).
Together they make a corpus that is on every machine, needs no download and no licence check beyond
Python's own, and mixes two kinds of text (code and prose) that a tokenizer and a small language
model treat differently.

The selection is deterministic: the same Python version and the same arguments always give the
same corpus, and :attr:`Corpus.sha256` tells a reader whose Python ships a different copy of the
library that their numbers will differ from the book's.

Layout of :attr:`Corpus.train` and :attr:`Corpus.validation`: each document is a header line
``# ==== <name> ====`` (for example ``# ==== stdlib:json/decoder.py ====`` or
``# ==== pydoc:assert ====``), then the document's text ending in a newline, then one empty line.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import random
import sysconfig
from dataclasses import dataclass
from numbers import Real

__all__ = ["Corpus", "load_corpus", "DOCUMENT_HEADER"]

DOCUMENT_HEADER = "# ==== {name} ====\n"
"""The line that opens every document in the corpus text; ``{name}`` is the document's name."""

MAX_FILE_BYTES = 200_000
"""Source files larger than this are left out (``_pydecimal.py``, generated tables)."""

_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})


@dataclass(frozen=True)
class Corpus:
    """A reproducible text corpus split by document into training and validation text.

    Attributes:
        train: the training text, documents concatenated (see the module docstring for the layout).
        validation: the validation text, built from documents disjoint from ``train``'s.
        documents: names of the training documents, in the order they appear in ``train``:
            ``"stdlib:<path relative to the stdlib>"`` for code, ``"pydoc:<topic>"`` for prose.
        validation_documents: names of the validation documents, in order.
        sha256: hex SHA-256 of ``train``, a NUL byte and ``validation`` (UTF-8; the headers are
            included, so document names and the split are hashed too).
        python_version: the Python whose standard library was read, e.g. ``"3.11.7"``.
    """

    train: str
    validation: str
    documents: tuple[str, ...]
    validation_documents: tuple[str, ...]
    sha256: str
    python_version: str

    def summary(self) -> str:
        """A few readable lines: sizes in bytes, document counts, prose share, hash, Python."""
        lines = [f"Python {self.python_version} standard library + pydoc topics, "
                 f"sha256 {self.sha256[:12]}"]
        for split, text, names in (("train", self.train, self.documents),
                                   ("validation", self.validation, self.validation_documents)):
            prose = sum(len(_block(name, body).encode()) for name, body in
                        _split_documents(text, names) if name.startswith("pydoc:"))
            size = len(text.encode())
            n_prose = sum(name.startswith("pydoc:") for name in names)
            lines.append(f"{split + ':':<12}{size:>10,} bytes, {len(names):>4} documents "
                         f"({len(names) - n_prose} code, {n_prose} prose), "
                         f"prose {prose / max(size, 1):.1%} of bytes")
        return "\n".join(lines)


def _block(name: str, text: str) -> str:
    """One document as the corpus text holds it: header, text ending in a newline, blank line."""
    if not text.endswith("\n"):
        text += "\n"
    return DOCUMENT_HEADER.format(name=name) + text + "\n"


def _split_documents(text: str, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """Cut a corpus text back into ``(name, text)`` pairs, locating each known header in turn."""
    starts = []
    position = 0
    for name in names:
        position = text.index(DOCUMENT_HEADER.format(name=name), position)
        starts.append(position)
    ends = starts[1:] + [len(text)]
    return [(name, text[start + len(DOCUMENT_HEADER.format(name=name)):end - 1])
            for name, start, end in zip(names, starts, ends)]


@functools.lru_cache(maxsize=1)
def _stdlib_documents() -> tuple[tuple[str, str], ...]:
    """All eligible standard-library sources as ``(name, text)``, sorted by name.

    Left out: test suites (any directory named ``test``, ``tests`` or ``idle_test``),
    ``site-packages``, ``__pycache__``, files that are not valid UTF-8, files over
    :data:`MAX_FILE_BYTES`, and generated files (``pydoc_data/topics.py``, which is the prose source
    below, ``_sysconfigdata_*``, which differs between machines, and the ``gencodec.py`` codec
    tables in ``encodings``).
    """
    root = sysconfig.get_paths()["stdlib"]
    documents = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d not in _EXCLUDED_DIRS)
        for file in files:
            path = os.path.join(directory, file)
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            if (not file.endswith(".py") or file.startswith("_sysconfigdata")
                    or relative == "pydoc_data/topics.py"
                    or os.path.getsize(path) > MAX_FILE_BYTES):
                continue
            with open(path, "rb") as handle:
                data = handle.read()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if relative.startswith("encodings/") and "gencodec.py" in text[:1000]:
                continue
            documents.append(("stdlib:" + relative, text))
    return tuple(sorted(documents))


@functools.lru_cache(maxsize=1)
def _pydoc_documents() -> tuple[tuple[str, str], ...]:
    """The English help topics of ``pydoc_data.topics`` as ``(name, text)``, sorted by name."""
    from pydoc_data.topics import topics

    return tuple(sorted(("pydoc:" + name, text) for name, text in topics.items()))


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number in (0, 1), got {type(value).__name__}")
    if not 0 < value < 1:
        raise ValueError(f"{name} must be in the open interval (0, 1), got {value!r}")
    return float(value)


def load_corpus(max_bytes: int = 2_000_000, prose_fraction: float = 0.2,
                validation_fraction: float = 0.1, seed: int = 0) -> Corpus:
    """Select about ``max_bytes`` UTF-8 bytes of stdlib source and pydoc prose, split by document.

    What is computed: the eligible documents of each source (code: the standard library's ``.py``
    files, see :func:`_stdlib_documents`; prose: ``pydoc_data.topics``) are sorted by name and
    shuffled with ``random.Random(seed)``. Walking each shuffled list, a document is kept when its
    block (header + text + blank line) still fits the source's budget, ``prose_fraction *
    max_bytes`` bytes for prose and the rest for code; so the total never exceeds ``max_bytes``. If
    a source has fewer bytes than its budget (pydoc holds about 0.5 MB), all of it is taken and the
    corpus is smaller. Within each source the kept documents, in shuffled order, go to validation
    while they fit ``validation_fraction`` of that source's kept bytes, and to training otherwise,
    so both splits hold code and prose in the requested proportions. Finally each split's documents
    are put in one reproducible shuffled order, mixing code and prose.

    Why: the corpus is on every machine (no download) and identical for everyone on the same
    Python version; results are cached, so calling this again with the same arguments is free.

    Raises:
        TypeError: ``max_bytes`` or ``seed`` is not an int, or a fraction is not a real number.
        ValueError: ``max_bytes <= 0``, a fraction outside (0, 1), or ``max_bytes`` too small to
            hold two documents of each kind (one for training, one for validation).
    """
    for name, value in (("max_bytes", max_bytes), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive number of bytes, got {max_bytes}")
    prose_fraction = _check_fraction("prose_fraction", prose_fraction)
    validation_fraction = _check_fraction("validation_fraction", validation_fraction)
    return _load_corpus(int(max_bytes), prose_fraction, validation_fraction, int(seed))


@functools.lru_cache(maxsize=16)
def _load_corpus(max_bytes: int, prose_fraction: float, validation_fraction: float,
                 seed: int) -> Corpus:
    train: list[tuple[str, str]] = []
    validation: list[tuple[str, str]] = []
    prose_budget = int(prose_fraction * max_bytes)
    for documents, budget in ((_stdlib_documents(), max_bytes - prose_budget),
                              (_pydoc_documents(), prose_budget)):
        order = list(documents)
        random.Random(seed).shuffle(order)
        kept, used = [], 0
        for name, text in order:
            size = len(_block(name, text).encode())
            if used + size <= budget:
                kept.append((name, text, size))
                used += size
        if len(kept) < 2:
            kind = "prose" if documents is _pydoc_documents() else "code"
            raise ValueError(f"max_bytes={max_bytes} is too small: the {kind} budget of {budget} "
                             f"bytes holds {len(kept)} document(s), at least 2 are needed")
        target, held, picked = validation_fraction * used, 0, []
        for index, (_, _, size) in enumerate(kept):
            if held + size <= target:
                picked.append(index)
                held += size
        if not picked:  # every document is bigger than the target: take the smallest one
            picked = [min(range(len(kept)), key=lambda i: kept[i][2])]
        picked = set(picked)
        for index, (name, text, _) in enumerate(kept):
            (validation if index in picked else train).append((name, text))
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(validation)
    train_text = "".join(_block(name, text) for name, text in train)
    validation_text = "".join(_block(name, text) for name, text in validation)
    digest = hashlib.sha256(train_text.encode() + b"\0" + validation_text.encode()).hexdigest()
    return Corpus(train=train_text, validation=validation_text,
                  documents=tuple(name for name, _ in train),
                  validation_documents=tuple(name for name, _ in validation),
                  sha256=digest, python_version=platform.python_version())
