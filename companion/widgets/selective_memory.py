"""Selective memory: how much of each past token is left in a state space model's state, k steps later.

One channel of Mamba's selective scan (Gu and Dao 2023, "Mamba: Linear-time sequence modeling with
selective state spaces", section 3) keeps a diagonal state of ``N`` numbers. State dimension ``n``
decays at the rate ``A_n < 0`` (S4D-Real's initialisation, Gu et al. 2022, "On the parameterization
and initialization of diagonal state space models", and Mamba's: ``A_n = -(n + 1)``,
:func:`s4d_real_decay_rates`). Token ``t`` brings a step size ``Delta_t > 0``; the continuous system is
discretised with it (zero-order hold for ``A``, Mamba's simplified ``Bbar = Delta B`` for ``B``)::

    Abar_{t,n} = exp(Delta_t A_n)        Bbar_{t,n} = Delta_t B_n
    h_{t,n}    = Abar_{t,n} h_{t-1,n} + Bbar_{t,n} x_t

Unrolled, token ``j`` is written into the state with the weight ``Delta_j B_n`` and multiplied by
``exp(Delta_s A_n)`` at every later step ``s``, so at a later time ``t`` (``k = t - j`` steps on) it
keeps the fraction

    ``survival = exp(A_n (Delta_{j+1} + ... + Delta_t))``

of that weight (:func:`survival`; the sum is the continuous time that has *elapsed* since the token
was written, :func:`elapsed`). Its weight in the state is ``Delta_j B_n survival`` (with ``B_n = 1``,
:func:`contributions`): the coefficient of ``x_j`` in ``h_{t,n}``.

*Time-invariant* (an LTI SSM such as S4): ``Delta_t = Delta`` for every token, so a token keeps
``exp(A_n Delta k)`` after ``k`` steps whatever the tokens were: every token fades at the same rate.
*Selective* (Mamba): ``Delta_t`` depends on the token (in Mamba ``Delta_t = softplus(w . x_t + b)``).
Section 3.5.2 of the paper: "a large Delta resets the state h and focuses on the current input x,
while a small Delta persists the state and ignores the current input". A token with a large step
erodes everything before it; a token with a small one is barely written and leaves the past almost
untouched. The widget's ``Delta_t = delta_scale * gates[t]``, the per-token ``gates`` precomputed by
Python (from a rule, :func:`rule_gates`, or from a trained model's step sizes); time-invariant mode
uses ``Delta_t = delta_scale``, which is selective mode with every gate 1.

The *memory horizon* at ``t`` (:func:`memory_horizon`) is the smallest ``k`` such that the token
``k`` steps back keeps less than ``THRESHOLD`` (1%) of its weight. Since ``Delta >= 0`` and ``A < 0``
the survival never grows with ``k``, so every token ``k`` or more steps back is below 1% too. Shown
for one state dimension ``n``, or (``dimension = -1``) averaged over the ``N`` dimensions.

The widget (:class:`SelectiveMemory`) holds the tokens, the gates, the decay rates, the Delta scale
(a logarithmic slider, :func:`scale_from_slider`), the selective / time-invariant switch, the query
position ``t`` (click a token) and the dimension (a menu). The JavaScript in
``selective_memory.js`` computes everything in the browser from that state; :func:`step_sizes`,
:func:`elapsed`, :func:`survival`, :func:`contributions`, :func:`memory_horizon`, :func:`bar_height`,
:func:`scale_from_slider`, :func:`format_number`, :func:`format_percent`, :func:`summary_text` and
:func:`token_text` are its Python twins (the sums are the same additions in the same order; only
``exp`` and ``log10`` may differ in the last bit between V8 and the C library).
"""

from __future__ import annotations

import math
import pathlib
import string
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Sequence

import anywidget
import traitlets

from companion.widgets._traits import checked, checked_int
from companion.widgets.attention_explorer import check_tokens, display_token

MIN_TOKENS, MAX_TOKENS = 2, 64
MAX_STATE = 16  # state dimensions (decay rates)
MIN_RATE, MAX_RATE = 0.001, 1000.0  # |A_n| in this range
MAX_GATE = 100.0
GATE_DIGITS = 4  # gates are stored to 4 significant digits: a short state, the numbers computed with
SCALE_MIN, SCALE_MAX = 0.01, 10.0  # the Delta scale; the slider is log10 of it
SLIDER_MIN, SLIDER_MAX, SLIDER_STEP = -2.0, 1.0, 0.05
THRESHOLD = 0.01  # the memory horizon: below 1% of the weight a token was written with
CURVE_FLOOR = 1e-4  # the survival chart's logarithmic axis stops here (lower values sit on it)
MINUS = "\u2212"
HINT = ("Hover over a token (or focus it) to see how much of it is left at the query; "
        "click a token to make it the query.")

