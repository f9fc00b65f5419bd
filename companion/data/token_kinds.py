"""What kind of text each character, and each BPE token, of the corpus is: keyword, name, string...

The mixture-of-experts chapter asks what the experts specialise in. To answer it, every token of the
validation text gets a *kind*, one of :data:`KINDS`, and the chapter tabulates kinds against the
expert each token was routed to.

Kinds are decided per character first (:func:`character_kinds`) and then per token
(:func:`token_kinds`):

- The corpus text (:func:`companion.data.load_corpus`) is cut into documents at their header lines
  (:data:`companion.data.corpus.DOCUMENT_HEADER`, ``# ==== stdlib:path.py ====`` or
  ``# ==== pydoc:topic ====``). A ``pydoc:`` document is prose; a ``stdlib:`` document, and any text
  before the first header (so a snippet without a header), is Python code.
- Code is read with the standard library's own lexer, :mod:`tokenize`, so the kinds are Python's
  lexical categories.
- A BPE token gets the majority kind of its bytes, with layout (indentation, whitespace) counting
  only when there is nothing else.
"""

from __future__ import annotations

import io
import keyword
import re
import tokenize
from typing import Iterable

import numpy as np

from companion.data.corpus import DOCUMENT_HEADER

__all__ = ["KINDS", "character_kinds", "token_kinds"]

KINDS = ("keyword", "name", "operator", "string", "comment", "indentation", "number", "prose",
         "punctuation", "whitespace", "header", "other")
"""The kinds, in the order their indices refer to (``KINDS[i]`` is kind ``i``).

In code documents (read by :mod:`tokenize`):

- ``keyword``: a ``NAME`` token for which :func:`keyword.iskeyword` holds: the hard keywords,
  ``True``, ``False`` and ``None`` included. The *soft* keywords (``match``, ``case``, ``_``,
  ``type``) are ``name``: a lexer cannot tell ``match x:`` from ``re.match(x)``, and in the
  standard library they are nearly always names.
- ``name``: every other ``NAME`` token (identifiers, builtins such as ``print``, soft keywords).
- ``operator``: an ``OP`` token (operators and delimiters: ``+ = ( ) : , . ->`` ...).
- ``string``: a ``STRING`` token (docstrings and byte strings included, prefix and quotes
  included), and all of an f-string, the expressions in its braces included (Python 3.12 splits an
  f-string into ``FSTRING_START``/``MIDDLE``/``END`` and the tokens of its expressions; 3.11 gives
  one ``STRING``).
- ``comment``: a ``COMMENT`` token, ``#`` included.
- ``indentation``: the spaces, tabs and form feeds that open a line which has something other than
  whitespace on it, outside any string (``INDENT`` tokens and the same whitespace on lines where the
  level does not change, continuation lines and comment lines included).
- ``number``: a ``NUMBER`` token (``1_000``, ``0x1F``, ``1e-3``, ``2j``).

In prose documents:

- ``prose``: word characters (letters, digits, ``_``; ``re``'s ``\\w``).
- ``punctuation``: every other character that is not whitespace.

Everywhere:

- ``whitespace``: whitespace that is none of the above: spaces between tokens or words, newlines,
  whitespace on blank lines, the spaces and the newline of a header line.
- ``header``: the other characters of a document header line (``# ==== stdlib:abc.py ====``).
- ``other``: code characters that :mod:`tokenize` gives no token: the backslash of an explicit line
  join, an ``ERRORTOKEN`` (Python 3.11 makes one of ``$``, ``?`` or an unclosed ``'``), and text
  that does not tokenize (see :func:`character_kinds`).
"""

_INDEX = {kind: index for index, kind in enumerate(KINDS)}
_LAYOUT = [_INDEX["indentation"], _INDEX["whitespace"]]

_HEADER_PREFIX, _HEADER_SUFFIX = DOCUMENT_HEADER.split("{name}")
_HEADER_LINE = re.compile(
    "^" + re.escape(_HEADER_PREFIX) + r"(?:stdlib|pydoc):[^\n]*?" + re.escape(_HEADER_SUFFIX), re.M)
_LEADING_WHITESPACE = re.compile(r"^[^\S\r\n]+(?=\S)", re.M)  # line start, before a non-space
_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")

_FSTRING_START = getattr(tokenize, "FSTRING_START", None)  # Python >= 3.12
_FSTRING_END = getattr(tokenize, "FSTRING_END", None)
_TOKEN_KIND = {tokenize.OP: _INDEX["operator"], tokenize.STRING: _INDEX["string"],
               tokenize.NUMBER: _INDEX["number"], tokenize.COMMENT: _INDEX["comment"],
               tokenize.INDENT: _INDEX["indentation"]}
"""Kinds of the token types that are marked; NAME is decided by keyword.iskeyword. NEWLINE, NL,
DEDENT, ENDMARKER and ERRORTOKEN are not marked: what they cover keeps its background kind."""


