"""companion.widgets.course_map: the book's chapters as a clickable graph, the widget's state, and its
JavaScript.

The Python twins (prerequisites, dependents, the arrows drawn, the layout, the texts) are checked
against their definitions on random chapter graphs (reachability by search, the transitive reduction
by its defining property, the layout by its rules) and against the book itself (the default chapters'
pages are the notebooks); the JavaScript is run in Node (skipped without it) and must compute the
same layouts, paths and texts exactly; and the widget is drawn in headless Chromium (skipped without
it) with a stand-in for the widget model, where clicking, hovering and the keyboard must change what
it shows, in agreement with the Python twins (the site's check, tests/site_helpers.py, included).
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import traitlets
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.widgets import CourseMap, dependents, drawn_edges, map_layout, prerequisites
from companion.widgets import course_map as module

from widget_browser import mount_widget, page, run_js, stored_state  # noqa: F401  (page is a pytest fixture)

JS_PATH = Path(module.__file__).with_name("course_map.js")
CSS_PATH = Path(module.__file__).with_name("course_map.css")
ROOT = Path(__file__).resolve().parent.parent
TRAITS = ("chapters", "selected", "link_base")
WORDS = ["Attention", "of", "the", "state", "space", "a", "Masking", "experts", "Interpretability", "x",
         "Supercalifragilistic", "\u00e9t\u00e9", "\u2207", "long", "context"]


def random_chapters(seed: int, count: int | None = None) -> list[dict]:
    """Random chapters: titles of random words (some longer than a line), random earlier prerequisites."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, module.MAX_CHAPTERS + 1)) if count is None else count
    chapters = []
    for n in range(1, count + 1):
        title = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
        earlier = list(range(1, n))
        k = min(len(earlier), int(rng.integers(0, 4)))
        builds_on = sorted(int(p) for p in rng.choice(earlier, size=k, replace=False)) if k else []
        chapters.append({"title": title[:module.MAX_TITLE].strip(), "question": f"Question {n}?",
                         "ideas": [f"idea {n}.{j}" for j in range(int(rng.integers(1, module.MAX_IDEAS + 1)))],
                         "page": f"{n:02d}_page.html", "builds_on": builds_on})
    return chapters


def reachable(graph: list[list[int]], a: int, b: int, skip_edge: tuple[int, int] | None = None) -> bool:
    """Whether a path of arrows ``p -> n`` (``p`` in ``graph[n - 1]``) leads from ``a`` to ``b != a``,
    by depth-first search (without the arrow ``skip_edge``)."""
    out = {n: [m + 1 for m, ps in enumerate(graph) if n in ps and (n, m + 1) != skip_edge] for n in range(1, len(graph) + 1)}
    stack, seen = list(out[a]), set()
    while stack:
        n = stack.pop()
        if n == b:
            return True
        if n not in seen:
            seen.add(n)
            stack.extend(out[n])
    return False


# ---------------------------------------------------------------------------- the book's chapters
def test_default_chapters_are_the_books():
    chapters = module.default_chapters()
    assert [c["title"] for c in chapters] == [
        "The sequence problem", "Attention", "Masking", "Context extension", "Efficient attention",
        "Mixture of experts", "State space models", "Multimodal", "Open questions"]
    assert module.check_chapters(chapters) == chapters  # already in the widget's form
    for n, c in enumerate(chapters, 1):
        assert re.fullmatch(rf"0{n}_[a-z_]+\.html", c["page"]), c["page"]
        assert 3 <= len(c["ideas"]) <= 5 and c["question"].endswith("?"), n
        assert all(idea.endswith(".") for idea in c["ideas"]), n
    # the chapters that exist: their pages are the notebooks, and the intro's table names them
    intro = (ROOT / "book/intro.md").read_text()
    for c in chapters[:7]:
        stem = c["page"].removesuffix(".html")
        assert (ROOT / "notebooks" / f"{stem}.ipynb").exists(), stem
        assert f"[{c['title']}](../notebooks/{stem}.ipynb)" in intro, c["title"]
    graph = [c["builds_on"] for c in chapters]
    assert graph[8] == list(range(1, 9))  # chapter 9 builds on all the others
    for edge in [(1, 2), (2, 3), (3, 4), (4, 5), (5, 7), (2, 6), (2, 8)]:
        assert edge[0] in graph[edge[1] - 1], edge
    assert drawn_edges(graph) == [(1, 2), (2, 3), (3, 4), (4, 5), (2, 6), (5, 7), (2, 8), (6, 9), (7, 9), (8, 9)]
    assert module.DEFAULT_CHAPTERS[1]["page"] == "02_attention.html"  # a fresh copy each time
    chapters[1]["page"] = "x"
    assert module.default_chapters()[1]["page"] == "02_attention.html"


