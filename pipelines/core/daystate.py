"""What a feature_state partition holds: the per-entity totals of one day's validated events and the
labels that landed the day before, matched to their events (see pipelines/features.py, the
incremental path, which makes and reads them).

A state is data, made once per date from raw and kept: its run key names its inputs, the feature
spec, the polars and pyarrow versions and the code that defines its content, which is this module
(it imports polars only): what a state holds, which labels it matches to which events, and the
names of its objects (OBJECTS). pipelines/features.py only reads the inputs and publishes what this
module makes. A release that changes the features stage, storage or the CLI keeps every state of
the look-back; one that changes this file makes them again from raw, as it must.
"""
from __future__ import annotations

import datetime as dt

import polars as pl

KEY_SEED = 20261204        # the (entity, id) hash a state is sorted by: the order the features stage keys it in
STATE_SCHEMA = {"entity": pl.String, "id": pl.String, "n": pl.Int64, "fx": pl.Int64, "q": pl.Decimal(38, 0),
                "mx": pl.Float64, "mn": pl.Float64, "last": pl.Int64}
TOTALS_SCHEMA = {"entity": pl.String, "id": pl.String, "event_date": pl.Date, "n": pl.Int64, "s": pl.Int64}
# the partition's objects beside its primary (daily.parquet): the label totals, and the labelled
# events of each event day (the features read those of the rates' boundary days one by one)
OBJECTS = {"label_totals": "labels.parquet", "labelled": "labelled/event_date={}.parquet"}


def fixed(r) -> pl.Expr:
    """The rolled value in fixed point (r.decimals): integer sums are exact whatever the order, so
    the full and the incremental paths agree bit for bit. The one definition both use (`r`: a
    config.RollingSpec)."""
    return (pl.col(r.value) * 10 ** r.decimals).round().cast(pl.Int64)


def fit(frame: pl.DataFrame, schema: dict) -> pl.DataFrame:
    """`frame` with exactly `schema`'s columns (missing ones null), in its order and types."""
    return frame.select([(pl.col(c) if c in frame.columns else pl.lit(None)).cast(t).alias(c)
                         for c, t in schema.items()]) if frame.width else pl.DataFrame(schema=schema)


def key_hash() -> pl.Expr:
    """One 64-bit key for (entity, id): one join for every entity type, no per-entity copies."""
    return (pl.col("id").cast(pl.String).hash(seed=KEY_SEED)
            ^ pl.col("entity").cast(pl.String).hash(seed=KEY_SEED + 1)).alias("__h")


def day_state(events: pl.DataFrame, spec) -> pl.DataFrame:
    """Per entity of the rolling and time-since-last features (`spec`: config.FeatureParams), the
    exact totals of one day's events (n, fixed-point sum, sum of squares, max, min of the rolled
    value; the last event time)."""
    out = []
    for ent in dict.fromkeys([*spec.rolling, *spec.time_since_last]):
        r = spec.rolling.get(ent)
        t = pl.col("event_ts").cast(pl.Int64)
        aggs = [pl.len().cast(pl.Int64).alias("n"), t.max().alias("last")]
        if r:
            fx = fixed(r)
            aggs += [fx.sum().alias("fx"), (fx.cast(pl.Int128) * fx.cast(pl.Int128)).sum().alias("q"),
                     pl.col(r.value).max().alias("mx"), pl.col(r.value).min().alias("mn")]
        g = events.group_by(ent).agg(aggs).rename({ent: "id"}).with_columns(pl.lit(ent).alias("entity"))
        out.append(fit(g, STATE_SCHEMA))
    frame = pl.concat(out) if out else fit(pl.DataFrame(), STATE_SCHEMA)
    return frame.sort(key_hash(), "entity", "id")   # in EntityKeys' order: keyed by a merge join


def labelled_events(labels: pl.DataFrame, events: pl.DataFrame, entities: list[str], landed: dt.date) -> pl.DataFrame:
    """The labels that landed on `landed`, with their event's time and entities (inner join: a label
    whose event was never validated counts nowhere, nor one whose event is after its landing day:
    as in compute_features)."""
    before = dt.datetime.combine(landed + dt.timedelta(days=1), dt.time())
    return (labels.select("event_id", pl.col("label").cast(pl.Int64))
            .join(events.select("event_id", "event_ts", *entities).filter(pl.col("event_ts") < before),
                  on="event_id", how="inner")
            .select("event_id", "event_ts", *entities, "label").sort("event_ts", "event_id"))