def _line_starts(source: str) -> list[int]:
    """Offset of the first character of each line (lines end at ``\\n``), plus a final guard."""
    return [0] + [match.end() for match in re.finditer("\n", source)] + [len(source)]


def _token_spans(tokens: Iterable[tokenize.TokenInfo], starts: list[int]
                 ) -> tuple[list[tuple[int, int, int]], int | None]:
    """``(start, end, kind)`` character spans of the marked tokens, and where tokenizing failed.

    ``starts`` are the line starts of the tokenized text (:func:`_line_starts`), shifted to the
    offsets where the spans are wanted. The second result is ``None`` when the tokens ran to the
    end; otherwise it is the offset just after the last token read before :mod:`tokenize` raised
    (nothing from there on is trustworthy).
    """
    spans: list[tuple[int, int, int]] = []
    last_line = len(starts) - 1

    def offset(position: tuple[int, int]) -> int:
        row, column = position
        return min(starts[min(row - 1, last_line)] + column, starts[-1])

    fstrings: list[int] = []  # start offsets of the open f-strings (Python >= 3.12)
    reached = starts[0]
    try:
        for token in tokens:
            start, end = offset(token.start), offset(token.end)
            if token.type == _FSTRING_START:
                fstrings.append(start)
            elif token.type == _FSTRING_END and fstrings:
                opened = fstrings.pop()
                if not fstrings:  # the outermost f-string, nested ones and expressions inside
                    spans.append((opened, end, _INDEX["string"]))
            elif not fstrings and end > start:
                if token.type == tokenize.NAME:
                    kind = _INDEX["keyword" if keyword.iskeyword(token.string) else "name"]
                    spans.append((start, end, kind))
                elif token.type in _TOKEN_KIND:
                    spans.append((start, end, _TOKEN_KIND[token.type]))
            reached = max(reached, end)
    except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        return spans, reached
    return spans, None


def _tokenize(source: str) -> Iterable[tokenize.TokenInfo]:
    return tokenize.generate_tokens(io.StringIO(source).readline)


def _code_kinds(source: str) -> np.ndarray:
    """Kind indices of the characters of one code document (see :data:`KINDS`)."""
    kinds = np.full(len(source), _INDEX["other"], dtype=np.uint8)
    for match in _WHITESPACE.finditer(source):
        kinds[match.start():match.end()] = _INDEX["whitespace"]
    for match in _LEADING_WHITESPACE.finditer(source):
        kinds[match.start():match.end()] = _INDEX["indentation"]
    starts = _line_starts(source)
    spans, failed_at = _token_spans(_tokenize(source), starts)
    for start, end, kind in spans:
        kinds[start:end] = kind
    if failed_at is not None:
        # Fall back to one line at a time from the line where tokenizing stopped; what a line's
        # own tokenizing cannot read keeps its background kind ("other" unless whitespace).
        first = next(row for row in range(len(starts) - 1, -1, -1) if starts[row] <= failed_at)
        for row in range(first, len(starts) - 1):
            line = source[starts[row]:starts[row + 1]]
            if not line:
                continue
            line_spans, _ = _token_spans(_tokenize(line), [starts[row], starts[row + 1]])
            for start, end, kind in line_spans:
                if start >= failed_at:
                    kinds[start:end] = kind
    return kinds


def _prose_kinds(source: str) -> np.ndarray:
    """Kind indices of the characters of one prose document: prose, punctuation, whitespace."""
    kinds = np.full(len(source), _INDEX["punctuation"], dtype=np.uint8)
    for pattern, kind in ((_WORD, "prose"), (_WHITESPACE, "whitespace")):
        for match in pattern.finditer(source):
            kinds[match.start():match.end()] = _INDEX[kind]
    return kinds


