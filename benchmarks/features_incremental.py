"""Benchmark: one nightly features date with a full-volume look-back (every history day as large as
the scored day), the incremental path (the day's events + boundary days + per-entity day totals from
feature_state partitions) against the recomputation from the raw look-back, in the same run; and
against the same date with no history at all (the memory anchor).

    python benchmarks/features_incremental.py [--rows-per-day 1000000] [--shards 3] [--keep] [--quick]

A local lake (benchmarks/.out/lake_<rows>) gets 45 days of simulated validated transactions and
canonical labels (labels of day d land on d + 7), each a committed partition. Then, each in a fresh
process running the stage's own entry point (`python -m pipelines features --date D`; the features
suite off, so only the features are measured), with its wall time and peak RSS:
  1. incremental, first night: the 37 feature_state partitions are made from raw, then the features;
  2. incremental, a later night (the states exist): what a nightly date costs;
  3. from raw (--from-raw): the whole 37-day look-back read and recomputed (the path before);
  4. no history: the same date in a lake that holds only that day.
  5. with --shards N: the later night in N shards by entity hash, each shard a process of its own
     (`--shard k/N`, what each mapped Airflow task runs), then the merge (the date's own run).
2, 3 and 5 must write the same bytes (checked). `--quick` (for iterating on the stage, not a
record): lakes kept by an earlier `--keep` run are reused, and only 1, 2 and 4 run. Targets (issue 16): 2 well under 3; peak RSS of 2
within 1.2x of 4; (issue 17) a shard's peak RSS about 1/N of 2's.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / ".out"
sys.path.insert(0, str(ROOT))
FIRST = dt.date(2026, 1, 1)
DAYS = 45
CHILD = """
import json, sys, time
t = time.perf_counter()
from pipelines import features
rc = features.main(sys.argv[1:])
from benchmarks import own_peak_mib   # not ru_maxrss: it carries the parent's (the lake builder's) peak
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t, "peak_mib": own_peak_mib()}))
"""


def build(rows: int, lake: Path, only: dt.date | None = None) -> None:
    import polars as pl

    from pipelines.core import storage
    from pipelines.core.config import load_params
    from pipelines.ingest import put_canonical
    from pipelines.ops.demo_data import DemoParams, make_world, simulate_day

    params = load_params(ROOT / "params.yaml")
    layout = params.storage.layout
    base = DemoParams.from_dict(params.section("demo_data"))
    customers = max(200, int(rows / 1.75))
    p = dataclasses.replace(base, n_customers=customers, n_terminals=max(400, customers * 2), bugs=())
    world = make_world(p)
    with storage.Publisher(str(lake), None) as pub:
        for i in range(DAYS):
            day = FIRST + dt.timedelta(days=i)
            if only and day != only:
                continue
            d = simulate_day(p, world, day)
            landed = day + dt.timedelta(days=7)
            ev = d.select(pl.col("tx_id").alias("event_id"), pl.col("tx_ts").cast(pl.Datetime("us")).alias("event_ts"),
                          pl.col("customer_id").cast(pl.String).alias("customer"),
                          pl.col("terminal_id").cast(pl.String).alias("terminal"), "amount", "category")
            lab = d.select(pl.col("tx_id").alias("event_id"), pl.col("is_fraud").cast(pl.Int8).alias("label"),
                           pl.lit(landed).alias("label_date"),
                           pl.lit(dt.datetime.combine(landed + dt.timedelta(days=1), dt.time()))
                           .cast(pl.Datetime("us")).alias("available_at"))
            for kind, name, frame, when in (("validated", "transactions", ev, day), ("canonical", "labels", lab, landed)):
                if only and kind == "canonical":
                    continue
                uri = f"{lake}/" + layout[kind].format(dataset=name, date=when.isoformat())
                part = pub.partition(uri, "validate" if kind == "validated" else "ingest")
                if kind == "canonical":         # as ingest publishes it: with its ids' hashes
                    put_canonical(part, uri, frame)
                else:
                    part.put_parquet(uri, frame)
                part.commit()


def params_file(lake: Path, first: dt.date, shards: int = 1) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["storage"]["lake"] = str(lake)
    raw["datasets"]["transactions"]["first_date"] = first.isoformat()
    raw["datasets"]["labels"]["first_date"] = (first + dt.timedelta(days=7)).isoformat()
    raw["validate"]["suites"]["features"] = False
    raw["features"]["incremental"] = True
    raw["shards"] = {"count": shards}
    path = lake.parent / f"{lake.name}{f'.{shards}-shards' if shards > 1 else ''}.params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run(params: Path, day: dt.date, *extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CHILD, "--params", str(params), "--date", day.isoformat(), *extra],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows-per-day", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=1, help="also the later night in this many shards")
    ap.add_argument("--keep", action="store_true", help="keep the generated lakes")
    ap.add_argument("--quick", action="store_true",
                    help="reuse kept lakes; only the first night, a later night and no history (no from-raw, no shards)")
    args = ap.parse_args()
    day = FIRST + dt.timedelta(days=DAYS - 1)
    lake, alone = OUT / f"lake_{args.rows_per_day}", OUT / f"lake_{args.rows_per_day}_alone"
    t = time.perf_counter()
    if not (args.quick and lake.exists() and alone.exists()):
        for folder in (lake, alone):
            shutil.rmtree(folder, ignore_errors=True)
        build(args.rows_per_day, lake)
        build(args.rows_per_day, alone, only=day)
        print(f"data: {DAYS} days x ~{args.rows_per_day:,} rows in {time.perf_counter() - t:.0f}s")
    full, single = params_file(lake, FIRST), params_file(alone, day)
    out = lake / "features" / f"date={day}" / "part-0.parquet"
    first = run(full, day)
    nightly = run(full, day, "--recompute")
    inc_bytes = out.read_bytes()
    raw = run(full, day, "--from-raw", "--recompute") if not args.quick else None
    same = out.read_bytes() == inc_bytes
    nohist = run(single, day, "--recompute")
    rows = {"incremental, states made from raw (first night)": first, "incremental (a later night)": nightly,
            **({"from raw (37-day look-back)": raw} if raw else {}), "no history (the day alone)": nohist}
    if args.shards > 1 and not args.quick:
        from pipelines.core import storage

        sharded = params_file(lake, FIRST, args.shards)
        for k in range(args.shards):
            rows[f"shard {k}/{args.shards} (incremental, a process of its own)"] = run(
                sharded, day, f"--shard={k}/{args.shards}", "--recompute")
        Path(storage.record_uri(str(out))).unlink()                    # the date to do; its shards are there
        rows[f"merge of the {args.shards} shards (+ the day's events)"] = merge = run(sharded, day)
        same = same and out.read_bytes() == inc_bytes
        shard_peak = max(r["peak_mib"] for n, r in rows.items() if n.startswith("shard "))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"date {day}, ~{args.rows_per_day:,} rows per day, look-back {DAYS - 1} days of the same volume")
    print(f"{'run':52s} {'wall':>8s} {'peak RSS':>10s}")
    for name, r in rows.items():
        print(f"{name:52s} {r['seconds']:7.1f}s {r['peak_mib']:8.0f} MiB")
    if raw:
        print(f"from raw / incremental, wall: {raw['seconds'] / nightly['seconds']:.2f}x; "
              f"peak RSS: {raw['peak_mib'] / nightly['peak_mib']:.2f}x")
    print(f"incremental peak RSS / no-history peak RSS: {nightly['peak_mib'] / nohist['peak_mib']:.2f} (target <= 1.2)")
    if args.shards > 1 and not args.quick:
        print(f"largest shard peak RSS / unsharded incremental: {shard_peak / nightly['peak_mib']:.2f} (1/N = "
              f"{1 / args.shards:.2f}); merge peak RSS / unsharded: {merge['peak_mib'] / nightly['peak_mib']:.2f}")
    if not args.quick:
        print(f"incremental bytes == from-raw bytes{' == merged shards bytes' if args.shards > 1 else ''}: {same}")
    if not args.keep:
        for folder in (lake, alone):
            shutil.rmtree(folder, ignore_errors=True)
    if not same:
        raise SystemExit("the incremental path wrote other bytes than the recomputation from raw")


if __name__ == "__main__":
    main()
