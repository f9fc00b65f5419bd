// FlashAttention stepper: the online softmax of one query tile over the key/value tiles is computed
// and drawn here, in the browser, from the widget's state (q, k, v, the tile size, the mask, the
// step), so the widget responds in JupyterLab, on Colab and in the static site (no kernel needed).
// The steps are the same as companion.widgets.flash_stepper.online_softmax_steps in Python.

// ---- pure functions: tests/test_flash_stepper.py runs this block in Node (no DOM below this line) ----
const BLOCK_SIZES = [1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32];
const CHECK_TOLERANCE = 1e-12;
const MINUS = "\u2212";

// ceil(keys / blockK): the key/value tiles (the last one may be shorter).
function tileCount(keys, blockK) {
  return Math.ceil(keys / blockK);
}

// After the tiles change: the last step stays the last; another is kept if it still exists.
function stepAfterRetiling(step, oldTiles, newTiles) {
  return step === oldTiles ? newTiles : Math.min(step, newTiles);
}

// The tile sizes the menu offers: BLOCK_SIZES up to `keys`, and the current one.
function blockChoices(keys, blockK) {
  const sizes = BLOCK_SIZES.filter((b) => b <= keys);
  if (!sizes.includes(blockK)) sizes.push(blockK);
  return sizes.sort((a, b) => a - b);
}

// (q_i . k_j) * scale, summed left to right (as Python).
function score(qi, kj, scale) {
  let total = 0;
  for (let c = 0; c < qi.length; c++) total += qi[c] * kj[c];
  return total * scale;
}

// s[i][j], -Infinity where the causal mask hides key j from query i (at position queryStart + i).
function scoreMatrix(q, k, causal, queryStart) {
  const scale = 1 / Math.sqrt(q[0].length);
  return q.map((qi, i) => k.map((kj, j) => (!causal || j <= queryStart + i ? score(qi, kj, scale) : -Infinity)));
}

// softmax(s) V the ordinary way, a whole row at once; a row that sees no key is 0.
function softmaxAttention(q, k, v, causal, queryStart) {
  const d = v[0].length;
  return scoreMatrix(q, k, causal, queryStart).map((row) => {
    const m = Math.max(...row);
    if (m === -Infinity) return new Array(d).fill(0);
    const p = row.map((s) => Math.exp(s - m));
    let total = 0;
    for (const x of p) total += x;
    const acc = new Array(d).fill(0);
    p.forEach((pj, j) => { for (let c = 0; c < d; c++) acc[c] += pj * v[j][c]; });
    return acc.map((a) => a / total);
  });
}

// Every step of the online softmax, one per key/value tile (see online_softmax_steps in Python):
// m' = max(m, max_j s_j), c = exp(m - m'), l' = c l + sum_j exp(s_j - m'), o' = c o + sum_j exp(s_j - m') v_j.
function onlineSoftmaxSteps(q, k, v, blockK, causal, queryStart) {
  const rows = q.length, d = q[0].length, scale = 1 / Math.sqrt(d);
  const m = new Array(rows).fill(-Infinity), l = new Array(rows).fill(0);
  const o = q.map(() => new Array(d).fill(0));
  const steps = [];
  for (let t = 0; t < tileCount(k.length, blockK); t++) {
    const k0 = t * blockK, k1 = Math.min((t + 1) * blockK, k.length);
    const scores = q.map((qi, i) => {
      const row = [];
      for (let j = k0; j < k1; j++) row.push(!causal || j <= queryStart + i ? score(qi, k[j], scale) : -Infinity);
      return row;
    });
    const tileMax = scores.map((row) => Math.max(...row));
    const skipped = tileMax.every((x) => x === -Infinity);
    const mOld = m.slice();
    let rescale, p;
    if (skipped) {
      rescale = new Array(rows).fill(1);
      p = scores.map((row) => row.map(() => 0));
    } else {
      rescale = [];
      p = [];
      for (let i = 0; i < rows; i++) {
        const mNew = Math.max(m[i], tileMax[i]);
        const safe = mNew === -Infinity ? 0 : mNew;  // no key seen yet: exp(-inf - 0) = 0, not NaN
        const c = Math.exp(m[i] - safe);
        const pRow = scores[i].map((s) => Math.exp(s - safe));
        let total = 0;
        const acc = new Array(d).fill(0);
        pRow.forEach((pj, n) => {
          total += pj;
          for (let col = 0; col < d; col++) acc[col] += pj * v[k0 + n][col];
        });
        l[i] = c * l[i] + total;
        o[i] = o[i].map((x, col) => c * x + acc[col]);
        m[i] = mNew;
        rescale.push(c);
        p.push(pRow);
      }
    }
    const out = o.map((row, i) => (l[i] > 0 ? row.map((x) => x / l[i]) : new Array(d).fill(0)));
    steps.push({ tile: t, start: k0, stop: k1, skipped, scores, tile_max: tileMax, m_old: mOld, m: m.slice(),
      rescale, p, l: l.slice(), o: o.map((row) => row.slice()), out });
  }
  return steps;
}

