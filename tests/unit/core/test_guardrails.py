"""The guardrail checks: each limit breaches when it should, and not on a normal day."""
from __future__ import annotations

import dataclasses
import json

import polars as pl

from pipelines.core import guardrails as G
from pipelines.core.config import GuardrailParams
from pipelines.core.drift import FeatureDrift

P = GuardrailParams(validation_warning_kinds=("mean",), top_features=2, max_feature_psi=2.0, trailing_days=7,
                    min_trailing_days=3, max_block_rate_ratio=4.0, max_review_volume_ratio=4.0,
                    fallback_kinds=("feature_default",), max_fallback_share=0.2)
NORMAL = [{"rows": 1000, "blocks": 3, "review_volume": 100}] * 7


def run(**kw):
    args = {"warnings": [], "feature_psi": {"amount": 0.3}, "rows": 1000, "blocks": 4, "review_volume": 120,
            "fallback_rows": 0, "trailing": NORMAL, **kw}
    return {r["check"]: r for r in G.checks(P, **args)}


def test_a_normal_day_passes_every_check():
    res = run()
    assert not any(r["breached"] for r in res.values()) and G.breaches(list(res.values())) == []


def test_each_limit_breaches():
    assert run(warnings=["mean:amount", "plausible_max:amount"])["validation_warnings"]["value"] == ["mean:amount"]
    assert not run(warnings=["plausible_max:amount"])["validation_warnings"]["breached"]
    psi = run(feature_psi={"amount": 6.5, "amount_ratio": 1.0})["feature_psi"]
    assert psi["breached"] and "amount=6.50" in psi["message"] and "amount_ratio" not in psi["message"]
    assert run(blocks=97)["block_rate"]["breached"] and not run(blocks=12)["block_rate"]["breached"]
    assert run(review_volume=7896)["review_volume"]["breached"]
    assert run(fallback_rows=300)["fallback_share"]["breached"] and not run(fallback_rows=100)["fallback_share"]["breached"]


def test_ratio_checks_need_a_baseline_and_say_so():
    res = run(blocks=500, trailing=NORMAL[:2])
    assert not res["block_rate"]["breached"] and "not checked" in res["block_rate"]["message"]
    zero = [{"rows": 1000, "blocks": 0, "review_volume": 0}] * 7          # a zero baseline: one row is no breach
    assert not run(blocks=1, review_volume=3, trailing=zero)["block_rate"]["breached"]
    assert run(blocks=50, trailing=zero)["block_rate"]["breached"]


def test_top_features_and_the_day_health_accumulator():
    assert G.top_features({"a": 1.0, "b": 5.0, "c": 5.0, "d": 0.1}, 2) == ["b", "c"]
    prof = {"features": {"amount": {"kind": "numeric", "null_share": 0.0, "edges": [1.0, 2.0, 3.0],
                                    "shares": [0.25, 0.25, 0.25, 0.25], "min": 0.0, "max": 4.0, "sample": []}}}
    observed = FeatureDrift(prof).update(pl.DataFrame({"amount": [100.0] * 30})).state()     # what score publishes
    more = FeatureDrift(prof).update(pl.DataFrame({"amount": [100.0] * 20})).state()
    h = G.DayHealth(prof, ["amount", "not_profiled"], dataclasses.replace(P), json.loads(json.dumps(observed)))
    assert G.DayHealth(prof, ["amount"], P, FeatureDrift.merged(prof, [observed, more]).state()).drift["amount"].n == 50
    h.add_predictions(pl.DataFrame({"fallback": [["feature_default"], [], ["registry_cache"], None]},
                                   schema={"fallback": pl.List(pl.String)}))
    assert h.feature_psi()["amount"] > 2.0 and list(h.feature_psi()) == ["amount"]
    assert h.rows == 4 and h.fallback_rows == 1
    # a day with no rows: score observed no feature; the top features compare as empty and hold it
    empty = G.DayHealth(prof, ["amount"], P, FeatureDrift(prof).update(pl.DataFrame({"amount": []},
                                                                                   schema={"amount": pl.Float64})).state())
    assert empty.drift["amount"].n == 0 and empty.feature_psi()["amount"] > P.max_feature_psi
    assert run(feature_psi=empty.feature_psi(), rows=0, blocks=0, review_volume=0)["feature_psi"]["breached"]
