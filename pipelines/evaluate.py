"""Stage `evaluate`: the trained model on the test window, against a rule baseline; plots; the
reference profile that monitoring compares against.

Data contract: in = <training>/train/ (model, feature manifest, summary) and the feature partitions
of the valid and test windows (profile) and the test window (metrics), joined with their labels. Out, under
<training>/evaluate/ (and --snapshot for DVC):
  * metrics.json           headline metrics for `dvc metrics show/diff` (test window, baseline, lift)
  * evaluation.json        everything: per class, confusion matrix, precision@k per day (events and
                           entities), slices, calibration table
  * plots/{pr,roc,calibration}.json   DVC plot data; plots/*.png the same as pictures
  * reference_profile.json  per-feature quantile bins / category frequencies and the score
                           distribution of the most recent labelled days (valid + test windows,
                           whose features have their full look-back): monitoring's reference
  * report.html            self-contained (images embedded, no CDN)

The champion comparison happens in `register` (it needs the registry); it calls `score_frame`
and `evaluate_scores` from here, so both models are judged by the same code on the same rows.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging

import numpy as np
import polars as pl

from pipelines import model as M
from pipelines import storage
from pipelines.cli import resolve, stage_parser
from pipelines.config import EvaluateParams

log = logging.getLogger("pipelines.evaluate")


# --------------------------------------------------------------------------- metrics (pure)
def classification_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """ROC AUC, AP, Brier, per-class precision/recall/F1 and the confusion matrix at `threshold`
    (predicted fraud when score >= threshold). AUC/AP are null when only one class is present."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(y).astype(np.int8)
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
        "roc_auc": float(roc_auc_score(y, score)) if both else None,
        "average_precision": float(average_precision_score(y, score)) if y.sum() else None,
        "brier": float(brier_score_loss(y, score)) if len(y) else None,
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


def slice_metrics(frame: pl.DataFrame, slices: tuple[str, ...], threshold: float) -> dict:
    """Per value of each slice column: rows, positives, AP, recall and precision at the threshold."""
    out = {}
    for col in slices:
        if col not in frame.columns:
            raise M.ManifestMismatch(f"evaluate.slices: column {col!r} is not in the feature partitions")
        for key, part in sorted(frame.group_by(col), key=lambda kv: (kv[0][0] is None, str(kv[0][0]))):
            m = classification_metrics(part["label"].to_numpy(), part["score"].to_numpy(), threshold)
            out[f"{col}={key[0]}"] = {k: m[k] for k in ("rows", "positives", "average_precision", "recall", "precision")}
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
    return frame.with_columns(pl.Series("score", M.predict(booster, M.feature_matrix(frame, manifest, where))))


# --------------------------------------------------------------------------- reference profile (pure)
def reference_profile(frame: pl.DataFrame, manifest: dict, p: EvaluateParams) -> dict:
    """Per feature: quantile bin edges and the share of rows per bin (plus the null share); integer
    codes and flags with few values get category frequencies instead. Plus the score distribution.
    Bins are [edge_i, edge_i+1) with open ends, as monitoring will apply them."""
    feats: dict = {}
    n = frame.height
    for c in manifest["feature_names"]:
        col = frame[c]
        nulls = col.null_count() / n if n else 0.0
        vals = col.drop_nulls()
        if col.dtype.is_integer() and vals.n_unique() <= 32:
            counts = vals.value_counts(sort=False).sort(c)
            feats[c] = {"kind": "categorical", "null_share": nulls,
                        "frequencies": {str(v): cnt / n for v, cnt in zip(counts[c], counts["count"])}}
            continue
        v = vals.cast(pl.Float64).to_numpy()
        v = v[np.isfinite(v)]
        edges = np.unique(np.quantile(v, np.linspace(0, 1, p.profile_bins + 1)[1:-1])) if len(v) else np.array([])
        idx = np.searchsorted(edges, v, side="right")
        shares = np.bincount(idx, minlength=len(edges) + 1) / n if n else np.zeros(len(edges) + 1)
        feats[c] = {"kind": "numeric", "null_share": nulls, "edges": [float(e) for e in edges],
                    "shares": [float(s) for s in shares], "mean": float(v.mean()) if len(v) else None,
                    "std": float(v.std()) if len(v) else None, "min": float(v.min()) if len(v) else None,
                    "max": float(v.max()) if len(v) else None,
                    "sample": [float(x) for x in np.quantile(v, np.linspace(0, 1, 101))] if len(v) else []}
    s = frame["score"].to_numpy()
    edges = np.linspace(0, 1, p.score_bins + 1)
    hist = np.histogram(s, bins=edges)[0] / max(len(s), 1)
    return {"rows": n, "features": feats,
            "score": {"edges": [float(e) for e in edges], "shares": [float(h) for h in hist],
                      "quantiles": [float(x) for x in np.quantile(s, np.linspace(0, 1, 101))] if len(s) else []}}


