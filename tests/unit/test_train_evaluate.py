"""Pure cores of train, evaluate and register: the split, device choice, training determinism,
metrics, precision@k, the reference profile and the gate."""
from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import polars as pl
import pytest

from pipelines import model as M
from pipelines.config import GateParams, load_params
from pipelines.evaluate import classification_metrics, precision_at_k, reference_profile, slice_metrics
from pipelines.register import gate
from pipelines.train import best_f1_threshold, train_model
from tests.conftest import REPO, publish

D = dt.date


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


def test_windows_count_back_from_the_last_labelled_day(params):
    w = M.split_windows(D(2026, 1, 1), D(2026, 2, 28), params.train, 7)
    assert w.test == (D(2026, 2, 15), D(2026, 2, 21))          # 02-28 minus the 7-day label delay
    assert w.valid == (D(2026, 2, 8), D(2026, 2, 14))
    assert w.train == (D(2026, 1, 1), D(2026, 1, 31))          # 7-day gap: 02-01..02-07
    assert (w.valid[0] - w.train[1]).days - 1 >= 7


def test_split_refuses_a_gap_shorter_than_the_label_delay_and_a_short_range(params):
    import dataclasses

    with pytest.raises(M.TrainingDataError, match="gap_days=3 is shorter than the label delay"):
        M.split_windows(D(2026, 1, 1), D(2026, 2, 28), dataclasses.replace(params.train, gap_days=3), 7)
    with pytest.raises(M.TrainingDataError, match="too short"):
        M.split_windows(D(2026, 2, 1), D(2026, 2, 28), params.train, 7)


def test_device_choice_on_a_cpu_machine():
    assert M.choose_device("auto", gpu=False) == "cpu"
    assert M.choose_device("auto", gpu=True) == "cuda"
    assert M.choose_device("cpu", gpu=True) == "cpu"
    assert M.choose_device("cuda", gpu=False) == "cpu"          # recorded as cpu, not silently "cuda"
    assert M.gpu_visible() is False                             # this machine and CI have no GPU


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


def test_slices_and_reference_profile(params):
    rng = np.random.default_rng(0)
    n = 1000
    f = pl.DataFrame({"amount": rng.exponential(50, n), "is_night": rng.integers(0, 2, n).astype(np.int8),
                      "label": (rng.random(n) < 0.1).astype(np.int8), "score": rng.random(n).astype(np.float32)})
    f = f.with_columns(pl.when(pl.int_range(n) < 50).then(None).otherwise(pl.col("amount")).alias("amount"))
    s = slice_metrics(f, ("is_night",), 0.5)
    assert set(s) == {"is_night=0", "is_night=1"} and sum(v["rows"] for v in s.values()) == n
    man = {"feature_names": ["amount", "is_night"]}
    prof = reference_profile(f, man, params.evaluate)
    a = prof["features"]["amount"]
    assert a["kind"] == "numeric" and a["null_share"] == pytest.approx(0.05)
    assert len(a["edges"]) == 9 and sum(a["shares"]) == pytest.approx(0.95)   # nulls are their own share
    assert prof["features"]["is_night"]["kind"] == "categorical"
    assert sum(prof["score"]["shares"]) == pytest.approx(1.0)


G = GateParams("average_precision", {"average_precision": 0.3, "recall": 0.3}, 0.02, 0.10)


def _ev(ap: float, recall: float = 0.5, slice_ap: float | None = None) -> dict:
    return {"average_precision": ap, "recall": recall,
            "slices": {"is_night=1": {"positives": 20, "average_precision": ap if slice_ap is None else slice_ap}}}


def test_gate_cold_start_better_worse_and_slices():
    assert gate(_ev(0.5), None, G, 5).alias == "champion"
    cold_fail = gate(_ev(0.2), None, G, 5)
    assert not cold_fail.passed and cold_fail.alias is None and "average_precision >= 0.3" in cold_fail.reasons[0]
    assert gate(_ev(0.6), _ev(0.5), G, 5).alias == "challenger"
    assert gate(_ev(0.49), _ev(0.5), G, 5).alias == "challenger"            # within delta
    worse = gate(_ev(0.45), _ev(0.5), G, 5)
    assert worse.alias is None and any("champion" in r for r in worse.reasons)
    slice_worse = gate(_ev(0.6, slice_ap=0.3), _ev(0.5, slice_ap=0.5), G, 5)
    assert slice_worse.alias is None and "slice is_night=1" in slice_worse.reasons[0]
    assert gate(_ev(0.6, slice_ap=0.3), _ev(0.5, slice_ap=0.5), G, 50).alias == "challenger"   # too few frauds to gate


