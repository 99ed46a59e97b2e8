"""Benchmark: the `train` stage's core vs bare `xgboost.train` on the same matrix and params, in
the same run.

    python benchmarks/train.py [--rows 1000000] [--features 35] [--rounds 200] [--device cpu|cuda]

Stage = `pipelines.train.train_model` fed from polars frames through `model.feature_matrix` (the
stage's own path: manifest check, float32 matrix, QuantileDMatrix, early stopping on the
validation window, trimming, threshold choice) plus serialising the model. Bare = QuantileDMatrix
from the same numpy arrays and `xgboost.train` with the same params, rounds, eval set and early
stopping. One grid point, so both fit exactly one model. Prints both times, the ratio
(stage / bare; target <= 1.1), peak RSS, and checks both models predict the same.
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


def make_data(rows: int, n_feat: int, seed: int = 0):
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, n_feat)).astype(np.float32)
    x[rng.random(size=x.shape) < 0.02] = np.nan
    logit = 1.5 * np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2]) - 5.0
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    names = [f"f{i:02d}" for i in range(n_feat)]
    frame = pl.DataFrame(x, schema=names).with_columns(pl.Series("label", y))
    manifest = {"feature_names": names, "dtypes": {n: "Float32" for n in names}, "spec_hash": "bench"}
    return frame, manifest


def search_point(p, rounds: int):
    """The stage's train params cut to one grid point (max_depth 6, eta 0.1), `rounds` rounds, no early stop."""
    return dataclasses.replace(p, search={"max_depth": [6], "learning_rate": [0.1], "scale_pos_weight": [1.0]},
                               num_boost_round=rounds, early_stopping_rounds=rounds, min_train_positives=1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=35)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import numpy as np
    import xgboost as xgb

    from pipelines.core import modelio as M
    from pipelines.core.config import load_params
    from pipelines.train import train_model

    p = search_point(load_params(ROOT / "params.yaml").train, args.rounds)
    frame, manifest = make_data(args.rows, args.features)
    valid, _ = make_data(args.rows // 5, args.features, seed=1)
    print(f"data: {args.rows:,} train rows, {valid.height:,} valid rows, {args.features} features, "
          f"{int(frame['label'].sum()):,} positives; {args.rounds} rounds; device {args.device}", flush=True)

    xt, yt = M.feature_matrix(frame, manifest), frame["label"].to_numpy()
    xv, yv = M.feature_matrix(valid, manifest), valid["label"].to_numpy()
    params = {**p.base, "max_depth": 6, "learning_rate": 0.1, "scale_pos_weight": 1.0, "eval_metric": p.eval_metric,
              "seed": p.seed, "device": args.device, "verbosity": 1}
    if p.nthread:
        params["nthread"] = p.nthread

    def bare():
        dtrain = xgb.QuantileDMatrix(xt, label=yt, max_bin=int(p.base.get("max_bin", 256)))
        dvalid = xgb.QuantileDMatrix(xv, label=yv, ref=dtrain)
        return xgb.train(params, dtrain, num_boost_round=args.rounds, evals=[(dvalid, "valid")],
                         early_stopping_rounds=args.rounds, verbose_eval=False)

    def stage():
        res = train_model(M.feature_matrix(frame, manifest), frame["label"].to_numpy(),
                          M.feature_matrix(valid, manifest), valid["label"].to_numpy(), p, args.device)
        res.booster.save_raw("ubj")
        return res.booster

    bare()                                                   # warm-up (imports, thread pools)
    t = {}
    for name, fn in (("bare", bare), ("stage", stage), ("bare2", bare), ("stage2", stage)):
        t0 = time.perf_counter()
        booster = fn()
        t[name] = time.perf_counter() - t0
        if name == "bare":                                   # the stage keeps its best iteration: so does the reference
            ref = M.predict(booster[: booster.best_iteration + 1], xv)
        if name == "stage":
            same = np.allclose(M.predict(booster, xv), ref, atol=1e-6)
    b, s = min(t["bare"], t["bare2"]), min(t["stage"], t["stage2"])
    rss = own_peak_mib()
    print(f"bare xgboost.train : {t['bare']:.2f} s, {t['bare2']:.2f} s")
    print(f"train stage core   : {t['stage']:.2f} s, {t['stage2']:.2f} s")
    print(f"ratio stage / bare : {s / b:.3f}  (best of two each; target <= 1.1)")
    print(f"same predictions   : {same}")
    print(f"peak RSS           : {rss:,.0f} MiB")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, xgboost {xgb.__version__}, "
          f"python {platform.python_version()}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
