"""What train, evaluate, register (and scoring) share: the time split, labelled feature frames, the
one feature-matrix path, the device choice and prediction. No stage logic lives here.

Feature manifest (saved next to the model, logged with it): `feature_names` (the model's input
columns, in order), `dtypes` (polars dtype of each in the feature partitions), `spec_hash` and
`code_version` of the feature code that made them. `feature_matrix` refuses a frame that does not
match it: a mismatch is an error, never a silent mis-score.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import shutil
import subprocess
import warnings
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipelines.core import lineage, storage
from pipelines.core.config import StorageParams, TrainParams, date_range, parse_date

log = logging.getLogger("pipelines.model")


class ManifestMismatch(RuntimeError):
    """The features given to a model are not the ones it was trained on."""


class TrainingDataError(RuntimeError):
    """The training data cannot make a sound model (missing partitions, labels not landed, too few positives)."""


# --------------------------------------------------------------------------- the split
@dataclass(frozen=True)
class Windows:
    train: tuple[dt.date, dt.date]
    valid: tuple[dt.date, dt.date]
    test: tuple[dt.date, dt.date]

    def as_dict(self) -> dict[str, list[str]]:
        return {k: [a.isoformat(), b.isoformat()] for k, (a, b) in
                (("train", self.train), ("valid", self.valid), ("test", self.test))}


def window_days(window: list[str]) -> list[dt.date]:
    """Every date of a window as written in summary.json: ["YYYY-MM-DD", "YYYY-MM-DD"] (inclusive)."""
    return date_range(parse_date(window[0]), parse_date(window[1]))


def split_windows(start: dt.date, end: dt.date, p: TrainParams, label_delay_days: int) -> Windows:
    """[train][gap][valid][test], the test window ending on the last day whose labels have all
    landed by `end` (end - label delay). The gap keeps label-delayed features and late labels of the
    train window out of validation; it must be at least the label delay."""
    if p.gap_days < label_delay_days:
        raise TrainingDataError(f"train.gap_days={p.gap_days} is shorter than the label delay "
                                f"({label_delay_days} days): validation would leak; raise train.gap_days")
    day = dt.timedelta(days=1)
    test_end = end - label_delay_days * day
    test_start = test_end - (p.test_days - 1) * day
    valid_end = test_start - day
    valid_start = valid_end - (p.valid_days - 1) * day
    train_end = valid_start - (p.gap_days + 1) * day
    train_start = start if p.train_days is None else max(start, train_end - (p.train_days - 1) * day)
    if train_end < train_start:
        raise TrainingDataError(f"range {start}..{end} is too short for train.test_days={p.test_days}, "
                                f"valid_days={p.valid_days}, gap_days={p.gap_days} and a label delay of "
                                f"{label_delay_days} days: no train window left")
    return Windows((train_start, train_end), (valid_start, valid_end), (test_start, test_end))


# --------------------------------------------------------------------------- data
def _not_blocked(store: StorageParams, day: dt.date) -> None:
    """A labels day that validation blocked (expectations/labels.json: a truncated feed, labels of
    unknown events...) is never trained or evaluated on: the run fails naming it. A day never
    validated (`dvc repro` validates the transactions) is read as ingested."""
    if "validation_results" not in store.layout:
        return
    fields = {"dataset": "labels", "date": day.isoformat()}
    try:
        res = storage.read_json(store.uri("validation_results", **fields))
    except storage.MissingObject:
        return
    if res.get("status") == "blocked" and not storage.exists(store.uri("validated", **fields)):
        raise TrainingDataError(f"labels {day}: blocked by validation ({'; '.join(res.get('reasons') or [])[:300]}; "
                                f"report {store.uri('validation_report', **fields)}); the training run fails: repair "
                                f"and validate the labels of {day} again, or train on a range without them")


def load_labelled(store: StorageParams, days: list[dt.date], label_delay_days: int,
                  labels_first_date: dt.date, review_verdicts: dict[str, int] | None = None) -> tuple[pl.DataFrame, dict]:
    """Feature partitions of `days` joined with their labels (which land `label_delay_days` later).

    Out: the feature partition columns plus `label` (Int8) and `date` (Date), sorted as stored.
    Rows whose label never arrived are dropped and counted (`rows_unlabeled`); the accounting
    rows_in = rows_labelled + rows_unlabeled is returned with the partitions' manifests and the
    sha256 of every partition read (lineage).

    With `review_verdicts` (human decision -> label), the reviewers' verdicts of each day (the
    overrides table) are labels too: the feed label wins where both exist; a verdict alone labels
    its row. Provenance columns: label_source (feed | review), review_label, reviewer,
    review_agrees; the counts are in stats["labels"] and the overrides' sha256 in stats["reviews"]."""
    frames, manifests, digests = [], [], {}
    reader = lineage.Reader()
    for day in days:
        uri = store.uri("features", date=day.isoformat())
        try:
            data = reader.read_bytes(uri)
            manifests.append(reader.read_json(store.uri("features_manifest", date=day.isoformat()), primary=uri))
        except storage.MissingObject:       # not committed (lineage.NotCommitted), or its object is gone
            raise TrainingDataError(f"{uri}: feature partition missing (blocked by validation, withdrawn or not "
                                    f"built; under `dvc repro` after the lake was wiped: `dvc repro --force`); the "
                                    f"training run fails, nothing is published") from None
        except lineage.StaleInput as exc:
            raise TrainingDataError(f"{exc}; the training run fails, nothing is published") from None
        digests[day.isoformat()] = reader.consumed[uri]        # what the read was checked against
        frames.append(storage.read_parquet_bytes(data, uri).with_columns(pl.lit(day).alias("date")))
    hashes = {m["spec_hash"] for m in manifests}
    if len(hashes) > 1:
        raise TrainingDataError(f"feature partitions {days[0]}..{days[-1]} mix feature specs {sorted(hashes)}: "
                                f"rebuild them with one spec (dvc repro features)")
    label_frames = []
    for day in date_range(days[0] + dt.timedelta(days=label_delay_days), days[-1] + dt.timedelta(days=label_delay_days)):
        if day < labels_first_date:
            continue
        uri = store.uri("canonical", dataset="labels", date=day.isoformat())
        _not_blocked(store, day)
        try:
            label_frames.append(reader.read_parquet(uri).select("event_id", "label"))
        except lineage.StaleInput as exc:
            raise TrainingDataError(f"{exc}; the training run fails") from None
        except storage.MissingObject:
            raise TrainingDataError(f"{uri}: label partition missing (labels of {day - dt.timedelta(days=label_delay_days)} "
                                    f"have not landed or were not ingested); the training run fails") from None
    feats = pl.concat(frames, how="vertical")
    labels = pl.concat(label_frames) if label_frames else pl.DataFrame(schema={"event_id": pl.String, "label": pl.Int8})
    dup_labels = labels.height - labels["event_id"].n_unique()
    if dup_labels:   # a label re-sent in a later partition: the first one to land is the one used
        log.warning("%d label(s) for %s..%s arrived more than once; the earliest partition's label is used",
                    dup_labels, days[0], days[-1])
        labels = labels.unique("event_id", keep="first", maintain_order=True)
    out = feats.join(labels, on="event_id", how="left", maintain_order="left")
    extra: dict = {}
    if review_verdicts is not None:
        out, extra = _with_reviews(out, store, days, review_verdicts)
    unlabeled = out["label"].null_count()
    out = out.filter(pl.col("label").is_not_null()).with_columns(pl.col("label").cast(pl.Int8))
    stats = {"rows_in": feats.height, "rows_labelled": out.height, "rows_unlabeled": unlabeled, "labels_repeated": dup_labels,
             "positives": int(out["label"].sum() or 0), "partitions": digests, "spec_hash": hashes.pop() if hashes else None,
             "manifest": manifests[0] if manifests else None, **extra}
    assert stats["rows_in"] == stats["rows_labelled"] + stats["rows_unlabeled"]
    if unlabeled:
        log.warning("%d of %d rows in %s..%s have no label yet: left out of training/evaluation",
                    unlabeled, feats.height, days[0], days[-1])
    return out, stats