def test_default_layout_reads_as_strands():
    layout = map_layout(module.default_chapters())
    where = [(node["col"], node["row"]) for node in layout["nodes"]]
    # the spine 1 -> 2 -> 3 -> 4 -> 5 -> 7 -> 9 on one row; 8 above chapter 3, 6 below it
    assert where == [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (2, 2), (5, 1), (2, 0), (6, 1)]
    assert layout["nodes"][0]["lines"] == ["The sequence", "problem"] and layout["nodes"][1]["lines"] == ["Attention"]
    assert (layout["width"], layout["height"], layout["node_height"]) == (794, 188, 48)
    assert layout["nodes"][5] == {"col": 2, "row": 2, "x": 236, "y": 132, "lines": ["Mixture of", "experts"]}
    assert module.edge_path(layout, 6, 9) == "M 330 156 H 672 C 682 156 682 94 692 94"
    assert module.arrow_points(layout, 6, 9) == "692,94 686,91 686,97"
    assert module.edge_path(layout, 1, 2) == "M 102 94 H 102 C 112 94 112 94 122 94"  # adjacent columns: no run


# ---------------------------------------------------------------------------------- the twins
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_prerequisites_and_dependents_are_reachability(seed):
    chapters = random_chapters(seed)
    graph = [c["builds_on"] for c in chapters]
    for n in range(1, len(graph) + 1):
        assert prerequisites(graph, n) == [m for m in range(1, n) if reachable(graph, m, n)]
        assert dependents(graph, n) == [m for m in range(n + 1, len(graph) + 1) if reachable(graph, n, m)]
        assert prerequisites(graph, n, direct=True) == graph[n - 1]
        assert dependents(graph, n, direct=True) == [m for m in range(1, len(graph) + 1) if n in graph[m - 1]]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_drawn_edges_are_the_transitive_reduction(seed):
    chapters = random_chapters(seed)
    graph = [c["builds_on"] for c in chapters]
    edges = drawn_edges(graph)
    every = [(p, n + 1) for n, ps in enumerate(graph) for p in ps]
    # an arrow is left out exactly when another path leads from its tail to its head
    assert edges == [e for e in every if not reachable(graph, *e, skip_edge=e)]
    reduced = [[p for p, m in edges if m == n] for n in range(1, len(graph) + 1)]
    for n in range(1, len(graph) + 1):  # the arrows drawn reach what the data reaches
        assert prerequisites(reduced, n) == prerequisites(graph, n)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_layout_follows_its_rules(seed):
    chapters = random_chapters(seed)
    graph = [c["builds_on"] for c in chapters]
    layout = map_layout(chapters)
    nodes = layout["nodes"]
    cols = module.depths(graph)
    for n, ps in enumerate(graph):  # the column is the longest chain of prerequisites
        longest = max((1 + cols[p - 1] for p in ps), default=0)
        assert cols[n] == longest == nodes[n]["col"]
    for a, b in drawn_edges(graph):
        assert nodes[a - 1]["col"] < nodes[b - 1]["col"]  # every arrow points right
    places = [(node["col"], node["row"]) for node in nodes]
    assert len(set(places)) == len(places) and min(node["row"] for node in nodes) == 0
    h, w = layout["node_height"], layout["node_width"]
    assert h == module.NODE_TOP + module.LINE_HEIGHT * max(len(node["lines"]) for node in nodes) and h % 2 == 0
    for n, node in enumerate(nodes):
        assert all(isinstance(node[k], int) for k in ("x", "y", "col", "row"))
        assert node["lines"] == module.wrap_title(chapters[n]["title"])
        assert 0 < node["x"] and node["x"] + w < layout["width"] and 0 < node["y"] and node["y"] + h < layout["height"]
        if graph[n]:  # its deepest prerequisite's row if free, else the nearest free one
            deepest = max(cols[p - 1] for p in graph[n])
            preferred = nodes[next(p for p in graph[n] if cols[p - 1] == deepest) - 1]["row"]
            taken = {node2["row"] for node2 in nodes[:n] if node2["col"] == node["col"]}
            free = [r for r in range(preferred - len(nodes), preferred + len(nodes) + 1) if r not in taken]
            assert abs(node["row"] - preferred) == min(abs(r - preferred) for r in free)
    for a, b in [(a, b) for a in nodes for b in nodes if a is not b]:  # no two boxes overlap
        assert a["x"] + w <= b["x"] or b["x"] + w <= a["x"] or a["y"] + h <= b["y"] or b["y"] + h <= a["y"]


