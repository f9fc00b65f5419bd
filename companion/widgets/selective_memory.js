// Selective memory: how much of each past token is left in a selective (Mamba) or time-invariant (S4)
// state space model's state at a query position. Computed and drawn here, in the browser, from the
// widget's state (tokens, gates, decay rates, Delta scale, mode, query, dimension), so the widget
// responds in JupyterLab, on Colab and in the static site (no kernel needed). The numbers are those
// of companion.widgets.selective_memory in Python (tests/test_selective_memory.py runs both).

// ---- pure functions: tests/test_selective_memory.py runs this block in Node (no DOM below this line) ----
const MIN_TOKENS = 2;
const MAX_TOKENS = 64;
const MAX_STATE = 16;
const SCALE_MIN = 0.01;
const SCALE_MAX = 10;
const SLIDER_MIN = -2;
const SLIDER_MAX = 1;
const SLIDER_STEP = 0.05;
const THRESHOLD = 0.01;
const CURVE_FLOOR = 1e-4;
const MINUS = "\u2212";
const VISIBLE = { " ": "\u00b7", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d" };
const HINT = "Hover over a token (or focus it) to see how much of it is left at the query; click a token to make it the query.";

// How a token is shown: whitespace made visible (as display_token of attention_explorer.py).
function displayToken(token) {
  if (token === "") return "\u2205";
  return Array.from(token, (c) => (c in VISIBLE ? VISIBLE[c] : c)).join("");
}

// Delta_t of every token: scale * gate_t (selective), or scale for every token (time-invariant).
function stepSizes(gates, scale, selective) {
  return selective ? gates.map((g) => scale * g) : gates.map(() => scale);
}

// S_j = Delta_{j+1} + ... + Delta_query for j = 0..query (0 at the query), summed from the query back.
function elapsed(deltas, query) {
  const out = new Array(query + 1).fill(0);
  let total = 0;
  for (let j = query; j >= 0; j--) {
    out[j] = total;
    total += deltas[j];
  }
  return out;
}

// exp(A_n S) for dimension n, or the mean over the dimensions for -1.
function kept(total, rates, dimension) {
  if (dimension >= 0) return Math.exp(rates[dimension] * total);
  let acc = 0;
  for (const a of rates) acc += Math.exp(a * total);
  return acc / rates.length;
}

// The fraction of its written weight each token 0..query keeps at the query.
function survival(deltas, rates, query, dimension) {
  return elapsed(deltas, query).map((total) => kept(total, rates, dimension));
}

// The weight of x_j in the state at the query (B = 1): Delta_j * survival_j.
function contributions(deltas, rates, query, dimension) {
  return survival(deltas, rates, query, dimension).map((s, j) => deltas[j] * s);
}

// The smallest k >= 1 whose token (k steps before the query) keeps less than `threshold`; null if none.
function memoryHorizon(deltas, rates, query, dimension, threshold = THRESHOLD) {
  const s = survival(deltas, rates, query, dimension);
  for (let k = 1; k <= query; k++) if (s[query - k] < threshold) return k;
  return null;
}

// A token's bar height in percent, on the logarithmic axis from CURVE_FLOOR (0) to 1 (100): 1% is at 50.
function barHeight(v) {
  return 100 * (1 - Math.log10(Math.max(v, CURVE_FLOOR)) / Math.log10(CURVE_FLOOR));
}

// The Delta scale at the logarithmic slider's value: 10 ** value to 3 significant digits.
function scaleFromSlider(value) {
  return Number((10 ** value).toPrecision(3));
}

// x to 3 significant digits without trailing zeros, with a minus sign; 0 as "0".
function formatNumber(x) {
  if (x === 0) return "0";
  return (x < 0 ? MINUS : "") + String(Number(Math.abs(x).toPrecision(3)));
}

// A fraction as a percentage: "100%", one decimal from 1%, two below, "< 0.01%", "0%".
function formatPercent(p) {
  const v = 100 * p;
  if (p === 1) return "100%";
  if (v >= 1) return `${v.toFixed(1)}%`;
  if (v >= 0.01) return `${v.toFixed(2)}%`;
  return v > 0 ? "< 0.01%" : "0%";
}

const quoted = (token) => `\u201c${displayToken(token)}\u201d`;

// The summary line (summary_text in Python).
function summaryText(tokens, gates, rates, scale, selective, query, dimension) {
  const deltas = stepSizes(gates, scale, selective);
  const s = survival(deltas, rates, query, dimension);
  const horizon = memoryHorizon(deltas, rates, query, dimension);
  const which = dimension < 0 ? `the average of ${rates.length} state dimensions`
    : `state dimension n = ${dimension} (A = ${formatNumber(rates[dimension])})`;
  const head = `Query t = ${query} (${quoted(tokens[query])}), ${selective ? "selective" : "time-invariant"}, ` +
    `\u0394 scale ${formatNumber(scale)}, ${which}: `;
  if (query === 0) return head + "the first token, nothing came before it.";
  if (horizon === null) {
    return head + `no earlier token has fallen below 1% (the oldest, ${query} steps back, keeps ${formatPercent(s[0])}).`;
  }
  return head + `memory horizon ${horizon} step${horizon > 1 ? "s" : ""}: every token ${horizon} or more steps ` +
    "back keeps less than 1% of its weight.";
}

// The line about one token (token_text in Python); focus null: the hint.
function tokenText(tokens, gates, rates, scale, selective, query, dimension, focus) {
  if (focus === null || focus === undefined) return HINT;
  const deltas = stepSizes(gates, scale, selective);
  const where = `${quoted(tokens[focus])} (token ${focus})`;
  if (focus > query) return `${where} comes after the query: it is not in the state yet.`;
  const written = formatNumber(deltas[focus]);
  if (focus === query) return `${where} is the query itself: just written, with weight \u0394 = ${written}, 100% of it.`;
  const k = query - focus;
  const s = survival(deltas, rates, query, dimension)[focus];
  const total = elapsed(deltas, query)[focus];
  return `${where}, ${k} step${k > 1 ? "s" : ""} back: written with weight \u0394 = ${written}; ` +
    `after \u03a3\u0394 = ${formatNumber(total)} of elapsed time it keeps ${formatPercent(s)} of that ` +
    `(weight ${formatNumber(deltas[focus] * s)} in the state).`;
}

// Whether the state can be drawn: a change from Python may arrive one trait at a time.
function consistentState(tokens, gates, rates, scale, selective, query, dimension) {
  if (!Array.isArray(tokens) || tokens.length < MIN_TOKENS || tokens.length > MAX_TOKENS) return false;
  if (!tokens.every((t) => typeof t === "string")) return false;
  if (!Array.isArray(gates) || gates.length !== tokens.length) return false;
  if (!gates.every((g) => typeof g === "number" && Number.isFinite(g) && g >= 0)) return false;
  if (!Array.isArray(rates) || rates.length < 1 || rates.length > MAX_STATE) return false;
  if (!rates.every((a) => typeof a === "number" && Number.isFinite(a) && a < 0)) return false;
  return typeof scale === "number" && scale >= SCALE_MIN && scale <= SCALE_MAX && typeof selective === "boolean" &&
    Number.isInteger(query) && query >= 0 && query < tokens.length &&
    Number.isInteger(dimension) && dimension >= -1 && dimension < rates.length;
}
// ---- end of pure functions ----

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, parent = null, ns = null) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// The charts' horizontal layout: one slot per token, shared by both charts.
const W = 640, ML = 44, MR = 8;