// max |a - b| over two matrices of the same shape.
function maxAbsDifference(a, b) {
  let worst = 0;
  a.forEach((row, i) => row.forEach((x, j) => { worst = Math.max(worst, Math.abs(x - b[i][j])); }));
  return worst;
}

// Whether the state can be drawn: a change from Python may arrive one trait at a time.
function consistentState(q, k, v, blockK, queryStart) {
  const rect = (x) => Array.isArray(x) && x.length > 0 && x.every((r) => Array.isArray(r) && r.length === x[0].length);
  if (!rect(q) || !rect(k) || !rect(v) || q[0].length === 0) return false;
  const d = q[0].length;
  return k[0].length === d && v[0].length === d && v.length === k.length && q.length <= k.length &&
    Number.isInteger(blockK) && blockK >= 1 && blockK <= k.length &&
    Number.isInteger(queryStart) && queryStart >= 0 && queryStart <= k.length - q.length;
}

// x.toFixed(digits) with a minus sign, no "-0", and -Infinity as "-inf" (minus, infinity sign).
function formatValue(x, digits = 3) {
  if (x === -Infinity) return `${MINUS}\u221e`;
  const text = Math.abs(x).toFixed(digits);
  return x < 0 && /[1-9]/.test(text) ? MINUS + text : text;
}
// ---- end of pure functions ----

const ordinal = (n) => `${n}${n % 100 >= 11 && n % 100 <= 13 ? "th" : ["th", "st", "nd", "rd"][n % 10] || "th"}`;