def test_wrap_title():
    assert module.wrap_title("The sequence problem") == ["The sequence", "problem"]
    assert module.wrap_title("Open questions") == ["Open", "questions"]
    assert module.wrap_title("Supercalifragilistic is long") == ["Supercalifragilistic", "is long"]
    assert module.wrap_title("a b c d e f g", 5) == ["a b c", "d e f", "g"]
    for seed in range(50):
        for c in random_chapters(seed):
            lines = module.wrap_title(c["title"])
            assert " ".join(lines) == c["title"]
            assert all(len(line) <= module.TITLE_WIDTH or " " not in line for line in lines)
            # greedy: the next line's first word would not have fitted
            assert all(len(a) + 1 + len(b.split(" ")[0]) > module.TITLE_WIDTH for a, b in zip(lines, lines[1:]))


def test_edge_kinds_light_the_paths_through_a_chapter():
    graph = [c["builds_on"] for c in module.default_chapters()]
    edges = drawn_edges(graph)
    assert module.edge_kinds(graph, None) == [""] * len(edges)
    kinds = dict(zip(edges, module.edge_kinds(graph, 5)))
    assert [e for e, k in kinds.items() if k == "in"] == [(1, 2), (2, 3), (3, 4), (4, 5)]
    assert [e for e, k in kinds.items() if k == "out"] == [(5, 7), (7, 9)]
    for seed in range(30):
        graph = [c["builds_on"] for c in random_chapters(seed)]
        edges = drawn_edges(graph)
        for n in range(1, len(graph) + 1):
            for (a, b), kind in zip(edges, module.edge_kinds(graph, n)):
                into = b == n or reachable(graph, b, n)  # the arrow lies on a path into n
                out = a == n or reachable(graph, n, a)
                assert kind == ("in" if into else "out" if out else ""), (seed, n, a, b)


def test_texts():
    chapters = module.default_chapters()
    assert [module.chapter_list(x) for x in ([], [3], [2, 4], [1, 2, 3, 4])] == [
        "", "chapter 3", "chapters 2 and 4", "chapters 1, 2, 3 and 4"]
    assert module.summary_text(chapters, None) == module.HINT
    assert module.summary_text(chapters, 1) == (
        "Chapter 1, The sequence problem: a starting point, it builds on no other chapter; chapters 2, 3, 4, 5, 6, 7, "
        "8 and 9 build on it.")
    assert module.summary_text(chapters, 6) == (
        "Chapter 6, Mixture of experts: read chapters 1 and 2 first; chapter 9 builds on it.")
    assert module.summary_text(chapters, 9).endswith("read chapters 1, 2, 3, 4, 5, 6, 7 and 8 first; no chapter builds on it.")
    assert module.node_label(chapters, 2) == (
        "2. Attention: How can every position look at every other, and how is a transformer block built?")
    link = module.chapter_link
    assert link("../notebooks/", "02_attention.html") == "../notebooks/02_attention.html"
    assert link("", "02_attention.html") == "02_attention.html"
    assert link("../notebooks/", "https://example.org/x.html") == "https://example.org/x.html"
    assert link("../notebooks/", "/abs/page.html") == "/abs/page.html"


def test_functions_reject_bad_arguments():
    graph = [[], [1], [1, 2]]
    with pytest.raises(ValueError, match="chapter must be an int in 1..3"):
        prerequisites(graph, 4)
    with pytest.raises(TypeError, match="chapter must be an int"):
        dependents(graph, 1.0)
    with pytest.raises(ValueError, match=r"builds_on\[1\] must hold numbers of earlier chapters, 1..1, got 2"):
        drawn_edges([[], [2]])
    with pytest.raises(TypeError, match="builds_on must be a list"):
        drawn_edges("12")
    with pytest.raises(ValueError, match="builds_on must hold 1 to 16"):
        module.depths([])
    with pytest.raises(TypeError, match="title must be a str"):
        module.wrap_title(3)


