"""Classification metrics, rates, precision@k and the slices."""
from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from pipelines.core.metrics import (
    classification_metrics,
    model_metrics,
    precision_at_k,
    rates,
)

D = dt.date


def test_model_metrics_and_rates():
    y = np.array([1, 0, 1, 0, 0])
    m = model_metrics(y, np.array([0.9, 0.8, 0.2, 0.1, 0.0]), 0.5, (1, 2))
    assert m["confusion.tp"] == 1 and m["confusion.fp"] == 1 and m["confusion.fn"] == 1
    assert m["error_rate"] == pytest.approx(0.4) and m["precision_at_1"] == 1.0 and m["precision_at_2"] == 0.5
    assert rates({"tn": 0, "fp": 0, "fn": 0, "tp": 0}) == {"error_rate": None, "false_positive_rate": None, "miss_rate": None}


def test_classification_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.6, 0.7, 0.4, 0.2, 0.9])
    m = classification_metrics(y, s, 0.5)
    assert m["confusion_matrix"] == {"tn": 2, "fp": 1, "fn": 1, "tp": 2}
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["legit"]["recall"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(8 / 9)
    assert m["brier"] == pytest.approx(np.mean((s - y) ** 2))


def test_precision_at_k_per_day_for_events_and_entities():
    f = pl.DataFrame({"date": [D(2026, 1, 1)] * 4 + [D(2026, 1, 2)] * 3,
                      "event_id": list("abcdefg"), "customer": ["x", "x", "y", "z", "x", "y", "y"],
                      "score": [0.9, 0.8, 0.7, 0.1, 0.5, 0.4, 0.3], "label": [1, 0, 0, 1, 0, 1, 0]})
    out = precision_at_k(f, (2,), "customer")
    assert out["events"]["p@2"]["per_day"] == {"2026-01-01": 0.5, "2026-01-02": 0.5}
    # entities: day 1 -> x (max .9, had a fraud), y (.7, none); day 2 -> x (.5, none), y (.4, fraud)
    assert out["entities"]["p@2"]["per_day"] == {"2026-01-01": 0.5, "2026-01-02": 0.5}
    assert out["events"]["p@2"]["mean"] == 0.5