# A rule standing in for the learned step size (Mamba: Delta_t = softplus(w . x_t + b)): filler and
# punctuation get a small step (ignored: the state is kept), digits a large one (remembered: the state
# before them is reset), other words the ordinary one.
FILLER = frozenset({"um", "uh", "er", "erm", "well", "so", "like", "you", "know", "i", "mean", "okay", "ok"})
QUIET_GATE, NORMAL_GATE, LOUD_GATE = 0.1, 1.0, 4.0
DEFAULT_TEXT = ("The key is 7. Um, uh, well, you know, er, so, um. The new key is 3. "
                "Uh, so, um, like, er. What is the key?")
DEFAULT_STATE = 4
DEFAULT_SLIDER = -0.5  # the default Delta scale is scale_from_slider(-0.5) = 0.316


# ------------------------------------------------------------------------------ validation
_int = checked_int  # shared with the other widgets (companion/widgets/_traits.py)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _numbers(name: str, value: Any) -> list[float]:
    """A 1-D sequence of finite numbers (a list, a tuple, a NumPy array or a tensor) as floats."""
    if hasattr(value, "detach"):  # a torch tensor, possibly requiring grad
        value = value.detach().cpu()
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of numbers (or a 1-D array or tensor), got {type(value).__name__}")
    out = []
    for i, x in enumerate(value):
        if isinstance(x, (list, tuple)):
            raise ValueError(f"{name} must be 1-D (one number per entry), but {name}[{i}] is a {type(x).__name__}")
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise TypeError(f"{name} must hold numbers, got {x!r} at {name}[{i}]")
        if not math.isfinite(x):
            raise ValueError(f"{name} must be finite, got {x} at {name}[{i}]")
        out.append(float(x))
    return out


def _check_tokens(tokens: Any) -> list[str]:
    tokens = check_tokens(tokens)
    if not MIN_TOKENS <= len(tokens) <= MAX_TOKENS:
        raise ValueError(f"tokens must hold {MIN_TOKENS} to {MAX_TOKENS} tokens, got {len(tokens)}")
    return tokens


def _round_gate(g: float) -> float:
    return float(f"{g:.{GATE_DIGITS}g}") + 0.0


def _check_gates(gates: Any, n_tokens: int | None = None) -> list[float]:
    """Per-token step multipliers, each in ``0..MAX_GATE``, rounded to ``GATE_DIGITS`` significant digits."""
    gates = [_round_gate(g) for g in _numbers("gates", gates)]
    for i, g in enumerate(gates):
        if not 0 <= g <= MAX_GATE:
            raise ValueError(f"gates must be in 0..{MAX_GATE:g} (a step size is never negative), got {g} at gates[{i}]")
    if n_tokens is not None and len(gates) != n_tokens:
        raise ValueError(f"gates must hold one number per token: {n_tokens} tokens, got {len(gates)} gates")
    return gates


def _check_rates(decay_rates: Any) -> list[float]:
    rates = _numbers("decay_rates", decay_rates)
    if not 1 <= len(rates) <= MAX_STATE:
        raise ValueError(f"decay_rates must hold 1 to {MAX_STATE} rates (one per state dimension), got {len(rates)}")
    for n, a in enumerate(rates):
        if not -MAX_RATE <= a <= -MIN_RATE:
            raise ValueError(f"decay_rates must be negative, in -{MAX_RATE:g}..-{MIN_RATE:g} (a stable state decays), "
                             f"got {a} at decay_rates[{n}]")
    return rates


def _check_scale(delta_scale: Any) -> float:
    if isinstance(delta_scale, bool) or not isinstance(delta_scale, (int, float)):
        raise TypeError(f"delta_scale must be a number, got {delta_scale!r}")
    if not SCALE_MIN <= delta_scale <= SCALE_MAX:
        raise ValueError(f"delta_scale must be in {SCALE_MIN:g}..{SCALE_MAX:g}, got {delta_scale!r}")
    return float(delta_scale)


