"""Human review: the overrides table (a reviewer's decision for an event, the latest one wins) and
a verdict as a label (`feedback.review_verdicts`), with its provenance next to the feed's label.

`decide` applies the overrides, `feedback` and training (core/modelio.load_labelled) read the
verdicts as labels through `with_provenance`: one rule for both.
"""
from __future__ import annotations

import datetime as dt

import polars as pl

from pipelines.core import storage

DECISIONS = ("approve", "review", "block")


OVERRIDE_SCHEMA = {"event_id": pl.String, "decision": pl.String, "reviewer": pl.String, "note": pl.String,
                   "at": pl.Datetime("us", "UTC")}


def latest_overrides(overrides: pl.DataFrame) -> pl.DataFrame:
    return overrides.sort("at").unique("event_id", keep="last", maintain_order=True)


def read_overrides(store, ds: dt.date) -> pl.DataFrame:
    try:
        return storage.read_parquet(store.uri("overrides", date=ds.isoformat())).cast(OVERRIDE_SCHEMA)
    except storage.MissingObject:
        return pl.DataFrame(schema=OVERRIDE_SCHEMA)


def add_override(store, ds: dt.date, event_id: str, decision: str, reviewer: str, note: str,
                 at: dt.datetime) -> pl.DataFrame:
    """Append a reviewer's decision to the day's overrides table (the latest per event wins)."""
    if decision not in DECISIONS:
        raise ValueError(f"override decision must be one of {DECISIONS}, not {decision!r}; nothing recorded")
    cur = read_overrides(store, ds)
    row = pl.DataFrame({"event_id": [event_id], "decision": [decision], "reviewer": [reviewer], "note": [note],
                        "at": [at]}, schema=OVERRIDE_SCHEMA)
    out = pl.concat([cur, row])
    storage.write_bytes(store.uri("overrides", date=ds.isoformat()), storage.parquet_bytes(out))
    return out


def review_labels(overrides: pl.DataFrame, verdicts: dict[str, int]) -> pl.DataFrame:
    """The latest reviewer decision per event as a label (decisions without a mapping give none)."""
    if not overrides.height:
        return pl.DataFrame(schema={"event_id": pl.String, "review_label": pl.Int8, "reviewer": pl.String,
                                    "reviewed_at": OVERRIDE_SCHEMA["at"]})
    latest = latest_overrides(overrides)
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
