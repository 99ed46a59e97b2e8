"""Training: deterministic for a seed, the device recorded, too few positives fail, the threshold."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from pipelines.core import modelio as M
from pipelines.train import best_f1_threshold, train_model


def _toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.8, size=n) > 2.2).astype(np.int8)
    return x, y


def test_training_is_deterministic_and_records_the_device_actually_used(params):
    import dataclasses

    p = dataclasses.replace(params.train, search={"max_depth": [3], "learning_rate": [0.3], "scale_pos_weight": [1.0, "auto"]},
                            num_boost_round=60, early_stopping_rounds=10, min_train_positives=10, nthread=2)
    xt, yt = _toy(4000, 1)
    xv, yv = _toy(2000, 2)
    a = train_model(xt, yt, xv, yv, p, "cpu")
    b = train_model(xt, yt, xv, yv, p, "cpu")
    assert bytes(a.booster.save_raw("ubj")) == bytes(b.booster.save_raw("ubj"))
    assert len(a.search) == 2 and a.valid_score == max(r["valid_aucpr"] for r in a.search)
    assert a.device_used == "cpu" and 0 < a.threshold < 1
    # asked for cuda on a machine without a GPU: XGBoost only warns; the result must say cpu
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = train_model(xt, yt, xv, yv, p, "cuda")
    assert c.device_used == "cpu"


def test_too_few_positives_fail_the_run(params):
    xt, yt = _toy(500, 3)
    yt[:] = 0
    yt[:3] = 1
    with pytest.raises(M.TrainingDataError, match="positives"):
        train_model(xt, yt, xt, yt, params.train, "cpu")


def test_best_f1_threshold():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.7, 0.8, 0.9])
    assert best_f1_threshold(y, s) == pytest.approx(0.8)
