"""Classification metrics, shared by `evaluate` (the test window), `register` (the champion on the
same rows), `feedback` (realized metrics on labels fed back) and `lifecycle` (rollback, promotion).

Pure functions of labels and scores; one slice loop (`slice_groups`) for every per-slice table.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from pipelines.core import modelio as M
from pipelines.core.config import EvaluateParams


def _curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positives at each distinct score, from the highest down: scikit-learn's
    confusion_matrix_at_thresholds (binary, unit weights), the same operations."""
    order = np.argsort(score, kind="stable")[::-1]
    s, t = score[order], y[order].astype(np.float64)
    idx = np.concatenate([np.nonzero(np.diff(s))[0], [t.size - 1]])
    tps = np.cumsum(t, dtype=np.float64)[idx]
    return 1 + idx.astype(np.float64) - tps, tps


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """= sklearn.metrics.average_precision_score (binary), bit for bit, without importing
    scikit-learn (2.5 s of a task's start-up); `y` holds at least one positive."""
    fps, tps = _curve(np.asarray(y), np.asarray(score, dtype=np.float64))
    ps = tps + fps
    precision = np.concatenate([np.flip(np.where(ps != 0, np.divide(tps, ps, where=ps != 0, out=np.zeros_like(tps)),
                                                 0.0)), [1.0]])
    recall = np.concatenate([np.flip(tps / tps[-1]), [0.0]])
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """= sklearn.metrics.roc_auc_score (binary), bit for bit; `y` holds both classes."""
    fps, tps = _curve(np.asarray(y), np.asarray(score, dtype=np.float64))
    if fps.shape[0] > 2:          # drop the points collinear with their neighbours, as roc_curve does
        keep = np.nonzero(np.concatenate([[True], np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), [True]]))[0]
        fps, tps = fps[keep], tps[keep]
    fpr = np.concatenate([[0.0], fps]) / fps[-1]
    tpr = np.concatenate([[0.0], tps]) / tps[-1]
    return float(np.trapezoid(tpr, fpr))


def classification_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """ROC AUC, AP, Brier, per-class precision/recall/F1 and the confusion matrix at `threshold`
    (predicted fraud when score >= threshold). AUC/AP are null when only one class is present."""
    y, score = np.asarray(y).astype(np.int8), np.asarray(score)
    pred = (score >= threshold).astype(np.int8)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())

    def prf(tp_: int, fp_: int, fn_: int) -> dict:
        p = tp_ / (tp_ + fp_) if tp_ + fp_ else 0.0
        r = tp_ / (tp_ + fn_) if tp_ + fn_ else 0.0
        return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}

    both = 0 < y.sum() < len(y)
    fraud, legit = prf(tp, fp, fn), prf(tn, fn, fp)
    return {
        "rows": int(len(y)), "positives": int(y.sum()), "threshold": float(threshold),
        "roc_auc": roc_auc(y, score) if both else None,
        "average_precision": average_precision(y, score) if y.sum() else None,
        "brier": float(np.mean((y - score.astype(np.float64)) ** 2)) if len(y) else None,   # in float64
        "precision": fraud["precision"], "recall": fraud["recall"], "f1": fraud["f1"],
        "per_class": {"fraud": fraud, "legit": legit},
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "alert_rate": float(pred.mean()) if len(y) else 0.0,
    }


def precision_at_k(frame: pl.DataFrame, ks: tuple[int, ...], entity: str) -> dict:
    """Per day: the share of frauds among the k highest-scored events, and among the k entities
    with the highest score that day (an entity counts as fraud when any of its events that day is).
    `frame` needs date, event_id, score, label and the entity column. Ties break by id."""
    out: dict = {"events": {}, "entities": {}}
    ents = (frame.group_by("date", entity).agg(pl.col("score").max(), pl.col("label").max())
            .rename({entity: "event_id"}).with_columns(pl.col("event_id").cast(pl.String)))
    for kind, f in (("events", frame.select("date", "event_id", "score", "label")), ("entities", ents)):
        ranked = f.sort(["date", "score", "event_id"], descending=[False, True, False])
        for k in ks:
            per_day = ranked.group_by("date", maintain_order=True).agg(
                pl.col("label").head(k).cast(pl.Float64).mean().alias("p"), pl.len().alias("n")).sort("date")
            out[kind][f"p@{k}"] = {"mean": float(per_day["p"].mean()),
                                   "per_day": {str(d): round(float(v), 6) for d, v in zip(per_day["date"], per_day["p"])}}
    return out


