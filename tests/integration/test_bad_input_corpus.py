"""The bad-input corpus: every kind of bad delivery of transactions and labels, through the real
stages (`python -m pipelines ...` in process) on a lake of local files. Each case asserts the exit
code, the message, the row accounting (rows in = rows out + rejected at ingest; rows in =
validated + quarantined + held at validation) and what was, and was not, published (a committed
partition: pipelines/core/lineage.py)."""
from __future__ import annotations

import contextlib
import datetime as dt
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import polars as pl
import pytest

from pipelines.core import lineage, storage
from pipelines.core.cli import EXIT_BLOCKED
from pipelines.__main__ import main as cli_main
from pipelines.core.config import load_params
from pipelines.ops.demo_data import DemoParams, make_world, simulate_day, split_labels
from tests.conftest import params_with_lake, publish

pytestmark = pytest.mark.integration
FIRST = dt.date(2026, 2, 1)          # case i uses the date FIRST + i (its own partitions)


@dataclass
class Run:
    rc: int
    err: str


class Lake:
    """A lake of local files with the project's params (and variants for a few cases)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = params_with_lake(root, str(root / "lake"))
        self.params = load_params(self.path)
        p = DemoParams.from_dict(self.params.section("demo_data"))
        self.demo, self.world = p, make_world(p)
        self.variants: dict[str, Path] = {}

    def day(self, d: dt.date) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Simulated transactions and labels native to day `d`."""
        return split_labels(simulate_day(self.demo, self.world, d))

    def variant(self, name: str, mutate: Callable[[dict], None]) -> Path:
        if name not in self.variants:
            (self.root / name).mkdir()
            self.variants[name] = params_with_lake(self.root / name, str(self.root / "lake"), mutate)
        return self.variants[name]

    def deliver(self, dataset: str, d: dt.date, files: dict[str, bytes | pl.DataFrame], params=None) -> None:
        ds = load_params(params or self.path).dataset(dataset)
        folder = storage.local_path(ds.partition_uri(d))
        if folder.exists():
            for f in folder.iterdir():
                f.unlink()
        for name, data in files.items():
            storage.write_bytes(f"{ds.partition_uri(d)}/{name}",
                                storage.parquet_bytes(data) if isinstance(data, pl.DataFrame) else data)

    def run(self, stage: str, d: dt.date, dataset: str = "transactions", params=None) -> Run:
        args = [stage, "--params", str(params or self.path), "--date", d.isoformat()]
        if stage in ("ingest", "validate"):
            args += ["--dataset", dataset]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = cli_main(args)
        return Run(rc, err.getvalue())

    def uri(self, kind: str, d: dt.date, dataset: str = "transactions") -> str:
        return self.params.storage.uri(kind, dataset=dataset, date=d.isoformat())

    def committed(self, kind: str, d: dt.date, dataset: str = "transactions") -> bool:
        return lineage.Reader().exists(self.uri(kind, d, dataset))

    def stats(self, d: dt.date, dataset: str = "transactions") -> dict:
        return storage.read_json(self.uri("ingest_stats", d, dataset))

    def results(self, d: dt.date, dataset: str = "transactions") -> dict:
        return storage.read_json(self.uri("validation_results", d, dataset))

    def rejects(self, d: dt.date, dataset: str = "transactions") -> pl.DataFrame:
        return storage.read_parquet(self.uri("rejects", d, dataset))

    def ingested(self, d: dt.date, n_in: int, dataset: str = "transactions") -> dict:
        """Ingest's accounting holds for `n_in` delivered rows; returns the stats."""
        s = self.stats(d, dataset)
        assert s["rows_in"] == n_in == s["rows_out"] + s["rows_rejected"], s
        assert self.rejects(d, dataset).height == s["rows_rejected"]
        return s

    def validated(self, d: dt.date, dataset: str = "transactions") -> dict:
        """Validation's accounting holds for the canonical rows; returns the results."""
        r = self.results(d, dataset)
        canonical = storage.read_parquet(self.uri("canonical", d, dataset)).height
        assert r["rows_in"] == canonical == r["rows_validated"] + r["rows_quarantined"] + r["rows_held"], r
        return r


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    return Lake(tmp_path_factory.mktemp("corpus"))


