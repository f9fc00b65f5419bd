// "The cost of a sequence": everything is computed here, in the browser, from the widget's state,
// so the widget responds in JupyterLab, on Colab and in the static site (no kernel needed).
// The formulas are the same as companion.widgets.sequence_cost.sequence_costs in Python.

const SVG = "http://www.w3.org/2000/svg";

function costs(L, d, b) {
  return {
    attention_ops: 2 * L * L * d,
    linear_ops: 2 * L * d * d,
    attention_scores_bytes: L * L * b,
    kv_cache_bytes: 2 * L * d * b,
    linear_state_bytes: d * d * b,
  };
}

function formatCount(x) {
  if (x < 1000) return x.toFixed(0);
  let exp = Math.floor(Math.log10(x));
  let mant = (x / 10 ** exp).toFixed(2);
  if (Number(mant) >= 10) {  // 9.996e3 rounds to "10.00": write 1.00e4 instead
    exp += 1;
    mant = (x / 10 ** exp).toFixed(2);
  }
  return `${mant}e${exp}`;
}

function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  // 1000-1023 of a unit would print as "1.00e+3 KiB" at three significant figures: go up one
  while (i < units.length - 1 && (n >= 1024 || (i > 0 && Number(n.toPrecision(3)) >= 1000))) {
    n /= 1024;
    i += 1;
  }
  return i === 0 ? `${n.toFixed(0)} B` : `${n.toPrecision(3)} ${units[i]}`;
}

function el(tag, attrs = {}, parent = null, ns = null) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// One log-log panel: series = [{key, cls}], drawn over lengths 2^lo .. 2^hi. Vertical ticks sit at
// powers of tickBase (10 for counts, 1024 for bytes, so that they read 1 KiB, 1 MiB, 1 GiB...).
function panel(parent, title, series, unitFormat, tickBase) {
  const W = 300, H = 210, m = { l: 52, r: 10, t: 22, b: 30 };
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "ab-cost-panel", role: "img" }, parent, SVG);
  el("text", { x: m.l, y: 14, class: "ab-cost-title" }, svg, SVG).textContent = title;
  const plot = el("g", {}, svg, SVG);
  return {
    draw(state) {
      plot.replaceChildren();
      const { lo, hi, L, d, b } = state;
      const xs = [];
      for (let e = lo; e <= hi + 1e-9; e += 0.25) xs.push(2 ** e);
      const values = series.map((s) => xs.map((x) => costs(x, d, b)[s.key]));
      const all = values.flat();
      const ymin = Math.log10(Math.min(...all)), ymax = Math.log10(Math.max(...all));
      const X = (x) => m.l + ((Math.log2(x) - lo) / (hi - lo)) * (W - m.l - m.r);
      const Y = (y) => H - m.b - ((Math.log10(y) - ymin) / (ymax - ymin || 1)) * (H - m.t - m.b);
      // axes and decade ticks
      el("line", { x1: m.l, y1: H - m.b, x2: W - m.r, y2: H - m.b, class: "ab-cost-axis" }, plot, SVG);
      el("line", { x1: m.l, y1: m.t, x2: m.l, y2: H - m.b, class: "ab-cost-axis" }, plot, SVG);
      const perDecade = Math.log10(tickBase);
      const tlo = Math.ceil(ymin / perDecade - 1e-9), thi = Math.floor(ymax / perDecade + 1e-9);
      const tstep = Math.max(1, Math.ceil((thi - tlo + 1) / 6));
      for (let e = tlo; e <= thi; e += tstep) {
        el("text", { x: m.l - 4, y: Y(tickBase ** e) + 3, class: "ab-cost-tick", "text-anchor": "end" }, plot, SVG)
          .textContent = unitFormat(tickBase ** e);
      }
      for (let e = lo; e <= hi; e += 2) {
        const label = e >= 20 ? `${2 ** (e - 20)}M` : e >= 10 ? `${2 ** (e - 10)}k` : `${2 ** e}`;
        el("text", { x: X(2 ** e), y: H - m.b + 13, class: "ab-cost-tick", "text-anchor": "middle" }, plot, SVG)
          .textContent = label;
      }
      el("text", { x: (W + m.l) / 2, y: H - 3, class: "ab-cost-tick", "text-anchor": "middle" }, plot, SVG)
        .textContent = "sequence length (tokens, log scale)";
      // curves, and where the slider is
      series.forEach((s, i) => {
        const pts = xs.map((x, j) => `${X(x).toFixed(1)},${Y(values[i][j]).toFixed(1)}`).join(" ");
        el("polyline", { points: pts, class: `ab-cost-line ${s.cls}` }, plot, SVG);
        const here = costs(L, d, b)[s.key];
        el("circle", { cx: X(L), cy: Y(here), r: 4, class: `ab-cost-dot ${s.cls}` }, plot, SVG);
      });
      el("line", { x1: X(L), y1: m.t, x2: X(L), y2: H - m.b, class: "ab-cost-marker" }, plot, SVG);
    },
  };
}

