"""Every data bug the simulator can inject, through ingest and validate on the real S3 endpoint:
each ends in a clear error or a quarantine with a reason, the accounting balances, and nothing
downstream reads a blocked partition."""
from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from pipelines.core import storage
from pipelines.core.cli import StageFailed
from pipelines.core.config import load_params
from pipelines.ops.demo_data import Bug, DemoParams, _encode, apply_bug, make_world, simulate_day, split_labels
from tests.conftest import params_with_lake

pytestmark = pytest.mark.integration
BASE = dt.date(2026, 2, 1)
KINDS = ["clean", "nulls", "nulls_few", "renamed_column", "dtype_change", "duplicate_ids", "out_of_range",
         "ts_outside_day", "empty_partition", "corrupt_file", "missing_partition"]


@pytest.fixture(scope="module")
def lake(stack, make_bucket, tmp_path_factory):
    """Raw partitions, one date per bug kind, in a bucket of their own."""
    lake = make_bucket("fraudops-bugs")
    path = params_with_lake(tmp_path_factory.mktemp("bugs"), lake)
    params = load_params(path)
    p = DemoParams.from_dict(params.section("demo_data"))
    world = make_world(p)
    tx_ds = params.dataset("transactions")
    days = {}
    for i, kind in enumerate(KINDS):
        day = BASE + dt.timedelta(days=i)
        tx, _ = split_labels(simulate_day(p, world, day))
        out = tx
        if kind != "clean":
            bug = Bug(day, "nulls", "amount", 0.004) if kind == "nulls_few" else Bug(day, kind, "amount", 0.05)
            out = apply_bug(tx, bug, p.seed)
        if out is not None:
            data = out if isinstance(out, bytes) else _encode(out, "parquet")
            storage.write_bytes(f"{tx_ds.partition_uri(day)}/part-0.parquet", data)
        days[kind] = (day, tx.height)
    return str(path), params, days


def run(stage: str, params_path: str, day: dt.date):
    from pipelines import ingest, validate

    mod = {"ingest": ingest, "validate": validate}[stage]
    args = ["--params", params_path, "--date", day.isoformat()]
    return mod.main(args + (["--dataset", "transactions"] if stage == "ingest" else []))


def stats(params, day):
    return storage.read_json(params.storage.uri("ingest_stats", dataset="transactions", date=day.isoformat()))


def results(params, day):
    return storage.read_json(params.storage.uri("validation_results", dataset="transactions", date=day.isoformat()))


def balanced(params, day, raw_rows):
    s, r = stats(params, day), results(params, day)
    assert s["rows_in"] == s["rows_out"] + s["rows_rejected"] == raw_rows
    assert r["rows_in"] == s["rows_out"] == r["rows_validated"] + r["rows_quarantined"] + r["rows_held"]
    return s, r


def quarantine(params, day) -> pl.DataFrame:
    return storage.read_parquet(params.storage.uri("quarantine", dataset="transactions", date=day.isoformat()))


def validated_exists(params, day) -> bool:
    return storage.exists(params.storage.uri("validated", dataset="transactions", date=day.isoformat()))


def test_clean_day_passes(lake):
    path, params, days = lake
    day, n = days["clean"]
    run("ingest", path, day), run("validate", path, day)
    s, r = balanced(params, day, n)
    assert r["status"] == "passed" and r["rows_validated"] == n and validated_exists(params, day)
    html = storage.read_bytes(params.storage.uri("validation_report", dataset="transactions", date=day.isoformat()))
    assert b"passed" in html and b"https://" not in html


def test_many_nulls_block_the_day_and_quarantine_the_rows(lake):
    path, params, days = lake
    day, n = days["nulls"]
    run("ingest", path, day)
    with pytest.raises(StageFailed, match=rf"transactions {day}: partition blocked.*max_quarantine_fraction"):
        run("validate", path, day)
    s, r = balanced(params, day, n)
    assert r["status"] == "blocked" and not validated_exists(params, day)
    q = quarantine(params, day)
    assert q.height == round(n * 0.05) and q["amount"].null_count() == q.height
    assert set(q["failed_expectations"]) == {"not_null:amount"}


def test_few_nulls_are_quarantined_and_the_day_passes(lake):
    path, params, days = lake
    day, n = days["nulls_few"]
    run("ingest", path, day), run("validate", path, day)
    s, r = balanced(params, day, n)
    assert r["status"] == "passed" and r["rows_quarantined"] == round(n * 0.004) > 0
    assert storage.read_parquet(params.storage.uri("validated", dataset="transactions", date=day.isoformat()))["amount"].null_count() == 0


