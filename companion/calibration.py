"""Calibration: does a model's confidence match how often it is right?

A classifier is *calibrated* when, among the predictions it makes with confidence ``c``, a fraction
``c`` is correct. Guo et al. (2017, "On Calibration of Modern Neural Networks") measure this with a
reliability diagram: sort the predictions into ``n_bins`` equal-width bins of confidence
``B_m = ((m - 1) / M, m / M]`` (confidence = the largest predicted probability; the lowest bin also
takes 0), and compare in each bin the accuracy ``acc(B_m)`` with the mean confidence ``conf(B_m)``::

    ECE = sum_m |B_m| / N * |acc(B_m) - conf(B_m)|       (Naeini et al. 2015; Guo et al. 2017)

(the ``"maximum"`` variant takes the largest gap instead). The classwise ECE (Kull et al. 2019)
asks the same of every class's probability, not only of the top one. The Brier score (Brier 1950)
is the mean squared distance between the probability vector and the one-hot label. Temperature
scaling (Guo et al. 2017) divides a trained model's logits by one number ``T``, fitted to minimise
the negative log-likelihood on held-out data: it changes no prediction, only the confidences.

All functions take ``probs`` ``(n, classes)`` (rows summing to 1) or ``logits`` ``(n, classes)``,
and ``labels`` ``(n,)`` as torch tensors or NumPy arrays, and check them: a wrong shape, a row that
does not sum to 1, or a label out of range raises a ``ValueError``; a non-numeric input a
``TypeError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SUM_TOLERANCE = 1e-4  # how far a row of probabilities may sum from 1


@dataclass(frozen=True)
class ReliabilityBins:
    """A reliability diagram's numbers: ``n_bins`` equal-width bins of confidence on ``[0, 1]``.

    ``edges`` ``(n_bins + 1,)``; ``counts``, ``accuracy`` and ``confidence`` ``(n_bins,)``
    (accuracy and mean confidence are NaN in an empty bin). All float64 except ``counts`` (int64).
    """

    edges: torch.Tensor
    counts: torch.Tensor
    accuracy: torch.Tensor
    confidence: torch.Tensor

    @property
    def gaps(self) -> torch.Tensor:
        """``|accuracy - confidence|`` per bin (NaN in an empty bin)."""
        return (self.accuracy - self.confidence).abs()

    def expected_error(self) -> float:
        """``sum_m counts_m / N * gap_m``: the expected calibration error of these bins."""
        filled = self.counts > 0
        return float((self.counts[filled].double() * self.gaps[filled]).sum() / self.counts.sum())

    def maximum_error(self) -> float:
        """The largest gap over non-empty bins (the maximum calibration error)."""
        return float(self.gaps[self.counts > 0].max())


def _as_tensor(name: str, value: object) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold numbers, got a NumPy array of {value.dtype}")
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if value.is_complex():
        raise TypeError(f"{name} must hold real numbers, got {value.dtype}")
    return value.detach().cpu()


def _check_labels(labels: object, n: int, classes: int) -> torch.Tensor:
    labels = _as_tensor("labels", labels)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the {n} predictions, got {tuple(labels.shape)}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got [{int(labels.min())}, {int(labels.max())}]")
    return labels.long()


def _check_scores(name: str, value: object) -> torch.Tensor:
    scores = _as_tensor(name, value)
    if not scores.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {scores.dtype}")
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 2:
        raise ValueError(f"{name} must have shape (n >= 1, classes >= 2), got {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError(f"{name} must be finite")
    return scores.double()


def check_probabilities(probs: object, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``probs`` ``(n, classes)`` and ``labels`` ``(n,)`` as float64 and int64 tensors, validated.

    Args:
        probs: predicted probabilities, each row in ``[0, 1]`` and summing to 1 (within 1e-4).
        labels: the true classes, integers in ``[0, classes)``.

    Returns:
        ``(probs, labels)`` as CPU tensors.

    Raises:
        TypeError: an input is not a tensor or array of numbers of the right kind.
        ValueError: wrong shapes, probabilities outside ``[0, 1]`` or rows not summing to 1,
            labels out of range.
    """
    probs = _check_scores("probs", probs)
    if (probs < -SUM_TOLERANCE).any() or (probs > 1 + SUM_TOLERANCE).any():
        raise ValueError(f"probs must lie in [0, 1], got [{float(probs.min()):.6g}, {float(probs.max()):.6g}]")
    worst = float((probs.sum(dim=1) - 1).abs().max())
    if worst > SUM_TOLERANCE:
        raise ValueError(f"each row of probs must sum to 1 (within {SUM_TOLERANCE}); the worst is off by {worst:.3g}")
    return probs, _check_labels(labels, probs.shape[0], probs.shape[1])


