"""Closing the loop, pure parts: the feedback join and its accounting, realized metrics, review
verdicts as labels, the rollback rule and the promotion verdict."""
from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from pipelines.config import ConfigError, PromotionParams, RollbackParams
from pipelines.feedback import decision_outcomes, join_feedback, model_metrics, rates, realized, review_labels
from pipelines.lifecycle import promotion_verdict, should_rollback

UTC = dt.timezone.utc


def _pred(n=6):
    return pl.DataFrame({"event_id": [f"e{i}" for i in range(n)], "ds": [dt.date(2026, 3, 1)] * n,
                         "score": np.linspace(0.05, 0.95, n).astype(np.float32), "threshold": [0.5] * n,
                         "model_name": ["m"] * n, "model_version": ["1"] * n, "run_id": ["r"] * n,
                         "scored_by": ["model"] * n}, schema_overrides={"threshold": pl.Float32})


def test_join_keeps_every_prediction_and_accounts_for_every_label():
    pred = _pred()
    labels = pl.DataFrame({"event_id": ["e0", "e1", "e5", "e5", "zz"], "label": [0, 0, 1, 1, 1]},
                          schema_overrides={"label": pl.Int8})
    overrides = pl.DataFrame({"event_id": ["e2", "e5", "e5"], "decision": ["block", "approve", "block"],
                              "reviewer": ["ana", "bo", "bo"], "note": ["", "", ""],
                              "at": [dt.datetime(2026, 3, 2, h, tzinfo=UTC) for h in (1, 2, 3)]})
    reviews = review_labels(overrides, {"block": 1, "approve": 0})
    assert dict(zip(reviews["event_id"], reviews["review_label"])) == {"e2": 1, "e5": 1}     # the latest verdict wins
    dec = pred.select("event_id", pl.lit("approve").alias("decision"), pl.lit("model_approve").alias("reason_code"))
    out, acc = join_feedback(pred, dec, None, labels, reviews, None)
    assert out.height == pred.height and out["event_id"].to_list() == pred["event_id"].to_list()
    assert acc["labels_in"] == 5 and acc["labels_matched"] == 3 and acc["labels_unmatched"] == 1 and acc["labels_repeated"] == 1
    assert acc["unmatched_sample"] == ["zz"]
    row = {r["event_id"]: r for r in out.iter_rows(named=True)}
    assert row["e2"]["label"] == 1 and row["e2"]["label_source"] == "review"          # a verdict alone labels its row
    assert row["e5"]["label_source"] == "feed" and row["e5"]["review_agrees"] is True
    assert row["e3"]["label"] is None and row["e3"]["label_source"] is None
    assert acc["rows_labelled_review_only"] == 1 and acc["rows_unlabelled"] == 2


def test_realized_metrics_are_on_feed_labels_per_version_with_decision_outcomes():
    pred = _pred(8).with_columns(pl.Series("model_version", ["1"] * 4 + ["2"] * 4))
    labels = pl.DataFrame({"event_id": [f"e{i}" for i in range(8)], "label": [0, 0, 1, 1, 0, 1, 0, 1]},
                          schema_overrides={"label": pl.Int8})
    dec = pred.select("event_id", pl.when(pl.col("score") >= 0.5).then(pl.lit("block")).otherwise(pl.lit("approve"))
                      .alias("decision"), pl.lit("x").alias("reason_code"))
    shadow = pred.select("event_id", pl.lit(0.9, pl.Float32).alias("score"), pl.lit(0.5, pl.Float32).alias("threshold"),
                         pl.lit("3").alias("model_version"))
    out, _ = join_feedback(pred, dec, shadow, labels, review_labels(pl.DataFrame(), {"block": 1}), None)
    table, res = realized(out, dt.date(2026, 3, 1), dt.date(2026, 3, 8), (2,), ())
    assert set(res["realized"]["champion"]) == {"1", "2"} and set(res["realized"]["challenger"]) == {"3"}
    v1 = res["realized"]["champion"]["1"]
    assert v1["rows"] == 4 and v1["positives"] == 2
    # v1: scores 0.05..0.39 (all < 0.5): approves everything; two frauds let through
    assert v1["decision.approve.fraud"] == 2 and v1["decision.block.rows"] == 0 and v1["frauds_approved_share"] == 1.0
    assert v1["error_rate"] == pytest.approx(0.5) and v1["miss_rate"] == 1.0 and v1["false_positive_rate"] == 0.0
    chall = res["realized"]["challenger"]["3"]                       # flags everything: 4 of 8 wrong
    assert chall["rows"] == 8 and chall["error_rate"] == pytest.approx(0.5) and chall["false_positive_rate"] == 1.0
    assert set(table["role"]) == {"champion", "challenger", "review"}
    assert table.filter((pl.col("metric") == "error_rate") & (pl.col("model_version") == "1"))["value"][0] == 0.5