def _check_query(query: Any, n_tokens: int) -> int:
    return _int("query", query, 0, n_tokens - 1)


def _check_dimension(dimension: Any, state_size: int) -> int:
    if isinstance(dimension, bool) or not isinstance(dimension, int):
        raise TypeError(f"dimension must be an int, got {dimension!r}")
    if not -1 <= dimension < state_size:
        raise ValueError(f"dimension must be -1 (the average) or a state dimension in 0..{state_size - 1}, "
                         f"got {dimension}")
    return dimension


def _check_deltas(deltas: Any, query: Any) -> tuple[list[float], int]:
    deltas = _numbers("deltas", deltas)
    if not deltas:
        raise ValueError("deltas must hold at least one step size, got none")
    if any(d < 0 for d in deltas):
        raise ValueError(f"deltas must be >= 0, got {min(deltas)}")
    return deltas, _check_query(query, len(deltas))


# ------------------------------------------------------------------------------ the twins
def s4d_real_decay_rates(state_size: int = DEFAULT_STATE) -> list[float]:
    """``[-1, -2, ..., -state_size]``: ``A_n = -(n + 1)``, S4D-Real's initialisation (Gu et al. 2022),
    which Mamba uses (``A = -exp(A_log)`` with ``A_log = log(1..N)``)."""
    _int("state_size", state_size, 1, MAX_STATE)
    return [-float(n + 1) for n in range(state_size)]


def rule_gates(tokens: Sequence[str], *, quiet: float = QUIET_GATE, normal: float = NORMAL_GATE,
               loud: float = LOUD_GATE, filler: frozenset[str] = FILLER) -> list[float]:
    """A gate per token from a rule, standing in for a learned step size: ``quiet`` for punctuation,
    whitespace and ``filler`` words (compared stripped and lower-cased), ``loud`` for numbers (all
    digits), ``normal`` for the rest. ``(T,)`` gates for ``T`` tokens."""
    tokens = check_tokens(tokens)
    gates = []
    for token in tokens:
        word = token.strip().lower()
        if not word or all(c in string.punctuation for c in word) or word in filler:
            gates.append(quiet)
        elif word.isdigit():
            gates.append(loud)
        else:
            gates.append(normal)
    return _check_gates(gates, len(tokens))