CASES: list[tuple[str, Callable]] = []


def case(fn: Callable) -> Callable:
    CASES.append((fn.__name__, fn))
    return fn


def _csv(df: pl.DataFrame, **kw) -> bytes:
    buf = io.BytesIO()
    df.write_csv(buf, **kw)
    return buf.getvalue()


def _csv_params(d: dict) -> None:
    d["datasets"]["transactions"]["format"] = "csv"


def _set(df: pl.DataFrame, col: str, rows: int, value, dtype=None) -> pl.DataFrame:
    """`value` in `col` for the first `rows` rows."""
    idx = pl.int_range(pl.len())
    return df.with_columns(pl.when(idx < rows).then(pl.lit(value, dtype or df.schema[col])).otherwise(pl.col(col))
                           .alias(col))


def passes(lake: Lake, d: dt.date, n: int, quarantined: int = 0, rule: str | None = None) -> None:
    """Ingest and validation both pass; `quarantined` rows went to quarantine under `rule`."""
    r = lake.run("ingest", d)
    assert r.rc == 0, r.err
    s = lake.ingested(d, n)
    r = lake.run("validate", d)
    assert r.rc == 0, r.err
    v = lake.validated(d)
    assert v["status"] == "passed" and v["rows_quarantined"] == quarantined, v
    if rule:
        q = storage.read_parquet(lake.uri("quarantine", d))
        assert set(q["failed_expectations"]) == {rule}, set(q["failed_expectations"])
    assert lake.committed("canonical", d) and lake.committed("validated", d)
    assert storage.read_parquet(lake.uri("validated", d)).height == s["rows_out"] - quarantined


def ingest_fails(lake: Lake, d: dt.date, message: str, dataset: str = "transactions", params=None) -> Run:
    r = lake.run("ingest", d, dataset, params)
    assert r.rc == 1 and message in r.err, r.err
    assert len([ln for ln in r.err.splitlines() if ln.startswith("ERROR")]) == 1 and "Traceback" not in r.err
    assert not lake.committed("canonical", d, dataset)
    return r


def blocked(lake: Lake, d: dt.date, message: str, dataset: str = "transactions", params=None) -> dict:
    r = lake.run("ingest", d, dataset, params)
    assert r.rc == 0, r.err
    r = lake.run("validate", d, dataset, params)
    assert r.rc == EXIT_BLOCKED and "partition blocked" in r.err and message in r.err, r.err     # no retry
    assert "Traceback" not in r.err
    v = lake.validated(d, dataset)
    assert v["status"] == "blocked" and not lake.committed("validated", d, dataset)
    return v


