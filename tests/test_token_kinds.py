"""Kinds of characters and BPE tokens (keyword, name, string, prose...): exact on snippets, the
majority rule against a plain-Python reference, robust to code that does not tokenize."""

import importlib
import tokenize
from collections import Counter

import numpy as np
import pytest

from companion.data import KINDS, BPETokenizer, character_kinds, load_corpus, token_kinds

# the package exports the function token_kinds under the module's name; the module itself:
token_kinds_module = importlib.import_module("companion.data.token_kinds")

LAYOUT = ("indentation", "whitespace")


def runs(text):
    """``(piece, kind)`` for each run of characters of one kind, in order."""
    kinds = character_kinds(text)
    assert kinds.shape == (len(text),) and kinds.dtype == np.uint8
    out = []
    for character, kind in zip(text, kinds):
        if out and out[-1][1] == KINDS[kind]:
            out[-1][0] += character
        else:
            out.append([character, KINDS[kind]])
    return [tuple(run) for run in out]


def visible(text):
    """:func:`runs` without the runs of whitespace (which separate almost every pair of runs)."""
    return [(piece, kind) for piece, kind in runs(text) if kind != "whitespace"]


def kind_at(text, fragment, occurrence=0):
    """The kinds of the characters of the ``occurrence``-th ``fragment`` in ``text``."""
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(fragment, start + 1)
    return {KINDS[k] for k in character_kinds(text)[start:start + len(fragment)]}


# -------------------------------------------------------------------------------- the kinds
def test_kinds_start_with_the_chapter_columns_and_are_distinct():
    assert KINDS[:8] == ("keyword", "name", "operator", "string", "comment", "indentation",
                         "number", "prose")
    assert len(set(KINDS)) == len(KINDS) == 12
    assert {"whitespace", "header", "punctuation", "other"} <= set(KINDS)


# ------------------------------------------------------------------------------- code, exactly
def test_a_function_definition():
    text = ('def area(width, height=2):\n'
            '    """Width times height."""\n'
            '    return width * height  # no units\n')
    assert visible(text) == [
        ("def", "keyword"), ("area", "name"), ("(", "operator"), ("width", "name"),
        (",", "operator"), ("height", "name"), ("=", "operator"), ("2", "number"),
        ("):", "operator"), ("    ", "indentation"), ('"""Width times height."""', "string"),
        ("    ", "indentation"), ("return", "keyword"), ("width", "name"), ("*", "operator"),
        ("height", "name"), ("# no units", "comment")]
    assert runs(text)[1] == (" ", "whitespace") and runs(text)[-1] == ("\n", "whitespace")


def test_numbers():
    text = "n = 1_000 + 0x1F * 1e-3 - 2j + 0o17 + 3.5\n"
    assert [piece for piece, kind in visible(text) if kind == "number"] == [
        "1_000", "0x1F", "1e-3", "2j", "0o17", "3.5"]
    assert [kind for piece, kind in visible(text) if piece in "+-*="] == ["operator"] * 6


def test_keywords_names_and_soft_keywords():
    text = ("match command:\n"
            "    case [x, _]:\n"
            "        print(True, None, False, type, x is not None and lambda: 0)\n")
    kinds = dict(visible(text))
    for word in ("True", "None", "False", "is", "not", "and", "lambda"):
        assert kinds[word] == "keyword", word
    for word in ("match", "command", "case", "x", "_", "print", "type"):  # soft keywords: names
        assert kinds[word] == "name", word


def test_all_of_an_f_string_is_string():
    text = "label = f\"{name!r:>{width}} {row['key']}\" + rb'\\d' + 'plain'\n"
    assert visible(text) == [
        ("label", "name"), ("=", "operator"),
        ("f\"{name!r:>{width}} {row['key']}\"", "string"),  # one run: the space inside is string too
        ("+", "operator"), ("rb'\\d'", "string"), ("+", "operator"), ("'plain'", "string")]


