"""Scoring: the rule scorer, chunked model scoring with flagged defaults, manifest checks."""
from __future__ import annotations

import dataclasses
import datetime as dt
import io

import numpy as np
import polars as pl
import pytest

from pipelines.core.config import ScoreParams
from pipelines.core.modelio import ManifestMismatch
from pipelines.core.rules import rule_scores
from pipelines.core.scoring import ScoringError, Served, fill_defaults, score_partition

D = dt.date(2026, 3, 10)


SP = ScoreParams(model_name="m", alias="champion", chunk_rows=4, cache_dir=None, registry_timeout_s=1,
                 feature_defaults={"amount": "reference_median"},
                 rules={"default_score": 0.02, "threshold": 0.5,
                        "when": [{"feature": "amount", "op": ">", "value": 250.0, "score": 0.8}]},
                 carry_columns=("amount",))


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
    assert out["amount"].equals(_frame()["amount"])                 # carried as built (decide's rules read it)
    with pytest.raises(Exception, match=r"score.carry_columns \['nope'\] are not columns"):
        score_partition(_frame(), FMAN, served, dataclasses.replace(SP, carry_columns=("nope",)), D, "t")


def test_model_scores_in_chunks_and_flags_defaulted_features():
    profile = {"features": {"amount": {"sample": list(range(101))}}}
    served = Served("model", [], "ok", "m", "3", "run", "sha", _booster(), MAN, 0.4, profile)
    out, stats = score_partition(_frame(), FMAN, served, SP, D, "t")
    assert stats["chunks"] == 3 and out.height == 10                      # 10 rows in chunks of 4
    assert out["defaulted_features"].to_list()[2] == ["amount"] and out["fallback"].to_list()[2] == ["feature_default"]
    assert out["amount"][2] is None and out["amount"].equals(_frame()["amount"])   # the row as built, not as filled
    assert out["fallback"].to_list()[0] == [] and stats["fallback_rows"] == {"feature_default": 2}
    assert set(out["model_version"]) == {"3"} and set(out["spec_hash"]) == {"s1"}
    filled, names = fill_defaults(_frame(), SP.feature_defaults, ["amount"], profile)
    assert filled["amount"][2] == 50 and names.to_list()[1] == []
    again, _ = score_partition(_frame(), FMAN, served, SP, D, "t")
    assert again.equals(out)


def test_the_flag_lists_are_the_columns_a_list_literal_gives():
    """score_partition builds its per-row lists (`fallback`, `defaulted_features`) from Arrow offsets: the
    same values, dtype and Arrow type as polars' broadcast of the literal, for an empty list and a fallback's."""
    from pipelines.core.scoring import _lists

    for values in ([], ["registry_cache"], ["registry_cache", "feature_default"]):
        want = pl.DataFrame({"k": range(5)}).with_columns(pl.lit(values, dtype=pl.List(pl.String)).alias("f"))["f"]
        got = _lists(values, 5, "f")
        assert got.dtype == want.dtype and got.to_list() == want.to_list() == [values] * 5
        assert got.to_arrow().type == want.to_arrow().type
    assert _lists([], 0, "f").len() == 0
    served = Served("model", ["registry_cache"], "cache", "m", "3", "run", "sha", _booster(), MAN, 0.4,
                    {"features": {"amount": {"sample": list(range(101))}}})
    out, stats = score_partition(_frame(), FMAN, served, SP, D, "t")
    assert out["fallback"].to_list()[0] == ["registry_cache"]
    assert out["fallback"].to_list()[2] == ["registry_cache", "feature_default"]
    assert stats["fallback_rows"] == {"feature_default": 2, "registry_cache": 10}
    nodefault, st = score_partition(_frame().drop_nulls(), FMAN, served, SP, D, "t")
    assert nodefault["fallback"].to_list() == [["registry_cache"]] * 8 and nodefault["defaulted_features"].to_list() == [[]] * 8
    assert st["fallback_rows"] == {"registry_cache": 8}