def character_kinds(text: str) -> np.ndarray:
    """The kind of every character of ``text``, as indices into :data:`KINDS`.

    What is computed: a ``numpy.uint8`` array of shape ``(len(text),)`` whose entry ``i`` is the
    index in :data:`KINDS` of the kind of ``text[i]``. ``text`` is cut at the document header lines
    of the corpus (``# ==== stdlib:<path> ====`` and ``# ==== pydoc:<topic> ====``, each a whole
    line). Header lines are ``header`` (their spaces and newline ``whitespace``). The text after a
    ``pydoc:`` header, up to the next header, is prose; after a ``stdlib:`` header it is code, and
    so is any text before the first header (a snippet without headers is code). The rules for
    each kind are in the documentation of :data:`KINDS`.

    A code document that :mod:`tokenize` cannot read to its end (an unterminated triple-quoted
    string, an unindent that matches no outer level) keeps the kinds of the tokens read before the
    error. From the line where reading stopped, each line is then tokenized on its own, and its
    tokens after the stopping point are marked; characters no token covers are ``whitespace`` (or
    ``indentation``) if they are whitespace and ``other`` if not. So ``s = \"\"\"never closed``
    followed by ``more words`` gives ``s`` name, ``=`` operator, ``\"\"\"never`` and ``closed``
    other (that line still does not tokenize), and ``more``, ``words`` names.

    Raises:
        TypeError: ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    kinds = np.empty(len(text), dtype=np.uint8)
    position, prose = 0, False
    for header in _HEADER_LINE.finditer(text):
        body = text[position:header.start()]
        kinds[position:header.start()] = _prose_kinds(body) if prose else _code_kinds(body)
        line = text[header.start():header.end()]
        kinds[header.start():header.end()] = [
            _INDEX["whitespace" if character.isspace() else "header"] for character in line]
        prose = line.startswith(_HEADER_PREFIX + "pydoc:")
        position = header.end()
    body = text[position:]
    kinds[position:] = _prose_kinds(body) if prose else _code_kinds(body)
    return kinds


def _utf8_lengths(text: str) -> np.ndarray:
    """Number of UTF-8 bytes of each character of ``text``, shape ``(len(text),)``."""
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return (1 + (code_points >= 0x80) + (code_points >= 0x800)
            + (code_points >= 0x10000)).astype(np.int64)


def token_kinds(text: str, tokenizer) -> tuple[list[int], np.ndarray]:
    """Encode ``text`` and give every token the kind of the text it covers.

    What is computed: ``ids = tokenizer.encode(text)`` and a ``numpy.uint8`` array ``kinds`` of
    shape ``(len(ids),)``, where ``kinds[t]`` indexes :data:`KINDS`. Each byte of the UTF-8
    encoding of ``text`` has the kind of the character it belongs to (:func:`character_kinds`);
    token ``t`` covers the bytes ``tokenizer.token_bytes(ids[t])`` at its place in the text, and its
    kind is the most frequent kind among those bytes that are not layout (``indentation``,
    ``whitespace``); a token with only layout bytes gets the more frequent layout kind. Ties go to
    the kind that comes first in :data:`KINDS` (so ``indentation`` before ``whitespace``, and
    ``operator`` before ``string`` in ``("``). Examples: ``b" def"`` is ``keyword``; ``b"    "``
    opening a line of code is ``indentation``, but inside a docstring it is ``string``; ``b"\\n"``
    is ``whitespace``; ``b"\\n   "`` before ``" return"`` is ``indentation`` (3 bytes to 1). A token of
    no bytes (which a byte-level BPE never makes) is ``other``.

    Returns ``(ids, kinds)``; ``ids`` is the list of token ids ``encode`` returned.

    Raises:
        TypeError: ``text`` is not a ``str``, or ``tokenizer`` lacks callable ``encode`` and
            ``token_bytes`` methods (as :class:`companion.data.BPETokenizer` has), or
            ``token_bytes`` returns something other than ``bytes``.
        ValueError: the tokens' bytes, concatenated, are not the UTF-8 bytes of ``text`` (the
            tokenizer is not lossless, so tokens cannot be matched to characters).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    missing = [name for name in ("encode", "token_bytes")
               if not callable(getattr(tokenizer, name, None))]
    if missing:
        raise TypeError(f"tokenizer must have callable encode(text) and token_bytes(id) methods "
                        f"(like companion.data.BPETokenizer); {type(tokenizer).__name__} lacks "
                        f"{', '.join(missing)}")
    ids = list(tokenizer.encode(text))
    pieces = [tokenizer.token_bytes(token_id) for token_id in ids]
    wrong = next((piece for piece in pieces if not isinstance(piece, bytes)), None)
    if wrong is not None:
        raise TypeError(f"tokenizer.token_bytes must return bytes, got {type(wrong).__name__}")
    data = text.encode("utf-8")
    joined = b"".join(pieces)
    if joined != data:
        where = next((i for i, (a, b) in enumerate(zip(joined, data)) if a != b),
                     min(len(joined), len(data)))
        raise ValueError(f"the tokens' bytes do not reproduce the text: {len(joined)} bytes against "
                         f"the text's {len(data)} UTF-8 bytes, first difference at byte {where}; "
                         f"token_kinds needs a lossless tokenizer")
    byte_kinds = np.repeat(character_kinds(text), _utf8_lengths(text))
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    owner = np.repeat(np.arange(len(pieces), dtype=np.int64), lengths)
    counts = np.bincount(owner * len(KINDS) + byte_kinds, minlength=len(pieces) * len(KINDS))
    counts = counts.reshape(len(pieces), len(KINDS))
    content = counts.copy()
    content[:, _LAYOUT] = 0
    kinds = np.where(content.any(axis=1), content.argmax(axis=1), counts.argmax(axis=1))
    kinds[lengths == 0] = _INDEX["other"]
    return ids, kinds.astype(np.uint8)
