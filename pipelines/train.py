"""Stage `train`: XGBoost on a time-based split of the feature partitions.

Data contract: in = feature partitions of the train and validation windows (see
`model.split_windows`) joined with their labels; the test window is never read here. Out, under
<storage.layout.training>/train/ (and --snapshot for DVC):
  * model.ubj            XGBoost's own UBJSON (no pickle), trimmed to the best iteration
  * feature_manifest.json  the model's input columns, order, dtypes, spec hash
  * summary.json         windows, row accounting, the search table, chosen settings, operating
                         threshold, device requested/used, XGBoost build, input sha256s, fingerprint

Settings are chosen by a grid (train.search) with early stopping on the validation window; the
operating threshold is the best-F1 threshold on validation unless params fix it. Deterministic for
a seed: same inputs, same model bytes.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import logging
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from pipelines.core import code, lake, storage
from pipelines.core import modelio as M
from pipelines.core.cli import resolve, stage_parser
from pipelines.core.config import TrainParams, date_range

log = logging.getLogger("pipelines.train")


@dataclass
class TrainResult:
    booster: object
    params: dict                 # the chosen XGBoost params (device included)
    best_iteration: int
    valid_score: float
    threshold: float
    search: list[dict] = field(default_factory=list)
    device_requested: str = "auto"
    device_used: str = "cpu"
    seconds: float = 0.0
    learning_curve: list[float] = field(default_factory=list)   # the chosen model's validation metric per round
    engine: str = "local"
    workers: int = 1


def _grid(search: dict[str, list]) -> list[dict]:
    keys = sorted(search)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(search[k] for k in keys))]


def best_f1_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """The score threshold with the highest F1 (ties: the higher threshold)."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, score)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(thresholds[best])


class _Local:
    """XGBoost in this process."""

    def __init__(self, x_train, y_train, x_valid, y_valid, max_bin: int, p: TrainParams) -> None:
        import xgboost as xgb

        self.xgb = xgb
        self.dtrain = xgb.QuantileDMatrix(x_train, label=y_train, max_bin=max_bin)
        self.dvalid = xgb.QuantileDMatrix(x_valid, label=y_valid, ref=self.dtrain)
        self.name, self.workers = "local", 1

    def fit(self, params: dict, rounds: int, early: int) -> tuple[object, dict]:
        curve: dict = {}
        booster = self.xgb.train(params, self.dtrain, num_boost_round=rounds, evals=[(self.dvalid, "valid")],
                                 early_stopping_rounds=early, verbose_eval=False, evals_result=curve)
        return booster, curve

    def close(self) -> None:
        pass


