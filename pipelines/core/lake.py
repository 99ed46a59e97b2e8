"""The lake's names, declared once: a training's artifacts, the tables stages share, and readers
of partitions by date (found through the configured layout, never by splitting strings).

A training's artifacts live under <storage.layout.training>/<stage>/<name> (run = the range and the
key of its settings: training_uri) and, logged with the model, under the same <stage>/<name> in its
MLflow run.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re

import polars as pl

from pipelines.core import lineage, storage
from pipelines.core.config import StorageParams

# --------------------------------------------------------------------------- a training's artifacts
TRAIN, EVALUATE, REGISTER = "train", "evaluate", "register"           # the stages that write them
MODEL = "model.ubj"
SUMMARY = "summary.json"                  # train: windows, search, threshold, fingerprint (written last)
MANIFEST = "feature_manifest.json"        # train: the model's input columns, dtypes, spec hash
LABELS = "labels.parquet"                 # train: every label learned from, with its provenance
EVALUATION = "evaluation.json"            # evaluate: test-window metrics (the gate reads them)
METRICS = "metrics.json"                  # evaluate: the flat metrics (`dvc metrics`)
PROFILE = "reference_profile.json"        # evaluate: the reference for drift monitoring
REPORT = "report.html"
REGISTRATION = "registration.json"        # register: the version made (or found)


def artifact(stage: str, name: str) -> str:
    """`<stage>/<name>`: the artifact's path under a training folder and in the MLflow run."""
    return f"{stage}/{name}"


KEY_SECTIONS = ("train", "evaluate")      # what makes one training experiment differ from another on a range


def training_key(params) -> str:
    """The experiment's key: sha256 (first 12 hex digits) of the params sections that shape a
    training's artifacts (`train`: windows, search, features excluded; `evaluate`: test window,
    slices, gate inputs). Two trainings of one range with other settings get other folders; the same
    settings (a re-run, a DVC run-cache restore) land in the same folder with the same bytes."""
    body = json.dumps({s: params.section(s) for s in KEY_SECTIONS}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:12]


def training_uri(params, start: dt.date, end: dt.date) -> str:
    """Where one training keeps its artifacts (<this>/<stage>/<name>): storage.layout.training with
    run = <start>_<end>/<training_key>, so experiments on one range never overwrite each other."""
    return params.storage.uri("training", run=f"{start.isoformat()}_{end.isoformat()}/{training_key(params)}")


# --------------------------------------------------------------------------- shared tables
METRIC_SCHEMA = {"date": pl.Date, "group": pl.String, "metric": pl.String, "feature": pl.String, "value": pl.Float64,
                 "warn": pl.Float64, "alert": pl.Float64, "status": pl.String}       # monitoring/metrics, perf
REALIZED_SCHEMA = {"date": pl.Date, "label_date": pl.Date, "model_name": pl.String, "model_version": pl.String,
                   "role": pl.String, "metric": pl.String, "slice": pl.String, "value": pl.Float64}


# --------------------------------------------------------------------------- partitions by date
def _layout(store: StorageParams, kind: str) -> tuple[str, re.Pattern]:
    """The folder that holds every date of `kind`, and a pattern that finds the date in a URI."""
    layout = store.layout[kind]
    head, _, tail = layout.partition("{date}")
    if not _:
        raise ValueError(f"storage.layout.{kind} has no {{date}}: it is not a partition by date")
    folder = f"{store.lake.rstrip('/')}/{head.rsplit('/', 1)[0]}" if "/" in head else store.lake.rstrip("/")
    pattern = re.compile(re.escape(f"{store.lake.rstrip('/')}/{head}") + r"(\d{4}-\d{2}-\d{2})" + re.escape(tail) + "$")
    return folder, pattern


def dates_present(store: StorageParams, kind: str) -> list[dt.date]:
    """The dates for which the `kind` object exists (a data object: listing skips `_` and `.` names,
    so ask for a partition's primary object, not its `_summary.json`)."""
    folder, pattern = _layout(store, kind)
    found = {m.group(1) for u in storage.list_uris(folder) if (m := pattern.match(u))}
    return sorted(dt.date.fromisoformat(d) for d in found)


def read_metrics(store: StorageParams, kind: str, days: list[dt.date], schema: dict | None = None) -> pl.DataFrame:
    """The `kind` partitions of `days` that exist, stacked (empty with `schema`, default METRIC_SCHEMA)."""
    frames = []
    for d in days:
        try:
            frames.append(storage.read_parquet(store.uri(kind, date=d.isoformat())))
        except storage.MissingObject:
            pass
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(schema=schema or METRIC_SCHEMA)


def read_realized(store: StorageParams, days: list[dt.date]) -> pl.DataFrame:
    """Realized metrics (labels fed back) of `days`, where they have landed."""
    return read_metrics(store, "realized", days, REALIZED_SCHEMA)


def read_optional(uri: str, reader: lineage.Reader | None = None) -> pl.DataFrame | None:
    """A committed partition, verified; None when there is none. A stale one raises lineage.StaleInput."""
    try:
        return (reader or lineage.Reader()).read_parquet(uri)
    except storage.MissingObject:
        return None
