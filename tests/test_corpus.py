"""The corpus: Python's stdlib source plus pydoc prose, chosen reproducibly, split by document."""

import hashlib

import pytest

from companion.data import corpus as corpus_module
from companion.data import load_corpus


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _prose_bytes(text: str, names: tuple[str, ...]) -> int:
    return sum(_size(corpus_module._block(name, body))
               for name, body in corpus_module._split_documents(text, names)
               if name.startswith("pydoc:"))


def test_reproducible_when_recomputed_from_scratch():
    first = load_corpus()
    corpus_module._load_corpus.cache_clear()
    corpus_module._stdlib_documents.cache_clear()
    corpus_module._pydoc_documents.cache_clear()
    second = load_corpus()
    assert first is not second
    assert first == second
    assert load_corpus() is second  # cached


def test_hash_is_the_hash_of_the_content():
    corpus = load_corpus()
    expected = hashlib.sha256(corpus.train.encode() + b"\0" + corpus.validation.encode())
    assert corpus.sha256 == expected.hexdigest()


@pytest.mark.parametrize("max_bytes,prose_fraction,validation_fraction",
                         [(2_000_000, 0.2, 0.1), (300_000, 0.3, 0.25)])
def test_sizes_near_the_requested_ones(max_bytes, prose_fraction, validation_fraction):
    corpus = load_corpus(max_bytes, prose_fraction, validation_fraction)
    total = _size(corpus.train) + _size(corpus.validation)
    assert 0.97 * max_bytes <= total <= max_bytes
    prose = (_prose_bytes(corpus.train, corpus.documents)
             + _prose_bytes(corpus.validation, corpus.validation_documents))
    assert abs(prose / total - prose_fraction) < 0.02
    assert abs(_size(corpus.validation) / total - validation_fraction) < 0.02


def test_train_and_validation_are_disjoint_documents_with_code_and_prose():
    corpus = load_corpus()
    assert not set(corpus.documents) & set(corpus.validation_documents)
    assert len(set(corpus.documents)) == len(corpus.documents)
    for text, names in ((corpus.train, corpus.documents),
                        (corpus.validation, corpus.validation_documents)):
        assert any(name.startswith("stdlib:") for name in names)
        assert any(name.startswith("pydoc:") for name in names)
        pieces = corpus_module._split_documents(text, names)
        assert "".join(corpus_module._block(name, body) for name, body in pieces) == text


def test_documents_are_real_and_exclude_tests():
    corpus = load_corpus()
    names = corpus.documents + corpus.validation_documents
    assert all(name.startswith(("stdlib:", "pydoc:")) for name in names)
    for name in names:
        parts = name.removeprefix("stdlib:").split("/")
        assert not {"test", "tests", "idle_test", "site-packages"} & set(parts), name
    assert "# ==== stdlib:" in corpus.train and "# ==== pydoc:" in corpus.validation


def test_hash_changes_with_the_content():
    hashes = {load_corpus().sha256, load_corpus(max_bytes=1_000_000).sha256,
              load_corpus(seed=1).sha256, load_corpus(prose_fraction=0.3).sha256}
    assert len(hashes) == 4


def test_summary_mentions_sizes_and_version():
    corpus = load_corpus()
    summary = corpus.summary()
    assert corpus.python_version in summary and corpus.sha256[:12] in summary
    assert f"{_size(corpus.train):,} bytes" in summary
    assert f"{len(corpus.validation_documents):>4} documents" in summary


@pytest.mark.parametrize("kwargs,error", [
    ({"max_bytes": 0}, ValueError), ({"max_bytes": -5}, ValueError),
    ({"max_bytes": 1e6}, TypeError), ({"max_bytes": True}, TypeError),
    ({"max_bytes": 1000}, ValueError),  # too small for two documents of each kind
    ({"prose_fraction": 0.0}, ValueError), ({"prose_fraction": 1.0}, ValueError),
    ({"prose_fraction": "0.2"}, TypeError), ({"validation_fraction": 1.5}, ValueError),
    ({"validation_fraction": -0.1}, ValueError), ({"seed": 1.0}, TypeError),
])
def test_bad_arguments_raise(kwargs, error):
    with pytest.raises(error, match="|".join(kwargs)):
        load_corpus(**kwargs)
