"""RoPE dial: how far each rotary pair has turned at a position, and what the scalings change.

Rotary position embeddings (RoPE; Su et al. 2021, "RoFormer") split a query or key of ``head_dim``
coordinates into ``head_dim / 2`` pairs and rotate pair ``i`` by the angle ``position * theta_i``,
with the frequency ``theta_i = base ** (-2 i / head_dim)`` (``i = 0 .. head_dim/2 - 1``). Pair 0
turns by one radian per token, a wavelength of ``2 pi`` tokens; the last pair turns so slowly that
its wavelength is tens of thousands of tokens. A model trained on ``original_context`` positions
has seen pair ``i`` turn from 0 up to ``original_context * theta_i``: its *trained range*. The
scalings that stretch a trained model to a longer context change the angle (``SCALINGS``):

``"none"``
    ``angle = position * theta_i``: past the trained context, every pair goes past its range.
``"interpolation"``
    linear position interpolation (Chen et al. 2023, "Extending context window of large language
    models via positional interpolation"): ``angle = (position / factor) * theta_i``. Every pair
    is slowed down by the same ``factor``; ``factor * original_context`` positions fit in the
    trained ranges, but neighbouring tokens are ``factor`` times closer than in training.
``"ntk"``
    NTK-aware scaling (bloc97 2023, on Reddit): the base becomes ``base * factor ** (head_dim /
    (head_dim - 2))`` (:func:`ntk_base`) and ``angle = position * theta'_i``. Pair 0 is untouched
    (``theta'_0 = 1``), and the slower a pair, the more it is slowed down, up to ``factor`` for the
    last pair. The factor is fixed here; :mod:`companion.nn.rope_scaling`'s (and transformers')
    ``"dynamic"`` kind computes the base ``base * (f n / L - (f - 1)) ** (head_dim / (head_dim - 2))``
    from the current length ``n``, which is this one for ``f = 1`` and ``n = factor * L``.

Interpolation is :mod:`companion.nn.rope_scaling`'s ``"linear"`` kind; tests/test_widgets.py checks
both against its ``rope_frequencies``.

For each pair the widget shows its wavelength ``2 pi / theta`` in tokens (before and after
scaling), how much the scaling slows it down (``theta_i / theta'_i``), its angle (mod 360 degrees,
and in whole turns), and a status (:func:`rotation_status`) against its trained range:

* ``"seen"``: the angle is within the trained range;
* ``"beyond"``: the angle is past the trained range, but the dial still points where it pointed
  during training (a fast pair that turned all the way round in training, or a slow one that has
  come round again): the model has seen this pair at this rotation, though never this far apart;
* ``"unseen"``: the dial points where it never pointed in training (``angle mod 2 pi`` beyond the
  trained range): a rotation the model has never seen.

The position slider is logarithmic: its value ``s`` (step 0.01) means position
``round(2 ** s - 1)`` (:func:`position_from_slider`), from 0 to ``8 * original_context`` (a little
past it: the top is ``log2(8 * original_context + 1)`` rounded up to the step); a number box beside
it takes any exact position, and the slider grows to reach it.

The JavaScript in ``rope_dial.js`` computes the same numbers in the browser; :func:`rope_angles`,
:func:`rope_frequencies`, :func:`rope_wavelengths`, :func:`trained_angles`, :func:`ntk_base`,
:func:`rotation_status` and :func:`position_from_slider` are its Python twins.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Sequence

import anywidget
import traitlets

from companion.widgets._traits import checked

SCALINGS = ("none", "interpolation", "ntk")
SCALING_NAMES = {  # how the widget's menu names them (the same text is in rope_dial.js)
    "none": "none",
    "interpolation": "position interpolation",
    "ntk": "NTK-aware",
}
STATUSES = ("seen", "beyond", "unseen")
MAX_PAIRS = 8  # dials side by side
MAX_FACTOR = 16.0
SLIDER_CONTEXTS = 8  # the position slider reaches 8 * original_context
TWO_PI = 2 * math.pi


# ------------------------------------------------------------------------------ validation
def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def _check_head_dim(head_dim: Any) -> int:
    _int("head_dim", head_dim, 4)
    if head_dim % 2:
        raise ValueError(f"head_dim must be even (the coordinates come in pairs), got {head_dim}")
    return head_dim


def _check_base(base: Any) -> float:
    if isinstance(base, bool) or not isinstance(base, (int, float)):
        raise TypeError(f"base must be a number, got {base!r}")
    if not (math.isfinite(base) and base > 1):
        raise ValueError(f"base must be a finite number > 1, got {base!r}")
    return float(base)


def _check_factor(factor: Any) -> float:
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise TypeError(f"factor must be a number, got {factor!r}")
    if not 1 <= factor <= MAX_FACTOR:
        raise ValueError(f"factor must be in 1..{MAX_FACTOR:g}, got {factor!r}")
    return float(factor)


def _check_scaling(scaling: Any) -> str:
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    return scaling


def _check_pairs(pairs: Any, head_dim: int, most: int | None = None) -> list[int]:
    """A list of distinct pair indices in ``0 .. head_dim/2 - 1``; at most ``most`` of them (the
    widget's dials; the functions take any number, ``range(head_dim // 2)`` included)."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a list of pair indices, got {type(pairs).__name__}")
    pairs = list(pairs)
    for i in pairs:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"pairs must be ints, got {i!r}")
    if not pairs:
        raise ValueError("pairs must hold at least one pair index, got none")
    if most is not None and len(pairs) > most:
        raise ValueError(f"pairs must hold 1 to {most} pair indices (one dial each), got {len(pairs)}")
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"pairs must be distinct, got {pairs}")
    for i in pairs:
        if not 0 <= i < head_dim // 2:
            raise ValueError(f"pairs must be in 0..{head_dim // 2 - 1} (head_dim {head_dim} has {head_dim // 2} "
                             f"pairs), got {i}")
    return pairs