def split_words(text: str) -> list[str]:
    """``text`` as word-like tokens, each word with its leading space, punctuation on its own (a
    stand-in for a tokenizer: ``"The key is 7."`` -> ``["The", " key", " is", " 7", "."]``)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    tokens: list[str] = []
    for c in text:
        if c.isalnum() and tokens and tokens[-1].strip().isalnum() and tokens[-1][-1].isalnum():
            tokens[-1] += c
        elif c == " ":
            tokens.append(" ")
        elif tokens and tokens[-1] == " ":
            tokens[-1] += c
        else:
            tokens.append(c)
    return tokens


def step_sizes(gates: Sequence[float], delta_scale: float, selective: bool = True) -> list[float]:
    """``Delta_t`` for every token: ``delta_scale * gates[t]`` (selective), or ``delta_scale`` for every
    token (time-invariant). ``(T,)``."""
    gates = _numbers("gates", gates)
    delta_scale = _check_scale(delta_scale)
    return [delta_scale * g for g in gates] if _bool("selective", selective) else [delta_scale] * len(gates)


def elapsed(deltas: Sequence[float], query: int) -> list[float]:
    """``[S_0, ..., S_query]``, ``S_j = Delta_{j+1} + ... + Delta_query`` (0 for ``j = query``): the time
    elapsed between writing token ``j`` and the query, summed from the query backwards."""
    deltas, query = _check_deltas(deltas, query)
    out = [0.0] * (query + 1)
    total = 0.0
    for j in range(query, -1, -1):
        out[j] = total
        total += deltas[j]
    return out


def _kept(total: float, rates: list[float], dimension: int) -> float:
    if dimension >= 0:
        return math.exp(rates[dimension] * total)
    acc = 0.0
    for a in rates:
        acc += math.exp(a * total)
    return acc / len(rates)


def survival(deltas: Sequence[float], decay_rates: Sequence[float], query: int, dimension: int = -1) -> list[float]:
    """The fraction of its written weight that each token ``j = 0 .. query`` keeps in the state at the
    query: ``exp(A_n S_j)`` (:func:`elapsed`) for state dimension ``n = dimension``, or for ``-1`` the
    mean over the ``N`` dimensions, ``(1/N) sum_n exp(A_n S_j)``. ``(query + 1,)``; 1 at ``j = query``."""
    rates = _check_rates(decay_rates)
    dimension = _check_dimension(dimension, len(rates))
    return [_kept(total, rates, dimension) for total in elapsed(deltas, query)]


def contributions(deltas: Sequence[float], decay_rates: Sequence[float], query: int,
                  dimension: int = -1) -> list[float]:
    """The weight of ``x_j`` in the state at the query, ``Delta_j * survival_j`` (``B_n = 1``): the
    coefficient of ``x_j`` in ``h_query`` (averaged over dimensions for ``dimension = -1``). ``(query + 1,)``."""
    kept = survival(deltas, decay_rates, query, dimension)
    return [d * s for d, s in zip(_numbers("deltas", deltas), kept)]


def memory_horizon(deltas: Sequence[float], decay_rates: Sequence[float], query: int, dimension: int = -1,
                   threshold: float = THRESHOLD) -> int | None:
    """The smallest ``k >= 1`` such that the token ``k`` steps before the query keeps less than
    ``threshold`` of its weight (:func:`survival`); every token further back keeps less too. ``None`` if
    no token before the query has fallen that low (the horizon lies before the start)."""
    kept = survival(deltas, decay_rates, query, dimension)
    for k in range(1, query + 1):
        if kept[query - k] < threshold:
            return k
    return None


def bar_height(v: float) -> float:
    """A token's bar height in percent: ``v`` on a logarithmic axis from ``CURVE_FLOOR`` (0) to 1
    (100), ``100 (1 - log10(max(v, CURVE_FLOOR)) / log10(CURVE_FLOOR))``; 1% is at 50."""
    return 100 * (1 - math.log10(max(v, CURVE_FLOOR)) / math.log10(CURVE_FLOOR))


def _half_up(x: float, exponent: int) -> Decimal:
    """The exact binary value of ``x`` rounded half up to a multiple of ``10 ** exponent`` (as
    JavaScript's toFixed and toPrecision round)."""
    return Decimal(x).quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_UP)


def _to_precision(x: float, digits: int) -> Decimal:
    """The number that ``x.toPrecision(digits)`` writes, for ``x > 0``."""
    exact = Decimal(x)
    rounded = _half_up(x, exact.adjusted() - digits + 1)
    if rounded.adjusted() != exact.adjusted():  # 9.995 -> 10.0: round again at the new magnitude
        rounded = _half_up(x, rounded.adjusted() - digits + 1)
    return rounded


def scale_from_slider(value: float) -> float:
    """The Delta scale at the logarithmic slider's ``value``: ``10 ** value`` to 3 significant digits
    (``Number((10 ** value).toPrecision(3))``), so that the scale reads as it is."""
    return float(_to_precision(10.0**value, 3))


def format_number(x: float) -> str:
    """``x`` to 3 significant digits as JavaScript writes ``Number(x.toPrecision(3))`` (no trailing
    zeros; an exponent below 1e-6), with a minus sign (U+2212); 0 as ``"0"``."""
    if x == 0:
        return "0"
    d = _to_precision(abs(x), 3).normalize()
    if d.adjusted() < -6:
        mantissa = d.scaleb(-d.adjusted())
        text = f"{mantissa:f}e-{-d.adjusted()}"
    else:
        text = f"{d:f}"
    return (MINUS if x < 0 else "") + text


def format_percent(p: float) -> str:
    """A fraction as a percentage: ``"100%"`` for 1, one decimal from 1%, two below (``"0.42%"``),
    ``"< 0.01%"`` below that, ``"0%"`` for 0 (JavaScript's toFixed: half up on the exact value)."""
    v = 100 * p
    if p == 1:
        return "100%"
    if v >= 1:
        return f"{_half_up(v, -1):f}%"
    if v >= 0.01:
        return f"{_half_up(v, -2):f}%"
    return "< 0.01%" if v > 0 else "0%"


def _quoted(token: str) -> str:
    return f"\u201c{display_token(token)}\u201d"


