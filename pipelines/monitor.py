"""Stage `monitor`: one date's inputs, outputs and decisions against the champion's reference profile.

`python -m pipelines monitor --date YYYY-MM-DD`

Compared with the reference profile saved at training time (the most recent labelled windows of the
served model, carried in predictions/date=ds/_model.json), from the predictions and the features'
counts score made as it read them (predictions/date=ds/_features_observed.json: the feature
partition is not read again):
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

import datetime as dt
import json
import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipelines.core import alerts as alerts_mod
from pipelines.core import lineage, shards, storage
from pipelines.core.cli import progress, resolve, stage_parser
from pipelines.core.config import MonitorParams
from pipelines.core.drift import FeatureDrift, ScoreDrift
from pipelines.core.lake import (
    METRIC_SCHEMA,
    dates_present,
    read_metrics,
    read_realized,
)
from pipelines.core.report import fmt, index_html, link, render
from pipelines.core.shards import Shard

log = logging.getLogger("pipelines.monitor")
class MonitorError(RuntimeError):
    pass


# --------------------------------------------------------------------------- statistics
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


class Observer:
    """The day's predictions accumulated batch by batch (memory: one batch), and its features' counts
    as score observed them (FeatureDrift state, published with the predictions): counts only, so
    shards of the day (batch i to shard i mod N) add up to the same Observed, bit for bit."""

    def __init__(self, profile: dict | None, p: MonitorParams) -> None:
        self.profile = profile
        self.refs = {f for f in (profile or {}).get("features", {}) if f not in p.exclude_features}
        self.accs: dict = {}
        self.sd = ScoreDrift((profile or {}).get("score"))
        self.rows = self.above = self.any_fb = 0
        self.fb_counts: dict[str, int] = {}
        self.batches: list[int] = []         # the prediction batches seen, in order (their score sums: sd.sums)

    def features(self, observed: dict) -> None:
        """The features' counts of the whole day (those monitored: not excluded)."""
        self.accs = FeatureDrift.merged(self.profile, [observed], only=self.refs).accs

    def predictions(self, i: int, pb: pl.DataFrame) -> None:
        self.batches.append(i)
        self.rows += pb.height
        self.sd.update(pb["score"].to_numpy())
        self.above += int((pb["score"] >= pb["threshold"]).sum())
        self.any_fb += int((pb["fallback"].list.len() > 0).sum())
        ex = pb.select(pl.col("fallback").explode()).drop_nulls()["fallback"]
        for k, c in zip(*ex.value_counts().to_dict(as_series=False).values()) if ex.len() else ():
            self.fb_counts[k] = self.fb_counts.get(k, 0) + c

    def state(self) -> dict:
        """A shard's predictions observed (the features' counts are the day's: not a shard's)."""
        return {"score": self.sd.state(), "batches": self.batches, "rows": self.rows, "above": self.above,
                "any_fallback": self.any_fb, "fallback": self.fb_counts}

    @classmethod
    def merged(cls, profile: dict | None, p: MonitorParams, states: list[dict], observed: dict) -> "Observer":
        out = cls(profile, p)
        out.features(observed)
        sums = sorted((i, x) for st in states for i, x in zip(st["batches"], st["score"]["sums"]))
        out.sd = ScoreDrift.merged((profile or {}).get("score"), [st["score"] for st in states], [x for _, x in sums])
        out.batches = [i for i, _ in sums]
        for st in states:
            out.rows, out.above, out.any_fb = out.rows + st["rows"], out.above + st["above"], out.any_fb + st["any_fallback"]
            for k, c in st["fallback"].items():
                out.fb_counts[k] = out.fb_counts.get(k, 0) + c
        return out

    def result(self) -> Observed:
        return Observed(self.rows, {f: a.result() for f, a in self.accs.items()},
                        self.sd.result() if self.profile else None, self.above, self.any_fb, dict(sorted(self.fb_counts.items())))


def observe(observed: dict, pred_batches, profile: dict | None, p: MonitorParams, shard: Shard | None = None) -> Observer:
    """The day's features' counts (`observed`, by score) and one pass over its predictions (with
    `shard`: its batches only, and no features: the merge adds them once)."""
    obs = Observer(profile, p)
    if shard is None:
        obs.features(observed)
    for i, pb in enumerate(pred_batches):
        if shard is None or shard.owns(i):
            obs.predictions(i, pb)
    return obs