def _with_reviews(frame: pl.DataFrame, store: StorageParams, days: list[dt.date], verdicts: dict[str, int]
                  ) -> tuple[pl.DataFrame, dict]:
    """Feed labels + the reviewers' verdicts of `days`, by the feedback stage's rule (see load_labelled)."""
    from pipelines.core.reviews import override_objects, overrides_frame, review_counts, review_labels, with_provenance

    parts, digests = [], {}
    for day in days:
        objects = override_objects(store, day)
        if not objects:
            continue
        h = hashlib.sha256()                # the day's objects, in the order recorded
        for _, data in objects:
            h.update(hashlib.sha256(data).digest())
        digests[day.isoformat()] = h.hexdigest()
        parts.append(overrides_frame(objects))
    reviews = review_labels(pl.concat(parts) if parts else pl.DataFrame(), verdicts)
    out = with_provenance(frame.rename({"label": "feed_label"})
                          .join(reviews.drop("reviewed_at"), on="event_id", how="left", maintain_order="left"))
    counts = {"feed": int((out["label_source"] == "feed").sum()), **review_counts(out)}
    if counts["verdicts"]:
        log.info("labels: %d from the feed, %d from reviews only; %d verdict(s) on feed-labelled rows (%d disagree: "
                 "the feed wins)", counts["feed"], counts["review_only"], counts["with_feed_label"], counts["disagree"])
    return out.drop("feed_label"), {"labels": counts, "reviews": digests}