class _Dask:
    """xgboost.dask on a dask.distributed cluster: the scheduler at $FRAUDOPS_DASK_SCHEDULER, else a
    LocalCluster of p.dask_workers processes (started here, closed by close()). The matrices are
    split into partitions spread over the workers; each worker builds its share of the quantile
    sketch and histograms (XGBoost's collective: the same trees as one process would grow from the
    merged sketch)."""

    def __init__(self, x_train, y_train, x_valid, y_valid, max_bin: int, p: TrainParams) -> None:
        import dask.array as da
        from dask.distributed import Client, LocalCluster
        from xgboost import dask as dxgb

        self.dxgb, self.cluster = dxgb, None
        address = os.environ.get("FRAUDOPS_DASK_SCHEDULER")
        if address:
            self.client = Client(address, timeout=60)
        else:
            threads = max(1, (os.cpu_count() or 1) // p.dask_workers)
            self.cluster = LocalCluster(n_workers=p.dask_workers, threads_per_worker=threads, processes=True,
                                        dashboard_address=None, silence_logs=logging.WARNING)
            self.client = Client(self.cluster)
        try:
            self.client.wait_for_workers(1, timeout=120)
        except BaseException:
            self.close()
            raise
        self.workers = len(self.client.scheduler_info()["workers"])
        self.name = f"dask ({self.workers} workers at {address or 'a LocalCluster'})"

        def arrays(x, y):
            rows = max(1, -(-x.shape[0] // (2 * self.workers)))     # two partitions per worker
            return da.from_array(x, chunks=(rows, x.shape[1])), da.from_array(y, chunks=(rows,))

        try:
            self.dtrain = dxgb.DaskQuantileDMatrix(self.client, *arrays(x_train, y_train), max_bin=max_bin)
            self.dvalid = dxgb.DaskQuantileDMatrix(self.client, *arrays(x_valid, y_valid), ref=self.dtrain)
        except BaseException:
            self.close()
            raise

    def fit(self, params: dict, rounds: int, early: int) -> tuple[object, dict]:
        params = {k: v for k, v in params.items() if k != "nthread"}     # each worker uses its own threads
        out = self.dxgb.train(self.client, params, self.dtrain, num_boost_round=rounds, evals=[(self.dvalid, "valid")],
                              early_stopping_rounds=early, verbose_eval=False)
        return out["booster"], out["history"]

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def train_model(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
                p: TrainParams, device: str) -> TrainResult:
    """Grid search with early stopping on the validation window (on p.engine); returns the best
    booster, trimmed to its best iteration. No I/O (the dask engine talks to its cluster)."""
    t0 = time.perf_counter()
    pos = int(y_train.sum())
    if pos < p.min_train_positives:
        raise M.TrainingDataError(f"train window has {pos} positives (< train.min_train_positives="
                                  f"{p.min_train_positives}): no sound model can be trained; run fails")
    if y_valid.sum() == 0:
        raise M.TrainingDataError("validation window has no positives: early stopping and threshold choice "
                                  "are impossible; widen train.valid_days")
    auto_spw = float((len(y_train) - pos) / pos)
    max_bin = int(p.base.get("max_bin", 256))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = (_Dask if p.engine == "dask" else _Local)(x_train, y_train, x_valid, y_valid, max_bin, p)
        log.info("training on %s", engine.name)
        best: tuple[float, int, dict, object] | None = None
        table = []
        combos = list(_grid(p.search))
        for trial, combo in enumerate(combos, 1):
            combo = {k: (auto_spw if v == "auto" else v) for k, v in combo.items()}
            started = time.perf_counter()
            params = {**p.base, **combo, "eval_metric": p.eval_metric, "seed": p.seed, "device": device,
                      "nthread": p.nthread or None, "verbosity": 1}
            params = {k: v for k, v in params.items() if v is not None}
            try:
                booster, curve = engine.fit(params, p.num_boost_round, p.early_stopping_rounds)
                score, it = float(booster.best_score), int(booster.best_iteration)
            except BaseException:
                engine.close()
                raise
            table.append({**{k: combo[k] for k in sorted(combo)}, "valid_" + p.eval_metric: score, "best_iteration": it,
                          "rounds": len(curve["valid"][p.eval_metric])})
            log.info("search trial %d/%d %s -> valid %s %.4f at iteration %d (%.1fs; best so far %.4f)", trial,
                     len(combos), combo, p.eval_metric, score, it, time.perf_counter() - started,
                     max(score, best[0]) if best else score)
            if best is None or score > best[0]:
                best = (score, it, params, booster, [float(v) for v in curve["valid"][p.eval_metric]])
        engine.close()
    score, it, params, booster, curve = best
    final = booster[: it + 1]
    used = "cpu" if device == "cpu" or M.device_fell_back(caught) else "cuda"
    # The model leaves training device-neutral: every later prediction (the threshold below,
    # evaluate, score) is on host numpy arrays, and a cuda booster fed host data copies it into a
    # DMatrix with a warning (seen on an H200). The saved model does not carry the device.
    final.set_param({"device": "cpu"})
    valid_scores = M.predict(final, x_valid)
    thr = best_f1_threshold(y_valid, valid_scores) if p.operating_threshold == "auto" else float(p.operating_threshold)
    return TrainResult(final, params, it, score, thr, table, p.device, used, time.perf_counter() - t0, curve,
                       engine.name.split(" ")[0], engine.workers)


def code_version() -> str:
    """The fingerprint of every project module training runs (pipelines/core/code.py): a change to
    any of them (the review-label rule in core/reviews.py included) is a new training code version."""
    return code.fingerprint("pipelines.train")


def main(argv: list[str]) -> int:
    import xgboost as xgb

    ap = stage_parser("train", __doc__)
    ap.add_argument("--force", action="store_true", help="train even if this range already has a model from the same inputs")
    args = ap.parse_args(argv)
    params, days = resolve(args)
    p, store = params.train, params.storage
    labels = params.dataset("labels")
    start, end = min(days), max(days)
    win = M.split_windows(start, end, p, labels.delay_days)
    log.info("windows: %s", win.as_dict())
    frame, stats = M.load_labelled(store, date_range(win.train[0], win.valid[1]), labels.delay_days, labels.first_date,
                                   review_verdicts=params.feedback.review_verdicts)
    manifest = M.feature_manifest(stats["manifest"], p.exclude_features)
    fingerprint = hashlib.sha256(json.dumps({"inputs": stats["partitions"], "reviews": stats["reviews"],
                                             "labelled": stats["rows_labelled"],
                                             "positives": stats["positives"], "params": str(p),
                                             "code": code_version(), "xgboost": xgb.__version__},
                                            sort_keys=True).encode()).hexdigest()
    with M.StageOutput(lake.training_uri(params, start, end), lake.TRAIN, args.snapshot) as out:
        # FRAUDOPS_TRAIN_FORCE=1: the training DAG's force, through `dvc repro` (whose stage command is fixed)
        if not (args.force or os.environ.get("FRAUDOPS_TRAIN_FORCE") == "1") and _reuse(out, fingerprint):
            return 0
        train_df, valid_df = M.in_window(frame, win.train), M.in_window(frame, win.valid)
        device = M.choose_device(p.device)
        res = train_model(M.feature_matrix(train_df, manifest, "train window"), train_df["label"].to_numpy(),
                          M.feature_matrix(valid_df, manifest, "valid window"), valid_df["label"].to_numpy(), p, device)
        res.booster.feature_names = manifest["feature_names"]     # the model file names its inputs
        raw = bytes(res.booster.save_raw("ubj"))
        summary = {
            "range": [start.isoformat(), end.isoformat()], "windows": win.as_dict(),
            "rows": {"train": train_df.height, "valid": valid_df.height, "train_positives": int(train_df["label"].sum()),
                     "valid_positives": int(valid_df["label"].sum()),
                     **{k: stats[k] for k in ("rows_in", "rows_labelled", "rows_unlabeled")}},
            "search": res.search, "chosen_params": res.params, "best_iteration": res.best_iteration,
            # per boosting round until early stopping (the model keeps rounds 0..best_iteration)
            "learning_curve": {"metric": p.eval_metric, "valid": res.learning_curve},
            "valid_score": {p.eval_metric: res.valid_score}, "operating_threshold": res.threshold,
            "device_requested": res.device_requested, "device_used": res.device_used,
            "engine": {"name": res.engine, "workers": res.workers},
            "xgboost": {"version": xgb.__version__, "use_cuda": bool(xgb.build_info().get("USE_CUDA"))},
            "labels": stats["labels"], "reviews_sha256": stats["reviews"],
            "inputs_sha256": stats["partitions"], "spec_hash": manifest["spec_hash"], "code_version": code_version(),
            "model_sha256": M.sha256(raw), "fingerprint": fingerprint,
        }
        out.put(lake.MODEL, raw)
        # the labels this model learned from, with their provenance (feed | review, reviewer)
        out.put(lake.LABELS, storage.parquet_bytes(frame.select(
            "event_id", "date", "label", "label_source", "review_label", "reviewer", "review_agrees")))
        out.put_json(lake.MANIFEST, manifest)
        out.put_json(lake.SUMMARY, summary)      # last: its presence means the folder is complete
        log.info("train %s..%s: %d rows (%d frauds), valid %s=%.4f, threshold %.4f, device %s, %.1fs -> %s",
                 *win.train, train_df.height, summary["rows"]["train_positives"], p.eval_metric, res.valid_score,
                 res.threshold, res.device_used, res.seconds, out.base)
        return 0


def _reuse(out: M.StageOutput, fingerprint: str) -> bool:
    """Same inputs, params and code as the model already published: mirror it instead of retraining."""
    try:
        summary = storage.read_json(f"{out.base}/{lake.SUMMARY}")
        if summary.get("fingerprint") != fingerprint:
            return False
        files = {n: storage.read_bytes(f"{out.base}/{n}") for n in (lake.MODEL, lake.LABELS, lake.MANIFEST)}
    except storage.MissingObject:
        return False
    if M.sha256(files[lake.MODEL]) != summary["model_sha256"]:
        return False
    for name, data in files.items():
        out.put(name, data)
    out.put_json(lake.SUMMARY, summary)
    log.info("train: %s already holds a model from the same inputs, params and code; reused (--force retrains)", out.base)
    return True
