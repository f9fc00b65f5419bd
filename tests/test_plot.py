"""companion.plot: the book's figure style, the trailing mean, and training-curve figures."""

import matplotlib

matplotlib.use("Agg")

import matplotlib as mpl  # noqa: E402
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from companion import plot  # noqa: E402
from companion.train import History  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def trailing_mean(values, window):
    """The mean of the last ``window`` values up to and including each index (fewer at the start)."""
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1): i + 1]
        out.append(sum(part) / len(part))
    return out


# ---------------------------------------------------------------------------------------- figure
def _same(a, b):
    return list(a) == list(b) if isinstance(b, (tuple, list)) else a == b


@pytest.fixture
def rc():
    with mpl.rc_context():
        yield mpl.rcParams


def test_figure_applies_the_style_even_after_it_was_changed(rc):
    rc["axes.spines.top"] = True
    rc["axes.grid"] = False
    rc["lines.linewidth"] = 5.0
    rc["axes.prop_cycle"] = mpl.cycler(color=["black"])
    fig, ax = plot.figure()
    for key, value in plot.STYLE.items():
        if key != "axes.prop_cycle":
            assert _same(mpl.rcParams[key], value), key
    assert not ax.spines["top"].get_visible()
    assert not ax.spines["right"].get_visible()
    assert ax.spines["left"].get_visible()
    assert tuple(fig.get_size_inches()) == pytest.approx((6.4, 3.8))
    line, = ax.plot([0, 1], [0, 1])
    assert line.get_linewidth() == pytest.approx(1.8)
    # the first colour of the cycle is the palette's first (blue: attention)
    assert mcolors.same_color(line.get_color(), plot.PALETTE["blue"])
    assert plot.ATTENTION == plot.PALETTE["blue"]


def test_figure_returns_axes_like_subplots():
    fig, axes = plot.figure(1, 2)
    assert isinstance(axes, np.ndarray) and axes.shape == (2,)
    assert tuple(fig.get_size_inches()) == pytest.approx((8.4, 3.8))
    fig, axes = plot.figure(2, 3)
    assert axes.shape == (2, 3)
    assert tuple(fig.get_size_inches()) == pytest.approx((12.6, 7.2))
    fig, axes = plot.figure(1, 5)
    assert tuple(fig.get_size_inches()) == pytest.approx((13.0, 3.8))  # capped width
    fig, ax = plot.figure(width=3.0, height=2.0)
    assert tuple(fig.get_size_inches()) == pytest.approx((3.0, 2.0))
    assert ax.figure is fig


@pytest.mark.parametrize("rows, cols", [(0, 1), (1, 0), (-1, 2)])
def test_figure_rejects_empty_grids(rows, cols):
    with pytest.raises(ValueError, match="nrows >= 1 and ncols >= 1"):
        plot.figure(rows, cols)


def test_apply_style_is_idempotent():
    plot.apply_style()
    first = {k: mpl.rcParams[k] for k in plot.STYLE}
    plot.apply_style()
    assert {k: mpl.rcParams[k] for k in plot.STYLE} == first


# ---------------------------------------------------------------------------------------- smooth
def test_smooth_on_a_small_example():
    np.testing.assert_allclose(plot.smooth([1, 2, 3, 4, 5], 2), [1.0, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(plot.smooth([3, 6, 9, 12], 3), [3.0, 4.5, 6.0, 9.0])


@pytest.mark.parametrize("window", [2, 3, 7, 50, 200])
def test_smooth_is_the_trailing_mean(window):
    values = np.random.default_rng(window).normal(size=60).tolist()
    np.testing.assert_allclose(plot.smooth(values, window), trailing_mean(values, window), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("window", [1, 0, -3])
def test_smooth_with_a_window_of_one_or_less_returns_the_values(window):
    values = [4.0, -1.0, 2.5]
    result = plot.smooth(values, window)
    assert result.shape == (3,)
    np.testing.assert_array_equal(result, values)


def test_smooth_of_nothing_is_empty():
    assert plot.smooth([], 5).shape == (0,)


# ---------------------------------------------------------------------------------- plot_history
def make_history(name="run", metrics=("loss", "accuracy")):
    rng = np.random.default_rng(0)
    history = History(name=name)
    history.steps = list(range(1, 41))
    history.train_loss = (2.0 / np.arange(1, 41) + rng.uniform(0, 0.1, 40)).tolist()
    history.eval_steps = [10, 20, 30, 40]
    for metric in metrics:
        history.eval_metrics[metric] = rng.uniform(0, 1, 4).tolist()
    return history


def test_plot_history_draws_the_smoothed_training_loss_and_the_evaluations():
    history = make_history("gru")
    ax = plot.plot_history(history, smoothing=5)
    train, evaluation = ax.get_lines()
    np.testing.assert_array_equal(train.get_xdata(), history.steps)
    np.testing.assert_allclose(train.get_ydata(), trailing_mean(history.train_loss, 5), rtol=1e-12)
    np.testing.assert_array_equal(evaluation.get_xdata(), history.eval_steps)
    np.testing.assert_array_equal(evaluation.get_ydata(), history.eval_metrics["loss"])
    assert train.get_label() == "gru (train)"
    assert evaluation.get_label() == "gru (eval)"
    assert mcolors.same_color(train.get_color(), evaluation.get_color())
    assert ax.get_xlabel() == "training step"
    assert ax.get_ylabel() == "loss"


def test_plot_history_on_given_axes_with_label_and_color():
    fig, ax = plot.figure()
    returned = plot.plot_history(make_history("x"), ax, label="mine", color=plot.PALETTE["red"])
    assert returned is ax
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["mine (train)", "mine (eval)"]
    for line in ax.get_lines():
        assert mcolors.same_color(line.get_color(), plot.PALETTE["red"])


def test_plot_history_without_evaluations_draws_one_line():
    history = make_history(metrics=())
    history.eval_steps = []
    ax = plot.plot_history(history)
    assert len(ax.get_lines()) == 1


def test_plot_history_of_another_metric():
    history = make_history()
    ax = plot.plot_history(history, metric="accuracy")
    line, = ax.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), history.eval_steps)
    np.testing.assert_array_equal(line.get_ydata(), history.eval_metrics["accuracy"])
    assert ax.get_ylabel() == "accuracy"
    assert line.get_label() == "run"


def test_plot_history_rejects_an_unknown_metric():
    with pytest.raises(ValueError, match="'perplexity'.*accuracy"):
        plot.plot_history(make_history(), metric="perplexity")


def test_log_log_sets_both_axes_logarithmic():
    fig, ax = plot.figure()
    plot.log_log(ax, (2 ** k for k in range(4, 9)), [(k + 1) ** 2 for k in range(5)], label="cost")
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.xaxis.get_transform().base == 2
    line, = ax.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), [16, 32, 64, 128, 256])
    assert line.get_label() == "cost"
