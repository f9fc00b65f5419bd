""""The cost of a sequence": pairwise work and memory of full attention against linear-time mixers.

The formulas are counted per layer and per sequence for a model of width ``d_model``:

* full attention forms ``L x L`` scores (``L * L * d`` multiply-adds for ``QK^T``, as many for the
  weighted sum of values), so ``2 L^2 d`` in all, and if the score matrix is materialised it holds
  ``L^2`` numbers;
* a linear-time mixer with a ``d x d`` state (linear attention, Katharopoulos et al. 2020; a
  recurrent cell is the same order) does ``2 d^2`` multiply-adds per token, ``2 L d^2`` in all, and
  carries a state of ``d^2`` numbers whatever ``L`` is;
* decoding with attention keeps a key-value cache of ``2 L d`` numbers: it grows linearly, not
  quadratically.

The JavaScript in ``sequence_cost.js`` evaluates the same formulas in the browser;
:func:`sequence_costs` is the Python twin used by tests and notebooks.
"""

from __future__ import annotations

import pathlib

import anywidget
import traitlets


def sequence_costs(length: int, d_model: int = 512, bytes_per_value: int = 2) -> dict[str, float]:
    """Multiply-adds and bytes for one layer at sequence length ``length`` (see the module docstring)."""
    for name, value in (("length", length), ("d_model", d_model), ("bytes_per_value", bytes_per_value)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    L, d, b = length, d_model, bytes_per_value
    return {
        "attention_ops": 2.0 * L * L * d,
        "linear_ops": 2.0 * L * d * d,
        "attention_scores_bytes": float(L * L * b),
        "kv_cache_bytes": float(2 * L * d * b),
        "linear_state_bytes": float(d * d * b),
    }


class SequenceCost(anywidget.AnyWidget):
    """A length slider (log scale) with the cost of full attention and of a linear-time mixer.

    ``SequenceCost(length=4096, d_model=512)``. Moving the slider sets ``length``; choosing a width
    sets ``d_model``; the JavaScript redraws from those.
    """

    _esm = pathlib.Path(__file__).with_name("sequence_cost.js")
    _css = pathlib.Path(__file__).with_name("sequence_cost.css")

    length = traitlets.Int(4096).tag(sync=True)
    d_model = traitlets.Int(512).tag(sync=True)
    bytes_per_value = traitlets.Int(2).tag(sync=True)
    min_log2 = traitlets.Int(6).tag(sync=True)
    max_log2 = traitlets.Int(20).tag(sync=True)

    @traitlets.validate("length", "d_model", "bytes_per_value")
    def _positive(self, proposal):
        value = proposal["value"]
        if value < 1:
            raise traitlets.TraitError(f"{proposal['trait'].name} must be a positive int, got {value}")
        return value

    def costs(self) -> dict[str, float]:
        """The numbers the widget shows for its current state."""
        return sequence_costs(self.length, self.d_model, self.bytes_per_value)

    def __repr__(self) -> str:  # stable: stored notebook outputs must not hold an address
        return f"SequenceCost(length={self.length}, d_model={self.d_model}, bytes_per_value={self.bytes_per_value})"