function el(tag, attrs = {}, parent = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// A table cell showing `x`, with the exact number in data-value (String(x) round-trips a double).
function numberCell(row, cls, x, digits = 3, attrs = {}) {
  const cell = el("td", { class: cls, "data-value": String(x), ...attrs }, row);
  cell.textContent = formatValue(x, digits);
  return cell;
}

function render({ model, el: root }) {
  const box = el("div", { class: "ab-flash" }, root);
  const controls = el("div", { class: "ab-flash-controls" }, box);
  const first = el("button", { type: "button", class: "ab-flash-first", "aria-label": "back to the start" }, controls);
  first.textContent = "\u00ab start";
  const prev = el("button", { type: "button", class: "ab-flash-prev", "aria-label": "previous tile" }, controls);
  prev.textContent = "\u25c0 previous";
  const stepLabel = el("label", { class: "ab-flash-control" }, controls);
  stepLabel.append("tiles done ");
  const slider = el("input", { type: "range", class: "ab-flash-step", min: "0", step: "1",
    "aria-label": "tiles done" }, stepLabel);
  const stepValue = el("output", { class: "ab-flash-step-value" }, stepLabel);
  const next = el("button", { type: "button", class: "ab-flash-next", "aria-label": "next tile" }, controls);
  next.textContent = "next tile \u25b6";
  const last = el("button", { type: "button", class: "ab-flash-last", "aria-label": "to the last tile" }, controls);
  last.textContent = "end \u00bb";
  const blockLabel = el("label", { class: "ab-flash-control" }, controls);
  blockLabel.append("tile size ");
  const blockSelect = el("select", { class: "ab-flash-block", "aria-label": "tile size (keys per tile)" }, blockLabel);
  const causalLabel = el("label", { class: "ab-flash-control" }, controls);
  const causalBox = el("input", { type: "checkbox", class: "ab-flash-causal" }, causalLabel);
  causalLabel.append(" causal mask");

  const about = el("div", { class: "ab-flash-about" }, box);
  about.textContent = "Per query row, for each new tile of scores s: m\u2032 = max(m, max s), c = exp(m \u2212 m\u2032), " +
    "l\u2032 = c\u00b7l + \u03a3 exp(s \u2212 m\u2032), o\u2032 = c\u00b7o + \u03a3 exp(s \u2212 m\u2032)\u00b7v. " +
    "After the last tile, o / l is the attention output.";
  const readout = el("div", { class: "ab-flash-readout", "aria-live": "polite" }, box);
  const scoresTitle = el("div", { class: "ab-flash-title" }, box);
  const scoresTable = el("table", { class: "ab-flash-scores" }, box);
  const tilePanel = el("div", { class: "ab-flash-tile-panel" }, box);
  const stateTitle = el("div", { class: "ab-flash-title" }, box);
  stateTitle.textContent = "Running state of each query row";
  const stateTable = el("table", { class: "ab-flash-state" }, box);
  const check = el("div", { class: "ab-flash-check" }, box);
  const legend = el("div", { class: "ab-flash-legend" }, box);
  legend.innerHTML =
    '<span class="ab-flash-key ab-flash-key-current"></span>the current tile ' +
    '<span class="ab-flash-key ab-flash-key-seen"></span>done (discarded) ' +
    '<span class="ab-flash-key ab-flash-key-later"></span>not computed yet ' +
    '<span class="ab-flash-key ab-flash-key-masked"></span>masked';

  const state = () => ({
    q: model.get("q"), k: model.get("k"), v: model.get("v"), blockK: model.get("block_k"),
    causal: model.get("causal"), queryStart: model.get("query_start"), step: model.get("step"),
  });

  function save(changes) {
    for (const [name, value] of Object.entries(changes)) model.set(name, value);
    model.save_changes();
  }

  const queryName = (s, i) => `q${s.queryStart + i}`;

  function drawScores(s, steps, tiles) {
    scoresTable.replaceChildren();
    const current = s.step - 1;  // the tile just done (-1: none yet)
    scoresTitle.textContent = `Scores s = q\u00b7k / \u221a${s.q[0].length} of the ${s.q.length} queries ` +
      `(positions ${s.queryStart}\u2013${s.queryStart + s.q.length - 1}) and ${s.k.length} keys, in ${tiles} tiles of ${s.blockK}`;
    const head = el("thead", {}, scoresTable);
    const tileRow = el("tr", {}, head);
    el("th", {}, tileRow);
    const status = (t) => (t === current ? "current" : t < current ? "seen" : "later");
    for (const step of steps) {
      const th = el("th", { class: `ab-flash-tile-head ab-flash-${status(step.tile)}`, colspan: String(step.stop - step.start),
        "data-tile": String(step.tile) }, tileRow);
      th.textContent = `tile ${step.tile}${step.skipped ? " (skipped)" : ""}`;
      if (step.skipped) th.classList.add("ab-flash-skipped");
    }
    const keyRow = el("tr", {}, head);
    el("th", { class: "ab-flash-corner" }, keyRow).textContent = "query \\ key";
    for (const step of steps) {
      for (let j = step.start; j < step.stop; j++) {
        const th = el("th", { class: `ab-flash-keyhead ab-flash-${status(step.tile)}` }, keyRow);
        if (j === step.start) th.classList.add("ab-flash-tile-start");
        th.textContent = String(j);
      }
    }
    const body = el("tbody", {}, scoresTable);
    s.q.forEach((_, i) => {
      const row = el("tr", { "data-query": String(i) }, body);
      el("th", { class: "ab-flash-query" }, row).textContent = queryName(s, i);
      for (const step of steps) {
        step.scores[i].forEach((x, n) => {
          const j = step.start + n;
          const cls = [`ab-flash-score`, `ab-flash-${status(step.tile)}`];
          if (n === 0) cls.push("ab-flash-tile-start");
          if (x === -Infinity) cls.push("ab-flash-masked");
          if (step.skipped) cls.push("ab-flash-skipped");
          const cell = el("td", { class: cls.join(" "), "data-key": String(j), "data-tile": String(step.tile) }, row);
          if (step.tile <= current) {
            cell.dataset.value = String(x);
            cell.textContent = formatValue(x, 2);
          } else {
            cell.textContent = "\u00b7";
          }
        });
      }
    });
  }

  function drawTile(s, steps, tiles) {
    tilePanel.replaceChildren();
    const title = el("div", { class: "ab-flash-title" }, tilePanel);
    if (s.step === 0) {
      title.textContent = "Before the first tile";
      el("div", { class: "ab-flash-tile-note" }, tilePanel).textContent =
        "Every query row starts with m = \u2212\u221e, l = 0 and o = 0. Press \u201cnext tile\u201d.";
      return;
    }
    const step = steps[s.step - 1];
    title.textContent = `Tile ${step.tile} (keys ${step.start}\u2013${step.stop - 1}), the ${ordinal(s.step)} of ${tiles}`;
    if (step.skipped) {
      el("div", { class: "ab-flash-tile-note ab-flash-skipped" }, tilePanel).textContent =
        "Every score of this tile is masked, for every query: FlashAttention skips it (it never loads these keys " +
        "and values), and m, l and o stay as they were.";
      return;
    }
    const table = el("table", { class: "ab-flash-tile" }, tilePanel);
    const head = el("tr", {}, el("thead", {}, table));
    el("th", {}, head).textContent = "query";
    for (let j = step.start; j < step.stop; j++) el("th", { class: "ab-flash-keyhead" }, head).textContent = `p${j}`;
    for (const text of ["max s in tile", "m before", "m after", "rescale c = exp(m \u2212 m\u2032)", "\u03a3 p",
      "l = c\u00b7l + \u03a3 p"]) {
      el("th", {}, head).textContent = text;
    }
    const body = el("tbody", {}, table);
    s.q.forEach((_, i) => {
      const row = el("tr", { class: "ab-flash-tile-row", "data-query": String(i) }, body);
      el("th", { class: "ab-flash-query" }, row).textContent = queryName(s, i);
      step.p[i].forEach((x, n) => {
        const cell = numberCell(row, `ab-flash-p${step.scores[i][n] === -Infinity ? " ab-flash-masked" : ""}`, x, 3,
          { "data-key": String(step.start + n) });
        cell.style.backgroundColor = `rgba(0, 114, 178, ${(0.55 * x).toFixed(3)})`;
      });
      let sum = 0;
      for (const x of step.p[i]) sum += x;
      numberCell(row, "ab-flash-tile-max", step.tile_max[i], 3);
      numberCell(row, "ab-flash-m-old", step.m_old[i], 3);
      const grew = step.m[i] > step.m_old[i];
      numberCell(row, `ab-flash-m-new${grew ? " ab-flash-grew" : ""}`, step.m[i], 3);
      const rescaled = step.m_old[i] !== -Infinity && grew;
      numberCell(row, `ab-flash-tile-rescale${rescaled ? " ab-flash-rescaled" : ""}`, step.rescale[i], 3);
      numberCell(row, "ab-flash-psum", sum, 3);
      numberCell(row, "ab-flash-tile-l", step.l[i], 3);
    });
  }

  function drawState(s, steps) {
    stateTable.replaceChildren();
    const d = s.q[0].length;
    const head = el("thead", {}, stateTable);
    const groups = el("tr", {}, head);
    el("th", { colspan: "4" }, groups);
    el("th", { colspan: String(d), class: "ab-flash-group" }, groups).textContent = "o (not yet divided by l)";
    el("th", { colspan: String(d), class: "ab-flash-group" }, groups).textContent = "o / l";
    const names = el("tr", {}, head);
    for (const text of ["query", "m", "l", "rescale c"]) el("th", {}, names).textContent = text;
    for (let c = 0; c < d; c++) el("th", { class: c ? "" : "ab-flash-dim-start" }, names).textContent = `o[${c}]`;
    for (let c = 0; c < d; c++) el("th", { class: c ? "" : "ab-flash-dim-start" }, names).textContent = `(o/l)[${c}]`;
    const step = s.step > 0 ? steps[s.step - 1] : null;
    const body = el("tbody", {}, stateTable);
    s.q.forEach((_, i) => {
      const row = el("tr", { class: "ab-flash-row", "data-query": String(i) }, body);
      el("th", { class: "ab-flash-query" }, row).textContent = queryName(s, i);
      if (step === null) {
        numberCell(row, "ab-flash-m", -Infinity);
        numberCell(row, "ab-flash-l", 0);
        el("td", { class: "ab-flash-rescale" }, row).textContent = "\u2014";
        for (let c = 0; c < d; c++) numberCell(row, "ab-flash-o", 0, 3, { "data-dim": String(c) });
        for (let c = 0; c < d; c++) {
          el("td", { class: "ab-flash-out", "data-value": "0", "data-dim": String(c) }, row).textContent = "\u2014";
        }
        return;
      }
      const rescaled = !step.skipped && step.m_old[i] !== -Infinity && step.m[i] > step.m_old[i];
      numberCell(row, `ab-flash-m${rescaled ? " ab-flash-grew" : ""}`, step.m[i]);
      numberCell(row, "ab-flash-l", step.l[i]);
      numberCell(row, `ab-flash-rescale${rescaled ? " ab-flash-rescaled" : ""}`, step.rescale[i]);
      step.o[i].forEach((x, c) => numberCell(row, "ab-flash-o", x, 3, { "data-dim": String(c) }));
      step.out[i].forEach((x, c) => {
        const cell = numberCell(row, "ab-flash-out", x, 3, { "data-dim": String(c) });
        if (!(step.l[i] > 0)) cell.textContent = "\u2014";
      });
    });
  }

  function drawCheck(s, steps, tiles) {
    check.replaceChildren();
    if (s.step < tiles) {
      check.classList.remove("ab-flash-ok", "ab-flash-bad");
      check.classList.add("ab-flash-pending");
      check.textContent = `After the last tile (${tiles - s.step} to go), o / l is compared with softmax(s)\u00b7V ` +
        "computed the ordinary way, over whole rows.";
      return;
    }
    check.classList.remove("ab-flash-pending");
    const reference = softmaxAttention(s.q, s.k, s.v, s.causal, s.queryStart);
    const out = steps[tiles - 1].out;
    const diff = maxAbsDifference(out, reference);
    const ok = diff < CHECK_TOLERANCE;
    check.classList.toggle("ab-flash-ok", ok);
    check.classList.toggle("ab-flash-bad", !ok);
    el("div", { class: "ab-flash-title" }, check).textContent =
      "Check: softmax(s)\u00b7V with whole rows of scores (the ordinary way)";
    const table = el("table", { class: "ab-flash-reference" }, check);
    const head = el("tr", {}, el("thead", {}, table));
    el("th", {}, head).textContent = "query";
    for (let c = 0; c < s.q[0].length; c++) el("th", {}, head).textContent = `softmax(s)V[${c}]`;
    const body = el("tbody", {}, table);
    reference.forEach((values, i) => {
      const row = el("tr", { "data-query": String(i) }, body);
      el("th", { class: "ab-flash-query" }, row).textContent = queryName(s, i);
      values.forEach((x, c) => numberCell(row, "ab-flash-ref", x, 3, { "data-dim": String(c) }));
    });
    const result = el("div", { class: "ab-flash-check-result", "data-value": String(diff) }, check);
    result.textContent = `largest |o / l \u2212 softmax(s)\u00b7V| = ${diff === 0 ? "0" : diff.toExponential(1)}: ` +
      (ok ? "o / l is the softmax output \u2714" : "o / l differs from the softmax output \u2718");
  }

  function draw() {
    const s = state();
    if (!consistentState(s.q, s.k, s.v, s.blockK, s.queryStart)) return;  // the rest of a change is on its way
    const tiles = tileCount(s.k.length, s.blockK);
    s.step = Math.max(0, Math.min(s.step, tiles));  // block_k may arrive before the step that goes with it
    const steps = onlineSoftmaxSteps(s.q, s.k, s.v, s.blockK, s.causal, s.queryStart);
    slider.max = String(tiles);
    slider.value = String(s.step);
    stepValue.textContent = `${s.step} / ${tiles}`;
    first.disabled = prev.disabled = s.step === 0;
    next.disabled = last.disabled = s.step === tiles;
    blockSelect.replaceChildren();
    for (const b of blockChoices(s.k.length, s.blockK)) el("option", { value: String(b) }, blockSelect).textContent = String(b);
    blockSelect.value = String(s.blockK);
    causalBox.checked = s.causal;

    readout.replaceChildren();
    const where = el("b", { class: "ab-flash-where" }, readout);
    if (s.step === 0) {
      where.textContent = `0 of ${tiles} tiles done`;
      readout.append(": no score computed yet.");
    } else {
      const step = steps[s.step - 1];
      where.textContent = `${s.step} of ${tiles} tiles done`;
      readout.append(` (tile ${step.tile}: keys ${step.start}\u2013${step.stop - 1})`);
      if (step.skipped) {
        readout.append(": masked for every query, skipped.");
      } else {
        const rescaled = step.m.filter((m, i) => step.m_old[i] !== -Infinity && m > step.m_old[i]).length;
        readout.append(": ");
        el("b", { class: "ab-flash-rescaled-count" }, readout).textContent = String(rescaled);
        readout.append(` of ${s.q.length} query rows found a larger score and rescaled their l and o by c < 1.`);
      }
    }
    drawScores(s, steps, tiles);
    drawTile(s, steps, tiles);
    drawState(s, steps);
    drawCheck(s, steps, tiles);
  }

  const go = (step) => save({ step: Math.max(0, Math.min(step, tileCount(model.get("k").length, model.get("block_k")))) });
  first.addEventListener("click", () => go(0));
  prev.addEventListener("click", () => go(model.get("step") - 1));
  next.addEventListener("click", () => go(model.get("step") + 1));
  last.addEventListener("click", () => go(Infinity));
  slider.addEventListener("input", () => go(Number(slider.value)));
  blockSelect.addEventListener("change", () => {
    const keys = model.get("k").length, blockK = Number(blockSelect.value);
    const step = stepAfterRetiling(model.get("step"), tileCount(keys, model.get("block_k")), tileCount(keys, blockK));
    save({ block_k: blockK, step });
  });
  causalBox.addEventListener("change", () => save({ causal: causalBox.checked }));

  const names = ["q", "k", "v", "block_k", "causal", "query_start", "step"];
  for (const name of names) model.on(`change:${name}`, draw);
  draw();
  return () => {
    for (const name of names) model.off(`change:${name}`, draw);
  };
}

export default { render };
