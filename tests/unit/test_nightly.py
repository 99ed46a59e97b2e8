"""The nightly stages' pure cores: the retrain rule, decisions, drift statistics, scoring paths."""
from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from pipelines.config import DecideParams, RetrainParams, ScoreParams
from pipelines.decide import OVERRIDE_SCHEMA, decide_frame, summary
from pipelines.model import ManifestMismatch
from pipelines.monitor import categorical_drift, numeric_drift, psi
from pipelines.retrain import should_retrain
from pipelines.score import Served, fill_defaults, rule_scores, score_partition

D = dt.date(2026, 3, 10)
RP = RetrainParams(drift_days=2, of_last_days=3, cooldown_days=7, max_per_30_days=2, window_days=40, dag_id="training")


def days(*offsets):
    return {D - dt.timedelta(days=o): True for o in offsets}


# --------------------------------------------------------------------------- retrain rule
@pytest.mark.parametrize("drifted,previous,expect,why", [
    ({}, [], False, "not drifted"),
    (days(0), [], False, "1 of the last 3"),
    (days(1, 2), [], False, "not drifted"),                 # the latest day must be drifted
    (days(0, 2), [], True, "drift on 2 of the last 3"),
    (days(0, 3), [], False, "1 of the last 3"),              # day -3 is outside the window
    (days(0, 1), [D - dt.timedelta(days=6)], False, "cooldown"),
    (days(0, 1), [D - dt.timedelta(days=7)], True, "drift on 2"),
    (days(0, 1), [D - dt.timedelta(days=10), D - dt.timedelta(days=20)], False, "budget"),
    (days(0, 1), [D - dt.timedelta(days=10), D - dt.timedelta(days=30)], True, "drift on 2"),
])
def test_retrain_rule(drifted, previous, expect, why):
    d = should_retrain(D, drifted, previous, RP)
    assert d.retrain is expect and why in d.reason, d.reason


def test_retrain_fires_once_per_cooldown_over_a_drifting_fortnight():
    flags, fired = {}, []
    start = dt.date(2026, 3, 1)
    for i in range(20):
        day = start + dt.timedelta(days=i)
        flags[day] = i >= 5                       # drift from day 5 on, every day
        if should_retrain(day, flags, fired, RP).retrain:
            fired.append(day)
    assert fired == [start + dt.timedelta(days=6), start + dt.timedelta(days=13)]   # N=2, then cooldown 7
    # a missing monitoring day counts as not drifted, and says so
    d = should_retrain(D, {D: True, D - dt.timedelta(days=1): None}, [], RP)
    assert not d.retrain and "no monitoring for" in d.reason


# --------------------------------------------------------------------------- decisions
DP = DecideParams(block_threshold=0.9, review_threshold="operating", review_capacity=3, over_capacity="approve",
                  rules=({"name": "huge", "feature": "amount", "op": ">", "value": 1000.0, "decision": "review"},),
                  allow_list={"customer": ("vip",)})


def _pred(scores, customers=None):
    n = len(scores)
    return pl.DataFrame({"event_id": [f"e{i}" for i in range(n)], "customer": customers or [f"c{i}" for i in range(n)],
                         "ds": [D] * n, "score": pl.Series(scores, dtype=pl.Float32),
                         "threshold": pl.Series([0.5] * n, dtype=pl.Float32), "model_name": ["m"] * n,
                         "model_version": ["1"] * n, "scored_by": ["model"] * n,
                         "fallback": pl.Series([[]] * n, dtype=pl.List(pl.String))})


