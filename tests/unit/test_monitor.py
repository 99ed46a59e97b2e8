"""The monitoring report."""
from __future__ import annotations

import datetime as dt

import polars as pl
import pytest


def test_monitor_report_shows_realized_metrics_per_version():
    from pipelines.core.lake import REALIZED_SCHEMA
    from pipelines.monitor import realized_rows

    d = dt.date(2026, 3, 1)
    rows = [(d, d, "m", "1", "champion", "average_precision", "", 0.61), (d, d, "m", "1", "champion", "error_rate", "", 0.002),
            (d, d, "m", "2", "challenger", "average_precision", "", 0.72), (d, d, "m", "1", "champion", "slice.recall", "x=1", 0.5),
            (d, d, "m", "", "review", "reviews.verdicts", "", 3.0)]
    table = realized_rows(pl.DataFrame(rows, schema=REALIZED_SCHEMA, orient="row"))
    assert [r[1:3] for r in table] == [["challenger", "v2"], ["champion", "v1"]]      # no review row; by role
    cells = {r[1]: r[3:] for r in table}
    assert "0.61" in cells["champion"] and "0.72" in cells["challenger"] and "0.002" in cells["champion"]
    assert realized_rows(None) == []


def test_the_day_page_shows_each_features_distributions_sorted_by_drift_and_a_model_card():
    """Per feature, most drifted first: reference vs the day per reference bin, the tests with their
    values and thresholds, the status; the model served as labelled fields, not a JSON dump."""
    import base64
    import re
    import xml.etree.ElementTree as ET

    import numpy as np

    from pipelines.core.config import load_params
    from pipelines.core.drift import FeatureDrift, reference_profile
    from pipelines.monitor import METRIC_SCHEMA, day_metrics, observe, report_html

    params = load_params("params.yaml")
    rng = np.random.default_rng(7)
    n = 4000
    ref = pl.DataFrame({"amount": rng.lognormal(3, 1, n), "hour": rng.integers(0, 4, n), "score": rng.beta(1, 30, n)})
    profile = reference_profile(ref, {"feature_names": ["amount", "hour"]}, params.evaluate)
    day = pl.DataFrame({"amount": rng.lognormal(3, 1, n) * 100, "hour": rng.integers(0, 4, n)})     # amounts x100
    pred = pl.DataFrame({"score": rng.beta(1, 30, n), "threshold": [0.5] * n, "fallback": [[]] * n},
                        schema_overrides={"fallback": pl.List(pl.String)})
    obs = observe(FeatureDrift(profile).update(day).state(), [pred], profile, params.monitor).result()
    ds = dt.date(2026, 3, 1)
    model_doc = {"scored_by": "model", "model_name": "fraud-xgb", "model_version": "3", "run_id": "abc123",
                 "model_sha256": "f" * 64, "threshold": 0.42, "reference_profile": profile}
    rows, details = day_metrics(ds, obs, {"rates": {"approve": 0.9, "review": 0.08, "block": 0.02}}, model_doc,
                                params.monitor)
    metrics = pl.DataFrame(rows, schema=METRIC_SCHEMA).with_columns(rolling_mean=pl.col("value"), rolling_days=pl.lit(1))
    html = report_html(ds, metrics, pl.DataFrame(schema=metrics.schema), details, [], model_doc, metrics,
                       {"rates": {"review": 0.08, "block": 0.02}}, p=params.monitor)
    cards = re.findall(r'<figure class="card"><img alt="([^"]+) distribution" src="data:image/svg\+xml;base64,([^"]+)"', html)
    assert [c[0] for c in cards] == ["amount", "hour"]                       # the x100 feature first
    for _, b64 in cards:
        svg = ET.fromstring(base64.b64decode(b64))
        assert len([r for r in svg.iter("{http://www.w3.org/2000/svg}rect") if r.find("{*}title") is not None]) >= 4
    p = params.monitor
    assert f"(warn {p.psi.warn:g}, alert {p.psi.alert:g})" in html and "KS " in html
    assert "badge fail\">alert" in html.split('<figure class="card">')[1]     # amount is at alert
    assert "<th>model</th><td>fraud-xgb</td>" in html and "<th>version</th><td>3</td>" in html
    assert "{" not in html.split("Model served")[1]                           # a card, not JSON


@pytest.mark.parametrize("count", [2, 3, 7])
def test_shards_of_a_day_observe_the_same_as_one_pass(count):
    """Batch i observed by shard i mod N (counts, categorical values, per-batch score sums), each
    shard's state through JSON, merged: the Observed of one pass, bit for bit (mean included). The
    features' counts as score shards make them (FeatureDrift per shard, merged) are the counts of one
    pass too, to the byte of the published JSON."""
    import json

    import numpy as np

    from pipelines.core import storage
    from pipelines.core.config import load_params
    from pipelines.core.drift import FeatureDrift, reference_profile
    from pipelines.core.shards import all_of
    from pipelines.monitor import Observer, observe

    params = load_params("params.yaml")
    rng = np.random.default_rng(3)
    n = 5000
    cats = pl.Series(rng.integers(0, 4, n), dtype=pl.Int16).replace(3, None)
    ref = pl.DataFrame({"amount": rng.lognormal(3, 1, n), "cat": cats, "score": rng.beta(1, 30, n)})
    profile = reference_profile(ref, {"feature_names": ["amount", "cat"]}, params.evaluate)
    amount = rng.lognormal(3.2, 1, n)
    amount[::17] = np.nan
    day = pl.DataFrame({"amount": amount, "cat": pl.Series(rng.integers(1, 6, n), dtype=pl.Int16).replace(5, None)})
    pred = pl.DataFrame({"score": rng.beta(1, 20, n).astype(np.float32), "threshold": [0.05] * n,
                         "fallback": [["rules"] if i % 11 == 0 else [] for i in range(n)]},
                        schema_overrides={"fallback": pl.List(pl.String), "threshold": pl.Float32})
    fb = [day.slice(i, 700) for i in range(0, n, 700)]                  # 8 feature batches
    pb = [pred.slice(i, 450) for i in range(0, n, 450)]                 # 12 prediction batches
    whole = FeatureDrift(profile)
    for b in fb:
        whole.update(b)
    parts = [FeatureDrift(profile) for _ in range(count)]
    for i, b in enumerate(fb):
        parts[i % count].update(b)
    observed = FeatureDrift.merged(profile, [json.loads(json.dumps(x.state())) for x in parts[::-1]]).state()
    assert storage.json_bytes(observed) == storage.json_bytes(whole.state())
    assert list(observed) == ["amount", "cat"] and observed["amount"]["n"] == n
    one = observe(whole.state(), pb, profile, params.monitor).result()
    states = [json.loads(json.dumps(observe(observed, pb, profile, params.monitor, s).state())) for s in all_of(count)]
    assert all("features" not in st for st in states)
    merged = Observer.merged(profile, params.monitor, states[::-1], observed).result()
    assert merged == one and set(one.features) == {"amount", "cat"}
    assert one.rows == n and one.fallback == {"rules": len(range(0, n, 11))} and one.score["mean"] is not None