def test_model_metrics_and_rates():
    y = np.array([1, 0, 1, 0, 0])
    m = model_metrics(y, np.array([0.9, 0.8, 0.2, 0.1, 0.0]), 0.5, (1, 2))
    assert m["confusion.tp"] == 1 and m["confusion.fp"] == 1 and m["confusion.fn"] == 1
    assert m["error_rate"] == pytest.approx(0.4) and m["precision_at_1"] == 1.0 and m["precision_at_2"] == 0.5
    assert rates({"tn": 0, "fp": 0, "fn": 0, "tp": 0}) == {"error_rate": None, "false_positive_rate": None, "miss_rate": None}


def test_decision_outcomes_ignore_review_only_labels():
    f = pl.DataFrame({"decision": ["block", "block", "approve", "review"], "label": [1, 0, 1, 1],
                      "label_source": ["feed", "feed", "feed", "review"]})
    o = decision_outcomes(f)
    assert o["decision.block.fraud"] == 1 and o["decision.block.legit"] == 1 and o["decision.review.rows"] == 0
    assert o["frauds_approved_share"] == 0.5


RB = RollbackParams(auto=True, metric="error_rate", factor=2.0, window_days=1, min_rows=100)


@pytest.mark.parametrize("realized,baseline,rows,expected", [
    (0.05, 0.02, 1000, True),          # 2.5x the baseline
    (0.04, 0.02, 1000, False),         # exactly 2x: not over
    (0.05, 0.02, 99, False),           # too few labelled rows to judge
    (None, 0.02, 0, False),
    (0.05, None, 1000, False),         # no baseline: no automatic move
])
def test_rollback_rule(realized, baseline, rows, expected):
    do, why = should_rollback(realized, baseline, rows, RB)
    assert do is expected and why


PR = PromotionParams(mode="auto", metric="average_precision", shadow_days=2, min_wins=2, min_margin=0.0,
                     max_slice_drop=0.05, slice_min_positives=10, lookback_days=30)


def _days(*deltas):
    return [{"date": f"2026-03-0{i + 1}", "delta": d} for i, d in enumerate(deltas)]


def test_promotion_verdict():
    assert promotion_verdict(_days(0.1), None, PR)[0] == "wait"
    assert promotion_verdict(_days(0.1, 0.02), ("is_night=1", 0.01), PR)[0] == "promote"
    action, why = promotion_verdict(_days(0.1, -0.01), None, PR)
    assert action == "retire" and "1 of 2" in why
    action, why = promotion_verdict(_days(0.1, 0.1), ("category_code=3", 0.2), PR)
    assert action == "retire" and "category_code=3" in why
    assert promotion_verdict(_days(-0.5, 0.1, 0.1), None, PR)[0] == "promote"       # the latest S days count
    assert promotion_verdict(_days(0.1, None), None, PR)[0] == "retire"


def test_promotion_and_rollback_params_are_checked():
    with pytest.raises(ConfigError):
        PromotionParams.from_dict({**PR.__dict__, "mode": "yolo"})
    with pytest.raises(ConfigError):
        PromotionParams.from_dict({**PR.__dict__, "min_wins": 3})
    with pytest.raises(ConfigError):
        RollbackParams.from_dict({**RB.__dict__, "metric": "vibes"})


def test_the_in_process_chains_run_the_dag_tasks_in_order_with_their_arguments():
    from types import SimpleNamespace

    from pipelines import nightly

    assert [n for n, *_ in nightly.STAGES] == ["ingest", "validate", "features", "score", "shadow", "decide",
                                                 "monitor", "retrain"]
    assert [n for n, *_ in nightly.LABEL_STAGES] == ["ingest_labels", "validate_labels", "feedback", "lifecycle"]
    calls = []

    def fake(name):
        return SimpleNamespace(main=lambda argv: (calls.append((name, argv)), print(f'{{"stage": "{name}"}}'))[-1])

    stages = [("a", fake("a"), ["--dataset", "labels"]), ("b", fake("b"), [])]
    took, last = nightly._chain(stages, "p.yaml", dt.date(2026, 3, 8))
    assert calls == [("a", ["--params", "p.yaml", "--date", "2026-03-08", "--dataset", "labels"]),
                     ("b", ["--params", "p.yaml", "--date", "2026-03-08"])]
    assert set(took) == {"a", "b"} and last == '{"stage": "b"}'


def test_monitor_report_shows_realized_metrics_per_version():
    from pipelines.feedback import REALIZED_SCHEMA
    from pipelines.monitor import realized_table

    d = dt.date(2026, 3, 1)
    rows = [(d, d, "m", "1", "champion", "average_precision", "", 0.61), (d, d, "m", "1", "champion", "error_rate", "", 0.002),
            (d, d, "m", "2", "challenger", "average_precision", "", 0.72), (d, d, "m", "1", "champion", "slice.recall", "x=1", 0.5),
            (d, d, "m", "", "review", "reviews.verdicts", "", 3.0)]
    page = realized_table(pl.DataFrame(rows, schema=REALIZED_SCHEMA, orient="row"))
    assert "<td>champion</td><td>v1</td>" in page and "<td>challenger</td><td>v2</td>" in page
    assert "0.61" in page and "0.72" in page and "review" not in page.split("</tr>", 1)[1]
    assert "No labels" in realized_table(None)
