"""Deterministic simulator of card transactions, with delayed labels, drift and data bugs.

World: customers with a home cell on a 10x10 map, their own spending level and rate, a set of
usual terminals in their cell; terminals with a merchant category. Transactions have a daily
rhythm (busy afternoons, quiet nights) and a weekly one (busier weekends).

Fraud scenarios (share well under 1%):
  * large amounts: above `large_amount_threshold`, fraud with probability `large_amount_prob`;
  * compromised terminals: each day a few terminals are compromised for the next N days;
  * compromised customers: each day a few customers' cards are stolen for N days: some of their
    transactions are fraudulent, with amounts multiplied by a factor;
  * (drift) a new pattern: bursts of tiny night-time online transactions (card testing).

Every day is drawn from its own seed (seed, day), so any date range regenerates the same bytes.
Labels of day d land in the label partition of day d + label_delay_days.

Raw schema written (the default params.yaml maps it): tx_id str, tx_ts timestamp[us], customer_id
str, terminal_id str, amount float64, category str; labels: tx_id str, is_fraud int8.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

GRID = 10
K_TERMINALS = 12
CATEGORY_WEIGHTS = {"grocery": 0.28, "fuel": 0.12, "restaurant": 0.17, "online": 0.15, "travel": 0.05,
                    "electronics": 0.06, "pharmacy": 0.09, "entertainment": 0.08}
BUG_KINDS = ("nulls", "renamed_column", "dtype_change", "duplicate_ids", "out_of_range", "ts_outside_day",
             "empty_partition", "corrupt_file", "missing_partition")


@dataclass(frozen=True)
class FraudParams:
    large_amount_threshold: float = 250.0
    large_amount_prob: float = 0.6
    compromised_terminals_per_day: int = 1
    compromised_terminal_days: int = 14
    compromised_terminal_prob: float = 0.35
    compromised_customers_per_day: int = 2
    compromised_customer_days: int = 14
    compromised_customer_prob: float = 0.3
    compromised_customer_amount_factor: float = 4.0


@dataclass(frozen=True)
class DriftParams:
    start_date: dt.date | None = None
    amount_scale: float = 1.0
    category_weights: dict[str, float] = field(default_factory=dict)
    new_fraud_pattern: bool = False


@dataclass(frozen=True)
class Bug:
    date: dt.date
    kind: str
    column: str | None = None
    fraction: float = 0.05


@dataclass(frozen=True)
class DemoParams:
    seed: int
    start_date: dt.date
    end_date: dt.date
    format: str = "parquet"
    n_customers: int = 3000
    n_terminals: int = 6000
    tx_per_customer_day: tuple[float, float] = (0.5, 3.0)
    label_delay_days: int = 7
    fraud: FraudParams = FraudParams()
    drift: DriftParams = DriftParams()
    bugs: tuple[Bug, ...] = ()
    nightly: tuple[dt.date, dt.date] | None = None   # the dates `make demo` runs the nightly job for

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "DemoParams":
        from pipelines.core.config import _build, _date

        d = dict(d)
        fraud = _build(FraudParams, d.pop("fraud", None), "demo_data.fraud")
        drift_d = dict(d.pop("drift", None) or {})
        if drift_d.get("start_date"):
            drift_d["start_date"] = _date(drift_d["start_date"], "demo_data.drift.start_date")
        drift = _build(DriftParams, drift_d, "demo_data.drift")
        bugs = []
        for i, b in enumerate(d.pop("bugs", None) or []):
            b = dict(b)
            b["date"] = _date(b.get("date"), f"demo_data.bugs[{i}].date")
            bug = _build(Bug, b, f"demo_data.bugs[{i}]")
            if bug.kind not in BUG_KINDS:
                raise ValueError(f"demo_data.bugs[{i}].kind: {bug.kind!r} is not one of {BUG_KINDS}")
            bugs.append(bug)
        for k in ("start_date", "end_date"):
            d[k] = _date(d[k], f"demo_data.{k}")
        if d.get("nightly"):
            d["nightly"] = tuple(_date(x, "demo_data.nightly") for x in d["nightly"])
        if "tx_per_customer_day" in d:
            d["tx_per_customer_day"] = tuple(d["tx_per_customer_day"])
        return _build(DemoParams, {**d, "fraud": fraud, "drift": drift, "bugs": tuple(bugs)}, "demo_data")


@dataclass(frozen=True)
class World:
    cust_rate: np.ndarray        # mean transactions per day
    cust_mean: np.ndarray        # mean amount
    cust_std: np.ndarray
    cust_terms: np.ndarray       # [C, K] usual terminals
    term_cat: np.ndarray         # category index per terminal
    categories: tuple[str, ...]


def make_world(p: DemoParams) -> World:
    rng = np.random.default_rng([p.seed, 0])
    C, T = p.n_customers, p.n_terminals
    cats = tuple(CATEGORY_WEIGHTS)
    w = np.array(list(CATEGORY_WEIGHTS.values()))
    term_cat = rng.choice(len(cats), size=T, p=w / w.sum())
    term_cell = rng.integers(0, GRID * GRID, size=T)
    cust_cell = rng.integers(0, GRID * GRID, size=C)
    cust_terms = np.empty((C, K_TERMINALS), dtype=np.int64)
    all_terms = np.arange(T)
    for cell in range(GRID * GRID):
        members = np.flatnonzero(cust_cell == cell)
        if members.size == 0:
            continue
        local = all_terms[term_cell == cell]
        if local.size == 0:
            local = all_terms
        cust_terms[members] = rng.choice(local, size=(members.size, K_TERMINALS))
    lo, hi = p.tx_per_customer_day
    cust_mean = rng.uniform(5, 100, size=C)
    return World(cust_rate=rng.uniform(lo, hi, size=C), cust_mean=cust_mean,
                 cust_std=cust_mean * rng.uniform(0.3, 0.7, size=C), cust_terms=cust_terms,
                 term_cat=term_cat, categories=cats)


def _picks(p: DemoParams, day: dt.date, stream: int, n: int, size: int) -> np.ndarray:
    return np.random.default_rng([p.seed, day.toordinal(), stream]).choice(size, size=n, replace=False)


def _active(p: DemoParams, day: dt.date, stream: int, per_day: int, days: int, size: int) -> np.ndarray:
    """Entities compromised on any of the last `days` days (including `day`)."""
    if per_day <= 0:
        return np.empty(0, dtype=np.int64)
    picks = [_picks(p, day - dt.timedelta(days=k), stream, per_day, size) for k in range(days)]
    return np.unique(np.concatenate(picks))


def simulate_day(p: DemoParams, world: World, day: dt.date) -> pl.DataFrame:
    """One day of transactions with their true label (`is_fraud`), sorted by time, ids assigned."""
    rng = np.random.default_rng([p.seed, day.toordinal(), 1])
    drifted = p.drift.start_date is not None and day >= p.drift.start_date
    C = len(world.cust_rate)
    weekend = day.weekday() >= 5
    n = rng.poisson(world.cust_rate * (1.15 if weekend else 1.0))
    cust = np.repeat(np.arange(C), n)
    rows = cust.size

    # time of day: busy afternoons, some uniform background (nights)
    secs = np.where(rng.random(rows) < 0.85, rng.normal(13.5 * 3600, 3.5 * 3600, rows),
                    rng.uniform(0, 86400, rows))
    secs = np.clip(secs, 0, 86399.999999)

    # terminal among the customer's usual ones, weighted by category (drift changes the mix)
    choices = world.cust_terms[cust]                              # [rows, K]
    if drifted and p.drift.category_weights:
        catw = np.ones(len(world.categories))
        for name, wt in p.drift.category_weights.items():
            catw[world.categories.index(name)] = float(wt)
        wts = catw[world.term_cat[choices]]
        cum = np.cumsum(wts, axis=1)
        u = rng.random(rows)[:, None] * cum[:, -1:]
        pick = np.minimum((u > cum).sum(axis=1), K_TERMINALS - 1)
    else:
        pick = rng.integers(0, K_TERMINALS, rows)
    term = choices[np.arange(rows), pick]

    amount = np.abs(rng.normal(world.cust_mean[cust], world.cust_std[cust]))
    if drifted:
        amount = amount * p.drift.amount_scale
    fraud = np.zeros(rows, dtype=bool)
    f = p.fraud
    fraud |= (amount > f.large_amount_threshold) & (rng.random(rows) < f.large_amount_prob)
    bad_terms = _active(p, day, 2, f.compromised_terminals_per_day, f.compromised_terminal_days, len(world.term_cat))
    fraud |= np.isin(term, bad_terms) & (rng.random(rows) < f.compromised_terminal_prob)
    bad_cust = _active(p, day, 3, f.compromised_customers_per_day, f.compromised_customer_days, C)
    stolen = np.isin(cust, bad_cust) & (rng.random(rows) < f.compromised_customer_prob)
    amount = np.where(stolen, amount * f.compromised_customer_amount_factor, amount)
    fraud |= stolen

    if drifted and p.drift.new_fraud_pattern:   # card testing: tiny night-time online bursts
        online = np.flatnonzero(world.term_cat == world.categories.index("online"))
        victims = rng.choice(C, size=max(1, C // 500), replace=False)
        burst = rng.integers(3, 7, size=victims.size)
        vc = np.repeat(victims, burst)
        cust = np.concatenate([cust, vc])
        term = np.concatenate([term, rng.choice(online, size=vc.size)])
        secs = np.concatenate([secs, rng.uniform(0, 5 * 3600, vc.size)])
        amount = np.concatenate([amount, rng.uniform(0.5, 3.0, vc.size)])
        fraud = np.concatenate([fraud, np.ones(vc.size, dtype=bool)])

    start_us = (day.toordinal() - dt.date(1970, 1, 1).toordinal()) * 86_400_000_000
    ts = start_us + (secs * 1e6).astype(np.int64)
    order = np.lexsort((cust, ts))
    cats = np.array(world.categories)
    df = pl.DataFrame({
        "tx_ts": pl.Series(ts[order]).cast(pl.Datetime("us")),
        "customer_id": np.char.add("C", np.char.zfill(cust[order].astype(str), 6)),
        "terminal_id": np.char.add("T", np.char.zfill(term[order].astype(str), 6)),
        "amount": np.round(np.maximum(amount[order], 0.01), 2),
        "category": cats[world.term_cat[term[order]]],
        "is_fraud": fraud[order].astype(np.int8),
    })
    ids = pl.Series("tx_id", [f"{day:%Y%m%d}-{i:07d}" for i in range(df.height)], dtype=pl.String)
    return df.insert_column(0, ids)


def split_labels(day_df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(transactions without the label, labels: tx_id, is_fraud)."""
    return day_df.drop("is_fraud"), day_df.select("tx_id", "is_fraud")


