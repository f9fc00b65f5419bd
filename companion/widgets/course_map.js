// Course map: the book's chapters as a graph (an arrow from A to B when B builds on A); click a chapter
// to read its question, its key ideas, what it builds on and what builds on it, and to open it.
// Computed and drawn here, in the browser, from the widget's state (chapters, selected, link_base), so
// the widget responds in JupyterLab, on Colab and in the static site (no kernel needed). The layout,
// the arrows and the texts are those of companion.widgets.course_map in Python
// (tests/test_course_map.py runs both).

// ---- pure functions: tests/test_course_map.py runs this block in Node (no DOM below this line) ----
const MAX_CHAPTERS = 16;
const MAX_IDEAS = 8;
const TITLE_WIDTH = 12;
const NODE_WIDTH = 94;
const COL_GAP = 20;
const ROW_GAP = 14;
const MARGIN = 8;
const NODE_TOP = 20;
const LINE_HEIGHT = 14;
const ARROW_LENGTH = 6;
const ARROW_HALF_WIDTH = 3;
const HINT = "Hover over a chapter (or focus it with Tab) to light up what it builds on and what builds on it; " +
  "click it, or press Enter, to read its question and key ideas.";

const ascending = (a, b) => a - b;

// For every chapter (index n - 1), the set of chapters it builds on through any chain.
function ancestorSets(buildsOn) {
  const out = [];
  for (const prereqs of buildsOn) {
    const found = new Set();
    for (const p of prereqs) {
      found.add(p);
      for (const q of out[p - 1]) found.add(q);
    }
    out.push(found);
  }
  return out;
}

// The chapters `chapter` builds on: directly (as the data says) or through any chain; ascending.
function prerequisites(buildsOn, chapter, direct = false) {
  return [...(direct ? buildsOn[chapter - 1] : ancestorSets(buildsOn)[chapter - 1])].sort(ascending);
}

// The chapters that build on `chapter`: directly or through any chain; ascending.
function dependents(buildsOn, chapter, direct = false) {
  const sets = direct ? buildsOn : ancestorSets(buildsOn);
  const out = [];
  sets.forEach((found, m) => { if ((direct ? found.includes(chapter) : found.has(chapter))) out.push(m + 1); });
  return out;
}

// The arrows drawn: the transitive reduction, [from, to] ordered by to, then from.
function drawnEdges(buildsOn) {
  const anc = ancestorSets(buildsOn);
  const out = [];
  buildsOn.forEach((prereqs, n) => {
    for (const p of prereqs) {
      if (!prereqs.some((q) => q !== p && anc[q - 1].has(p))) out.push([p, n + 1]);
    }
  });
  return out;
}

// Every chapter's column: 0 without prerequisites, else one more than its deepest prerequisite's.
function depths(buildsOn) {
  const out = [];
  for (const prereqs of buildsOn) out.push(prereqs.length ? 1 + Math.max(...prereqs.map((p) => out[p - 1])) : 0);
  return out;
}

// A title in lines of at most `width` characters, filled greedily word by word.
function wrapTitle(title, width = TITLE_WIDTH) {
  const length = (s) => Array.from(s).length;  // characters, as Python's len
  const lines = [];
  for (const word of title.split(" ")) {
    if (lines.length && length(lines[lines.length - 1]) + 1 + length(word) <= width) lines[lines.length - 1] += " " + word;
    else lines.push(word);
  }
  return lines;
}

// Where every chapter's box goes (map_layout in Python): integer coordinates.
function mapLayout(chapters) {
  const graph = chapters.map((c) => c.builds_on);
  const cols = depths(graph);
  const used = new Map();
  const rows = [];
  graph.forEach((prereqs, n) => {
    let preferred = 0;
    if (prereqs.length) {
      const deepest = Math.max(...prereqs.map((p) => cols[p - 1]));
      preferred = rows[prereqs.find((p) => cols[p - 1] === deepest) - 1];
    }
    if (!used.has(cols[n])) used.set(cols[n], new Set());
    const taken = used.get(cols[n]);
    let row, step = 0;
    for (;;) {  // preferred, +1, -1, +2, -2, ...
      row = preferred + Math.floor((step + 1) / 2) * (step % 2 ? 1 : -1);
      if (!taken.has(row)) break;
      step += 1;
    }
    taken.add(row);
    rows.push(row);
  });
  const top = Math.min(...rows);
  const rowsFrom0 = rows.map((r) => r - top);
  const lines = chapters.map((c) => wrapTitle(c.title));
  const nodeHeight = NODE_TOP + LINE_HEIGHT * Math.max(...lines.map((t) => t.length));
  const nCols = Math.max(...cols) + 1, nRows = Math.max(...rowsFrom0) + 1;
  const nodes = cols.map((c, n) => ({ col: c, row: rowsFrom0[n], x: MARGIN + c * (NODE_WIDTH + COL_GAP),
    y: MARGIN + rowsFrom0[n] * (nodeHeight + ROW_GAP), lines: lines[n] }));
  return { width: 2 * MARGIN + nCols * NODE_WIDTH + (nCols - 1) * COL_GAP,
    height: 2 * MARGIN + nRows * nodeHeight + (nRows - 1) * ROW_GAP,
    node_width: NODE_WIDTH, node_height: nodeHeight, nodes };
}