def _check_n_bins(n_bins: object) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int):
        raise TypeError(f"n_bins must be an int, got {type(n_bins).__name__}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be positive, got {n_bins}")
    return n_bins


def _bins(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int) -> ReliabilityBins:
    """Bin ``confidence`` ``(n,)`` with outcomes ``correct`` ``(n,)`` (0/1) into ``((m-1)/M, m/M]``."""
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    confidence = confidence.contiguous()
    index = torch.bucketize(confidence, edges[1:-1], right=False)  # edges[m-1] < c <= edges[m]; 0 -> bin 0
    counts = torch.bincount(index, minlength=n_bins)
    sums = torch.zeros(n_bins, dtype=torch.float64)
    hits = torch.zeros(n_bins, dtype=torch.float64)
    sums.index_add_(0, index, confidence)
    hits.index_add_(0, index, correct.double())
    filled = counts.double()
    nan = torch.full((n_bins,), float("nan"), dtype=torch.float64)
    return ReliabilityBins(edges=edges, counts=counts,
                           accuracy=torch.where(counts > 0, hits / filled.clamp_min(1), nan),
                           confidence=torch.where(counts > 0, sums / filled.clamp_min(1), nan))


def reliability_bins(probs: object, labels: object, n_bins: int = 15) -> ReliabilityBins:
    """Top-label reliability diagram: accuracy and mean confidence per bin of confidence.

    The confidence of a prediction is its largest probability, and it is correct when that class
    (the first, in a tie) is the label. Bin ``m`` of ``M = n_bins`` holds the confidences in
    ``((m - 1) / M, m / M]`` (Guo et al. 2017).

    Args:
        probs: predicted probabilities ``(n, classes)``.
        labels: true classes ``(n,)``.
        n_bins: the number of equal-width bins on ``[0, 1]`` (15 in Guo et al. 2017).

    Returns:
        A :class:`ReliabilityBins`.
    """
    n_bins = _check_n_bins(n_bins)
    probs, labels = check_probabilities(probs, labels)
    confidence, predicted = probs.max(dim=1)
    return _bins(confidence, predicted == labels, n_bins)


def expected_calibration_error(probs: object, labels: object, n_bins: int = 15, *, kind: str = "expected") -> float:
    """The (top-label) expected calibration error ``sum_m |B_m| / N * |acc(B_m) - conf(B_m)|``.

    0 for a perfectly calibrated predictor (up to sampling noise: with finitely many predictions
    per bin the measured gap is rarely exactly 0). ``kind="maximum"`` gives the maximum calibration
    error ``max_m |acc(B_m) - conf(B_m)|`` over non-empty bins instead (Naeini et al. 2015).

    Args:
        probs: predicted probabilities ``(n, classes)``.
        labels: true classes ``(n,)``.
        n_bins: the number of equal-width bins of confidence.
        kind: ``"expected"`` or ``"maximum"``.

    Returns:
        The error, in ``[0, 1]``.
    """
    if kind not in ("expected", "maximum"):
        raise ValueError(f"kind must be 'expected' or 'maximum', got {kind!r}")
    bins = reliability_bins(probs, labels, n_bins)
    return bins.expected_error() if kind == "expected" else bins.maximum_error()