def test_fstring_tokens_of_python_312_mark_the_whole_span(monkeypatch):
    # Python 3.12 splits f"a{x}b" into FSTRING_START, FSTRING_MIDDLE, OP, NAME, OP, ..., FSTRING_END;
    # fed such tokens (made by hand, so that this runs on 3.11 too), the span is one string
    start, end = 1001, 1002
    monkeypatch.setattr(token_kinds_module, "_FSTRING_START", start)
    monkeypatch.setattr(token_kinds_module, "_FSTRING_END", end)

    def token(kind, string, column):
        return tokenize.TokenInfo(kind, string, (1, column), (1, column + len(string)), "")

    source = 'y = f"a{x:{w}}b" + z\n'  # offsets: y0 =2 f4 a6 {7 x8 :9 {10 w11 }12 }13 b14 "15 +17 z19
    tokens = [token(tokenize.NAME, "y", 0), token(tokenize.OP, "=", 2), token(start, 'f"', 4),
              token(3000, "a", 6), token(tokenize.OP, "{", 7), token(tokenize.NAME, "x", 8),
              token(tokenize.OP, ":", 9), token(tokenize.OP, "{", 10), token(tokenize.NAME, "w", 11),
              token(tokenize.OP, "}", 12), token(tokenize.OP, "}", 13), token(3000, "b", 14),
              token(end, '"', 15), token(tokenize.OP, "+", 17), token(tokenize.NAME, "z", 19)]
    spans, failed_at = token_kinds_module._token_spans(
        iter(tokens), token_kinds_module._line_starts(source))
    assert failed_at is None
    assert [(source[a:b], KINDS[k]) for a, b, k in spans] == [
        ("y", "name"), ("=", "operator"), ('f"a{x:{w}}b"', "string"), ("+", "operator"),
        ("z", "name")]


def test_indentation_docstrings_comments_and_blank_lines():
    text = ("class Box:\n"
            "    '''A box.\n"
            "\n"
            "    Indented docstring text stays string.\n"
            "    '''\n"
            "    \n"  # a blank line holding spaces: whitespace, not indentation
            "    # a comment line\n"
            "    def size(self,\n"
            "             other):  # continuation line\n"
            "        if other:\n"
            "            return 1\n"
            "        return 0\n")
    assert kind_at(text, "'''A box.\n\n    Indented docstring text stays string.\n    '''") == {"string"}
    assert kind_at(text, "    \n") == {"whitespace"}
    assert kind_at(text, "    # a comment line") == {"indentation", "comment"}
    assert kind_at(text, "# a comment line") == {"comment"}
    assert kind_at(text, "             other") == {"indentation", "name"}
    assert kind_at(text, " " * 13) == {"indentation"}
    assert kind_at(text, "\n            return") == {"whitespace", "indentation", "keyword"}
    assert kind_at(text, "        return 0") == {"indentation", "keyword", "whitespace", "number"}
    assert kind_at(text, "    ", occurrence=0) == {"indentation"}


def test_backslash_and_error_tokens_are_other():
    text = "total = $ + \\\n    3\n"
    assert visible(text) == [("total", "name"), ("=", "operator"), ("$", "other"),
                             ("+", "operator"), ("\\", "other"), ("    ", "indentation"),
                             ("3", "number")]


# ------------------------------------------------------------------------------ documents
def test_headers_split_prose_from_code():
    text = ("x = 1\n"  # before the first header: code
            "# ==== pydoc:assert ====\n"
            "The \"assert\" statement: x_y, 3 times.\n"
            "   def is prose here\n"
            "\n"
            "# ==== stdlib:json/tool.py ====\n"
            "# ==== not a header ====\n"
            "def f(): pass\n"
            "\n")
    assert visible(text) == [
        ("x", "name"), ("=", "operator"), ("1", "number"),
        ("#", "header"), ("====", "header"), ("pydoc:assert", "header"), ("====", "header"),
        ("The", "prose"), ('"', "punctuation"), ("assert", "prose"), ('"', "punctuation"),
        ("statement", "prose"), (":", "punctuation"), ("x_y", "prose"), (",", "punctuation"),
        ("3", "prose"), ("times", "prose"), (".", "punctuation"),
        ("def", "prose"), ("is", "prose"), ("prose", "prose"), ("here", "prose"),
        ("#", "header"), ("====", "header"), ("stdlib:json/tool.py", "header"), ("====", "header"),
        ("# ==== not a header ====", "comment"),
        ("def", "keyword"), ("f", "name"), ("():", "operator"), ("pass", "keyword")]
    assert kind_at(text, "   def is") == {"whitespace", "prose"}  # prose has no indentation