function ends(layout, source, target) {
  const a = layout.nodes[source - 1], b = layout.nodes[target - 1];
  const half = Math.floor(layout.node_height / 2);
  return [a.x + layout.node_width, a.y + half, b.x, b.y + half];
}

// The arrow's path: along the source's row to the gap before the target's column, then a curve into it.
function edgePath(layout, source, target) {
  const [x1, y1, x2, y2] = ends(layout, source, target);
  const bend = x2 - COL_GAP, middle = x2 - COL_GAP / 2;
  return `M ${x1} ${y1} H ${bend} C ${middle} ${y1} ${middle} ${y2} ${x2} ${y2}`;
}

// The arrowhead at the end of the path, pointing right.
function arrowPoints(layout, source, target) {
  const [, , x2, y2] = ends(layout, source, target);
  return `${x2},${y2} ${x2 - ARROW_LENGTH},${y2 - ARROW_HALF_WIDTH} ${x2 - ARROW_LENGTH},${y2 + ARROW_HALF_WIDTH}`;
}

// For every drawn arrow: "in" on a path into `chapter`, "out" on a path out of it, "" otherwise or for null.
function edgeKinds(buildsOn, chapter) {
  const edges = drawnEdges(buildsOn);
  if (chapter === null || chapter === undefined) return edges.map(() => "");
  const before = new Set([...prerequisites(buildsOn, chapter), chapter]);
  const after = new Set([...dependents(buildsOn, chapter), chapter]);
  return edges.map(([a, b]) => (before.has(b) ? "in" : after.has(a) ? "out" : ""));
}

// "chapter 2", "chapters 2 and 4", "chapters 1, 2, 3 and 4"; "" for none.
function chapterList(numbers) {
  if (!numbers.length) return "";
  if (numbers.length === 1) return `chapter ${numbers[0]}`;
  return `chapters ${numbers.slice(0, -1).join(", ")} and ${numbers[numbers.length - 1]}`;
}

// A box's tooltip and accessible name.
function nodeLabel(chapters, chapter) {
  const c = chapters[chapter - 1];
  return `${chapter}. ${c.title}: ${c.question}`;
}

// The line under the map about `chapter` (the hint for null).
function summaryText(chapters, chapter) {
  if (chapter === null || chapter === undefined) return HINT;
  const graph = chapters.map((c) => c.builds_on);
  const before = prerequisites(graph, chapter), after = dependents(graph, chapter);
  const head = `Chapter ${chapter}, ${chapters[chapter - 1].title}: `;
  const first = before.length ? `read ${chapterList(before)} first` : "a starting point, it builds on no other chapter";
  const then = after.length ? `${chapterList(after)} build${after.length === 1 ? "s" : ""} on it` : "no chapter builds on it";
  return `${head}${first}; ${then}.`;
}

// A chapter's address: the page itself if absolute (http(s) or /...), else linkBase + page.
function chapterLink(linkBase, page) {
  return /^https?:\/\//i.test(page) || page.startsWith("/") ? page : linkBase + page;
}

