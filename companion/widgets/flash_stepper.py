"""FlashAttention stepper: one tile of queries walks over the key/value tiles with an online softmax.

FlashAttention (Dao et al. 2022, "FlashAttention: Fast and memory-efficient exact attention with
IO-awareness"; the loop order of FlashAttention-2, Dao 2023) never holds a whole row of scores. For a
tile of queries ``q`` (``(queries, head_dim)``) it walks over the keys and values ``k``, ``v``
(``(keys, head_dim)``) in tiles of ``block_k`` and keeps, for each query row, three running numbers:

    ``m``: the largest score seen so far (``-inf`` before the first tile);
    ``l``: the sum over the keys seen of ``exp(s_j - m)`` (0 before the first tile);
    ``o``: the sum over the keys seen of ``exp(s_j - m) v_j`` (a ``head_dim`` vector, 0 at first).

A tile of scores ``s_j = (q . k_j) * scale`` (``scale = 1 / sqrt(head_dim)``; a masked key's score is
``-inf``) updates them as::

    m' = max(m, max_j s_j)
    c  = exp(m - m')                      (the rescale factor: 1 if the maximum did not grow)
    p_j = exp(s_j - m')
    l' = c l + sum_j p_j
    o' = c o + sum_j p_j v_j

and after the last tile ``o / l`` is exactly the softmax-weighted sum of the values, ``softmax(s) V``
(:func:`softmax_attention`). Multiplying the old ``l`` and ``o`` by ``c`` whenever the maximum grows is
what lets every exponential stay at most 1 without knowing the row's maximum in advance.
:func:`companion.kernels.tiled_attention` computes this with PyTorch; :func:`online_softmax_steps`
records every step of it, for one query tile, in plain Python floats (float64).

With ``causal=True``, query ``i`` sits at position ``query_start + i`` and sees keys ``j <= query_start
+ i``; the default ``query_start = keys - queries`` puts the queries at the end of the sequence, the
bottom-right alignment of :func:`companion.kernels.attention`. A tile whose every score is masked
changes nothing and is skipped (``"skipped": True``), as FlashAttention skips it; a query row that has
seen no key yet keeps ``m = -inf``, ``l = 0`` and an output of 0 (``0 / 0`` taken as 0, as the kernels do).

The widget (:class:`FlashStepper`) holds small ``q``, ``k`` and ``v`` (seeded, rounded to ``DECIMALS``
decimals, so that the widget's state is short and holds exactly the numbers computed with), the tile
size, the causal switch and the step. The JavaScript in ``flash_stepper.js`` computes the steps itself
in the browser, from that state; :func:`online_softmax_steps`, :func:`softmax_attention`,
:func:`tile_count`, :func:`step_after_retiling`, :func:`block_choices` and :func:`format_value` are its
Python twins.
"""

from __future__ import annotations

import math
import pathlib
import random
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Sequence

import anywidget
import traitlets

from companion.widgets._traits import checked, checked_int

DECIMALS = 2  # q, k and v are rounded to this many decimals
MAX_QUERIES = 8
MAX_KEYS = 32
MAX_HEAD_DIM = 8
MAX_ABS = 100.0  # |q|, |k|, |v| at most this: exp(s - m) stays meaningful in float64
BLOCK_SIZES = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32)  # the tile sizes the widget's menu offers (<= keys)
CHECK_TOLERANCE = 1e-12  # the last step's check: |o / l - softmax(s) V| below this
MINUS = "\u2212"
NEG_INF = float("-inf")
DEFAULT_SEED = 1  # its data show the point: in every tile after the first, some row's maximum grows