# ------------------------------------------------------------------------------ the twins
def ntk_base(base: float, head_dim: int, factor: float) -> float:
    """NTK-aware scaling's base: ``base * factor ** (head_dim / (head_dim - 2))`` (bloc97 2023).

    The exponent makes the slowest pair, ``i = head_dim/2 - 1``, exactly ``factor`` times slower,
    while pair 0 (``theta_0 = base' ** 0 = 1``) is unchanged.
    """
    _check_base(base)
    _check_head_dim(head_dim)
    _check_factor(factor)
    return base * factor ** (head_dim / (head_dim - 2))


def rope_frequencies(head_dim: int, base: float, pairs: Sequence[int], scaling: str = "none",
                     factor: float = 1.0) -> list[float]:
    """``theta_i`` in radians per token for each pair index ``i`` in ``pairs``, after ``scaling``.

    ``"none"``: ``base ** (-2 i / head_dim)``; ``"interpolation"``: that divided by ``factor``;
    ``"ntk"``: ``ntk_base(base, head_dim, factor) ** (-2 i / head_dim)``.
    """
    _check_head_dim(head_dim)
    base = _check_base(base)
    pairs = _check_pairs(pairs, head_dim)
    _check_scaling(scaling)
    factor = _check_factor(factor)
    if scaling == "ntk":
        base = ntk_base(base, head_dim, factor)
    thetas = [base ** (-2 * i / head_dim) for i in pairs]
    if scaling == "interpolation":
        thetas = [theta / factor for theta in thetas]
    return thetas


def rope_angles(position: int, head_dim: int, base: float, pairs: Sequence[int], scaling: str = "none",
                factor: float = 1.0) -> list[float]:
    """The angle in radians (not reduced mod ``2 pi``) by which each pair in ``pairs`` is rotated at
    ``position``: ``position * theta_i``; with ``"interpolation"``, ``(position / factor) * theta_i``;
    with ``"ntk"``, ``position * theta'_i`` (see the module docstring). The twin of ``ropeAngles``."""
    _int("position", position, 0)
    _check_head_dim(head_dim)
    base = _check_base(base)
    pairs = _check_pairs(pairs, head_dim)
    _check_scaling(scaling)
    factor = _check_factor(factor)
    if scaling == "interpolation":
        return [(position / factor) * theta for theta in rope_frequencies(head_dim, base, pairs)]
    return [position * theta for theta in rope_frequencies(head_dim, base, pairs, scaling, factor)]


def rope_wavelengths(head_dim: int, base: float, pairs: Sequence[int], scaling: str = "none",
                     factor: float = 1.0) -> list[float]:
    """``2 pi / theta_i`` for each pair, after ``scaling``: the tokens it takes to turn once."""
    return [TWO_PI / theta for theta in rope_frequencies(head_dim, base, pairs, scaling, factor)]


def trained_angles(head_dim: int, base: float, pairs: Sequence[int], original_context: int) -> list[float]:
    """``original_context * theta_i``: how far each pair turned during training, whose positions went
    up to ``original_context``, with no scaling (the model was trained before it was scaled)."""
    _int("original_context", original_context, 1)
    return [original_context * theta for theta in rope_frequencies(head_dim, base, pairs)]


def rotation_status(angle: float, trained: float) -> str:
    """``"seen"`` if ``angle <= trained``; else ``"unseen"`` if the dial (``angle mod 2 pi``) points
    past the arc swept in training (``angle % (2 pi) > trained``), and ``"beyond"`` if it does not.
    A pair that turned a whole circle in training (``trained >= 2 pi``) is never ``"unseen"``."""
    if angle <= trained:
        return "seen"
    return "unseen" if angle % TWO_PI > trained else "beyond"