# ------------------------------------------------------------------------------------ the widget
def test_defaults_repr_and_state():
    widget = CourseMap()
    text = repr(widget)
    assert not re.search(r"0x[0-9a-fA-F]+", text)
    assert text == "CourseMap(chapters=9, selected=None, link_base='../notebooks/')"
    assert widget._repr_mimebundle_()[0]["text/plain"] == text  # what a notebook stores
    assert widget.chapters == module.default_chapters() and widget.summary() == module.HINT
    widget.selected, widget.link_base = 9, module.NOTEBOOK_LINK_BASE
    assert repr(widget) == "CourseMap(chapters=9, selected=9, link_base='')"
    assert widget.link(2) == "02_attention.html" and widget.summary().startswith("Chapter 9, Open questions:")
    assert CourseMap(selected=2).link(3) == "../notebooks/03_masking.html"
    state = widget.get_state()
    assert {name: state[name] for name in TRAITS} == {name: getattr(widget, name) for name in TRAITS}
    assert json.loads(json.dumps(state["chapters"])) == widget.chapters
    assert widget.edges() == drawn_edges(widget.builds_on()) and widget.layout() == map_layout(widget.chapters)


def test_widget_takes_chapters_of_its_own():
    mine = [{"title": "Basics", "question": "What?", "ideas": ("one", "two"), "page": "basics.html"},
            {"title": "More", "question": "Then?", "ideas": ["three"], "page": "https://example.org/more",
             "builds_on": (1,)},
            {"title": "Last", "question": "Why?", "ideas": ["four"], "page": "last.html", "builds_on": [2, 1]}]
    widget = CourseMap(mine, selected=3, link_base="pages/")
    assert widget.chapters[0] == {"title": "Basics", "question": "What?", "ideas": ["one", "two"], "page": "basics.html",
                                  "builds_on": []}
    assert widget.chapters[2]["builds_on"] == [1, 2] and widget.edges() == [(1, 2), (2, 3)]
    assert [widget.link(n) for n in (1, 2)] == ["pages/basics.html", "https://example.org/more"]
    assert mine[2]["builds_on"] == [2, 1]  # the caller's data is not changed
    widget.set_chapters(mine[:1], selected=1)
    assert (len(widget.chapters), widget.selected) == (1, 1)
    with pytest.raises(ValueError, match="selected must be an int in 1..1"):
        widget.set_chapters(mine[:1], selected=2)
    widget.set_chapters(mine, selected=None)
    assert repr(widget) == "CourseMap(chapters=3, selected=None, link_base='pages/')"


GOOD = {"title": "A", "question": "Q?", "ideas": ["i"], "page": "a.html"}


