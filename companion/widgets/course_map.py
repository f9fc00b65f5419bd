"""Course map: the book's chapters, their key ideas and what builds on what, as a clickable graph.

The book is a family of ideas, and its chapters depend on one another: masking needs attention,
efficient attention needs the key-value cache, state space models return to chapter 1's recurrence
with chapter 5's linear attention in hand. This widget draws that as a directed graph, one box per
chapter and an arrow from ``A`` to ``B`` when ``B`` builds on ``A``, and shows a chapter's question,
its key ideas, the chapters it builds on and those that build on it, and a link to it.

The data (:data:`DEFAULT_CHAPTERS`, or the reader's own, checked by :func:`check_chapters`): a list
of chapters in reading order, chapter ``n`` at index ``n - 1``, each a dict with

* ``title``: a short title (words separated by single spaces);
* ``question``: the one-line question the chapter answers;
* ``ideas``: its key ideas, 1 to ``MAX_IDEAS`` short sentences;
* ``page``: its page, relative to the widget's ``link_base`` (``"02_attention.html"``), or a full
  ``http(s)://`` address;
* ``builds_on``: the numbers of the chapters it builds on directly, each *earlier* in the list (so the
  graph has no cycle, and reading in order always works).

What the JavaScript (``course_map.js``) computes from that, with the Python twins here:

* the transitive prerequisites and dependents of a chapter (:func:`prerequisites`,
  :func:`dependents`): what to read first, and what it leads to;
* the arrows drawn (:func:`drawn_edges`): the *transitive reduction* of the graph, so that an arrow
  ``A -> B`` implied by a longer path ``A -> ... -> B`` is left out (chapter 9 builds on all eight
  chapters, but only the last chapter of each strand points at it);
* the layout (:func:`map_layout`): a chapter's column is the length of the longest chain of
  prerequisites before it (:func:`depths`), so every arrow points right; in each column a chapter
  takes the row of its deepest prerequisite if that row is free, else the nearest free one (below
  first), so that a strand of chapters reads as a straight line. Titles are wrapped to
  ``TITLE_WIDTH`` characters (:func:`wrap_title`); every coordinate is an integer;
* the arrows' paths (:func:`edge_path`, :func:`arrow_points`) and which arrows light up when a
  chapter is hovered, focused or selected (:func:`edge_kinds`): the arrows upstream of it (on a path
  into it) and downstream (on a path out of it);
* the texts: :func:`summary_text`, :func:`chapter_list`, :func:`node_label`, and the links
  (:func:`chapter_link`).

All of it is integers and strings, so Python and JavaScript agree exactly (tests/test_course_map.py
compares them in Node, and draws the widget in Chromium).
"""

from __future__ import annotations

import copy
import pathlib
import re
from collections.abc import Mapping
from typing import Any, Sequence

import anywidget
import traitlets

from companion.widgets._traits import checked, checked_int

MAX_CHAPTERS = 16
MAX_IDEAS = 8
MAX_TITLE = 40  # characters
MAX_TEXT = 300  # characters, for a question or an idea
TITLE_WIDTH = 12  # characters per line of a title in a box
# The layout, in SVG user units (pixels at full size). COL_GAP is even, so that a path's bend is an integer.
NODE_WIDTH, COL_GAP, ROW_GAP, MARGIN = 94, 20, 14, 8
NODE_TOP, LINE_HEIGHT = 20, 14  # a box is NODE_TOP + LINE_HEIGHT * lines high (even: its middle is an integer)
ARROW_LENGTH, ARROW_HALF_WIDTH = 6, 3

INTRO_LINK_BASE = "../notebooks/"  # from the book's intro page (book/intro.md) to the chapters
NOTEBOOK_LINK_BASE = ""  # from a chapter's own page (notebooks/09_open_questions.ipynb) to the others
KEYS = ("title", "question", "ideas", "page", "builds_on")
HINT = ("Hover over a chapter (or focus it with Tab) to light up what it builds on and what builds on it; "
        "click it, or press Enter, to read its question and key ideas.")