def summary_text(tokens: Sequence[str], gates: Sequence[float], decay_rates: Sequence[float], delta_scale: float,
                 selective: bool, query: int, dimension: int) -> str:
    """The widget's summary line: the query, the mode, the scale, the dimension and the memory horizon."""
    deltas = step_sizes(gates, delta_scale, selective)
    rates = _check_rates(decay_rates)
    kept = survival(deltas, rates, query, dimension)
    horizon = memory_horizon(deltas, rates, query, dimension)
    which = (f"the average of {len(rates)} state dimensions" if dimension < 0
             else f"state dimension n = {dimension} (A = {format_number(rates[dimension])})")
    head = (f"Query t = {query} ({_quoted(tokens[query])}), {'selective' if selective else 'time-invariant'}, "
            f"\u0394 scale {format_number(delta_scale)}, {which}: ")
    if query == 0:
        return head + "the first token, nothing came before it."
    if horizon is None:
        return head + (f"no earlier token has fallen below 1% (the oldest, {query} steps back, keeps "
                       f"{format_percent(kept[0])}).")
    return head + (f"memory horizon {horizon} step{'s' if horizon > 1 else ''}: every token {horizon} or more steps "
                   f"back keeps less than 1% of its weight.")


def token_text(tokens: Sequence[str], gates: Sequence[float], decay_rates: Sequence[float], delta_scale: float,
               selective: bool, query: int, dimension: int, focus: int | None) -> str:
    """The widget's line about one token (hovered or focused; ``None``: a hint): the weight it was
    written with, ``Delta_j``, and what is left of it at the query after ``k`` steps."""
    if focus is None:
        return HINT
    deltas = step_sizes(gates, delta_scale, selective)
    where = f"{_quoted(tokens[focus])} (token {focus})"
    if focus > query:
        return f"{where} comes after the query: it is not in the state yet."
    written = format_number(deltas[focus])
    if focus == query:
        return f"{where} is the query itself: just written, with weight \u0394 = {written}, 100% of it."
    k = query - focus
    kept = survival(deltas, decay_rates, query, dimension)[focus]
    total = elapsed(deltas, query)[focus]
    return (f"{where}, {k} step{'s' if k > 1 else ''} back: written with weight \u0394 = {written}; "
            f"after \u03a3\u0394 = {format_number(total)} of elapsed time it keeps {format_percent(kept)} of that "
            f"(weight {format_number(deltas[focus] * kept)} in the state).")


# ---------------------------------------------------------------------------------- widget
DEFAULT_TOKENS = split_words(DEFAULT_TEXT)
DEFAULT_SCALE = scale_from_slider(DEFAULT_SLIDER)