# --------------------------------------------------------------------------- data bugs
def apply_bug(df: pl.DataFrame, bug: Bug, seed: int) -> pl.DataFrame | bytes | None:
    """Corrupt one raw partition as `bug` says. Returns a frame, raw bytes (corrupt file) or None
    (the partition is not written at all)."""
    rng = np.random.default_rng([seed, bug.date.toordinal(), 99])
    n = df.height
    k = max(1, int(round(n * bug.fraction)))
    idx = np.sort(rng.choice(n, size=min(k, n), replace=False)) if n else np.empty(0, dtype=np.int64)
    hit = pl.Series(np.isin(np.arange(n), idx))
    col = bug.column or "amount"
    if bug.kind == "nulls":
        return df.with_columns(pl.when(hit).then(None).otherwise(pl.col(col)).alias(col))
    if bug.kind == "renamed_column":
        return df.rename({col: f"{col}_v2"})
    if bug.kind == "dtype_change":   # numbers become text; some use a decimal comma and cannot be parsed
        txt = pl.col(col).cast(pl.String)
        return df.with_columns(pl.when(hit).then(txt.str.replace(r"\.", ",")).otherwise(txt).alias(col))
    if bug.kind == "duplicate_ids":
        dup = df.filter(hit)
        conflicting = dup.head(max(1, dup.height // 2)).with_columns(pl.col("amount") + 1.0)
        return pl.concat([df, dup, conflicting])
    if bug.kind == "out_of_range":
        return df.with_columns(pl.when(hit).then(-pl.col("amount") - 1.0).otherwise(pl.col("amount")).alias("amount"))
    if bug.kind == "ts_outside_day":
        return df.with_columns(pl.when(hit).then(pl.col("tx_ts") + pl.duration(days=2)).otherwise(pl.col("tx_ts"))
                               .alias("tx_ts"))
    if bug.kind == "empty_partition":
        return df.head(0)
    if bug.kind == "corrupt_file":
        data = _encode(df, "parquet")
        return data[: len(data) // 2]
    if bug.kind == "missing_partition":
        return None
    raise ValueError(f"unknown bug kind {bug.kind!r}")


def _encode(df: pl.DataFrame, fmt: str) -> bytes:
    from pipelines.core.storage import parquet_bytes

    if fmt == "parquet":
        return parquet_bytes(df)
    buf = io.BytesIO()
    df.write_csv(buf, datetime_format="%Y-%m-%d %H:%M:%S%.6f")
    return buf.getvalue()


# --------------------------------------------------------------------------- entry point
def write_demo(p: DemoParams, tx_uri, label_uri, start: dt.date, end: dt.date) -> dict[str, int]:
    """Write raw partitions for [start, end]. `tx_uri(day)`/`label_uri(day)` give the partition
    folder. Returns counts. The labels of a day of the range are written to the partition of the
    day they land (day + label_delay_days) when that day is in the range too: a label partition
    landing on L needs the range to start on or before L - label_delay_days."""
    from pipelines.core.storage import write_bytes

    world = make_world(p)
    bugs = {b.date: b for b in p.bugs}
    ext = "parquet" if p.format == "parquet" else "csv"
    counts = {"transactions": 0, "frauds": 0, "label_partitions": 0}
    day = start
    while day <= end:
        tx, labels = split_labels(simulate_day(p, world, day))
        counts["transactions"] += tx.height
        counts["frauds"] += int(labels["is_fraud"].sum())
        out: pl.DataFrame | bytes | None = tx
        if day in bugs:
            out = apply_bug(tx, bugs[day], p.seed)
        if out is not None:
            data = out if isinstance(out, bytes) else _encode(out, p.format)
            write_bytes(f"{tx_uri(day)}/part-0.{ext}", data)
        land = day + dt.timedelta(days=p.label_delay_days)
        if land <= end:
            write_bytes(f"{label_uri(land)}/part-0.{ext}", _encode(labels, p.format))
            counts["label_partitions"] += 1
        day += dt.timedelta(days=1)
    return counts


def main(argv: list[str]) -> int:
    from pipelines.core.config import load_params, parse_date

    ap = argparse.ArgumentParser(prog="python -m pipelines demo-data", description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--start", type=parse_date)
    ap.add_argument("--end", type=parse_date)
    args = ap.parse_args(argv)
    params = load_params(args.params)
    p = DemoParams.from_dict(params.section("demo_data"))
    tx_ds, label_ds = params.dataset("transactions"), params.dataset("labels")
    start, end = args.start or p.start_date, args.end or p.end_date
    counts = write_demo(p, tx_ds.partition_uri, label_ds.partition_uri, start, end)
    share = counts["frauds"] / max(counts["transactions"], 1)
    print(f"demo-data: {start}..{end}: {counts['transactions']} transactions ({share:.3%} fraud), "
          f"{counts['label_partitions']} label partitions -> {tx_ds.uri}, {label_ds.uri}")
    return 0