def test_manifest_mismatch_is_an_error_never_a_silent_misscore():
    served = Served("model", [], "ok", "m", "3", "run", "sha", _booster(), MAN, 0.4, {"features": {}})
    with pytest.raises(ManifestMismatch, match="spec"):
        score_partition(_frame(), {**FMAN, "spec_hash": "other"}, served, SP, D, "t")
    with pytest.raises(ManifestMismatch, match="dtype"):
        score_partition(_frame().with_columns(pl.col("n").cast(pl.Float64)), FMAN, served, SP, D, "t")
    with pytest.raises(ManifestMismatch, match="missing"):
        score_partition(_frame().drop("n"), FMAN, served, SP, D, "t")


def _scored_lake(tmp_path, **score):
    """A lake holding D's feature partition (11 rows: 3 batches of score.chunk_rows 4), its params and a
    model served with a reference profile of it."""
    import yaml

    from pipelines.core import storage
    from pipelines.core.config import load_params
    from pipelines.core.drift import reference_profile
    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["storage"]["lake"] = str(tmp_path / "lake")
    raw["score"].update(chunk_rows=4, **score)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    store = params.storage
    frame = pl.concat([_frame(), _frame().head(1).with_columns(pl.lit("e10").alias("event_id"))])   # 11 rows: 3 batches
    with storage.Publisher(store.lake) as pub:
        uri = store.uri("features", date=D.isoformat())
        part = pub.partition(uri, "features")
        part.put_parquet(uri, frame)
        part.put_json(store.uri("features_manifest", date=D.isoformat()), FMAN)
        part.commit()
    profile = reference_profile(frame.with_columns(score=pl.lit(0.1)), MAN, params.evaluate)
    return params, frame, profile, Served("model", [], "ok", "m", "3", "run", "sha", _booster(), MAN, 0.4, profile)


def test_a_date_scored_in_shards_gives_the_bytes_and_record_of_one_run(tmp_path, caplog):
    """shards.count 3: batch i of the feature partition scored by shard i mod 3 (each a partition of
    its own), merged batch by batch into the bytes and record of the unsharded predictions; a shard
    published by its own task is merged as it is; merged shards are removed."""
    from pipelines.core import storage
    from pipelines.core.drift import FeatureDrift
    from pipelines.core.scoring import score_day
    from pipelines.core.shards import Shard

    params, frame, profile, served = _scored_lake(tmp_path)          # (score.workers: this machine's cores)
    store = params.storage
    pred = store.uri("predictions", date=D.isoformat())

    def scored(recompute: bool = True, **kw) -> tuple[bytes, dict]:
        score_day(params, D, served, recompute=recompute, **kw)
        return storage.read_bytes(pred), storage.read_json(storage.record_uri(pred))

    one, rec = scored()
    observed = storage.read_json(store.uri("features_observed", date=D.isoformat()))
    assert observed == FeatureDrift(profile).update(frame).state() and observed["amount"]["nulls"] == 2
    assert store.uri("features_observed", date=D.isoformat()) in rec["objects"]      # part of the record
    assert score_day(params, D, served, shard=Shard(1, 3))["skipped"]        # the date is scored already
    storage.delete(storage.record_uri(pred))
    score_day(params, D, served, shard=Shard(1, 3))                          # shard 1's task
    shard1 = tmp_path / "lake" / "_shards" / "score" / f"date={D}" / "of=3" / "shard=1" / "part-0.parquet"
    assert pl.read_parquet(shard1)["event_id"].to_list() == ["e4", "e5", "e6", "e7"]     # batch 1
    caplog.set_level("INFO", "pipelines.scoring")
    assert scored(recompute=False, count=3) == (one, rec)                  # the features' counts merged too
    assert "shard 1/3: unchanged since its record" in caplog.text and "shard 0/3: 1 batches, 4 rows" in caplog.text
    assert not [f for f in shard1.parent.parent.rglob("*") if f.is_file()]   # every shard's files, timings included
    stats = storage.read_json(store.uri("scoring_stats", date=D.isoformat()))
    assert stats["shards"] == 3 and stats["rows"] == 11 and stats["chunks"] == 3


def test_workers_default_to_the_cores_at_most_four(monkeypatch):
    import os

    from pipelines.core import scoring

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert scoring.workers(dataclasses.replace(SP, workers=3)) == 3
    assert 1 <= scoring.workers(SP) <= scoring.AUTO_WORKERS == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert scoring.workers(SP) == 1


