"""tasks/metrics.py against values worked out by hand: binary and three-class (macro), ties,
ECE's bins, and metrics the data leave undefined (left out, never NaN)."""

from __future__ import annotations

import numpy as np
import pytest

from fedsilo.tasks.metrics import auroc, classification_metrics, expected_calibration_error

ALL = ("auroc", "sensitivity", "recall", "specificity", "precision", "f1", "ece")


def binary(scores: list[float]) -> np.ndarray:
    positive = np.array(scores)
    return np.stack([1 - positive, positive], axis=1)


def test_binary_metrics_by_hand() -> None:
    # Positives score 0.9, 0.75, 0.15; negatives 0.75, 0.3. Pairs won: 0.9 twice, 0.75 vs 0.3,
    # 0.75 vs 0.75 half: 3.5 of 6. Predicted 1, 1, 1, 0, 0: tp 2, fp 1, fn 1, tn 1.
    # ECE (15 bins): confidences 0.9 (right), 0.75 (wrong), 0.75 (right), 0.7 (right),
    # 0.85 (wrong): (0.1 + 2 * |0.5 - 0.75| + 0.3 + 0.85) / 5 = 0.35.
    probabilities = binary([0.9, 0.75, 0.75, 0.3, 0.15])
    labels = np.array([1, 0, 1, 0, 1])
    got = classification_metrics(probabilities, labels, ALL)
    assert got == pytest.approx(
        {
            "auroc": 3.5 / 6,
            "sensitivity": 2 / 3,
            "recall": 2 / 3,
            "specificity": 1 / 2,
            "precision": 2 / 3,
            "f1": 2 / 3,
            "ece": 0.35,
        },
        rel=1e-12,
    )
    assert list(got) == list(ALL)


def test_three_classes_are_averaged_over_the_classes_one_vs_rest() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    labels = np.array([0, 1, 2, 2])
    # Per class (0, 1, 2): AUROC 1, 2/3, 3.5/4; sensitivity 1, 1, 1/2; precision 1, 1/2, 1;
    # F1 1, 2/3, 2/3; specificity 1, 2/3, 1.
    got = classification_metrics(probabilities, labels, ALL[:-1])
    assert got == pytest.approx(
        {
            "auroc": (1 + 2 / 3 + 0.875) / 3,
            "sensitivity": 2.5 / 3,
            "recall": 2.5 / 3,
            "specificity": (1 + 2 / 3 + 1) / 3,
            "precision": 2.5 / 3,
            "f1": (1 + 4 / 3) / 3,
        },
        rel=1e-12,
    )


def test_auroc_is_the_probability_a_positive_outscores_a_negative() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=40).astype(float)  # many ties
    positive = rng.random(40) < 0.4
    pos, neg = scores[positive], scores[~positive]
    wins = sum(float(a > b) + 0.5 * float(a == b) for a in pos for b in neg)
    assert auroc(scores, positive) == pytest.approx(wins / (len(pos) * len(neg)), rel=1e-12)


def test_metrics_the_data_leave_undefined_are_left_out() -> None:
    probabilities = binary([0.2, 0.7])
    got = classification_metrics(probabilities, np.array([0, 0]), ALL)
    assert "auroc" not in got and "sensitivity" not in got and "f1" not in got
    assert got["specificity"] == 0.5 and all(np.isfinite(list(got.values())))
    assert classification_metrics(probabilities[:0], np.array([], dtype=int), ALL) == {}


def test_a_perfectly_calibrated_confidence_has_no_calibration_error() -> None:
    probabilities = binary([1.0, 0.0, 1.0])
    assert expected_calibration_error(probabilities, np.array([1, 0, 1])) == 0.0


def test_an_unknown_metric_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown classifier metric 'auc'"):
        classification_metrics(binary([0.5]), np.array([1]), ["auc"])