function render({ model, el: root }) {
  const box = el("div", { class: "ab-cost" }, root);
  const controls = el("div", { class: "ab-cost-controls" }, box);
  const label = el("label", {}, controls);
  label.textContent = "sequence length ";
  const slider = el("input", { type: "range", class: "ab-cost-slider", step: "0.25", "aria-label": "sequence length (log2)" }, label);
  const lengthText = el("span", { class: "ab-cost-length" }, controls);
  const dLabel = el("label", {}, controls);
  dLabel.textContent = " model width ";
  const dSelect = el("select", { class: "ab-cost-width", "aria-label": "model width" }, dLabel);
  for (const d of [64, 256, 512, 1024, 4096]) {
    el("option", { value: String(d) }, dSelect).textContent = String(d);
  }

  const charts = el("div", { class: "ab-cost-charts" }, box);
  const ops = panel(charts, "multiply-adds per layer", [
    { key: "attention_ops", cls: "ab-attention" },
    { key: "linear_ops", cls: "ab-linear" },
  ], formatCount, 10);
  const mem = panel(charts, "memory per layer", [
    { key: "attention_scores_bytes", cls: "ab-attention" },
    { key: "kv_cache_bytes", cls: "ab-cache" },
    { key: "linear_state_bytes", cls: "ab-linear" },
  ], formatBytes, 1024);
  const legend = el("div", { class: "ab-cost-legend" }, box);
  legend.innerHTML =
    '<span class="ab-key ab-attention"></span>full attention (scores materialised) ' +
    '<span class="ab-key ab-cache"></span>attention KV cache when decoding ' +
    '<span class="ab-key ab-linear"></span>linear-time mixer (d&times;d state)';
  const readout = el("div", { class: "ab-cost-readout", "aria-live": "polite" }, box);

  function update() {
    const lo = model.get("min_log2"), hi = model.get("max_log2");
    const L = model.get("length"), d = model.get("d_model"), b = model.get("bytes_per_value");
    slider.min = String(lo);
    slider.max = String(hi);
    slider.value = String(Math.log2(L));
    dSelect.value = String(d);
    lengthText.textContent = ` L = ${L.toLocaleString("en-US")} tokens`;
    const state = { lo, hi, L, d, b };
    ops.draw(state);
    mem.draw(state);
    const c = costs(L, d, b);
    const ratio = c.attention_ops / c.linear_ops;
    readout.innerHTML =
      `<div>attention: <b class="ab-val-attention-ops">${formatCount(c.attention_ops)}</b> multiply-adds, ` +
      `score matrix <b class="ab-val-scores">${formatBytes(c.attention_scores_bytes)}</b>, ` +
      `KV cache <b class="ab-val-cache">${formatBytes(c.kv_cache_bytes)}</b></div>` +
      `<div>linear-time mixer: <b class="ab-val-linear-ops">${formatCount(c.linear_ops)}</b> multiply-adds, ` +
      `state <b class="ab-val-state">${formatBytes(c.linear_state_bytes)}</b></div>` +
      `<div>attention does <b class="ab-val-ratio">${ratio >= 1 ? ratio.toPrecision(3) + "x more" : (1 / ratio).toPrecision(3) + "x less"}</b> ` +
      `work than the linear mixer at this length (they cross at L = d = ${d}).</div>`;
  }

  slider.addEventListener("input", () => {
    model.set("length", Math.round(2 ** Number(slider.value)));
    model.save_changes();
  });
  dSelect.addEventListener("change", () => {
    model.set("d_model", Number(dSelect.value));
    model.save_changes();
  });
  for (const name of ["length", "d_model", "bytes_per_value", "min_log2", "max_log2"]) {
    model.on(`change:${name}`, update);
  }
  update();
  return () => {
    for (const name of ["length", "d_model", "bytes_per_value", "min_log2", "max_log2"]) {
      model.off(`change:${name}`, update);
    }
  };
}

export default { render };