def test_a_document_that_does_not_tokenize_falls_back_line_by_line():
    # tokenize stops at the unterminated string; the lines from there on are read one at a time:
    # the string's own line still fails after `s =` and the rest of it is "other"
    text = ("# ==== stdlib:broken.py ====\n"
            "x = 1\n"
            "s = \"\"\"never closed\n"
            "more words\n"
            "# ==== stdlib:fine.py ====\n"
            "y = 2\n")
    assert visible(text)[4:] == [
        ("x", "name"), ("=", "operator"), ("1", "number"),
        ("s", "name"), ("=", "operator"), ('"""never', "other"), ("closed", "other"),
        ("more", "name"), ("words", "name"),
        ("#", "header"), ("====", "header"), ("stdlib:fine.py", "header"), ("====", "header"),
        ("y", "name"), ("=", "operator"), ("2", "number")]
    with pytest.raises(tokenize.TokenError):  # the premise: the document really does not tokenize
        list(tokenize.generate_tokens(iter(["s = '''never closed\n", "more\n"]).__next__))


def test_an_unindent_that_matches_no_level_only_costs_nothing():
    text = "if x:\n        y = 1\n    z = 2\nw = 3\n"
    assert visible(text) == [
        ("if", "keyword"), ("x", "name"), (":", "operator"), ("        ", "indentation"),
        ("y", "name"), ("=", "operator"), ("1", "number"), ("    ", "indentation"),
        ("z", "name"), ("=", "operator"), ("2", "number"), ("w", "name"), ("=", "operator"),
        ("3", "number")]


def test_empty_text():
    assert character_kinds("").shape == (0,)
    assert token_kinds("", BPETokenizer())[0] == []


# --------------------------------------------------------------------------------- tokens
def named(tokenizer, ids, kinds):
    return [(tokenizer.token_bytes(i), KINDS[k]) for i, k in zip(ids, kinds)]


def test_token_kinds_by_hand():
    # merges: "  ", "    ", " d", " de", " def", "\n  ", "\n   ", '("', '")'
    merges = [(32, 32), (256, 256), (32, 100), (258, 101), (259, 102), (10, 256), (261, 32),
              (40, 34), (34, 41)]
    tokenizer = BPETokenizer(merges)
    text = 'class A:\n    def f(self):\n        g("x")\n        """a     b"""\n\n'
    ids, kinds = token_kinds(text, tokenizer)
    assert ids == tokenizer.encode(text)
    assert kinds.dtype == np.uint8 and kinds.shape == (len(ids),)
    tokens = named(tokenizer, ids, kinds)
    assert tokens[:8] == [(b"c", "keyword"), (b"l", "keyword"), (b"a", "keyword"), (b"s", "keyword"),
                          (b"s", "keyword"), (b" ", "whitespace"), (b"A", "name"), (b":", "operator")]
    assert tokens[8:11] == [(b"\n   ", "indentation"),  # 3 indentation bytes against 1 newline
                            (b" def", "keyword"),  # its space is whitespace, which does not count
                            (b" ", "whitespace")]
    # "\n" and 8 spaces: the merge of "  " comes first, so no "\n   " here; all 8 spaces indent
    assert tokens[19:28] == [(b"\n", "whitespace"), (b"    ", "indentation"), (b"  ", "indentation"),
                             (b" ", "indentation"), (b" ", "indentation"), (b"g", "name"),
                             (b'("', "operator"), (b"x", "string"), (b'")', "operator")]  # 1:1 ties
    assert tokens[36:39] == [(b"a", "string"), (b"    ", "string"), (b" ", "string")]  # in a docstring
    assert tokens[-2:] == [(b"\n", "whitespace"), (b"\n", "whitespace")]


