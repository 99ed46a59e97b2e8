"""Stage `feedback`: the labels that landed on a date, joined back to the predictions they belong to.

`python -m pipelines feedback --date D`        (D = the day the labels landed)

The labels landing on D belong to the events of d = D - datasets.labels.delay_days. For d:
  predictions (champion) + decisions + shadow predictions (challenger, when one shadowed d)
  + the validated labels of D (`feed`) + the reviewers' verdicts of d (`review`, from the
  overrides table: params `feedback.review_verdicts` maps a human decision to a label)
  -> feedback/date=d/part-0.parquet, one row per prediction of d (rows in = rows out):
     label (feed first, else the review verdict), label_source (feed | review | null),
     feed_label, review_label, reviewer, review_agrees, the decision, the champion's and the
     challenger's score and threshold, the slice columns.
  -> monitoring/realized/date=d: realized metrics, one row per model version, role and metric
     (precision/recall per class, AP, ROC AUC, error rate, false-positive rate, miss rate at the
     operating threshold, precision@k, the outcome of each decision type), on feed labels only:
     reviews are a biased sample (only what was reviewed) and are counted apart.
  -> feedback/date=d/_summary.json: the accounting, the realized metrics, the reviews and the
     shadow comparison (champion vs challenger on the same labelled rows, per slice too).
  -> reports/feedback/date=d/report.html (self-contained).

Accounting: labels_in = labels_matched + labels_unmatched (labels for events that are not among
d's predictions: late or misrouted; counted and listed, never silently dropped) + labels_repeated.
With no predictions for d (nothing was scored that day) the labels are only recorded.
"""
from __future__ import annotations

import datetime as dt
import html
import json
import logging

import numpy as np
import polars as pl

from pipelines import lineage, storage
from pipelines.cli import StageFailed, resolve, stage_parser
from pipelines.report import CSS

log = logging.getLogger("pipelines.feedback")
REALIZED_SCHEMA = {"date": pl.Date, "label_date": pl.Date, "model_name": pl.String, "model_version": pl.String,
                   "role": pl.String, "metric": pl.String, "slice": pl.String, "value": pl.Float64}
RATES = ("error_rate", "false_positive_rate", "miss_rate")


class FeedbackError(RuntimeError):
    """The labels cannot be fed back (not validated, unreadable); the message names the partition."""


# --------------------------------------------------------------------------- metrics (pure)
def rates(cm: dict) -> dict:
    """Error rates from a confusion matrix {tn, fp, fn, tp}."""
    tn, fp, fn, tp = (int(cm[k]) for k in ("tn", "fp", "fn", "tp"))
    n = tn + fp + fn + tp
    return {"error_rate": (fp + fn) / n if n else None, "false_positive_rate": fp / (fp + tn) if fp + tn else None,
            "miss_rate": fn / (fn + tp) if fn + tp else None}


def model_metrics(y: np.ndarray, score: np.ndarray, threshold: float, ks: tuple[int, ...] = ()) -> dict:
    """Realized metrics of one model on labelled rows (flat: name -> number or None)."""
    from pipelines.evaluate import classification_metrics

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


def decision_outcomes(frame: pl.DataFrame) -> dict:
    """Per decision type: labelled rows, frauds, legit (feed labels); and the two rates ops watch."""
    out: dict = {}
    lab = frame.filter(pl.col("label_source") == "feed")
    for dec in ("block", "review", "approve"):
        part = lab.filter(pl.col("decision") == dec)
        fraud = int(part["label"].sum() or 0)
        out[f"decision.{dec}.rows"] = part.height
        out[f"decision.{dec}.fraud"] = fraud
        out[f"decision.{dec}.legit"] = part.height - fraud
        out[f"decision.{dec}.fraud_share"] = fraud / part.height if part.height else None
    frauds = int(lab["label"].sum() or 0)
    out["frauds_approved_share"] = out["decision.approve.fraud"] / frauds if frauds else None   # frauds let through
    return out


def slice_table(frame: pl.DataFrame, slices: tuple[str, ...], cols: dict[str, tuple[str, str]], min_pos: int = 0) -> dict:
    """{slice=value: {model: {rows, positives, average_precision, recall}}} on the same rows.
    cols: model -> (score column, threshold column)."""
    from pipelines.evaluate import classification_metrics

    out: dict = {}
    for col in slices:
        if col not in frame.columns:
            continue
        for key, part in sorted(frame.group_by(col), key=lambda kv: (kv[0][0] is None, str(kv[0][0]))):
            y = part["label"].to_numpy()
            if int(y.sum()) < min_pos:
                continue
            out[f"{col}={key[0]}"] = {
                m: {k: v for k, v in classification_metrics(y, part[s].to_numpy(), float(part[t][0])).items()
                    if k in ("rows", "positives", "average_precision", "recall")}
                for m, (s, t) in cols.items()}
    return out