def day_metrics(ds: dt.date, obs: Observed, dec_summary: dict, model_doc: dict, p: MonitorParams
                ) -> tuple[list[dict], dict]:
    """Metric rows (METRIC_SCHEMA) for one day, plus details for the report (histograms, per-feature table)."""
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
            status=_band(n / per_day, p.volume_ratio.low, p.volume_ratio.high) if per_day else "info")
        for f, d in obs.features.items():
            add("drift", "psi", d["psi"], f, p.psi.warn, p.psi.alert)
            st = rows[-1]["status"]
            if "ks" in d:
                add("drift", "ks", d["ks"], f, p.ks.warn, p.ks.alert)
                st = "alert" if rows[-1]["status"] == "alert" else st
            add("quality", "null_share_increase", d["null_share_increase"], f, p.null_share_increase.warn,
                p.null_share_increase.alert)
            if "out_of_range_share" in d:
                add("quality", "out_of_range_share", d["out_of_range_share"], f, p.out_of_range_share.warn,
                    p.out_of_range_share.alert)
            if st == "alert":
                drifted.append(f)
            details["features"].append({"feature": f, "status": st, **{k: d.get(k) for k in (
                "psi", "ks", "null_share", "out_of_range_share", "distribution")}})
        sd = obs.score
        add("output", "score_psi", sd["psi"], "score", p.score_psi.warn, p.score_psi.alert)
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
            status=_band(rates.get(d, 0.0), p.review_rate.low, p.review_rate.high) if d == "review" else None)
    for k in ("over_capacity", "overrides_applied", "model_disagrees", "review_queue"):
        add("decision", k, dec_summary.get(k, 0))
    guard = dec_summary.get("guardrails") or {}
    add("decision", "hold_rate", rates.get("hold", 0.0))
    add("decision", "day_held", int(guard.get("status") in ("held", "rejected")),
        status="alert" if guard.get("status") in ("held", "rejected") else "ok")
    add("fallback", "fallback_share", obs.fallback_any / n if n else 0.0, "", p.fallback_share.warn,
        p.fallback_share.alert)
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


def with_rolling(today: pl.DataFrame, history: pl.DataFrame, days: int) -> pl.DataFrame:
    """Add rolling_mean / rolling_days: the mean of each metric over the dates present in the window."""
    both = pl.concat([history.select(list(METRIC_SCHEMA)), today.select(list(METRIC_SCHEMA))], how="vertical")
    roll = both.group_by("group", "metric", "feature").agg(pl.col("value").mean().alias("rolling_mean"),
                                                           pl.col("date").n_unique().cast(pl.Int32).alias("rolling_days"))
    return today.join(roll, on=["group", "metric", "feature"], how="left", maintain_order="left").with_columns(
        pl.lit(days, pl.Int32).alias("window_days"))


def alerts_of(metrics: pl.DataFrame, ds: dt.date, drifted: list[str], held_why: list[str] = ()) -> list[dict]:
    out = []
    for r in metrics.filter(pl.col("status") == "alert").iter_rows(named=True):
        what = f"{r['metric']}" + (f"[{r['feature']}]" if r["feature"] else "")
        if r["metric"] == "day_held":
            msg = f"{ds}: the day is held by the guardrails (nothing acted on until released): " + "; ".join(held_why)
        elif r["metric"] == "day_drifted":
            msg = f"{ds}: the day is drifted: feature(s) at alert {drifted or '[]'} (or the score)"
        elif r["alert"] is None:
            msg = f"{ds}: {what} = {r['value']:.4g} is outside its configured band"
        else:
            msg = f"{ds}: {what} = {r['value']:.4g} crossed its alert threshold ({r['alert']:.4g})"
        out.append({"date": ds.isoformat(), "group": r["group"], "metric": r["metric"], "feature": r["feature"],
                    "value": r["value"], "threshold": r["alert"], "message": msg})
    return out


# --------------------------------------------------------------------------- reports
REALIZED_COLUMNS = ("rows", "positives", "average_precision", "recall", "precision", "error_rate",
                    "frauds_approved_share")