# --------------------------------------------------------------------------- transactions: schema and types
@case
def clean(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": tx})
    passes(lake, d, tx.height)


@case
def renamed_column(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": tx.rename({"amount": "amt"})})
    ingest_fails(lake, d, "source column(s) ['amount'] missing")
    assert set(lake.rejects(d)["reject_reason"]) == {"missing_column:amount"} and lake.rejects(d).height == tx.height


@case
def missing_column(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": tx.drop("category")})
    ingest_fails(lake, d, "['category'] missing")
    assert lake.stats(d)["status"] == "failed" and lake.stats(d)["rows_rejected"] == tx.height


@case
def extra_column(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": tx.with_columns(pl.lit("x").alias("channel"))})
    passes(lake, d, tx.height)
    assert "channel" in lake.stats(d)["sources"][0]["columns"]


@case
def one_file_lacks_a_column(lake, d):
    tx, _ = lake.day(d)
    a, b = tx.head(3000), tx.tail(tx.height - 3000)
    lake.deliver("transactions", d, {"part-0.parquet": a, "part-1.parquet": b.drop("amount")})
    ingest_fails(lake, d, "['amount'] missing")
    reasons = lake.rejects(d)["reject_reason"].value_counts().sort("reject_reason").rows()
    assert reasons == [("missing_column:amount", b.height), ("partition_failed:unusable_file", a.height)]


@case
def a_nested_column(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": tx.with_columns(pl.concat_list("amount", "amount").alias("amount"))})
    ingest_fails(lake, d, "amount (nested type List(Float64))")
    assert set(lake.rejects(d)["reject_reason"]) == {"unsupported_type:amount"}


@case
def amount_as_numeric_text(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": tx.with_columns(pl.col("amount").cast(pl.String))})
    passes(lake, d, tx.height)
    assert lake.stats(d)["casts"]["amount"] == "String->Float64"


@case
def amount_text_with_garbage(lake, d):
    tx, _ = lake.day(d)
    bad = _set(tx.with_columns(pl.col("amount").cast(pl.String)), "amount", 10, "12,50 EUR")
    lake.deliver("transactions", d, {"part-0.parquet": bad})
    passes(lake, d, tx.height)
    assert lake.stats(d)["rejected_by_reason"] == {"cast_failed:amount": 10}


@case
def amount_as_integers(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": tx.with_columns(pl.col("amount").round().cast(pl.Int64))})
    passes(lake, d, tx.height)


@case
def id_as_integers(lake, d):
    tx, _ = lake.day(d)
    ints = tx.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("tx_id") + d.toordinal() * 10_000_000)
    lake.deliver("transactions", d, {"part-0.parquet": ints})
    passes(lake, d, tx.height)
    assert storage.read_parquet(lake.uri("canonical", d))["event_id"].dtype == pl.String


@case
def mixed_numeric_types_across_files(lake, d):
    tx, _ = lake.day(d)
    a, b = tx.head(2000), tx.tail(tx.height - 2000)
    lake.deliver("transactions", d, {"part-0.parquet": a, "part-1.parquet": b.with_columns(pl.col("amount").cast(pl.Float32))})
    passes(lake, d, tx.height)


@case
def timestamps_as_iso_text(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": tx.with_columns(pl.col("tx_ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f"))})
    passes(lake, d, tx.height)
    assert storage.read_parquet(lake.uri("canonical", d))["event_ts"].sort().equals(tx["tx_ts"].sort().alias("event_ts"))


@case
def timestamps_in_an_unparseable_format(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": tx.with_columns(pl.col("tx_ts").dt.strftime("%d/%m/%Y %Hh%M"))})
    v = blocked(lake, d, "row_count")
    assert lake.stats(d)["rejected_by_reason"] == {"cast_failed:event_ts": tx.height} and v["rows_in"] == 0


# --------------------------------------------------------------------------- nulls in each key
@case
def null_ids(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "tx_id", 20, None)})
    passes(lake, d, tx.height)
    assert lake.stats(d)["rejected_by_reason"] == {"null_id": 20}


@case
def null_timestamps(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "tx_ts", 20, None)})
    passes(lake, d, tx.height)
    assert lake.stats(d)["rejected_by_reason"] == {"null_timestamp": 20}


@case
def null_customers(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "customer_id", 20, None)})
    passes(lake, d, tx.height, quarantined=20, rule="not_null:customer")


@case
def null_terminals(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "terminal_id", 20, None)})
    passes(lake, d, tx.height, quarantined=20, rule="not_null:terminal")


@case
def null_categories(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "category", 20, None)})
    passes(lake, d, tx.height, quarantined=20, rule="not_null:category")


@case
def null_amounts_few(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "amount", 20, None)})
    passes(lake, d, tx.height, quarantined=20, rule="not_null:amount")


@case
def null_amounts_many(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "amount", 400, None)})
    v = blocked(lake, d, "failed row-level block expectations")
    assert v["rows_quarantined"] == 400 and v["rows_held"] == tx.height - 400


# --------------------------------------------------------------------------- bad values
@case
def negative_amounts(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "amount", 10, -5.0)})
    passes(lake, d, tx.height, quarantined=10, rule="plausible_range:amount")


@case
def nan_amounts(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "amount", 10, math.nan)})
    passes(lake, d, tx.height, quarantined=10, rule="not_null:amount")