def label_totals(labelled: pl.DataFrame, spec) -> pl.DataFrame:
    """Per entity of the rates and event day, the count and the sum of the labelled events."""
    out = []
    for ent in spec.target_rate:
        g = (labelled.group_by(ent, pl.col("event_ts").dt.date().alias("event_date"))
             .agg(pl.len().cast(pl.Int64).alias("n"), pl.col("label").sum().cast(pl.Int64).alias("s"))
             .rename({ent: "id"}).with_columns(pl.lit(ent).alias("entity")))
        out.append(fit(g, TOTALS_SCHEMA))
    frame = pl.concat(out) if out else fit(pl.DataFrame(), TOTALS_SCHEMA)
    return frame.sort(key_hash(), "entity", "id", "event_date")


def labels_landed(day: dt.date) -> dt.date:
    """The landing day of the labels the state of `day` holds: the day before (a label that lands on
    a day is usable from the next day only)."""
    return day - dt.timedelta(days=1)


def reads_labels(day: dt.date, spec, labels_first_date: dt.date) -> bool:
    """Whether the state of `day` holds labels: the spec has rates and labels had landed by then."""
    return bool(spec.target_rate) and labels_landed(day) >= labels_first_date


def event_columns(spec, entities: list[str]) -> list[str]:
    """The columns of the day's validated events its state is made of."""
    return ["event_id", "event_ts", *entities, *sorted({r.value for r in spec.rolling.values()})]


def no_labels(entities: list[str]) -> pl.DataFrame:
    return pl.DataFrame(schema={"event_id": pl.String, "event_ts": pl.Datetime("us"),
                                **{e: pl.String for e in entities}, "label": pl.Int64})


def match_labels(labels: pl.DataFrame, read_day, day: dt.date, spec, first_date: dt.date,
                 entities: list[str]) -> pl.DataFrame:
    """The labels that landed the day before `day` (event_id, label), matched to their events:
    `read_day(d, columns)` reads the validated events of day d (and raises what the caller wants
    raised for a day it cannot read). The event days of label_search, each only for the labels still
    unmatched; a label whose event is on none of them counts nowhere."""
    found, pending = [], labels.select("event_id")
    for d in label_search(day, spec, first_date):
        if pending.is_empty():
            break
        hit = read_day(d, ["event_id", "event_ts", *entities]).join(pending, on="event_id", how="semi")
        found.append(hit)
        pending = pending.join(hit, on="event_id", how="anti")
    if not found:
        return no_labels(entities)
    return labelled_events(labels, pl.concat(found), entities, labels_landed(day))


def objects(labelled: pl.DataFrame, spec) -> list[tuple[str, pl.DataFrame]]:
    """The state's objects beside its primary (the day_state), by name (OBJECTS): the label totals,
    and the labelled events of each event day."""
    on = pl.col("event_ts").dt.date()
    days = labelled.select(on.unique().sort()).to_series().to_list()
    return [(OBJECTS["label_totals"], label_totals(labelled, spec)),
            *((OBJECTS["labelled"].format(d), labelled.filter(on == d)) for d in days)]


def label_search(day: dt.date, spec, first_date: dt.date) -> list[dt.date]:
    """The event days searched for the events of the labels that landed the day before `day`, the
    on-time day (landed - label delay) first, then the latest first; no earlier than the
    transactions' first date, nor than the rates' longest reach."""
    landed = labels_landed(day)
    rates = max((n for w in spec.target_rate.values() for n in w), default=0)
    first = max(day - dt.timedelta(days=spec.label_delay_days + rates), first_date)
    ontime = landed - dt.timedelta(days=spec.label_delay_days)
    days = [first + dt.timedelta(days=i) for i in range((landed - first).days + 1)]
    return sorted(days, key=lambda d: (d != ontime, -d.toordinal()))