DEFAULT_CHAPTERS: tuple[dict, ...] = (
    {"title": "The sequence problem",
     "question": "Why does order matter, what is a token, why does recurrence struggle, and what does attention cost?",
     "ideas": ["Order carries meaning: a bag of words stays at chance where a model that reads in order succeeds.",
               "Byte-level BPE sets the sequence length, with diminishing returns as the vocabulary grows.",
               "Embeddings learn structure from next-token prediction alone.",
               "Recurrence has a fixed-size state, runs step by step, and its gradients shrink with distance.",
               "Attention's work grows with the square of the length; a key-value cache grows linearly."],
     "page": "01_sequence_problem.html", "builds_on": []},
    {"title": "Attention",
     "question": "How can every position look at every other, and how is a transformer block built?",
     "ideas": ["Attention is a soft lookup: scores, a softmax, a weighted average of the values.",
               "The 1/\u221ad scale keeps the scores at unit variance, so the softmax does not saturate.",
               "Heads split the width, not the parameters.",
               "Residual connections make depth trainable.",
               "Trained heads specialise a little; previous-token heads are among them."],
     "page": "02_attention.html", "builds_on": [1]},
    {"title": "Masking",
     "question": "How is a decoder trained on all positions at once, and how does it generate with a key-value cache?",
     "ideas": ["The causal mask is \u2212\u221e before the softmax.",
               "One parallel pass gives all T next-token predictions that T prefix passes would.",
               "A row with no allowed key is a trap: NaN that spreads; the companion returns zeros.",
               "A key-value cache makes each generated token cheap, and grows linearly with the context."],
     "page": "03_masking.html", "builds_on": [2]},
    {"title": "Context extension",
     "question": "How are positions encoded, how can a model trained short read long, and what does a long "
                 "context cost in memory?",
     "ideas": ["Position enters added to the embeddings (sinusoidal, learned) or inside attention (RoPE, ALiBi).",
               "Train short, test long: sinusoidal positions break, ALiBi improves with length.",
               "RoPE's scalings (PI, NTK-aware, YaRN) slow its slow pairs so that long contexts stay in range.",
               "Judge long-context methods on a task that needs the long context, not on perplexity alone.",
               "The KV cache grows linearly with the context: the memory wall."],
     "page": "04_context_extension.html", "builds_on": [3]},
    {"title": "Efficient attention",
     "question": "How can a model read fewer bytes per generated token, compute exact attention without the "
                 "score matrix, and what does giving up exactness cost?",
     "ideas": ["Generating text is bound by memory traffic, not by arithmetic.",
               "MQA, GQA and MLA shrink the cache per token by sharing or compressing keys and values.",
               "FlashAttention computes exact attention in tiles with an online softmax, without the "
               "(seq, seq) matrix.",
               "Sliding windows and linear attention fix the memory and lose recall."],
     "page": "05_efficient_attention.html", "builds_on": [2, 4]},
    {"title": "Mixture of experts",
     "question": "How can a model be large but run small, and what do its experts specialise in?",
     "ideas": ["A router sends each token to k of E experts: parameters grow with E, computation with k.",
               "At equal active parameters, a mixture of experts beats the dense model.",
               "Fast dispatch is a sort by expert and one grouped matrix multiply.",
               "Without a balancing loss the router collapses onto a few experts.",
               "Experts specialise less than the diagrams suggest."],
     "page": "06_mixture_of_experts.html", "builds_on": [2]},
    {"title": "State space models",
     "question": "How can a recurrence train in parallel and run in linear time and constant memory, and where "
                 "does that break?",
     "ideas": ["A state space layer is a linear recurrence; time-invariant, it is also a convolution.",
               "Selectivity (Mamba): step sizes that depend on the token, so the model can skip what does not matter.",
               "The selective scan is a recurrence bound by memory traffic, written as a kernel.",
               "The cache stays the same size however long the context.",
               "A fixed state limits recall; hybrids keep a few attention layers."],
     "page": "07_state_space_models.html", "builds_on": [1, 5]},
    {"title": "Multimodal",
     "question": "Can one backbone read images, sound and text alike?",
     "ideas": ["Images become patches, sound becomes frames, text becomes tokens.",
               "One transformer backbone reads any sequence of vectors.",
               "The patch size sets the sequence length, and with it attention's cost."],
     "page": "08_multimodal.html", "builds_on": [2]},
    {"title": "Open questions",
     "question": "What do scaling, interpretability and reliability look like in our own runs, and what does "
                 "the field not know yet?",
     "ideas": ["Scaling laws: loss against size and data, fitted to our own runs.",
               "Interpretability: induction heads, found in our own model.",
               "Reliability: calibration, when a model's confidence can be trusted.",
               "What the field does not know yet."],
     "page": "09_open_questions.html", "builds_on": [1, 2, 3, 4, 5, 6, 7, 8]},
)


