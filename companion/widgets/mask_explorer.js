// Mask explorer: the mask is computed and drawn here, in the browser, from the widget's state, so
// the widget responds in JupyterLab, on Colab and in the static site (no kernel needed). The rules
// are the same as companion.widgets.mask_explorer.mask_matrix in Python.

// ---- pure functions: tests/test_widgets.py runs this block in Node (no DOM below this line) ----
const KINDS = ["causal", "causal + padding", "sliding window", "prefix-LM", "bidirectional", "bidirectional + padding"];

const KIND_DESCRIPTIONS = {
  "causal": "A decoder: query i sees keys j \u2264 i, never the future.",
  "causal + padding": "Causal, and the pad positions are masked as keys for every query. " +
    "With left padding the first queries see no key at all.",
  "sliding window": "Causal, and only the last W keys: i \u2212 W < j \u2264 i.",
  "prefix-LM": "The first P positions see one another in both directions; later positions are causal.",
  "bidirectional": "An encoder: every query sees every key.",
  "bidirectional + padding": "An encoder's padding mask: every query sees every real key; " +
    "the pad positions are masked as keys.",
};

// [isPad(j) for j < length]: the last `padding` positions ("right") or the first ("left").
function padPositions(length, padding, side) {
  const pads = Math.min(padding, length);
  const out = [];
  for (let j = 0; j < length; j++) out.push(side === "right" ? j >= length - pads : j < pads);
  return out;
}

// The mask: `length` rows (queries) of `length` booleans (keys), true where the query may attend.
function maskMatrix(kind, length, window, prefix, padding, side) {
  if (!KINDS.includes(kind)) throw new Error(`unknown mask kind ${kind}`);
  const pads = padPositions(length, padding, side);
  const withPadding = kind.endsWith("+ padding");
  const mask = [];
  for (let i = 0; i < length; i++) {
    const row = [];
    for (let j = 0; j < length; j++) {
      let allowed;
      if (kind === "causal" || kind === "causal + padding") allowed = j <= i;
      else if (kind === "sliding window") allowed = j <= i && j > i - window;
      else if (kind === "prefix-LM") allowed = j <= i || (i < prefix && j < prefix);
      else allowed = true; // bidirectional
      row.push(allowed && !(withPadding && pads[j]));
    }
    mask.push(row);
  }
  return mask;
}

function visibleKeys(mask, query) {
  const keys = [];
  mask[query].forEach((allowed, j) => { if (allowed) keys.push(j); });
  return keys;
}

function fullyMaskedRows(mask) {
  const rows = [];
  mask.forEach((row, i) => { if (!row.some((allowed) => allowed)) rows.push(i); });
  return rows;
}