@case
def plus_inf_amounts(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "amount", 10, math.inf)})
    passes(lake, d, tx.height, quarantined=10, rule="plausible_range:amount")


@case
def minus_inf_amounts(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "amount", 10, -math.inf)})
    passes(lake, d, tx.height, quarantined=10, rule="plausible_range:amount")


@case
def absurd_amounts(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "amount", 10, 1e18)})
    passes(lake, d, tx.height, quarantined=10, rule="plausible_range:amount")


@case
def every_amount_infinite(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": tx.with_columns(pl.lit(math.inf).alias("amount"))})
    v = blocked(lake, d, "failed row-level block expectations")
    assert v["rows_quarantined"] == tx.height


@case
def unseen_category_few(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "category", 10, "crypto")})
    passes(lake, d, tx.height, quarantined=10, rule="known_values:category")


@case
def unseen_category_many(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "category", 300, "crypto")})
    blocked(lake, d, "failed row-level block expectations")


@case
def numeric_text_with_whitespace(lake, d):
    tx, _ = lake.day(d)
    padded = tx.with_columns((pl.lit("  ") + pl.col("amount").cast(pl.String) + pl.lit(" ")).alias("amount"))
    lake.deliver("transactions", d, {"part-0.parquet": padded})
    passes(lake, d, tx.height)


# --------------------------------------------------------------------------- duplicates
@case
def duplicate_ids_within_the_day(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": pl.concat([tx, tx.head(10)])})
    passes(lake, d, tx.height + 10)
    assert lake.stats(d)["rejected_by_reason"] == {"duplicate_id": 10}


@case
def the_same_file_delivered_twice(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": tx, "part-1.parquet": tx})
    passes(lake, d, 2 * tx.height)
    assert lake.stats(d)["rejected_by_reason"] == {"duplicate_id": tx.height}
    assert set(lake.rejects(d)["_source_file"]) == {"part-1.parquet"}           # the first file's rows are kept


@case
def duplicate_ids_across_days(lake, d):
    prev = d - dt.timedelta(days=1)
    tx, _ = lake.day(d)
    old, _ = lake.day(prev)
    lake.deliver("transactions", prev, {"part-0.parquet": old})
    assert lake.run("ingest", prev).rc == 0
    resent = old.head(100).with_columns(pl.col("tx_ts") + pl.duration(days=1))     # re-sent a day later
    lake.deliver("transactions", d, {"part-0.parquet": pl.concat([tx, resent])})
    passes(lake, d, tx.height + 100)
    s = lake.stats(d)
    assert s["rejected_by_reason"] == {"duplicate_id_across_days": 100} and s["duplicate_window"]["ids_found"] == 100 \
        and s["duplicate_window"]["ids_checked"] == tx.height + 100


# --------------------------------------------------------------------------- timestamps
@case
def timestamps_outside_the_partition(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "tx_ts", 10, dt.datetime.combine(d, dt.time()) - dt.timedelta(hours=3))})
    passes(lake, d, tx.height, quarantined=10, rule="in_partition_day:event_ts")


@case
def timestamps_in_the_future(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "tx_ts", 10, dt.datetime(2031, 1, 1))})
    passes(lake, d, tx.height, quarantined=10, rule="in_partition_day:event_ts")