# ------------------------------------------------------------------------------ validation
def _text(where: str, value: Any, maximum: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where} must not be empty")
    if len(value) > maximum:
        raise ValueError(f"{where} must be at most {maximum} characters, got {len(value)}")
    return value


def _page(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a str (a page relative to link_base, or an http(s) address), "
                        f"got {type(value).__name__}")
    if not value or re.search(r"\s", value):
        raise ValueError(f"{where} must be a page without spaces (such as '02_attention.html'), got {value!r}")
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", value)
    if scheme and scheme.group(1).lower() not in ("http", "https"):
        raise ValueError(f"{where} must be a relative page or an http(s) address, got {value!r}")
    return value


def check_link_base(link_base: Any) -> str:
    """``link_base`` if it is ``""`` or a path ending in ``/`` without spaces; else TypeError / ValueError.

    Args:
        link_base: what is put before every chapter's ``page`` to make its link.

    Returns:
        ``link_base``, unchanged.
    """
    if not isinstance(link_base, str):
        raise TypeError(f"link_base must be a str, got {type(link_base).__name__}")
    if link_base and (not link_base.endswith("/") or re.search(r"\s", link_base)):
        raise ValueError(f"link_base must be '' or a path ending in '/' without spaces (such as "
                         f"{INTRO_LINK_BASE!r}), got {link_base!r}")
    return link_base


def check_chapters(chapters: Any) -> list[dict]:
    """The chapters in the widget's form, or TypeError / ValueError naming what was expected.

    Args:
        chapters: a list (or tuple) of 1 to ``MAX_CHAPTERS`` mappings, chapter ``n`` at index ``n - 1``,
            each with the keys ``title``, ``question``, ``ideas`` (1 to ``MAX_IDEAS`` strings), ``page``
            and optionally ``builds_on`` (chapter numbers, each earlier than the chapter itself).

    Returns:
        A new list of dicts with exactly the keys ``KEYS`` in that order, ``ideas`` and ``builds_on`` as
        lists, ``builds_on`` sorted.
    """
    if isinstance(chapters, (str, bytes, Mapping)) or not isinstance(chapters, (list, tuple)):
        raise TypeError(f"chapters must be a list of dicts (title, question, ideas, page, builds_on), "
                        f"got {type(chapters).__name__}")
    if not 1 <= len(chapters) <= MAX_CHAPTERS:
        raise ValueError(f"chapters must hold 1 to {MAX_CHAPTERS} chapters, got {len(chapters)}")
    out = []
    for i, chapter in enumerate(chapters):
        where = f"chapters[{i}]"
        if not isinstance(chapter, Mapping):
            raise TypeError(f"{where} must be a dict with the keys {', '.join(KEYS)}, got {type(chapter).__name__}")
        unknown = sorted(str(k) for k in chapter if k not in KEYS)
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}: expected {', '.join(KEYS)}")
        missing = [k for k in KEYS[:4] if k not in chapter]
        if missing:
            raise ValueError(f"{where} lacks {', '.join(missing)}: a chapter needs {', '.join(KEYS[:4])} "
                             f"(and may have builds_on)")
        title = _text(f"{where}['title']", chapter["title"], MAX_TITLE)
        if title != " ".join(title.split()):
            raise ValueError(f"{where}['title'] must be words separated by single spaces, got {title!r}")
        question = _text(f"{where}['question']", chapter["question"], MAX_TEXT)
        ideas = chapter["ideas"]
        if isinstance(ideas, (str, bytes)) or not isinstance(ideas, (list, tuple)):
            raise TypeError(f"{where}['ideas'] must be a list of strings, got {type(ideas).__name__}")
        if not 1 <= len(ideas) <= MAX_IDEAS:
            raise ValueError(f"{where}['ideas'] must hold 1 to {MAX_IDEAS} ideas, got {len(ideas)}")
        ideas = [_text(f"{where}['ideas'][{j}]", idea, MAX_TEXT) for j, idea in enumerate(ideas)]
        page = _page(f"{where}['page']", chapter["page"])
        builds_on = _prerequisite_list(f"{where}['builds_on']", chapter.get("builds_on", []), i + 1)
        out.append({"title": title, "question": question, "ideas": ideas, "page": page, "builds_on": builds_on})
    return out


