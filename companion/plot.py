"""The book's figure style: one look for every figure, and helpers for the figures that recur.

Use ``fig, ax = plot.figure()`` (or ``plot.figure(1, 2)`` for side-by-side panels) instead of
``plt.subplots``; the style is applied on import of this module and again by ``figure``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from companion.train import History

# A colour-blind-safe palette (after Okabe and Ito, 2008), named by role in the book.
PALETTE = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "green": "#009E73",
    "red": "#D55E00",
    "purple": "#CC79A7",
    "sky": "#56B4E9",
    "yellow": "#F0E442",
    "grey": "#7F7F7F",
}
# Roles: attention is always blue, recurrence/linear-time mixers orange, references grey.
ATTENTION = PALETTE["blue"]
LINEAR = PALETTE["orange"]
REFERENCE = PALETTE["grey"]

STYLE = {
    "figure.figsize": (6.4, 3.8),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "figure.constrained_layout.use": True,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.8,
    "lines.markersize": 5,
    "legend.frameon": False,
    "legend.fontsize": 9,
    "axes.prop_cycle": mpl.cycler(color=list(PALETTE.values())),
    "svg.hashsalt": "attention-and-beyond",  # stable ids in SVG output
}


def apply_style() -> None:
    """Set the book's matplotlib defaults (idempotent)."""
    mpl.rcParams.update(STYLE)


def figure(nrows: int = 1, ncols: int = 1, *, width: float | None = None,
           height: float | None = None, **kwargs):
    """A new figure in the book's style: returns ``(fig, ax)`` or ``(fig, axes)`` like ``plt.subplots``.

    The default size is 6.4 x 3.8 inches for one panel; wider for several columns.
    """
    apply_style()
    if nrows < 1 or ncols < 1:
        raise ValueError(f"expected nrows >= 1 and ncols >= 1, got {nrows} and {ncols}")
    width = width if width is not None else min(4.2 * ncols, 13.0) if ncols > 1 else 6.4
    height = height if height is not None else 3.6 * nrows if nrows > 1 else 3.8
    return plt.subplots(nrows, ncols, figsize=(width, height), **kwargs)


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start), same length as input."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) == 0:
        return values
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (cumulative[idx] - cumulative[lo]) / (idx - lo)


def plot_history(history: "History", ax=None, *, label: str | None = None, color: str | None = None,
                 metric: str = "loss", smoothing: int = 20):
    """Draw a training run: the (smoothed) training curve as a line, evaluations as dots.

    ``metric="loss"`` draws training and evaluation loss; any other name draws that evaluation
    metric from ``history.eval_metrics``. Returns the axes.
    """
    if ax is None:
        _, ax = figure()
    name = label or history.name or "run"
    if metric == "loss":
        line, = ax.plot(history.steps, smooth(history.train_loss, smoothing), color=color,
                        label=f"{name} (train)")
        color = line.get_color()
        if history.eval_steps and "loss" in history.eval_metrics:
            ax.plot(history.eval_steps, history.eval_metrics["loss"], "o--", color=color,
                    markersize=4, linewidth=1.0, label=f"{name} (eval)")
        ax.set_ylabel("loss")
    else:
        if metric not in history.eval_metrics:
            raise ValueError(f"history has no evaluation metric {metric!r}; it has {sorted(history.eval_metrics)}")
        ax.plot(history.eval_steps, history.eval_metrics[metric], "o-", color=color, label=name)
        ax.set_ylabel(metric)
    ax.set_xlabel("training step")
    return ax


def log_log(ax, xs: Iterable[float], ys: Iterable[float], *, label: str, color: str | None = None,
            marker: str = "o", **kwargs):
    """Plot ``ys`` against ``xs`` with both axes logarithmic (the way costs against length are read)."""
    ax.plot(list(xs), list(ys), marker=marker, label=label, color=color, **kwargs)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    return ax


apply_style()