@case
def every_timestamp_on_another_day(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": tx.with_columns(pl.col("tx_ts") - pl.duration(days=2))})
    blocked(lake, d, "failed row-level block expectations")


@case
def tz_aware_and_naive_files_mixed(lake, d):
    tx, _ = lake.day(d)
    a, b = tx.head(2500), tx.tail(tx.height - 2500)
    lake.deliver("transactions", d, {"part-0.parquet": a,
                                     "part-1.parquet": b.with_columns(pl.col("tx_ts").dt.replace_time_zone("UTC"))})
    passes(lake, d, tx.height)
    got = storage.read_parquet(lake.uri("canonical", d))
    assert got["event_ts"].sort().equals(tx["tx_ts"].sort().alias("event_ts"))


@case
def tz_aware_in_another_zone(lake, d):
    tx, _ = lake.day(d)
    paris = tx.with_columns(pl.col("tx_ts").dt.replace_time_zone("UTC").dt.convert_time_zone("Europe/Paris"))
    lake.deliver("transactions", d, {"part-0.parquet": paris})
    passes(lake, d, tx.height)
    got = storage.read_parquet(lake.uri("canonical", d))
    assert got["event_ts"].sort().equals(tx["tx_ts"].sort().alias("event_ts"))        # the same instants, in UTC


@case
def epoch_in_the_wrong_unit(lake, d):
    tx, _ = lake.day(d)
    params = lake.variant("epoch_s", lambda p: p["datasets"]["transactions"].update(timestamp_unit="s"))
    ms = tx.with_columns(pl.col("tx_ts").dt.epoch("ms"))                      # configured as seconds
    lake.deliver("transactions", d, {"part-0.parquet": ms}, params)
    blocked(lake, d, "in_partition_day:event_ts", params=params)          # year 58000: not this partition's day


@case
def epoch_in_the_configured_unit(lake, d):
    tx, _ = lake.day(d)
    params = lake.variant("epoch_s", lambda p: p["datasets"]["transactions"].update(timestamp_unit="s"))
    lake.deliver("transactions", d, {"part-0.parquet": tx.with_columns(pl.col("tx_ts").dt.epoch("s"))}, params)
    assert lake.run("ingest", d, params=params).rc == 0
    assert lake.run("validate", d, params=params).rc == 0
    lake.validated(d)


# --------------------------------------------------------------------------- files
@case
def empty_partition(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": tx.head(0)})
    v = blocked(lake, d, "row_count")
    assert v["rows_in"] == 0


@case
def zero_byte_file(lake, d):
    lake.deliver("transactions", d, {"part-0.parquet": b""})
    ingest_fails(lake, d, "is empty (0 bytes)")


@case
def truncated_file(lake, d):
    tx, _ = lake.day(d)
    data = storage.parquet_bytes(tx)
    lake.deliver("transactions", d, {"part-0.parquet": data[: len(data) // 2]})
    ingest_fails(lake, d, "unreadable as parquet")


@case
def missing_day(lake, d):
    lake.deliver("transactions", d, {})
    ingest_fails(lake, d, "no source partition")
    assert lake.stats(d)["status"] == "failed"


@case
def only_files_of_another_format(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"export.csv": _csv(tx)})
    ingest_fails(lake, d, "expected *.parquet files")


@case
def ten_times_the_volume(lake, d):
    tx, _ = lake.day(d)
    many = pl.concat([tx.with_columns(pl.col("tx_id") + f"-{i}") for i in range(10)])
    lake.deliver("transactions", d, {"part-0.parquet": many})
    blocked(lake, d, "row_count")


# --------------------------------------------------------------------------- CSV
@case
def csv_with_a_byte_order_mark(lake, d):
    tx, _ = lake.day(d)
    params = lake.variant("csv", _csv_params)
    lake.deliver("transactions", d, {"part-0.csv": b"\xef\xbb\xbf" + _csv(tx)}, params)
    assert lake.run("ingest", d, params=params).rc == 0
    lake.ingested(d, tx.height)
    assert lake.run("validate", d, params=params).rc == 0


@case
def csv_with_another_delimiter(lake, d):
    tx, _ = lake.day(d)
    params = lake.variant("csv", _csv_params)
    lake.deliver("transactions", d, {"part-0.csv": _csv(tx, separator=";")}, params)
    ingest_fails(lake, d, "missing from", params=params)


@case
def csv_not_in_utf8(lake, d):
    tx, _ = lake.day(d)
    params = lake.variant("csv", _csv_params)
    latin = _csv(_set(tx, "category", 5, "épicerie")).decode().encode("latin-1")
    lake.deliver("transactions", d, {"part-0.csv": latin}, params)
    ingest_fails(lake, d, "is not UTF-8", params=params)


@case
def csv_with_crlf_and_quotes(lake, d):
    tx, _ = lake.day(d)
    params = lake.variant("csv", _csv_params)
    data = _csv(tx, quote_style="always").replace(b"\n", b"\r\n")
    lake.deliver("transactions", d, {"part-0.csv": data}, params)
    assert lake.run("ingest", d, params=params).rc == 0
    lake.ingested(d, tx.height)
    assert lake.run("validate", d, params=params).rc == 0


@case
def csv_with_decimal_commas(lake, d):
    tx, _ = lake.day(d)
    params = lake.variant("csv", _csv_params)
    commas = _set(tx.with_columns(pl.col("amount").cast(pl.String)), "amount", 10, "12,5")
    lake.deliver("transactions", d, {"part-0.csv": _csv(commas)}, params)
    assert lake.run("ingest", d, params=params).rc == 0
    assert lake.ingested(d, tx.height)["rejected_by_reason"] == {"cast_failed:amount": 10}


# --------------------------------------------------------------------------- re-deliveries
@case
def redelivery_that_now_fails_validation(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": tx})
    passes(lake, d, tx.height)
    lake.deliver("transactions", d, {"part-0.parquet": _set(tx, "amount", 400, None)})
    blocked(lake, d, "failed row-level block expectations")           # the earlier validated partition is withdrawn


@case
def redelivery_that_is_corrupt(lake, d):
    tx, _ = lake.day(d)
    lake.deliver("transactions", d, {"part-0.parquet": tx})
    passes(lake, d, tx.height)
    canonical = storage.local_path(lake.uri("canonical", d))
    assert [p.name for p in canonical.parent.glob("_ids.*")] == ["_ids.part-0.parquet"]   # its ids' hashes
    lake.deliver("transactions", d, {"part-0.parquet": b"PAR1 not really"})
    ingest_fails(lake, d, "unreadable as parquet")
    assert not canonical.exists() and not list(canonical.parent.glob("_ids.*"))      # withdrawn, hashes too
    with pytest.raises(lineage.StaleInput, match="withdrawn"):          # derived data is refused from now on
        lineage.Reader().record(lake.uri("validated", d))
    r = lake.run("validate", d)
    assert r.rc == EXIT_BLOCKED and "does not exist" in r.err and not lake.committed("validated", d)


# --------------------------------------------------------------------------- labels
def labels_pass(lake: Lake, d: dt.date, n: int, rejected: dict | None = None) -> dict:
    r = lake.run("ingest", d, "labels")
    assert r.rc == 0, r.err
    s = lake.ingested(d, n, "labels")
    assert s["rejected_by_reason"] == (rejected or {}), s["rejected_by_reason"]
    r = lake.run("validate", d, "labels")
    assert r.rc == 0, r.err
    assert lake.validated(d, "labels")["status"] == "passed" and lake.committed("validated", d, "labels")
    labels = storage.read_parquet(lake.uri("validated", d, "labels"))["label"]
    assert labels.dtype == pl.Int8 and set(labels.unique()) <= {0, 1}
    return s


@case
def labels_clean(lake, d):
    _, lb = lake.day(d)
    lake.deliver("labels", d, {"part-0.parquet": lb})
    labels_pass(lake, d, lb.height)


@case
def labels_as_fractions(lake, d):
    _, lb = lake.day(d)
    lake.deliver("labels", d, {"part-0.parquet": _set(lb.with_columns(pl.col("is_fraud").cast(pl.Float64)), "is_fraud", 10, 0.5)})
    labels_pass(lake, d, lb.height, {"invalid_label": 10})


@case
def labels_close_to_one(lake, d):
    _, lb = lake.day(d)
    lake.deliver("labels", d, {"part-0.parquet": _set(lb.with_columns(pl.col("is_fraud").cast(pl.Float64)), "is_fraud", 10, 0.9)})
    labels_pass(lake, d, lb.height, {"invalid_label": 10})


@case
def labels_out_of_range(lake, d):
    _, lb = lake.day(d)
    bad = _set(_set(lb, "is_fraud", 10, 2), "is_fraud", 5, -1)
    lake.deliver("labels", d, {"part-0.parquet": bad})
    labels_pass(lake, d, lb.height, {"invalid_label": 10})


@case
def labels_as_words(lake, d):
    _, lb = lake.day(d)
    lake.deliver("labels", d, {"part-0.parquet": _set(lb.with_columns(pl.col("is_fraud").cast(pl.String)), "is_fraud", 10, "yes")})
    labels_pass(lake, d, lb.height, {"cast_failed:label": 10})


@case
def labels_as_booleans_and_floats(lake, d):
    _, lb = lake.day(d)
    a, b = lb.head(2000), lb.tail(lb.height - 2000)
    lake.deliver("labels", d, {"part-0.parquet": a.with_columns(pl.col("is_fraud").cast(pl.Boolean)),
                               "part-1.parquet": b.with_columns(pl.col("is_fraud").cast(pl.Float64))})
    labels_pass(lake, d, lb.height)
    got = storage.read_parquet(lake.uri("canonical", d, "labels")).sort("event_id")
    assert got["label"].sum() == lb["is_fraud"].sum()


@case
def labels_null(lake, d):
    _, lb = lake.day(d)
    lake.deliver("labels", d, {"part-0.parquet": _set(lb, "is_fraud", 10, None)})
    labels_pass(lake, d, lb.height, {"null_label": 10})


@case
def labels_null_id(lake, d):
    _, lb = lake.day(d)
    lake.deliver("labels", d, {"part-0.parquet": _set(lb, "tx_id", 10, None)})
    labels_pass(lake, d, lb.height, {"null_id": 10})


@case
def labels_repeated_identically(lake, d):
    _, lb = lake.day(d)
    lake.deliver("labels", d, {"part-0.parquet": pl.concat([lb, lb.head(10)])})
    s = labels_pass(lake, d, lb.height + 10, {"duplicate_id": 10})
    assert s["label_conflicts"] == {"within_day": 0, "across_days": 0}


@case
def labels_conflicting(lake, d):
    _, lb = lake.day(d)
    flipped = lb.head(10).with_columns((1 - pl.col("is_fraud")).cast(pl.Int8).alias("is_fraud"))
    lake.deliver("labels", d, {"part-0.parquet": pl.concat([lb, flipped])})
    s = labels_pass(lake, d, lb.height + 10, {"conflicting_label": 10})
    assert s["label_conflicts"] == {"within_day": 10, "across_days": 0}
    kept = storage.read_parquet(lake.uri("canonical", d, "labels")).join(lb.head(10), left_on="event_id", right_on="tx_id")
    assert kept["label"].to_list() == kept["is_fraud"].to_list()                   # the first label is kept


@case
def labels_repeated_across_days(lake, d):
    prev = d - dt.timedelta(days=1)
    _, old = lake.day(prev)
    _, lb = lake.day(d)
    lake.deliver("labels", prev, {"part-0.parquet": old})
    assert lake.run("ingest", prev, "labels").rc == 0
    again = old.head(60)
    flipped = old.slice(60, 40).with_columns((1 - pl.col("is_fraud")).cast(pl.Int8).alias("is_fraud"))
    lake.deliver("labels", d, {"part-0.parquet": pl.concat([lb, again, flipped])})
    s = labels_pass(lake, d, lb.height + 100, {"duplicate_id_across_days": 100})
    assert s["label_conflicts"] == {"within_day": 0, "across_days": 40}


@case
def labels_empty(lake, d):
    _, lb = lake.day(d)
    lake.deliver("labels", d, {"part-0.parquet": lb.head(0)})
    blocked(lake, d, "row_count", "labels")


@case
def labels_all_invalid(lake, d):
    _, lb = lake.day(d)
    lake.deliver("labels", d, {"part-0.parquet": lb.with_columns(pl.lit(7, pl.Int8).alias("is_fraud"))})
    blocked(lake, d, "row_count", "labels")
    assert lake.stats(d, "labels")["rejected_by_reason"] == {"invalid_label": lb.height}


@case
def labels_unknown_and_early(lake, d):
    """Labels landing on d belong to the predictions of d - 7: unknown ids and ids of another day
    (landed early) match nothing; each is counted, none is lost."""
    scored = d - dt.timedelta(days=7)
    tx, lb = (f.with_columns(pl.col("tx_id") + "-u") for f in lake.day(scored))     # ids no other case uses
    pred = tx.select(pl.col("tx_id").alias("event_id"), pl.lit(scored).alias("ds"),
                     (pl.int_range(pl.len()) % 100 / 100).cast(pl.Float32).alias("score"),
                     pl.lit(0.5, pl.Float32).alias("threshold"), pl.lit("m").alias("model_name"),
                     pl.lit("1").alias("model_version"), pl.lit("r").alias("run_id"), pl.lit("model").alias("scored_by"))
    publish(lake.uri("predictions", scored), pred)
    _, early = lake.day(d - dt.timedelta(days=3))
    unknown = pl.DataFrame({"tx_id": [f"nobody-{i}" for i in range(30)], "is_fraud": pl.Series([0] * 30, dtype=pl.Int8)})
    lake.deliver("labels", d, {"part-0.parquet": pl.concat([lb, early.head(20), unknown])})
    labels_pass(lake, d, lb.height + 50)
    r = lake.run("feedback", d)
    assert r.rc == 0, r.err
    acc = storage.read_json(lake.params.storage.uri("feedback_summary", date=scored.isoformat()))["accounting"]
    assert acc["labels_in"] == lb.height + 50 == acc["labels_matched"] + acc["labels_unmatched"] + acc["labels_repeated"]
    assert acc["labels_matched"] == lb.height and acc["labels_unmatched"] == 50 and acc["rows_out"] == pred.height
    assert lake.committed("feedback", scored, "")


# --------------------------------------------------------------------------- at scoring
@case
def an_all_null_feature_at_scoring(lake, d):
    """`amount` null on every row of a feature partition: each row gets the configured default
    (flagged feature_default); a feature that is null by nature (no history yet) stays null and
    the model handles it; nothing is dropped."""
    import numpy as np
    import xgboost as xgb

    from pipelines.core import modelio as M
    from pipelines.core import scoring as S

    names = ["amount", "customer_fraud_rate_30d"]
    rng = np.random.default_rng(0)
    x = rng.random((400, 2)).astype(np.float32)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2, "base_score": 0.5},
                        xgb.DMatrix(x, label=(x[:, 0] > 0.5).astype(int)), 5)
    manifest = {"feature_names": names, "dtypes": {n: "Float32" for n in names}, "spec_hash": "s", "key_columns": ["event_id"]}
    frame = pl.DataFrame({"event_id": [f"e{i}" for i in range(50)], "amount": pl.Series([None] * 50, dtype=pl.Float32),
                          "customer_fraud_rate_30d": pl.Series([None] * 50, dtype=pl.Float32)})
    served = S.Served("model", [], "test", "m", "1", "r", None, booster, manifest, 0.5,
                      {"features": {"amount": {"sample": [float(i) for i in range(101)]}}})
    out, stats = S.score_partition(frame, manifest, served, lake.params.score, d, "corpus")
    assert out.height == 50 and out["score"].is_finite().all()
    assert out["fallback"].to_list() == [["feature_default"]] * 50 and stats["fallback_rows"] == {"feature_default": 50}
    assert out["defaulted_features"].to_list() == [["amount"]] * 50
    with pytest.raises(M.ManifestMismatch, match="missing feature column"):
        S.score_partition(frame.drop("customer_fraud_rate_30d"), manifest, served, lake.params.score, d, "corpus")


def test_the_corpus_has_at_least_sixty_cases():
    assert len(CASES) >= 60, len(CASES)


@pytest.mark.parametrize("name,fn", CASES, ids=[n for n, _ in CASES])
def test_bad_input(lake, name, fn):
    fn(lake, FIRST + dt.timedelta(days=2 * [n for n, _ in CASES].index(name)))
