"""Stage `monitor`: one date's inputs, outputs and decisions against the champion's reference profile.

`python -m pipelines monitor --date YYYY-MM-DD`

Compared with the reference profile saved at training time (the most recent labelled windows of the
served model, carried in predictions/date=ds/_model.json):
  * input drift per feature: PSI on the reference's quantile bins plus a null bin (categoricals on
    their values), KS for numerics against the reference's percentiles;
  * output drift: PSI of the score histogram; score quantiles; the confidence histogram;
  * decision rates (approve/review/block, over capacity, overrides), fallback rows by kind;
  * data quality: null share over the reference's, share outside the reference's [min, max], volume
    against the reference's rows per day;
  * scoring throughput and per-chunk latency p50/p95/p99 (a separate `perf` table: timings differ
    between re-runs, everything else is byte-identical).
A day is *drifted* when at least `drift_min_features` features (or the score) cross their alert
threshold; `retrain` reads that flag.

Out: monitoring/metrics/date=ds (one row per metric: value, thresholds, status, rolling mean over
the last `rolling_days` dates present), monitoring/perf/date=ds, monitoring/alerts/date=ds/alerts.json
(also POSTed to the webhook when one is configured), a self-contained HTML report per day and an
index page over all days (reports/monitor/).
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
import os
import re
import tempfile
import urllib.request
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipelines import lineage, storage
from pipelines.cli import resolve, stage_parser
from pipelines.config import MonitorParams, StorageParams
from pipelines.report import CSS

log = logging.getLogger("pipelines.monitor")
EPS = 1e-4
DRIFT_BADGE = '<span class="badge fail">drift</span>'
SCHEMA = {"date": pl.Date, "group": pl.String, "metric": pl.String, "feature": pl.String, "value": pl.Float64,
          "warn": pl.Float64, "alert": pl.Float64, "status": pl.String}


class MonitorError(RuntimeError):
    pass


# --------------------------------------------------------------------------- statistics
def psi(current: np.ndarray, reference: np.ndarray) -> float:
    """Population stability index of two share vectors over the same buckets."""
    c = np.clip(np.asarray(current, float), EPS, None)
    r = np.clip(np.asarray(reference, float), EPS, None)
    return float(np.sum((c - r) * np.log(c / r)))


class NumericDrift:
    """Streaming PSI (reference quantile bins + a null bin), KS against the reference percentiles,
    null share and out-of-range share of one numeric feature: counts only, batch by batch."""

    def __init__(self, ref: dict) -> None:
        self.ref = ref
        self.edges = np.asarray(ref["edges"], float)
        self.sample = np.asarray(ref.get("sample") or [], float)
        self.points = np.unique(self.sample)
        # one sorted grid holding the PSI edges and the KS points: a single binary search per value
        # gives, per grid point u, how many values fall in (u_prev, u] and how many equal u
        self.grid = np.union1d(self.edges, self.points)
        self.upto = np.zeros(len(self.grid) + 1, np.int64)   # values v with grid[j-1] < v <= grid[j]
        self.equal = np.zeros(len(self.grid), np.int64)      # values v == grid[j]
        self.n = self.nulls = self.finite = self.oor = 0

    def update(self, col: pl.Series) -> "NumericDrift":
        v = col.cast(pl.Float64).drop_nulls().to_numpy()
        self.n += col.len()
        self.nulls += col.len() - len(v)
        v = v[np.isfinite(v)]
        self.finite += len(v)
        if len(self.grid):
            idx = np.searchsorted(self.grid, v, side="left")
            self.upto += np.bincount(idx, minlength=len(self.grid) + 1)
            hit = idx < len(self.grid)
            eq = np.zeros(len(v), bool)
            eq[hit] = self.grid[idx[hit]] == v[hit]
            self.equal += np.bincount(idx[eq], minlength=len(self.grid))
        if self.ref.get("min") is not None:
            self.oor += int(((v < self.ref["min"]) | (v > self.ref["max"])).sum())
        return self

    @property
    def le(self) -> np.ndarray:
        """Values <= each KS point."""
        return np.cumsum(self.upto)[np.searchsorted(self.grid, self.points)]

    @property
    def counts(self) -> np.ndarray:
        """Values per PSI bin: below edges[0], [edges[i-1], edges[i]), ..., at or above edges[-1]."""
        at = np.searchsorted(self.grid, self.edges)
        lt = np.cumsum(self.upto)[at] - self.equal[at]                # values < each edge
        return np.diff(np.concatenate([[0], lt, [self.finite]]))

    def result(self) -> dict:
        n, ref = self.n, self.ref
        nulls = self.nulls / n if n else 0.0
        cur = np.append(self.counts / n if n else self.counts * 0.0, nulls)
        out = {"psi": psi(cur, np.append(np.asarray(ref["shares"], float), ref["null_share"])), "null_share": nulls,
               "null_share_increase": nulls - ref["null_share"]}
        if len(self.points) and self.finite:
            # the reference CDF is known at its percentiles; ties (e.g. a zero-inflated feature) take
            # the highest percentile they reach: F_ref(x) = (last index of x in the sample) / 100
            f_ref = np.clip((np.searchsorted(self.sample, self.points, side="right") - 1) / (len(self.sample) - 1), 0, 1)
            out["ks"] = float(np.max(np.abs(self.le / self.finite - f_ref)))
        if ref.get("min") is not None and self.finite:
            out["out_of_range_share"] = self.oor / self.finite
        return out


class CategoricalDrift:
    def __init__(self, ref: dict) -> None:
        self.ref, self.counts, self.n, self.nulls = ref, {}, 0, 0

    def update(self, col: pl.Series) -> "CategoricalDrift":
        self.n += col.len()
        self.nulls += col.null_count()
        vc = col.drop_nulls().value_counts(sort=False)
        for k, c in zip(vc[:, 0].to_list(), vc[:, 1].to_list()):
            self.counts[str(k)] = self.counts.get(str(k), 0) + c
        return self

    def result(self) -> dict:
        n, ref = self.n, self.ref
        nulls = self.nulls / n if n else 0.0
        shares = {k: c / n for k, c in self.counts.items()} if n else {}
        keys = sorted(set(shares) | set(ref["frequencies"]))
        cur = [shares.get(k, 0.0) for k in keys] + [nulls]
        refv = [ref["frequencies"].get(k, 0.0) for k in keys] + [ref["null_share"]]
        return {"psi": psi(cur, refv), "null_share": nulls, "null_share_increase": nulls - ref["null_share"],
                "out_of_range_share": sum(shares.get(k, 0.0) for k in keys if k not in ref["frequencies"])}


class ScoreDrift:
    """Score histogram on the reference's bins (PSI) and on 1000 fine bins (quantiles to 0.001)."""

    FINE = 1000

    def __init__(self, ref: dict | None) -> None:
        self.ref = ref
        self.edges = np.asarray(ref["edges"], float) if ref else np.linspace(0, 1, 21)
        self.hist = np.zeros(len(self.edges) - 1, np.int64)
        self.fine = np.zeros(self.FINE, np.int64)
        self.n, self.total = 0, 0.0

    def update(self, score: np.ndarray) -> "ScoreDrift":
        score = np.asarray(score, float)
        self.hist += np.histogram(score, bins=self.edges)[0]
        self.fine += np.bincount(np.clip((score * self.FINE).astype(np.int64), 0, self.FINE - 1), minlength=self.FINE)
        self.n += len(score)
        self.total += float(score.sum())
        return self

    def quantile(self, q: float) -> float | None:
        if not self.n:
            return None
        return float((np.searchsorted(np.cumsum(self.fine), q * self.n) + 0.5) / self.FINE)

    def result(self) -> dict:
        hist = self.hist / max(self.n, 1)
        return {"psi": psi(hist, self.ref["shares"]) if self.ref else None, "hist": hist.tolist(),
                "mean": self.total / self.n if self.n else None,
                "p50": self.quantile(0.5), "p95": self.quantile(0.95), "p99": self.quantile(0.99)}