def compare(frame: pl.DataFrame, metric: str, slices: tuple[str, ...], min_pos: int) -> dict | None:
    """Champion vs challenger on the same feed-labelled rows (both scored)."""
    both = frame.filter((pl.col("label_source") == "feed") & pl.col("shadow_score").is_not_null())
    if not both.height:
        return None
    y = both["label"].to_numpy()
    champ = model_metrics(y, both["score"].to_numpy(), float(both["threshold"][0]))
    chall = model_metrics(y, both["shadow_score"].to_numpy(), float(both["shadow_threshold"][0]))
    return {"rows": both.height, "positives": int(y.sum()), "metric": metric,
            "champion_version": both["model_version"][0], "challenger_version": both["shadow_version"][0],
            "champion": champ.get(metric), "challenger": chall.get(metric),
            "delta": None if champ.get(metric) is None or chall.get(metric) is None else chall[metric] - champ[metric],
            "champion_metrics": champ, "challenger_metrics": chall,
            "slices": slice_table(both, slices, {"champion": ("score", "threshold"),
                                                 "challenger": ("shadow_score", "shadow_threshold")}, min_pos)}


# --------------------------------------------------------------------------- the join
def review_labels(overrides: pl.DataFrame, verdicts: dict[str, int]) -> pl.DataFrame:
    """The latest reviewer decision per event as a label (decisions without a mapping give none)."""
    from pipelines.decide import OVERRIDE_SCHEMA

    if not overrides.height:
        return pl.DataFrame(schema={"event_id": pl.String, "review_label": pl.Int8, "reviewer": pl.String,
                                    "reviewed_at": OVERRIDE_SCHEMA["at"]})
    latest = overrides.sort("at").unique("event_id", keep="last", maintain_order=True)
    mapping = pl.DataFrame({"decision": list(verdicts), "review_label": list(verdicts.values())},
                           schema={"decision": pl.String, "review_label": pl.Int8})
    return (latest.join(mapping, on="decision", how="inner")
            .select("event_id", "review_label", "reviewer", pl.col("at").cast(OVERRIDE_SCHEMA["at"]).alias("reviewed_at")))


def with_provenance(frame: pl.DataFrame) -> pl.DataFrame:
    """feed_label + review_label -> label (the feed first, else the verdict), label_source
    (feed | review | null) and review_agrees (both present: do they agree). The one rule, used by
    the feedback join and by training (model.load_labelled)."""
    return frame.with_columns(
        pl.coalesce(pl.col("feed_label").cast(pl.Int8), pl.col("review_label").cast(pl.Int8)).alias("label"),
        pl.when(pl.col("feed_label").is_not_null()).then(pl.lit("feed"))
        .when(pl.col("review_label").is_not_null()).then(pl.lit("review")).otherwise(None).alias("label_source"),
        pl.when(pl.col("feed_label").is_not_null() & pl.col("review_label").is_not_null())
        .then(pl.col("feed_label") == pl.col("review_label")).otherwise(None).alias("review_agrees"))


def review_counts(frame: pl.DataFrame) -> dict:
    """The reviewers' verdicts among `frame`'s rows (after with_provenance)."""
    rev = frame.filter(pl.col("review_label").is_not_null())
    return {"verdicts": rev.height, "fraud_verdicts": int(rev["review_label"].sum() or 0),
            "with_feed_label": int(rev["feed_label"].is_not_null().sum()),
            "agree": int(rev["review_agrees"].fill_null(False).sum()),
            "disagree": int((rev["review_agrees"] == False).sum()),  # noqa: E712
            "review_only": int(rev["feed_label"].is_null().sum())}