def test_batches_scored_at_once_give_the_bytes_and_record_of_one_at_a_time(tmp_path, monkeypatch):
    """score.workers 3 (the 3 batches in threads of their own, one predict thread each): the same
    predictions, features' counts and run key as one batch at a time; the booster's thread count is
    restored after; an error in any batch, or in the writer, fails the date, nothing published, no
    scoring thread left."""
    import json
    import threading

    from pipelines.core import storage
    from pipelines.core.scoring import score_day

    params, frame, profile, served = _scored_lake(tmp_path, workers=1)
    store, d = params.storage, D.isoformat()
    outputs = ("predictions", "features_observed", "scored_model")

    def scored(p) -> tuple:
        score_day(p, D, served, recompute=True)
        rec = storage.read_json(storage.record_uri(store.uri("predictions", date=d)))
        return tuple(storage.read_bytes(store.uri(k, date=d)) for k in outputs) + (rec["run"],)

    served.booster.set_param({"nthread": 2})
    one = scored(params)
    many = dataclasses.replace(params, raw={**params.raw, "score": {**params.raw["score"], "workers": 3}})
    assert scored(many) == one and json.loads(one[1])["amount"]["n"] == 11
    # the file's last batch (3 rows) scored as slices, one per thread: the same bytes
    from pipelines.core import scoring

    pieces = []
    monkeypatch.setattr(scoring, "SPLIT_ROWS", 1)
    monkeypatch.setattr(scoring, "score_partition", lambda frame, *a, **k: (pieces.append(frame.height),
                                                                            score_partition(frame, *a, **k))[1])
    for w, split in ((3, [1, 1, 1]), (2, [2, 1])):
        pieces.clear()
        assert scored(dataclasses.replace(params, raw={**params.raw, "score": {**params.raw["score"], "workers": w}})) == one
        assert sorted(pieces[2:]) == sorted(split) and sorted(pieces[:2]) == [4, 4], (w, pieces)
        stats = storage.read_json(store.uri("scoring_stats", date=d))
        assert stats["rows"] == 11 and stats["chunks"] == 3            # a batch in slices is still one chunk
    monkeypatch.undo()
    assert json.loads(served.booster.save_config())["learner"]["generic_param"]["nthread"] == "2"   # as it was
    bad = dataclasses.replace(served, manifest={**MAN, "spec_hash": "other"})
    storage.delete(storage.record_uri(store.uri("predictions", date=d)))
    with pytest.raises(ManifestMismatch, match="nothing scored"):
        score_day(many, D, bad, recompute=True)
    assert not storage.exists(storage.record_uri(store.uri("predictions", date=d)))
    # the features' sha256 is checked beside the scoring: bytes altered since their record fail the
    # date once scored, before anything is published
    feats = storage.local_path(store.uri("features", date=d))
    good = feats.read_bytes()
    monkeypatch.setenv("FRAUDOPS_DIGESTS", "off")
    altered = good.replace(b"e10", b"e11")
    assert altered != good and pl.read_parquet(io.BytesIO(altered))["event_id"][-1] == "e11"    # still read: scored, then refused
    feats.write_bytes(altered)
    storage.delete(store.uri("features_observed", date=d))
    with pytest.raises(ScoringError, match="changed since it was committed.*nothing scored"):
        score_day(many, D, served, recompute=True)
    assert not storage.exists(storage.record_uri(store.uri("predictions", date=d)))
    assert not storage.exists(store.uri("features_observed", date=d))
    feats.write_bytes(good[:-100] + bytes(100))       # cut: its read fails, and the error told is the bytes'
    with pytest.raises(ScoringError, match="changed since it was committed.*nothing scored"):
        score_day(many, D, served, recompute=True)
    assert not storage.exists(storage.record_uri(store.uri("predictions", date=d)))
    assert not storage.exists(store.uri("features_observed", date=d))
    feats.write_bytes(good)

    def full(self, df):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(storage.ParquetSink, "write", full)
    with pytest.raises(OSError, match="No space"):           # the writer fails: the threads stop at once
        score_day(many, D, served, recompute=True)
    assert json.loads(served.booster.save_config())["learner"]["generic_param"]["nthread"] == "2"
    assert not [t for t in threading.enumerate() if t.name.startswith("score_")]