# ------------------------------------------------------------------------------ validation
_int = checked_int  # shared with the other widgets (companion/widgets/_traits.py)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _matrix(name: str, value: Any, max_rows: int | None = None, max_cols: int | None = None) -> list[list[float]]:
    """A rectangular ``(rows, cols)`` matrix of finite numbers as a list of lists of floats. Takes
    nested lists or tuples, NumPy arrays and tensors (``.tolist()``)."""
    if hasattr(value, "detach"):  # a torch tensor, possibly requiring grad
        value = value.detach()
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a matrix (a list of rows, an array or a tensor), got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must have at least one row, got none")
    rows = []
    for i, row in enumerate(value):
        if isinstance(row, (str, bytes)) or not isinstance(row, (list, tuple)):
            raise ValueError(f"{name} must be 2-D (rows of numbers), but {name}[{i}] is {type(row).__name__}")
        for x in row:
            if isinstance(x, (list, tuple)):
                raise ValueError(f"{name} must be 2-D (rows of numbers), but {name}[{i}] holds a {type(x).__name__}")
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise TypeError(f"{name} must hold numbers, got {x!r} in row {i}")
        rows.append([float(x) for x in row])
    cols = len(rows[0])
    if cols == 0 or any(len(row) != cols for row in rows):
        raise ValueError(f"{name} must be rectangular with at least one column, got rows of lengths "
                         f"{[len(row) for row in rows]}")
    if max_rows is not None and len(rows) > max_rows:
        raise ValueError(f"{name} must have at most {max_rows} rows, got {len(rows)}")
    if max_cols is not None and cols > max_cols:
        raise ValueError(f"{name} must have at most {max_cols} columns (head_dim), got {cols}")
    for i, row in enumerate(rows):
        for x in row:
            if not math.isfinite(x):
                raise ValueError(f"{name} must be finite, got {x} in row {i}")
    return rows


def _rounded(name: str, value: Any, max_rows: int | None = None) -> list[list[float]]:
    """:func:`_matrix`, rounded to ``DECIMALS`` decimals (``-0.0`` becomes ``0.0``), ``|x| <= MAX_ABS``."""
    rows = [[round(x, DECIMALS) + 0.0 for x in row] for row in _matrix(name, value, max_rows, MAX_HEAD_DIM)]
    for i, row in enumerate(rows):
        if any(abs(x) > MAX_ABS for x in row):
            raise ValueError(f"{name} must be within -{MAX_ABS:g}..{MAX_ABS:g}, got {max(row, key=abs)} in row {i}")
    return rows


def _check_qkv(q: list, k: list, v: list) -> None:
    """``q (queries, d)``, ``k (keys, d)``, ``v (keys, d)``, with ``queries <= keys``."""
    d = len(q[0])
    if len(k[0]) != d or len(v[0]) != d:
        raise ValueError(f"q, k and v must have the same head_dim (columns), got {d}, {len(k[0])} and {len(v[0])}")
    if len(v) != len(k):
        raise ValueError(f"k and v must have one row per key each, got {len(k)} and {len(v)} rows")
    if len(q) > len(k):
        raise ValueError(f"the query tile is part of the sequence: at most {len(k)} queries for {len(k)} keys, "
                         f"got {len(q)}")


def _check_query_start(query_start: Any, queries: int, keys: int) -> int:
    top = keys - queries
    if isinstance(query_start, bool) or not isinstance(query_start, int):
        raise TypeError(f"query_start must be an int, got {query_start!r}")
    if not 0 <= query_start <= top:
        raise ValueError(f"query_start must be in 0..{top} (the {queries} queries sit at positions query_start.."
                         f"query_start + {queries - 1} of the {keys} keys), got {query_start}")
    return query_start


def _check_block(block_k: Any, keys: int) -> int:
    return _int("block_k", block_k, 1, keys)


def _inputs(q: Any, k: Any, v: Any, causal: Any, query_start: Any) -> tuple[list, list, list, bool, int]:
    q, k, v = _matrix("q", q), _matrix("k", k), _matrix("v", v)
    _check_qkv(q, k, v)
    start = len(k) - len(q) if query_start is None else _check_query_start(query_start, len(q), len(k))
    return q, k, v, _bool("causal", causal), start