@pytest.mark.parametrize("kwargs, error, match", [
    ({"chapters": "abc"}, TypeError, "chapters must be a list of dicts"),
    ({"chapters": {"title": "A"}}, TypeError, "chapters must be a list of dicts"),
    ({"chapters": []}, ValueError, "chapters must hold 1 to 16 chapters, got 0"),
    ({"chapters": [GOOD] * 17}, ValueError, "chapters must hold 1 to 16"),
    ({"chapters": [GOOD, ["A"]]}, TypeError, r"chapters\[1\] must be a dict with the keys title, question"),
    ({"chapters": [dict(GOOD, colour="red")]}, ValueError, r"chapters\[0\] has unknown keys \['colour'\]"),
    ({"chapters": [{"title": "A", "ideas": ["i"]}]}, ValueError, r"chapters\[0\] lacks question, page"),
    ({"chapters": [dict(GOOD, title=3)]}, TypeError, r"chapters\[0\]\['title'\] must be a str"),
    ({"chapters": [dict(GOOD, title=" ")]}, ValueError, r"chapters\[0\]\['title'\] must not be empty"),
    ({"chapters": [dict(GOOD, title="A" * 41)]}, ValueError, "at most 40 characters, got 41"),
    ({"chapters": [dict(GOOD, title="Two  spaces")]}, ValueError, "words separated by single spaces"),
    ({"chapters": [dict(GOOD, title="Line\nbreak")]}, ValueError, "words separated by single spaces"),
    ({"chapters": [dict(GOOD, question="")]}, ValueError, r"\['question'\] must not be empty"),
    ({"chapters": [dict(GOOD, question="q" * 301)]}, ValueError, "at most 300 characters"),
    ({"chapters": [dict(GOOD, ideas="one idea")]}, TypeError, r"\['ideas'\] must be a list of strings"),
    ({"chapters": [dict(GOOD, ideas=[])]}, ValueError, r"\['ideas'\] must hold 1 to 8 ideas, got 0"),
    ({"chapters": [dict(GOOD, ideas=["i"] * 9)]}, ValueError, "must hold 1 to 8 ideas"),
    ({"chapters": [dict(GOOD, ideas=["i", 2])]}, TypeError, r"\['ideas'\]\[1\] must be a str"),
    ({"chapters": [dict(GOOD, page="")]}, ValueError, r"\['page'\] must be a page without spaces"),
    ({"chapters": [dict(GOOD, page="a page.html")]}, ValueError, "must be a page without spaces"),
    ({"chapters": [dict(GOOD, page="javascript:alert(1)")]}, ValueError, "a relative page or an http"),
    ({"chapters": [dict(GOOD, page=None)]}, TypeError, r"\['page'\] must be a str"),
    ({"chapters": [dict(GOOD, builds_on=[1])]}, ValueError, r"chapters\[0\]\['builds_on'\] must hold numbers of "
                                                            r"earlier chapters, 1..0, got 1"),
    ({"chapters": [GOOD, dict(GOOD, builds_on=[2])]}, ValueError, "chapter 2 can only build on a chapter before it"),
    ({"chapters": [GOOD, dict(GOOD, builds_on=[0])]}, ValueError, "earlier chapters, 1..1, got 0"),
    ({"chapters": [GOOD, GOOD, dict(GOOD, builds_on=[1, 1])]}, ValueError, "names a chapter twice"),
    ({"chapters": [GOOD, dict(GOOD, builds_on=[True])]}, TypeError, r"must hold chapter numbers \(ints\), got True"),
    ({"chapters": [GOOD, dict(GOOD, builds_on=1)]}, TypeError, r"\['builds_on'\] must be a list of chapter numbers"),
    ({"selected": 10}, ValueError, "selected must be an int in 1..9, got 10"),
    ({"selected": 0}, ValueError, "selected must be an int in 1..9"),
    ({"selected": "2"}, TypeError, "selected must be an int"),
    ({"link_base": "../notebooks"}, ValueError, "link_base must be '' or a path ending in '/'"),
    ({"link_base": "my notes/"}, ValueError, "without spaces"),
    ({"link_base": None}, TypeError, "link_base must be a str"),
])
def test_widget_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        CourseMap(**kwargs)


@pytest.mark.parametrize("name, bad, match", [
    ("chapters", [GOOD], "selected must be an int in 1..1, got 4"), ("chapters", [], "1 to 16"),
    ("chapters", [dict(GOOD, ideas=[])], "1 to 8 ideas"), ("selected", 10, "selected must be an int in 1..9"),
    ("selected", "2", "selected"), ("link_base", "x", "ending in '/'"),
])
def test_widget_rejects_bad_traits(name, bad, match):
    widget = CourseMap(selected=4)
    before = getattr(widget, name)
    with pytest.raises(traitlets.TraitError, match=match):
        setattr(widget, name, bad)
    assert getattr(widget, name) == before
    assert repr(widget) == "CourseMap(chapters=9, selected=4, link_base='../notebooks/')"


def test_widget_ships_its_javascript_and_css():
    widget = CourseMap()
    assert str(widget._esm) == JS_PATH.read_text() and str(widget._css) == CSS_PATH.read_text()
    esm, css = JS_PATH.read_text(), CSS_PATH.read_text()
    assert re.search(r"^function render\(", esm, re.M)
    assert re.search(r"^export default \{[^}]*\brender\b", esm, re.M)
    assert not re.search(r"^\s*import\b|https?://(?!www\.w3\.org/2000/svg)", esm, re.M)
    assert not re.search(r"url\(|@import|https?://", css)
    assert css.startswith(".ab-map {")
    for cls in ("ab-map-node", "ab-map-box", "ab-map-selected", "ab-map-focus", "ab-map-before", "ab-map-after",
                "ab-map-link", "ab-map-in", "ab-map-out", "ab-map-edge", "ab-map-arrow", "ab-map-summary",
                "ab-map-detail", "ab-map-question", "ab-map-ideas", "ab-map-goto", "ab-map-open"):
        assert f".{cls}" in css and cls in esm, cls
    for selector in re.findall(r"\.(ab-[\w-]+)", css):
        assert selector.startswith("ab-map"), selector  # every class under the widget's own root
    used = set(re.findall(r'model\.(?:get|set)\("(\w+)"', esm))
    for fields in re.findall(r"save\(\{([^}]*)\}", esm):
        used |= {part.split(":")[0].strip() for part in fields.split(",")}
    for names in re.findall(r"const names = \[([^\]]*)\]", esm):
        used |= set(re.findall(r'"(\w+)"', names))
    assert set(TRAITS) == used, used
    assert used <= set(CourseMap.class_traits(sync=True))


