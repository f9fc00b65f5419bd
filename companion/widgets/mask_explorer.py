"""Mask explorer: which query may attend to which key, for the masks a transformer uses.

A mask is a ``length x length`` grid of booleans: row ``i`` is a query, column ``j`` a key, True
where query ``i`` may attend key ``j``. Before the softmax every False score is set to ``-inf``, so
that its weight is exactly 0. The kinds (``KINDS``):

``"causal"``
    a decoder: query ``i`` sees keys ``j <= i``, never the future (Vaswani et al. 2017; GPT).
``"causal + padding"``
    causal, and the ``padding`` pad positions (a short sequence in a batch, filled up to the
    batch's length) are masked as keys for every query. With ``padding_side="right"`` the pads come
    last: a pad query still sees the real tokens before it, and its output is simply ignored. With
    ``padding_side="left"`` they come first, and a pad query sees only pads, all masked: **a fully
    masked row**. Its scores are all ``-inf``, and the softmax of all ``-inf`` is ``0 / 0 = NaN``,
    which then spreads through every later layer ("the fully-masked-row trap").
``"sliding window"``
    causal, and only the last ``window = W`` keys: ``i - W < j <= i`` (Mistral, Jiang et al. 2023).
``"prefix-LM"``
    the first ``prefix = P`` positions see one another in both directions (``i, j < P``); later
    positions are causal (T5's prefix LM, Raffel et al. 2020).
``"bidirectional"``
    every query sees every key: an encoder (BERT, Devlin et al. 2019).
``"bidirectional + padding"``
    an encoder's padding mask: every query sees every real key, the pads are masked as keys. No row
    is fully masked unless every position is a pad.

The JavaScript in ``mask_explorer.js`` computes the same grid in the browser (``maskMatrix``) and
writes the same readout (``describeQuery``); :func:`mask_matrix` and :func:`describe_query` are its
Python twins. For ``"causal"`` and ``"sliding window"`` the twin is
:func:`companion.kernels.attention_mask`, the mask the book's attention kernel applies.
"""

from __future__ import annotations

import pathlib

import anywidget
import traitlets

KINDS = ("causal", "causal + padding", "sliding window", "prefix-LM", "bidirectional", "bidirectional + padding")
SIDES = ("left", "right")
MAX_LENGTH = 32  # the grid must stay readable

# One line per kind, shown under the widget's controls (the same text is in mask_explorer.js).
KIND_DESCRIPTIONS = {
    "causal": "A decoder: query i sees keys j \u2264 i, never the future.",
    "causal + padding": "Causal, and the pad positions are masked as keys for every query. "
                        "With left padding the first queries see no key at all.",
    "sliding window": "Causal, and only the last W keys: i \u2212 W < j \u2264 i.",
    "prefix-LM": "The first P positions see one another in both directions; later positions are causal.",
    "bidirectional": "An encoder: every query sees every key.",
    "bidirectional + padding": "An encoder's padding mask: every query sees every real key; "
                               "the pad positions are masked as keys.",
}