function render({ model, el: root }) {
  const box = el("div", { class: "ab-select" }, root);
  const controls = el("div", { class: "ab-select-controls" }, box);

  const modes = el("div", { class: "ab-select-modes", role: "group", "aria-label": "how the step size is chosen" }, controls);
  const modeButtons = [
    [true, "selective: \u0394\u209c = scale \u00d7 gate\u209c"],
    [false, "time-invariant: \u0394\u209c = scale"],
  ].map(([selective, text]) => {
    const button = el("button", { type: "button", class: "ab-select-mode",
      "data-mode": selective ? "selective" : "time-invariant" }, modes);
    button.textContent = text;
    button.addEventListener("click", () => save({ selective }));
    return button;
  });

  const scaleLabel = el("label", { class: "ab-select-control" }, controls);
  scaleLabel.append("\u0394 scale ");
  const slider = el("input", { type: "range", class: "ab-select-scale", min: String(SLIDER_MIN), max: String(SLIDER_MAX),
    step: String(SLIDER_STEP), "aria-label": "Delta scale (logarithmic slider)" }, scaleLabel);
  const scaleValue = el("output", { class: "ab-select-scale-value" }, scaleLabel);

  const dimLabel = el("label", { class: "ab-select-control" }, controls);
  dimLabel.append("state ");
  const dimSelect = el("select", { class: "ab-select-dimension", "aria-label": "state dimension" }, dimLabel);

  const about = el("div", { class: "ab-select-about" }, box);
  about.textContent = "Token j is written into the state with weight \u0394\u2c7c (B = 1); at every later step s the " +
    "state is multiplied by exp(\u0394\u209b\u00b7A\u2099), so after k steps the token keeps " +
    "exp(A\u2099\u00b7(\u0394\u2c7c\u208a\u2081 + \u2026 + \u0394\u2c7c\u208a\u2096)) of its weight. " +
    "A large \u0394 erases the past; a small one keeps it (and barely writes the token).";
  const summary = el("div", { class: "ab-select-summary", "aria-live": "polite" }, box);
  const strip = el("div", { class: "ab-select-tokens", role: "group", "aria-label": "tokens (click one to make it the query)" }, box);
  const detail = el("div", { class: "ab-select-detail", "aria-live": "polite" }, box);
  const deltaTitle = el("div", { class: "ab-select-title" }, box);
  const deltaChart = el("svg", { class: "ab-select-deltas", role: "img", viewBox: `0 0 ${W} 110` }, box, SVG);
  const curveTitle = el("div", { class: "ab-select-title" }, box);
  curveTitle.textContent = "What each token keeps at the query (logarithmic axis)";
  const curveChart = el("svg", { class: "ab-select-curve", role: "img", viewBox: `0 0 ${W} 150` }, box, SVG);
  const legend = el("div", { class: "ab-select-legend" }, box);
  legend.innerHTML =
    '<span class="ab-select-key ab-select-key-kept"></span>kept (bar height, logarithmic: the line is 1%, the bottom 0.01%) ' +
    '<span class="ab-select-key ab-select-key-forgotten"></span>below 1% ' +
    '<span class="ab-select-key ab-select-key-query"></span>the query ' +
    '<span class="ab-select-key ab-select-key-eroding"></span>the steps that erode the hovered token';

  let focus = null;  // the hovered or focused token (not synced: a view of the reader's own)
  let chips = [];
  let chipsFor = null;  // the tokens the chips were built for

  const state = () => ({
    tokens: model.get("tokens"), gates: model.get("gates"), rates: model.get("decay_rates"),
    scale: model.get("delta_scale"), selective: model.get("selective"), query: model.get("query"),
    dimension: model.get("dimension"),
  });

  function save(changes) {
    for (const [name, value] of Object.entries(changes)) model.set(name, value);
    model.save_changes();
  }

  function buildChips(tokens) {
    strip.replaceChildren();
    chips = tokens.map((token, j) => {
      const chip = el("button", { type: "button", class: "ab-select-tok", "data-index": String(j) }, strip);
      const bar = el("span", { class: "ab-select-bar" }, chip);
      el("span", { class: "ab-select-fill" }, bar);
      el("span", { class: "ab-select-text" }, chip).textContent = displayToken(token);
      chip.addEventListener("click", () => { focus = j; save({ query: j }); });
      chip.addEventListener("mouseenter", () => setFocus(j));
      chip.addEventListener("mouseleave", () => setFocus(focusedChip()));  // back to the keyboard's token
      chip.addEventListener("focus", () => setFocus(j));
      chip.addEventListener("blur", () => setFocus(null));
      chip.addEventListener("keydown", (event) => {
        const to = { ArrowLeft: j - 1, ArrowRight: j + 1, Home: 0, End: tokens.length - 1 }[event.key];
        if (to !== undefined && to >= 0 && to < tokens.length) {
          event.preventDefault();
          chips[to].focus();
        }
      });
      return chip;
    });
    chipsFor = tokens;
  }

  // The token whose chip has the keyboard focus, or null.
  function focusedChip() {
    const j = chips.indexOf(document.activeElement);
    return j >= 0 ? j : null;
  }

  function setFocus(j) {
    focus = j;
    draw();
  }

  const X = (j, T) => ML + (j + 0.5) * (W - ML - MR) / T;

  // Positions under a chart: the first and the last token, and the query (labels too close to it left out).
  function axisLabels(chart, s, H) {
    const T = s.tokens.length, near = Math.max(2, Math.ceil(T / 12));
    for (const t of [0, T - 1, s.query]) {
      if (t !== s.query && Math.abs(t - s.query) < near) continue;
      el("text", { x: X(t, T), y: H - 5, class: `ab-select-tick${t === s.query ? " ab-select-tick-query" : ""}`,
        "text-anchor": "middle" }, chart, SVG).textContent = t === s.query ? `t = ${t}` : String(t);
    }
  }

  function drawDeltas(s, deltas) {
    deltaChart.replaceChildren();
    const T = s.tokens.length, H = 110, top = 10, bottom = 18;
    const slot = (W - ML - MR) / T;
    const max = Math.max(...deltas, s.scale);
    const Y = (v) => H - bottom - (v / max) * (H - top - bottom);
    deltaTitle.textContent = s.selective
      ? "Step size \u0394\u209c = scale \u00d7 gate\u209c of every token (selective: chosen by the token)"
      : "Step size \u0394\u209c = scale of every token (time-invariant: the same everywhere)";
    el("line", { x1: ML, y1: H - bottom, x2: W - MR, y2: H - bottom, class: "ab-select-axis" }, deltaChart, SVG);
    for (const v of [0, max]) {
      el("text", { x: ML - 4, y: Y(v) + 3, class: "ab-select-tick", "text-anchor": "end" }, deltaChart, SVG)
        .textContent = formatNumber(v);
    }
    deltas.forEach((d, t) => {
      const cls = ["ab-select-delta"];
      if (t === s.query) cls.push("ab-select-delta-query");
      if (t > s.query) cls.push("ab-select-delta-future");
      if (focus !== null && focus < s.query && t > focus && t <= s.query) cls.push("ab-select-eroding");
      const rect = el("rect", { x: (X(t, T) - 0.4 * slot).toFixed(2), y: Y(d).toFixed(2), width: (0.8 * slot).toFixed(2),
        height: Math.max(0, H - bottom - Y(d)).toFixed(2), class: cls.join(" "), "data-index": String(t),
        "data-value": String(d) }, deltaChart, SVG);
      el("title", {}, rect, SVG).textContent = `${displayToken(s.tokens[t])} (token ${t}): \u0394 = ${formatNumber(d)}`;
    });
    el("line", { x1: ML, y1: Y(s.scale), x2: W - MR, y2: Y(s.scale), class: "ab-select-scale-line" }, deltaChart, SVG);
    el("text", { x: W - MR, y: Y(s.scale) - 3, class: "ab-select-tick", "text-anchor": "end" }, deltaChart, SVG)
      .textContent = `scale ${formatNumber(s.scale)}`;
    axisLabels(deltaChart, s, H);
  }

  function drawCurve(s, kept, horizon) {
    curveChart.replaceChildren();
    const T = s.tokens.length, H = 150, top = 8, bottom = 18;
    const low = Math.log10(CURVE_FLOOR);
    const Y = (v) => top + (Math.log10(Math.max(v, CURVE_FLOOR)) / low) * (H - top - bottom);
    for (const [v, text] of [[1, "100%"], [0.1, "10%"], [0.01, "1%"], [0.001, "0.1%"], [0.0001, "0.01%"]]) {
      el("line", { x1: ML, y1: Y(v), x2: W - MR, y2: Y(v), class: v === THRESHOLD ? "ab-select-threshold" : "ab-select-grid" },
        curveChart, SVG);
      el("text", { x: ML - 4, y: Y(v) + 3, class: "ab-select-tick", "text-anchor": "end" }, curveChart, SVG).textContent = text;
    }
    if (horizon !== null) {
      const x = X(s.query - horizon, T);
      el("line", { x1: x, y1: top, x2: x, y2: H - bottom, class: "ab-select-horizon-line",
        "data-horizon": String(horizon) }, curveChart, SVG);
      // to the left of the line, at the top: the tokens there are below 1%, so low in the chart
      el("text", { x: x - 3, y: top + 9, class: "ab-select-tick", "text-anchor": "end" }, curveChart, SVG)
        .textContent = `memory horizon: ${horizon} step${horizon > 1 ? "s" : ""} back`;
    }
    const points = kept.map((v, j) => `${X(j, T).toFixed(1)},${Y(v).toFixed(1)}`).join(" ");
    el("polyline", { points, class: "ab-select-line" }, curveChart, SVG);
    kept.forEach((v, j) => {
      const cls = ["ab-select-point"];
      if (v < THRESHOLD) cls.push("ab-select-forgotten");
      if (v < CURVE_FLOOR) cls.push("ab-select-below");
      if (j === focus) cls.push("ab-select-focus");
      const dot = el("circle", { cx: X(j, T).toFixed(1), cy: Y(v).toFixed(1), r: j === focus ? 4 : 2.5, class: cls.join(" "),
        "data-index": String(j), "data-value": String(v) }, curveChart, SVG);
      el("title", {}, dot, SVG).textContent = `${displayToken(s.tokens[j])} (token ${j}): keeps ${formatPercent(v)}`;
    });
    axisLabels(curveChart, s, H);
  }

  function draw() {
    const s = state();
    if (!consistentState(s.tokens, s.gates, s.rates, s.scale, s.selective, s.query, s.dimension)) return;  // more is on its way
    if (focus !== null && focus >= s.tokens.length) focus = null;
    if (chipsFor === null || chipsFor.length !== s.tokens.length || chipsFor.some((t, j) => t !== s.tokens[j])) {
      buildChips(s.tokens);
    }
    const deltas = stepSizes(s.gates, s.scale, s.selective);
    const kept = survival(deltas, s.rates, s.query, s.dimension);
    const horizon = memoryHorizon(deltas, s.rates, s.query, s.dimension);

    for (const button of modeButtons) {
      button.setAttribute("aria-pressed", String((button.dataset.mode === "selective") === s.selective));
    }
    slider.value = String(Math.min(SLIDER_MAX, Math.max(SLIDER_MIN, Math.log10(s.scale))));
    scaleValue.textContent = formatNumber(s.scale);
    scaleValue.dataset.value = String(s.scale);
    const options = [[-1, `average of ${s.rates.length} dimensions`],
      ...s.rates.map((a, n) => [n, `n = ${n} (A = ${formatNumber(a)})`])];
    if (dimSelect.options.length !== options.length || [...dimSelect.options].some((o, i) => o.textContent !== options[i][1])) {
      dimSelect.replaceChildren();
      for (const [value, text] of options) el("option", { value: String(value) }, dimSelect).textContent = text;
    }
    dimSelect.value = String(s.dimension);

    summary.textContent = summaryText(s.tokens, s.gates, s.rates, s.scale, s.selective, s.query, s.dimension);
    summary.dataset.horizon = horizon === null ? "" : String(horizon);
    detail.textContent = tokenText(s.tokens, s.gates, s.rates, s.scale, s.selective, s.query, s.dimension, focus);
    detail.dataset.token = focus === null ? "" : String(focus);

    chips.forEach((chip, j) => {
      const past = j <= s.query;
      const v = past ? kept[j] : 0;
      chip.classList.toggle("ab-select-query", j === s.query);
      chip.classList.toggle("ab-select-future", !past);
      chip.classList.toggle("ab-select-forgotten", past && v < THRESHOLD);
      chip.classList.toggle("ab-select-horizon", horizon !== null && j === s.query - horizon);
      chip.classList.toggle("ab-select-focus", j === focus);
      chip.setAttribute("aria-pressed", String(j === s.query));
      chip.dataset.survival = past ? String(v) : "";
      chip.dataset.delta = String(deltas[j]);
      const height = past ? barHeight(v) : 0;
      chip.dataset.height = String(height);
      chip.querySelector(".ab-select-fill").style.height = `${height.toFixed(2)}%`;
      chip.title = tokenText(s.tokens, s.gates, s.rates, s.scale, s.selective, s.query, s.dimension, j);
    });
    drawDeltas(s, deltas);
    drawCurve(s, kept, horizon);
  }

  slider.addEventListener("input", () => save({ delta_scale: scaleFromSlider(Number(slider.value)) }));
  dimSelect.addEventListener("change", () => save({ dimension: Number(dimSelect.value) }));

  const names = ["tokens", "gates", "decay_rates", "delta_scale", "selective", "query", "dimension"];
  for (const name of names) model.on(`change:${name}`, draw);
  draw();
  return () => {
    for (const name of names) model.off(`change:${name}`, draw);
  };
}

export default { render };
