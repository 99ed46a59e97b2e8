"""Labels fed back: the join keeps every prediction and accounts for every label; realized metrics
per model version, on feed labels; decision outcomes."""
from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from pipelines.core.reviews import review_labels
from pipelines.feedback import decision_outcomes, join_feedback, realized

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


def test_decision_outcomes_ignore_review_only_labels():
    f = pl.DataFrame({"decision": ["block", "block", "approve", "review"], "label": [1, 0, 1, 1],
                      "label_source": ["feed", "feed", "feed", "review"]})
    o = decision_outcomes(f)
    assert o["decision.block.fraud"] == 1 and o["decision.block.legit"] == 1 and o["decision.review.rows"] == 0
    assert o["frauds_approved_share"] == 0.5


def test_the_page_plots_realized_ap_and_error_per_version_and_decision_outcomes():
    import base64
    import datetime as dt
    import xml.etree.ElementTree as ET

    import polars as pl

    from pipelines.core.lake import REALIZED_SCHEMA
    from pipelines.feedback import plots

    d = [dt.date(2026, 3, i) for i in (1, 2, 3)]
    rows = [(day, day, "m", v, role, metric, "", val) for day in d
            for v, role, metric, val in (("1", "champion", "average_precision", 0.6), ("2", "challenger", "average_precision", 0.7),
                                         ("1", "champion", "error_rate", 0.01), ("1", "champion", "recall", 0.5))]
    rows.append((d[0], d[0], "m", "1", "champion", "average_precision", "category=online", 0.1))     # a slice: not plotted
    got = plots(pl.DataFrame(rows, schema=REALIZED_SCHEMA, orient="row"),
                [["block", 10, 8, 2, "0.8"], ["review", 20, 5, 15, "0.25"], ["approve", 100, 1, 99, "0.01"]])
    assert [t for t, _ in got] == ["realized AP", "error rate", "decision outcomes"]
    svg = {t: ET.fromstring(base64.b64decode(src.split(",", 1)[1])) for t, src in got}
    ns = "{http://www.w3.org/2000/svg}"
    assert len(list(svg["realized AP"].iter(f"{ns}polyline"))) == 2            # one line per version
    texts = [t.text for t in svg["realized AP"].iter(f"{ns}text")]
    assert "challenger v2" in texts and "champion v1" in texts
    bars = [r.find(f"{ns}title").text for r in svg["decision outcomes"].iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    assert bars[0].startswith("block") and "80.00%" in bars[0]
    assert plots(pl.DataFrame(schema=REALIZED_SCHEMA), [["block", 0, 0, 0, ""]]) == []
