"""Bring your own data: a dataset with other column names, types and layout (CSV, epoch
microseconds, dt=YYYYMMDD folders) works by editing params.yaml alone, and gives exactly the
features of the same data in the default layout."""
from __future__ import annotations

import datetime as dt
import io

import polars as pl
import pytest

from pipelines.core import storage
from pipelines.core.config import date_range, load_params
from pipelines.ops.demo_data import DemoParams, make_world, simulate_day, split_labels
from tests.conftest import params_with_lake

pytestmark = pytest.mark.integration
START, END = dt.date(2026, 1, 1), dt.date(2026, 1, 12)
TARGET = (dt.date(2026, 1, 10), dt.date(2026, 1, 12))


def other_layout(data: dict) -> None:
    """The edit a user makes: only the datasets section changes."""
    lake = data["storage"]["lake"]
    data["datasets"]["transactions"] = {
        "uri": f"{lake}/landing/card_txn", "format": "csv", "partition": "dt={yyyymmdd}", "first_date": "2026-01-01",
        "columns": {"id": "TransactionID", "timestamp": "TxnTimeMicros", "entities": {"customer": "CardHolder", "terminal": "MerchantTerminal"},
                    "numerics": {"amount": "Amt"}, "categoricals": {"category": "MccGroup"}},
        "timestamp_format": None, "timestamp_unit": "us"}
    data["datasets"]["labels"] = {
        "uri": f"{lake}/landing/chargebacks", "format": "csv", "partition": "dt={yyyymmdd}", "first_date": "2026-01-08",
        "columns": {"id": "TransactionID", "label": "FraudFlag"}, "delay_days": 7,
        "timestamp_format": None, "timestamp_unit": None}


def csv_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_csv(buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def two_lakes(stack, make_bucket, tmp_path_factory):
    default = params_with_lake(tmp_path_factory.mktemp("default"), make_bucket("fraudops-byod-a"))
    byod = params_with_lake(tmp_path_factory.mktemp("byod"), make_bucket("fraudops-byod-b"), other_layout)
    pa, pb = load_params(default), load_params(byod)
    p = DemoParams.from_dict(pa.section("demo_data"))
    world = make_world(p)
    for day in date_range(START, END):
        tx, labels = split_labels(simulate_day(p, world, day))
        land = day + dt.timedelta(days=7)
        storage.write_bytes(f"{pa.dataset('transactions').partition_uri(day)}/part-0.parquet", storage.parquet_bytes(tx))
        other = tx.select(pl.col("tx_id").alias("TransactionID"), pl.col("tx_ts").cast(pl.Int64).alias("TxnTimeMicros"),
                          pl.col("customer_id").alias("CardHolder"), pl.col("terminal_id").alias("MerchantTerminal"),
                          pl.col("amount").alias("Amt"), pl.col("category").alias("MccGroup"))
        storage.write_bytes(f"{pb.dataset('transactions').partition_uri(day)}/export.csv", csv_bytes(other))
        if land <= END:
            storage.write_bytes(f"{pa.dataset('labels').partition_uri(land)}/part-0.parquet", storage.parquet_bytes(labels))
            storage.write_bytes(f"{pb.dataset('labels').partition_uri(land)}/cb.csv",
                                csv_bytes(labels.rename({"tx_id": "TransactionID", "is_fraud": "FraudFlag"})))
    return (str(default), pa), (str(byod), pb)


def run_pipeline(path: str) -> None:
    from pipelines import features, ingest, validate

    rng = ["--params", path, "--start", START.isoformat(), "--end", END.isoformat()]
    ingest.main(rng)
    validate.main(rng)
    features.main(["--params", path, "--start", TARGET[0].isoformat(), "--end", TARGET[1].isoformat()])


def test_other_names_and_layout_give_identical_features(two_lakes):
    (path_a, pa), (path_b, pb) = two_lakes
    assert pb.dataset("transactions").partition_uri(START).endswith("/landing/card_txn/dt=20260101")
    run_pipeline(path_a)
    run_pipeline(path_b)
    for day in date_range(*TARGET):
        a = storage.read_parquet(pa.storage.uri("features", date=day.isoformat()))
        b = storage.read_parquet(pb.storage.uri("features", date=day.isoformat()))
        assert a.height > 1000 and a.equals(b)
        ma = storage.read_json(pa.storage.uri("features_manifest", date=day.isoformat()))
        mb = storage.read_json(pb.storage.uri("features_manifest", date=day.isoformat()))
        assert ma == mb and ma["spec_hash"] and ma["feature_columns"][0] == "amount"
    stats = storage.read_json(pb.storage.uri("ingest_stats", dataset="transactions", date=START.isoformat()))
    assert stats["casts"]["event_ts"] == "String->Datetime(time_unit='us', time_zone=None)"
    assert stats["rows_rejected"] == 0 and stats["sources"][0]["uri"].endswith("dt=20260101/export.csv")
