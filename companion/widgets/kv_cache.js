// KV-cache calculator: everything is computed and drawn here, in the browser, from the widget's
// state, so the widget responds in JupyterLab, on Colab and in the static site (no kernel needed).
// The formulas are the same as companion.widgets.kv_cache in Python (kv_cache_bytes, ...).

// ---- pure functions: tests/test_widgets.py runs this block in Node (no DOM below this line) ----
const GIB = 2 ** 30;
const WEIGHT_BYTES = 2;  // bytes per parameter of the weights, when they are counted (bfloat16)
const DTYPE_BYTES = [4, 2, 1];
const DTYPES = { 4: "float32", 2: "bfloat16 / float16", 1: "float8 / int8" };
const CUSTOM = "custom";

// 2 (K and V) x layers x kvHeads x headDim x bytesPerElement: one token of one sequence.
function kvBytesPerToken(layers, kvHeads, headDim, bytesPerElement) {
  return 2 * layers * kvHeads * headDim * bytesPerElement;
}

// The whole cache: kvBytesPerToken x context x batch.
function kvCacheBytes(layers, kvHeads, headDim, context, bytesPerElement, batch) {
  return kvBytesPerToken(layers, kvHeads, headDim, bytesPerElement) * context * batch;
}

function weightBytes(parameters) {
  return parameters * WEIGHT_BYTES;
}

// The longest context per sequence whose cache fits beside the weights: floor(free / per token).
function tokensThatFit(memoryGib, layers, kvHeads, headDim, bytesPerElement, batch, parameters) {
  const free = memoryGib * GIB - weightBytes(parameters);
  return Math.max(0, Math.floor(free / (kvBytesPerToken(layers, kvHeads, headDim, bytesPerElement) * batch)));
}

// Whether kvHeads key/value heads can serve heads query heads (each serves heads / kvHeads).
function validHeads(heads, kvHeads) {
  return kvHeads <= heads && heads % kvHeads === 0;
}

function attentionKind(heads, kvHeads) {
  if (!validHeads(heads, kvHeads)) throw new Error(`kv_heads ${kvHeads} does not divide heads ${heads}`);
  if (kvHeads === heads) return "multi-head";
  return kvHeads === 1 ? "multi-query" : "grouped-query";
}

// Bytes with binary units at three significant figures (as sequence_cost.js).
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

// The context slider is logarithmic: value v means context 2^v (step 1: powers of two).
function contextFromSlider(value) {
  return Math.round(2 ** value);
}
// ---- end of pure functions ----

const MAX_CONTEXT = 2 ** 24;
const MAX_BATCH = 1024;
const MAX_SIZE = 4096;
const KIND_TEXT = {
  "multi-head": "multi-head attention: every query head has its own key and value head",
  "grouped-query": "grouped-query attention",
  "multi-query": "multi-query attention: one key and value head for all the query heads",
};

