"""Benchmark: the `train` stage's whole validation search (the params.yaml grid, early stopping,
threshold choice) on the GPU against the CPU, on the same synthetic matrix, in the same run.

    python benchmarks/train_device.py [--rows 1000000] [--features 35] [--devices cuda,cpu]

For each device: the device `train.device` resolves to (`auto` must pick cuda on a GPU machine),
the device the stage records as used (from XGBoost's own fall-back warning), the search's wall
time, the chosen model's validation score and its AUC on a held-out set. Prints the speed-up
(cpu seconds / cuda seconds) and peak RSS. Exit 1 when a device asked for is not the one used.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import own_peak_mib  # noqa: E402


def auc(y, s) -> float:
    import numpy as np

    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s)); ranks[order] = np.arange(1, len(s) + 1)
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=35)
    ap.add_argument("--devices", default="cuda,cpu")
    args = ap.parse_args()

    import xgboost as xgb

    from benchmarks.train import make_data
    from pipelines.core import modelio as M
    from pipelines.core.config import load_params
    from pipelines.train import train_model

    p = load_params(ROOT / "params.yaml").train
    print(f"gpu visible: {M.gpu_visible()}; train.device auto -> {M.choose_device('auto')}; "
          f"xgboost {xgb.__version__} USE_CUDA={xgb.build_info().get('USE_CUDA')}", flush=True)
    frame, manifest = make_data(args.rows, args.features)
    valid, _ = make_data(args.rows // 5, args.features, seed=1)
    test, _ = make_data(args.rows // 5, args.features, seed=2)
    xt, yt = M.feature_matrix(frame, manifest), frame["label"].to_numpy()
    xv, yv = M.feature_matrix(valid, manifest), valid["label"].to_numpy()
    xs, ys = M.feature_matrix(test, manifest), test["label"].to_numpy()
    print(f"data: {args.rows:,} train, {len(yv):,} valid, {len(ys):,} test rows, {args.features} features; "
          f"grid {p.search}, up to {p.num_boost_round} rounds, early stop {p.early_stopping_rounds}", flush=True)
    seconds, bad = {}, 0
    for device in args.devices.split(","):
        chosen = M.choose_device(device)
        t0 = time.perf_counter()
        res = train_model(xt, yt, xv, yv, p, chosen)
        seconds[device] = time.perf_counter() - t0
        bad += res.device_used != device
        print(f"{device:>4}: chosen {chosen}, used {res.device_used}, {seconds[device]:.1f} s for "
              f"{len(res.search)} fits ({sum(r['rounds'] for r in res.search)} rounds), best {p.eval_metric} "
              f"{res.valid_score:.4f} at iteration {res.best_iteration}, test AUC "
              f"{auc(ys, M.predict(res.booster, xs)):.4f}", flush=True)
    if "cuda" in seconds and "cpu" in seconds:
        print(f"speed-up cpu/cuda: {seconds['cpu'] / seconds['cuda']:.2f}x")
    print(f"peak RSS: {own_peak_mib():,.0f} MiB; machine: "
          f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