def test_feature_matrix_refuses_a_mismatch():
    man = {"feature_names": ["a", "b"], "dtypes": {"a": "Float32", "b": "Int32"}, "spec_hash": "x"}
    ok = pl.DataFrame({"b": pl.Series([1, None], dtype=pl.Int32), "a": pl.Series([0.5, 1.5], dtype=pl.Float32)})
    x = M.feature_matrix(ok, man)
    assert x.dtype == np.float32 and x[0].tolist() == [0.5, 1.0] and np.isnan(x[1, 1])   # manifest order, nulls -> NaN
    with pytest.raises(M.ManifestMismatch, match="missing feature"):
        M.feature_matrix(ok.drop("b"), man)
    with pytest.raises(M.ManifestMismatch, match="dtype mismatch"):
        M.feature_matrix(ok.with_columns(pl.col("b").cast(pl.Float64)), man)


def _local_lake(tmp_path, params):
    import dataclasses

    return dataclasses.replace(params.storage, lake=str(tmp_path / "lake"))


def test_labelled_frames_account_for_every_row_and_name_what_is_missing(tmp_path, params):

    store = _local_lake(tmp_path, params)
    day, land = D(2026, 2, 1), D(2026, 2, 8)
    feats = pl.DataFrame({"event_id": ["a", "b", "c"], "amount": pl.Series([1.0, 2.0, 3.0], dtype=pl.Float64)})
    publish(store.uri("features", date=day.isoformat()), feats, {store.uri("features_manifest", date=day.isoformat()):
            {"feature_columns": ["amount"], "dtypes": {"amount": "Float64"}, "spec_hash": "s1"}})
    lab = pl.DataFrame({"event_id": ["a", "b"], "label": pl.Series([0, 1], dtype=pl.Int8)})   # c: never labelled
    publish(store.uri("canonical", dataset="labels", date=land.isoformat()), lab)
    out, stats = M.load_labelled(store, [day], 7, D(2026, 1, 8))
    assert stats["rows_in"] == 3 == stats["rows_labelled"] + stats["rows_unlabeled"]
    assert stats["rows_unlabeled"] == 1 and stats["labels_repeated"] == 0 and stats["positives"] == 1
    assert out["event_id"].to_list() == ["a", "b"] and out["label"].to_list() == [0, 1]
    (tmp_path / "lake" / "canonical" / "labels" / f"date={land}" / "part-0.parquet").unlink()
    with pytest.raises(M.TrainingDataError, match=r"labels/date=2026-02-08/part-0.parquet: label partition missing"):
        M.load_labelled(store, [day], 7, D(2026, 1, 8))


def test_label_repeated_across_partitions_is_counted_and_the_first_kept(tmp_path, params):

    store = _local_lake(tmp_path, params)
    days = [D(2026, 2, 1), D(2026, 2, 2)]
    for i, d in enumerate(days):
        f = pl.DataFrame({"event_id": [f"e{i}"], "amount": pl.Series([1.0], dtype=pl.Float64)})
        publish(store.uri("features", date=d.isoformat()), f, {store.uri("features_manifest", date=d.isoformat()):
                {"feature_columns": ["amount"], "dtypes": {"amount": "Float64"}, "spec_hash": "s1"}})
    for d, ids, ys in ((D(2026, 2, 8), ["e0"], [1]), (D(2026, 2, 9), ["e1", "e0"], [0, 0])):
        lab = pl.DataFrame({"event_id": ids, "label": pl.Series(ys, dtype=pl.Int8)})
        publish(store.uri("canonical", dataset="labels", date=d.isoformat()), lab)
    out, stats = M.load_labelled(store, days, 7, D(2026, 1, 8))
    assert stats["labels_repeated"] == 1 and out["label"].to_list() == [1, 0]
    missing = tmp_path / "lake" / "features" / "date=2026-02-02" / "part-0.parquet"
    missing.unlink()
    with pytest.raises(M.TrainingDataError, match="date=2026-02-02/part-0.parquet: feature partition missing"):
        M.load_labelled(store, days, 7, D(2026, 1, 8))


def test_validation_summary_keeps_status_and_row_accounting(tmp_path, params):
    from pipelines import storage
    from pipelines.register import validation_summary

    store = _local_lake(tmp_path, params)
    storage.write_bytes(store.uri("validation_results", dataset="transactions", date="2026-02-01"), storage.json_bytes(
        {"status": "blocked", "reasons": ["r1"], "rows_in": 10, "rows_validated": 0, "rows_quarantined": 3,
         "rows_held": 7, "outcomes": ["..."]}))
    out = validation_summary(store, [D(2026, 2, 1), D(2026, 2, 2)])
    assert out == {"2026-02-01": {"status": "blocked", "reasons": ["r1"], "rows_in": 10, "rows_validated": 0,
                                  "rows_quarantined": 3, "rows_held": 7},
                   "2026-02-02": {"status": "missing"}}