function el(tag, attrs = {}, parent = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function numberInput(parent, label, cls, min, max) {
  const wrap = el("label", { class: "ab-kv-control" }, parent);
  wrap.append(`${label} `);
  return el("input", { type: "number", class: cls, min: String(min), max: String(max), step: "1",
    "aria-label": label }, wrap);
}

const tokens = (n) => n.toLocaleString("en-US");

function render({ model, el: root }) {
  const box = el("div", { class: "ab-kv" }, root);

  const top = el("div", { class: "ab-kv-controls" }, box);
  const modelLabel = el("label", { class: "ab-kv-control" }, top);
  modelLabel.append("model ");
  const modelSelect = el("select", { class: "ab-kv-model", "aria-label": "model" }, modelLabel);
  const dtypeLabel = el("label", { class: "ab-kv-control" }, top);
  dtypeLabel.append("cache data type ");
  const dtypeSelect = el("select", { class: "ab-kv-dtype", "aria-label": "cache data type" }, dtypeLabel);
  for (const b of DTYPE_BYTES) {
    el("option", { value: String(b) }, dtypeSelect).textContent = `${DTYPES[b]} (${b} byte${b > 1 ? "s" : ""})`;
  }
  const batchInput = numberInput(top, "batch", "ab-kv-batch", 1, MAX_BATCH);
  const weightsLabel = el("label", { class: "ab-kv-control ab-kv-weights-label" }, top);
  const weightsBox = el("input", { type: "checkbox", class: "ab-kv-count-weights",
    "aria-label": "count the weights" }, weightsLabel);
  weightsLabel.append(" count the weights (bfloat16)");

  const config = el("div", { class: "ab-kv-controls ab-kv-config" }, box);
  const inputs = {
    layers: numberInput(config, "layers", "ab-kv-layers", 1, MAX_SIZE),
    heads: numberInput(config, "heads", "ab-kv-heads", 1, MAX_SIZE),
    kv_heads: numberInput(config, "KV heads", "ab-kv-kv-heads", 1, MAX_SIZE),
    head_dim: numberInput(config, "head dim", "ab-kv-head-dim", 1, MAX_SIZE),
  };

  const contextRow = el("div", { class: "ab-kv-controls" }, box);
  const contextLabel = el("label", { class: "ab-kv-control" }, contextRow);
  contextLabel.append("context ");
  const slider = el("input", { type: "range", class: "ab-kv-context", min: "8", step: "1",
    "aria-label": "context length (log2)" }, contextLabel);
  const contextInput = el("input", { type: "number", class: "ab-kv-context-input", min: "1",
    max: String(MAX_CONTEXT), step: "1", "aria-label": "context length" }, contextLabel);
  contextLabel.append(" tokens");

  const warning = el("div", { class: "ab-kv-warning", role: "alert" }, box);
  const readout = el("div", { class: "ab-kv-readout", "aria-live": "polite" }, box);

  const gpuTable = el("table", { class: "ab-kv-gpus" }, box);
  el("caption", {}, gpuTable).textContent = "On one GPU";
  const gpuHead = el("tr", {}, el("thead", {}, gpuTable));
  for (const text of ["memory", "e.g.", "weights + cache", "", "longest context that fits"]) {
    el("th", {}, gpuHead).textContent = text;
  }
  const gpuBody = el("tbody", {}, gpuTable);

  const modelTable = el("table", { class: "ab-kv-models" }, box);
  el("caption", {}, modelTable).textContent = "Published models at this context, data type and batch";
  const modelHead = el("tr", {}, el("thead", {}, modelTable));
  for (const text of ["model", "layers", "heads", "KV heads", "head dim", "trained context", "per token", "cache",
    "weights"]) {
    el("th", {}, modelHead).textContent = text;
  }
  const modelBody = el("tbody", {}, modelTable);

  const presets = () => model.get("models");
  const preset = (name) => presets().find((m) => m.name === name);

  // Several traits change together (a model's numbers): each model.set fires its change event at
  // once, so drawing waits until all are set (a half-changed state may not even be valid).
  let saving = false;
  function save(changes) {
    saving = true;
    try {
      for (const [name, value] of Object.entries(changes)) model.set(name, value);
    } finally {
      saving = false;
    }
    model.save_changes();
    draw();
  }

  function draw() {
    if (saving) return;
    const s = {
      model: model.get("model"), layers: model.get("layers"), heads: model.get("heads"),
      kvHeads: model.get("kv_heads"), headDim: model.get("head_dim"), parameters: model.get("parameters"),
      bytes: model.get("bytes_per_element"), context: model.get("context"), batch: model.get("batch"),
      countWeights: model.get("count_weights"), gpus: model.get("gpus"),
    };
    // controls
    modelSelect.replaceChildren();
    el("option", { value: CUSTOM }, modelSelect).textContent = CUSTOM;
    for (const m of presets()) el("option", { value: m.name }, modelSelect).textContent = m.name;
    modelSelect.value = s.model;
    dtypeSelect.value = String(s.bytes);
    batchInput.value = String(s.batch);
    inputs.layers.value = String(s.layers);
    inputs.heads.value = String(s.heads);
    inputs.kv_heads.value = String(s.kvHeads);
    inputs.head_dim.value = String(s.headDim);
    slider.max = String(Math.max(21, Math.ceil(Math.log2(s.context))));
    slider.value = String(Math.log2(s.context));
    contextInput.value = String(s.context);
    const known = s.parameters > 0;
    weightsBox.checked = s.countWeights && known;
    weightsBox.disabled = !known;
    weightsLabel.classList.toggle("ab-kv-unused", !known);
    weightsLabel.title = known ? "" : "the parameter count of a custom configuration is unknown";
    const counted = s.countWeights && known ? s.parameters : 0;

    // readout
    const perToken = kvBytesPerToken(s.layers, s.kvHeads, s.headDim, s.bytes);
    const cache = kvCacheBytes(s.layers, s.kvHeads, s.headDim, s.context, s.bytes, s.batch);
    const kind = attentionKind(s.heads, s.kvHeads);
    readout.replaceChildren();
    const line1 = el("div", {}, readout);
    line1.append(`per token: 2 (K and V) \u00d7 ${s.layers} layers \u00d7 ${s.kvHeads} KV heads \u00d7 ` +
      `${s.headDim} \u00d7 ${s.bytes} byte${s.bytes > 1 ? "s" : ""} = `);
    el("b", { class: "ab-kv-val-per-token" }, line1).textContent = formatBytes(perToken);
    const line2 = el("div", {}, readout);
    line2.append(`the cache of ${tokens(s.context)} tokens \u00d7 batch ${s.batch}: `);
    el("b", { class: "ab-kv-val-cache" }, line2).textContent = formatBytes(cache);
    if (s.model !== CUSTOM || known) {
      line2.append(`; the weights${s.model !== CUSTOM ? ` of ${s.model}` : ""}: `);
      el("b", { class: "ab-kv-val-weights" }, line2).textContent = formatBytes(weightBytes(s.parameters));
      line2.append(counted ? "" : " (not counted below)");
    }
    const line3 = el("div", {}, readout);
    el("span", { class: "ab-kv-val-kind", "data-kind": kind }, line3).textContent = KIND_TEXT[kind];
    if (kind !== "multi-head") {
      line3.append(kind === "grouped-query" ? `: ${s.heads / s.kvHeads} query heads share each key and value head` : "");
      line3.append(`, so the cache is `);
      el("b", { class: "ab-kv-val-ratio" }, line3).textContent = `${s.heads / s.kvHeads}\u00d7`;
      line3.append(" smaller than with multi-head attention (");
      el("b", { class: "ab-kv-val-mha" }, line3).textContent =
        formatBytes(kvCacheBytes(s.layers, s.heads, s.headDim, s.context, s.bytes, s.batch));
      line3.append(")");
    }
    line3.append(".");

    // GPUs
    gpuBody.replaceChildren();
    for (const gpu of s.gpus) {
      const memory = gpu.gib * GIB;
      const weights = weightBytes(counted);
      const used = (100 * (weights + cache)) / memory;
      const fits = weights + cache <= memory;
      const row = el("tr", { class: `ab-kv-gpu ${fits ? "ab-kv-fits" : "ab-kv-over"}`, "data-gib": String(gpu.gib) },
        gpuBody);
      el("td", { class: "ab-kv-gib" }, row).textContent = `${gpu.gib} GiB`;
      el("td", { class: "ab-kv-gpu-label" }, row).textContent = gpu.label;
      el("td", { class: "ab-kv-used" }, row).textContent = `${used.toFixed(0)}%`;
      const bar = el("div", { class: "ab-kv-bar", title: `${formatBytes(weights)} weights + ${formatBytes(cache)} cache` },
        el("td", { class: "ab-kv-bar-cell" }, row));
      const wPct = Math.min(100, (100 * weights) / memory);
      el("span", { class: "ab-kv-bar-weights", style: `width: ${wPct.toFixed(2)}%` }, bar);
      el("span", { class: "ab-kv-bar-cache", style: `width: ${Math.min(100 - wPct, (100 * cache) / memory).toFixed(2)}%` }, bar);
      const n = tokensThatFit(gpu.gib, s.layers, s.kvHeads, s.headDim, s.bytes, s.batch, counted);
      const cell = el("td", { class: "ab-kv-fit" }, row);
      el("span", { class: "ab-kv-tokens", "data-tokens": String(n) }, cell).textContent = tokens(n);
      cell.append(weights >= memory ? " (the weights alone do not fit)"
        : ` token${n === 1 ? "" : "s"}${s.batch > 1 ? ` \u00d7 ${s.batch} sequences` : ""}`);
    }

    // published models
    modelBody.replaceChildren();
    for (const m of presets()) {
      const row = el("tr", { class: `ab-kv-model-row${m.name === s.model ? " ab-kv-chosen" : ""}`, "data-model": m.name,
        title: `use ${m.name}` }, modelBody);
      const cells = [
        ["ab-kv-model-name", m.name], ["ab-kv-model-layers", String(m.layers)], ["ab-kv-model-heads", String(m.heads)],
        ["ab-kv-model-kv-heads", String(m.kv_heads)], ["ab-kv-model-head-dim", String(m.head_dim)],
        ["ab-kv-model-context", tokens(m.context)],
        ["ab-kv-model-per-token", formatBytes(kvBytesPerToken(m.layers, m.kv_heads, m.head_dim, s.bytes))],
        ["ab-kv-model-cache", formatBytes(kvCacheBytes(m.layers, m.kv_heads, m.head_dim, s.context, s.bytes, s.batch))],
        ["ab-kv-model-weights", formatBytes(weightBytes(m.parameters))],
      ];
      for (const [cls, text] of cells) el("td", { class: cls }, row).textContent = text;
      row.addEventListener("click", () => choose(m.name));
    }
  }

  function choose(name) {
    warning.textContent = "";
    if (name === CUSTOM) {
      save({ model: CUSTOM });
      return;
    }
    const m = preset(name);
    save({ model: name, layers: m.layers, heads: m.heads, kv_heads: m.kv_heads, head_dim: m.head_dim,
      parameters: m.parameters });
  }

  // An edited number: refused (with a warning) unless it is a whole number in range and the heads
  // still divide; otherwise the configuration is no longer the model's, and its parameter count,
  // which belongs to that configuration, is dropped.
  function edit(name, input, low, high) {
    const value = Number(input.value);
    const next = { heads: model.get("heads"), kv_heads: model.get("kv_heads"), [name]: value };
    let problem = "";
    if (!Number.isInteger(value) || value < low || value > high) {
      problem = `${name.replace("_", " ")} must be a whole number from ${low} to ${high}`;
    } else if (!validHeads(next.heads, next.kv_heads)) {
      problem = `the KV heads must divide the heads (each serves heads / KV heads query heads): ` +
        `${next.heads} heads and ${next.kv_heads} KV heads do not`;
    }
    warning.textContent = problem;
    if (problem) {
      input.value = String(model.get(name));
      return;
    }
    const changes = { [name]: value };
    const m = preset(model.get("model"));
    if (m && ["layers", "heads", "kv_heads", "head_dim"].some((k) => (k === name ? value : model.get(k)) !== m[k])) {
      Object.assign(changes, { model: CUSTOM, parameters: 0 });
    } else if (!m && ["layers", "heads", "kv_heads", "head_dim"].includes(name) && value !== model.get(name)) {
      changes.parameters = 0;
    }
    save(changes);
  }

  modelSelect.addEventListener("change", () => choose(modelSelect.value));
  dtypeSelect.addEventListener("change", () => save({ bytes_per_element: Number(dtypeSelect.value) }));
  weightsBox.addEventListener("change", () => save({ count_weights: weightsBox.checked }));
  batchInput.addEventListener("change", () => edit("batch", batchInput, 1, MAX_BATCH));
  for (const [name, input] of Object.entries(inputs)) {
    input.addEventListener("change", () => edit(name, input, 1, MAX_SIZE));
  }
  slider.addEventListener("input", () => save({ context: contextFromSlider(Number(slider.value)) }));
  contextInput.addEventListener("change", () => edit("context", contextInput, 1, MAX_CONTEXT));

  const names = ["model", "layers", "heads", "kv_heads", "head_dim", "parameters", "bytes_per_element", "context",
    "batch", "count_weights", "models", "gpus"];
  for (const name of names) model.on(`change:${name}`, draw);
  draw();
  return () => {
    for (const name of names) model.off(`change:${name}`, draw);
  };
}

export default { render };
