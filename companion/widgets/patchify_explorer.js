// Patchify explorer: a vision transformer's image cut into p x p patches, read in raster order as a
// sequence of tokens, with the sequence length N and the attention cost N^2. Computed and drawn here,
// in the browser, from the widget's state (pixels, height, width, channels, patch sizes, patch size,
// CLS token), so the widget responds in JupyterLab, on Colab and in the static site (no kernel
// needed). The numbers are those of companion.widgets.patchify_explorer in Python
// (tests/test_patchify_explorer.py runs both).

// ---- pure functions: tests/test_patchify_explorer.py runs this block in Node (no DOM below this line) ----
const MAX_SIDE = 128;
const MAX_VALUES = 16384;
const MAX_PATCHES = 1024;
const DISPLAY_PX = 288;
const LABEL_MIN_PX = 24;
const CHANNELS = [1, 3];
const TIMES = "\u00d7";
const DASH = "\u2013";
const HINT = "Hover over a patch of the image or a tile of the sequence (or focus one and use the arrow keys) " +
  "to follow it into the sequence.";
const CLS_TEXT = "The CLS token (position 0) is not cut from the image: it is a learned vector put before the " +
  "patches, and the classifier reads its output.";

// [H / p, W / p]: the rows and columns of patches (p divides both).
function patchGrid(h, w, p) {
  return [h / p, w / p];
}

// N = (H / p)(W / p), plus 1 with a CLS token.
function sequenceLength(h, w, p, cls) {
  const [rows, cols] = patchGrid(h, w, p);
  return rows * cols + (cls ? 1 : 0);
}

// p * p * C: the numbers in one flattened patch.
function valuesPerToken(p, c) {
  return p * p * c;
}

// N^2: the attention scores of one head in one layer.
function attentionEntries(h, w, p, cls) {
  const n = sequenceLength(h, w, p, cls);
  return n * n;
}

// N(p)^2 / N(p_max)^2, p_max the largest patch size offered.
function attentionRatio(h, w, p, sizes, cls) {
  return attentionEntries(h, w, p, cls) / attentionEntries(h, w, Math.max(...sizes), cls);
}

// The raster index of the patch that holds pixel (y, x).
function patchIndex(h, w, p, y, x) {
  return Math.floor(y / p) * (w / p) + Math.floor(x / p);
}

// A patch's position in the token sequence: after the CLS token, one further.
function tokenPosition(index, cls) {
  return index + (cls ? 1 : 0);
}

// The tokens, (N, C * p * p): patches in raster order, each flattened as (c p1 p2) (nn.Conv2d's weight order).
function patchify(pixels, h, w, c, p) {
  const [rows, cols] = patchGrid(h, w, p);
  const tokens = [];
  for (let row = 0; row < rows; row++) {
    for (let col = 0; col < cols; col++) {
      const token = [];
      for (let ch = 0; ch < c; ch++) {
        for (let i = 0; i < p; i++) {
          for (let j = 0; j < p; j++) token.push(pixels[ch * h * w + (row * p + i) * w + col * p + j]);
        }
      }
      tokens.push(token);
    }
  }
  return tokens;
}

// A value in [0, 1] as a colour byte.
function toByte(v) {
  return Math.round(255 * v);
}

// Red, green and blue of pixel (y, x) as bytes (a grey value three times).
function pixelRGB(pixels, h, w, c, y, x) {
  const at = (ch) => toByte(pixels[ch * h * w + y * w + x]);
  return c === 1 ? [at(0), at(0), at(0)] : [at(0), at(1), at(2)];
}

// The colours of patch `index`, p * p * 3 bytes, row by row.
function patchBytes(pixels, h, w, c, p, index) {
  const cols = w / p, row = Math.floor(index / cols), col = index % cols;
  const out = [];
  for (let i = 0; i < p; i++) {
    for (let j = 0; j < p; j++) out.push(...pixelRGB(pixels, h, w, c, row * p + i, col * p + j));
  }
  return out;
}