def join_feedback(pred: pl.DataFrame, decisions: pl.DataFrame | None, shadow: pl.DataFrame | None,
                  labels: pl.DataFrame, reviews: pl.DataFrame, feats: pl.DataFrame | None) -> tuple[pl.DataFrame, dict]:
    """One row per prediction, with its decision, challenger score, feed label and review verdict."""
    labels_in = labels.height
    dedup = labels.unique("event_id", keep="first", maintain_order=True)
    base = pred.select("event_id", "ds", *[c for c in ("customer",) if c in pred.columns], "score", "threshold",
                       "model_name", "model_version", "run_id", "scored_by")
    if decisions is not None:
        base = base.join(decisions.select("event_id", "decision", "reason_code"), on="event_id", how="left",
                         maintain_order="left")
    else:
        base = base.with_columns(pl.lit(None, pl.String).alias("decision"), pl.lit(None, pl.String).alias("reason_code"))
    if shadow is not None:
        base = base.join(shadow.select("event_id", pl.col("score").alias("shadow_score"),
                                       pl.col("threshold").alias("shadow_threshold"),
                                       pl.col("model_version").alias("shadow_version")), on="event_id", how="left",
                         maintain_order="left")
    else:
        base = base.with_columns(pl.lit(None, pl.Float32).alias("shadow_score"),
                                 pl.lit(None, pl.Float32).alias("shadow_threshold"),
                                 pl.lit(None, pl.String).alias("shadow_version"))
    out = (base.join(dedup.select("event_id", pl.col("label").cast(pl.Int8).alias("feed_label")), on="event_id",
                     how="left", maintain_order="left")
           .join(reviews, on="event_id", how="left", maintain_order="left"))
    if feats is not None:
        out = out.join(feats, on="event_id", how="left", maintain_order="left")
    out = with_provenance(out)
    matched = int(out["feed_label"].is_not_null().sum())
    unmatched = dedup.join(pred.select("event_id"), on="event_id", how="anti")
    acc = {"predictions": pred.height, "rows_out": out.height, "labels_in": labels_in, "labels_matched": matched,
           "labels_unmatched": unmatched.height, "labels_repeated": labels_in - dedup.height,
           "unmatched_sample": unmatched["event_id"].head(20).to_list(),
           "rows_labelled_feed": matched, "rows_labelled_review_only": int((out["label_source"] == "review").sum()),
           "rows_unlabelled": int(out["label"].is_null().sum())}
    assert acc["rows_out"] == acc["predictions"], "feedback must keep one row per prediction"
    assert acc["labels_in"] == acc["labels_matched"] + acc["labels_unmatched"] + acc["labels_repeated"]
    return out, acc


def realized(frame: pl.DataFrame, d: dt.date, label_date: dt.date, ks: tuple[int, ...], slices: tuple[str, ...]
             ) -> tuple[pl.DataFrame, dict]:
    """Realized metrics per (role, model version) on feed labels, as table rows and as a dict."""
    rows, out = [], {}
    lab = frame.filter(pl.col("label_source") == "feed")
    groups = [("champion", "model_version", "score", "threshold", lab)]
    if lab["shadow_score"].is_not_null().any():
        groups.append(("challenger", "shadow_version", "shadow_score", "shadow_threshold",
                       lab.filter(pl.col("shadow_score").is_not_null())))
    for role, vcol, scol, tcol, part in groups:
        for (version,), g in sorted(part.group_by(vcol), key=lambda kv: str(kv[0][0])):
            version = version or "rules"
            name = g["model_name"][0] if role == "champion" else frame["model_name"][0]
            m = model_metrics(g["label"].to_numpy(), g[scol].to_numpy(), float(g[tcol][0]), ks)
            if role == "champion":
                m.update(decision_outcomes(g))
            out.setdefault(role, {})[version] = m
            rows += [(d, label_date, name, version, role, k, "", None if v is None else float(v)) for k, v in m.items()]
            for sl, per in slice_table(g, slices, {"m": (scol, tcol)}).items():
                rows += [(d, label_date, name, version, role, f"slice.{k}", sl, None if v is None else float(v))
                         for k, v in per["m"].items()]
    reviews = review_counts(frame)
    rows += [(d, label_date, frame["model_name"][0] if frame.height else None, "", "review", f"reviews.{k}", "", float(v))
             for k, v in reviews.items()]
    table = pl.DataFrame(rows, schema=REALIZED_SCHEMA, orient="row")
    return table, {"realized": out, "reviews": reviews}