def test_decisions_precedence_capacity_and_overrides():
    pred = _pred([0.95, 0.8, 0.7, 0.6, 0.55, 0.1, 0.2, 0.99], ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "vip"])
    feats = pl.DataFrame({"event_id": pred["event_id"], "amount": [10.0, 10, 10, 10, 10, 5000, 10, 10]})
    over = pl.DataFrame({"event_id": ["e1", "nope"], "decision": ["block", "approve"], "reviewer": ["ann", "bob"],
                         "note": ["confirmed", ""], "at": [dt.datetime(2026, 3, 10, tzinfo=dt.timezone.utc)] * 2},
                        schema=OVERRIDE_SCHEMA)
    out = decide_frame(pred, feats, over, DP)
    got = dict(zip(out["event_id"], zip(out["decision"], out["reason_code"])))
    assert got["e0"] == ("block", "model_block")
    assert got["e7"] == ("approve", "allow_list:customer")          # allow-list beats the model's block
    assert got["e5"] == ("review", "rule:huge")                      # the rule beats the model's approve
    assert got["e1"] == ("block", "human_override")                  # the human wins
    # capacity 3: the forced review first, then the highest model scores (e2, e3); e4 spills over
    assert got["e2"] == ("review", "model_review") and got["e3"] == ("review", "model_review")
    assert got["e4"] == ("approve", "over_capacity")
    queue = out.filter(pl.col("queue_rank").is_not_null()).sort("queue_rank")["event_id"].to_list()
    assert queue == ["e5", "e2", "e3"]
    assert out.height == pred.height and out["decision"].null_count() == 0 and out["reason_code"].null_count() == 0
    s = summary(out, over, DP)
    assert s["overrides_applied"] == 1 and s["overrides_unmatched"] == ["nope"] and s["over_capacity"] == 1
    assert sum(s["decisions"].values()) == pred.height


def test_rule_columns_must_exist():
    bad = DecideParams(**{**DP.__dict__, "rules": ({"name": "x", "feature": "nope", "op": ">", "value": 1,
                                                    "decision": "review"},)})
    with pytest.raises(Exception, match="nope"):
        decide_frame(_pred([0.1]), pl.DataFrame({"event_id": ["e0"]}), pl.DataFrame(schema=OVERRIDE_SCHEMA), bad)


# --------------------------------------------------------------------------- drift statistics
def _ref(values: np.ndarray, bins: int = 10) -> dict:
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    shares = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1) / len(values)
    return {"kind": "numeric", "null_share": 0.0, "edges": edges.tolist(), "shares": shares.tolist(),
            "min": float(values.min()), "max": float(values.max()),
            "sample": np.quantile(values, np.linspace(0, 1, 101)).tolist()}


def test_psi_and_ks_see_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    ref = _ref(rng.lognormal(3, 1, 50_000))
    same = numeric_drift(pl.Series(rng.lognormal(3, 1, 5_000)), ref)
    moved = numeric_drift(pl.Series(rng.lognormal(3, 1, 5_000) * 2.0), ref)
    assert same["psi"] < 0.02 and same["ks"] < 0.04
    assert moved["psi"] > 0.25 and moved["ks"] > 0.15
    beyond = numeric_drift(pl.Series([ref["max"] * 2] * 10 + [ref["sample"][50]] * 90), ref)
    assert beyond["out_of_range_share"] == pytest.approx(0.1)
    zeros = np.where(rng.random(50_000) < 0.95, 0.0, rng.random(50_000))     # zero-inflated, like fraud rates
    z = numeric_drift(pl.Series(np.where(rng.random(5_000) < 0.95, 0.0, rng.random(5_000))), _ref(zeros))
    assert z["ks"] < 0.05 and z["psi"] < 0.05
    nulls = numeric_drift(pl.Series([None] * 500 + list(rng.lognormal(3, 1, 4_500))), ref)
    assert nulls["null_share_increase"] == pytest.approx(0.1) and nulls["psi"] > 0.25
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0