// Screen pixels per image pixel.
function displayScale(h, w) {
  return Math.max(1, Math.floor(DISPLAY_PX / Math.max(h, w)));
}

// Whether the token numbers are written on the image.
function labelsShown(h, w, p) {
  return p * displayScale(h, w) >= LABEL_MIN_PX;
}

// Where v lies between lo and hi on a logarithmic axis, 0 to 1 (0.5 when lo === hi).
function logPosition(v, lo, hi) {
  if (lo === hi) return 0.5;
  return (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo));
}

// An integer with its thousands separated by commas.
function formatCount(n) {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

// A ratio: 3 significant digits below 999.5, else a rounded integer with commas.
function formatRatio(r) {
  if (r < 999.5) return String(Number(r.toPrecision(3)));
  return formatCount(Math.round(r));
}

// The readout's texts (readout in Python).
function readout(h, w, c, p, cls, sizes) {
  const [rows, cols] = patchGrid(h, w, p);
  const n = rows * cols;
  const length = sequenceLength(h, w, p, cls);
  const v = valuesPerToken(p, c);
  const largest = Math.max(...sizes);
  const least = attentionEntries(h, w, largest, cls);
  const ratio = p === largest ? "1\u00d7 (the largest patch size offered)"
    : `${formatRatio(attentionRatio(h, w, p, sizes, cls))}${TIMES} the ${formatCount(least)} ` +
      `score${least === 1 ? "" : "s"} at p = ${largest}`;
  return {
    grid: `${rows} ${TIMES} ${cols} patches of ${p} ${TIMES} ${p} pixels`,
    tokens: cls ? `${formatCount(n)} + 1 CLS = ${formatCount(length)}` : formatCount(n),
    values: `${p} ${TIMES} ${p} ${TIMES} ${c} = ${formatCount(v)}`,
    total: `${formatCount(n)} ${TIMES} ${formatCount(v)} = ${formatCount(h * w * c)}`,
    scores: `${formatCount(length * length)} per head per layer`,
    ratio,
  };
}

// The line about one patch (patch_text in Python): index -1 is the CLS token, null none.
function patchText(h, w, c, p, cls, index) {
  if (index === null || index === undefined) return HINT;
  if (index === -1) return CLS_TEXT;
  const cols = w / p, row = Math.floor(index / cols), col = index % cols;
  const y = row * p, x = col * p;
  const where = p === 1 ? `pixel y ${y}, x ${x}` : `pixels y ${y}${DASH}${y + p - 1}, x ${x}${DASH}${x + p - 1}`;
  const length = sequenceLength(h, w, p, cls);
  return `Patch ${index} (row ${row}, column ${col}; ${where}) is token ${tokenPosition(index, cls)} of the ` +
    `sequence (positions 0 to ${length - 1}): ${p} ${TIMES} ${p} ${TIMES} ${c} = ${formatCount(valuesPerToken(p, c))} values.`;
}

// Whether the state can be drawn: a change from Python may arrive one trait at a time.
function consistentState(pixels, h, w, c, sizes, p, cls) {
  const side = (n) => Number.isInteger(n) && n >= 1 && n <= MAX_SIDE;
  if (!side(h) || !side(w) || !CHANNELS.includes(c) || c * h * w > MAX_VALUES) return false;
  if (!Array.isArray(pixels) || pixels.length !== c * h * w) return false;
  if (!pixels.every((v) => typeof v === "number" && v >= 0 && v <= 1)) return false;
  if (!Array.isArray(sizes) || sizes.length < 1) return false;
  const tiles = (q) => Number.isInteger(q) && q >= 1 && h % q === 0 && w % q === 0 && (h / q) * (w / q) <= MAX_PATCHES;
  if (!sizes.every(tiles)) return false;
  return sizes.includes(p) && typeof cls === "boolean";
}
// ---- end of pure functions ----

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, parent = null, ns = null) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// The chart's layout.
const CW = 330, CH = 180, CL = 40, CR = 12, CT = 10, CB = 34;
const POWERS = ["1", "10", "100", "1k", "10k", "100k", "1M", "10M", "100M"];
const READOUT = [
  ["grid", "Grid"],
  ["tokens", "Tokens N"],
  ["values", "Values per token"],
  ["total", "Values in all"],
  ["scores", "Attention scores N\u00b2"],
  ["ratio", "Scores vs. the largest patch"],
];