def reference_token_kinds(text, tokenizer, ids):
    """Each token's most frequent non-layout byte kind (layout if none), earlier kind on ties."""
    byte_kinds = [kind for character, kind in zip(text, character_kinds(text))
                  for _ in character.encode("utf-8")]
    out, position = [], 0
    for token_id in ids:
        size = len(tokenizer.token_bytes(token_id))
        covered = byte_kinds[position:position + size]
        position += size
        counts = Counter([k for k in covered if KINDS[k] not in LAYOUT] or covered)
        best = max(counts.values())
        out.append(min(k for k, n in counts.items() if n == best))
    assert position == len(text.encode("utf-8"))
    return out


SNIPPET = ('# ==== stdlib:café.py ====\n'
           'def résumé(naïve=None):\n'
           '    """Return the café\'s naïve résumé — with ☕ and 𝔘nicode."""\n'
           '    if naïve is None:\n'
           '        naïve = {"ümlaut": 0x1F, "π": 3.14}  # Grüße\n'
           '    return f"{naïve!r} ☕"\n'
           '\n'
           '# ==== pydoc:café ====\n'
           'A café serves coffee ☕; naïve readers — and résumés — are welcome.\n'
           '\n')


def test_token_kinds_follow_the_majority_of_their_bytes():
    text = SNIPPET * 3
    tokenizer = BPETokenizer.train(text, vocab_size=300)
    ids, kinds = token_kinds(text, tokenizer)
    assert ids == tokenizer.encode(text)
    assert any(len(tokenizer.token_bytes(i)) > 1 for i in ids)  # merges happened
    assert kinds.tolist() == reference_token_kinds(text, tokenizer, ids)
    assert {KINDS[k] for k in kinds} >= {"keyword", "name", "operator", "string", "comment",
                                         "indentation", "number", "prose", "header"}


def test_every_kind_appears_in_the_validation_text():
    corpus = load_corpus()
    tokenizer = BPETokenizer.train(corpus.validation[:50_000], vocab_size=512)
    ids, kinds = token_kinds(corpus.validation, tokenizer)
    assert len(ids) == len(kinds) > 10_000
    counts = Counter(KINDS[k] for k in kinds.tolist())
    for kind in KINDS[:8] + ("header", "whitespace", "punctuation"):
        assert counts[kind] > 0, kind
    # every header line is marked, and nothing else is
    headers = sum(len(name) + 9 for name in corpus.validation_documents)  # "#", "====", "===="
    assert (character_kinds(corpus.validation) == KINDS.index("header")).sum() == headers


# ----------------------------------------------------------------------------------- errors
class NoTokenBytes:
    def encode(self, text):
        return list(text.encode())


class Lossy(BPETokenizer):
    def encode(self, text):
        return super().encode(text)[:-1]  # drops the last byte


class StrPieces(BPETokenizer):
    def token_bytes(self, token_id):
        return super().token_bytes(token_id).decode("latin-1")


@pytest.mark.parametrize("function", [character_kinds, lambda text: token_kinds(text, BPETokenizer())])
@pytest.mark.parametrize("text", [b"x = 1\n", None, ["x"]])
def test_text_must_be_a_str(function, text):
    with pytest.raises(TypeError, match="text must be a str"):
        function(text)


@pytest.mark.parametrize("tokenizer,missing", [(object(), "encode, token_bytes"),
                                               (NoTokenBytes(), "token_bytes")])
def test_tokenizer_needs_encode_and_token_bytes(tokenizer, missing):
    with pytest.raises(TypeError, match=f"lacks {missing}$"):
        token_kinds("x = 1\n", tokenizer)


def test_a_lossy_tokenizer_is_refused():
    with pytest.raises(ValueError, match="first difference at byte 5"):
        token_kinds("x = 1\n", Lossy())
    with pytest.raises(TypeError, match="token_bytes must return bytes, got str"):
        token_kinds("x = 1\n", StrPieces())
