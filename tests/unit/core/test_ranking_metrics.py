"""The metrics computed without scikit-learn equal scikit-learn's: AP and ROC AUC bit for bit
(ties, float32 scores, rare positives), Brier to float32 precision (computed in float64 here)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from pipelines.core.metrics import average_precision, classification_metrics, roc_auc


@pytest.mark.parametrize("seed", range(40))
def test_equal_to_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 5000))
    y = (rng.random(n) < rng.random() * 0.3).astype(np.int8)
    y[0], y[-1] = 1, 0                       # both classes
    score = rng.random(n)
    if seed % 3 == 0:
        score = np.round(score, int(rng.integers(1, 3)))        # many ties
    if seed % 4 == 0:
        score = score.astype(np.float32)                        # what XGBoost returns
    assert average_precision(y, score) == average_precision_score(y, score)
    assert roc_auc(y, score) == roc_auc_score(y, score)
    m = classification_metrics(y, score, 0.5)
    assert m["brier"] == pytest.approx(brier_score_loss(y, score), rel=1e-6)
    assert m["average_precision"] == average_precision_score(y, score) and m["roc_auc"] == roc_auc_score(y, score)


def test_edge_cases():
    assert average_precision(np.array([1]), np.array([0.3])) == average_precision_score([1], [0.3])
    y, s = np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])               # one distinct score
    assert average_precision(y, s) == average_precision_score(y, s) and roc_auc(y, s) == roc_auc_score(y, s)
    m = classification_metrics(np.array([0, 0]), np.array([0.1, 0.9]), 0.5)
    assert m["roc_auc"] is None and m["average_precision"] is None
