"""Benchmark: the train stage's core (`pipelines.train.train_model`) on the local engine and on the
dask engine with 1 and 2 workers (a dask.distributed LocalCluster each, started by the engine), the
same matrix, settings and early stopping, in the same run.

    python benchmarks/train_dask.py [--rows 5000000] [--features 35] [--rounds 100]

Prints wall time per engine (cluster start and data hand-over included), the ratio to the local
engine, the validation AP of each model, and the peak RSS of this process (the driver; each dask
worker is a process of its own and holds its share of the matrix).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import own_peak_mib  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--features", type=int, default=35)
    ap.add_argument("--rounds", type=int, default=100)
    args = ap.parse_args()

    import xgboost as xgb

    from benchmarks.train import make_data, search_point
    from pipelines.core import modelio as M
    from pipelines.core.config import load_params
    from pipelines.core.metrics import average_precision
    from pipelines.train import train_model

    p = search_point(load_params(ROOT / "params.yaml").train, args.rounds)
    frame, manifest = make_data(args.rows, args.features)
    valid, _ = make_data(args.rows // 5, args.features, seed=1)
    xt, yt = M.feature_matrix(frame, manifest), frame["label"].to_numpy()
    xv, yv = M.feature_matrix(valid, manifest), valid["label"].to_numpy()
    del frame, valid
    print(f"data: {args.rows:,} train rows, {len(yv):,} valid rows, {args.features} features; {args.rounds} rounds, "
          f"depth 6", flush=True)
    runs = {}
    for name, engine, workers in (("local", "local", 1), ("dask, 1 worker", "dask", 1), ("dask, 2 workers", "dask", 2)):
        t0 = time.perf_counter()
        res = train_model(xt, yt, xv, yv, dataclasses.replace(p, engine=engine, dask_workers=workers), "cpu")
        runs[name] = (time.perf_counter() - t0, average_precision(yv, M.predict(res.booster, xv)))
        print(f"  {name:16s} {runs[name][0]:7.1f} s   valid AP {runs[name][1]:.4f}", flush=True)
    base = runs["local"][0]
    print("ratio to local: " + ", ".join(f"{k} {v[0] / base:.2f}" for k, v in runs.items()))
    print(f"dask 2 workers / dask 1 worker: {runs['dask, 2 workers'][0] / runs['dask, 1 worker'][0]:.2f}")
    print(f"peak RSS (driver): {own_peak_mib():,.0f} MiB")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, xgboost {xgb.__version__}, "
          f"python {platform.python_version()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