# ------------------------------------------------------------------------------ the twins
def tile_count(keys: int, block_k: int) -> int:
    """``ceil(keys / block_k)``: the key/value tiles (the last one may be shorter)."""
    return -(-_int("keys", keys, 1) // _int("block_k", block_k, 1))


def step_after_retiling(step: int, old_tiles: int, new_tiles: int) -> int:
    """The step to show after the tiles change: the last step stays the last (the check that ``o / l``
    is the softmax holds for every tile size), any other is kept if it still exists, else the last."""
    return new_tiles if step == old_tiles else min(step, new_tiles)


def block_choices(keys: int, block_k: int) -> list[int]:
    """The tile sizes the widget's menu offers: ``BLOCK_SIZES`` up to ``keys``, and ``block_k``."""
    return sorted({b for b in BLOCK_SIZES if b <= keys} | {block_k})


def _scale(head_dim: int) -> float:
    return 1 / math.sqrt(head_dim)


def _score(qi: list[float], kj: list[float], scale: float) -> float:
    total = 0.0
    for a, b in zip(qi, kj):  # left to right, as the JavaScript
        total += a * b
    return total * scale


def score_matrix(q: Any, k: Any, *, causal: bool = False, query_start: int | None = None) -> list[list[float]]:
    """``s[i][j] = (q_i . k_j) / sqrt(head_dim)``, ``(queries, keys)``, with ``-inf`` where the causal mask
    hides key ``j`` from query ``i`` (``j > query_start + i``)."""
    q, k, _, causal, start = _inputs(q, k, k, causal, query_start)
    scale = _scale(len(q[0]))
    return [[_score(qi, kj, scale) if not causal or j <= start + i else NEG_INF for j, kj in enumerate(k)]
            for i, qi in enumerate(q)]


def softmax_attention(q: Any, k: Any, v: Any, *, causal: bool = False,
                      query_start: int | None = None) -> list[list[float]]:
    """``softmax(s) V`` computed the ordinary way, a whole row of scores at once: ``(queries, head_dim)``.

    ``s`` is :func:`score_matrix`; each row subtracts its maximum before ``exp`` and divides by its sum.
    A row that sees no key is 0. The reference the last step of :func:`online_softmax_steps` must equal.
    """
    q, k, v, causal, start = _inputs(q, k, v, causal, query_start)
    out = []
    for row in score_matrix(q, k, causal=causal, query_start=start):
        m = max(row)
        if m == NEG_INF:
            out.append([0.0] * len(v[0]))
            continue
        p = [math.exp(s - m) for s in row]
        total = 0.0
        for x in p:
            total += x
        acc = [0.0] * len(v[0])
        for pj, vj in zip(p, v):
            for c, x in enumerate(vj):
                acc[c] += pj * x
        out.append([a / total for a in acc])
    return out


def online_softmax_steps(q: Any, k: Any, v: Any, block_k: int = 4, *, causal: bool = False,
                         query_start: int | None = None) -> list[dict[str, Any]]:
    """Every step of the online softmax of one query tile over the key/value tiles (module docstring).

    ``q`` is ``(queries, head_dim)``, ``k`` and ``v`` ``(keys, head_dim)`` (lists, arrays or tensors;
    computed in Python floats, float64). Returns one dict per tile of ``block_k`` keys, in order:

    ``tile``, ``start``, ``stop``
        the tile's index and its keys ``start .. stop - 1``;
    ``skipped``
        every score of the tile is masked: nothing is computed and nothing changes;
    ``scores``
        ``(queries, stop - start)``: ``s_j``, ``-inf`` where masked;
    ``tile_max``, ``m_old``, ``m``
        per row: the tile's largest score, the running maximum before and after (``-inf`` for none);
    ``rescale``
        per row: ``c = exp(m_old - m)`` (0 at a row's first key, 1 when the maximum did not grow);
    ``p``
        ``(queries, stop - start)``: ``exp(s_j - m)`` (0 where masked);
    ``l``, ``o``
        per row, after the tile: ``c l + sum_j p_j`` and ``c o + sum_j p_j v_j`` (``(queries, head_dim)``);
    ``out``
        ``o / l`` per row (0 for a row that has seen no key): after the last tile, :func:`softmax_attention`.

    Masked scores are ``float("-inf")``. The twin of ``onlineSoftmaxSteps`` in flash_stepper.js.
    """
    q, k, v, causal, start = _inputs(q, k, v, causal, query_start)
    block_k = _check_block(block_k, len(k))
    rows, d = len(q), len(q[0])
    scale = _scale(d)
    m, l, o = [NEG_INF] * rows, [0.0] * rows, [[0.0] * d for _ in range(rows)]
    steps = []
    for t in range(tile_count(len(k), block_k)):
        k0, k1 = t * block_k, min((t + 1) * block_k, len(k))
        scores = [[_score(q[i], k[j], scale) if not causal or j <= start + i else NEG_INF for j in range(k0, k1)]
                  for i in range(rows)]
        tile_max = [max(row) for row in scores]
        skipped = all(x == NEG_INF for x in tile_max)
        m_old = list(m)
        if skipped:
            rescale = [1.0] * rows
            p = [[0.0] * (k1 - k0) for _ in range(rows)]
        else:
            rescale, p = [], []
            for i in range(rows):
                m_new = max(m[i], tile_max[i])
                safe = 0.0 if m_new == NEG_INF else m_new  # no key seen yet: exp(-inf - 0) = 0, not NaN
                c = math.exp(m[i] - safe)
                p_row = [math.exp(s - safe) for s in scores[i]]
                total, acc = 0.0, [0.0] * d
                for pj, j in zip(p_row, range(k0, k1)):
                    total += pj
                    for col in range(d):
                        acc[col] += pj * v[j][col]
                l[i] = c * l[i] + total
                o[i] = [c * o[i][col] + acc[col] for col in range(d)]
                m[i] = m_new
                rescale.append(c)
                p.append(p_row)
        out = [[x / l[i] for x in o[i]] if l[i] > 0 else [0.0] * d for i in range(rows)]
        steps.append({"tile": t, "start": k0, "stop": k1, "skipped": skipped, "scores": scores,
                      "tile_max": tile_max, "m_old": m_old, "m": list(m), "rescale": rescale, "p": p,
                      "l": list(l), "o": [list(row) for row in o], "out": out})
    return steps


def max_abs_difference(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """``max |a - b|`` over two matrices of the same shape (the last step's check)."""
    return max((abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)), default=0.0)


def format_value(x: float, digits: int = 3) -> str:
    """How the widget shows a number: ``x.toFixed(digits)`` of JavaScript (half away from zero on the
    exact binary value), with a minus sign (U+2212), no ``-0``, and ``-inf`` as ``"\u2212\u221e"``."""
    if x == NEG_INF:
        return MINUS + "\u221e"
    text = f"{Decimal(abs(x)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP):f}"
    return MINUS + text if x < 0 and any(ch not in "0." for ch in text) else text


def random_qkv(queries: int = 4, keys: int = 16, head_dim: int = 4,
               seed: int = DEFAULT_SEED) -> tuple[list, list, list]:
    """Seeded ``q (queries, head_dim)``, ``k`` and ``v`` ``(keys, head_dim)``: standard normal numbers
    (Python's ``random.Random(seed).gauss``, the same on every machine) rounded to ``DECIMALS``."""
    _int("queries", queries, 1, MAX_QUERIES)
    _int("keys", keys, 1, MAX_KEYS)
    _int("head_dim", head_dim, 1, MAX_HEAD_DIM)
    _int("seed", seed, 0)
    rng = random.Random(seed)

    def matrix(rows: int) -> list[list[float]]:
        return [[round(rng.gauss(0.0, 1.0), DECIMALS) + 0.0 for _ in range(head_dim)] for _ in range(rows)]

    q = matrix(queries)
    k = matrix(keys)
    return q, k, matrix(keys)


# ---------------------------------------------------------------------------------- widget
_DEFAULT_Q, _DEFAULT_K, _DEFAULT_V = random_qkv()


class FlashStepper(anywidget.AnyWidget):
    """One tile of queries stepping through the key/value tiles, as FlashAttention does (module docstring).

    ``FlashStepper()`` makes seeded data (:func:`random_qkv`: ``queries=4``, ``keys=16``, ``head_dim=4``,
    ``seed=DEFAULT_SEED``);
    ``FlashStepper(q, k, v)`` takes given ``q (queries, head_dim)``, ``k`` and ``v`` ``(keys,
    head_dim)`` (lists, arrays or tensors, rounded to ``DECIMALS`` decimals). ``block_k`` is the tile
    size, ``causal`` the mask, ``query_start`` the position of the first query (default: the end of the
    sequence), ``step`` the tiles done (0 to :attr:`tiles`).

    The reader moves through the tiles (buttons, or a slider), switches the causal mask and picks the
    tile size. The widget shows the scores grid with the current tile highlighted (earlier tiles are
    already discarded, later ones not computed yet), the current tile's ``exp(s - m)``, and for each
    query row the running maximum ``m``, the sum ``l``, the rescale factor ``exp(m_old - m_new)`` and
    the output ``o`` (before and after dividing by ``l``). After the last tile it checks ``o / l``
    against ``softmax(s) V`` computed the ordinary way.
    """

    _esm = pathlib.Path(__file__).with_name("flash_stepper.js")
    _css = pathlib.Path(__file__).with_name("flash_stepper.css")

    q = traitlets.List(traitlets.List(traitlets.Float()), _DEFAULT_Q).tag(sync=True)
    k = traitlets.List(traitlets.List(traitlets.Float()), _DEFAULT_K).tag(sync=True)
    v = traitlets.List(traitlets.List(traitlets.Float()), _DEFAULT_V).tag(sync=True)
    block_k = traitlets.Int(4).tag(sync=True)
    causal = traitlets.Bool(False).tag(sync=True)
    query_start = traitlets.Int(len(_DEFAULT_K) - len(_DEFAULT_Q)).tag(sync=True)
    step = traitlets.Int(0).tag(sync=True)

    def __init__(self, q: Any = None, k: Any = None, v: Any = None, *, queries: int | None = None,
                 keys: int | None = None, head_dim: int | None = None, block_k: int = 4, causal: bool = False,
                 query_start: int | None = None, step: int = 0, seed: int = DEFAULT_SEED, **kwargs):
        # plain arguments are checked here, with ValueError / TypeError; later changes by the traits
        given = [x is not None for x in (q, k, v)]
        if any(given) and not all(given):
            raise ValueError("q, k and v must be given together (or none of them, for seeded data)")
        if all(given):
            q, k, v = _rounded("q", q, MAX_QUERIES), _rounded("k", k, MAX_KEYS), _rounded("v", v, MAX_KEYS)
            _check_qkv(q, k, v)
            sizes = {"queries": len(q), "keys": len(k), "head_dim": len(q[0])}
            clash = {n: x for n, x in (("queries", queries), ("keys", keys), ("head_dim", head_dim))
                     if x is not None and x != sizes[n]}
            if clash:
                raise ValueError(f"q, k and v have {', '.join(f'{n}={sizes[n]}' for n in clash)}; got {clash}: "
                                 f"leave them out")
        else:
            q, k, v = random_qkv(4 if queries is None else queries, 16 if keys is None else keys,
                                 4 if head_dim is None else head_dim, seed)
            _check_qkv(q, k, v)
        start = len(k) - len(q) if query_start is None else _check_query_start(query_start, len(q), len(k))
        block_k = _check_block(block_k, len(k))
        self._tiles = tile_count(len(k), block_k)
        super().__init__(q=q, k=k, v=v, block_k=block_k, causal=_bool("causal", causal), query_start=start,
                         step=_int("step", step, 0, self._tiles), **kwargs)

    # ---------------------------------------------------------------------------- validation
    # Each trait is checked against the others as they are: to change several together (a new
    # shape), set them inside ``with widget.hold_trait_notifications():``, or use set_data().
    @traitlets.validate("q")
    def _valid_q(self, proposal):
        def check(value):
            q = _rounded("q", value, MAX_QUERIES)
            _check_qkv(q, self.k, self.v)
            _check_query_start(self.query_start, len(q), len(self.k))
            return q
        return checked(proposal, check)

    @traitlets.validate("k", "v")
    def _valid_kv(self, proposal):
        name = proposal["trait"].name

        def check(value):
            rows = _rounded(name, value, MAX_KEYS)
            k, v = (rows, self.v) if name == "k" else (self.k, rows)
            _check_qkv(self.q, k, v)
            _check_query_start(self.query_start, len(self.q), len(k))
            _check_block(self.block_k, len(k))
            return rows
        return checked(proposal, check)

    @traitlets.validate("block_k")
    def _valid_block(self, proposal):
        return checked(proposal, lambda value: _check_block(value, len(self.k)))

    @traitlets.validate("causal")
    def _valid_causal(self, proposal):
        return checked(proposal, lambda value: _bool("causal", value))

    @traitlets.validate("query_start")
    def _valid_query_start(self, proposal):
        return checked(proposal, lambda value: _check_query_start(value, len(self.q), len(self.k)))

    @traitlets.validate("step")
    def _valid_step(self, proposal):
        return checked(proposal, lambda value: _int("step", value, 0, tile_count(len(self.k), self.block_k)))

    @traitlets.observe("k", "block_k")
    def _retile(self, change):
        tiles = tile_count(len(self.k), self.block_k)
        if tiles != self._tiles:
            old, self._tiles = self._tiles, tiles
            self.step = step_after_retiling(self.step, old, tiles)

    def set_data(self, q: Any, k: Any, v: Any, query_start: int | None = None) -> None:
        """Replace ``q``, ``k`` and ``v`` together (any shapes within the limits); ``query_start``
        defaults to the end of the sequence, and ``block_k`` shrinks to the keys if it must."""
        q, k, v = _rounded("q", q, MAX_QUERIES), _rounded("k", k, MAX_KEYS), _rounded("v", v, MAX_KEYS)
        _check_qkv(q, k, v)
        start = len(k) - len(q) if query_start is None else _check_query_start(query_start, len(q), len(k))
        with self.hold_sync(), self.hold_trait_notifications():  # one message to the front end
            self.q, self.k, self.v, self.query_start = q, k, v, start
            self.block_k = min(self.block_k, len(k))

    # ------------------------------------------------------------------------------- reading
    @property
    def tiles(self) -> int:
        """The number of key/value tiles: :func:`tile_count`; ``step`` goes from 0 to this."""
        return tile_count(len(self.k), self.block_k)

    def steps(self) -> list[dict[str, Any]]:
        """:func:`online_softmax_steps` at the current state (every tile, whatever ``step`` is)."""
        return online_softmax_steps(self.q, self.k, self.v, self.block_k, causal=self.causal,
                                    query_start=self.query_start)

    def output(self) -> list[list[float]]:
        """``o / l`` after the last tile, ``(queries, head_dim)``."""
        return self.steps()[-1]["out"]

    def reference(self) -> list[list[float]]:
        """:func:`softmax_attention` of the widget's data: what :meth:`output` must equal."""
        return softmax_attention(self.q, self.k, self.v, causal=self.causal, query_start=self.query_start)

    def __repr__(self) -> str:  # stable: stored notebook outputs must not hold an address
        return (f"FlashStepper(queries={len(self.q)}, keys={len(self.k)}, head_dim={len(self.q[0])}, "
                f"block_k={self.block_k}, causal={self.causal}, query_start={self.query_start}, "
                f"step={self.step})")