def realized_rows(realized: pl.DataFrame | None) -> list[list]:
    """Realized metrics per scored day, role and model version (from the labels fed back so far)."""
    if realized is None or not realized.height:
        return []
    wide = (realized.filter(pl.col("metric").is_in(REALIZED_COLUMNS) & (pl.col("slice") == "") & (pl.col("role") != "review"))
            .pivot(on="metric", index=["date", "role", "model_version"], values="value")
            .sort(["date", "role"], descending=[True, False]))
    return [[r["date"], r["role"], f"v{r['model_version']}", *(fmt(r.get(c)) for c in REALIZED_COLUMNS)]
            for r in wide.iter_rows(named=True)]


def _figures(ds: dt.date, metrics: pl.DataFrame, details: dict, history: pl.DataFrame
             ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The day's charts as inline SVG (pipelines.core.charts): PSI per feature sorted by drift with
    the warn and alert thresholds, the score's distribution against the reference, and the trends
    of the recent days (volume, decision rates, fallback share, score PSI, features at alert) with
    their thresholds."""
    from pipelines.core import charts

    imgs, trends = [], []
    feats = sorted(details["features"], key=lambda r: -(r["psi"] or 0))
    psi = metrics.filter(pl.col("metric") == "psi")
    if feats:
        imgs.append(("PSI per feature", charts.svg_uri(charts.hbars(
            [f["feature"] for f in feats], [f["psi"] for f in feats], "Input drift: PSI per feature (sorted)", "PSI",
            [("warn", psi["warn"].max()), ("alert", psi["alert"].max())]))))
    if details.get("score_hist") is not None:
        imgs.append(("Confidence histogram", charts.svg_uri(charts.histograms(
            list(details["score_edges"]), [("reference", list(details["ref_hist"])), (str(ds), list(details["score_hist"]))],
            "Score distribution, share of rows (log scale): reference vs the day", "score", log=True))))
    if history.height:
        days = sorted(history["date"].unique().to_list())
        for metric, title, percent in (("rows", "volume (rows)", False), ("review_rate", "review rate", True),
                                       ("block_rate", "block rate", True), ("fallback_share", "rows on a fallback", True),
                                       ("score_psi", "score PSI", False), ("drifted_features", "features at alert", False)):
            h = history.filter(pl.col("metric") == metric)
            if not h.height:
                continue
            by_day = dict(zip(h["date"].to_list(), h["value"].to_list()))
            today = metrics.filter(pl.col("metric") == metric)
            marks = [(k, today[k][0] if today.height else None) for k in ("warn", "alert")]
            trends.append((title, charts.svg_uri(charts.trend(
                [(str(d), by_day.get(d)) for d in days], f"{title}, last {len(days)} days", marks, percent=percent))))
    return imgs, trends


def feature_cards(feats: list[dict], p: MonitorParams) -> list[dict]:
    """Per feature, sorted by drift: the share of rows per reference bin (reference vs the day), the
    tests used with their values and thresholds, and the status."""
    from pipelines.core import charts

    cards = []
    for f in feats:
        dist = f.get("distribution")
        if not dist:
            continue
        tests = [f"PSI {fmt(f['psi'])} (warn {p.psi.warn:g}, alert {p.psi.alert:g})"]
        if f.get("ks") is not None:
            tests.append(f"KS {fmt(f['ks'])} (warn {p.ks.warn:g}, alert {p.ks.alert:g})")
        cards.append({"feature": f["feature"], "status": f.get("status") or "ok", "tests": " · ".join(tests),
                      "src": charts.svg_uri(charts.grouped_bars(
                          dist["bins"], [("reference", dist["reference"]), ("this day", dist["current"])],
                          f"{f['feature']}: share of rows per reference bin"))})
    return cards


MODEL_FIELDS = (("model_name", "model"), ("model_version", "version"), ("scored_by", "scored by"),
                ("threshold", "operating threshold"), ("run_id", "MLflow run"),
                ("model_sha256", "model sha256"), ("spec_hash", "feature spec"), ("fallback", "fallback"),
                ("reason", "why this model"))


def model_card(model_doc: dict) -> list[tuple[str, str]]:
    """The model served, as labelled fields (the ones it has)."""
    out = []
    for key, label in MODEL_FIELDS:
        v = model_doc.get(key)
        if v in (None, "", [], {}):
            continue
        out.append((label, fmt(v) if isinstance(v, float) else (", ".join(map(str, v)) if isinstance(v, list) else str(v))))
    ref = model_doc.get("reference_profile") or {}
    if ref:
        out.append(("reference profile", f"{ref.get('window') or 'test window'}: {ref.get('rows')} rows, "
                                         f"{len(ref.get('features') or {})} features"))
    return out


def report_html(ds: dt.date, metrics: pl.DataFrame, perf: pl.DataFrame, details: dict, alerts: list[dict],
                model_doc: dict, history: pl.DataFrame, summary: dict, realized: pl.DataFrame | None = None,
                index_link: str = "../index.html", *, p: MonitorParams) -> str:
    """The day's monitoring page (templates/monitor_day.html.j2); `p`: the monitor params (thresholds)."""
    feats = sorted(details["features"], key=lambda r: -(r["psi"] or 0))
    st = {r["metric"]: r for r in metrics.filter(pl.col("feature") == "").iter_rows(named=True)}
    drift = st.get("day_drifted", {}).get("value")
    f = lambda v: "" if v is None else fmt(v)  # noqa: E731
    kpis = [("rows", int(st["rows"]["value"])), ("drifted", "yes" if drift else "no"),
            ("features at alert", int(st.get("drifted_features", {}).get("value") or 0)),
            ("review rate", f"{summary.get('rates', {}).get('review', 0):.2%}"),
            ("block rate", f"{summary.get('rates', {}).get('block', 0):.2%}"),
            ("fallback rows", f"{st['fallback_share']['value']:.2%}"), ("alerts", len(alerts))]
    metric_rows = [{"group": r["group"], "metric": r["metric"], "feature": r["feature"], "value": f(r["value"]),
                    "rolling": f"{f(r['rolling_mean'])} ({r['rolling_days']}d)", "warn": f(r["warn"]), "alert": f(r["alert"]),
                    "status": r["status"]} for r in metrics.filter(pl.col("group") != "drift").iter_rows(named=True)]
    ref = model_doc.get("reference_profile") or {}
    return render("monitor_day.html.j2", ds=ds, drifted=bool(drift), reference={"window": ref.get("window"),
                  "rows": ref.get("rows")}, index_link=index_link, kpis=kpis, alerts=alerts,
                  **dict(zip(("images", "trends"), _figures(ds, metrics, details, history))),
                  feature_rows=[[x["feature"], x.get("status") or "ok", f(x["psi"]), f(x["ks"]), f(x["null_share"]),
                               f(x["out_of_range_share"])] for x in feats],
                  feature_cards=feature_cards(feats, p), psi_limits=(p.psi.warn, p.psi.alert),
                  ks_limits=(p.ks.warn, p.ks.alert), model_card=model_card(model_doc),
                  metric_rows=metric_rows, realized_cols=list(REALIZED_COLUMNS), realized_rows=realized_rows(realized),
                  perf_rows=[[r["metric"], f(r["value"])] for r in perf.iter_rows(named=True)])


# --------------------------------------------------------------------------- entry point
HISTORY_DAYS = 30          # the report's history: monitoring metrics and realized performance of the last 30 days


def run_key(params, ds: dt.date) -> dict | None:
    """What a date's monitoring is made of: the day's predictions (the features' counts score
    published with them included) and decisions (every object their records name), the earlier days' monitoring metrics (the rolling window, the
    report's history), the realized performance fed back for the last 30 days, the monitor and
    alerts settings, the code and the libraries. Kept as `run` in the monitoring record: a re-run
    with the same key recomputes nothing. None when an input has no trusted record."""
    from dataclasses import asdict

    store, d = params.storage, ds.isoformat()
    reader = lineage.Reader()
    days = [ds - dt.timedelta(days=i) for i in range(HISTORY_DAYS - 1, 0, -1)]
    try:
        inputs: dict[str, str | None] = {}
        for kind in ("predictions", "decisions"):
            inputs.update(reader.record(store.uri(kind, date=d)).get("objects") or {})
        inputs.update(lineage.committed([store.uri("monitoring", date=x.isoformat()) for x in days]))
        if "realized" in store.layout:
            for x in [*days, ds]:
                fb, real = store.uri("feedback", date=x.isoformat()), store.uri("realized", date=x.isoformat())
                try:
                    inputs[real] = (reader.record(fb).get("objects") or {}).get(real)
                except lineage.NotCommitted:
                    inputs[real] = None
    except (storage.MissingObject, lineage.StaleInput):
        return None
    return lineage.stage_key("monitor", inputs, {"monitor": asdict(params.monitor), "alerts": asdict(params.alerts)},
                             "pipelines.monitor", ("polars", "pyarrow", "numpy"))


def monitor_day(params, ds: dt.date, snapshot: "str | storage.Publisher | None" = None, recompute: bool = False,
                shard: Shard | None = None, count: int = 1) -> dict:
    """Monitor one date: metrics, alerts, the day's report and the index. A date monitored from the
    same inputs, settings and code (run_key) is not monitored again unless `recompute`. With `shard`
    only the shard's batches are observed and published (core/shards.py); with `count` > 1 the day's
    observation is merged from its shards (those not found made here): the same bytes."""
    p, store = params.monitor, params.storage
    d = ds.isoformat()
    key = run_key(params, ds)
    done = lineage.reusable(store.uri("monitoring", date=d), key, snapshot, recompute) is not None
    if done and shard is not None:
        log.info("monitor %s shard %s: the date is monitored already from the same inputs; nothing to do", d, shard)
        return {"skipped": True}
    if done:
        try:
            record = storage.read_json(store.uri("alerts", date=d))
            log.info("monitor %s: unchanged since its record (the same predictions, decisions, earlier "
                     "days and settings: key %s); nothing recomputed -> %s", d, key["key"][:12], record["report"])
            return {**record, "unchanged": True}
        except storage.MissingObject:
            pass
    reader = lineage.Reader()
    with storage.scratch_dir("monitor") as tmp:
        pred_uri, dec_uri = store.uri("predictions", date=d), store.uri("decisions", date=d)
        try:
            model_doc = reader.read_json(store.uri("scored_model", date=d), primary=pred_uri)
            dec_summary = reader.read_json(store.uri("decision_summary", date=d), primary=dec_uri)
            pred_path = reader.fetch(pred_uri, tmp)
            observed = reader.read_json(store.uri("features_observed", date=d), primary=pred_uri)
            stats = storage.read_json(store.uri("scoring_stats", date=d))     # timings: not part of any record
        except (lineage.NotCommitted, storage.MissingObject) as exc:
            raise MonitorError(f"monitor {d}: {exc} (run score and decide for {d} first)") from None
        except lineage.StaleInput as exc:
            raise MonitorError(f"monitor {d}: {exc}; nothing monitored") from None
        import pyarrow.parquet as pq

        profile = model_doc.get("reference_profile")

        def batches(k: Shard | None) -> Observer:
            return observe(observed, storage.iter_parquet(pred_path, ["score", "threshold", "fallback"]), profile, p, k)

        if shard is not None:
            with storage.publishing(store.lake, snapshot) as pub:
                return _shard(params, ds, pub, reader, key, shard, batches, recompute)
        merged = []
        if count > 1 and key is not None and not storage.snapshotting(snapshot):
            with storage.publishing(store.lake, snapshot) as pub:
                merged = [_shard(params, ds, pub, reader, key, k, batches, recompute) for k in shards.all_of(count)]
            own = lineage.Reader()               # the shards are not inputs of the date's record
            states = [own.read_json(r["primary"], primary=r["primary"]) for r in merged]
            shards.check_batches([i for st in states for i in st["batches"]], sum(st["rows"] for st in states),
                                 pq.ParquetFile(str(pred_path)).metadata.num_rows, f"monitor {d} (predictions)")
            obs = Observer.merged(profile, p, states, observed).result()
            log.info("monitor %s: observed in %d shards", d, count)
        else:
            obs = batches(None).result()
    rows, details = day_metrics(ds, obs, dec_summary, model_doc, p)
    today = pl.DataFrame(rows, schema=METRIC_SCHEMA)
    window = [ds - dt.timedelta(days=i) for i in range(p.rolling_days - 1, 0, -1)]
    metrics = with_rolling(today, read_metrics(store, "monitoring", window), p.rolling_days)
    perf = with_rolling(pl.DataFrame(perf_rows(ds, stats), schema=METRIC_SCHEMA),
                        read_metrics(store, "monitoring_perf", window), p.rolling_days)
    alerts = alerts_of(metrics, ds, details["drifted_features"], (dec_summary.get("guardrails") or {}).get("breaches", []))
    with storage.publishing(store.lake, snapshot) as pub:
        record = _publish_day(pub, reader, params, ds, metrics, perf, alerts, details, model_doc, dec_summary, key)
        if merged:                      # merged and published: the shards have served
            shards.clear(store, "monitor", ds, count)
        return record


def _shard(params, ds: dt.date, pub: storage.Publisher, reader: lineage.Reader, key: dict | None, shard: Shard,
           batches, recompute: bool = False) -> dict:
    """One shard's observation of the day (batch i to shard i mod N: counts), a partition of its own;
    kept when one with the same key (the date's run key and k/N) is there. Returns its record."""
    primary = f"{shards.folder(params.storage, 'monitor', ds, shard)}/observed.json"
    skey, rec = shards.found(log, "monitor", ds, shard, primary, key, recompute)
    if rec is not None:
        return rec
    obs = batches(shard)
    part = pub.partition(primary, "monitor", inputs=reader.consumed, extra={"run": skey, "shard": str(shard)})
    part.put_json(primary, obs.state())
    rec = part.commit()
    log.info("monitor %s shard %s: %d prediction rows observed -> %s", ds, shard, obs.rows, primary)
    return rec


def _publish_day(pub: storage.Publisher, reader: lineage.Reader, params, ds: dt.date, metrics: pl.DataFrame,
                 perf: pl.DataFrame, alerts: list[dict], details: dict, model_doc: dict, dec_summary: dict,
                 key: dict | None = None) -> dict:
    store = params.storage
    d = ds.isoformat()
    part = pub.partition(store.uri("monitoring", date=d), "monitor", inputs=reader.consumed,
                         extra={"run": key} if key else None)
    part.put(store.uri("monitoring_perf", date=d), storage.parquet_bytes(perf), volatile=True)   # timings
    report_uri = store.uri("monitor_report", date=d)
    record = {"date": d, "alerts": alerts, "drifted": bool(metrics.filter(pl.col("metric") == "day_drifted")["value"].sum()),
              "drifted_features": details["drifted_features"], "report": report_uri}
    url = alerts_mod.webhook_url(params.alerts.webhook_url)
    if alerts and url:
        record["webhook"] = alerts_mod.send_webhook(url, {"source": "fraudops.monitor", **record},
                                                    params.alerts.timeout_s)
    part.put_json(store.uri("alerts", date=d), record, volatile=True)      # the webhook's answer varies
    recent = read_metrics(store, "monitoring", [ds - dt.timedelta(days=i) for i in range(HISTORY_DAYS - 1, 0, -1)])
    history = pl.concat([recent.select(list(METRIC_SCHEMA)), metrics.select(list(METRIC_SCHEMA))])
    realized = read_realized(store, [ds - dt.timedelta(days=i) for i in range(HISTORY_DAYS - 1, -1, -1)]) \
        if "realized" in store.layout else None
    pub.put(report_uri, report_html(ds, metrics, perf, details, alerts, model_doc, history, dec_summary,
                                    realized, link(store, "monitor_report", "monitor_index", ds), p=params.monitor).encode(),
            "text/html")              # a view: re-rendered as labels land, so not part of the record
    part.put_parquet(store.uri("monitoring", date=d), metrics)
    part.commit()
    pub.put(store.uri("monitor_index"), index_html(store, dates_present(store, "monitoring")).encode(), "text/html")
    return record


def main(argv: list[str]) -> int:
    ap = stage_parser("monitor", __doc__)
    ap.add_argument("--recompute", action="store_true",
                    help="monitor even a date already monitored from the same inputs, settings and code")
    shards.add_option(ap)
    args = ap.parse_args(argv)
    params, days = resolve(args)
    count = params.shards.count if not args.snapshot else 1      # a DVC output: one process, no shards
    shards.checked(args.shard, count, days, "monitor")
    with storage.Publisher(params.storage.lake, args.snapshot) as pub:
        for ds in progress(days, "monitor"):
            rec = monitor_day(params, ds, pub, args.recompute, args.shard, count)
            if args.shard is not None:
                print(json.dumps({"date": ds.isoformat(), "shard": str(args.shard)}))
                continue
            (log.warning if rec["alerts"] else log.info)(
                "monitor %s: %s, %d alert(s)%s -> %s", ds, "DRIFT" if rec["drifted"] else "stable",
                len(rec["alerts"]), f" (features {rec['drifted_features']})" if rec["drifted_features"] else "",
                rec["report"])
            print(json.dumps({"date": rec["date"], "drifted": rec["drifted"], "alerts": len(rec["alerts"]),
                              "report": rec["report"]}, sort_keys=True))
    return 0