// The readout for one query.
function describeQuery(mask, query) {
  const keys = visibleKeys(mask, query);
  if (keys.length === 0) return `query ${query} sees no key: softmax of all -inf is NaN`;
  return `query ${query} sees keys [${keys.join(", ")}]`;
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
  const box = el("div", { class: "ab-mask" }, root);
  const controls = el("div", { class: "ab-mask-controls" }, box);

  const kindLabel = el("label", { class: "ab-mask-control" }, controls);
  kindLabel.append("mask ");
  const kindSelect = el("select", { class: "ab-mask-kind", "aria-label": "mask kind" }, kindLabel);
  for (const kind of KINDS) el("option", { value: kind }, kindSelect).textContent = kind;

  function slider(name, text, cls) {
    const label = el("label", { class: `ab-mask-control ab-mask-control-${name}` }, controls);
    label.append(`${text} `);
    const input = el("input", { type: "range", class: cls, step: "1", "aria-label": text }, label);
    const value = el("output", { class: `${cls}-value` }, label);
    return { label, input, value };
  }
  const length = slider("length", "length", "ab-mask-length");
  const window_ = slider("window", "window W", "ab-mask-window");
  const prefix = slider("prefix", "prefix P", "ab-mask-prefix");
  const padding = slider("padding", "padding", "ab-mask-padding");
  const sideLabel = el("label", { class: "ab-mask-control ab-mask-control-side" }, controls);
  sideLabel.append("on the ");
  const sideSelect = el("select", { class: "ab-mask-side", "aria-label": "padding side" }, sideLabel);
  for (const side of ["left", "right"]) el("option", { value: side }, sideSelect).textContent = side;

  const about = el("div", { class: "ab-mask-about" }, box);
  const svg = el("svg", { class: "ab-mask-grid", role: "img" }, box, SVG);
  const readout = el("div", { class: "ab-mask-readout", "aria-live": "polite" }, box);
  const note = el("div", { class: "ab-mask-note" }, box);
  const warning = el("div", { class: "ab-mask-warning" }, box);
  const legend = el("div", { class: "ab-mask-legend" }, box);
  legend.innerHTML =
    '<span class="ab-mask-key ab-on"></span>may attend ' +
    '<span class="ab-mask-key ab-off"></span>masked (score set to -inf) ' +
    '<span class="ab-mask-key ab-pad"></span>pad position ' +
    '<span class="ab-mask-key ab-nan"></span>row with no key (NaN). Click a row to choose the query.';

  const state = () => ({
    kind: model.get("kind"), length: model.get("length"), window: model.get("window"),
    prefix: model.get("prefix"), padding: model.get("padding"), side: model.get("padding_side"),
    query: model.get("query"), max: model.get("max_length"),
  });

  function save(changes) {
    for (const [name, value] of Object.entries(changes)) model.set(name, value);
    model.save_changes();
  }

  function draw() {
    const s = state();
    const L = s.length;
    kindSelect.value = s.kind;
    sideSelect.value = s.side;
    const uses = {
      window: s.kind === "sliding window",
      prefix: s.kind === "prefix-LM",
      padding: s.kind.endsWith("+ padding"),
    };
    for (const [control, lo, hi, value, used] of [
      [length, 1, s.max, L, true], [window_, 1, L, s.window, uses.window],
      [prefix, 0, L, s.prefix, uses.prefix], [padding, 0, L, s.padding, uses.padding],
    ]) {
      control.input.min = String(lo);
      control.input.max = String(hi);
      control.input.value = String(value);
      control.value.textContent = String(value);
      control.input.disabled = !used;
      control.label.classList.toggle("ab-mask-unused", !used);
    }
    sideSelect.disabled = !uses.padding;
    sideLabel.classList.toggle("ab-mask-unused", !uses.padding);
    about.textContent = KIND_DESCRIPTIONS[s.kind];

    const mask = maskMatrix(s.kind, L, s.window, s.prefix, s.padding, s.side);
    const pads = uses.padding ? padPositions(L, s.padding, s.side) : new Array(L).fill(false);
    const empty = fullyMaskedRows(mask);
    const q = Math.min(s.query, L - 1);

    // the grid: rows are queries, columns keys
    const c = Math.max(12, Math.min(26, Math.floor(340 / L)));
    const left = 34, top = 30, right = 44;
    const W = left + L * c + right, H = top + L * c + 6;
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    svg.setAttribute("aria-label", `${s.kind} mask, ${L} queries by ${L} keys`);
    el("text", { x: left + (L * c) / 2, y: 10, class: "ab-mask-axis", "text-anchor": "middle" }, svg, SVG)
      .textContent = "keys j \u2192";
    el("text", { x: 2, y: 10, class: "ab-mask-axis" }, svg, SVG).textContent = "queries i \u2193";
    const step = L > 20 ? 2 : 1;
    for (let j = 0; j < L; j++) {
      if (pads[j]) el("rect", { x: left + j * c, y: top, width: c, height: L * c, class: "ab-mask-padcol" }, svg, SVG);
      if (j % step === 0 || pads[j]) {
        el("text", { x: left + j * c + c / 2, y: top - 5, class: `ab-mask-tick${pads[j] ? " ab-pad" : ""}`, "text-anchor": "middle" }, svg, SVG)
          .textContent = String(j);
      }
    }
    el("rect", { x: 0, y: top + q * c, width: W, height: c, class: "ab-mask-selrow" }, svg, SVG);
    for (let i = 0; i < L; i++) {
      const row = el("g", { class: "ab-mask-row", "data-row": String(i) }, svg, SVG);
      el("text", { x: left - 6, y: top + i * c + c / 2 + 4, class: `ab-mask-tick ab-mask-rowlabel${pads[i] ? " ab-pad" : ""}`, "text-anchor": "end", "data-row": String(i) }, row, SVG)
        .textContent = pads[i] ? `pad ${i}` : String(i);
      for (let j = 0; j < L; j++) {
        el("rect", {
          x: left + j * c + 1, y: top + i * c + 1, width: c - 2, height: c - 2,
          class: `ab-mask-cell ${mask[i][j] ? "ab-on" : "ab-off"}`, "data-row": String(i), "data-col": String(j),
        }, row, SVG);
      }
      if (empty.includes(i)) {
        el("rect", { x: left - 0.5, y: top + i * c + 0.5, width: L * c + 1, height: c - 1, class: "ab-mask-nanrow", "data-row": String(i) }, row, SVG);
        el("text", { x: left + L * c + 4, y: top + i * c + c / 2 + 4, class: "ab-mask-nanlabel" }, row, SVG).textContent = "NaN";
      }
    }
    el("rect", { x: left - 1, y: top + q * c, width: L * c + 2, height: c, class: "ab-mask-seloutline", "data-row": String(q) }, svg, SVG);

    readout.textContent = describeQuery(mask, q);
    readout.classList.toggle("ab-mask-nan", empty.includes(q));
    note.textContent = pads[q] ? `Position ${q} is padding: whatever it computes is never used.` : "";
    note.hidden = !pads[q];
    warning.textContent = empty.length
      ? `${empty.length === 1 ? "Query" : "Queries"} ${empty.join(", ")} (outlined in red) ${empty.length === 1 ? "sees" : "see"} ` +
        "no key: every score of the row is -inf, and the softmax of all -inf is 0/0 = NaN, which spreads to every later layer."
      : "";
    warning.hidden = empty.length === 0;
  }

  kindSelect.addEventListener("change", () => save({ kind: kindSelect.value }));
  sideSelect.addEventListener("change", () => save({ padding_side: sideSelect.value }));
  length.input.addEventListener("input", () => {
    const L = Number(length.input.value);
    const s = state();
    save({
      length: L, query: Math.min(s.query, L - 1), window: Math.min(s.window, L),
      prefix: Math.min(s.prefix, L), padding: Math.min(s.padding, L),
    });
  });
  window_.input.addEventListener("input", () => save({ window: Number(window_.input.value) }));
  prefix.input.addEventListener("input", () => save({ prefix: Number(prefix.input.value) }));
  padding.input.addEventListener("input", () => save({ padding: Number(padding.input.value) }));
  svg.addEventListener("click", (event) => {
    const target = event.target.closest ? event.target.closest("[data-row]") : null;
    if (target) save({ query: Number(target.getAttribute("data-row")) });
  });
  svg.setAttribute("tabindex", "0");
  svg.addEventListener("keydown", (event) => {
    const s = state();
    const delta = event.key === "ArrowDown" ? 1 : event.key === "ArrowUp" ? -1 : 0;
    if (!delta) return;
    event.preventDefault();
    save({ query: Math.max(0, Math.min(s.length - 1, s.query + delta)) });
  });

  const names = ["kind", "length", "window", "prefix", "padding", "padding_side", "query", "max_length"];
  for (const name of names) model.on(`change:${name}`, draw);
  draw();
  return () => {
    for (const name of names) model.off(`change:${name}`, draw);
  };
}

export default { render };
