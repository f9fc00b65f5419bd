// RoPE dial: everything is computed and drawn here, in the browser, from the widget's state, so the
// widget responds in JupyterLab, on Colab and in the static site (no kernel needed). The formulas
// are the same as companion.widgets.rope_dial in Python (rope_angles, rope_frequencies, ...).

// ---- pure functions: tests/test_widgets.py runs this block in Node (no DOM below this line) ----
const SCALINGS = ["none", "interpolation", "ntk"];
const SCALING_NAMES = { "none": "none", "interpolation": "position interpolation", "ntk": "NTK-aware" };
const TWO_PI = 2 * Math.PI;

// NTK-aware scaling's base: base * factor ** (headDim / (headDim - 2)) (bloc97 2023).
function ntkBase(base, headDim, factor) {
  return base * factor ** (headDim / (headDim - 2));
}

// theta_i (radians per token) of each pair index i, after the scaling.
function ropeFrequencies(headDim, base, pairs, scaling, factor) {
  if (!SCALINGS.includes(scaling)) throw new Error(`unknown scaling ${scaling}`);
  const b = scaling === "ntk" ? ntkBase(base, headDim, factor) : base;
  const thetas = pairs.map((i) => b ** (-2 * i / headDim));
  return scaling === "interpolation" ? thetas.map((theta) => theta / factor) : thetas;
}

// The angle (radians, not reduced mod 2 pi) of each pair at `position`.
function ropeAngles(position, headDim, base, pairs, scaling, factor) {
  if (scaling === "interpolation") {
    return ropeFrequencies(headDim, base, pairs, "none", 1).map((theta) => (position / factor) * theta);
  }
  return ropeFrequencies(headDim, base, pairs, scaling, factor).map((theta) => position * theta);
}

// 2 pi / theta_i: the tokens a pair takes to turn once.
function ropeWavelengths(headDim, base, pairs, scaling, factor) {
  return ropeFrequencies(headDim, base, pairs, scaling, factor).map((theta) => TWO_PI / theta);
}

// How far each pair turned in training (positions up to originalContext, no scaling).
function trainedAngles(headDim, base, pairs, originalContext) {
  return ropeFrequencies(headDim, base, pairs, "none", 1).map((theta) => originalContext * theta);
}

// "seen" within the trained range; past it, "unseen" if the dial points past the arc swept in
// training, "beyond" if it does not (the pair turned that way in training, at a shorter distance).
function rotationStatus(angle, trained) {
  if (angle <= trained) return "seen";
  return angle % TWO_PI > trained ? "unseen" : "beyond";
}

// The logarithmic position slider: value s means position round(2^s - 1).
function positionFromSlider(value) {
  return Math.round(2 ** value - 1);
}

function sliderValue(position) {
  return Math.log2(position + 1);
}

// An angle in degrees, reduced to [0, 360).
function degrees(angle) {
  return ((angle % TWO_PI) * 180) / Math.PI;
}

// Numbers for the table: three significant figures below 1000, whole numbers with commas above.
function formatNumber(x) {
  if (x === 0) return "0";
  if (x >= 1000 || Number(x.toPrecision(3)) >= 1000) return Math.round(x).toLocaleString("en-US");
  return x.toPrecision(3);
}
// ---- end of pure functions ----

const SVG = "http://www.w3.org/2000/svg";
const STATUS_TEXT = {
  seen: "within the trained range",
  beyond: "past the trained range, at an angle seen in training",
  unseen: "unseen rotation",
};

function el(tag, attrs = {}, parent = null, ns = null) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// A point on a dial of radius r centred at (c, c), at `angle` counter-clockwise from the right.
const point = (c, r, angle) => [c + r * Math.cos(angle), c - r * Math.sin(angle)];

// The arc swept in training: from angle 0 counter-clockwise to `trained` (a full disc past 2 pi).
function arcPath(c, r, trained) {
  if (trained >= TWO_PI) return null;
  const [x, y] = point(c, r, trained);
  const large = trained > Math.PI ? 1 : 0;
  return `M ${c} ${c} L ${c + r} ${c} A ${r} ${r} 0 ${large} 0 ${x.toFixed(2)} ${y.toFixed(2)} Z`;
}

