"""Stage `features`: point-in-time correct features from validated partitions (polars).

One function, `compute_features`, serves training (a history range) and scoring (one day plus the
look-back it needs); `load_inputs` reads exactly the partitions a range needs. The spec lives in
params.yaml `features`.

Point-in-time rules, for an event at time t of entity e:
  * rolling `<entity>_<value>_<agg>_<N>d` / `<entity>_count_<N>d`: events of e with ts in
    [t - N days, t) (strictly before t; events at the same instant are excluded). Empty window:
    count and sum 0, mean/max/min null; std null below two events.
  * target rate `<entity>_fraud_rate_<N>d`: the label mean of e's events with ts in
    [t - D - N, t - D) whose label was available strictly before t (available_at < t), D = the
    label delay; `<entity>_labeled_count_<N>d` counts them. Null when none.
  * `<entity>_secs_since_last`: seconds since e's previous event strictly before t, looked back at
    most max(windows_days) days (null beyond).
  * calendar: `is_weekend`, `is_night` (hour in night_hours); ratios: numerator / denominator
    (null when the denominator is null or 0); `<categorical>_code`: index in `categories`
    (null when unknown).

Data contract: input = validated transactions (event_id, event_ts, entities, numerics,
categoricals) and canonical labels (event_id, label, available_at). Output = one row per input event
whose date is in [start, end]: key columns (event_id, event_ts, entities), then the features, in
the order of `feature_names(spec)`, sorted by (event_ts, event_id). No rows are dropped.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path

import polars as pl

from pipelines import storage
from pipelines.cli import StageFailed, resolve, stage_parser
from pipelines.config import FeatureParams, date_range

log = logging.getLogger("pipelines.features")
US_PER_DAY = 86_400_000_000


class MissingHistory(RuntimeError):
    """A partition the look-back needs is missing (e.g. blocked by validation)."""


# --------------------------------------------------------------------------- the spec
def feature_names(spec: FeatureParams, numerics: list[str]) -> list[str]:
    names: list[str] = list(numerics)
    for ent, r in spec.rolling.items():
        for w in spec.windows_days:
            for agg in r.aggs:
                names.append(f"{ent}_count_{w}d" if agg == "count" else f"{ent}_{r.value}_{agg}_{w}d")
    for ent, windows in spec.target_rate.items():
        for w in windows:
            names += [f"{ent}_fraud_rate_{w}d", f"{ent}_labeled_count_{w}d"]
    names += [f"{ent}_secs_since_last" for ent in spec.time_since_last]
    if spec.weekend:
        names.append("is_weekend")
    if spec.night_hours:
        names.append("is_night")
    names += [r.name for r in spec.ratios]
    names += [f"{c}_code" for c in spec.categoricals]
    return names


def spec_hash(spec: FeatureParams) -> str:
    import dataclasses

    blob = json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def code_version() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


# --------------------------------------------------------------------------- the core
def _target_rates(ev: pl.DataFrame, ent: str, windows: tuple[int, ...], delay_days: int) -> pl.DataFrame:
    """Label-delayed fraud rate per event, exact under late labels.

    Event j counts for query time t iff max(ts_j + D, available_at_j) < t <= ts_j + D + N, i.e. ts_j
    in [t-D-N, t-D) and its label known before t. Each labelled event enters the window at
    `enter` and leaves after `leave`; cumulative sums of entries and exits strictly before t
    (as-of joins, exact matches excluded) give the window's label sum and count.
    """
    d = delay_days * US_PER_DAY
    lab = ev.filter(pl.col("label").is_not_null()).select(
        ent, pl.col("label").cast(pl.Float64),
        pl.max_horizontal(pl.col("__t") + d, pl.col("available_at").cast(pl.Int64)).alias("enter"),
        (pl.col("__t") + d).alias("__td"))
    q = ev.select("__i", ent, "__t").sort("__t")
    out = q
    for w in windows:
        inside = lab.with_columns((pl.col("__td") + w * US_PER_DAY).alias("leave")).filter(pl.col("enter") < pl.col("leave"))
        sides = []
        for side in ("enter", "leave"):   # running label sum/count of the entries (exits) strictly before t
            cum = (inside.select(ent, pl.col(side).alias("__k"), "label").sort("__k")
                   .with_columns(pl.col("label").cum_sum().over(ent).alias(f"s_{side}"),
                                 pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(ent).alias(f"n_{side}"))
                   .drop("label"))
            sides.append(q.join_asof(cum, left_on="__t", right_on="__k", by=ent, strategy="backward",
                                     allow_exact_matches=False, check_sortedness=False)
                         .select("__i", f"s_{side}", f"n_{side}"))
        both = sides[0].join(sides[1], on="__i").with_columns(pl.exclude("__i").fill_null(0))
        n = pl.col("n_enter") - pl.col("n_leave")
        s_ = pl.col("s_enter") - pl.col("s_leave")
        out = out.join(both.select("__i", pl.when(n > 0).then(s_ / n).otherwise(None).alias(f"{ent}_fraud_rate_{w}d"),
                                   n.cast(pl.Int32).alias(f"{ent}_labeled_count_{w}d")), on="__i")
    return out.drop(ent, "__t")


def compute_features(events: pl.DataFrame, labels: pl.DataFrame, spec: FeatureParams, start: dt.date,
                     end: dt.date, entities: list[str], numerics: list[str]) -> pl.DataFrame:
    """Features for the events whose date is in [start, end], from `events` (which must hold the
    look-back) and `labels`. Pure: same inputs, same output, whatever else `events` holds."""
    ev = (events.sort(["event_ts", "event_id"])
          .join(labels.select("event_id", "label", "available_at"), on="event_id", how="left", maintain_order="left")
          .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("__i"),
                        pl.col("event_ts").cast(pl.Int64).alias("__t"), pl.lit(1, pl.Int32).alias("__one")))
    exprs: list[pl.Expr] = []
    for ent, r in spec.rolling.items():
        scale = 10 ** r.decimals
        fixed = (pl.col(r.value) * scale).round().cast(pl.Int64)          # exact, associative sums
        for w in spec.windows_days:
            win = dict(by="event_ts", window_size=f"{w}d", closed="left")
            n = pl.col("__one").rolling_sum_by(**win).fill_null(0).cast(pl.Int64)
            s_ = fixed.rolling_sum_by(**win).fill_null(0)
            for agg in r.aggs:
                name = f"{ent}_count_{w}d" if agg == "count" else f"{ent}_{r.value}_{agg}_{w}d"
                if agg == "count":
                    e = n.cast(pl.Int32)
                elif agg == "sum":
                    e = s_ / scale
                elif agg == "mean":
                    e = pl.when(n > 0).then(s_ / n / scale)
                elif agg == "std":   # sample std from exact integer moments (Int128: no overflow)
                    q = (fixed.cast(pl.Int128) * fixed.cast(pl.Int128)).rolling_sum_by(**win).fill_null(0)
                    num = n.cast(pl.Int128) * q - s_.cast(pl.Int128) * s_.cast(pl.Int128)
                    var = num.cast(pl.Float64) / (n * (n - 1)).cast(pl.Float64)
                    e = pl.when(n >= 2).then(var.clip(lower_bound=0).sqrt() / scale)
                else:                # max / min need no arithmetic: exact as they are
                    e = getattr(pl.col(r.value), f"rolling_{agg}_by")(**win)
                exprs.append(e.over(ent).alias(name))
    horizon = f"{max(spec.windows_days)}d"
    for ent in spec.time_since_last:
        prev = pl.col("__t").rolling_max_by("event_ts", window_size=horizon, closed="left").over(ent)
        exprs.append(((pl.col("__t") - prev) / 1e6).alias(f"{ent}_secs_since_last"))
    if spec.weekend:
        exprs.append((pl.col("event_ts").dt.weekday() >= 6).cast(pl.Int8).alias("is_weekend"))
    if spec.night_hours:
        h0, h1 = spec.night_hours
        exprs.append(pl.col("event_ts").dt.hour().is_between(h0, h1, closed="left").cast(pl.Int8).alias("is_night"))
    cat_index = {c: i for i, c in enumerate(spec.categories)}
    for c in spec.categoricals:
        exprs.append(pl.col(c).replace_strict(cat_index, default=None, return_dtype=pl.Int16).alias(f"{c}_code"))
    feats = ev.with_columns(exprs)
    for ent, windows in spec.target_rate.items():
        if windows:
            feats = feats.join(_target_rates(ev, ent, windows, spec.label_delay_days), on="__i", how="left",
                               maintain_order="left")
    ratio_exprs = [pl.when(pl.col(r.denominator).is_null() | (pl.col(r.denominator) == 0)).then(None)
                   .otherwise(pl.col(r.numerator) / pl.col(r.denominator)).alias(r.name) for r in spec.ratios]
    feats = feats.with_columns(ratio_exprs)
    lo = dt.datetime.combine(start, dt.time())
    hi = dt.datetime.combine(end + dt.timedelta(days=1), dt.time())
    keys = ["event_id", "event_ts", *entities]
    return (feats.filter((pl.col("event_ts") >= lo) & (pl.col("event_ts") < hi))
            .select(*keys, *feature_names(spec, numerics)).sort(["event_ts", "event_id"]))


# --------------------------------------------------------------------------- I/O
def load_inputs(params, start: dt.date, end: dt.date) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """Validated transactions for [start - lookback, end] and labels landed in that range.
    A missing partition inside the range (after the dataset's first date) is an error unless
    features.missing_history is warn; returns the list of missing partitions too."""
    spec, store = params.features, params.storage
    tx, lb = params.dataset("transactions"), params.dataset("labels")
    first = start - dt.timedelta(days=spec.lookback_days)
    frames, label_frames, missing = [], [], []
    for day in date_range(first, end):
        if day >= tx.first_date:
            uri = store.uri("validated", dataset="transactions", date=day.isoformat())
            try:
                frames.append(storage.read_parquet(uri))
            except storage.MissingObject:
                missing.append(uri)
        if day >= lb.first_date:
            uri = store.uri("canonical", dataset="labels", date=day.isoformat())
            try:
                label_frames.append(storage.read_parquet(uri))
            except storage.MissingObject:
                missing.append(uri)
    target_missing = [u for u in missing if any(f"date={d.isoformat()}" in u and "/transactions/" in u
                                                for d in date_range(start, end))]
    if target_missing:
        raise MissingHistory(f"features {start}..{end}: validated partition(s) missing for the target dates: "
                             f"{target_missing} (blocked or not yet validated); nothing published, the run fails")
    if missing and spec.missing_history == "fail":
        shown = missing if len(missing) <= 4 else [*missing[:2], f"... {len(missing) - 4} more ...", *missing[-2:]]
        raise MissingHistory(f"features {start}..{end}: {len(missing)} look-back partition(s) missing: {shown} "
                             f"(run ingest/validate with --with-lookback); set "
                             f"features.missing_history: warn to accept thinner history; nothing published, the run fails")
    for u in missing:
        log.warning("look-back partition missing, features computed without it: %s", u)
    if not frames:
        raise MissingHistory(f"features {start}..{end}: no validated transactions at all")
    labels = pl.concat(label_frames) if label_frames else pl.DataFrame(
        schema={"event_id": pl.String, "label": pl.Int8, "label_date": pl.Date, "available_at": pl.Datetime("us")})
    return pl.concat(frames), labels, missing


def manifest(df: pl.DataFrame, spec: FeatureParams, numerics: list[str], entities: list[str], day: dt.date,
             missing: list[str]) -> dict:
    names = feature_names(spec, numerics)
    return {"date": day.isoformat(), "rows": df.height, "feature_columns": names,
            "key_columns": ["event_id", "event_ts", *entities],
            "dtypes": {c: str(df.schema[c]) for c in df.columns}, "spec_hash": spec_hash(spec),
            "code_version": code_version(), "lookback_days": spec.lookback_days, "missing_history": missing}


def main(argv: list[str]) -> int:
    from pipelines.validate import load_suite, validate_frame

    args = stage_parser("features", __doc__).parse_args(argv)
    params, days = resolve(args)
    spec, store = params.features, params.storage
    cols = params.dataset("transactions").columns
    entities, numerics = list(cols.entities), list(cols.numerics)
    suite_path = params.validate.suites.get("features")
    suite = load_suite(suite_path) if suite_path and Path(suite_path).exists() else None
    if suite is None:
        log.warning("no features suite at %s: feature partitions are published unvalidated", suite_path)
    start, end = min(days), max(days)
    events, labels, missing = load_inputs(params, start, end)
    feats = compute_features(events, labels, spec, start, end, entities, numerics)
    pub = storage.Publisher(store.lake, args.snapshot)
    failures = []
    for day in days:
        part = feats.filter(pl.col("event_ts").dt.date() == day)
        if suite is not None:
            v = validate_frame(part, suite, "features", day, 0.0, allow_quarantine=False)
            if v.blocked:
                pub.remove(store.uri("features", date=day.isoformat()))
                failures.append(f"features {day}: blocked by {suite_path}: " + "; ".join(v.results["reasons"]))
                continue
        pub.put_parquet(store.uri("features", date=day.isoformat()), part)
        pub.put_json(store.uri("features_manifest", date=day.isoformat()),
                     manifest(part, spec, numerics, entities, day, missing))
        log.info("features %s: %d rows, %d features", day, part.height, len(feature_names(spec, numerics)))
    if failures:
        raise StageFailed("\n  ".join(failures))
    return 0
