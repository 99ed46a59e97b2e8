"""Benchmark: score, decide and monitor of one date at 10M rows and more, each a process of its own
as Airflow runs it (`python -m pipelines <stage> --date D`).

    python benchmarks/downstream.py [--rows 10000000] [--base 1000000] [--keep] [--pairs 2]

These three stages read only the date's features and what score hands on (predictions, the
features' counts), never the look-back: their cost is that of the date. So the date's features
are made once for a simulated day of `--base` rows (the features stage, no history), then tiled to
`--rows` rows (copy k's event ids get the suffix `~k`; the values repeat), and published as the
date's features partition. A model trained on the base day (its simulated labels; 200 trees of
depth 6, as in nightly_e2e.py) is the champion in an MLflow server on 127.0.0.1 (sqlite, started
and stopped here). What features and the history cost is nightly_e2e.py's and
features_incremental.py's.

Anchors in the same run, on the same partition: the bare scoring job (read, inplace_predict, write;
see nightly_e2e.py) and the predict calls alone. Targets (issue 16, 2 cores): score >= 0.9x the bare job;
decide <= 5 s at 10M; monitor not slower than before; every stage <= 4 GiB.
"""
from __future__ import annotations

import argparse
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

from benchmarks.nightly_e2e import (DAY, _anchor, _stage, _world, bare_job, mlflow_server, register,  # noqa: E402
                                    score_pairs, score_ratios, suites)

STAGES = ("score", "decide", "monitor")


def prepare(rows: int, base: int, work: Path) -> None:
    """The date's validated partition (`base` rows), params.yaml, the features of the date."""
    from benchmarks.features_incremental import build

    lake = work / "lake"
    build(base, lake, only=DAY)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["validate"]["suites"] = suites(work, int(base * 0.5), int(rows * 1.5))
    raw["storage"]["lake"] = str(lake)
    raw["datasets"]["transactions"]["first_date"] = DAY.isoformat()
    raw["datasets"]["labels"]["first_date"] = (DAY + dt.timedelta(days=1)).isoformat()
    raw["score"]["cache_dir"] = str(work / "model-cache")
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def tile(rows: int, base: int, work: Path) -> None:
    """The date's features (one simulated day) repeated to `rows` rows and published in their place;
    the champion trained on the day as simulated."""
    import polars as pl

    from pipelines.core import storage
    from pipelines.core.config import load_params
    from pipelines.ops.demo_data import simulate_day

    params = load_params(work / "params.yaml")
    store = params.storage
    uri, man_uri = store.uri("features", date=DAY.isoformat()), store.uri("features_manifest", date=DAY.isoformat())
    feats, man = storage.read_parquet(uri), storage.read_json(man_uri)
    p, world = _world(base)                              # the world build() simulated
    truth = simulate_day(p, world, DAY).select(pl.col("tx_id").alias("event_id"),
                                               pl.col("is_fraud").cast(pl.Int8).alias("label"))
    register(params, feats.join(truth, on="event_id", how="inner").head(500_000), man)
    copies = -(-rows // feats.height)
    big = pl.concat([feats if k == 0 else feats.with_columns(pl.col("event_id") + f"~{k}") for k in range(copies)]
                    ).head(rows)
    del feats
    with storage.Publisher(store.lake, None) as pub:
        part = pub.partition(uri, "features")
        part.put_parquet(uri, big)
        part.put_json(man_uri, {**man, "rows": big.height})
        part.commit()


def one_size(rows: int, base: int, keep: bool, pairs: int = 2) -> dict:
    work = OUT / f"downstream_{rows}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "stages.log"
    params = work / "params.yaml"
    child = [sys.executable, __file__, "--rows", str(rows), "--base", str(base), "--work", str(work), "--child"]
    t = time.perf_counter()
    # the data is made in processes of their own: a process's peak RSS (wait4) includes its parent's
    # memory at the fork, so the parent that launches the stages stays small
    subprocess.run([*child, "prepare"], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    with mlflow_server(work) as env:
        features = _stage("features", params, env, log)
        subprocess.run([*child, "tile"], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        prep = time.perf_counter() - t
        stages = {stage: _stage(stage, params, env, log) for stage in STAGES}
        anchors = {"predict": _anchor("predict", params, work, env, log), "bare-job": bare_job(params, work, env, log)}
        anchors["pairs"] = score_pairs(params, work, env, log, pairs)
    res = {"rows": anchors["predict"]["rows"], "base": base, "prepare_s": prep, "base_features": features,
           "stages": stages, "anchors": anchors}
    (OUT / f"downstream_{rows}.json").write_text(json.dumps(res, indent=1))
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return res


def report(res: dict) -> None:
    n, st, an = res["rows"], res["stages"], res["anchors"]
    print(f"\ndate {DAY}, {n:,} transactions (a day of {res['base']:,} tiled; prepared in {res['prepare_s']:.0f} s)")
    print(f"  {'stage':10s} {'wall':>8s} {'rows/s':>12s} {'peak RSS':>10s}")
    for k, s in st.items():
        print(f"  {k:10s} {s['seconds']:7.1f}s {n / s['seconds']:12,.0f} {s['peak_mib']:7.0f} MiB")
    total = sum(s["seconds"] for s in st.values())
    print(f"  {'together':10s} {total:7.1f}s {n / total:12,.0f}")
    score_ratios(st["score"], an)
    print(f"  decide {st['decide']['seconds']:.1f} s (target at 10M: <= 5 s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000_000])
    ap.add_argument("--base", type=int, default=1_000_000, help="rows of the simulated day that is tiled")
    ap.add_argument("--keep", action="store_true", help="keep the generated lakes (benchmarks/.out/downstream_<rows>)")
    ap.add_argument("--pairs", type=int, default=2,
                    help="score and the bare job run again side by side this many times (the ratio's median)")
    ap.add_argument("--child", choices=["prepare", "tile"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "prepare":
        prepare(args.rows[0], args.base, Path(args.work))
        return 0
    if args.child == "tile":
        tile(args.rows[0], args.base, Path(args.work))
        return 0
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, python {platform.python_version()}")
    for rows in args.rows:
        report(one_size(rows, args.base, args.keep, args.pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