def position_from_slider(value: float) -> int:
    """The position the logarithmic slider means at ``value``: ``2 ** value - 1``, rounded (half up,
    as JavaScript's ``Math.round``)."""
    return math.floor(2**value - 1 + 0.5)


# ---------------------------------------------------------------------------------- widget
class RopeDial(anywidget.AnyWidget):
    """A few rotary pairs as dials at one position, under no scaling, position interpolation or
    NTK-aware scaling (see the module docstring).

    ``RopeDial(head_dim=64, base=10000.0, position=100, factor=4.0, scaling="none",
    pairs=(0, 8, 16, 31), original_context=2048)``. The reader moves the position (a logarithmic
    slider, or a number), chooses the scaling and its factor; each dial shows the trained range as
    a shaded arc, the unscaled angle as a dashed hand and the scaled angle as a solid one. A table
    gives each pair's wavelength, slow-down, angle and status, and a small chart shows the slow-down
    of every pair under both scalings: interpolation's is flat, NTK's grows from none (pair 0) to
    ``factor`` (the last pair).
    """

    _esm = pathlib.Path(__file__).with_name("rope_dial.js")
    _css = pathlib.Path(__file__).with_name("rope_dial.css")

    head_dim = traitlets.Int(64).tag(sync=True)
    base = traitlets.Float(10000.0).tag(sync=True)
    position = traitlets.Int(100).tag(sync=True)
    factor = traitlets.Float(4.0).tag(sync=True)
    scaling = traitlets.Unicode("none").tag(sync=True)
    pairs = traitlets.List(traitlets.Int(), [0, 8, 16, 31]).tag(sync=True)
    original_context = traitlets.Int(2048).tag(sync=True)

    def __init__(self, head_dim: int = 64, base: float = 10000.0, position: int = 100, factor: float = 4.0,
                 scaling: str = "none", pairs: Sequence[int] = (0, 8, 16, 31), original_context: int = 2048,
                 **kwargs):
        # plain arguments are checked here, with ValueError / TypeError; later changes by the traits
        head_dim = _check_head_dim(head_dim)
        super().__init__(head_dim=head_dim, base=_check_base(base), position=_int("position", position, 0),
                         factor=_check_factor(factor), scaling=_check_scaling(scaling),
                         pairs=_check_pairs(pairs, head_dim, MAX_PAIRS),
                         original_context=_int("original_context", original_context, 1), **kwargs)

    # ---------------------------------------------------------------------------- validation
    @traitlets.validate("head_dim")
    def _valid_head_dim(self, proposal):
        head_dim = checked(proposal, _check_head_dim)
        if self.pairs and max(self.pairs) >= head_dim // 2:
            raise traitlets.TraitError(f"head_dim {head_dim} has {head_dim // 2} pairs but pairs holds {max(self.pairs)}: "
                                       f"set pairs too, inside hold_trait_notifications()")
        return head_dim

    @traitlets.validate("base")
    def _valid_base(self, proposal):
        return checked(proposal, _check_base)

    @traitlets.validate("position")
    def _valid_position(self, proposal):
        return checked(proposal, lambda v: _int("position", v, 0))

    @traitlets.validate("factor")
    def _valid_factor(self, proposal):
        return checked(proposal, _check_factor)

    @traitlets.validate("scaling")
    def _valid_scaling(self, proposal):
        return checked(proposal, _check_scaling)

    @traitlets.validate("pairs")
    def _valid_pairs(self, proposal):
        return checked(proposal, lambda v: _check_pairs(v, self.head_dim, MAX_PAIRS))

    @traitlets.validate("original_context")
    def _valid_context(self, proposal):
        return checked(proposal, lambda v: _int("original_context", v, 1))

    # ------------------------------------------------------------------------------- reading
    def angles(self, scaling: str | None = None) -> list[float]:
        """:func:`rope_angles` at the current state (``scaling`` overrides the widget's)."""
        return rope_angles(self.position, self.head_dim, self.base, self.pairs, scaling or self.scaling, self.factor)

    def statuses(self) -> list[str]:
        """:func:`rotation_status` of every pair at the current state."""
        trained = trained_angles(self.head_dim, self.base, self.pairs, self.original_context)
        return [rotation_status(a, t) for a, t in zip(self.angles(), trained)]

    def __repr__(self) -> str:  # stable: stored notebook outputs must not hold an address
        return (f"RopeDial(head_dim={self.head_dim}, base={self.base:g}, position={self.position}, "
                f"factor={self.factor:g}, scaling={self.scaling!r}, pairs={tuple(self.pairs)}, "
                f"original_context={self.original_context})")
