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

import logging

import numpy as np
import polars as pl

from pipelines.core import lake, storage
from pipelines.core import modelio as M
from pipelines.core.cli import resolve, stage_parser
from pipelines.core.drift import reference_profile
from pipelines.core.report import evaluation_html, png
from pipelines.core.metrics import calibration_table, evaluate_scores, score_frame

log = logging.getLogger("pipelines.evaluate")


# --------------------------------------------------------------------------- metrics (pure)
# --------------------------------------------------------------------------- reference profile (pure)
# --------------------------------------------------------------------------- plots
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
    out["pr.png"] = png(fig, dpi=90)
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, sc in (("model", s), ("rule baseline", baseline_score)):
        fpr, tpr, _ = roc_curve(y, sc)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test window)")
    ax.legend()
    out["roc.png"] = png(fig, dpi=90)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([c["mean_predicted"] for c in cal], [c["fraction_positive"] for c in cal], "o-", label="model")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    ax.set(xlabel="mean predicted", ylabel="fraction fraud", title="Calibration (test window)")
    ax.legend()
    out["calibration.png"] = png(fig, dpi=90)
    top = sorted(importance.items(), key=lambda kv: -kv[1])[:20][::-1]
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.barh([k for k, _ in top], [v for _, v in top])
    ax.set(xlabel="total gain", title="Feature importance")
    fig.tight_layout()
    out["importance.png"] = png(fig, dpi=90)
    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(s[y == 0], bins=bins, alpha=0.6, density=True, label="legit", log=True)
    ax.hist(s[y == 1], bins=bins, alpha=0.6, density=True, label="fraud", log=True)
    ax.set(xlabel="score", ylabel="density (log)", title="Score by class (test window)")
    ax.legend()
    out["score_hist.png"] = png(fig, dpi=90)
    return out


def _curve_points(y: np.ndarray, s: np.ndarray, limit: int = 200) -> tuple[list[dict], list[dict]]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    pr, rc, _ = precision_recall_curve(y, s)
    fpr, tpr, _ = roc_curve(y, s)
    pick = lambda n: np.unique(np.linspace(0, n - 1, min(n, limit)).astype(int))  # noqa: E731
    return ([{"recall": round(float(rc[i]), 6), "precision": round(float(pr[i]), 6)} for i in pick(len(pr))],
            [{"fpr": round(float(fpr[i]), 6), "tpr": round(float(tpr[i]), 6)} for i in pick(len(fpr))])


# --------------------------------------------------------------------------- entry point
def main(argv: list[str]) -> int:
    args = stage_parser("evaluate", __doc__).parse_args(argv)
    params, days = resolve(args)
    p, store, labels = params.evaluate, params.storage, params.dataset("labels")
    start, end = min(days), max(days)
    base = lake.training_uri(params, start, end)
    summary = storage.read_json(f"{base}/{lake.artifact(lake.TRAIN, lake.SUMMARY)}")
    manifest = storage.read_json(f"{base}/{lake.artifact(lake.TRAIN, lake.MANIFEST)}")
    raw = storage.read_bytes(f"{base}/{lake.artifact(lake.TRAIN, lake.MODEL)}")
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
    importance = M.importance(booster, manifest["feature_names"])
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
        out.put_json(lake.PROFILE, profile)
        out.put_json(lake.EVALUATION, evaluation)
        out.put("report.html", evaluation_html(
            f"Evaluation of candidate model {summary['model_sha256'][:12]}", metrics, evaluation, pngs,
            "Not registered yet: registration titles this page with the model's name and version (its MLflow "
            "run and the training's register/report.html).").encode(), "text/html")
        out.put_json(lake.METRICS, metrics)
        log.info("evaluate %s..%s: AP %.4f (baseline %.4f), ROC AUC %.4f, recall %.3f @ %.4f -> %s", *win["test"],
                 model_eval["average_precision"] or 0, baseline_eval["average_precision"] or 0, model_eval["roc_auc"] or 0,
                 model_eval["recall"], thr, out.base)
        return 0