def in_window(frame: pl.DataFrame, window: tuple[dt.date, dt.date]) -> pl.DataFrame:
    return frame.filter(pl.col("date").is_between(window[0], window[1]))


# --------------------------------------------------------------------------- the model's input
def feature_manifest(partition_manifest: dict, exclude: tuple[str, ...] = ()) -> dict:
    """The model's feature manifest, from a feature partition's manifest."""
    names = [c for c in partition_manifest["feature_columns"] if c not in set(exclude)]
    return {"feature_names": names, "dtypes": {c: partition_manifest["dtypes"][c] for c in names},
            "spec_hash": partition_manifest["spec_hash"], "code_version": partition_manifest.get("code_version"),
            "key_columns": partition_manifest.get("key_columns", [])}


def check_features(frame: pl.DataFrame, manifest: dict, where: str = "features") -> None:
    """Raise ManifestMismatch unless `frame` holds every feature of `manifest` with its dtype."""
    names = manifest["feature_names"]
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ManifestMismatch(f"{where}: missing feature column(s) {missing} the model was trained on "
                               f"(spec {manifest['spec_hash']}); nothing scored")
    bad = {c: (str(frame.schema[c]), manifest["dtypes"][c]) for c in names if str(frame.schema[c]) != manifest["dtypes"][c]}
    if bad:
        raise ManifestMismatch(f"{where}: dtype mismatch (got, trained on): {bad}; nothing scored")


def feature_matrix(frame: pl.DataFrame, manifest: dict, where: str = "features", columns: bool = False) -> np.ndarray:
    """The model's input: the manifest's columns, in its order, as float32 (nulls -> NaN, which
    XGBoost treats as missing). The one path for training, evaluation and scoring.

    `columns`: the same values laid out a column after another (Fortran order), for `predict` only:
    each column is copied as it is, where a row-major matrix interleaves them (a 262,144-row batch of
    34 features: 31 -> 12 ms of CPU). inplace_predict reads the matrix through its strides: the same
    floats in, the same predictions out, at the same speed. A DMatrix (training) copies a column-major
    matrix to rows first: training keeps the rows."""
    check_features(frame, manifest, where)
    return frame.select(pl.col(c).cast(pl.Float32) for c in manifest["feature_names"]).to_numpy(
        order="fortran" if columns else "c").astype(np.float32, copy=False)