def _nonnegative(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def pad_positions(length: int, padding: int, padding_side: str = "right") -> list[bool]:
    """``[is_pad(j) for j in range(length)]``: the last ``padding`` positions ("right") or the first
    ("left"); ``padding >= length`` makes every position a pad."""
    _nonnegative("length", length, 1)
    _nonnegative("padding", padding)
    if padding_side not in SIDES:
        raise ValueError(f"padding_side must be one of {SIDES}, got {padding_side!r}")
    pads = min(padding, length)
    if padding_side == "right":
        return [j >= length - pads for j in range(length)]
    return [j < pads for j in range(length)]


def mask_matrix(kind: str, length: int, *, window: int = 4, prefix: int = 4, padding: int = 3,
                padding_side: str = "right") -> list[list[bool]]:
    """The mask of ``kind`` (see the module docstring) as ``length`` rows (queries) of ``length``
    booleans (keys): True where the query may attend the key.

    ``window`` is used by "sliding window" only, ``prefix`` by "prefix-LM" only, ``padding`` and
    ``padding_side`` by the two "+ padding" kinds only. The Python twin of ``maskMatrix`` in
    mask_explorer.js; "causal" and "sliding window" come from
    :func:`companion.kernels.attention_mask`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    _nonnegative("length", length, 1)
    _nonnegative("window", window, 1)
    _nonnegative("prefix", prefix)
    pads = pad_positions(length, padding, padding_side)
    if kind in ("causal", "causal + padding", "sliding window"):
        from companion.kernels import attention_mask

        mask = attention_mask(length, length, causal=True, window=window if kind == "sliding window" else None).tolist()
    elif kind == "prefix-LM":
        mask = [[j <= i or (i < prefix and j < prefix) for j in range(length)] for i in range(length)]
    else:  # bidirectional
        mask = [[True] * length for _ in range(length)]
    if kind.endswith("+ padding"):
        mask = [[allowed and not pads[j] for j, allowed in enumerate(row)] for row in mask]
    return mask


def visible_keys(mask: list[list[bool]], query: int) -> list[int]:
    """The keys ``query`` may attend to in ``mask``, in order."""
    return [j for j, allowed in enumerate(mask[query]) if allowed]


def fully_masked_rows(mask: list[list[bool]]) -> list[int]:
    """The queries that see no key: their softmax is ``0 / 0 = NaN``."""
    return [i for i, row in enumerate(mask) if not any(row)]


def describe_query(mask: list[list[bool]], query: int) -> str:
    """The widget's readout for ``query``: "query 3 sees keys [0, 1, 2, 3]", or, for a fully masked
    row, "query 0 sees no key: softmax of all -inf is NaN". Twin of ``describeQuery`` in the JS."""
    keys = visible_keys(mask, query)
    if not keys:
        return f"query {query} sees no key: softmax of all -inf is NaN"
    return f"query {query} sees keys [{', '.join(str(j) for j in keys)}]"


class MaskExplorer(anywidget.AnyWidget):
    """A ``length x length`` grid of which query sees which key, for one mask ``kind``.

    ``MaskExplorer(kind="causal", length=12, window=4, prefix=4, padding=3, padding_side="right",
    query=None)``; ``query=None`` selects the last position. The reader chooses the kind, the
    length, the window ``W``, the prefix ``P``, the padding and its side, and clicks a row to
    select a query; fully masked rows are outlined in red. ``window``, ``prefix`` and ``padding``
    are at most ``length``; lowering ``length`` lowers them (and ``query``) with it.
    """

    _esm = pathlib.Path(__file__).with_name("mask_explorer.js")
    _css = pathlib.Path(__file__).with_name("mask_explorer.css")

    kind = traitlets.Unicode("causal").tag(sync=True)
    length = traitlets.Int(12).tag(sync=True)
    window = traitlets.Int(4).tag(sync=True)
    prefix = traitlets.Int(4).tag(sync=True)
    padding = traitlets.Int(3).tag(sync=True)
    padding_side = traitlets.Unicode("right").tag(sync=True)
    query = traitlets.Int(11).tag(sync=True)
    max_length = traitlets.Int(MAX_LENGTH, read_only=True).tag(sync=True)

    def __init__(self, kind: str = "causal", length: int = 12, window: int = 4, prefix: int = 4, padding: int = 3,
                 padding_side: str = "right", query: int | None = None, **kwargs):
        if query is None:
            query = length - 1 if isinstance(length, int) and not isinstance(length, bool) else 0
        super().__init__(kind=kind, length=length, window=window, prefix=prefix, padding=padding,
                         padding_side=padding_side, query=query, **kwargs)

    # ---------------------------------------------------------------------------- validation
    @traitlets.validate("kind")
    def _valid_kind(self, proposal):
        if proposal["value"] not in KINDS:
            raise traitlets.TraitError(f"kind must be one of {KINDS}, got {proposal['value']!r}")
        return proposal["value"]

    @traitlets.validate("padding_side")
    def _valid_side(self, proposal):
        if proposal["value"] not in SIDES:
            raise traitlets.TraitError(f"padding_side must be one of {SIDES}, got {proposal['value']!r}")
        return proposal["value"]

    def _in_range(self, proposal, low: int, high: int):
        value, name = proposal["value"], proposal["trait"].name
        if isinstance(value, bool):
            raise traitlets.TraitError(f"{name} must be an int, got {value!r}")
        if not low <= value <= high:
            raise traitlets.TraitError(f"{name} must be in {low}..{high}, got {value}")
        return value

    @traitlets.validate("length")
    def _valid_length(self, proposal):
        return self._in_range(proposal, 1, MAX_LENGTH)

    @traitlets.validate("window")
    def _valid_window(self, proposal):
        return self._in_range(proposal, 1, self.length)

    @traitlets.validate("prefix", "padding")
    def _valid_up_to_length(self, proposal):
        return self._in_range(proposal, 0, self.length)

    @traitlets.validate("query")
    def _valid_query(self, proposal):
        return self._in_range(proposal, 0, self.length - 1)

    @traitlets.observe("length")
    def _shrink_with_length(self, change):
        with self.hold_trait_notifications():
            for name, top in (("query", self.length - 1), ("window", self.length), ("prefix", self.length),
                              ("padding", self.length)):
                if getattr(self, name) > top:
                    setattr(self, name, top)

    # ------------------------------------------------------------------------------- reading
    def mask(self) -> list[list[bool]]:
        """The grid the widget draws: :func:`mask_matrix` for the current state."""
        return mask_matrix(self.kind, self.length, window=self.window, prefix=self.prefix, padding=self.padding,
                           padding_side=self.padding_side)

    def readout(self) -> str:
        """What the readout says for the selected query (:func:`describe_query`)."""
        return describe_query(self.mask(), self.query)

    def __repr__(self) -> str:  # stable: stored notebook outputs must not hold an address
        return (f"MaskExplorer(kind={self.kind!r}, length={self.length}, window={self.window}, prefix={self.prefix}, "
                f"padding={self.padding}, padding_side={self.padding_side!r}, query={self.query})")