def _prerequisite_list(where: str, builds_on: Any, chapter: int) -> list[int]:
    """Chapter ``chapter``'s prerequisites: distinct ints in ``1..chapter - 1``, sorted."""
    if isinstance(builds_on, (str, bytes)) or not isinstance(builds_on, (list, tuple)):
        raise TypeError(f"{where} must be a list of chapter numbers, got {type(builds_on).__name__}")
    for p in builds_on:
        if isinstance(p, bool) or not isinstance(p, int):
            raise TypeError(f"{where} must hold chapter numbers (ints), got {p!r}")
        if not 1 <= p < chapter:
            raise ValueError(f"{where} must hold numbers of earlier chapters, 1..{chapter - 1}, got {p} "
                             f"(chapter {chapter} can only build on a chapter before it)")
    if len(set(builds_on)) != len(builds_on):
        raise ValueError(f"{where} names a chapter twice: {list(builds_on)}")
    return sorted(builds_on)


def check_selected(selected: Any, n_chapters: int) -> int | None:
    """``selected`` if it is ``None`` or a chapter number in ``1..n_chapters``; else TypeError / ValueError."""
    if selected is None:
        return None
    return checked_int("selected", selected, 1, n_chapters)


def _graph(builds_on: Any) -> list[list[int]]:
    """``builds_on`` (a list of per-chapter lists of earlier chapter numbers), checked."""
    if isinstance(builds_on, (str, bytes)) or not isinstance(builds_on, (list, tuple)):
        raise TypeError(f"builds_on must be a list with one list of chapter numbers per chapter, "
                        f"got {type(builds_on).__name__}")
    if not 1 <= len(builds_on) <= MAX_CHAPTERS:
        raise ValueError(f"builds_on must hold 1 to {MAX_CHAPTERS} chapters' lists, got {len(builds_on)}")
    return [_prerequisite_list(f"builds_on[{i}]", b, i + 1) for i, b in enumerate(builds_on)]


def _chapter(n: Any, count: int) -> int:
    return checked_int("chapter", n, 1, count)


# ------------------------------------------------------------------------------ the twins
def _ancestors(graph: list[list[int]]) -> list[set[int]]:
    out: list[set[int]] = []
    for prereqs in graph:  # every prerequisite is earlier, so its own set is done
        found: set[int] = set()
        for p in prereqs:
            found.add(p)
            found |= out[p - 1]
        out.append(found)
    return out


def prerequisites(builds_on: Sequence[Sequence[int]], chapter: int, direct: bool = False) -> list[int]:
    """The chapters that ``chapter`` builds on: directly (``direct=True``, as the data says), or through
    any chain of prerequisites (what to read first).

    Args:
        builds_on: for every chapter ``n`` (at index ``n - 1``), the earlier chapters it builds on.
        chapter: a chapter number, ``1..len(builds_on)``.
        direct: only the chapters listed for it, not theirs.

    Returns:
        The chapter numbers, ascending.
    """
    graph = _graph(builds_on)
    n = _chapter(chapter, len(graph))
    return sorted(graph[n - 1] if direct else _ancestors(graph)[n - 1])