def classwise_calibration_error(probs: object, labels: object, n_bins: int = 15) -> float:
    """The classwise ECE (Kull et al. 2019): the mean over classes ``k`` of the binned error of ``p_k``.

    For each class ``k``, every prediction's probability ``p_k`` is binned as a confidence and its
    outcome is whether the label is ``k``; the class's error is ``sum_m |B_m| / N * |freq(B_m) -
    conf(B_m)|``, and the result is the average over the classes. Unlike the top-label ECE it also
    checks the probabilities of the classes that were not predicted.

    Args:
        probs: predicted probabilities ``(n, classes)``.
        labels: true classes ``(n,)``.
        n_bins: the number of equal-width bins on ``[0, 1]``.

    Returns:
        The error, in ``[0, 1]``.
    """
    n_bins = _check_n_bins(n_bins)
    probs, labels = check_probabilities(probs, labels)
    classes = probs.shape[1]
    errors = [_bins(probs[:, k], labels == k, n_bins).expected_error() for k in range(classes)]
    return sum(errors) / classes


def brier_score(probs: object, labels: object) -> float:
    """The multi-class Brier score (Brier 1950): ``mean_i sum_k (p_ik - [y_i = k])^2``.

    0 for certain and correct predictions, 2 for certain and wrong ones; ``1 - 1/classes`` for the
    uniform prediction.

    Args:
        probs: predicted probabilities ``(n, classes)``.
        labels: true classes ``(n,)``.

    Returns:
        The score, in ``[0, 2]``.
    """
    probs, labels = check_probabilities(probs, labels)
    onehot = torch.zeros_like(probs).scatter_(1, labels[:, None], 1.0)
    return float(((probs - onehot) ** 2).sum(dim=1).mean())


def negative_log_likelihood(logits: object, labels: object, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against ``labels``.

    Args:
        logits: unnormalised scores ``(n, classes)``.
        labels: true classes ``(n,)``.
        temperature: a positive number dividing the logits.

    Returns:
        The mean negative log-likelihood in nats.
    """
    logits = _check_scores("logits", logits)
    labels = _check_labels(labels, logits.shape[0], logits.shape[1])
    temperature = _check_temperature("temperature", temperature)
    return _nll(logits, labels, math.log(temperature))


def _check_temperature(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return float(value)


def _nll(logits: torch.Tensor, labels: torch.Tensor, log_t: float) -> float:
    scaled = logits * math.exp(-log_t)
    return float((torch.logsumexp(scaled, dim=1) - scaled.gather(1, labels[:, None])[:, 0]).mean())


def fit_temperature(logits: object, labels: object, *, bounds: tuple[float, float] = (0.05, 20.0),
                    tolerance: float = 1e-6) -> float:
    """The temperature ``T`` that minimises the negative log-likelihood of ``softmax(logits / T)``.

    Temperature scaling (Guo et al. 2017). The NLL is a convex function of ``1 / T`` (a log-sum-exp
    minus a linear term), hence unimodal in ``log T``, so a golden-section search over ``log T`` in
    ``bounds`` finds the minimum to within ``tolerance`` (relative, in ``T``); deterministic, no
    learning rate to tune. A minimum at a bound means the best ``T`` lies at or beyond it.
    ``T > 1`` softens an overconfident model, ``T < 1`` sharpens an underconfident one; the argmax,
    and so the accuracy, never changes.

    Args:
        logits: unnormalised scores ``(n, classes)`` on held-out data.
        labels: true classes ``(n,)``.
        bounds: the search interval ``(low, high)`` for ``T``, ``0 < low < high``.
        tolerance: the relative precision of ``T`` (positive).

    Returns:
        The fitted temperature.
    """
    logits = _check_scores("logits", logits)
    labels = _check_labels(labels, logits.shape[0], logits.shape[1])
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(f"bounds must be a pair (low, high), got {bounds!r}")
    low, high = (_check_temperature("bounds", b) for b in bounds)
    if low >= high:
        raise ValueError(f"bounds must satisfy low < high, got {bounds!r}")
    tolerance = _check_temperature("tolerance", tolerance)
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2  # 1 / golden ratio
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _nll(logits, labels, c), _nll(logits, labels, d)
    while b - a > tolerance:
        if fc <= fd:  # the minimum lies in [a, d]
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _nll(logits, labels, c)
        else:  # in [c, b]
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _nll(logits, labels, d)
    return math.exp((a + b) / 2)
