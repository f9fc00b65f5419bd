"""Calibration: reliability bins and ECE on hand-computed cases and on synthetic predictors of known
calibration, the classwise ECE, the Brier score, temperature scaling, and input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from companion.calibration import (brier_score, check_probabilities, classwise_calibration_error,
                                   expected_calibration_error, fit_temperature, negative_log_likelihood,
                                   reliability_bins)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- hand-computed cases --------------------------------------------------------------------------

def overconfident():
    """Four predictions at confidence 0.9, half right; two at 0.7, both right."""
    probs = torch.tensor([[0.9, 0.1]] * 4 + [[0.3, 0.7]] * 2)
    labels = torch.tensor([0, 0, 1, 1, 1, 1])
    return probs, labels


def test_reliability_bins_by_hand():
    bins = reliability_bins(*overconfident(), n_bins=10)
    assert bins.edges.shape == (11,) and bins.counts.dtype == torch.int64
    expected_counts = torch.zeros(10, dtype=torch.int64)
    expected_counts[8] = 4  # 0.9 lies in (0.8, 0.9]
    expected_counts[6] = 2  # 0.7 lies in (0.6, 0.7]
    assert torch.equal(bins.counts, expected_counts)
    assert bins.accuracy[8].item() == pytest.approx(0.5) and bins.confidence[8].item() == pytest.approx(0.9)
    assert bins.accuracy[6].item() == 1.0 and bins.confidence[6].item() == pytest.approx(0.7)
    empty = bins.counts == 0
    assert torch.isnan(bins.accuracy[empty]).all() and torch.isnan(bins.confidence[empty]).all()


def test_ece_by_hand():
    # 4/6 * |0.5 - 0.9| + 2/6 * |1.0 - 0.7| = 0.26667 + 0.1
    probs, labels = overconfident()
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(4 / 6 * 0.4 + 2 / 6 * 0.3)
    assert expected_calibration_error(probs, labels, n_bins=10, kind="maximum") == pytest.approx(0.4)
    # one bin: |mean accuracy - mean confidence| = |4/6 - (3.6 + 1.4) / 6|
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(abs(4 / 6 - 5 / 6))
    # the same numbers from NumPy arrays
    assert expected_calibration_error(probs.numpy(), labels.numpy(), n_bins=10) == pytest.approx(11 / 30)


def test_bins_are_closed_on_the_right():
    # confidences exactly on an edge belong to the bin below it: 0.5 -> (0.4, 0.5]; 1.0 -> (0.9, 1.0]
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    bins = reliability_bins(probs, torch.tensor([0, 0]), n_bins=10)
    assert bins.counts[4] == 1 and bins.counts[9] == 1 and bins.counts.sum() == 2


def test_a_certain_correct_predictor_has_no_error():
    probs = torch.eye(4)
    labels = torch.arange(4)
    assert expected_calibration_error(probs, labels) == 0.0
    assert classwise_calibration_error(probs, labels) == 0.0
    assert brier_score(probs, labels) == 0.0


def test_classwise_ece_by_hand():
    # class 0: p = 0.9 x4 (label 0 twice), 0.3 x2 (never) -> 4/6 * |0.5 - 0.9| + 2/6 * |0 - 0.3| = 0.36667
    # class 1: p = 0.1 x4 (label 1 twice), 0.7 x2 (always) -> 4/6 * |0.5 - 0.1| + 2/6 * |1 - 0.7| = 0.36667
    probs, labels = overconfident()
    assert classwise_calibration_error(probs, labels, n_bins=10) == pytest.approx((4 / 6 * 0.4 + 2 / 6 * 0.3 +
                                                                                   4 / 6 * 0.4 + 2 / 6 * 0.3) / 2)


def test_brier_score_by_hand():
    probs, labels = overconfident()
    # right at 0.9: 2 * 0.01; wrong at 0.9: 0.81 + 0.81; right at 0.7: 2 * 0.09
    expected = (2 * 0.02 + 2 * 1.62 + 2 * 0.18) / 6
    assert brier_score(probs, labels) == pytest.approx(expected)
    assert brier_score(torch.full((3, 4), 0.25), torch.tensor([0, 1, 3])) == pytest.approx(1 - 1 / 4)
    assert brier_score(torch.tensor([[0.0, 1.0]]), torch.tensor([0])) == pytest.approx(2.0)


# --- synthetic predictors of known calibration ------------------------------------------------------

def calibrated(n=100_000, classes=4, seed=0):
    """Random probability vectors, and labels drawn from them: calibrated by construction."""
    g = gen(seed)
    probs = torch.softmax(2.0 * torch.randn(n, classes, generator=g, dtype=torch.float64), dim=1)
    labels = torch.multinomial(probs, 1, generator=g)[:, 0]
    return probs, labels


def test_a_calibrated_predictor_has_ece_within_sampling_error():
    probs, labels = calibrated()
    bins = reliability_bins(probs, labels)
    # each bin's accuracy is a mean of counts_m Bernoulli outcomes whose mean is conf_m: its standard
    # error is at most sqrt(conf (1 - conf) / counts); the ECE stays within a few of them on average
    filled = bins.counts > 0
    conf = bins.confidence[filled]
    se = (conf * (1 - conf) / bins.counts[filled]).sqrt()
    bound = 3 * float((bins.counts[filled] * se).sum() / bins.counts.sum())
    ece = expected_calibration_error(probs, labels)
    assert ece < bound < 0.02
    assert classwise_calibration_error(probs, labels) < 0.02


def test_an_overconfident_predictor_has_the_hand_computed_ece():
    # confidence 0.9 on every prediction, right 60% of the time: ECE = |0.6 - 0.9| = 0.3 exactly when
    # exactly 60% of the labels are the predicted class
    n = 1000
    probs = torch.tensor([[0.9, 0.05, 0.05]]).expand(n, 3)
    labels = torch.zeros(n, dtype=torch.long)
    labels[600:800] = 1
    labels[800:] = 2
    labels = labels[torch.randperm(n, generator=gen())]
    assert expected_calibration_error(probs, labels) == pytest.approx(0.3)
    # and sharpening a calibrated predictor makes it overconfident: ECE clearly above the noise
    probs, labels = calibrated(n=20_000)
    sharp = probs ** 2 / (probs ** 2).sum(1, keepdim=True)
    assert expected_calibration_error(sharp, labels) > 0.05 > expected_calibration_error(probs, labels)


# --- temperature scaling ----------------------------------------------------------------------------

@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_t):
    # labels drawn from softmax(z / T): the maximum-likelihood temperature is T, up to sampling error
    g = gen(1)
    logits = 3.0 * torch.randn(20_000, 5, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits / true_t, dim=1), 1, generator=g)[:, 0]
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)
    # it is the minimum of the NLL, and it improves calibration
    nll = negative_log_likelihood(logits, labels, fitted)
    assert nll <= negative_log_likelihood(logits, labels, fitted * 1.01)
    assert nll <= negative_log_likelihood(logits, labels, fitted / 1.01)
    assert nll < negative_log_likelihood(logits, labels)
    before = expected_calibration_error(torch.softmax(logits, 1), labels)
    after = expected_calibration_error(torch.softmax(logits / fitted, 1), labels)
    assert after < before and after < 0.02


def test_negative_log_likelihood_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 0])
    # p = 1/2 and 3/4; at T = 2 the second becomes sqrt(3) / (sqrt(3) + 1)
    assert negative_log_likelihood(logits, labels) == pytest.approx((math.log(2) - math.log(0.75)) / 2)
    assert negative_log_likelihood(logits, labels, 2.0) == pytest.approx(
        (math.log(2) - math.log(math.sqrt(3) / (math.sqrt(3) + 1))) / 2)


def test_fit_temperature_stops_at_a_bound():
    # every prediction right: the sharper the better, so T goes to the lower bound
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert fit_temperature(logits, torch.tensor([0, 1]), bounds=(0.1, 10.0)) == pytest.approx(0.1, rel=1e-4)
    # every prediction wrong: the softer the better
    assert fit_temperature(logits, torch.tensor([1, 0]), bounds=(0.1, 10.0)) == pytest.approx(10.0, rel=1e-4)


# --- validation -------------------------------------------------------------------------------------

GOOD_PROBS = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
GOOD_LABELS = torch.tensor([1, 0])


@pytest.mark.parametrize("probs, labels, error, match", [
    (torch.tensor([0.2, 0.8]), GOOD_LABELS, ValueError, "shape"),
    (torch.ones(2, 1), GOOD_LABELS, ValueError, "shape"),
    (torch.empty(0, 2), torch.empty(0, dtype=torch.long), ValueError, "shape"),
    (torch.tensor([[0.3, 0.8], [0.6, 0.4]]), GOOD_LABELS, ValueError, "sum to 1"),
    (torch.tensor([[-0.2, 1.2], [0.6, 0.4]]), GOOD_LABELS, ValueError, r"\[0, 1\]"),
    (torch.tensor([[float("nan"), 0.5], [0.6, 0.4]]), GOOD_LABELS, ValueError, "finite"),
    (GOOD_PROBS, torch.tensor([1, 2]), ValueError, "labels must lie"),
    (GOOD_PROBS, torch.tensor([-1, 0]), ValueError, "labels must lie"),
    (GOOD_PROBS, torch.tensor([1, 0, 1]), ValueError, "shape"),
    (GOOD_PROBS, torch.tensor([[1], [0]]), ValueError, "shape"),
    (GOOD_PROBS, torch.tensor([1.0, 0.0]), TypeError, "integer"),
    (GOOD_PROBS, torch.tensor([True, False]), TypeError, "integer"),
    (torch.tensor([[0, 1], [1, 0]]), GOOD_LABELS, TypeError, "floating"),
    ([[0.2, 0.8], [0.6, 0.4]], GOOD_LABELS, TypeError, "torch.Tensor or numpy"),
    (np.array([["a", "b"]]), GOOD_LABELS, TypeError, "numbers"),
])
def test_bad_inputs_raise(probs, labels, error, match):
    for function in (reliability_bins, expected_calibration_error, classwise_calibration_error, brier_score,
                     check_probabilities):
        with pytest.raises(error, match=match):
            function(probs, labels)


def test_probabilities_within_the_tolerance_pass():
    probs = GOOD_PROBS + torch.tensor([[5e-5, 0.0], [0.0, -5e-5]])
    checked, labels = check_probabilities(probs, GOOD_LABELS)
    assert checked.dtype == torch.float64 and labels.dtype == torch.int64


@pytest.mark.parametrize("n_bins, error", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)])
def test_n_bins_must_be_a_positive_int(n_bins, error):
    with pytest.raises(error, match="n_bins"):
        reliability_bins(GOOD_PROBS, GOOD_LABELS, n_bins)
    with pytest.raises(error, match="n_bins"):
        classwise_calibration_error(GOOD_PROBS, GOOD_LABELS, n_bins)


def test_bad_kind_and_temperature_arguments():
    with pytest.raises(ValueError, match="kind"):
        expected_calibration_error(GOOD_PROBS, GOOD_LABELS, kind="average")
    logits = torch.randn(4, 3, generator=gen())
    labels = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="low < high"):
        fit_temperature(logits, labels, bounds=(2.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        fit_temperature(logits, labels, bounds=(0.0, 1.0))
    with pytest.raises(TypeError, match="pair"):
        fit_temperature(logits, labels, bounds=1.0)
    with pytest.raises(ValueError, match="positive"):
        negative_log_likelihood(logits, labels, -1.0)
    with pytest.raises(ValueError, match="finite"):
        fit_temperature(torch.tensor([[float("inf"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels must lie"):
        fit_temperature(logits, torch.tensor([0, 1, 3, 0]))