# ------------------------------------------------------------------- the JavaScript's numbers
def test_javascript_constants_equal_python(node):
    js = run_js(node, JS_PATH, "show([MAX_CHAPTERS, MAX_IDEAS, TITLE_WIDTH, NODE_WIDTH, COL_GAP, ROW_GAP, MARGIN, NODE_TOP,"
                " LINE_HEIGHT, ARROW_LENGTH, ARROW_HALF_WIDTH, HINT]);")
    assert js == [module.MAX_CHAPTERS, module.MAX_IDEAS, module.TITLE_WIDTH, module.NODE_WIDTH, module.COL_GAP,
                  module.ROW_GAP, module.MARGIN, module.NODE_TOP, module.LINE_HEIGHT, module.ARROW_LENGTH,
                  module.ARROW_HALF_WIDTH, module.HINT]


CASES = [module.default_chapters()] + [random_chapters(seed) for seed in range(40)] + [
    random_chapters(100 + n, n) for n in (1, 2, 16)]


def test_javascript_computes_as_python(node):
    js = run_js(node, JS_PATH, f"const cases = {json.dumps(CASES)};\n"
                "show(cases.map((chapters) => { const g = chapters.map((c) => c.builds_on);"
                " const layout = mapLayout(chapters); const edges = drawnEdges(g);"
                " const all = [null, ...chapters.map((_, j) => j + 1)];"
                " return [layout, edges, depths(g), edges.map(([a, b]) => [edgePath(layout, a, b), arrowPoints(layout, a, b)]),"
                "  all.map((n) => edgeKinds(g, n)), all.map((n) => summaryText(chapters, n)),"
                "  chapters.map((_, j) => [prerequisites(g, j + 1), prerequisites(g, j + 1, true),"
                "   dependents(g, j + 1), dependents(g, j + 1, true), nodeLabel(chapters, j + 1)]),"
                "  consistentState(chapters, null, ''), consistentState(chapters, chapters.length, '../')]; }));")
    assert len(js) == len(CASES)
    for i, (chapters, got) in enumerate(zip(CASES, js)):
        layout, edges, cols, paths, kinds, summaries, per_chapter, ok_none, ok_last = got
        graph = [c["builds_on"] for c in chapters]
        assert layout == map_layout(chapters), i
        assert [tuple(e) for e in edges] == drawn_edges(graph) and cols == module.depths(graph), i
        assert paths == [[module.edge_path(layout, a, b), module.arrow_points(layout, a, b)] for a, b in drawn_edges(graph)], i
        everyone = [None, *range(1, len(chapters) + 1)]
        assert kinds == [module.edge_kinds(graph, n) for n in everyone], i
        assert summaries == [module.summary_text(chapters, n) for n in everyone], i
        assert per_chapter == [[prerequisites(graph, n), prerequisites(graph, n, True), dependents(graph, n),
                                dependents(graph, n, True), module.node_label(chapters, n)]
                               for n in range(1, len(chapters) + 1)], i
        assert ok_none is True and ok_last is True, i


def test_javascript_texts_equal_python(node):
    titles = ["The sequence problem", "Open questions", "a b c d e f g h", "Supercalifragilistic is long",
              "\u00e9t\u00e9 \u2207 \U0001f600\U0001f600\U0001f600\U0001f600\U0001f600 x", "x" * 40]
    lists = [[], [3], [2, 4], [1, 2, 3, 4, 5]]
    links = [["../notebooks/", "02_attention.html"], ["", "x.html"], ["a/", "HTTPS://example.org/"], ["a/", "/b.html"],
             ["a/", "http:x"]]
    js = run_js(node, JS_PATH, f"show([{json.dumps(titles)}.map((t) => wrapTitle(t)), {json.dumps(titles)}.map((t) => wrapTitle(t, 5)),"
                f" {json.dumps(lists)}.map(chapterList), {json.dumps(links)}.map(([b, p]) => chapterLink(b, p))]);")
    assert js[0] == [module.wrap_title(t) for t in titles]
    assert js[1] == [module.wrap_title(t, 5) for t in titles]
    assert js[2] == [module.chapter_list(x) for x in lists]
    assert js[3] == [module.chapter_link(b, p) for b, p in links]


