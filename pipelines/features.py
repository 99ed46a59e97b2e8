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
Numerics keep Float64; derived features are Float32 (what XGBoost consumes), counts Int32, flags
Int8, category codes Int16.

How it is fast: each entity gets its own stretch of one virtual timeline (entities further apart
than any window), so every rolling aggregate is one ungrouped O(n) pass over data sorted once per
entity, and label-delayed rates are binary searches into running sums of label entries/exits on
that same timeline. Sums run in fixed point, so
results are bit-identical whatever history precedes a window (training == scoring).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path

import polars as pl

from pipelines.core import lineage, storage
from pipelines.core.cli import StageFailed, progress, resolve, stage_parser
from pipelines.core.config import FeatureParams, date_range

log = logging.getLogger("pipelines.features")
US_PER_DAY = 86_400_000_000
VT_LIMIT = 2**62          # virtual timelines stay below this (Int64); more entities -> more buckets


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
def _virtual_time(frame: pl.DataFrame, ent: str, pad_us: int) -> tuple[pl.DataFrame, int]:
    """Give each entity its own stretch of one timeline: vt = code * span + (t - t0), with span
    longer than the data plus `pad_us`, so that windows (and labels) of one entity never reach
    the next. Then one ungrouped, sorted pass replaces a group-by per expression.

    Returns the frame with `__vt` and `__bucket`: entities are split into buckets when
    codes * span could overflow Int64 (each bucket is its own timeline)."""
    t0 = frame["__t"].min() or 0
    span = (frame["__t"].max() or 0) - t0 + pad_us + 1
    codes = frame[_code(ent)].cast(pl.Int64)
    n = int(codes.max() or 0) + 1
    buckets = max(1, -(-(n * span) // VT_LIMIT))
    out = frame.with_columns(((codes // buckets) * span + pl.col("__t") - t0).alias("__vt"),
                             (codes % buckets).alias("__bucket"))
    return out, buckets


def _is_sorted(events: pl.DataFrame) -> bool:
    """Sorted by (event_ts, event_id)? O(n), no copy of the frame."""
    ts, eid = pl.col("event_ts"), pl.col("event_id")
    ok = (ts > ts.shift(1)) | ((ts == ts.shift(1)) & (eid > eid.shift(1))) | ts.shift(1).is_null()
    return bool(events.select(ok.all()).item())


def _narrow_floats(frame: pl.DataFrame) -> pl.DataFrame:
    """Derived features are stored as Float32 (what XGBoost consumes); computed in Float64 first."""
    return frame.with_columns(pl.col(pl.Float64).cast(pl.Float32))


def _code(ent: str) -> str:
    return f"__code_{ent}"


def _per_bucket(frame: pl.DataFrame, buckets: int) -> list[pl.DataFrame]:
    if buckets == 1:
        return [frame]
    return [frame.filter(pl.col("__bucket") == b) for b in range(buckets)]


def _rolling_exprs(ent: str, r, windows: tuple[int, ...], wide) -> list[list[pl.Expr]]:
    """Per window, the rolling aggregates of `r.value` over [t - N, t) on the sorted timeline."""
    out = []
    scale = 10 ** r.decimals
    fixed = (pl.col(r.value) * scale).round().cast(pl.Int64)          # exact, associative sums
    for w in windows:
        win = dict(by="__vt", window_size=f"{w * US_PER_DAY}i", closed="left")
        n = pl.col("__one").rolling_sum_by(**win).fill_null(0).cast(pl.Int64)
        s_ = fixed.rolling_sum_by(**win).fill_null(0)
        exprs = []
        for agg in r.aggs:
            name = f"{ent}_count_{w}d" if agg == "count" else f"{ent}_{r.value}_{agg}_{w}d"
            if agg == "count":
                e = n.cast(pl.Int32)
            elif agg == "sum":
                e = s_ / scale
            elif agg == "mean":
                e = pl.when(n > 0).then(s_ / n / scale)
            elif agg == "std":   # sample std from exact integer moments
                q = (fixed.cast(wide) * fixed.cast(wide)).rolling_sum_by(**win).fill_null(0)
                num = n.cast(pl.Int128) * q.cast(pl.Int128) - s_.cast(pl.Int128) * s_.cast(pl.Int128)
                var = num.cast(pl.Float64) / (n * (n - 1)).cast(pl.Float64)
                e = pl.when(n >= 2).then(var.clip(lower_bound=0).sqrt() / scale)
            else:                # max / min need no arithmetic: exact as they are
                e = getattr(pl.col(r.value), f"rolling_{agg}_by")(**win)
            exprs.append((e if agg == "count" else e.cast(pl.Float32)).alias(name))
        out.append(exprs)
    return out


def _running(keys: pl.Series, labels: pl.Series, q: pl.DataFrame) -> pl.DataFrame:
    """For each query (sorted __vt), the label sum `s` and count `n` of the keys strictly before it."""
    order = keys.arg_sort()
    n = keys.gather(order).search_sorted(q["__vt"], side="left").cast(pl.Int64)   # keys < t
    cum = labels.gather(order).cum_sum()
    s_ = pl.select(pl.when(pl.lit(n) > 0).then(pl.lit(cum).gather((pl.lit(n) - 1).clip(0))).otherwise(0)).to_series()
    return pl.DataFrame({"s": s_, "n": n})


def _rate_columns(part: pl.DataFrame, ent: str, windows: tuple[int, ...], delay_days: int) -> list[pl.Series]:
    """Label-delayed fraud rate per event (part is sorted by __vt), exact under late labels.

    Event j counts for query time t iff max(ts_j + D, available_at_j) < t <= ts_j + D + N, i.e. ts_j
    in [t-D-N, t-D) and its label known before t. Each labelled event enters at `enter` and leaves
    after `leave` = max(ts_j + D + N, enter) (a label known only after its window closed enters and
    leaves at once: net zero). On the entity's timeline, running sums of entries and exits strictly
    before t (binary search, exact matches excluded) give the window's label sum and count."""
    d = delay_days * US_PER_DAY
    shift = pl.col("__vt") - pl.col("__t")                          # entity offset on the timeline
    lab = part.filter(pl.col("label").is_not_null()).select(
        pl.col("label").cast(pl.Int64),
        (shift + pl.max_horizontal(pl.col("__t") + d, pl.col("available_at").cast(pl.Int64))).alias("enter"),
        (shift + pl.col("__t") + d).alias("due"))
    q = part.select("__vt")
    entered = _running(lab["enter"], lab["label"], q)             # the same for every window
    cols = []
    for w in windows:
        leave = lab.select(pl.max_horizontal(pl.col("due") + w * US_PER_DAY, pl.col("enter"))).to_series()
        left = _running(leave, lab["label"], q)
        n = entered["n"] - left["n"]
        s_ = entered["s"] - left["s"]
        rate = pl.select(pl.when(n > 0).then(s_ / n).otherwise(None).cast(pl.Float32)).to_series()
        cols += [rate.alias(f"{ent}_fraud_rate_{w}d"), n.cast(pl.Int32).alias(f"{ent}_labeled_count_{w}d")]
    return cols


def _entity_block(base: pl.DataFrame, ent: str, spec: FeatureParams) -> pl.DataFrame:
    """Every feature of one entity, in base's row order: one sort onto the entity's virtual
    timeline, then one O(n) pass per rolling aggregate and one binary search per rate window."""
    r = spec.rolling.get(ent)
    rates = spec.target_rate.get(ent, ())
    since = ent in spec.time_since_last
    horizon = max(spec.windows_days) * US_PER_DAY
    pad = max(horizon, (spec.label_delay_days + max(rates, default=0)) * US_PER_DAY)
    need = ["__t", _code(ent), *([r.value] if r else []), *(["label", "available_at"] if rates else [])]
    vt, buckets = _virtual_time(base.select(need).with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("__i")),
                                ent, pad)
    del need
    wide = pl.Int64
    if r and "std" in r.aggs:   # sums of squares are exact in Int64 unless they could overflow
        top = (base[r.value].abs().max() or 0) * 10 ** r.decimals
        wide = pl.Int64 if (top + 1) ** 2 * max(base.height, 1) < 2**63 else pl.Int128
    pending = list(_per_bucket(vt, buckets))
    del vt                                       # only the sorted copies below stay alive
    parts = []
    while pending:
        part = pending.pop(0).drop(_code(ent), "__bucket").sort("__vt")
        back = part["__i"].arg_sort()            # timeline order -> row order, applied column by column
        cols: list[pl.Series] = [part["__i"].gather(back)]
        if rates:                                # first, then the label columns can go
            cols.extend(c.gather(back) for c in _rate_columns(part, ent, rates, spec.label_delay_days))
            part = part.drop("label", "available_at", "__t")
        part = part.drop("__t", strict=False).with_columns(pl.lit(1, pl.Int32).alias("__one"))
        for exprs in (_rolling_exprs(ent, r, spec.windows_days, wide) if r else []):
            cols.extend(c.gather(back) for c in part.select(exprs).get_columns())
        if since:
            prev = pl.col("__vt").rolling_max_by("__vt", window_size=f"{horizon}i", closed="left")
            gap = part.select(((pl.col("__vt") - prev) / 1e6).alias(f"{ent}_secs_since_last"))
            cols.extend(c.gather(back) for c in _narrow_floats(gap).get_columns())
        del part, back
        parts.append(pl.DataFrame(cols))
    out = parts[0] if len(parts) == 1 else pl.concat(parts).sort("__i")
    return out.drop("__i")


def compute_features(events: pl.DataFrame, labels: pl.DataFrame, spec: FeatureParams, start: dt.date,
                     end: dt.date, entities: list[str], numerics: list[str]) -> pl.DataFrame:
    """Features for the events whose date is in [start, end], from `events` (which must hold the
    look-back) and `labels`. Pure: same inputs, same output, whatever else `events` holds.

    Derived features are Float32 (what XGBoost consumes), counts Int32, flags Int8; numerics keep
    their Float64. Each block is computed on a narrow frame and cut to the target rows at once, so
    peak memory stays near input + output."""
    base = events if _is_sorted(events) else events.sort(["event_ts", "event_id"])   # partitions arrive sorted
    grouped = dict.fromkeys([*spec.rolling, *spec.time_since_last, *spec.target_rate])
    base = base.with_columns(pl.col("event_ts").cast(pl.Int64).alias("__t"),   # entity codes, once
                             *[pl.col(e).cast(pl.Categorical).to_physical().alias(_code(e)) for e in grouped])
    lo = dt.datetime.combine(start, dt.time())
    hi = dt.datetime.combine(end + dt.timedelta(days=1), dt.time())
    keep = base.select((pl.col("event_ts") >= lo) & (pl.col("event_ts") < hi)).to_series()
    everything = bool(keep.all())

    def cut(block: pl.DataFrame) -> pl.DataFrame:
        return _narrow_floats(block if everything else block.filter(keep))

    keys = ["event_id", "event_ts", *entities]
    head = base.select(*keys, *numerics)                  # numerics keep their Float64
    blocks = [head if everything else head.filter(keep)]
    if any(spec.target_rate.values()):   # labels known at each event's row (the join is the memory peak)
        joined = base.select("event_id").join(labels.select("event_id", "label", "available_at"), on="event_id",
                                              how="left", maintain_order="left")
        base = base.with_columns(joined["label"], joined["available_at"])
        del joined
    # entities with the most rate windows first: their transients land before other outputs pile up
    for ent in sorted(grouped, key=lambda e: -len(spec.target_rate.get(e, ()))):
        blocks.append(cut(_entity_block(base, ent, spec)))
    other: list[pl.Expr] = []
    if spec.weekend:
        other.append((pl.col("event_ts").dt.weekday() >= 6).cast(pl.Int8).alias("is_weekend"))
    if spec.night_hours:
        h0, h1 = spec.night_hours
        other.append(pl.col("event_ts").dt.hour().is_between(h0, h1, closed="left").cast(pl.Int8).alias("is_night"))
    cat_index = {c: i for i, c in enumerate(spec.categories)}
    for c in spec.categoricals:
        other.append(pl.col(c).replace_strict(cat_index, default=None, return_dtype=pl.Int16).alias(f"{c}_code"))
    if other:
        blocks.append(cut(base.select(other)))
    feats = pl.concat(blocks, how="horizontal")
    ratios = [pl.when(pl.col(r.denominator).is_null() | (pl.col(r.denominator) == 0)).then(None)
              .otherwise(pl.col(r.numerator) / pl.col(r.denominator)).cast(pl.Float32).alias(r.name) for r in spec.ratios]
    return feats.with_columns(ratios).select(*keys, *feature_names(spec, numerics))


# --------------------------------------------------------------------------- I/O
class Inputs:
    """The validated transactions and labels a range of feature days reads, each partition verified
    (pipelines/core/lineage.py) and remembered with its sha256 by date, so each day's record names
    exactly the partitions of its own look-back."""

    def __init__(self, events: pl.DataFrame, labels: pl.DataFrame, missing: list[str],
                 read: dict[tuple[str, dt.date], dict[str, str]]) -> None:
        self.events, self.labels, self.missing, self.read = events, labels, missing, read

    def for_day(self, day: dt.date, lookback_days: int) -> dict[str, str]:
        """The partitions the features of `day` were computed from: the transactions of its look-back
        and of the day, the labels landed up to the day before (a label that lands on `day` is usable
        from the next day only). The same whatever range the features were computed in."""
        first = day - dt.timedelta(days=lookback_days)
        last = {"transactions": day, "labels": day - dt.timedelta(days=1)}
        return {u: sha for (name, d), parts in self.read.items() if first <= d <= last[name]
                for u, sha in parts.items()}


def load_inputs(params, start: dt.date, end: dt.date) -> Inputs:
    """Validated transactions for [start - lookback, end] and labels landed in that range.
    A missing partition inside the range (after the dataset's first date) is an error unless
    features.missing_history is warn; a partition that changed or was withdrawn after something
    was built from it is always an error (lineage.StaleInput)."""
    spec, store = params.features, params.storage
    tx, lb = params.dataset("transactions"), params.dataset("labels")
    first = start - dt.timedelta(days=spec.lookback_days)
    frames, label_frames, missing = [], [], []
    read: dict[tuple[str, dt.date], dict[str, str]] = {}
    for day in date_range(first, end):
        for ds, kind, out in ((tx, "validated", frames), (lb, "canonical", label_frames)):
            if day < ds.first_date or (ds is lb and day == end):   # labels landing on `end` serve later days
                continue
            uri = store.uri(kind, dataset=ds.name, date=day.isoformat())
            reader = lineage.Reader()
            try:
                out.append(reader.read_parquet(uri))
            except lineage.NotCommitted:
                missing.append(uri)
                continue
            read[(ds.name, day)] = dict(reader.consumed)
    target_missing = [u for u in missing if any(f"date={d.isoformat()}" in u and "/transactions/" in u
                                                for d in date_range(start, end))]
    if target_missing:
        raise MissingHistory(f"features {start}..{end}: {len(target_missing)} validated partition(s) missing for "
                             f"the target dates: {_shorten(target_missing)} (blocked or not yet validated); "
                             f"nothing published, the run fails")
    if missing and spec.missing_history == "fail":
        raise MissingHistory(f"features {start}..{end}: {len(missing)} look-back partition(s) missing: {_shorten(missing)} "
                             f"(run ingest/validate with --with-lookback); set "
                             f"features.missing_history: warn to accept thinner history; nothing published, the run fails")
    for u in missing:
        log.warning("look-back partition missing, features computed without it: %s", u)
    if not frames:
        raise MissingHistory(f"features {start}..{end}: no validated transactions at all")
    labels = pl.concat(label_frames) if label_frames else pl.DataFrame(
        schema={"event_id": pl.String, "label": pl.Int8, "label_date": pl.Date, "available_at": pl.Datetime("us")})
    events = pl.concat(frames)
    _check_unique(events, "event_ts", "validated transactions", start, end)
    _check_unique(labels, "label_date", "labels", start, end)
    return Inputs(events, labels, missing, read)


def _check_unique(frame: pl.DataFrame, date_col: str, what: str, start: dt.date, end: dt.date) -> None:
    """Ingest lets an id in once (first arrival wins); an id twice here means an older date was
    re-ingested after a newer one: fail with the dates to re-run, never crash in a join."""
    dup = frame.filter(pl.col("event_id").is_duplicated())
    if dup.height:
        ids = dup["event_id"].unique().sort().head(3).to_list()
        dates = sorted(set(dup[date_col].cast(pl.Date).cast(pl.String).to_list()))
        raise MissingHistory(f"features {start}..{end}: {dup['event_id'].n_unique()} id(s) appear in more than one "
                             f"partition of the {what} read (e.g. {ids}; dates {dates[:6]}): an older date was "
                             f"re-ingested after a newer one; re-run ingest and validate for the later of those "
                             f"dates; nothing published")


def _shorten(uris: list[str]) -> list[str]:
    return uris if len(uris) <= 4 else [*uris[:2], f"... {len(uris) - 4} more ...", *uris[-2:]]


def manifest(df: pl.DataFrame, spec: FeatureParams, numerics: list[str], entities: list[str], day: dt.date,
             missing: list[str]) -> dict:
    names = feature_names(spec, numerics)
    return {"date": day.isoformat(), "rows": df.height, "feature_columns": names,
            "key_columns": ["event_id", "event_ts", *entities],
            "dtypes": {c: str(df.schema[c]) for c in df.columns}, "spec_hash": spec_hash(spec),
            "code_version": code_version(), "lookback_days": spec.lookback_days, "missing_history": missing}


def run_key(params, day: dt.date, suite: dict | None) -> dict | None:
    """What the features of `day` are made of: the partitions of its look-back (their records; a
    missing one is part of the key too), the feature spec, the features suite, the columns, the
    code and the libraries. Kept as `run` in the partition's record: a re-run with the same key
    recomputes nothing. None when an input is not trusted (the run then fails on it as always)."""
    from dataclasses import asdict

    spec, store = params.features, params.storage
    tx, lb = params.dataset("transactions"), params.dataset("labels")
    first = day - dt.timedelta(days=spec.lookback_days)
    uris = [store.uri("validated", dataset=tx.name, date=d.isoformat()) for d in date_range(first, day)
            if d >= tx.first_date]
    uris += [store.uri("canonical", dataset=lb.name, date=d.isoformat())
             for d in date_range(first, day - dt.timedelta(days=1)) if d >= lb.first_date]
    try:
        inputs = lineage.committed(uris)
    except lineage.StaleInput:
        return None
    settings = {"features": asdict(spec), "suite": suite, "engine": params.validate.engine,
                "columns": asdict(tx.columns)}
    return lineage.stage_key("features", inputs, settings, "pipelines.features",
                             ("polars", "pyarrow", "numpy", "great_expectations"))


def main(argv: list[str]) -> int:
    from pipelines.core.gx import load_suite, validate_frame

    ap = stage_parser("features", __doc__)
    ap.add_argument("--recompute", action="store_true",
                    help="compute even a date whose features were made from the same look-back, spec, suite and code")
    args = ap.parse_args(argv)
    params, days = resolve(args)
    spec, store = params.features, params.storage
    cols = params.dataset("transactions").columns
    entities, numerics = list(cols.entities), list(cols.numerics)
    suite_path = params.validate.suites.get("features")
    if suite_path:                      # configured: it must load (checked when params.yaml is loaded)
        suite = load_suite(suite_path)
    elif suite_path is False:
        suite = None
        log.warning("validate.suites.features is false: feature partitions are published without a suite")
    else:
        raise StageFailed("validate.suites has no features entry: give a suite path, or false to run without one")
    keys = {day: run_key(params, day, suite) for day in days}
    failures = []
    with storage.Publisher(store.lake, args.snapshot) as pub:
        todo = []
        for day in days:
            uri, key = store.uri("features", date=day.isoformat()), keys[day]
            if lineage.reusable(uri, key, pub, args.recompute) is None:
                todo.append(day)
            else:
                log.info("features %s: unchanged since its record (the same look-back partitions, spec, suite and "
                         "code: key %s); nothing recomputed -> %s", day, key["key"][:12], uri)
        if not todo:
            return 0
        start, end = min(todo), max(todo)
        inputs = load_inputs(params, start, end)
        feats = compute_features(inputs.events, inputs.labels, spec, start, end, entities, numerics)
        for day in progress(todo, "features"):
            part_uri = store.uri("features", date=day.isoformat())
            part = feats.filter(pl.col("event_ts").dt.date() == day)
            if suite is not None:
                v = validate_frame(part, suite, "features", day, 0.0, allow_quarantine=False,
                                   engine=params.validate.engine)
                if v.blocked:
                    pub.remove(part_uri)
                    failures.append(f"features {day}: blocked by {suite_path}: " + "; ".join(v.results["reasons"]))
                    continue
            out = pub.partition(part_uri, "features", inputs=inputs.for_day(day, spec.lookback_days),
                                extra={"spec_hash": spec_hash(spec), "code_version": code_version(),
                                       "suite": str(suite_path) if suite is not None else None,
                                       **({"run": keys[day]} if keys[day] else {})})
            out.put_parquet(part_uri, part)
            out.put_json(store.uri("features_manifest", date=day.isoformat()),
                         manifest(part, spec, numerics, entities, day, inputs.missing))
            out.commit()
            log.info("features %s: %d rows, %d features", day, part.height, len(feature_names(spec, numerics)))
        if failures:
            raise StageFailed.of("features blocked", failures)
    return 0
