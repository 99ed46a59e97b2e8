"""Ingest's pure core: every data bug the simulator injects, with the row accounting."""
from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from pipelines.core.config import load_params
from pipelines.ingest import FILE, ROW, normalize
from pipelines.ops.demo_data import (
    Bug,
    DemoParams,
    apply_bug,
    make_world,
    simulate_day,
    split_labels,
)

DAY = dt.date(2026, 1, 12)


@pytest.fixture(scope="module")
def setup():
    params = load_params()
    p = DemoParams.from_dict(params.section("demo_data"))
    tx, labels = split_labels(simulate_day(p, make_world(p), DAY))
    return params, tx, labels


def _raw(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.lit("part-0.parquet").alias(FILE), pl.int_range(pl.len(), dtype=pl.Int64).alias(ROW))


def _run(setup, kind: str, fraction: float = 0.05):
    params, tx, _ = setup
    raw = apply_bug(tx, Bug(DAY, kind, "amount", fraction), seed=1)
    r = normalize(_raw(raw), params.dataset("transactions"), DAY, params.ingest)
    s = r.stats
    assert s["rows_in"] == raw.height == s["rows_out"] + s["rows_rejected"] == r.canonical.height + r.rejects.height
    return raw, r


def test_clean_partition_passes_unchanged(setup):
    params, tx, _ = setup
    r = normalize(_raw(tx), params.dataset("transactions"), DAY, params.ingest)
    assert r.stats["rows_rejected"] == 0 and r.canonical.height == tx.height
    assert r.canonical.columns == ["event_id", "event_ts", "customer", "terminal", "amount", "category"]
    assert r.canonical["event_ts"].is_sorted()


def test_renamed_column_rejects_the_whole_partition_with_a_reason(setup):
    raw, r = _run(setup, "renamed_column")
    assert r.canonical.height == 0 and r.rejects.height == raw.height
    assert r.stats["missing_columns"] == ["amount"]
    assert set(r.rejects["reject_reason"]) == {"missing_column:amount"}


def test_changed_dtype_is_cast_and_unparseable_values_rejected(setup):
    raw, r = _run(setup, "dtype_change")
    assert r.stats["casts"] == {"amount": "String->Float64"}
    bad = r.rejects.filter(pl.col("reject_reason") == "cast_failed:amount")
    assert bad.height == r.stats["rows_rejected"] == round(raw.height * 0.05)
    assert bad["amount"].str.contains(",").all()         # the original text is kept for forensics
    assert r.canonical["amount"].dtype == pl.Float64 and r.canonical["amount"].null_count() == 0


def test_duplicate_ids_keep_the_earliest_and_reject_the_rest(setup):
    params, tx, _ = setup
    raw, r = _run(setup, "duplicate_ids")
    assert r.canonical["event_id"].is_unique().all()
    assert r.canonical.height == tx.height
    assert set(r.rejects["reject_reason"]) == {"duplicate_id"}
    # the kept row of a conflicting duplicate is the one first in source order, not the altered copy
    kept = r.canonical.join(tx.rename({"tx_id": "event_id"}).select("event_id", pl.col("amount").alias("orig")), on="event_id")
    assert (kept["amount"] == kept["orig"]).all()


@pytest.mark.parametrize("kind", ["nulls", "out_of_range", "ts_outside_day"])
def test_row_value_bugs_pass_ingest_for_validation_to_judge(setup, kind):
    raw, r = _run(setup, kind)
    assert r.stats["rows_rejected"] == 0 and r.canonical.height == raw.height


def test_empty_partition_gives_an_empty_canonical_partition(setup):
    raw, r = _run(setup, "empty_partition")
    assert raw.height == 0 and r.canonical.height == 0 and r.rejects.height == 0


def test_null_ids_and_timestamps_are_rejected_with_their_codes(setup):
    params, tx, _ = setup
    raw = tx.head(10).with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("tx_id")).alias("tx_id"),
        pl.when(pl.int_range(pl.len()) == 1).then(None).otherwise(pl.col("tx_ts")).alias("tx_ts"))
    r = normalize(_raw(raw), params.dataset("transactions"), DAY, params.ingest)
    assert r.rejects.sort(ROW)["reject_reason"].to_list() == ["null_id", "null_timestamp"]
    assert r.canonical.height == 8


def test_labels_get_their_availability_time(setup):
    params, _, labels = setup
    landed = DAY + dt.timedelta(days=7)
    r = normalize(_raw(labels), params.dataset("labels"), landed, params.ingest)
    assert r.canonical.columns == ["event_id", "label", "label_date", "available_at"]
    assert r.canonical["available_at"].unique().to_list() == [dt.datetime(2026, 1, 20)]


@pytest.mark.parametrize("how", ["as_is", "one_day_a_batch", "every_id_one_hash"])
def test_ids_of_earlier_days_are_found_exactly_whatever_the_hash_and_batches(tmp_path, monkeypatch, how):
    """seen_before cuts the earlier days by a 64-bit hash of the id (several days in one join), then
    checks the ids themselves: the rows found are exactly those whose id is among the day's, with
    their labels, also when every id shares one hash (a collision is no match) and one day a batch."""
    import dataclasses

    from pipelines import ingest
    from pipelines.core import lineage, storage

    params = load_params()
    store = dataclasses.replace(params.storage, lake=str(tmp_path / "lake"))
    ds = params.dataset("labels")
    first = ds.first_date
    days = [first + dt.timedelta(days=k) for k in range(5)]
    with storage.Publisher(store.lake, None) as pub:
        for k, d in enumerate(days[:4]):
            uri = store.uri("canonical", dataset=ds.name, date=d.isoformat())
            part = pub.partition(uri, "ingest")
            part.put_parquet(uri, pl.DataFrame({"event_id": [f"e{k}-{i}" for i in range(50)],
                                                "label": pl.Series([i % 2 for i in range(50)], dtype=pl.Int8)}))
            part.commit()
    if how == "one_day_a_batch":
        monkeypatch.setattr(ingest, "ID_BATCH_ROWS", 1)
    elif how == "every_id_one_hash":
        monkeypatch.setattr(ingest, "_id_hash",
                            lambda: (pl.col("event_id").fill_null("").str.len_bytes().cast(pl.UInt64) * 0 + 7).alias("__h"))
    asked = pl.DataFrame({"event_id": ["e0-3", "e2-10", "e2-11", "e3-49", "new-1", "e9-1", None]})
    seen = ingest.seen_before(ds, days[4], store, 45, lineage.Reader(), None, asked)
    assert sorted(seen.rows()) == [("e0-3", 1), ("e2-10", 0), ("e2-11", 1), ("e3-49", 1)]
    assert seen.columns == ["event_id", "label"]
    assert ingest.seen_before(ds, days[4], store, 45, lineage.Reader(), None, asked.clear()).height == 0
