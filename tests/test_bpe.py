"""Byte-level BPE: exact round trips, the training rule, and quality against `tokenizers`."""

import json
import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.data import BPETokenizer, load_corpus
from companion.data.bpe import DEFAULT_PATTERN


# ------------------------------------------------------------------- the naive reference rule
def naive_merge(word, pair, new_id):
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def naive_train(chunks, vocab_size):
    """Recount every pair of every chunk at each step; the rule of BPETokenizer.train, slowly."""
    words = Counter(tuple(chunk) for chunk in chunks)
    merges = []
    while 256 + len(merges) < vocab_size:
        counts = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                counts[pair] += n
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        if counts[best] < 2:
            break
        merges.append(best)
        merged = Counter()
        for word, n in words.items():
            merged[naive_merge(word, best, 255 + len(merges))] += n
        words = merged
    return merges


def replay_encode(tokenizer, text):
    """Encode by replaying every merge in training order over every chunk."""
    ids = []
    for chunk in tokenizer.pretokenize(text):
        word = tuple(chunk)
        for index, pair in enumerate(tokenizer.merges):
            word = naive_merge(word, pair, 256 + index)
        ids.extend(word)
    return ids


# -------------------------------------------------------------------------------- fixtures
small_texts = st.text(alphabet="ab c'_1\n", max_size=80)
small_bytes = st.lists(st.sampled_from(b"ab \xff\xc3\xa9"), max_size=60).map(bytes)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


@pytest.fixture(scope="module")
def small_tokenizer(corpus):
    return BPETokenizer.train(corpus.train[:100_000], 1024)


@pytest.fixture(scope="module")
def big_tokenizer(corpus):
    return BPETokenizer.train(corpus.train, 4096)


# ------------------------------------------------------------------------------ round trips
@settings(max_examples=300, deadline=None)
@given(st.text())
def test_pattern_covers_every_character(text):
    assert "".join(re.findall(DEFAULT_PATTERN, text)) == text


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_bytes_round_trip(small_tokenizer, data):
    assert small_tokenizer.decode_bytes(small_tokenizer.encode(data)) == data


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_str_round_trip(small_tokenizer, text):
    ids = small_tokenizer.encode(text)
    assert small_tokenizer.decode(ids) == text
    assert ids == small_tokenizer.encode(text.encode("utf-8"))  # same chunks for valid UTF-8


@pytest.mark.parametrize("text", ["", "\0", "a\r\nb", "héllo wörld 🙂🙂 中文",
                                  "__init__(self)",
                                  b"\xff\xfe\x00", b"\xed\xa0\x80", b"caf\xc3", "don't  \t\n"])
def test_round_trip_examples(small_tokenizer, text):
    ids = small_tokenizer.encode(text)
    if isinstance(text, bytes):
        assert small_tokenizer.decode_bytes(ids) == text
    else:
        assert small_tokenizer.decode(ids) == text


def test_encoding_compresses_and_token_bytes_are_consistent(small_tokenizer, corpus):
    text = corpus.validation[:20_000]
    assert len(small_tokenizer.encode(text)) < 0.5 * len(text.encode())
    for index, (first, second) in enumerate(small_tokenizer.merges):
        assert small_tokenizer.token_bytes(256 + index) == (
            small_tokenizer.token_bytes(first) + small_tokenizer.token_bytes(second))


# ------------------------------------------------------------------------- the training rule
@settings(max_examples=300, deadline=None)
@given(text=st.one_of(small_texts, small_bytes), extra=st.integers(0, 40))
def test_incremental_training_equals_naive_rule(text, extra):
    tokenizer = BPETokenizer.train(text, 256 + extra)
    assert tokenizer.merges == naive_train(tokenizer.pretokenize(text), 256 + extra)
    assert tokenizer.encode(text) == replay_encode(tokenizer, text)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="ab", min_size=60, max_size=400)
       | st.binary(min_size=60, max_size=400))
def test_long_chunks_encode_like_replaying_the_merges(text):
    # Chunks over 64 bytes take the heap path of the encoder; replaying is the definition.
    tokenizer = BPETokenizer.train("aab abab bba aaaa bbbb ab ba abba baab " * 3 + "ab" * 50, 300)
    assert tokenizer.encode(text) == replay_encode(tokenizer, text)