class SelectiveMemory(anywidget.AnyWidget):
    """How much of each past token survives in a selective (or time-invariant) SSM's state (module
    docstring).

    ``SelectiveMemory()`` shows a sentence (``DEFAULT_TEXT``) with gates from :func:`rule_gates`;
    ``SelectiveMemory(tokens, gates)`` takes ``T`` display strings and ``(T,)`` gates (a list, array or
    tensor; ``Delta_t = delta_scale * gates[t]``; pass ``delta_scale=1`` to give the step sizes of a
    trained model as they are). ``decay_rates`` are the ``A_n`` (default ``[-1, -2, -3, -4]``,
    :func:`s4d_real_decay_rates`), ``selective`` the switch (``False``: every ``Delta_t`` is
    ``delta_scale``), ``query`` the position ``t`` (default: the last token), ``dimension`` the state
    dimension shown (``-1``: the average over all).

    The reader clicks a token to make it the query, switches between selective and time-invariant,
    moves the Delta scale (a logarithmic slider) and picks a state dimension. Every token before the
    query shows, as a bar, the fraction of its weight that is left (on a logarithmic axis,
    :func:`bar_height`: 1% half way up); tokens below 1% are greyed, and the memory horizon is
    marked. A chart shows ``Delta_t`` along the sequence (the steps that erode a hovered token
    highlighted), another the survival on a logarithmic axis with the 1% line.
    """

    _esm = pathlib.Path(__file__).with_name("selective_memory.js")
    _css = pathlib.Path(__file__).with_name("selective_memory.css")

    tokens = traitlets.List(traitlets.Unicode(), DEFAULT_TOKENS).tag(sync=True)
    gates = traitlets.List(traitlets.Float(), rule_gates(DEFAULT_TOKENS)).tag(sync=True)
    decay_rates = traitlets.List(traitlets.Float(), s4d_real_decay_rates()).tag(sync=True)
    delta_scale = traitlets.Float(DEFAULT_SCALE).tag(sync=True)
    selective = traitlets.Bool(True).tag(sync=True)
    query = traitlets.Int(len(DEFAULT_TOKENS) - 1).tag(sync=True)
    dimension = traitlets.Int(-1).tag(sync=True)

    def __init__(self, tokens: Sequence[str] | None = None, gates: Any = None, *, decay_rates: Any = None,
                 delta_scale: float = DEFAULT_SCALE, selective: bool = True, query: int | None = None,
                 dimension: int = -1, **kwargs):
        # plain arguments are checked here, with ValueError / TypeError; later changes by the traits
        if tokens is None:
            if gates is not None:
                raise ValueError("gates were given without their tokens: pass tokens too")
            tokens = DEFAULT_TOKENS
        tokens = _check_tokens(tokens)
        gates = rule_gates(tokens) if gates is None else _check_gates(gates, len(tokens))
        rates = s4d_real_decay_rates() if decay_rates is None else _check_rates(decay_rates)
        query = len(tokens) - 1 if query is None else _check_query(query, len(tokens))
        super().__init__(tokens=tokens, gates=gates, decay_rates=rates, delta_scale=_check_scale(delta_scale),
                         selective=_bool("selective", selective), query=query,
                         dimension=_check_dimension(dimension, len(rates)), **kwargs)

    # ---------------------------------------------------------------------------- validation
    # Each trait is checked against the others as they are: to change several together (a new
    # sequence), set them inside ``with widget.hold_trait_notifications():``, or use set_sequence().
    @traitlets.validate("tokens")
    def _valid_tokens(self, proposal):
        def check(value):
            tokens = _check_tokens(value)
            _check_gates(self.gates, len(tokens))
            _check_query(self.query, len(tokens))
            return tokens
        return checked(proposal, check)

    @traitlets.validate("gates")
    def _valid_gates(self, proposal):
        return checked(proposal, lambda value: _check_gates(value, len(self.tokens)))

    @traitlets.validate("decay_rates")
    def _valid_rates(self, proposal):
        def check(value):
            rates = _check_rates(value)
            _check_dimension(self.dimension, len(rates))
            return rates
        return checked(proposal, check)

    @traitlets.validate("delta_scale")
    def _valid_scale(self, proposal):
        return checked(proposal, _check_scale)

    @traitlets.validate("selective")
    def _valid_selective(self, proposal):
        return checked(proposal, lambda value: _bool("selective", value))

    @traitlets.validate("query")
    def _valid_query(self, proposal):
        return checked(proposal, lambda value: _check_query(value, len(self.tokens)))

    @traitlets.validate("dimension")
    def _valid_dimension(self, proposal):
        return checked(proposal, lambda value: _check_dimension(value, len(self.decay_rates)))

    def set_sequence(self, tokens: Sequence[str], gates: Any = None, query: int | None = None) -> None:
        """Replace the tokens and their gates together (``None``: :func:`rule_gates`); ``query``
        defaults to the last token."""
        tokens = _check_tokens(tokens)
        gates = rule_gates(tokens) if gates is None else _check_gates(gates, len(tokens))
        query = len(tokens) - 1 if query is None else _check_query(query, len(tokens))
        with self.hold_sync(), self.hold_trait_notifications():  # one message to the front end
            self.tokens, self.gates, self.query = tokens, gates, query

    # ------------------------------------------------------------------------------- reading
    def deltas(self) -> list[float]:
        """:func:`step_sizes` at the current state: ``Delta_t`` of every token, ``(T,)``."""
        return step_sizes(self.gates, self.delta_scale, self.selective)

    def survival(self) -> list[float]:
        """:func:`survival` at the current state: what each token ``0 .. query`` keeps at the query."""
        return survival(self.deltas(), self.decay_rates, self.query, self.dimension)

    def horizon(self) -> int | None:
        """:func:`memory_horizon` at the current state."""
        return memory_horizon(self.deltas(), self.decay_rates, self.query, self.dimension)

    def __repr__(self) -> str:  # stable: stored notebook outputs must not hold an address
        return (f"SelectiveMemory(tokens={len(self.tokens)}, state_size={len(self.decay_rates)}, "
                f"delta_scale={self.delta_scale!r}, selective={self.selective}, query={self.query}, "
                f"dimension={self.dimension})")
