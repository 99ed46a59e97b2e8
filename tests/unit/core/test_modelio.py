"""The time split, labelled frames, the feature matrix and the device choice."""
from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest

from pipelines.core import modelio as M
from tests.conftest import publish
from tests.unit.conftest import D, local_lake


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
    # CI has no GPU; on a GPU machine (an H200 on stop 33) auto picks it
    assert M.choose_device("auto") == ("cuda" if M.gpu_visible() else "cpu")


def test_only_a_device_fall_back_counts_as_one():
    def msgs(*texts):
        return [warnings.WarningMessage(UserWarning(t), UserWarning, "x.py", 1) for t in texts]

    assert M.device_fell_back(msgs("[13:25:41] WARNING: learner.cc: No visible GPU is found, setting device to CPU."))
    assert M.device_fell_back(msgs("Device is changed from GPU to CPU as we couldn't find any available GPU on the system."))
    # XGBoost's warning on a GPU machine when a cuda booster is given host data (seen on an H200)
    assert not M.device_fell_back(msgs(
        "[13:25:41] WARNING: error_msg.cc:62: Falling back to prediction using DMatrix due to mismatched devices. "
        "XGBoost is running on: cuda:0, while the input data is on: cpu."))
    assert not M.device_fell_back([])


def test_feature_matrix_refuses_a_mismatch():
    man = {"feature_names": ["a", "b"], "dtypes": {"a": "Float32", "b": "Int32"}, "spec_hash": "x"}
    ok = pl.DataFrame({"b": pl.Series([1, None], dtype=pl.Int32), "a": pl.Series([0.5, 1.5], dtype=pl.Float32)})
    x = M.feature_matrix(ok, man)
    assert x.dtype == np.float32 and x[0].tolist() == [0.5, 1.0] and np.isnan(x[1, 1])   # manifest order, nulls -> NaN
    with pytest.raises(M.ManifestMismatch, match="missing feature"):
        M.feature_matrix(ok.drop("b"), man)
    with pytest.raises(M.ManifestMismatch, match="dtype mismatch"):
        M.feature_matrix(ok.with_columns(pl.col("b").cast(pl.Float64)), man)


def test_the_column_major_matrix_predicts_the_same_floats():
    """score's matrix (columns=True: Fortran order, read by inplace_predict through its strides) holds the
    rows' values and gives the same predictions, bit for bit, as the row-major one training uses, also
    in chunks (strided slices) and with missing values."""
    import xgboost as xgb

    rng = np.random.default_rng(3)
    n = 5_000
    frame = pl.DataFrame({"a": pl.Series(rng.random(n) * 100, dtype=pl.Float32),
                          "b": pl.Series(rng.integers(0, 9, n), dtype=pl.Int32),
                          "c": rng.normal(size=n)}).with_columns(
        pl.when(pl.int_range(n) % 7 == 0).then(None).otherwise(pl.col("b")).alias("b"))
    man = {"feature_names": ["c", "a", "b"], "dtypes": {"a": "Float32", "b": "Int32", "c": "Float64"}, "spec_hash": "x"}
    rows, cols = M.feature_matrix(frame, man), M.feature_matrix(frame, man, columns=True)
    assert rows.flags.c_contiguous and cols.flags.f_contiguous and cols.dtype == np.float32
    assert np.array_equal(rows, cols, equal_nan=True)
    odds = np.exp(rows[:, 0] + rows[:, 1] / 50 - np.nan_to_num(rows[:, 2]) / 4)
    label = rng.random(n) < odds / (1 + odds)                 # every feature matters: many distinct scores
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "nthread": 1},
                        xgb.DMatrix(rows, label=label), 20)
    want = M.predict(booster, rows)
    assert want.dtype == np.float32 and len(np.unique(want)) > 50
    for chunk in (n, 1_024):
        got = M.predict(booster, cols, chunk_rows=chunk)
        assert got.tobytes() == want.tobytes()


def test_labelled_frames_account_for_every_row_and_name_what_is_missing(tmp_path, params):

    store = local_lake(tmp_path, params)
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

    store = local_lake(tmp_path, params)
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


def test_a_labels_day_validation_blocked_is_never_trained_on(tmp_path, params):
    """The labels of a day blocked by expectations/labels.json (canonical, but no validated partition):
    training fails naming the day and the report; once they validate, they are read."""
    from pipelines.core import storage

    store = local_lake(tmp_path, params)
    day, land = D(2026, 2, 1), D(2026, 2, 8)
    feats = pl.DataFrame({"event_id": ["a", "b"], "amount": pl.Series([1.0, 2.0], dtype=pl.Float64)})
    publish(store.uri("features", date=day.isoformat()), feats, {store.uri("features_manifest", date=day.isoformat()):
            {"feature_columns": ["amount"], "dtypes": {"amount": "Float64"}, "spec_hash": "s1"}})
    lab = pl.DataFrame({"event_id": ["a"], "label": pl.Series([1], dtype=pl.Int8)})        # a truncated feed
    publish(store.uri("canonical", dataset="labels", date=land.isoformat()), lab)
    fields = {"dataset": "labels", "date": land.isoformat()}
    storage.write_bytes(store.uri("validation_results", **fields), storage.json_bytes(
        {"status": "blocked", "reasons": ["row_count: 1 not in [1000, 1000000]"]}))
    with pytest.raises(M.TrainingDataError, match=r"labels 2026-02-08: blocked by validation \(row_count.*report .*"
                                                  r"labels/date=2026-02-08/report.html"):
        M.load_labelled(store, [day], 7, D(2026, 1, 8))
    storage.write_bytes(store.uri("validation_results", **fields), storage.json_bytes({"status": "passed", "reasons": []}))
    publish(store.uri("validated", **fields), lab)
    out, stats = M.load_labelled(store, [day], 7, D(2026, 1, 8))
    assert stats["rows_labelled"] == 1 and stats["rows_unlabeled"] == 1