# --------------------------------------------------------------------------- plots
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plots(test: pl.DataFrame, baseline_score: np.ndarray, importance: dict[str, float], cal: list[dict]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    y, s = test["label"].to_numpy(), test["score"].to_numpy()
    out = {}
    fig, ax = plt.subplots(figsize=(5, 4))
    pr, rc, _ = precision_recall_curve(y, s)
    ax.plot(rc, pr, label="model", drawstyle="steps-post")
    hit = baseline_score >= 0.5          # the rule is a yes/no decision: one operating point, not a curve
    ax.plot([(hit & (y == 1)).sum() / max(y.sum(), 1)], [(hit & (y == 1)).sum() / max(hit.sum(), 1)], "o",
            label="rule baseline")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test window)")
    ax.legend()
    out["pr.png"] = _png(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, sc in (("model", s), ("rule baseline", baseline_score)):
        fpr, tpr, _ = roc_curve(y, sc)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test window)")
    ax.legend()
    out["roc.png"] = _png(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([c["mean_predicted"] for c in cal], [c["fraction_positive"] for c in cal], "o-", label="model")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    ax.set(xlabel="mean predicted", ylabel="fraction fraud", title="Calibration (test window)")
    ax.legend()
    out["calibration.png"] = _png(fig)
    top = sorted(importance.items(), key=lambda kv: -kv[1])[:20][::-1]
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.barh([k for k, _ in top], [v for _, v in top])
    ax.set(xlabel="total gain", title="Feature importance")
    fig.tight_layout()
    out["importance.png"] = _png(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(s[y == 0], bins=bins, alpha=0.6, density=True, label="legit", log=True)
    ax.hist(s[y == 1], bins=bins, alpha=0.6, density=True, label="fraud", log=True)
    ax.set(xlabel="score", ylabel="density (log)", title="Score by class (test window)")
    ax.legend()
    out["score_hist.png"] = _png(fig)
    return out


def _curve_points(y: np.ndarray, s: np.ndarray, limit: int = 200) -> tuple[list[dict], list[dict]]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    pr, rc, _ = precision_recall_curve(y, s)
    fpr, tpr, _ = roc_curve(y, s)
    pick = lambda n: np.unique(np.linspace(0, n - 1, min(n, limit)).astype(int))  # noqa: E731
    return ([{"recall": round(float(rc[i]), 6), "precision": round(float(pr[i]), 6)} for i in pick(len(pr))],
            [{"fpr": round(float(fpr[i]), 6), "tpr": round(float(tpr[i]), 6)} for i in pick(len(fpr))])


def report_html(title: str, metrics: dict, evaluation: dict, pngs: dict[str, bytes]) -> str:
    """Self-contained HTML: tables and the PNGs inlined as data URIs; no script, no CDN."""
    def table(rows: list[tuple], head: tuple) -> str:
        th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tr>{th}</tr>{body}</table>"

    t, b = evaluation["test"], evaluation["baseline"]
    head = [(k, t.get(k), b.get(k)) for k in ("roc_auc", "average_precision", "brier", "precision", "recall", "f1",
                                              "alert_rate", "rows", "positives")]
    pak = [(f"{kind} {k}", v["mean"]) for kind in ("events", "entities") for k, v in t["precision_at_k"][kind].items()]
    slices = [(k, v["rows"], v["positives"], v["average_precision"], v["recall"], v["precision"])
              for k, v in t["slices"].items()]
    cm = t["confusion_matrix"]
    cm_table = table([("legit", cm["tn"], cm["fp"]), ("fraud", cm["fn"], cm["tp"])], ("actual / predicted", "legit", "fraud"))
    imgs = "".join(f'<figure><img alt="{html.escape(n)}" src="data:image/png;base64,{base64.b64encode(d).decode()}">'
                   f"<figcaption>{html.escape(n)}</figcaption></figure>" for n, d in sorted(pngs.items()))
    style = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
             "figure{display:inline-block;margin:0 1em 1em 0}img{max-width:480px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>Test window {html.escape(' .. '.join(evaluation['windows']['test']))}; operating threshold "
            f"{evaluation['threshold']:.4f}; device {html.escape(str(evaluation.get('device_used')))}</p>"
            f"<h2>Model vs rule baseline</h2>{table(head, ('metric', 'model', 'baseline'))}"
            f"<h2>Confusion matrix at the threshold</h2>"
            f"{cm_table}"
            f"<h2>Precision@k per day (mean over test days)</h2>{table(pak, ('k', 'precision'))}"
            f"<h2>Slices</h2>{table(slices, ('slice', 'rows', 'frauds', 'AP', 'recall', 'precision'))}"
            f"<h2>Plots</h2>{imgs}<h2>metrics.json</h2><pre>{html.escape(json.dumps(metrics, indent=2))}</pre>"
            f"</body></html>")


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("—" if v is None else str(v))


# --------------------------------------------------------------------------- entry point
def main(argv: list[str]) -> int:
    args = stage_parser("evaluate", __doc__).parse_args(argv)
    params, days = resolve(args)
    p, store, labels = params.evaluate, params.storage, params.dataset("labels")
    start, end = min(days), max(days)
    base = M.training_uri(store, start, end)
    summary = storage.read_json(f"{base}/train/summary.json")
    manifest = storage.read_json(f"{base}/train/feature_manifest.json")
    raw = storage.read_bytes(f"{base}/train/model.ubj")
    if M.sha256(raw) != summary["model_sha256"]:
        raise M.TrainingDataError(f"{base}/train/model.ubj does not match its summary.json sha256: re-run train")
    booster = M.load_booster(raw)
    win = summary["windows"]
    test, _ = M.load_labelled(store, M.window_days(win["test"]), labels.delay_days, labels.first_date)
    test = score_frame(booster, test, manifest, "test window")
    thr = float(summary["operating_threshold"])
    model_eval = evaluate_scores(test, thr, p)
    rule = p.baseline_rule
    base_test = test.with_columns((pl.col(rule.feature) > rule.threshold).cast(pl.Float32).fill_null(0.0).alias("score"))
    baseline_eval = evaluate_scores(base_test, 0.5, p)
    cal = calibration_table(test["label"].to_numpy(), test["score"].to_numpy(), p.calibration_bins)
    importance = {k: float(v) for k, v in sorted(booster.get_score(importance_type="total_gain").items())}
    names = manifest["feature_names"]
    importance = {names[int(k[1:])] if k.startswith("f") and k[1:].isdigit() else k: v for k, v in importance.items()}
    evaluation = {"windows": win, "threshold": thr, "device_used": summary["device_used"], "test": model_eval,
                  "baseline": baseline_eval, "baseline_rule": {"feature": rule.feature, "threshold": rule.threshold},
                  "calibration": cal, "feature_importance": importance, "model_sha256": summary["model_sha256"]}
    headline = ("roc_auc", "average_precision", "brier", "precision", "recall", "f1", "alert_rate")
    metrics = {
        "test": {k: model_eval[k] for k in headline} | {
            f"precision_at_{k}": model_eval["precision_at_k"]["events"][f"p@{k}"]["mean"] for k in p.precision_at_k} | {
            f"entity_precision_at_{k}": model_eval["precision_at_k"]["entities"][f"p@{k}"]["mean"] for k in p.precision_at_k},
        "baseline": {k: baseline_eval[k] for k in ("average_precision", "precision", "recall", "f1")},
        "lift_over_baseline": {"average_precision": (model_eval["average_precision"] or 0) - (baseline_eval["average_precision"] or 0)},
        "valid": summary["valid_score"], "threshold": thr, "rows": {"test": test.height, "test_positives": model_eval["positives"]},
    }
    # The monitoring reference: the most recent labelled days (valid + test windows), whose rolling
    # features have their full look-back (early train days do not: their 30-day windows are young).
    valid, _ = M.load_labelled(store, M.window_days(win["valid"]), labels.delay_days, labels.first_date)
    recent = pl.concat([score_frame(booster, valid, manifest, "valid window").select(test.columns), test])
    ref_days = M.window_days([win["valid"][0], win["test"][1]])
    profile = reference_profile(recent, manifest, p) | {
        "window": [win["valid"][0], win["test"][1]], "days": len(ref_days), "spec_hash": manifest["spec_hash"],
        "model_sha256": summary["model_sha256"]}
    pr_points, roc_points = _curve_points(test["label"].to_numpy(), test["score"].to_numpy())
    pngs = plots(test, base_test["score"].to_numpy(), importance, cal)
    with M.StageOutput(base, "evaluate", args.snapshot) as out:
        for name, data in sorted(pngs.items()):
            out.put(f"images/{name}", data, "image/png")
        out.put_json("plots/pr.json", pr_points)
        out.put_json("plots/roc.json", roc_points)
        out.put_json("plots/calibration.json", cal)
        out.put_json("reference_profile.json", profile)
        out.put_json("evaluation.json", evaluation)
        out.put("report.html", report_html(f"Evaluation of model {summary['model_sha256'][:12]}", metrics, evaluation,
                                           pngs).encode(), "text/html")
        out.put_json("metrics.json", metrics)
        log.info("evaluate %s..%s: AP %.4f (baseline %.4f), ROC AUC %.4f, recall %.3f @ %.4f -> %s", *win["test"],
                 model_eval["average_precision"] or 0, baseline_eval["average_precision"] or 0, model_eval["roc_auc"] or 0,
                 model_eval["recall"], thr, out.base)
        return 0
