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


OVERRIDE = "_override."       # + the day's overrides file name + "." + when + a random token: one object per verdict


def latest_overrides(overrides: pl.DataFrame) -> pl.DataFrame:
    return overrides.sort("at", maintain_order=True).unique("event_id", keep="last", maintain_order=True)


def _objects(store, ds: dt.date) -> tuple[str, list[str]]:
    """The day's overrides table (as an older writer left it, or as a person or a test put it) and its
    verdicts' objects beside it (each written once, by one reviewer's command), in the order they were
    recorded."""
    uri = store.uri("overrides", date=ds.isoformat())
    folder, name = uri.rsplit("/", 1)
    mine = f"{folder}/{OVERRIDE}{name}."
    return uri, [u for u in storage.list_uris(folder, hidden=True) if u.startswith(mine) and "/" not in u[len(mine):]]


def override_objects(store, ds: dt.date) -> list[tuple[str, bytes]]:
    """The day's overrides as stored: (uri, bytes) of its table, if there is one, then of each verdict's
    object, in the order they were recorded."""
    uri, each = _objects(store, ds)
    out = []
    for u in [uri, *each]:
        try:
            out.append((u, storage.read_bytes(u)))
        except storage.MissingObject:
            if u != uri:
                raise
    return out


def overrides_frame(objects: list[tuple[str, bytes]]) -> pl.DataFrame:
    """The verdicts of override_objects as one frame, in the order recorded."""
    parts = [storage.read_parquet_bytes(data, u).cast(OVERRIDE_SCHEMA) for u, data in objects]
    return pl.concat(parts) if parts else pl.DataFrame(schema=OVERRIDE_SCHEMA)


def read_overrides(store, ds: dt.date) -> pl.DataFrame:
    """Every reviewer's decision recorded for the day, in the order recorded (latest_overrides: the
    latest per event wins)."""
    return overrides_frame(override_objects(store, ds))


def has_overrides(store, ds: dt.date) -> bool:
    uri, each = _objects(store, ds)
    return bool(each) or storage.exists(uri)


def add_override(store, ds: dt.date, event_id: str, decision: str, reviewer: str, note: str,
                 at: dt.datetime) -> str:
    """Record a reviewer's decision for an event of the day (the latest per event wins): an object of its
    own, never a read-modify-write of a shared table, so two reviewers recording at the same moment both
    count. Returns its URI."""
    import uuid

    if decision not in DECISIONS:
        raise ValueError(f"override decision must be one of {DECISIONS}, not {decision!r}; nothing recorded")
    at = at.replace(tzinfo=dt.timezone.utc) if at.tzinfo is None else at.astimezone(dt.timezone.utc)   # naive: UTC
    row = pl.DataFrame({"event_id": [event_id], "decision": [decision], "reviewer": [reviewer], "note": [note],
                        "at": [at]}, schema=OVERRIDE_SCHEMA)
    uri = store.uri("overrides", date=ds.isoformat())
    folder, name = uri.rsplit("/", 1)
    out = f"{folder}/{OVERRIDE}{name}.{at:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:16]}"
    storage.write_bytes(out, storage.parquet_bytes(row))
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