def test_renamed_column_is_a_clear_error_and_all_rows_are_rejected(lake):
    path, params, days = lake
    day, n = days["renamed_column"]
    with pytest.raises(StageFailed, match=r"source column\(s\) \['amount'\] missing .*found .*'amount_v2'"):
        run("ingest", path, day)
    s = stats(params, day)
    assert s["rows_in"] == s["rows_rejected"] == n and s["rows_out"] == 0
    rejects = storage.read_parquet(params.storage.uri("rejects", dataset="transactions", date=day.isoformat()))
    assert rejects.height == n and set(rejects["reject_reason"]) == {"missing_column:amount"}
    with pytest.raises(StageFailed, match="canonical partition .* does not exist"):
        run("validate", path, day)
    assert not validated_exists(params, day)


def test_changed_dtype_rejects_the_unparseable_rows(lake):
    path, params, days = lake
    day, n = days["dtype_change"]
    run("ingest", path, day), run("validate", path, day)
    s, r = balanced(params, day, n)
    assert s["rejected_by_reason"] == {"cast_failed:amount": round(n * 0.05)}
    assert r["status"] == "passed"


def test_duplicated_ids_are_rejected_and_the_rest_passes(lake):
    path, params, days = lake
    day, n = days["duplicate_ids"]
    run("ingest", path, day), run("validate", path, day)
    dup = round(n * 0.05)
    s, r = balanced(params, day, n + dup + max(1, dup // 2))
    assert s["rows_out"] == n and s["rejected_by_reason"] == {"duplicate_id": dup + max(1, dup // 2)}
    assert r["status"] == "passed"


@pytest.mark.parametrize("kind,rule", [("out_of_range", "plausible_range:amount"), ("ts_outside_day", "in_partition_day:event_ts")])
def test_bad_values_are_quarantined_with_the_rule_name(lake, kind, rule):
    path, params, days = lake
    day, n = days[kind]
    run("ingest", path, day)
    with pytest.raises(StageFailed, match="partition blocked"):
        run("validate", path, day)
    s, r = balanced(params, day, n)
    q = quarantine(params, day)
    assert q.height == round(n * 0.05) and set(q["failed_expectations"]) == {rule}


def test_empty_partition_is_blocked_on_row_count(lake):
    path, params, days = lake
    day, _ = days["empty_partition"]
    run("ingest", path, day)
    with pytest.raises(StageFailed, match="row_count"):
        run("validate", path, day)
    balanced(params, day, 0)
    assert not validated_exists(params, day)


def test_corrupt_file_is_a_clear_error_naming_the_key(lake):
    path, params, days = lake
    day, _ = days["corrupt_file"]
    with pytest.raises(StageFailed, match=rf"date={day}/part-0.parquet is unreadable as parquet"):
        run("ingest", path, day)
    assert not storage.exists(params.storage.uri("canonical", dataset="transactions", date=day.isoformat()))


def test_missing_partition_is_a_clear_error_naming_the_prefix(lake):
    path, params, days = lake
    day, _ = days["missing_partition"]
    with pytest.raises(StageFailed, match=rf"no source partition at s3://fraudops-bugs/raw/transactions/date={day}/"):
        run("ingest", path, day)


def test_features_refuse_a_blocked_day(lake):
    from pipelines import features

    path, params, days = lake
    day, _ = days["nulls"]
    with pytest.raises(features.MissingHistory, match=rf"validated partition\(s\) missing for the target dates.*date={day}"):
        features.main(["--params", path, "--date", day.isoformat()])
    assert not storage.exists(params.storage.uri("features", date=day.isoformat()))


def test_a_day_that_is_fixed_passes_and_a_day_that_breaks_is_withdrawn(lake):
    """Re-running validate on a blocked date after the data changed: stale outputs never linger."""
    path, params, days = lake
    day, n = days["clean"]
    run("ingest", path, day), run("validate", path, day)
    assert validated_exists(params, day)
    p = DemoParams.from_dict(params.section("demo_data"))
    tx, _ = split_labels(simulate_day(p, make_world(p), day))
    storage.write_bytes(f"{params.dataset('transactions').partition_uri(day)}/part-0.parquet",
                        _encode(apply_bug(tx, Bug(day, "out_of_range", "amount", 0.05), p.seed), "parquet"))
    run("ingest", path, day)
    with pytest.raises(StageFailed):
        run("validate", path, day)
    assert not validated_exists(params, day)