def test_javascript_waits_for_a_consistent_state(node):
    good = module.default_chapters()
    cases = [((good, None, "../notebooks/"), True), ((good, 9, ""), True),
             ((good, 10, ""), False),  # the selection before the chapters that go with it
             ((good[:2], 3, ""), False), ((good, 0, ""), False), ((good, 1.5, ""), False), ((good, "1", ""), False),
             (([], None, ""), False), (([good[0]] * 17, None, ""), False), ((good, None, None), False),
             (([dict(good[0], builds_on=[1])], None, ""), False), (([dict(good[0], ideas=[])], None, ""), False),
             (([dict(good[0], title="")], None, ""), False), (([dict(good[0], page=3)], None, ""), False),
             ((None, None, ""), False), (([None], None, ""), False)]
    js = run_js(node, JS_PATH, f"show({json.dumps([c for c, _ in cases])}.map((c) => consistentState(...c)));")
    assert js == [ok for _, ok in cases]


# ------------------------------------------------------------------ the widget drawn in a browser
def mount(page, widget: CourseMap) -> list[str]:
    errors = mount_widget(page, JS_PATH.read_text(), CSS_PATH.read_text(), stored_state(widget, TRAITS), ".ab-map")
    page.locator("#root .ab-map-about").hover()  # the pointer off the map (it stays where a test left it)
    return errors


def shown(page) -> dict:
    return page.evaluate("""() => {
      const root = document.querySelector('#root .ab-map');
      const detail = root.querySelector('.ab-map-detail');
      const marked = (c) => [...root.querySelectorAll('.ab-map-node.ab-map-' + c)].map((g) => Number(g.dataset.chapter));
      return {
        selected: marked('selected'), focus: marked('focus'), before: marked('before'), after: marked('after'),
        in: [...root.querySelectorAll('.ab-map-link.ab-map-in')].map((l) => [Number(l.dataset.from), Number(l.dataset.to)]),
        out: [...root.querySelectorAll('.ab-map-link.ab-map-out')].map((l) => [Number(l.dataset.from), Number(l.dataset.to)]),
        summary: root.querySelector('.ab-map-summary').textContent,
        panel: detail.hidden ? null : detail.dataset.chapter,
        title: detail.hidden ? null : detail.querySelector('.ab-map-detail-title').textContent,
        ideas: detail.hidden ? null : [...detail.querySelectorAll('.ab-map-ideas li')].map((li) => li.textContent),
        href: detail.hidden ? null : detail.querySelector('.ab-map-open').getAttribute('href'),
        active: document.activeElement.dataset ? document.activeElement.dataset.chapter || null : null,
        saved: window.saved.length ? window.saved[window.saved.length - 1] : null,
      };
    }""")


def assert_shows(page, widget: CourseMap, focus: int | None = None) -> dict:
    """The drawing agrees with the Python twins at the widget's state (set to what the page should show)."""
    s = shown(page)
    n = focus if focus is not None else widget.selected
    graph = widget.builds_on()
    kinds = dict(zip(widget.edges(), module.edge_kinds(graph, n)))
    where = f"{widget!r}, focus {focus}"
    assert s["selected"] == ([] if widget.selected is None else [widget.selected]), where
    assert s["focus"] == ([] if focus is None else [focus]), where
    assert s["before"] == ([] if n is None else prerequisites(graph, n)), where
    assert s["after"] == ([] if n is None else dependents(graph, n)), where
    assert [tuple(e) for e in s["in"]] == [e for e, k in kinds.items() if k == "in"], where
    assert [tuple(e) for e in s["out"]] == [e for e, k in kinds.items() if k == "out"], where
    assert s["summary"] == module.summary_text(widget.chapters, n), where
    if widget.selected is None:
        assert s["panel"] is None, where
    else:
        c = widget.chapters[widget.selected - 1]
        assert s["panel"] == str(widget.selected) and s["ideas"] == c["ideas"], where
        assert s["title"] == f"Chapter {widget.selected} \u00b7 {c['title']}", where
        assert s["href"] == widget.link(widget.selected), where
    return s