def test_categorical_drift_counts_unseen_values():
    ref = {"kind": "categorical", "null_share": 0.0, "frequencies": {"0": 0.5, "1": 0.5}}
    same = categorical_drift(pl.Series([0, 1] * 500, dtype=pl.Int16), ref)
    new = categorical_drift(pl.Series([0] * 500 + [7] * 500, dtype=pl.Int16), ref)
    assert same["psi"] == pytest.approx(0.0, abs=1e-9) and new["psi"] > 1 and new["out_of_range_share"] == 0.5


# --------------------------------------------------------------------------- scoring paths
SP = ScoreParams(model_name="m", alias="champion", chunk_rows=4, cache_dir=None, registry_timeout_s=1,
                 feature_defaults={"amount": "reference_median"},
                 rules={"default_score": 0.02, "threshold": 0.5,
                        "when": [{"feature": "amount", "op": ">", "value": 250.0, "score": 0.8}]})


def _frame():
    return pl.DataFrame({"event_id": [f"e{i}" for i in range(10)], "amount": [10.0, 300, None, 20, 5, 900, 1, 2, 3, None],
                         "n": pl.Series([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=pl.Int32)})


def _booster():
    import xgboost as xgb

    rng = np.random.default_rng(1)
    x = rng.random((200, 2)).astype(np.float32) * [1000, 10]
    return xgb.train({"objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(x, label=(x[:, 0] > 500)), 5)


MAN = {"feature_names": ["amount", "n"], "dtypes": {"amount": "Float64", "n": "Int32"}, "spec_hash": "s1",
       "key_columns": ["event_id"]}
FMAN = {"spec_hash": "s1", "key_columns": ["event_id"], "feature_columns": ["amount", "n"]}


def test_rules_score_every_row_and_flag_it():
    served = Served("rules", ["rules"], "no model")
    out, stats = score_partition(_frame(), FMAN, served, SP, D, "t")
    assert out["score"].to_list() == pytest.approx([0.02, 0.8, 0.02, 0.02, 0.02, 0.8, 0.02, 0.02, 0.02, 0.02])
    assert out["scored_by"].unique().to_list() == ["rules"] and out["model_version"].null_count() == 10
    assert all(f == ["rules"] for f in out["fallback"].to_list()) and stats["fallback_rows"] == {"rules": 10}
    assert rule_scores(_frame(), SP.rules).dtype == np.float32


def test_model_scores_in_chunks_and_flags_defaulted_features():
    profile = {"features": {"amount": {"sample": list(range(101))}}}
    served = Served("model", [], "ok", "m", "3", "run", "sha", _booster(), MAN, 0.4, profile)
    out, stats = score_partition(_frame(), FMAN, served, SP, D, "t")
    assert stats["chunks"] == 3 and out.height == 10                      # 10 rows in chunks of 4
    assert out["defaulted_features"].to_list()[2] == ["amount"] and out["fallback"].to_list()[2] == ["feature_default"]
    assert out["fallback"].to_list()[0] == [] and stats["fallback_rows"] == {"feature_default": 2}
    assert set(out["model_version"]) == {"3"} and set(out["spec_hash"]) == {"s1"}
    filled, names = fill_defaults(_frame(), SP.feature_defaults, ["amount"], profile)
    assert filled["amount"][2] == 50 and names.to_list()[1] == []
    again, _ = score_partition(_frame(), FMAN, served, SP, D, "t")
    assert again.equals(out)


def test_manifest_mismatch_is_an_error_never_a_silent_misscore():
    served = Served("model", [], "ok", "m", "3", "run", "sha", _booster(), MAN, 0.4, {"features": {}})
    with pytest.raises(ManifestMismatch, match="spec"):
        score_partition(_frame(), {**FMAN, "spec_hash": "other"}, served, SP, D, "t")
    with pytest.raises(ManifestMismatch, match="dtype"):
        score_partition(_frame().with_columns(pl.col("n").cast(pl.Float64)), FMAN, served, SP, D, "t")
    with pytest.raises(ManifestMismatch, match="missing"):
        score_partition(_frame().drop("n"), FMAN, served, SP, D, "t")
