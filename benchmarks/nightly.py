"""Benchmark: the nightly stages (score + decide + monitor) on one date of 1M and 10M rows, against
bare `inplace_predict` of the same model on the same matrix, in the same run.

    python benchmarks/nightly.py [--rows 1000000 10000000] [--trees 200] [--depth 6]

For each size, a fresh process generates a feature partition with the real feature schema (names
and dtypes of params.yaml `features`) into a local lake, trains a model on a sample and saves its
reference profile; another fresh process then runs the stage code (`score.score_day`,
`decide.main`, `monitor.monitor_day`: the same functions the CLI and the DAG run, streaming
batch by batch) and, on the same file, bare `booster.inplace_predict` per batch (only the predict
call timed). It prints rows/s of each, the ratios (target: score >= 0.8 of bare predict), and the
peak RSS of the stage process (target: 10M <= 1.5x the 1M figure, i.e. memory flat in input size).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DAY = "2026-03-01"
BATCH = 1_000_000


def _dtype(name: str):
    import polars as pl

    if name in ("is_weekend", "is_night"):
        return pl.Int8
    if name.endswith("_code"):
        return pl.Int16
    if "_count_" in name:
        return pl.Int32
    if name == "amount":
        return pl.Float64
    return pl.Float32


def _params(work: Path) -> Path:
    import yaml

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["storage"]["lake"] = str(work / "lake")
    data["validate"]["suites"] = {k: str(ROOT / v) for k, v in data["validate"]["suites"].items()}
    data["score"]["cache_dir"] = str(work / "cache")
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def generate(rows: int, work: Path, trees: int, depth: int) -> None:
    """Feature partition (written batch by batch), a model trained on a sample, its profile."""
    import numpy as np
    import polars as pl
    import pyarrow.parquet as pq
    import xgboost as xgb

    from pipelines.core import modelio as M
    from pipelines.core import storage
    from pipelines.core.config import load_params
    from pipelines.core.drift import reference_profile
    from pipelines.features import feature_names, spec_hash

    params = load_params(_params(work))
    spec = params.features
    names = feature_names(spec, ["amount"])
    schema = {"event_id": pl.String, "event_ts": pl.Datetime("us"), "customer": pl.String, "terminal": pl.String,
              **{n: _dtype(n) for n in names}}
    store = params.storage
    path = work / "features-staging.parquet"         # published below, with its lineage record
    rng = np.random.default_rng(7)
    writer = None
    sample = None
    for start in range(0, rows, BATCH):
        n = min(BATCH, rows - start)
        cols = {"event_id": [f"e{i:011d}" for i in range(start, start + n)],
                "event_ts": pl.datetime_range(pl.datetime(2026, 3, 1), pl.datetime(2026, 3, 1, 23, 59, 59), "1s",
                                              eager=True).sample(n, with_replacement=True, seed=start).sort(),
                "customer": [f"C{x:06d}" for x in rng.integers(0, 3_000_000, n)],
                "terminal": [f"T{x:06d}" for x in rng.integers(0, 600_000, n)]}
        for c in names:
            dt_ = schema[c]
            if dt_ == pl.Int8:
                v = rng.integers(0, 2, n)
            elif dt_ == pl.Int16:
                v = rng.integers(0, 8, n)
            elif dt_ == pl.Int32:
                v = rng.poisson(5, n)
            else:
                v = rng.lognormal(3, 1, n)
                if c != "amount":          # a null amount is not normal (validation quarantines it)
                    v[rng.random(n) < 0.02] = np.nan
            cols[c] = pl.Series(c, v).cast(dt_)
        frame = pl.DataFrame(cols).with_columns(pl.col(c).fill_nan(None) for c in names if schema[c].is_float())
        frame = frame.select(list(schema)).cast(schema)
        if sample is None:
            sample = frame.head(200_000)
        t = frame.to_arrow()
        if writer is None:
            writer = pq.ParquetWriter(str(path), t.schema, compression="zstd", compression_level=3)
        writer.write_table(t, row_group_size=BATCH)
    writer.close()
    man = {"date": DAY, "rows": rows, "feature_columns": names, "key_columns": ["event_id", "event_ts", "customer", "terminal"],
           "dtypes": {c: str(schema[c]) for c in schema}, "spec_hash": spec_hash(spec)}
    with storage.Publisher(store.lake) as pub:      # a committed partition, as the features stage leaves it
        part = pub.partition(store.uri("features", date=DAY), "features")
        part.put_path(store.uri("features", date=DAY), path)
        part.put_json(store.uri("features_manifest", date=DAY), man)
        part.commit()
    path.unlink()
    manifest = M.feature_manifest(man)
    x = M.feature_matrix(sample, manifest)
    logit = np.clip(0.02 * np.nan_to_num(x[:, 0]) - 0.3 * np.nan_to_num(x[:, 5]) - 3, -30, 30)
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": depth, "eta": 0.1, "base_score": 0.5,
                         "tree_method": "hist", "seed": 0}, xgb.DMatrix(x, label=y), num_boost_round=trees)
    raw = bytes(booster.save_raw("ubj"))
    prof = reference_profile(sample.with_columns(pl.Series("score", M.predict(booster, x))), manifest, params.evaluate)
    files = {"model.ubj": raw, "feature_manifest.json": json.dumps(manifest).encode(),
             "summary.json": json.dumps({"operating_threshold": 0.2}).encode(),
             "reference_profile.json": json.dumps({**prof, "days": 1, "window": [DAY, DAY]}).encode()}
    (work / "model").mkdir(exist_ok=True)
    for k, v in files.items():
        (work / "model" / k).write_bytes(v)


def _bare(served, path: str, chunk_rows: int) -> tuple[float, float]:
    """The same model on the same matrix, batch by batch; only inplace_predict is timed."""
    import numpy as np

    from pipelines.core import modelio as M
    from pipelines.core import storage

    bare = checksum = 0.0
    for batch in storage.iter_parquet(path, batch_rows=chunk_rows):
        x = M.feature_matrix(batch, served.manifest)
        t = time.perf_counter()
        s = served.booster.inplace_predict(x)
        bare += time.perf_counter() - t
        checksum += float(np.asarray(s, dtype=np.float64).sum())
    return bare, checksum


def run(work: Path) -> dict:
    """The stage code on the generated partition, then bare inplace_predict; timings and peak RSS."""
    import io
    from contextlib import redirect_stdout

    from pipelines import decide, monitor
    from pipelines.core import lake, storage
    from pipelines.core import modelio as M
    from pipelines.core import scoring as score
    from pipelines.core.config import load_params, parse_date

    params_path = _params(work)
    params = load_params(params_path)
    files = {k: (work / "model" / k).read_bytes() for k in score.FILES}
    served = score._served(files, {"name": "bench", "version": "1", "run_id": "bench", "sha256": M.sha256(files[lake.MODEL])},
                           [], "benchmark")
    day = parse_date(DAY)
    out: dict = {}
    store_path = params.storage.uri("features", date=DAY)
    bare_before, checksum = _bare(served, store_path, params.score.chunk_rows)
    t = time.perf_counter()
    stats = score.score_day(params, day, served)
    out["score_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        decide.main(["--params", str(params_path), "--date", DAY])
    out["decide_s"] = time.perf_counter() - t
    t = time.perf_counter()
    monitor.monitor_day(params, day)
    out["monitor_s"] = time.perf_counter() - t
    out["rows"] = stats["rows"]
    out["rss_stages_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bare_after, _ = _bare(served, store_path, params.score.chunk_rows)
    bare = min(bare_before, bare_after)     # the faster of two bare runs (before and after the stages)
    out["bare_runs_s"] = [bare_before, bare_after]
    pred = storage.read_parquet(params.storage.uri("predictions", date=DAY)) if out["rows"] <= 2_000_000 else None
    if pred is not None:
        assert abs(float(pred["score"].cast(float).sum()) - checksum) < 1e-3 * max(1.0, checksum), "scores differ"
    out["bare_predict_s"] = bare
    out["predict_in_stage_s"] = stats["predict_seconds"]
    out["chunk_latency_ms"] = stats["chunk_latency_ms"]
    out["store"] = store_path
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--trees", type=int, default=200)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--work", default=None)
    ap.add_argument("--child", choices=["generate", "run"])
    args = ap.parse_args()
    if args.child:
        work = Path(args.work)
        if args.child == "generate":
            generate(args.rows[0], work, args.trees, args.depth)
        else:
            print("RESULT " + json.dumps(run(work)))
        return 0
    import tempfile

    import xgboost

    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, xgboost {xgboost.__version__}; model {args.trees} trees depth {args.depth}")
    results = {}
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="bench-nightly-") as tmp:
            base = [sys.executable, __file__, "--rows", str(rows), "--trees", str(args.trees), "--depth", str(args.depth),
                    "--work", tmp]
            t = time.perf_counter()
            subprocess.run([*base, "--child", "generate"], check=True)
            gen = time.perf_counter() - t
            r = subprocess.run([*base, "--child", "run"], capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stdout[-3000:], r.stderr[-5000:], file=sys.stderr)
                return 1
            res = json.loads([x for x in r.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])
        n = res["rows"]
        total = res["score_s"] + res["decide_s"] + res["monitor_s"]
        results[rows] = res
        print(f"\n{n:,} rows (generated in {gen:.0f}s)")
        print(f"  bare inplace_predict      {res['bare_predict_s']:7.2f}s  {n / res['bare_predict_s']:12,.0f} rows/s  "
              f"(faster of {res['bare_runs_s'][0]:.2f}s before, {res['bare_runs_s'][1]:.2f}s after the stages)")
        print(f"  score stage (end to end)  {res['score_s']:7.2f}s  {n / res['score_s']:12,.0f} rows/s  "
              f"ratio {res['bare_predict_s'] / res['score_s']:.2f} of bare (target >= 0.8)")
        print(f"    of which predict        {res['predict_in_stage_s']:7.2f}s  ratio {res['bare_predict_s'] / res['predict_in_stage_s']:.2f}; "
              f"chunk latency p50/p95/p99 {res['chunk_latency_ms']['p50']:.0f}/{res['chunk_latency_ms']['p95']:.0f}/"
              f"{res['chunk_latency_ms']['p99']:.0f} ms")
        print(f"  decide                    {res['decide_s']:7.2f}s  {n / res['decide_s']:12,.0f} rows/s")
        print(f"  monitor                   {res['monitor_s']:7.2f}s  {n / res['monitor_s']:12,.0f} rows/s")
        print(f"  score+decide+monitor      {total:7.2f}s  {n / total:12,.0f} rows/s  ratio {res['bare_predict_s'] / total:.2f} of bare")
        print(f"  peak RSS (stage process)  {res['rss_stages_mb']:7.0f} MB")
    if len(results) >= 2:
        lo, hi = min(results), max(results)
        print(f"\npeak RSS {hi:,} rows / {lo:,} rows: {results[hi]['rss_stages_mb'] / results[lo]['rss_stages_mb']:.2f} "
              f"(target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