def predict(booster, x: np.ndarray, chunk_rows: int = 500_000) -> np.ndarray:
    """Fraud probability per row (float32), in chunks with inplace_predict (no DMatrix copy)."""
    if x.shape[0] <= chunk_rows:
        return np.asarray(booster.inplace_predict(x), dtype=np.float32)
    return np.concatenate([np.asarray(booster.inplace_predict(x[i:i + chunk_rows]), dtype=np.float32)
                           for i in range(0, x.shape[0], chunk_rows)])


def xgboost_module(sklearn: bool = True):
    """xgboost; with sklearn=False imported without scikit-learn when nothing in this process has
    imported either yet: xgboost imports scikit-learn for its estimator wrappers, 1.2-1.5 s of a
    scoring process that only loads a Booster and predicts (a task's fixed start-up cost)."""
    import sys

    if sklearn or "xgboost" in sys.modules or "sklearn" in sys.modules:
        import xgboost
        return xgboost
    sys.modules["sklearn"] = None           # type: ignore[assignment]  # `import sklearn` raises ImportError
    try:
        import xgboost
    finally:
        del sys.modules["sklearn"]
    return xgboost


def load_booster(raw: bytes, sklearn: bool = True):
    """A Booster from its saved bytes (sklearn=False: see xgboost_module)."""
    xgb = xgboost_module(sklearn)
    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    return booster


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- device
def gpu_visible() -> bool:
    """A CUDA build of XGBoost and at least one GPU that nvidia-smi can see."""
    import xgboost as xgb

    if not xgb.build_info().get("USE_CUDA"):
        return False
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def choose_device(requested: str, gpu: bool | None = None) -> str:
    """auto -> cuda when a GPU is visible, else cpu; cuda without a GPU -> cpu, with a warning
    (XGBoost itself would only warn and silently run on the CPU)."""
    gpu = gpu_visible() if gpu is None else gpu
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" and not gpu:
        log.warning("train.device=cuda but no GPU is visible: training on the CPU; the run records device_used=cpu")
        return "cpu"
    return "cuda" if gpu else "cpu"


def device_fell_back(caught: list[warnings.WarningMessage]) -> bool:
    """True when XGBoost warned that it could not use the GPU it was asked for ("No visible GPU is
    found, setting device to CPU", "Device is changed from GPU to CPU ..."). Its "Falling back to
    prediction using DMatrix due to mismatched devices" is about where the input data lies, not
    the device used: seen on an H200 with a GPU-trained booster and numpy input, it must not count."""
    text = " ".join(str(w.message) for w in caught).lower()
    return any(s in text for s in ("no visible gpu", "cuda is not available", "device is changed",
                                   "setting device to cpu"))


# --------------------------------------------------------------------------- a training's artifacts
class StageOutput:
    """Publishes a stage's files to <training uri>/<stage>/ and, when the DVC pipeline gives an
    output folder, the same bytes to <out>/ (what DVC versions is what was published). A context
    manager: the DVC output is staged and moved into place on a clean exit only."""

    def __init__(self, base: str, stage: str, out: str | None) -> None:
        self.base = f"{base.rstrip('/')}/{stage}"
        self.pub = storage.Publisher(self.base, out)

    def __enter__(self) -> "StageOutput":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.pub.__exit__(kind, exc, tb)

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        uri = f"{self.base}/{name}"
        self.pub.put(uri, data, content_type)
        return uri

    def put_json(self, name: str, obj) -> str:
        return self.put(name, storage.json_bytes(obj), "application/json")


def importance(booster, names: list[str]) -> dict[str, float]:
    """Total gain per feature, by feature name (XGBoost says f0, f1, ... when the matrix had no names)."""
    raw = booster.get_score(importance_type="total_gain")
    return {names[int(k[1:])] if k.startswith("f") and k[1:].isdigit() else k: float(v) for k, v in sorted(raw.items())}