def drift_of(ref: dict):
    return NumericDrift(ref) if ref["kind"] == "numeric" else CategoricalDrift(ref)


def numeric_drift(col: pl.Series, ref: dict) -> dict:
    return NumericDrift(ref).update(col).result()


def categorical_drift(col: pl.Series, ref: dict) -> dict:
    return CategoricalDrift(ref).update(col).result()


def score_drift(score: np.ndarray, ref: dict) -> dict:
    return ScoreDrift(ref).update(score).result()


def _status(value: float | None, warn: float | None, alert: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "info"
    if alert is not None and value > alert:
        return "alert"
    if warn is not None and value > warn:
        return "warn"
    return "ok"


def _status_badge(status: str) -> str:
    cls = {"alert": "fail", "warn": "warn"}.get(status, "pass")
    return f'<span class="badge {cls}">{status}</span>'


def _band(value: float, low: float, high: float) -> str:
    return "alert" if value < low or value > high else "ok"


# --------------------------------------------------------------------------- the day's metrics
@dataclass
class Observed:
    """What one day's files hold, accumulated batch by batch (see `observe`)."""
    rows: int
    features: dict[str, dict]          # feature -> drift result (psi, ks, null share, out of range)
    score: dict | None                 # ScoreDrift result
    above_threshold: int
    fallback_any: int
    fallback: dict[str, int]


def observe(feat_batches, pred_batches, profile: dict | None, p: MonitorParams) -> Observed:
    """One pass over the day's features and predictions, memory bounded by a batch."""
    refs = {f: r for f, r in sorted((profile or {}).get("features", {}).items()) if f not in p.exclude_features}
    accs = {}
    for fb in feat_batches:
        for f, r in refs.items():
            if f in fb.columns:
                accs.setdefault(f, drift_of(r)).update(fb[f])
    sd = ScoreDrift((profile or {}).get("score"))
    rows = above = any_fb = 0
    fb_counts: dict[str, int] = {}
    for pb in pred_batches:
        rows += pb.height
        sd.update(pb["score"].to_numpy())
        above += int((pb["score"] >= pb["threshold"]).sum())
        any_fb += int((pb["fallback"].list.len() > 0).sum())
        ex = pb.select(pl.col("fallback").explode()).drop_nulls()["fallback"]
        for k, c in zip(*ex.value_counts().to_dict(as_series=False).values()) if ex.len() else ():
            fb_counts[k] = fb_counts.get(k, 0) + c
    return Observed(rows, {f: a.result() for f, a in accs.items()}, sd.result() if profile else None, above, any_fb,
                    fb_counts)


def day_metrics(ds: dt.date, obs: Observed, dec_summary: dict, model_doc: dict, p: MonitorParams
                ) -> tuple[list[dict], dict]:
    """Metric rows (SCHEMA) for one day, plus details for the report (histograms, per-feature table)."""
    rows: list[dict] = []

    def add(group, metric, value, feature="", warn=None, alert=None, status=None):
        v = None if value is None else float(value)
        rows.append({"date": ds, "group": group, "metric": metric, "feature": feature, "value": v,
                     "warn": warn, "alert": alert, "status": status or _status(v, warn, alert)})

    profile = model_doc.get("reference_profile")
    n = obs.rows
    details: dict = {"features": [], "score_hist": None, "score_edges": None, "ref_hist": None}
    add("volume", "rows", n)
    drifted: list[str] = []
    if profile is None:
        add("drift", "reference_missing", 1, status="alert")
    else:
        per_day = profile["rows"] / (profile.get("days") or 7)
        add("volume", "rows_vs_reference", n / per_day if per_day else None,
            status=_band(n / per_day, p.volume_ratio["low"], p.volume_ratio["high"]) if per_day else "info")
        for f, d in obs.features.items():
            add("drift", "psi", d["psi"], f, p.psi["warn"], p.psi["alert"])
            st = rows[-1]["status"]
            if "ks" in d:
                add("drift", "ks", d["ks"], f, p.ks["warn"], p.ks["alert"])
                st = "alert" if rows[-1]["status"] == "alert" else st
            add("quality", "null_share_increase", d["null_share_increase"], f, p.null_share_increase["warn"],
                p.null_share_increase["alert"])
            if "out_of_range_share" in d:
                add("quality", "out_of_range_share", d["out_of_range_share"], f, p.out_of_range_share["warn"],
                    p.out_of_range_share["alert"])
            if st == "alert":
                drifted.append(f)
            details["features"].append({"feature": f, **{k: d.get(k) for k in ("psi", "ks", "null_share",
                                                                               "out_of_range_share")}})
        sd = obs.score
        add("output", "score_psi", sd["psi"], "score", p.score_psi["warn"], p.score_psi["alert"])
        score_alert = rows[-1]["status"] == "alert"
        details.update(score_hist=sd["hist"], score_edges=profile["score"]["edges"], ref_hist=profile["score"]["shares"])
        for k in ("mean", "p50", "p95", "p99"):
            add("output", f"score_{k}", sd[k], "score")
        day_drift = len(drifted) >= p.drift_min_features or score_alert
        add("drift", "drifted_features", len(drifted))
        add("drift", "day_drifted", int(day_drift), status="alert" if day_drift else "ok")
    add("output", "above_threshold_share", obs.above_threshold / n if n else 0.0)
    rates = dec_summary.get("rates", {})
    for d in ("approve", "review", "block"):
        add("decision", f"{d}_rate", rates.get(d, 0.0),
            status=_band(rates.get(d, 0.0), p.review_rate["low"], p.review_rate["high"]) if d == "review" else None)
    for k in ("over_capacity", "overrides_applied", "model_disagrees", "review_queue"):
        add("decision", k, dec_summary.get(k, 0))
    add("fallback", "fallback_share", obs.fallback_any / n if n else 0.0, "", p.fallback_share["warn"],
        p.fallback_share["alert"])
    for kind in ("registry_cache", "rules", "feature_default"):
        add("fallback", kind, obs.fallback.get(kind, 0))
    details["drifted_features"] = drifted
    return rows, details


def perf_rows(ds: dt.date, stats: dict) -> list[dict]:
    lat = stats.get("chunk_latency_ms", {})
    vals = {"rows_per_s": stats.get("rows_per_s"), "seconds": stats.get("seconds"), "chunks": stats.get("chunks"),
            **{f"chunk_latency_{k}_ms": v for k, v in lat.items()}}
    return [{"date": ds, "group": "perf", "metric": k, "feature": "", "value": None if v is None else float(v),
             "warn": None, "alert": None, "status": "info"} for k, v in vals.items()]


def _prefix(store: StorageParams, kind: str) -> str:
    return store.uri(kind, date="@").split("date=@")[0]


def dates_present(store: StorageParams, kind: str) -> list[dt.date]:
    out = set()
    for u in storage.list_uris(_prefix(store, kind)):
        m = re.search(r"date=(\d{4}-\d{2}-\d{2})", u)
        if m:
            out.add(dt.date.fromisoformat(m.group(1)))
    return sorted(out)


def read_metrics(store: StorageParams, kind: str, days: list[dt.date], schema: dict | None = None) -> pl.DataFrame:
    """The `kind` partitions of `days` that exist, stacked (empty with `schema`, default SCHEMA)."""
    frames = []
    for d in days:
        try:
            frames.append(storage.read_parquet(store.uri(kind, date=d.isoformat())))
        except storage.MissingObject:
            pass
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(schema=schema or SCHEMA)


def with_rolling(today: pl.DataFrame, history: pl.DataFrame, days: int) -> pl.DataFrame:
    """Add rolling_mean / rolling_days: the mean of each metric over the dates present in the window."""
    both = pl.concat([history.select(list(SCHEMA)), today.select(list(SCHEMA))], how="vertical")
    roll = both.group_by("group", "metric", "feature").agg(pl.col("value").mean().alias("rolling_mean"),
                                                           pl.col("date").n_unique().cast(pl.Int32).alias("rolling_days"))
    return today.join(roll, on=["group", "metric", "feature"], how="left", maintain_order="left").with_columns(
        pl.lit(days, pl.Int32).alias("window_days"))


def alerts_of(metrics: pl.DataFrame, ds: dt.date, drifted: list[str]) -> list[dict]:
    out = []
    for r in metrics.filter(pl.col("status") == "alert").iter_rows(named=True):
        what = f"{r['metric']}" + (f"[{r['feature']}]" if r["feature"] else "")
        if r["metric"] == "day_drifted":
            msg = f"{ds}: the day is drifted: feature(s) at alert {drifted or '[]'} (or the score)"
        elif r["alert"] is None:
            msg = f"{ds}: {what} = {r['value']:.4g} is outside its configured band"
        else:
            msg = f"{ds}: {what} = {r['value']:.4g} crossed its alert threshold ({r['alert']:.4g})"
        out.append({"date": ds.isoformat(), "group": r["group"], "metric": r["metric"], "feature": r["feature"],
                    "value": r["value"], "threshold": r["alert"], "message": msg})
    return out


def send_webhook(url: str, payload: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload, default=str).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return {"url": url, "delivered": 200 <= r.status < 300, "status": r.status}
    except Exception as exc:     # an alert channel being down must not hide the stored record
        log.warning("alert webhook %s failed: %s", url, exc)
        return {"url": url, "delivered": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}


# --------------------------------------------------------------------------- reports
def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def realized_table(realized: pl.DataFrame | None) -> str:
    """Realized metrics per scored day, role and model version (from the labels fed back so far)."""
    cols = ("rows", "positives", "average_precision", "recall", "precision", "error_rate", "frauds_approved_share")
    if realized is None or not realized.height:
        return "<p>No labels fed back for these days yet (they land datasets.labels.delay_days later).</p>"
    wide = (realized.filter(pl.col("metric").is_in(cols) & (pl.col("slice") == "") & (pl.col("role") != "review"))
            .pivot(on="metric", index=["date", "role", "model_version"], values="value")
            .sort(["date", "role"], descending=[True, False]))
    fmt = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731
    body = "".join(f"<tr><td>{r['date']}</td><td>{html.escape(r['role'])}</td><td>v{html.escape(str(r['model_version']))}</td>"
                   + "".join(f"<td>{fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in wide.iter_rows(named=True))
    return (f"<table><tr><th>scored day</th><th>role</th><th>version</th>{''.join(f'<th>{c}</th>' for c in cols)}</tr>"
            f"{body}</table>")


def report_html(ds: dt.date, metrics: pl.DataFrame, perf: pl.DataFrame, details: dict, alerts: list[dict],
                model_doc: dict, history: pl.DataFrame, summary: dict, realized: pl.DataFrame | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = []
    feats = sorted(details["features"], key=lambda r: -(r["psi"] or 0))
    if feats:
        fig, ax = plt.subplots(figsize=(7, max(3, 0.22 * len(feats))))
        ax.barh([f["feature"] for f in feats][::-1], [f["psi"] for f in feats][::-1])
        warn = metrics.filter(pl.col("metric") == "psi")["warn"].max()
        alert = metrics.filter(pl.col("metric") == "psi")["alert"].max()
        for x, c in ((warn, "orange"), (alert, "red")):
            if x is not None:
                ax.axvline(x, color=c, ls="--")
        ax.set(title="Input drift: PSI per feature", xlabel="PSI")
        fig.tight_layout()
        imgs.append(("PSI per feature", _png(fig)))
    if details.get("score_hist") is not None:
        e = np.asarray(details["score_edges"])
        fig, ax = plt.subplots(figsize=(7, 3.2))
        w = np.diff(e)
        ax.bar(e[:-1], details["ref_hist"], width=w, align="edge", alpha=0.5, label="reference")
        ax.bar(e[:-1], details["score_hist"], width=w, align="edge", alpha=0.5, label=str(ds))
        ax.set_yscale("log")
        ax.set(title="Confidence histogram (score), share of rows", xlabel="score")
        ax.legend()
        fig.tight_layout()
        imgs.append(("Confidence histogram", _png(fig)))
    if history.height:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3))
        for ax, (metric, title) in zip(axes, (("review_rate", "review rate"), ("score_psi", "score PSI"),
                                              ("drifted_features", "features at alert"))):
            h = history.filter(pl.col("metric") == metric).sort("date")
            ax.plot(h["date"].to_list(), h["value"].to_list(), marker="o")
            ax.set_title(title)
            ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        fig.tight_layout()
        imgs.append(("Recent days", _png(fig)))
    st = {r["metric"]: r for r in metrics.filter(pl.col("feature") == "").iter_rows(named=True)}
    drift = st.get("day_drifted", {}).get("value")
    kpi = lambda label, v: f'<div class="kpi"><b>{html.escape(str(v))}</b>{label}</div>'  # noqa: E731
    fmt = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    kpis = "".join([kpi("rows", int(st["rows"]["value"])), kpi("drifted", "yes" if drift else "no"),
                    kpi("features at alert", int(st.get("drifted_features", {}).get("value") or 0)),
                    kpi("review rate", f"{summary.get('rates', {}).get('review', 0):.2%}"),
                    kpi("block rate", f"{summary.get('rates', {}).get('block', 0):.2%}"),
                    kpi("fallback rows", f"{st['fallback_share']['value']:.2%}"), kpi("alerts", len(alerts))])
    al = "".join(f"<li>{html.escape(a['message'])}</li>" for a in alerts) or "<li>none</li>"
    frows = "".join(
        f"<tr><td>{html.escape(f['feature'])}</td><td>{fmt(f['psi'])}</td><td>{fmt(f['ks'])}</td>"
        f"<td>{fmt(f['null_share'])}</td><td>{fmt(f['out_of_range_share'])}</td></tr>" for f in feats)
    mrows = "".join(
        f"<tr><td>{html.escape(r['group'])}</td><td>{html.escape(r['metric'])}</td><td>{html.escape(r['feature'])}</td>"
        f"<td>{fmt(r['value'])}</td><td>{fmt(r['rolling_mean'])} ({r['rolling_days']}d)</td><td>{fmt(r['warn'])}</td>"
        f"<td>{fmt(r['alert'])}</td><td>{_status_badge(r['status'])}</td></tr>"
        for r in metrics.filter(pl.col("group") != "drift").iter_rows(named=True))
    prow = "".join(f"<tr><td>{html.escape(r['metric'])}</td><td>{fmt(r['value'])}</td></tr>" for r in perf.iter_rows(named=True))
    model = {k: model_doc.get(k) for k in ("scored_by", "fallback", "model_name", "model_version", "run_id",
                                           "model_sha256", "threshold", "spec_hash", "reason")}
    ref = model_doc.get("reference_profile") or {}
    figs = "".join(f"<h2>{html.escape(t)}</h2><img alt=\"{html.escape(t)}\" src=\"{src}\">" for t, src in imgs)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Monitoring {ds}</title><style>{CSS}</style></head>
<body><h1>Monitoring · {ds} <span class="badge {'fail' if drift else 'pass'}">{'drift' if drift else 'stable'}</span></h1>
<div class="muted">reference: {html.escape(str(ref.get('window')))} ({ref.get('rows')} rows) ·
<a href="../index.html">all days</a></div><div class="kpis">{kpis}</div>
<h2>Alerts</h2><ul>{al}</ul>{figs}
<h2>Features</h2><table><tr><th>feature</th><th>PSI</th><th>KS</th><th>null share</th><th>out of range</th></tr>{frows}</table>
<h2>Outputs, decisions, quality, fallbacks</h2><table><tr><th>group</th><th>metric</th><th>feature</th><th>value</th>
<th>rolling mean</th><th>warn</th><th>alert</th><th>status</th></tr>{mrows}</table>
<h2>Realized performance (labels fed back so far, last 30 days; challenger = shadow)</h2>{realized_table(realized)}
<h2>Scoring performance</h2><table>{prow}</table>
<h2>Model served</h2><pre>{html.escape(json.dumps(model, indent=2, default=str))}</pre></body></html>"""


def index_html(store: StorageParams, days: list[dt.date]) -> str:
    metrics = read_metrics(store, "monitoring", days)
    realized = set(dates_present(store, "feedback_report")) if "feedback_report" in store.layout else set()
    here = os.path.dirname(store.layout["monitor_index"])
    rows = []
    for d in sorted(days, reverse=True):
        m = {r["metric"]: r["value"] for r in metrics.filter((pl.col("date") == d) & (pl.col("feature") == "")).iter_rows(named=True)}
        n_alerts = metrics.filter((pl.col("date") == d) & (pl.col("status") == "alert")).height
        link = f"date={d.isoformat()}/report.html"
        fb = (f"<a href=\"{os.path.relpath(store.layout['feedback_report'].format(date=d.isoformat()), here)}\">labels</a>"
              if d in realized else "")
        rows.append(f"<tr><td><a href=\"{link}\">{d}</a></td><td>{fb}</td><td>{int(m.get('rows') or 0)}</td>"
                    f"<td>{DRIFT_BADGE if m.get('day_drifted') else 'stable'}</td>"
                    f"<td>{int(m.get('drifted_features') or 0)}</td><td>{(m.get('review_rate') or 0):.2%}</td>"
                    f"<td>{(m.get('block_rate') or 0):.2%}</td><td>{(m.get('fallback_share') or 0):.2%}</td><td>{n_alerts}</td></tr>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Monitoring</title><style>{CSS}</style></head>
<body><h1>Nightly monitoring</h1><div class="muted">{len(days)} day(s); reports are self-contained HTML</div>
<table><tr><th>date</th><th>realized (once labelled)</th><th>rows</th><th>drift</th><th>features at alert</th><th>review rate</th><th>block rate</th>
<th>fallback rows</th><th>alerts</th></tr>{''.join(rows)}</table></body></html>"""


# --------------------------------------------------------------------------- entry point
def monitor_day(params, ds: dt.date, snapshot: str | None = None) -> dict:
    p, store = params.monitor, params.storage
    d = ds.isoformat()
    reader = lineage.Reader()
    with tempfile.TemporaryDirectory(prefix="monitor-") as tmp:
        pred_uri, dec_uri = store.uri("predictions", date=d), store.uri("decisions", date=d)
        try:
            model_doc = reader.read_json(store.uri("scored_model", date=d), primary=pred_uri)
            dec_summary = reader.read_json(store.uri("decision_summary", date=d), primary=dec_uri)
            pred_path = reader.fetch(pred_uri, tmp)
            feat_path = reader.fetch(store.uri("features", date=d), tmp)
            stats = storage.read_json(store.uri("scoring_stats", date=d))     # timings: not part of any record
        except (lineage.NotCommitted, storage.MissingObject) as exc:
            raise MonitorError(f"monitor {d}: {exc} (run score and decide for {d} first)") from None
        except lineage.StaleInput as exc:
            raise MonitorError(f"monitor {d}: {exc}; nothing monitored") from None
        import pyarrow.parquet as pq

        profile = model_doc.get("reference_profile")
        names = set(pq.ParquetFile(str(feat_path)).schema_arrow.names)
        cols = [f for f in (profile or {}).get("features", {}) if f in names and f not in p.exclude_features]
        obs = observe(storage.iter_parquet(feat_path, cols) if cols else [],
                      storage.iter_parquet(pred_path, ["score", "threshold", "fallback"]), profile, p)
    rows, details = day_metrics(ds, obs, dec_summary, model_doc, p)
    today = pl.DataFrame(rows, schema=SCHEMA)
    window = [ds - dt.timedelta(days=i) for i in range(p.rolling_days - 1, 0, -1)]
    metrics = with_rolling(today, read_metrics(store, "monitoring", window), p.rolling_days)
    perf = with_rolling(pl.DataFrame(perf_rows(ds, stats), schema=SCHEMA),
                        read_metrics(store, "monitoring_perf", window), p.rolling_days)
    alerts = alerts_of(metrics, ds, details["drifted_features"])
    with storage.publishing(store.lake, snapshot) as pub:
        return _publish_day(pub, reader, params, ds, metrics, perf, alerts, details, model_doc, dec_summary)


def _publish_day(pub: storage.Publisher, reader: lineage.Reader, params, ds: dt.date, metrics: pl.DataFrame,
                 perf: pl.DataFrame, alerts: list[dict], details: dict, model_doc: dict, dec_summary: dict) -> dict:
    p, store = params.monitor, params.storage
    d = ds.isoformat()
    part = pub.partition(store.uri("monitoring", date=d), "monitor", inputs=reader.consumed)
    part.put(store.uri("monitoring_perf", date=d), storage.parquet_bytes(perf), volatile=True)   # timings
    report_uri = store.uri("monitor_report", date=d)
    record = {"date": d, "alerts": alerts, "drifted": bool(metrics.filter(pl.col("metric") == "day_drifted")["value"].sum()),
              "drifted_features": details["drifted_features"], "report": report_uri}
    url = os.environ.get("FRAUDOPS_ALERT_WEBHOOK") or p.webhook_url
    if alerts and url:
        record["webhook"] = send_webhook(url, {"source": "fraudops.monitor", **record}, p.webhook_timeout_s)
    part.put_json(store.uri("alerts", date=d), record, volatile=True)      # the webhook's answer varies
    recent = read_metrics(store, "monitoring", [ds - dt.timedelta(days=i) for i in range(29, 0, -1)])
    history = pl.concat([recent.select(list(SCHEMA)), metrics.select(list(SCHEMA))])
    from pipelines.feedback import read_realized

    realized = read_realized(store, [ds - dt.timedelta(days=i) for i in range(29, -1, -1)]) \
        if "realized" in store.layout else None
    pub.put(report_uri, report_html(ds, metrics, perf, details, alerts, model_doc, history, dec_summary,
                                    realized).encode(),
            "text/html")              # a view: re-rendered as labels land, so not part of the record
    part.put_parquet(store.uri("monitoring", date=d), metrics)
    part.commit()
    pub.put(store.uri("monitor_index"), index_html(store, dates_present(store, "monitoring")).encode(), "text/html")
    return record


def main(argv: list[str]) -> int:
    args = stage_parser("monitor", __doc__).parse_args(argv)
    params, days = resolve(args)
    with storage.Publisher(params.storage.lake, args.snapshot) as pub:
        for ds in days:
            rec = monitor_day(params, ds, pub)
            (log.warning if rec["alerts"] else log.info)(
                "monitor %s: %s, %d alert(s)%s -> %s", ds, "DRIFT" if rec["drifted"] else "stable",
                len(rec["alerts"]), f" (features {rec['drifted_features']})" if rec["drifted_features"] else "",
                rec["report"])
            print(json.dumps({"date": rec["date"], "drifted": rec["drifted"], "alerts": len(rec["alerts"]),
                              "report": rec["report"]}, sort_keys=True))
    return 0
