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
import json
import logging

import polars as pl

from pipelines.core import lake, lineage, storage
from pipelines.core.cli import each_partition, resolve, stage_parser
from pipelines.core.lake import REALIZED_SCHEMA, dates_present, read_realized
from pipelines.core.metrics import model_metrics, slice_table
from pipelines.core.report import fmt, index_html, link, render
from pipelines.core.reviews import (
    read_overrides,
    review_counts,
    review_labels,
    with_provenance,
)

log = logging.getLogger("pipelines.feedback")


class FeedbackError(RuntimeError):
    """The labels cannot be fed back (not validated, unreadable); the message names the partition."""


# --------------------------------------------------------------------------- metrics (pure)
def decision_outcomes(frame: pl.DataFrame) -> dict:
    """Per decision type: labelled rows, frauds, legit (feed labels); and the two rates ops watch."""
    out: dict = {}
    lab = frame.filter(pl.col("label_source") == "feed")
    for dec in ("block", "review", "approve", "hold"):
        part = lab.filter(pl.col("decision") == dec)
        fraud = int(part["label"].sum() or 0)
        out[f"decision.{dec}.rows"] = part.height
        out[f"decision.{dec}.fraud"] = fraud
        out[f"decision.{dec}.legit"] = part.height - fraud
        out[f"decision.{dec}.fraud_share"] = fraud / part.height if part.height else None
    frauds = int(lab["label"].sum() or 0)
    out["frauds_approved_share"] = out["decision.approve.fraud"] / frauds if frauds else None   # frauds let through
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
def plots(history: pl.DataFrame, outcome_rows: list[list]) -> list[tuple[str, str]]:
    """Realized AP and error rate per model version over the days scored (one line each, challenger
    = shadow), and the share of fraud among the labelled rows of each decision."""
    from pipelines.core import charts

    out = []
    h = history.filter(pl.col("slice") == "") if history.height else history
    days = sorted({str(d) for d in h["date"].to_list()}) if h.height else []
    for metric, title, percent in (("average_precision", "realized AP", False), ("error_rate", "error rate", True)):
        m = h.filter(pl.col("metric") == metric) if h.height else h
        if not m.height:
            continue
        series = []
        for (role, version), g in sorted(m.group_by(["role", "model_version"]), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            by_day = {str(d): v for d, v in zip(g["date"].to_list(), g["value"].to_list())}
            series.append((f"{role} v{version}", [by_day.get(d) for d in days]))
        out.append((title, charts.svg_uri(charts.lines(days, series, f"{title} per model version, by day scored",
                                                       percent=percent))))
    shares = [(r[0], r[2] / r[1] if r[1] else None) for r in outcome_rows]
    if any(v is not None for _, v in shares):
        out.append(("decision outcomes", charts.svg_uri(charts.grouped_bars(
            [d for d, _ in shares], [("fraud share of the labelled rows", [v for _, v in shares])],
            "Outcome of each decision: share that was fraud", width=440))))
    return out


def report_html(summary: dict, history: pl.DataFrame, index_link: str) -> str:
    """The day's realized-performance page (templates/feedback_day.html.j2)."""
    keys = ["rows", "positives", "average_precision", "roc_auc", "precision", "recall", "legit_precision",
            "legit_recall", "error_rate", "false_positive_rate", "miss_rate", "alert_rate",
            *(k for k in next(iter(next(iter(summary["realized"].values()), {}).values()), {}) if k.startswith("precision_at_"))]
    # one column per model version, one row per metric: readable at 1400 px however many metrics
    versions = [(f"{role} v{v}", m) for role, per in summary["realized"].items() for v, m in per.items()]
    realized_head = ["metric", *(label for label, _ in versions)]
    realized_rows = [[k, *(fmt(m.get(k)) for _, m in versions)] for k in keys]
    champ = next(iter(summary["realized"].get("champion", {}).values()), {})
    outcome_rows = [[dec, champ.get(f"decision.{dec}.rows", 0), champ.get(f"decision.{dec}.fraud", 0),
                     champ.get(f"decision.{dec}.legit", 0), fmt(champ.get(f"decision.{dec}.fraud_share"))]
                    for dec in ("block", "review", "approve")]
    cmp_ = summary.get("comparison")
    slice_rows = [[s_, v["champion"]["positives"], fmt(v["champion"]["average_precision"]),
                   fmt(v["challenger"]["average_precision"])] for s_, v in (cmp_ or {}).get("slices", {}).items()]
    trend_rows = []
    if history.height:
        h = (history.filter(pl.col("metric").is_in(["average_precision", "error_rate", "recall"]) & (pl.col("slice") == ""))
             .sort("date", "role", "model_version", "metric"))
        trend_rows = [[r["date"], r["role"], f"v{r['model_version']}", r["metric"], fmt(r["value"])]
                      for r in h.iter_rows(named=True)]
    return render("feedback_day.html.j2", s=summary, acc=summary["accounting"], rv=summary["reviews"],
                  plots=plots(history, outcome_rows),
                  realized_head=realized_head, realized_rows=realized_rows, outcome_rows=outcome_rows, cmp=cmp_,
                  ahead=bool(cmp_ and (cmp_["delta"] or 0) > 0), slice_rows=slice_rows, trend_rows=trend_rows,
                  index_link=index_link)


# --------------------------------------------------------------------------- entry point
def _read(uri: str, reader: lineage.Reader) -> pl.DataFrame | None:
    try:
        return lake.read_optional(uri, reader)
    except lineage.StaleInput as exc:
        raise FeedbackError(f"{exc}; nothing fed back") from None


def feedback_day(params, label_date: dt.date, snapshot: str | None = None) -> dict:
    store, fp = params.storage, params.feedback
    delay = params.dataset("labels").delay_days
    d = label_date - dt.timedelta(days=delay)
    ds_ = d.isoformat()
    luri = store.uri("validated", dataset="labels", date=label_date.isoformat())
    reader = lineage.Reader()
    labels = _read(luri, reader)
    if labels is None:
        raise FeedbackError(f"{luri}: no validated labels for {label_date} (ingest and validate --dataset labels first; "
                            f"a blocked partition is never fed back)")
    pred = _read(store.uri("predictions", date=ds_), reader)
    if pred is None:
        log.warning("feedback %s: no predictions for %s (nothing was scored that day): %d label(s) only recorded",
                    label_date, ds_, labels.height)
        rec = {"date": ds_, "label_date": label_date.isoformat(), "status": "no_predictions", "labels_in": labels.height,
               "labels": luri}
        with storage.publishing(store.lake, snapshot) as pub:
            pub.put_json(store.uri("feedback_summary", date=ds_), rec)
        return rec
    feats = _read(store.uri("features", date=ds_), reader)
    feats = feats.select("event_id", *[c for c in fp.slices if c in feats.columns]) if feats is not None else None
    frame, acc = join_feedback(pred, _read(store.uri("decisions", date=ds_), reader),
                               _read(store.uri("shadow_predictions", date=ds_), reader),
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
        pub.put(store.uri("feedback_report", date=ds_),
                report_html(summary, history, link(store, "feedback_report", "monitor_index", d)).encode(), "text/html")
        # the monitoring index links the day's realized report
        pub.put(store.uri("monitor_index"), index_html(store, dates_present(store, "monitoring")).encode(),
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
    with storage.Publisher(params.storage.lake, args.snapshot) as pub:
        each_partition(days, lambda day: print(json.dumps(feedback_day(params, day, pub), sort_keys=True)),
                       FeedbackError, "feedback failed for", stage="feedback")
    return 0