function render({ model, el: root }) {
  const box = el("div", { class: "ab-rope" }, root);
  const controls = el("div", { class: "ab-rope-controls" }, box);

  const posLabel = el("label", { class: "ab-rope-control" }, controls);
  posLabel.append("position ");
  const slider = el("input", { type: "range", class: "ab-rope-position", min: "0", step: "0.01",
    "aria-label": "position (logarithmic slider)" }, posLabel);
  const posInput = el("input", { type: "number", class: "ab-rope-position-input", min: "0", step: "1",
    "aria-label": "position" }, posLabel);

  const scalingLabel = el("label", { class: "ab-rope-control" }, controls);
  scalingLabel.append("scaling ");
  const scalingSelect = el("select", { class: "ab-rope-scaling", "aria-label": "scaling" }, scalingLabel);
  for (const s of SCALINGS) el("option", { value: s }, scalingSelect).textContent = SCALING_NAMES[s];

  const factorLabel = el("label", { class: "ab-rope-control ab-rope-control-factor" }, controls);
  factorLabel.append("factor ");
  const factorSlider = el("input", { type: "range", class: "ab-rope-factor", min: "1", max: "16", step: "0.5",
    "aria-label": "scaling factor" }, factorLabel);
  const factorValue = el("output", { class: "ab-rope-factor-value" }, factorLabel);

  const about = el("div", { class: "ab-rope-about" }, box);
  const dials = el("div", { class: "ab-rope-dials" }, box);
  const table = el("table", { class: "ab-rope-table" }, box);
  const head = el("tr", {}, el("thead", {}, table));
  for (const text of ["pair i", "wavelength (tokens)", "after scaling", "slowed down by", "angle", "turns",
    "turns in training", "status"]) {
    el("th", {}, head).textContent = text;
  }
  const body = el("tbody", {}, table);
  const readout = el("div", { class: "ab-rope-readout", "aria-live": "polite" }, box);
  const chart = el("svg", { class: "ab-rope-chart", role: "img", viewBox: "0 0 440 150" }, box, SVG);
  const legend = el("div", { class: "ab-rope-legend" }, box);
  legend.innerHTML =
    '<span class="ab-rope-key ab-rope-key-arc"></span>angles reached in training ' +
    '<span class="ab-rope-key ab-rope-key-none"></span>no scaling ' +
    '<span class="ab-rope-key ab-rope-key-scaled"></span>with the scaling chosen ' +
    '<span class="ab-rope-key ab-rope-key-unseen"></span>unseen rotation';

  const state = () => ({
    headDim: model.get("head_dim"), base: model.get("base"), position: model.get("position"),
    factor: model.get("factor"), scaling: model.get("scaling"), pairs: model.get("pairs"),
    context: model.get("original_context"),
  });

  function save(changes) {
    for (const [name, value] of Object.entries(changes)) model.set(name, value);
    model.save_changes();
  }

  function drawDials(s, angles, noneAngles, trained, statuses) {
    dials.replaceChildren();
    const c = 44, r = 36;
    s.pairs.forEach((i, k) => {
      const figure = el("div", { class: `ab-rope-dial ab-rope-${statuses[k]}`, "data-pair": String(i) }, dials);
      const svg = el("svg", { viewBox: `0 0 ${2 * c} ${2 * c}`, class: "ab-rope-dial-svg", role: "img",
        "aria-label": `pair ${i}: ${degrees(angles[k]).toFixed(1)} degrees, ${STATUS_TEXT[statuses[k]]}` }, figure, SVG);
      const arc = arcPath(c, r, trained[k]);
      if (arc) el("path", { d: arc, class: "ab-rope-arc" }, svg, SVG);
      else el("circle", { cx: c, cy: c, r, class: "ab-rope-arc" }, svg, SVG);
      el("circle", { cx: c, cy: c, r, class: "ab-rope-rim" }, svg, SVG);
      const [x0, y0] = point(c, r, 0);
      el("line", { x1: c, y1: c, x2: x0, y2: y0, class: "ab-rope-zero" }, svg, SVG);
      if (s.scaling !== "none") {
        const [xn, yn] = point(c, r - 4, noneAngles[k] % TWO_PI);
        el("line", { x1: c, y1: c, x2: xn.toFixed(2), y2: yn.toFixed(2), class: "ab-rope-hand-none" }, svg, SVG);
      }
      const [x, y] = point(c, r - 4, angles[k] % TWO_PI);
      el("line", { x1: c, y1: c, x2: x.toFixed(2), y2: y.toFixed(2), class: "ab-rope-hand",
        "data-angle": String(angles[k]) }, svg, SVG);
      el("circle", { cx: c, cy: c, r: 2.5, class: "ab-rope-hub" }, svg, SVG);
      const caption = el("div", { class: "ab-rope-caption" }, figure);
      caption.textContent = `pair ${i}: ${degrees(angles[k]).toFixed(1)}\u00b0`;
    });
  }

  // The slow-down theta_i / theta'_i of every pair under both scalings, on a log scale.
  function drawChart(s) {
    chart.replaceChildren();
    const W = 440, H = 150, m = { l: 46, r: 110, t: 18, b: 28 };
    const n = s.headDim / 2;
    const all = Array.from({ length: n }, (_, i) => i);
    const none = ropeFrequencies(s.headDim, s.base, all, "none", 1);
    const lines = {
      interpolation: ropeFrequencies(s.headDim, s.base, all, "interpolation", s.factor).map((t, i) => none[i] / t),
      ntk: ropeFrequencies(s.headDim, s.base, all, "ntk", s.factor).map((t, i) => none[i] / t),
    };
    const top = Math.max(2, s.factor);
    const X = (i) => m.l + (n > 1 ? i / (n - 1) : 0) * (W - m.l - m.r);
    const Y = (v) => H - m.b - (Math.log2(v) / Math.log2(top)) * (H - m.t - m.b);
    el("text", { x: m.l, y: 11, class: "ab-rope-chart-title" }, chart, SVG).textContent =
      `slowed down by (theta / theta'), factor ${s.factor}`;
    el("line", { x1: m.l, y1: H - m.b, x2: W - m.r, y2: H - m.b, class: "ab-rope-axis" }, chart, SVG);
    el("line", { x1: m.l, y1: m.t, x2: m.l, y2: H - m.b, class: "ab-rope-axis" }, chart, SVG);
    for (const v of [1, top]) {
      el("text", { x: m.l - 4, y: Y(v) + 3, class: "ab-rope-tick", "text-anchor": "end" }, chart, SVG)
        .textContent = `${Number(v.toPrecision(3))}\u00d7`;
    }
    for (const i of [0, n - 1]) {
      el("text", { x: X(i), y: H - m.b + 12, class: "ab-rope-tick", "text-anchor": "middle" }, chart, SVG)
        .textContent = String(i);
    }
    el("text", { x: (m.l + W - m.r) / 2, y: H - 4, class: "ab-rope-tick", "text-anchor": "middle" }, chart, SVG)
      .textContent = "pair i (fast \u2192 slow)";
    for (const [kind, values] of Object.entries(lines)) {
      const pts = values.map((v, i) => `${X(i).toFixed(1)},${Y(v).toFixed(1)}`).join(" ");
      const chosen = kind === s.scaling;
      el("polyline", { points: pts, class: `ab-rope-curve ab-rope-curve-${kind}${chosen ? " ab-rope-chosen" : ""}` }, chart, SVG);
      el("text", { x: W - m.r + 6, y: Y(values[n - 1]) + (kind === "ntk" ? 12 : -4),
        class: `ab-rope-tick ab-rope-curve-label${chosen ? " ab-rope-chosen" : ""}` }, chart, SVG)
        .textContent = SCALING_NAMES[kind];
    }
    for (const i of s.pairs) {
      el("line", { x1: X(i), y1: m.t, x2: X(i), y2: H - m.b, class: "ab-rope-marker" }, chart, SVG);
    }
  }

  function draw() {
    const s = state();
    const max = Math.max(8 * s.context, s.position);
    slider.max = String(Math.ceil(sliderValue(max) * 100) / 100);
    slider.value = String(sliderValue(s.position));
    posInput.value = String(s.position);
    scalingSelect.value = s.scaling;
    factorSlider.value = String(s.factor);
    factorValue.textContent = `${s.factor}`;
    factorLabel.classList.toggle("ab-rope-unused", s.scaling === "none");
    about.textContent = {
      none: `No scaling: angle = position \u00d7 \u03b8\u1d62, \u03b8\u1d62 = ${s.base}^(\u22122i/${s.headDim}).`,
      interpolation: `Position interpolation: angle = (position / ${s.factor}) \u00d7 \u03b8\u1d62; every pair is slowed down ${s.factor}\u00d7.`,
      ntk: `NTK-aware: the base becomes ${s.base} \u00d7 ${s.factor}^(${s.headDim}/${s.headDim - 2}) = ` +
        `${formatNumber(ntkBase(s.base, s.headDim, s.factor))}; pair 0 is untouched, the last pair slowed down ${s.factor}\u00d7.`,
    }[s.scaling];

    const angles = ropeAngles(s.position, s.headDim, s.base, s.pairs, s.scaling, s.factor);
    const noneAngles = ropeAngles(s.position, s.headDim, s.base, s.pairs, "none", 1);
    const trained = trainedAngles(s.headDim, s.base, s.pairs, s.context);
    const waves = ropeWavelengths(s.headDim, s.base, s.pairs, "none", 1);
    const scaledWaves = ropeWavelengths(s.headDim, s.base, s.pairs, s.scaling, s.factor);
    const statuses = angles.map((a, k) => rotationStatus(a, trained[k]));
    drawDials(s, angles, noneAngles, trained, statuses);

    body.replaceChildren();
    s.pairs.forEach((i, k) => {
      const row = el("tr", { class: `ab-rope-row ab-rope-${statuses[k]}`, "data-pair": String(i),
        "data-angle": String(angles[k]) }, body);
      const cells = [
        ["ab-rope-pair", String(i)],
        ["ab-rope-wavelength", formatNumber(waves[k])],
        ["ab-rope-scaled-wavelength", formatNumber(scaledWaves[k])],
        ["ab-rope-slowdown", `${formatNumber(scaledWaves[k] / waves[k])}\u00d7`],
        ["ab-rope-degrees", `${degrees(angles[k]).toFixed(1)}\u00b0`],
        ["ab-rope-turns", formatNumber(angles[k] / TWO_PI)],
        ["ab-rope-trained-turns", formatNumber(trained[k] / TWO_PI)],
        ["ab-rope-status", statuses[k]],
      ];
      for (const [cls, text] of cells) el("td", { class: cls }, row).textContent = text;
      row.lastChild.title = STATUS_TEXT[statuses[k]];
    });

    const past = statuses.filter((x) => x !== "seen").length;
    const unseen = statuses.filter((x) => x === "unseen").length;
    readout.replaceChildren();
    readout.append("At position ");
    el("b", { class: "ab-rope-where" }, readout).textContent = s.position.toLocaleString("en-US");
    readout.append(` with ${s.scaling === "none" ? "no scaling" : `${SCALING_NAMES[s.scaling]} (factor ${s.factor})`}: `);
    el("b", { class: "ab-rope-past" }, readout).textContent = String(past);
    readout.append(` of ${s.pairs.length} pairs past their trained range (training went up to position ` +
      `${s.context.toLocaleString("en-US")}), `);
    el("b", { class: "ab-rope-unseen-count" }, readout).textContent = String(unseen);
    readout.append(` with an unseen rotation.`);
    readout.classList.toggle("ab-rope-alarm", unseen > 0);
    drawChart(s);
  }

  slider.addEventListener("input", () => save({ position: positionFromSlider(Number(slider.value)) }));
  posInput.addEventListener("change", () => {
    const p = Number(posInput.value);
    if (Number.isInteger(p) && p >= 0) save({ position: p });
    else posInput.value = String(model.get("position"));
  });
  scalingSelect.addEventListener("change", () => save({ scaling: scalingSelect.value }));
  factorSlider.addEventListener("input", () => save({ factor: Number(factorSlider.value) }));

  const names = ["head_dim", "base", "position", "factor", "scaling", "pairs", "original_context"];
  for (const name of names) model.on(`change:${name}`, draw);
  draw();
  return () => {
    for (const name of names) model.off(`change:${name}`, draw);
  };
}

export default { render };