def test_incremental_training_equals_naive_rule_on_the_corpus(corpus):
    text = corpus.train[:30_000] + corpus.validation[:10_000]
    tokenizer = BPETokenizer.train(text, 600)
    assert tokenizer.vocab_size == 600
    assert tokenizer.merges == naive_train(tokenizer.pretokenize(text), 600)
    sample = corpus.validation[10_000:14_000]
    assert tokenizer.encode(sample) == replay_encode(tokenizer, sample)


def test_overlapping_pairs_and_early_stop():
    # "aaaa" holds (a, a) three times, then (aa, aa) once per chunk: both chunks -> count 2.
    tokenizer = BPETokenizer.train("aaaa aaaa", 1000)
    a = ord("a")
    assert tokenizer.merges[:2] == [(a, a), (256, 256)]
    assert BPETokenizer.train("abc", 1000).vocab_size == 256  # no pair occurs twice: stop
    assert BPETokenizer.train("ab ab", 1000).merges == [(a, a + 1)]  # " ab" is its own chunk


@settings(max_examples=100, deadline=None)
@given(text=st.one_of(small_texts, small_bytes), size=st.integers(0, 30), cut=st.integers(0, 30))
def test_truncated_equals_training_to_that_size(text, size, cut):
    full = BPETokenizer.train(text, 256 + size)
    smaller = 256 + min(cut, len(full.merges))
    assert full.truncated(smaller) == BPETokenizer.train(text, smaller)


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=small_texts, size=st.integers(0, 30))
def test_save_load_round_trip(tmp_path, text, size):
    tokenizer = BPETokenizer.train(text, 256 + size)
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = BPETokenizer.load(tmp_path / "tokenizer.json")
    assert loaded == tokenizer and loaded.merges == tokenizer.merges
    assert loaded.encode(text) == tokenizer.encode(text)


# ------------------------------------------------------------------ quality against the library
@pytest.mark.parametrize("vocab_size", [1024, 2048, 4096])
def test_tokens_per_byte_matches_the_tokenizers_library(big_tokenizer, corpus, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    library = Tokenizer(models.BPE())
    library.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    library.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    library.train_from_iterator([corpus.train], trainer)
    assert library.get_vocab_size() == vocab_size
    n_bytes = len(corpus.validation.encode())
    theirs = len(library.encode(corpus.validation).ids) / n_bytes
    ours_tokenizer = big_tokenizer.truncated(vocab_size)
    ours = len(ours_tokenizer.encode(corpus.validation)) / n_bytes
    assert abs(ours - theirs) / theirs < 0.05, (
        f"tokens per byte at vocab {vocab_size}: ours {ours:.4f}, tokenizers {theirs:.4f}")


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("vocab_size,error", [(255, ValueError), (-1, ValueError),
                                              (300.0, TypeError), (True, TypeError),
                                              ("512", TypeError)])
def test_bad_vocab_size_raises(vocab_size, error):
    with pytest.raises(error, match="vocab_size"):
        BPETokenizer.train("hello hello", vocab_size)


def test_bad_inputs_raise(small_tokenizer, tmp_path):
    with pytest.raises(TypeError, match="str or bytes"):
        small_tokenizer.encode(123)
    with pytest.raises(TypeError, match="str or bytes"):
        BPETokenizer.train(["a list"], 300)
    for bad in ([small_tokenizer.vocab_size], [-1], [0, 5000]):
        with pytest.raises(ValueError, match="token id"):
            small_tokenizer.decode(bad)
    with pytest.raises(ValueError, match="at most"):
        small_tokenizer.truncated(small_tokenizer.vocab_size + 1)
    with pytest.raises(ValueError, match="outside"):
        BPETokenizer([(97, 256)])
    with pytest.raises(ValueError, match="repeats"):
        BPETokenizer([(97, 98), (97, 98)])
    path = tmp_path / "tokenizer.json"
    small_tokenizer.save(path)
    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="version"):
        BPETokenizer.load(path)


def test_repr():
    assert repr(BPETokenizer.train("aaaa aaaa", 258)) == "BPETokenizer(vocab_size=258)"