def slice_groups(frame: pl.DataFrame, slices: tuple[str, ...], min_positives: int = 0, where: str | None = None):
    """("col=value", rows) per value of each slice column, in a stable order; slices with fewer
    than `min_positives` frauds are left out. A missing column is an error when `where` names the
    setting that asked for it, else it is skipped."""
    for col in slices:
        if col not in frame.columns:
            if where:
                raise M.ManifestMismatch(f"{where}: column {col!r} is not in the feature partitions")
            continue
        for key, part in sorted(frame.group_by(col), key=lambda kv: (kv[0][0] is None, str(kv[0][0]))):
            if int(part["label"].sum() or 0) >= min_positives:
                yield f"{col}={key[0]}", part


def slice_metrics(frame: pl.DataFrame, slices: tuple[str, ...], threshold: float) -> dict:
    """Per value of each slice column: rows, positives, AP, recall and precision at the threshold."""
    out = {}
    for key, part in slice_groups(frame, slices, where="evaluate.slices"):
        m = classification_metrics(part["label"].to_numpy(), part["score"].to_numpy(), threshold)
        out[key] = {k: m[k] for k in ("rows", "positives", "average_precision", "recall", "precision")}
    return out


def evaluate_scores(frame: pl.DataFrame, threshold: float, p: EvaluateParams) -> dict:
    """Everything about one model's scores on one window (frame: date, event_id, entity, slice
    columns, label, score)."""
    y, s = frame["label"].to_numpy(), frame["score"].to_numpy()
    return {**classification_metrics(y, s, threshold),
            "precision_at_k": precision_at_k(frame, p.precision_at_k, p.entity),
            "slices": slice_metrics(frame, p.slices, threshold)}


def calibration_table(y: np.ndarray, score: np.ndarray, bins: int) -> list[dict]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(score, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        if m.any():
            rows.append({"bin": b, "mean_predicted": float(score[m].mean()), "fraction_positive": float(y[m].mean()),
                         "count": int(m.sum())})
    return rows


def score_frame(booster, frame: pl.DataFrame, manifest: dict, where: str) -> pl.DataFrame:
    return frame.with_columns(pl.Series("score", M.predict(booster, M.feature_matrix(frame, manifest, where, columns=True))))


def rates(cm: dict) -> dict:
    """Error rates from a confusion matrix {tn, fp, fn, tp}."""
    tn, fp, fn, tp = (int(cm[k]) for k in ("tn", "fp", "fn", "tp"))
    n = tn + fp + fn + tp
    return {"error_rate": (fp + fn) / n if n else None, "false_positive_rate": fp / (fp + tn) if fp + tn else None,
            "miss_rate": fn / (fn + tp) if fn + tp else None}


def model_metrics(y: np.ndarray, score: np.ndarray, threshold: float, ks: tuple[int, ...] = ()) -> dict:
    """Realized metrics of one model on labelled rows (flat: name -> number or None)."""
    m = classification_metrics(y, score, threshold)
    out = {k: m[k] for k in ("rows", "positives", "average_precision", "roc_auc", "precision", "recall", "f1",
                             "alert_rate", "threshold")}
    out.update({"legit_precision": m["per_class"]["legit"]["precision"], "legit_recall": m["per_class"]["legit"]["recall"]})
    out.update(rates(m["confusion_matrix"]))
    out.update({f"confusion.{k}": v for k, v in m["confusion_matrix"].items()})
    order = np.argsort(-np.asarray(score, float), kind="stable")
    for k in ks:
        top = np.asarray(y)[order[:k]]
        out[f"precision_at_{k}"] = float(top.mean()) if len(top) else None
    return out


def slice_table(frame: pl.DataFrame, slices: tuple[str, ...], cols: dict[str, tuple[str, str]], min_pos: int = 0) -> dict:
    """{slice=value: {model: {rows, positives, average_precision, recall}}} on the same rows.
    cols: model -> (score column, threshold column)."""
    out: dict = {}
    for key, part in slice_groups(frame, slices, min_pos):
        y = part["label"].to_numpy()
        out[key] = {m: {k: v for k, v in classification_metrics(y, part[s].to_numpy(), float(part[t][0])).items()
                        if k in ("rows", "positives", "average_precision", "recall")}
                    for m, (s, t) in cols.items()}
    return out
