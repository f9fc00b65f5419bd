// Routing view: the tokens of a text coloured by the experts a mixture-of-experts router sent them
// to, layer by layer. Everything is drawn here, in the browser, from the widget's state (the tokens,
// the precomputed choices and weights, the layer, the display, the highlighted expert), so the widget
// responds in JupyterLab, on Colab and in the static site (no kernel needed). The numbers are the
// same as those of companion.widgets.routing_view in Python.

// ---- pure functions: tests/test_routing_view.py runs this block in Node (no DOM below this line) ----
// Paul Tol's "light" scheme; experts 8-15 reuse the colours with stripes (see routing_view.py).
const BASE_COLORS = ["#77AADD", "#EE8866", "#EEDD88", "#FFAABB", "#99DDFF", "#44BB99", "#BBCC33", "#AAAA00"];
const EXPERT_COLORS = BASE_COLORS.concat(BASE_COLORS);
const EXPERT_STRIPED = EXPERT_COLORS.map((_, e) => e >= BASE_COLORS.length);
const SHOW = ["top-1", "top-2"];
const HEX = "0123456789abcdef";
const SCALE = 1000;
const VISIBLE = { " ": "\u00b7", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d" };

// How a token is shown: whitespace made visible (as display_token of attention_explorer.py).
function displayToken(token) {
  if (token === "") return "\u2205";
  return Array.from(token, (c) => (c in VISIBLE ? VISIBLE[c] : c)).join("");
}

// {shape: [L, T, k], values: "3a01..."} (one hexadecimal digit per choice) -> nested (L, T, k)
// arrays of ints; null if malformed (a change may still be on its way).
function decodeChoices(data) {
  if (!data || !Array.isArray(data.shape) || typeof data.values !== "string") return null;
  const [L, T, k] = data.shape;
  if (data.values.length !== L * T * k) return null;
  const out = [];
  let n = 0;
  for (let l = 0; l < L; l++) {
    const layer = [];
    for (let t = 0; t < T; t++) {
      const row = [];
      for (let i = 0; i < k; i++) {
        const e = HEX.indexOf(data.values[n++]);
        if (e < 0) return null;
        row.push(e);
      }
      layer.push(row);
    }
    out.push(layer);
  }
  return out;
}

// {shape: [L, T, k], values: "712,288,..."} (integer thousandths) -> nested (L, T, k) arrays of
// ints; null if malformed.
function decodeWeights(data) {
  if (!data || !Array.isArray(data.shape) || typeof data.values !== "string") return null;
  const [L, T, k] = data.shape;
  const parts = data.values === "" ? [] : data.values.split(",");
  if (parts.length !== L * T * k || !parts.every((p) => /^[0-9]+$/.test(p))) return null;
  const out = [];
  let n = 0;
  for (let l = 0; l < L; l++) {
    const layer = [];
    for (let t = 0; t < T; t++) {
      const row = [];
      for (let i = 0; i < k; i++) row.push(Number(parts[n++]));
      layer.push(row);
    }
    out.push(layer);
  }
  return out;
}

// "top-1" -> 1, "top-2" -> 2.
function topOf(show) {
  return SHOW.indexOf(show) + 1;
}

// For one layer's choices (T, k): how many tokens have expert e among their first `top` choices.
function expertCounts(choices, experts, top) {
  const counts = new Array(experts).fill(0);
  for (const row of choices) for (const e of row.slice(0, top)) counts[e] += 1;
  return counts;
}

// The fraction of the tokens whose top-1 (or either top-2) choice is expert e.
function expertLoad(choices, experts, top) {
  return expertCounts(choices, experts, top).map((c) => c / choices.length);
}

// The tokens that have `expert` among their first `top` choices.
function routedTokens(choices, expert, top) {
  const out = [];
  choices.forEach((row, t) => { if (row.slice(0, top).includes(expert)) out.push(t); });
  return out;
}

// A token's colour bands, in percent of its width: [100] for top-1, 100 w_i / (w_1 + w_2) for top-2.
function bandWidths(units, top) {
  if (top === 1) return [100];
  const [a, b] = units;
  if (a + b === 0) return [50, 50];
  return [(100 * a) / (a + b), (100 * b) / (a + b)];
}

// Integer division of non-negative integers, exactly.
function intDiv(a, b) {
  return (a - (a % b)) / b;
}

// A weight in thousandths: 712 -> "0.712".
function formatWeight(units) {
  return `${intDiv(units, SCALE)}.${String(units % SCALE).padStart(3, "0")}`;
}

// count / total in percent, one decimal, half up, in integers: 3 of 8 -> "37.5%".
function formatShare(count, total) {
  const tenths = intDiv(2000 * count + total, 2 * total);
  return `${intDiv(tenths, 10)}.${tenths % 10}%`;
}

// What the readout and the tooltip say about one token.
function describeToken(token, index, choices, units, layer) {
  const parts = choices.map((e, i) => `expert ${e} (${formatWeight(units[i])})`).join(", ");
  return `layer ${layer}, token ${index} \u201c${displayToken(token)}\u201d \u2192 ${parts}`;
}

// The readout: the hovered token; else the highlighted expert's load; else the layer's summary.
function readoutText(tokens, choices, units, layer, experts, show, expert, token) {
  const top = topOf(show);
  const T = tokens.length;
  const balanced = formatShare(top, experts);
  if (token !== null && token !== undefined) return describeToken(tokens[token], token, choices[token], units[token], layer);
  if (expert >= 0) {
    const count = expertCounts(choices, experts, top)[expert];
    const where = top === 1 ? "as their top-1 choice" : "among their top-2 choices";
    return `layer ${layer}, expert ${expert}: ${count} of ${T} tokens (${formatShare(count, T)}) ${where}; balanced: ${balanced}`;
  }
  return `layer ${layer}: ${T} tokens routed among ${experts} experts (${show} shown); a balanced router ` +
    `gives each expert ${balanced}`;
}

// Whether the state can be drawn: a change from Python may arrive one trait at a time.
function consistentState(tokens, layers, experts, topK, choices, weights, layer, show, expert) {
  if (!Array.isArray(tokens) || tokens.length === 0 || !choices || !weights) return false;
  if (!Number.isInteger(experts) || experts < 1 || experts > EXPERT_COLORS.length) return false;
  if (!(topK === 1 || topK === 2) || choices.length !== layers || weights.length !== layers) return false;
  const shaped = (x) => x.every((l) => l.length === tokens.length && l.every((row) => row.length === topK));
  if (!shaped(choices) || !shaped(weights)) return false;
  if (!choices.every((l) => l.every((row) => row.every((e) => e < experts)))) return false;
  return Number.isInteger(layer) && layer >= 0 && layer < layers && topOf(show) >= 1 && topOf(show) <= topK &&
    Number.isInteger(expert) && expert >= -1 && expert < experts;
}
// ---- end of pure functions ----

function el(tag, attrs = {}, parent = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// A swatch or a band in expert e's colour (striped for experts 8 and up).
function paint(node, e) {
  node.style.backgroundColor = EXPERT_COLORS[e];
  node.classList.toggle("ab-route-striped", EXPERT_STRIPED[e]);
  node.dataset.expert = String(e);
}

function render({ model, el: root }) {
  const box = el("div", { class: "ab-route" }, root);
  const title = el("div", { class: "ab-route-title" }, box);
  const controls = el("div", { class: "ab-route-controls" }, box);
  el("span", { class: "ab-route-label" }, controls).textContent = "layer";
  const layerGroup = el("div", { class: "ab-route-layers", role: "group", "aria-label": "layer" }, controls);
  el("span", { class: "ab-route-label" }, controls).textContent = "show";
  const showGroup = el("div", { class: "ab-route-show", role: "group", "aria-label": "routing shown" }, controls);
  const showButtons = SHOW.map((show, i) => {
    const b = el("button", { type: "button", class: `ab-route-button ab-route-top${i + 1}`, "data-show": show }, showGroup);
    b.textContent = show;
    b.addEventListener("click", () => save({ show }));
    return b;
  });

  const main = el("div", { class: "ab-route-main" }, box);
  const strip = el("div", { class: "ab-route-tokens",
    "aria-label": "tokens coloured by expert: hover over or focus one to see its experts and weights" }, main);
  const side = el("div", { class: "ab-route-side" }, main);
  const sideTitle = el("div", { class: "ab-route-side-title" }, side);
  const legend = el("div", { class: "ab-route-legend", role: "group", "aria-label": "experts: click one to highlight its tokens" }, side);
  const readout = el("div", { class: "ab-route-readout", "aria-live": "polite" }, box);
  el("div", { class: "ab-route-hint" }, box).textContent =
    "Hover over or focus a token for its experts and weights; click an expert to highlight its tokens " +
    "(again, or Escape, to clear). With top-2, the two bands of a token are as wide as its two weights.";

  let data = null;  // {tokens, choices, weights} decoded from the state, when consistent
  let chips = [];
  let rows = [];  // the legend's rows, one per expert
  let hovered = null, focused = null;  // the token under the pointer, the token with the focus

  function save(changes) {
    for (const [name, value] of Object.entries(changes)) model.set(name, value);
    model.save_changes();
  }

  const view = () => ({ layer: model.get("layer"), show: model.get("show"), expert: model.get("expert") });

  function rebuild() {
    const tokens = model.get("tokens"), layers = model.get("layers"), experts = model.get("experts");
    const choices = decodeChoices(model.get("choices")), weights = decodeWeights(model.get("weights"));
    const v = view();
    if (!consistentState(tokens, layers, experts, model.get("top_k"), choices, weights, v.layer, v.show, v.expert)) {
      data = null;  // the rest of a change is on its way
      return;
    }
    data = { tokens, choices, weights, layers, experts, topK: model.get("top_k") };
    hovered = focused = null;
    layerGroup.replaceChildren();
    for (let l = 0; l < layers; l++) {
      const b = el("button", { type: "button", class: "ab-route-button ab-route-layer", "data-layer": String(l) }, layerGroup);
      b.textContent = String(l);
      b.addEventListener("click", () => save({ layer: l }));
    }
    strip.replaceChildren();
    chips = tokens.map((token, t) => {
      const chip = el("span", { class: "ab-route-tok", "data-index": String(t), tabindex: "0" }, strip);
      el("span", { class: "ab-route-bands", "aria-hidden": "true" }, chip);
      el("span", { class: "ab-route-text" }, chip).textContent = displayToken(token);
      if (token.includes("\n")) el("span", { class: "ab-route-break" }, strip);
      return chip;
    });
    legend.replaceChildren();
    rows = [];
    for (let e = 0; e < experts; e++) {
      const row = el("div", { class: "ab-route-expert", "data-expert": String(e) }, legend);
      const button = el("button", { type: "button", class: "ab-route-legend-item", "data-expert": String(e) }, row);
      paint(el("span", { class: "ab-route-swatch" }, button), e);
      el("span", { class: "ab-route-name" }, button).textContent = `expert ${e}`;
      button.addEventListener("click", () => save({ expert: model.get("expert") === e ? -1 : e }));
      const track = el("span", { class: "ab-route-track" }, row);
      const bar = el("span", { class: "ab-route-bar" }, track);
      paint(bar, e);
      const balanced = el("span", { class: "ab-route-balanced" }, track);
      const share = el("span", { class: "ab-route-share" }, row);
      rows.push({ row, button, bar, balanced, share });
    }
    update();
  }

  function update() {
    if (data === null) return;
    const { layer, show, expert } = view();
    if (!consistentState(data.tokens, data.layers, data.experts, data.topK, data.choices, data.weights, layer, show,
      expert)) return;  // a view trait that goes with a change of the data is on its way
    const top = topOf(show);
    const choices = data.choices[layer], weights = data.weights[layer];
    const T = data.tokens.length;
    title.textContent = model.get("title") || "";
    title.hidden = !model.get("title");
    for (const b of layerGroup.children) b.setAttribute("aria-pressed", String(Number(b.dataset.layer) === layer));
    showButtons.forEach((b, i) => {
      b.setAttribute("aria-pressed", String(SHOW[i] === show));
      b.disabled = i + 1 > data.topK;
    });

    // the tokens: bands in their experts' colours, dimmed unless routed to the highlighted expert
    const hit = new Set(expert >= 0 ? routedTokens(choices, expert, top) : []);
    chips.forEach((chip, t) => {
      const bands = chip.firstChild;
      bands.replaceChildren();
      const widths = bandWidths(weights[t], top);
      widths.forEach((w, i) => {
        const band = el("span", { class: "ab-route-band", "data-rank": String(i), "data-width": String(w) }, bands);
        paint(band, choices[t][i]);
        band.style.width = `${w}%`;
      });
      chip.dataset.experts = choices[t].slice(0, top).join(",");
      chip.classList.toggle("ab-route-hit", expert >= 0 && hit.has(t));
      chip.classList.toggle("ab-route-dim", expert >= 0 && !hit.has(t));
      chip.title = describeToken(data.tokens[t], t, choices[t], weights[t], layer);
    });

    // the legend and the loads
    sideTitle.textContent = `experts: load in layer ${layer} (${show})`;
    const counts = expertCounts(choices, data.experts, top);
    const balancedShare = (100 * top) / data.experts;
    rows.forEach(({ row, button, bar, balanced, share }, e) => {
      const width = (100 * counts[e]) / T;
      bar.style.width = `${width}%`;
      bar.dataset.width = String(width);
      bar.dataset.count = String(counts[e]);
      balanced.style.left = `${balancedShare}%`;
      share.textContent = formatShare(counts[e], T);
      share.title = `${counts[e]} of ${T} tokens`;
      button.setAttribute("aria-pressed", String(e === expert));
      row.classList.toggle("ab-route-muted", expert >= 0 && e !== expert);
    });
    updateReadout();
  }

  function updateReadout() {
    if (data === null) return;
    const { layer, show, expert } = view();
    const preview = hovered !== null ? hovered : focused;  // the pointer first, then the focus
    const token = preview !== null && preview < data.tokens.length ? preview : null;
    readout.textContent = readoutText(data.tokens, data.choices[layer], data.weights[layer], layer, data.experts,
      show, expert, token);
    readout.dataset.token = token === null ? "" : String(token);
    chips.forEach((chip, t) => chip.classList.toggle("ab-route-preview", t === token));
  }

  // hovering or focusing a token shows its choices; arrows move along the tokens; Escape clears
  const indexOf = (event) => {
    const target = event.target.closest ? event.target.closest(".ab-route-tok") : null;
    return target ? Number(target.dataset.index) : null;
  };
  strip.addEventListener("mouseover", (event) => {
    const t = indexOf(event);
    if (t !== null && t !== hovered) {
      hovered = t;
      updateReadout();
    }
  });
  strip.addEventListener("mouseleave", () => { hovered = null; updateReadout(); });
  strip.addEventListener("focusin", (event) => { focused = indexOf(event); updateReadout(); });
  strip.addEventListener("focusout", () => { focused = null; updateReadout(); });
  strip.addEventListener("keydown", (event) => {
    const t = indexOf(event);
    if (t === null) return;
    let target = null;
    if (event.key === "ArrowRight") target = Math.min(t + 1, chips.length - 1);
    else if (event.key === "ArrowLeft") target = Math.max(t - 1, 0);
    if (target === null) return;
    event.preventDefault();
    chips[target].focus();
  });
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && model.get("expert") !== -1) save({ expert: -1 });
  });

  const dataNames = ["tokens", "layers", "experts", "top_k", "choices", "weights"];
  const names = ["layer", "show", "expert", "title"];
  const onView = () => (data === null ? rebuild() : update());
  for (const name of dataNames) model.on(`change:${name}`, rebuild);
  for (const name of names) model.on(`change:${name}`, onView);
  rebuild();
  return () => {
    for (const name of dataNames) model.off(`change:${name}`, rebuild);
    for (const name of names) model.off(`change:${name}`, onView);
  };
}

export default { render };