// Whether the state can be drawn: a change from Python may arrive one trait at a time.
function consistentState(chapters, selected, linkBase) {
  if (!Array.isArray(chapters) || chapters.length < 1 || chapters.length > MAX_CHAPTERS) return false;
  const text = (s) => typeof s === "string" && s.trim() !== "";
  const ok = chapters.every((c, i) => c !== null && typeof c === "object" && text(c.title) && text(c.question) &&
    text(c.page) && Array.isArray(c.ideas) && c.ideas.length >= 1 && c.ideas.length <= MAX_IDEAS && c.ideas.every(text) &&
    Array.isArray(c.builds_on) && c.builds_on.every((p) => Number.isInteger(p) && p >= 1 && p <= i));
  if (!ok) return false;
  return typeof linkBase === "string" && (selected === null || (Number.isInteger(selected) && selected >= 1 &&
    selected <= chapters.length));
}
// ---- end of pure functions ----

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, parent = null, ns = null) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function render({ model, el: root }) {
  const box = el("div", { class: "ab-map" }, root);
  const about = el("div", { class: "ab-map-about" }, box);
  about.textContent = "Each box is a chapter; an arrow from A to B means that B builds on A (an arrow that a longer " +
    "path already implies is left out).";
  const graph = el("svg", { class: "ab-map-graph", role: "group", "aria-label": "the chapters and what builds on what" },
    box, SVG);
  const edgeLayer = el("g", { class: "ab-map-edges" }, graph, SVG);
  const nodeLayer = el("g", { class: "ab-map-nodes" }, graph, SVG);
  const legend = el("div", { class: "ab-map-legend" }, box);
  legend.innerHTML =
    '<span class="ab-map-key ab-map-key-before"></span>what it builds on ' +
    '<span class="ab-map-key ab-map-key-after"></span>what builds on it ' +
    '<span class="ab-map-key ab-map-key-selected"></span>the selected chapter';
  const summary = el("div", { class: "ab-map-summary", "aria-live": "polite" }, box);
  const detail = el("div", { class: "ab-map-detail", "aria-live": "polite" }, box);

  let focus = null;  // the hovered or focused chapter (not synced: a view of the reader's own)
  let nodes = [];
  let links = [];
  let builtFor = null;  // the chapters and the link base the drawing was built for, as JSON
  let detailFor = null;  // ... and the selection the panel was drawn for

  const state = () => ({ chapters: model.get("chapters"), selected: model.get("selected"), linkBase: model.get("link_base") });

  function save(changes) {
    for (const [name, value] of Object.entries(changes)) model.set(name, value);
    model.save_changes();
  }

  function select(n) {
    focus = n;
    save({ selected: n });
  }

  // The chapter whose box has the keyboard focus, or null.
  function focusedNode() {
    const j = nodes.indexOf(document.activeElement);
    return j >= 0 ? j + 1 : null;
  }

  function setFocus(n) {
    focus = n;
    draw();
  }

  function build(s) {
    const layout = mapLayout(s.chapters);
    const buildsOn = s.chapters.map((c) => c.builds_on);
    graph.setAttribute("viewBox", `0 0 ${layout.width} ${layout.height}`);
    graph.style.width = `${layout.width}px`;
    graph.dataset.width = String(layout.width);
    graph.dataset.height = String(layout.height);
    edgeLayer.replaceChildren();
    nodeLayer.replaceChildren();
    links = drawnEdges(buildsOn).map(([a, b]) => {
      const link = el("g", { class: "ab-map-link", "data-from": String(a), "data-to": String(b) }, edgeLayer, SVG);
      el("path", { class: "ab-map-edge", d: edgePath(layout, a, b) }, link, SVG);
      el("polygon", { class: "ab-map-arrow", points: arrowPoints(layout, a, b) }, link, SVG);
      return link;
    });
    nodes = layout.nodes.map((node, j) => {
      const n = j + 1;
      const g = el("g", { class: "ab-map-node", tabindex: "0", role: "button", "data-chapter": String(n),
        "data-col": String(node.col), "data-row": String(node.row), "aria-label": nodeLabel(s.chapters, n) }, nodeLayer, SVG);
      el("title", {}, g, SVG).textContent = nodeLabel(s.chapters, n);
      el("rect", { class: "ab-map-box", x: String(node.x), y: String(node.y), width: String(layout.node_width),
        height: String(layout.node_height), rx: "5" }, g, SVG);
      el("text", { class: "ab-map-number", x: String(node.x + 7), y: String(node.y + 13) }, g, SVG).textContent = String(n);
      const name = el("text", { class: "ab-map-name", x: String(node.x + 7), y: String(node.y + NODE_TOP + 8) }, g, SVG);
      node.lines.forEach((line, i) => {
        el("tspan", { x: String(node.x + 7), dy: i ? String(LINE_HEIGHT) : "0" }, name, SVG).textContent = line;
      });
      g.addEventListener("click", () => select(n));
      g.addEventListener("mouseenter", () => setFocus(n));
      g.addEventListener("mouseleave", () => setFocus(focusedNode()));  // back to the keyboard's chapter
      g.addEventListener("focus", () => setFocus(n));
      g.addEventListener("blur", () => setFocus(null));
      g.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          select(n);
          return;
        }
        if (event.key === "Escape") {
          event.preventDefault();
          save({ selected: null });
          return;
        }
        const count = layout.nodes.length;
        const to = { ArrowRight: n + 1, ArrowDown: n + 1, ArrowLeft: n - 1, ArrowUp: n - 1, Home: 1, End: count }[event.key];
        if (to !== undefined && to >= 1 && to <= count) {
          event.preventDefault();
          nodes[to - 1].focus();
        }
      });
      return g;
    });
  }

  // A row of buttons that select the chapters `numbers` (or `none` when there are none).
  function chapterButtons(parent, label, numbers, chapters, none, cls) {
    const row = el("div", { class: `ab-map-row ${cls}` }, parent);
    el("span", { class: "ab-map-row-label" }, row).textContent = label;
    if (!numbers.length) {
      el("span", { class: "ab-map-none" }, row).textContent = none;
      return;
    }
    for (const m of numbers) {
      const button = el("button", { type: "button", class: "ab-map-goto", "data-chapter": String(m) }, row);
      button.textContent = `${m} ${chapters[m - 1].title}`;
      button.title = nodeLabel(chapters, m);
      button.addEventListener("click", () => {
        save({ selected: m });
        nodes[m - 1].focus({ preventScroll: true });  // the panel is redrawn: the focus goes to the chapter's box
      });
    }
  }

  function drawDetail(s) {
    detail.replaceChildren();
    const n = s.selected;
    detail.dataset.chapter = n === null ? "" : String(n);
    detail.hidden = n === null;
    if (n === null) return;
    const c = s.chapters[n - 1];
    const buildsOn = s.chapters.map((ch) => ch.builds_on);
    el("div", { class: "ab-map-detail-title" }, detail).textContent = `Chapter ${n} \u00b7 ${c.title}`;
    el("div", { class: "ab-map-question" }, detail).textContent = c.question;
    const ideas = el("ul", { class: "ab-map-ideas", "aria-label": "key ideas" }, detail);
    for (const idea of c.ideas) el("li", {}, ideas).textContent = idea;
    chapterButtons(detail, "Builds on:", prerequisites(buildsOn, n, true), s.chapters, "nothing: start here",
      "ab-map-builds-on");
    chapterButtons(detail, "Leads to:", dependents(buildsOn, n, true), s.chapters, "nothing yet", "ab-map-leads-to");
    const path = el("div", { class: "ab-map-row ab-map-path" }, detail);
    el("span", { class: "ab-map-row-label" }, path).textContent = "Reading path:";
    el("span", {}, path).textContent = [...prerequisites(buildsOn, n), n].join(" \u2192 ");
    const open = el("a", { class: "ab-map-open", href: chapterLink(s.linkBase, c.page) }, detail);
    open.textContent = `Open chapter ${n}: ${c.title} \u2192`;
  }

  function draw() {
    const s = state();
    if (!consistentState(s.chapters, s.selected, s.linkBase)) return;  // more is on its way
    const key = JSON.stringify([s.chapters, s.linkBase]);
    if (key !== builtFor) {
      build(s);
      builtFor = key;
    }
    if (focus !== null && focus > s.chapters.length) focus = null;
    const shown = focus !== null ? focus : s.selected;
    const buildsOn = s.chapters.map((c) => c.builds_on);
    const before = new Set(shown === null ? [] : prerequisites(buildsOn, shown));
    const after = new Set(shown === null ? [] : dependents(buildsOn, shown));
    const kinds = edgeKinds(buildsOn, shown);
    nodes.forEach((g, j) => {
      const n = j + 1;
      g.classList.toggle("ab-map-selected", n === s.selected);
      g.classList.toggle("ab-map-focus", n === focus);
      g.classList.toggle("ab-map-before", before.has(n));
      g.classList.toggle("ab-map-after", after.has(n));
      g.setAttribute("aria-pressed", String(n === s.selected));
    });
    links.forEach((link, i) => {
      link.classList.toggle("ab-map-in", kinds[i] === "in");
      link.classList.toggle("ab-map-out", kinds[i] === "out");
      link.classList.toggle("ab-map-faded", shown !== null && kinds[i] === "");
    });
    graph.dataset.shown = shown === null ? "" : String(shown);
    summary.textContent = summaryText(s.chapters, shown);
    summary.dataset.chapter = shown === null ? "" : String(shown);
    const detailKey = JSON.stringify([builtFor, s.selected]);
    if (detailKey !== detailFor) {  // redrawn only when it changes (its buttons keep the focus otherwise)
      drawDetail(s);
      detailFor = detailKey;
    }
  }

  const names = ["chapters", "selected", "link_base"];
  for (const name of names) model.on(`change:${name}`, draw);
  draw();
  return () => {
    for (const name of names) model.off(`change:${name}`, draw);
  };
}

export default { render };