def dependents(builds_on: Sequence[Sequence[int]], chapter: int, direct: bool = False) -> list[int]:
    """The chapters that build on ``chapter``: directly (``direct=True``), or through any chain.

    Args:
        builds_on: for every chapter ``n`` (at index ``n - 1``), the earlier chapters it builds on.
        chapter: a chapter number, ``1..len(builds_on)``.
        direct: only the chapters that list it themselves.

    Returns:
        The chapter numbers, ascending.
    """
    graph = _graph(builds_on)
    n = _chapter(chapter, len(graph))
    sets = graph if direct else _ancestors(graph)
    return [m + 1 for m, found in enumerate(sets) if n in found]


def drawn_edges(builds_on: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """The arrows of the map: the transitive reduction of the graph.

    ``(p, n)`` for every ``p`` in ``builds_on[n - 1]`` except where ``p`` is also a prerequisite of
    another of ``n``'s prerequisites (the arrow is implied by a longer path).

    Args:
        builds_on: for every chapter ``n`` (at index ``n - 1``), the earlier chapters it builds on.

    Returns:
        ``(from, to)`` pairs, ordered by ``to`` and then ``from``.
    """
    graph = _graph(builds_on)
    anc = _ancestors(graph)
    return [(p, n + 1) for n, prereqs in enumerate(graph) for p in prereqs
            if not any(p in anc[q - 1] for q in prereqs if q != p)]


def depths(builds_on: Sequence[Sequence[int]]) -> list[int]:
    """Every chapter's column: 0 without prerequisites, else one more than its deepest prerequisite's."""
    graph = _graph(builds_on)
    out: list[int] = []
    for prereqs in graph:
        out.append(1 + max(out[p - 1] for p in prereqs) if prereqs else 0)
    return out


def wrap_title(title: str, width: int = TITLE_WIDTH) -> list[str]:
    """``title`` in lines of at most ``width`` characters, filled greedily word by word (a longer word
    has a line of its own)."""
    if not isinstance(title, str):
        raise TypeError(f"title must be a str, got {type(title).__name__}")
    checked_int("width", width, 1)
    lines: list[str] = []
    for word in title.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def map_layout(chapters: Sequence[Mapping]) -> dict:
    """Where every chapter's box goes (module docstring): integer SVG coordinates.

    Args:
        chapters: the chapters (checked by :func:`check_chapters`).

    Returns:
        ``{"width", "height", "node_width", "node_height", "nodes"}``; ``nodes`` holds, for chapter ``n``
        at index ``n - 1``, ``{"col", "row", "x", "y", "lines"}`` (``x, y``: the box's top-left corner;
        ``lines``: its title, wrapped).
    """
    chapters = check_chapters(chapters)
    graph = [c["builds_on"] for c in chapters]
    cols = depths(graph)
    used: dict[int, set[int]] = {}
    rows: list[int] = []
    for n, prereqs in enumerate(graph):
        preferred = 0
        if prereqs:
            deepest = max(cols[p - 1] for p in prereqs)
            preferred = rows[next(p for p in prereqs if cols[p - 1] == deepest) - 1]
        taken = used.setdefault(cols[n], set())
        step = 0
        while True:  # preferred, +1, -1, +2, -2, ...
            row = preferred + (step + 1) // 2 * (1 if step % 2 else -1)
            if row not in taken:
                break
            step += 1
        taken.add(row)
        rows.append(row)
    top = min(rows)
    rows = [r - top for r in rows]
    lines = [wrap_title(c["title"]) for c in chapters]
    node_height = NODE_TOP + LINE_HEIGHT * max(len(t) for t in lines)
    n_cols, n_rows = max(cols) + 1, max(rows) + 1
    nodes = [{"col": c, "row": r, "x": MARGIN + c * (NODE_WIDTH + COL_GAP), "y": MARGIN + r * (node_height + ROW_GAP),
              "lines": t} for c, r, t in zip(cols, rows, lines)]
    return {"width": 2 * MARGIN + n_cols * NODE_WIDTH + (n_cols - 1) * COL_GAP,
            "height": 2 * MARGIN + n_rows * node_height + (n_rows - 1) * ROW_GAP,
            "node_width": NODE_WIDTH, "node_height": node_height, "nodes": nodes}


def _ends(layout: Mapping, source: int, target: int) -> tuple[int, int, int, int]:
    a, b = layout["nodes"][source - 1], layout["nodes"][target - 1]
    half = layout["node_height"] // 2
    return a["x"] + layout["node_width"], a["y"] + half, b["x"], b["y"] + half


def edge_path(layout: Mapping, source: int, target: int) -> str:
    """The SVG path of the arrow from ``source``'s box to ``target``'s (``target`` in a later column):
    from the middle of the source's right side along its row to the gap before the target's column,
    then a curve across that gap into the middle of the target's left side."""
    x1, y1, x2, y2 = _ends(layout, source, target)
    bend = x2 - COL_GAP
    middle = x2 - COL_GAP // 2
    return f"M {x1} {y1} H {bend} C {middle} {y1} {middle} {y2} {x2} {y2}"


def arrow_points(layout: Mapping, source: int, target: int) -> str:
    """The SVG polygon of the arrowhead at the end of :func:`edge_path`, pointing right."""
    _, _, x2, y2 = _ends(layout, source, target)
    return f"{x2},{y2} {x2 - ARROW_LENGTH},{y2 - ARROW_HALF_WIDTH} {x2 - ARROW_LENGTH},{y2 + ARROW_HALF_WIDTH}"


def edge_kinds(builds_on: Sequence[Sequence[int]], chapter: int | None) -> list[str]:
    """For every arrow of :func:`drawn_edges`: ``"in"`` if it lies on a path into ``chapter`` (its head
    is ``chapter`` or one of its prerequisites), ``"out"`` if on a path out of it (its tail is
    ``chapter`` or one of its dependents), ``""`` otherwise or when ``chapter`` is ``None``."""
    graph = _graph(builds_on)
    edges = drawn_edges(graph)
    if chapter is None:
        return [""] * len(edges)
    n = _chapter(chapter, len(graph))
    before = set(prerequisites(graph, n)) | {n}
    after = set(dependents(graph, n)) | {n}
    return ["in" if b in before else "out" if a in after else "" for a, b in edges]


def chapter_list(numbers: Sequence[int]) -> str:
    """``"chapter 2"``, ``"chapters 2 and 4"``, ``"chapters 1, 2, 3 and 4"``; ``""`` for none."""
    numbers = [str(n) for n in numbers]
    if not numbers:
        return ""
    if len(numbers) == 1:
        return f"chapter {numbers[0]}"
    return f"chapters {', '.join(numbers[:-1])} and {numbers[-1]}"


def node_label(chapters: Sequence[Mapping], chapter: int) -> str:
    """A box's tooltip (and accessible name): ``"2. Attention: <its question>"``."""
    c = chapters[chapter - 1]
    return f"{chapter}. {c['title']}: {c['question']}"


def summary_text(chapters: Sequence[Mapping], chapter: int | None) -> str:
    """The line under the map about ``chapter`` (the hint when ``None``): what to read first, what builds
    on it."""
    if chapter is None:
        return HINT
    graph = [c["builds_on"] for c in chapters]
    before, after = prerequisites(graph, chapter), dependents(graph, chapter)
    head = f"Chapter {chapter}, {chapters[chapter - 1]['title']}: "
    first = f"read {chapter_list(before)} first" if before else "a starting point, it builds on no other chapter"
    then = (f"{chapter_list(after)} build{'s' if len(after) == 1 else ''} on it" if after
            else "no chapter builds on it")
    return f"{head}{first}; {then}."


def chapter_link(link_base: str, page: str) -> str:
    """The address of a chapter's page: ``page`` itself if it is an http(s) address or starts with
    ``/``, else ``link_base + page``."""
    if re.match(r"https?://", page, re.I) or page.startswith("/"):
        return page
    return link_base + page


# ---------------------------------------------------------------------------------- widget
def default_chapters() -> list[dict]:
    """A fresh copy of :data:`DEFAULT_CHAPTERS`, the book's nine chapters."""
    return copy.deepcopy(list(DEFAULT_CHAPTERS))


class CourseMap(anywidget.AnyWidget):
    """The book's chapters as a map (module docstring): click a chapter to read its question, its key
    ideas, what it builds on and what builds on it, and to open it.

    The reader hovers over a chapter (or focuses it with Tab, moving between chapters with the arrow
    keys) to light up the arrows into it and out of it, and the chapters before and after it; clicks it,
    or presses Enter or Space, to select it; Escape clears the selection. The panel's "builds on" and
    "leads to" buttons select those chapters.

    Args:
        chapters: the chapters (see :func:`check_chapters`); ``None``: the book's nine,
            :data:`DEFAULT_CHAPTERS`.
        selected: the chapter shown in the panel (a number, ``1..len(chapters)``), or ``None``.
        link_base: put before every relative ``page`` to make its link. The default,
            ``INTRO_LINK_BASE`` (``"../notebooks/"``), is right on the book's intro page; inside a
            chapter's notebook use ``NOTEBOOK_LINK_BASE`` (``""``). The links lead to the pages of the
            built site (``.html``), not to notebooks in Jupyter.
        **kwargs: passed to ``anywidget.AnyWidget``.
    """

    _esm = pathlib.Path(__file__).with_name("course_map.js")
    _css = pathlib.Path(__file__).with_name("course_map.css")

    chapters = traitlets.List(traitlets.Dict(), default_chapters()).tag(sync=True)
    selected = traitlets.Int(None, allow_none=True).tag(sync=True)
    link_base = traitlets.Unicode(INTRO_LINK_BASE).tag(sync=True)

    def __init__(self, chapters: Sequence[Mapping] | None = None, selected: int | None = None, *,
                 link_base: str = INTRO_LINK_BASE, **kwargs):
        chapters = default_chapters() if chapters is None else check_chapters(chapters)
        super().__init__(chapters=chapters, selected=check_selected(selected, len(chapters)),
                         link_base=check_link_base(link_base), **kwargs)

    # Each trait is checked against the others as they are: to change the chapters and the selection
    # together, use set_chapters().
    @traitlets.validate("chapters")
    def _valid_chapters(self, proposal):
        def check(value):
            chapters = check_chapters(value)
            check_selected(self.selected, len(chapters))
            return chapters
        return checked(proposal, check)

    @traitlets.validate("selected")
    def _valid_selected(self, proposal):
        return checked(proposal, lambda value: check_selected(value, len(self.chapters)))

    @traitlets.validate("link_base")
    def _valid_link_base(self, proposal):
        return checked(proposal, check_link_base)

    def set_chapters(self, chapters: Sequence[Mapping], selected: int | None = None) -> None:
        """Replace the chapters and the selection together.

        Args:
            chapters: the new chapters (see :func:`check_chapters`).
            selected: the chapter to select in them, or ``None``.
        """
        chapters = check_chapters(chapters)
        selected = check_selected(selected, len(chapters))
        with self.hold_sync(), self.hold_trait_notifications():
            self.chapters, self.selected = chapters, selected

    # ------------------------------------------------------------------------------- reading
    def builds_on(self) -> list[list[int]]:
        """Every chapter's direct prerequisites, chapter ``n`` at index ``n - 1``."""
        return [list(c["builds_on"]) for c in self.chapters]

    def edges(self) -> list[tuple[int, int]]:
        """:func:`drawn_edges` of the current chapters: the arrows drawn."""
        return drawn_edges(self.builds_on())

    def layout(self) -> dict:
        """:func:`map_layout` of the current chapters."""
        return map_layout(self.chapters)

    def link(self, chapter: int) -> str:
        """The address of ``chapter``'s page, as the map links to it (:func:`chapter_link`)."""
        n = _chapter(chapter, len(self.chapters))
        return chapter_link(self.link_base, self.chapters[n - 1]["page"])

    def summary(self) -> str:
        """:func:`summary_text` for the selected chapter."""
        return summary_text(self.chapters, self.selected)

    def __repr__(self) -> str:  # stable: stored notebook outputs must not hold an address
        return f"CourseMap(chapters={len(self.chapters)}, selected={self.selected}, link_base={self.link_base!r})"
