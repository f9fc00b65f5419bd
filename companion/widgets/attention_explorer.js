// Attention explorer: everything is drawn here, in the browser, from the widget's state (the
// tokens and the precomputed weights, shape (layers, heads, T, T)), so the widget responds in
// JupyterLab, on Colab and in the static site (no kernel needed). The ranking of the keys is the
// same as companion.widgets.attention_explorer.top_attended in Python.

// ---- pure functions: tests/test_widgets.py runs this block in Node (no DOM below this line) ----
const VISIBLE = { " ": "\u00b7", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d" };

// How a token is shown: whitespace made visible (spaces as ·, newlines as ↵, tabs as ⇥).
function displayToken(token) {
  if (token === "") return "\u2205";
  return Array.from(token, (c) => (c in VISIBLE ? VISIBLE[c] : c)).join("");
}

// The k keys of a row that get the most weight: [[index, weight], ...], highest first, ties to the
// earlier position, keys of weight 0 left out.
function topAttended(row, k) {
  const keys = [];
  for (let j = 0; j < row.length; j++) if (row[j] > 0) keys.push(j);
  keys.sort((a, b) => row[b] - row[a] || a - b);
  return keys.slice(0, k).map((j) => [j, row[j]]);
}

// The weights as synced ({shape: [layers, heads, T], rows: "1000;830,170;..."}: integer thousandths,
// trailing zeros dropped, rows separated by ";") -> nested arrays (layers, heads, T, T) of numbers.
function decodeWeights(data) {
  const [layers, heads, T] = data.shape;
  const rows = layers ? data.rows.split(";") : [];
  if (rows.length !== layers * heads * T) {
    throw new Error(`encoded weights hold ${rows.length} rows, shape ${data.shape} needs ${layers * heads * T}`);
  }
  let r = 0;
  const out = [];
  for (let l = 0; l < layers; l++) {
    const layer = [];
    for (let h = 0; h < heads; h++) {
      const head = [];
      for (let i = 0; i < T; i++) {
        const row = rows[r++].split(",").map((u) => Number(u) / 1000);
        while (row.length < T) row.push(0);
        head.push(row);
      }
      layer.push(head);
    }
    out.push(layer);
  }
  return out;
}

// Opacity for a weight: the square root, so that small weights stay visible.
function shade(w) {
  return Math.sqrt(Math.min(1, Math.max(0, w)));
}
// ---- end of pure functions ----

const SVG = "http://www.w3.org/2000/svg";
const BLUE = "0, 114, 178"; // the book's attention colour, #0072B2

function el(tag, attrs = {}, parent = null, ns = null) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function render({ model, el: root }) {
  const box = el("div", { class: "ab-attn" }, root);
  const title = el("div", { class: "ab-attn-title" }, box);
  const controls = el("div", { class: "ab-attn-controls" }, box);
  const layerLabel = el("span", { class: "ab-attn-label" }, controls);
  layerLabel.textContent = "layer";
  const layers = el("div", { class: "ab-attn-layers", role: "group", "aria-label": "layer" }, controls);
  const headLabel = el("span", { class: "ab-attn-label" }, controls);
  headLabel.textContent = "head";
  const heads = el("div", { class: "ab-attn-heads", role: "group", "aria-label": "head" }, controls);

  const main = el("div", { class: "ab-attn-main" }, box);
  const strip = el("div", { class: "ab-attn-tokens", "aria-label": "tokens: hover to preview a query, click to pin it" }, main);
  const figure = el("div", { class: "ab-attn-figure" }, main);
  el("div", { class: "ab-attn-axis" }, figure).textContent = "keys \u2192";
  const svg = el("svg", { class: "ab-attn-heatmap", role: "img", preserveAspectRatio: "none" }, figure, SVG);
  el("div", { class: "ab-attn-axis" }, figure).textContent = "rows: queries, first at the top";
  const background = el("rect", { class: "ab-attn-bg", x: 0, y: 0 }, svg, SVG);
  const cells = el("g", { class: "ab-attn-cells" }, svg, SVG);
  const outline = el("rect", { class: "ab-attn-outline", x: 0, height: 1 }, svg, SVG);
  const hits = el("g", { class: "ab-attn-hits" }, svg, SVG);

  const readout = el("div", { class: "ab-attn-readout", "aria-live": "polite" }, box);
  el("div", { class: "ab-attn-hint" }, box).textContent =
    "Hover over a token (or a row of the pattern) to see where it looks; click to pin it. " +
    "Shading: darker = more attention (opacity = \u221aweight).";

  let preview = null; // the hovered token, shown as the query until the pointer leaves
  let chips = [];
  let drawn = null; // "layer,head,T" of the cells in the heatmap

  let weights = null; // decoded from the synced form on every change of "weights"
  const get = () => ({
    tokens: model.get("tokens"), weights,
    layer: model.get("layer"), head: model.get("head"), query: model.get("query"),
  });

  function select(name, value) {
    model.set(name, value);
    model.save_changes();
  }

  function buttons(group, n, name, current) {
    if (group.childElementCount !== n) {
      group.replaceChildren();
      for (let i = 0; i < n; i++) {
        const b = el("button", { type: "button", class: "ab-attn-button", "data-index": String(i) }, group);
        b.textContent = String(i);
        b.addEventListener("click", () => select(name, i));
      }
    }
    for (const b of group.children) {
      b.setAttribute("aria-pressed", String(Number(b.dataset.index) === current));
    }
  }

  function rebuildTokens(tokens) {
    strip.replaceChildren();
    chips = tokens.map((token, j) => {
      const chip = el("span", { class: "ab-attn-tok", "data-index": String(j), tabindex: "0", role: "button" }, strip);
      chip.textContent = displayToken(token);
      if (token.includes("\n")) el("span", { class: "ab-attn-break" }, strip);
      return chip;
    });
    const T = tokens.length;
    svg.setAttribute("viewBox", `0 0 ${T} ${T}`);
    background.setAttribute("width", T);
    background.setAttribute("height", T);
    outline.setAttribute("width", T);
    hits.replaceChildren();
    for (let i = 0; i < T; i++) {
      el("rect", { class: "ab-attn-hit", x: 0, y: i, width: T, height: 1, "data-index": String(i) }, hits, SVG);
    }
    drawn = null;
  }

  function update() {
    const { tokens, weights, layer, head, query } = get();
    if (chips.length !== tokens.length) rebuildTokens(tokens);
    const T = tokens.length;
    const q = preview !== null && preview < T ? preview : query;
    title.textContent = model.get("title") || "";
    title.hidden = !model.get("title");
    buttons(layers, weights.length, "layer", layer);
    buttons(heads, weights[layer].length, "head", head);
    const pattern = weights[layer][head];
    const row = pattern[q];

    // the chips: every key shaded by its weight in the query's row
    chips.forEach((chip, j) => {
      const w = row[j];
      chip.style.backgroundColor = `rgba(${BLUE}, ${shade(w)})`;
      chip.classList.toggle("ab-attn-dark", shade(w) > 0.6);
      chip.classList.toggle("ab-attn-query", j === q);
      chip.classList.toggle("ab-attn-pinned", j === query);
      chip.dataset.weight = w.toFixed(3);
      chip.title = `token ${j}: ${JSON.stringify(tokens[j])}, weight ${w.toFixed(3)}`;
    });

    // the heatmap of the whole pattern, redrawn only when the layer, head or tokens change
    const key = `${layer},${head},${T}`;
    if (drawn !== key) {
      cells.replaceChildren();
      for (let i = 0; i < T; i++) {
        for (let j = 0; j < T; j++) {
          const w = pattern[i][j];
          if (w > 0) {
            el("rect", { class: "ab-attn-cell", x: j, y: i, width: 1, height: 1, "fill-opacity": shade(w).toFixed(3) }, cells, SVG);
          }
        }
      }
      svg.setAttribute("aria-label", `attention pattern of layer ${layer}, head ${head}: ${T} queries by ${T} keys`);
      drawn = key;
    }
    outline.setAttribute("y", q);
    outline.dataset.index = String(q);

    // the readout: the query and its top-3 keys (built with textContent: tokens may hold "<")
    readout.replaceChildren();
    readout.classList.toggle("ab-attn-previewing", q !== query);
    const line = el("div", {}, readout);
    el("span", { class: "ab-attn-where" }, line).textContent = `layer ${layer}, head ${head}`;
    line.append(": query ");
    const qChip = el("span", { class: "ab-attn-rtok ab-attn-rquery", "data-index": String(q) }, line);
    qChip.textContent = displayToken(tokens[q]);
    line.append(` (token ${q}) attends most to`);
    const list = el("ol", { class: "ab-attn-top" }, readout);
    for (const [j, w] of topAttended(row, 3)) {
      const item = el("li", { class: "ab-attn-top-item", "data-index": String(j) }, list);
      el("span", { class: "ab-attn-rtok" }, item).textContent = displayToken(tokens[j]);
      item.append(` token ${j}, weight `);
      el("b", { class: "ab-attn-weight" }, item).textContent = w.toFixed(2);
    }
  }

  // pointer and keyboard: hovering previews a query, clicking (Enter, Space) pins it
  const indexOf = (event, selector) => {
    const target = event.target.closest ? event.target.closest(selector) : null;
    return target ? Number(target.dataset.index) : null;
  };
  const onOver = (selector) => (event) => {
    const j = indexOf(event, selector);
    if (j !== null && j !== preview) {
      preview = j;
      update();
    }
  };
  const onLeave = () => {
    if (preview !== null) {
      preview = null;
      update();
    }
  };
  const onClick = (selector) => (event) => {
    const j = indexOf(event, selector);
    if (j !== null) select("query", j);
  };
  strip.addEventListener("mouseover", onOver(".ab-attn-tok"));
  strip.addEventListener("mouseleave", onLeave);
  strip.addEventListener("click", onClick(".ab-attn-tok"));
  hits.addEventListener("mouseover", onOver(".ab-attn-hit"));
  hits.addEventListener("mouseleave", onLeave);
  hits.addEventListener("click", onClick(".ab-attn-hit"));
  strip.addEventListener("keydown", (event) => {
    const j = indexOf(event, ".ab-attn-tok");
    if (j === null) return;
    let target = null;
    if (event.key === "Enter" || event.key === " ") target = j;
    else if (event.key === "ArrowRight") target = Math.min(j + 1, chips.length - 1);
    else if (event.key === "ArrowLeft") target = Math.max(j - 1, 0);
    if (target === null) return;
    event.preventDefault();
    preview = null;
    select("query", target);
    chips[target].focus();
  });

  const onData = () => {
    weights = decodeWeights(model.get("weights"));
    rebuildTokens(model.get("tokens"));
    update();
  };
  const names = ["layer", "head", "query", "title"];
  for (const name of names) model.on(`change:${name}`, update);
  for (const name of ["tokens", "weights"]) model.on(`change:${name}`, onData);
  onData();
  return () => {
    for (const name of names) model.off(`change:${name}`, update);
    for (const name of ["tokens", "weights"]) model.off(`change:${name}`, onData);
  };
}

export default { render };