function render({ model, el: root }) {
  const box = el("div", { class: "ab-patch" }, root);
  const controls = el("div", { class: "ab-patch-controls" }, box);
  const sizeGroup = el("div", { class: "ab-patch-sizes", role: "group", "aria-label": "patch size p, in pixels per side" },
    controls);
  el("span", { class: "ab-patch-label" }, sizeGroup).textContent = "patch size p ";
  const clsLabel = el("label", { class: "ab-patch-control" }, controls);
  const clsBox = el("input", { type: "checkbox", class: "ab-patch-cls" }, clsLabel);
  clsLabel.append(" a CLS token before the patches");

  const about = el("div", { class: "ab-patch-about" }, box);
  about.textContent = "A vision transformer cuts the image into p \u00d7 p patches and reads them in raster order " +
    "(left to right, top to bottom) as a sequence of N tokens, each the p\u00b7p\u00b7C values of its patch. " +
    "Smaller patches: more, smaller tokens; and attention compares every token with every other, N\u00b2 scores.";

  const main = el("div", { class: "ab-patch-main" }, box);
  const imageBox = el("div", { class: "ab-patch-image", tabindex: "0", role: "application",
    "aria-roledescription": "patch grid",
    "aria-label": "the image cut into patches: the arrow keys move from patch to patch" }, main);
  const pixelCanvas = el("canvas", { class: "ab-patch-pixels" }, imageBox);
  const overlay = el("canvas", { class: "ab-patch-overlay", "aria-hidden": "true" }, imageBox);
  const side = el("div", { class: "ab-patch-side" }, main);
  const table = el("dl", { class: "ab-patch-readout", "aria-live": "polite" }, side);
  const values = {};
  for (const [key, label] of READOUT) {
    el("dt", {}, table).textContent = label;
    values[key] = el("dd", { class: `ab-patch-val-${key}` }, table);
  }
  el("div", { class: "ab-patch-title" }, side).textContent = "N and N\u00b2 against the patch size (log axes)";
  const chart = el("svg", { class: "ab-patch-chart", role: "img", viewBox: `0 0 ${CW} ${CH}`,
    "aria-label": "the sequence length N and the attention scores N squared for every patch size" }, side, SVG);
  const legend = el("div", { class: "ab-patch-legend" }, side);
  legend.innerHTML = '<span class="ab-patch-key ab-patch-key-n"></span>N tokens ' +
    '<span class="ab-patch-key ab-patch-key-scores"></span>N\u00b2 scores per head per layer';

  const stripTitle = el("div", { class: "ab-patch-title" }, box);
  const strip = el("div", { class: "ab-patch-strip", role: "list", "aria-label": "the token sequence" }, box);
  const detail = el("div", { class: "ab-patch-detail", "aria-live": "polite" }, box);
  const vectorBox = el("div", { class: "ab-patch-vector-box" }, box);
  const vectorTitle = el("div", { class: "ab-patch-title" }, vectorBox);
  const vector = el("canvas", { class: "ab-patch-vector", height: "1" }, vectorBox);

  let focus = null;  // the hovered or focused patch: its raster index, -1 the CLS token (a view of the reader's own)
  let cursor = 0;  // the image's keyboard position (back to the first patch when the grid changes)
  let cursorFor = null;  // the grid (size and patch size) the cursor is for
  let hovered = null;  // the patch under the pointer on the image
  let tiles = [];
  let tilesFor = null;  // what the tiles were built for
  let pixelsFor = null;  // what the image was drawn from

  const state = () => ({
    pixels: model.get("pixels"), h: model.get("height"), w: model.get("width"), c: model.get("channels"),
    sizes: model.get("patch_sizes"), p: model.get("patch_size"), cls: model.get("cls_token"),
  });

  function save(changes) {
    for (const [name, value] of Object.entries(changes)) model.set(name, value);
    model.save_changes();
  }

  // The patch that the keyboard is on (a tile's, or the image's cursor), or null.
  function keyboardFocus() {
    const tile = tiles.indexOf(document.activeElement);
    if (tile >= 0) return Number(tiles[tile].dataset.index);
    return document.activeElement === imageBox ? cursor : null;
  }

  function setFocus(index) {
    if (index === focus) return;
    focus = index;
    draw();
  }

  function drawPixels(s) {
    const scale = displayScale(s.h, s.w);
    const source = document.createElement("canvas");
    source.width = s.w;
    source.height = s.h;
    const sctx = source.getContext("2d");
    const data = sctx.createImageData(s.w, s.h);
    for (let y = 0; y < s.h; y++) {
      for (let x = 0; x < s.w; x++) {
        const [r, g, b] = pixelRGB(s.pixels, s.h, s.w, s.c, y, x), at = 4 * (y * s.w + x);
        data.data[at] = r;
        data.data[at + 1] = g;
        data.data[at + 2] = b;
        data.data[at + 3] = 255;
      }
    }
    sctx.putImageData(data, 0, 0);
    for (const canvas of [pixelCanvas, overlay]) {
      canvas.width = s.w * scale;
      canvas.height = s.h * scale;
    }
    pixelCanvas.dataset.scale = String(scale);
    const ctx = pixelCanvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(source, 0, 0, s.w * scale, s.h * scale);
  }

  function drawOverlay(s) {
    const scale = displayScale(s.h, s.w), cell = s.p * scale;
    const [rows, cols] = patchGrid(s.h, s.w, s.p);
    const ctx = overlay.getContext("2d"), W = overlay.width, H = overlay.height;
    ctx.clearRect(0, 0, W, H);
    if (focus !== null && focus >= 0) {  // dim the other patches
      const x = (focus % cols) * cell, y = Math.floor(focus / cols) * cell;
      ctx.fillStyle = "rgba(0, 0, 0, 0.5)";
      ctx.fillRect(0, 0, W, H);
      ctx.clearRect(x, y, cell, cell);
    }
    for (const [color, width] of [["rgba(0, 0, 0, 0.35)", 3], ["rgba(255, 255, 255, 0.9)", 1]]) {
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.beginPath();
      for (let k = 0; k <= cols; k++) {
        const x = Math.min(Math.max(k * cell, 0.5), W - 0.5);
        ctx.moveTo(x, 0);
        ctx.lineTo(x, H);
      }
      for (let k = 0; k <= rows; k++) {
        const y = Math.min(Math.max(k * cell, 0.5), H - 0.5);
        ctx.moveTo(0, y);
        ctx.lineTo(W, y);
      }
      ctx.stroke();
    }
    const labels = labelsShown(s.h, s.w, s.p);
    if (labels) {
      const size = Math.min(12, Math.floor(cell * 0.4));
      ctx.font = `${size}px system-ui, sans-serif`;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(0, 0, 0, 0.75)";
      ctx.fillStyle = "#fff";
      for (let k = 0; k < rows * cols; k++) {
        const text = String(tokenPosition(k, s.cls));
        const x = (k % cols + 0.5) * cell, y = (Math.floor(k / cols) + 0.5) * cell;
        ctx.strokeText(text, x, y);
        ctx.fillText(text, x, y);
      }
    }
    if (focus !== null && focus >= 0) {
      const x = (focus % cols) * cell, y = Math.floor(focus / cols) * cell;
      ctx.strokeStyle = "#E69F00";
      ctx.lineWidth = 3;
      ctx.strokeRect(x + 1.5, y + 1.5, cell - 3, cell - 3);
    }
    Object.assign(overlay.dataset, { rows: String(rows), cols: String(cols), labels: String(labels),
      focus: focus === null ? "" : String(focus) });
    imageBox.dataset.focus = focus === null ? "" : String(focus);
  }

  function buildTiles(s) {
    strip.replaceChildren();
    const [rows, cols] = patchGrid(s.h, s.w, s.p);
    const indices = [...(s.cls ? [-1] : []), ...Array.from({ length: rows * cols }, (_, k) => k)];
    tiles = indices.map((index, position) => {
      const tile = el("div", { class: "ab-patch-tile", role: "listitem", tabindex: position === 0 ? "0" : "-1",
        "data-index": String(index), "data-position": String(position) }, strip);
      if (index === -1) {
        tile.classList.add("ab-patch-tile-cls");
        el("span", { class: "ab-patch-tile-pixels ab-patch-tile-blank" }, tile).textContent = "CLS";
      } else {
        const canvas = el("canvas", { class: "ab-patch-tile-pixels", width: String(s.p), height: String(s.p) }, tile);
        const ctx = canvas.getContext("2d"), data = ctx.createImageData(s.p, s.p);
        const bytes = patchBytes(s.pixels, s.h, s.w, s.c, s.p, index);
        for (let k = 0; k < s.p * s.p; k++) {
          data.data.set([bytes[3 * k], bytes[3 * k + 1], bytes[3 * k + 2], 255], 4 * k);
        }
        ctx.putImageData(data, 0, 0);
      }
      el("span", { class: "ab-patch-tile-label" }, tile).textContent = String(position);
      tile.title = patchText(s.h, s.w, s.c, s.p, s.cls, index);
      tile.addEventListener("mouseenter", () => setFocus(index));
      tile.addEventListener("mouseleave", () => setFocus(keyboardFocus()));
      tile.addEventListener("focus", () => {
        for (const t of tiles) t.tabIndex = t === tile ? 0 : -1;  // the strip is one stop of the Tab key
        setFocus(index);
      });
      tile.addEventListener("blur", () => setFocus(null));
      tile.addEventListener("keydown", (event) => {
        const to = { ArrowLeft: position - 1, ArrowRight: position + 1, Home: 0, End: tiles.length - 1 }[event.key];
        if (to !== undefined && to >= 0 && to < tiles.length) {
          event.preventDefault();
          tiles[to].focus();
        }
      });
      return tile;
    });
    tilesFor = { pixels: s.pixels, h: s.h, w: s.w, c: s.c, p: s.p, cls: s.cls };
  }

  // The patch under the pointer, from the event's position on the drawn (possibly shrunk) image.
  function patchAt(event) {
    const s = state(), rect = pixelCanvas.getBoundingClientRect();
    const x = Math.floor((event.clientX - rect.left) / rect.width * s.w);
    const y = Math.floor((event.clientY - rect.top) / rect.height * s.h);
    if (x < 0 || y < 0 || x >= s.w || y >= s.h) return null;
    return patchIndex(s.h, s.w, s.p, y, x);
  }

  imageBox.addEventListener("mousemove", (event) => {
    hovered = patchAt(event);
    setFocus(hovered !== null ? hovered : keyboardFocus());
  });
  imageBox.addEventListener("mouseleave", () => {
    hovered = null;
    setFocus(keyboardFocus());
  });
  imageBox.addEventListener("mousedown", (event) => {  // a click puts the keyboard's cursor there
    const index = patchAt(event);
    if (index !== null) cursor = index;
  });
  imageBox.addEventListener("focus", () => setFocus(hovered !== null ? hovered : cursor));
  imageBox.addEventListener("blur", () => setFocus(hovered));
  imageBox.addEventListener("keydown", (event) => {
    const s = state();
    const [rows, cols] = patchGrid(s.h, s.w, s.p);
    const row = Math.floor(cursor / cols), col = cursor % cols;
    const to = { ArrowLeft: col > 0 ? cursor - 1 : null, ArrowRight: col < cols - 1 ? cursor + 1 : null,
      ArrowUp: row > 0 ? cursor - cols : null, ArrowDown: row < rows - 1 ? cursor + cols : null,
      Home: 0, End: rows * cols - 1 }[event.key];
    if (to === undefined) return;
    event.preventDefault();
    if (to === null) return;
    cursor = to;
    hovered = null;
    setFocus(cursor);
  });
  clsBox.addEventListener("change", () => save({ cls_token: clsBox.checked }));

  function drawSizes(s) {
    const buttons = [...sizeGroup.querySelectorAll(".ab-patch-size")];
    if (buttons.length !== s.sizes.length || buttons.some((b, i) => Number(b.dataset.size) !== s.sizes[i])) {
      buttons.forEach((b) => b.remove());
      for (const p of s.sizes) {
        const button = el("button", { type: "button", class: "ab-patch-size", "data-size": String(p) }, sizeGroup);
        button.textContent = String(p);
        button.addEventListener("click", () => save({ patch_size: p }));
      }
    }
    for (const button of sizeGroup.querySelectorAll(".ab-patch-size")) {
      const p = Number(button.dataset.size);
      button.setAttribute("aria-pressed", String(p === s.p));
      const [rows, cols] = patchGrid(s.h, s.w, p);
      button.title = `p = ${p}: ${rows} ${TIMES} ${cols} = ${formatCount(rows * cols)} patches`;
    }
  }

  function drawChart(s) {
    chart.replaceChildren();
    const lo = s.sizes[0], hi = s.sizes[s.sizes.length - 1];
    const points = s.sizes.map((p) => ({ p, n: sequenceLength(s.h, s.w, p, s.cls), e: attentionEntries(s.h, s.w, p, s.cls) }));
    const decades = Math.max(1, Math.ceil(Math.log10(Math.max(...points.map((q) => q.e)))));
    const X = (p) => CL + logPosition(p, lo, hi) * (CW - CL - CR);
    const Y = (v) => CT + (1 - Math.log10(v) / decades) * (CH - CT - CB);
    const step = decades > 6 ? 2 : 1;
    for (let k = 0; k <= decades; k += step) {
      el("line", { x1: CL, y1: Y(10 ** k), x2: CW - CR, y2: Y(10 ** k), class: "ab-patch-grid" }, chart, SVG);
      el("text", { x: CL - 4, y: Y(10 ** k) + 3, class: "ab-patch-tick", "text-anchor": "end" }, chart, SVG)
        .textContent = POWERS[k] || `1e${k}`;
    }
    el("line", { x1: CL, y1: CH - CB, x2: CW - CR, y2: CH - CB, class: "ab-patch-axis" }, chart, SVG);
    el("line", { x1: X(s.p), y1: CT, x2: X(s.p), y2: CH - CB, class: "ab-patch-current" }, chart, SVG);
    // the patch sizes under the axis: the chosen one, then the others that have room
    const placed = [];
    for (const p of [s.p, ...s.sizes.filter((q) => q !== s.p)]) {
      if (placed.some((q) => Math.abs(X(q) - X(p)) < 14)) continue;
      placed.push(p);
      el("text", { x: X(p), y: CH - CB + 12, class: `ab-patch-tick${p === s.p ? " ab-patch-tick-current" : ""}`,
        "text-anchor": "middle" }, chart, SVG).textContent = String(p);
    }
    el("text", { x: (CL + CW - CR) / 2, y: CH - 4, class: "ab-patch-tick", "text-anchor": "middle" }, chart, SVG)
      .textContent = "patch size p (pixels per side)";
    for (const [key, cls] of [["n", "ab-patch-line-n"], ["e", "ab-patch-line-scores"]]) {
      el("polyline", { points: points.map((q) => `${X(q.p).toFixed(1)},${Y(q[key]).toFixed(1)}`).join(" "), class: cls },
        chart, SVG);
    }
    for (const q of points) {
      const current = q.p === s.p ? " ab-patch-point-current" : "";
      const n = el("circle", { cx: X(q.p).toFixed(1), cy: Y(q.n).toFixed(1), r: current ? 4.5 : 3,
        class: `ab-patch-point-n${current}`, "data-size": String(q.p), "data-value": String(q.n) }, chart, SVG);
      el("title", {}, n, SVG).textContent = `p = ${q.p}: N = ${formatCount(q.n)}`;
      const half = current ? 4.5 : 3;
      const e = el("rect", { x: (X(q.p) - half).toFixed(1), y: (Y(q.e) - half).toFixed(1), width: 2 * half,
        height: 2 * half, class: `ab-patch-point-scores${current}`, "data-size": String(q.p), "data-value": String(q.e) },
      chart, SVG);
      el("title", {}, e, SVG).textContent = `p = ${q.p}: N\u00b2 = ${formatCount(q.e)}`;
    }
  }

  function drawVector(s) {
    if (focus === null || focus < 0) {
      vectorBox.hidden = true;
      vector.dataset.index = "";
      return;
    }
    vectorBox.hidden = false;
    const token = patchify(s.pixels, s.h, s.w, s.c, s.p)[focus];
    vectorTitle.textContent = `Token ${tokenPosition(focus, s.cls)} as the transformer reads it: ` +
      `${formatCount(token.length)} numbers (${s.c === 3 ? "the red, then the green, then the blue channel, each " : ""}` +
      "row by row), drawn as greys";
    vector.width = token.length;
    const ctx = vector.getContext("2d"), data = ctx.createImageData(token.length, 1);
    token.forEach((v, k) => data.data.set([toByte(v), toByte(v), toByte(v), 255], 4 * k));
    ctx.putImageData(data, 0, 0);
    vector.dataset.index = String(focus);
  }

  function draw() {
    const s = state();
    if (!consistentState(s.pixels, s.h, s.w, s.c, s.sizes, s.p, s.cls)) return;  // more is on its way
    const [rows, cols] = patchGrid(s.h, s.w, s.p), n = rows * cols;
    const grid = `${s.h}x${s.w}/${s.p}`, regridded = grid !== cursorFor;
    if (regridded) {  // the patches are others now: the cursor back to the first, the pointer's patch unknown
      cursor = 0;
      hovered = null;
      cursorFor = grid;
    }
    const image = { pixels: s.pixels, h: s.h, w: s.w, c: s.c };
    if (pixelsFor === null || Object.keys(image).some((k) => image[k] !== pixelsFor[k])) {
      drawPixels(s);
      pixelsFor = image;
    }
    if (tilesFor === null || Object.keys(tilesFor).some((k) => tilesFor[k] !== s[k])) {
      const active = tiles.find((t) => t === document.activeElement);
      buildTiles(s);
      if (active) {  // the focused tile was replaced: the keyboard goes on from its patch's new tile
        const same = tiles.find((t) => t.dataset.index === active.dataset.index);
        (same || imageBox).focus();
      }
    }
    if (regridded || (focus !== null && (focus >= n || (focus === -1 && !s.cls)))) focus = keyboardFocus();

    drawSizes(s);
    clsBox.checked = s.cls;
    const texts = readout(s.h, s.w, s.c, s.p, s.cls, s.sizes);
    for (const [key] of READOUT) values[key].textContent = texts[key];
    table.dataset.length = String(sequenceLength(s.h, s.w, s.p, s.cls));
    stripTitle.textContent = `The token sequence: ${formatCount(sequenceLength(s.h, s.w, s.p, s.cls))} tokens` +
      `${s.cls ? " (CLS first)" : ""}, the patches in raster order (left to right, top to bottom)`;
    drawOverlay(s);
    for (const tile of tiles) tile.classList.toggle("ab-patch-focus", Number(tile.dataset.index) === focus);
    detail.textContent = patchText(s.h, s.w, s.c, s.p, s.cls, focus);
    detail.dataset.patch = focus === null ? "" : String(focus);
    drawChart(s);
    drawVector(s);
  }

  const names = ["pixels", "height", "width", "channels", "patch_sizes", "patch_size", "cls_token"];
  for (const name of names) model.on(`change:${name}`, draw);
  draw();
  return () => {
    for (const name of names) model.off(`change:${name}`, draw);
  };
}

export default { render };