def test_the_widget_draws_and_responds(page):
    widget = CourseMap()
    errors = mount(page, widget)
    root = page.locator("#root .ab-map")
    nodes = root.locator(".ab-map-node")
    assert nodes.count() == 9 and root.locator(".ab-map-link").count() == 10
    assert assert_shows(page, widget)["summary"] == module.HINT
    nodes.nth(4).hover()  # hovering lights up chapter 5's strand, nothing is selected
    assert assert_shows(page, widget, focus=5)["panel"] is None
    nodes.nth(1).click()  # clicking selects
    widget.selected = 2
    s = assert_shows(page, widget, focus=2)
    assert s["saved"]["selected"] == 2 and s["active"] == "2"  # the change is sent to the model
    assert s["href"] == "../notebooks/02_attention.html"
    nodes.nth(6).hover()  # hovering another chapter: its strand lights up, the panel stays
    assert assert_shows(page, widget, focus=7)["panel"] == "2"
    root.locator(".ab-map-about").hover()  # the pointer leaves: back to the chapter with the keyboard focus
    assert_shows(page, widget, focus=2)
    nodes.nth(1).press("ArrowRight")
    assert assert_shows(page, widget, focus=3)["active"] == "3"
    nodes.nth(2).press("Enter")  # the keyboard selects
    widget.selected = 3
    assert assert_shows(page, widget, focus=3)["saved"]["selected"] == 3
    nodes.nth(2).press("End")
    nodes.nth(8).press(" ")
    widget.selected = 9
    s = assert_shows(page, widget, focus=9)
    assert s["saved"]["selected"] == 9 and s["active"] == "9"
    root.locator(".ab-map-builds-on .ab-map-goto").nth(5).click()  # the panel's buttons select (chapter 6)
    widget.selected = 6
    assert assert_shows(page, widget, focus=6)["active"] == "6"
    nodes.nth(5).press("Escape")  # Escape clears the selection
    widget.selected = None
    assert assert_shows(page, widget, focus=6)["saved"]["selected"] is None
    root.locator(".ab-map-about").click()  # the focus leaves the map
    assert assert_shows(page, widget)["summary"] == module.HINT
    assert not errors, errors


def test_the_widget_follows_changes_from_python(page):
    widget = CourseMap(selected=4)
    errors = mount(page, widget)
    assert_shows(page, widget)
    # new chapters arrive one trait at a time: nothing is drawn from a half-changed state
    mine = random_chapters(7, 5)
    widget.set_chapters(mine, selected=2)
    widget.link_base = ""
    page.evaluate("([s]) => { for (const name of ['selected', 'chapters', 'link_base']) model.set(name, s[name]); }",
                  [stored_state(widget, TRAITS)])
    s = assert_shows(page, widget)
    assert page.locator("#root .ab-map-node").count() == 5 and s["href"] == mine[1]["page"]
    page.evaluate("() => model.set('selected', null)")
    widget.selected = None
    assert_shows(page, widget)
    assert not errors, errors


@pytest.mark.parametrize("kwargs", [
    {}, {"selected": 5, "link_base": ""}, {"chapters": random_chapters(3, 12), "selected": 1},
    {"chapters": [GOOD]}, {"chapters": [GOOD, dict(GOOD, builds_on=[1])], "selected": 2},
])
def test_the_site_check_passes_on_the_widget(page, kwargs):
    site_helpers = pytest.importorskip("site_helpers")
    assert site_helpers.WIDGET_CHECKS[".ab-map"] is site_helpers.check_course_map
    widget = CourseMap(**kwargs)
    errors = mount(page, widget)
    site_helpers.check_course_map(page, page.locator("#root .ab-map"), stored_state(widget, TRAITS))
    assert not errors, errors


def test_the_site_check_catches_a_wrong_drawing(page):
    site_helpers = pytest.importorskip("site_helpers")
    widget = CourseMap(selected=3)
    mount(page, widget)
    wrong = stored_state(widget, TRAITS)
    wrong["chapters"] = [dict(c) for c in wrong["chapters"]]
    wrong["chapters"][8]["builds_on"] = [1, 2, 3, 4, 5, 6, 7]  # Python would draw no arrow from chapter 8
    with pytest.raises(AssertionError, match="the arrows drawn are"):
        site_helpers.check_course_map(page, page.locator("#root .ab-map"), wrong)
    mount(page, widget)  # a wrong link in the panel is caught too
    with pytest.raises(AssertionError, match="as stored: the panel shows"):
        site_helpers.check_course_map(page, page.locator("#root .ab-map"), dict(stored_state(widget, TRAITS), link_base=""))
    mount(page, widget)  # and an arrow that does not light up
    page.evaluate("() => { const l = document.querySelector('.ab-map-link.ab-map-in'); l.classList.remove('ab-map-in'); }")
    with pytest.raises(AssertionError, match="as stored: the arrows lit"):
        site_helpers.check_course_map(page, page.locator("#root .ab-map"), stored_state(widget, TRAITS))