# --------------------------------------------------------------------------- report
def report_html(summary: dict, history: pl.DataFrame) -> str:
    fmt = lambda v: "—" if v is None else (f"{v:.4g}" if isinstance(v, float) else html.escape(str(v)))  # noqa: E731
    keys = ("rows", "positives", "average_precision", "roc_auc", "precision", "recall", "legit_precision",
            "legit_recall", "error_rate", "false_positive_rate", "miss_rate", "alert_rate",
            *(k for k in next(iter(next(iter(summary["realized"].values()), {}).values()), {}) if k.startswith("precision_at_")))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    real = "".join(f"<tr><td>{role}</td><td>v{html.escape(str(v))}</td>" + "".join(f"<td>{fmt(m.get(k))}</td>" for k in keys)
                   + "</tr>" for role, per in summary["realized"].items() for v, m in per.items())
    champ = next(iter(summary["realized"].get("champion", {}).values()), {})
    outcomes = "".join(f"<tr><td>{dec}</td><td>{champ.get(f'decision.{dec}.rows', 0)}</td>"
                       f"<td>{champ.get(f'decision.{dec}.fraud', 0)}</td><td>{champ.get(f'decision.{dec}.legit', 0)}</td>"
                       f"<td>{fmt(champ.get(f'decision.{dec}.fraud_share'))}</td></tr>" for dec in ("block", "review", "approve"))
    cmp_ = summary.get("comparison")
    if cmp_:
        srows = "".join(f"<tr><td>{html.escape(s)}</td><td>{v['champion']['positives']}</td>"
                        f"<td>{fmt(v['champion']['average_precision'])}</td><td>{fmt(v['challenger']['average_precision'])}</td></tr>"
                        for s, v in cmp_["slices"].items())
        shadow = (f"<p>champion v{fmt(cmp_['champion_version'])} vs challenger v{fmt(cmp_['challenger_version'])} on the same "
                  f"{cmp_['rows']} labelled rows ({cmp_['positives']} frauds): {html.escape(cmp_['metric'])} "
                  f"{fmt(cmp_['champion'])} vs {fmt(cmp_['challenger'])} (delta {fmt(cmp_['delta'])}) "
                  f"<span class=\"badge {'pass' if (cmp_['delta'] or 0) > 0 else 'warn'}\">"
                  f"{'challenger ahead' if (cmp_['delta'] or 0) > 0 else 'champion ahead'}</span></p>"
                  f"<table><tr><th>slice</th><th>frauds</th><th>champion AP</th><th>challenger AP</th></tr>{srows}</table>")
    else:
        shadow = "<p>No challenger shadowed this day.</p>"
    trend = ""
    if history.height:
        h = (history.filter(pl.col("metric").is_in(["average_precision", "error_rate", "recall"]) & (pl.col("slice") == ""))
             .sort("date", "role", "model_version", "metric"))
        trend = "".join(f"<tr><td>{r['date']}</td><td>{r['role']}</td><td>v{html.escape(str(r['model_version']))}</td>"
                        f"<td>{r['metric']}</td><td>{fmt(r['value'])}</td></tr>" for r in h.iter_rows(named=True))
    rv = summary["reviews"]
    acc = summary["accounting"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Feedback {summary['date']}</title><style>{CSS}</style></head>
<body><h1>Realized performance · {summary['date']}</h1>
<div class="muted">labels landed {summary['label_date']}; {acc['labels_matched']} of {acc['predictions']} predictions labelled by
the feed, {acc['rows_labelled_review_only']} by a reviewer only; {acc['labels_unmatched']} label(s) matched no prediction
· <a href="../../monitor/index.html">monitoring</a></div>
<h2>Per model version (feed labels, operating threshold)</h2><table><tr><th>role</th><th>version</th>{head}</tr>{real}</table>
<h2>Outcome of each decision</h2><table><tr><th>decision</th><th>labelled</th><th>fraud</th><th>legit</th><th>fraud share</th></tr>{outcomes}</table>
<h2>Shadow comparison</h2>{shadow}
<h2>Human reviews (counted apart)</h2><p>{rv['verdicts']} verdict(s): {rv['fraud_verdicts']} fraud; {rv['with_feed_label']} with a feed
label ({rv['agree']} agree, {rv['disagree']} disagree); {rv['review_only']} only labelled by the review.</p>
<h2>Recent days</h2><table><tr><th>date</th><th>role</th><th>version</th><th>metric</th><th>value</th></tr>{trend}</table>
</body></html>"""


# --------------------------------------------------------------------------- entry point
def read_optional(uri: str, reader: lineage.Reader | None = None) -> pl.DataFrame | None:
    """A committed partition, verified (None when there is none); a stale one is an error."""
    try:
        return (reader or lineage.Reader()).read_parquet(uri)
    except lineage.StaleInput as exc:
        raise FeedbackError(f"{exc}; nothing fed back") from None
    except storage.MissingObject:
        return None


def read_realized(store, days: list[dt.date]) -> pl.DataFrame:
    from pipelines.monitor import read_metrics

    return read_metrics(store, "realized", days, REALIZED_SCHEMA)


def feedback_day(params, label_date: dt.date, snapshot: str | None = None) -> dict:
    from pipelines.decide import read_overrides

    store, fp = params.storage, params.feedback
    delay = params.dataset("labels").delay_days
    d = label_date - dt.timedelta(days=delay)
    ds_ = d.isoformat()
    luri = store.uri("validated", dataset="labels", date=label_date.isoformat())
    reader = lineage.Reader()
    labels = read_optional(luri, reader)
    if labels is None:
        raise FeedbackError(f"{luri}: no validated labels for {label_date} (ingest and validate --dataset labels first; "
                            f"a blocked partition is never fed back)")
    pred = read_optional(store.uri("predictions", date=ds_), reader)
    if pred is None:
        log.warning("feedback %s: no predictions for %s (nothing was scored that day): %d label(s) only recorded",
                    label_date, ds_, labels.height)
        rec = {"date": ds_, "label_date": label_date.isoformat(), "status": "no_predictions", "labels_in": labels.height,
               "labels": luri}
        with storage.publishing(store.lake, snapshot) as pub:
            pub.put_json(store.uri("feedback_summary", date=ds_), rec)
        return rec
    feats = read_optional(store.uri("features", date=ds_), reader)
    feats = feats.select("event_id", *[c for c in fp.slices if c in feats.columns]) if feats is not None else None
    frame, acc = join_feedback(pred, read_optional(store.uri("decisions", date=ds_), reader),
                               read_optional(store.uri("shadow_predictions", date=ds_), reader),
                               labels.select("event_id", "label"), review_labels(read_overrides(store, d), fp.review_verdicts),
                               feats)
    table, res = realized(frame, d, label_date, fp.precision_at_k, fp.slices)
    prom = params.promotion
    summary = {"date": ds_, "label_date": label_date.isoformat(), "status": "joined", "accounting": acc, **res,
               "comparison": compare(frame, prom.metric, fp.slices, prom.slice_min_positives)}
    with storage.publishing(store.lake, snapshot) as pub:
        part = pub.partition(store.uri("feedback", date=ds_), "feedback", inputs=reader.consumed)
        part.put_parquet(store.uri("realized", date=ds_), table)
        part.put_json(store.uri("feedback_summary", date=ds_), summary)
        part.put_parquet(store.uri("feedback", date=ds_), frame)
        part.commit()
        history = read_realized(store, [d - dt.timedelta(days=i) for i in range(29, -1, -1)])
        pub.put(store.uri("feedback_report", date=ds_), report_html(summary, history).encode(), "text/html")
        from pipelines import monitor           # the monitoring index links the day's realized report

        pub.put(store.uri("monitor_index"), monitor.index_html(store, monitor.dates_present(store, "monitoring")).encode(),
                "text/html")
    c = summary["comparison"]
    log.info("feedback %s (labels of %s): %d/%d predictions labelled, %d review-only, %d unmatched label(s)%s", ds_,
             label_date, acc["labels_matched"], acc["predictions"], acc["rows_labelled_review_only"], acc["labels_unmatched"],
             f"; shadow {c['metric']} champion {c['champion']:.4f} vs challenger {c['challenger']:.4f}"
             if c and c["champion"] is not None and c["challenger"] is not None else "")
    return {"date": ds_, "label_date": label_date.isoformat(), "status": "joined", **{k: acc[k] for k in (
        "predictions", "labels_in", "labels_matched", "labels_unmatched", "rows_labelled_review_only")},
        "report": store.uri("feedback_report", date=ds_)}


def main(argv: list[str]) -> int:
    args = stage_parser("feedback", __doc__).parse_args(argv)
    params, days = resolve(args)
    failures = []
    with storage.Publisher(params.storage.lake, args.snapshot) as pub:
        for day in days:
            try:
                print(json.dumps(feedback_day(params, day, pub), sort_keys=True))
            except FeedbackError as exc:
                log.error("%s", exc)
                failures.append(str(exc))
        if failures:
            raise StageFailed.of("feedback failed for", failures)
    return 0
