"""Stage `ingest`: raw partition -> canonical partition + rejects, for one dataset and date.

Data contract (canonical schema, names from params.yaml `datasets.<name>.columns` keys):
  event_id str, [event_ts datetime[us] (naive UTC)], [label int8], <entities> str,
  <numerics> float64, <categoricals> str; labels also get label_date date and available_at
  datetime[us] (= label_date + 1 day: a label is usable after the day it landed).
Rows are sorted by (event_ts, event_id) (labels: event_id).

Nothing is dropped silently. A row is rejected, with a reason code, when its id or timestamp is
null (`null_id`, `null_timestamp`, `null_label`), when a value cannot be cast to its canonical type
(`cast_failed:<column>`), or when its id was already seen in the partition (`duplicate_id`; the
earliest by (timestamp, source order) is kept). A partition whose schema lacks a mapped column is
rejected whole (`missing_column:<column>`) and the run fails. Always rows_in = rows_out + rows_rejected.
"""
from __future__ import annotations

import datetime as dt
import io
import logging
from dataclasses import dataclass

import polars as pl

from pipelines import storage
from pipelines.cli import StageFailed, resolve, stage_parser
from pipelines.config import DatasetParams, IngestParams, StorageParams

log = logging.getLogger("pipelines.ingest")
ROW = "_source_row"
FILE = "_source_file"


class IngestError(RuntimeError):
    """A source partition is missing, unreadable or has the wrong schema."""


@dataclass(frozen=True)
class IngestResult:
    canonical: pl.DataFrame
    rejects: pl.DataFrame
    stats: dict


def canonical_schema(ds: DatasetParams) -> dict[str, pl.DataType]:
    c = ds.columns
    schema: dict[str, pl.DataType] = {"event_id": pl.String()}
    if c.timestamp:
        schema["event_ts"] = pl.Datetime("us")
    if c.label:
        schema["label"] = pl.Int8()
    schema.update({k: pl.String() for k in c.entities})
    schema.update({k: pl.Float64() for k in c.numerics})
    schema.update({k: pl.String() for k in c.categoricals})
    return schema


def _cast(name: str, src: pl.Expr, dtype: pl.DataType, src_dtype: pl.DataType, ds: DatasetParams) -> pl.Expr:
    if name == "event_ts":
        if src_dtype == pl.String and ds.timestamp_unit:      # epoch numbers stored as text (CSV)
            src, src_dtype = src.str.strip_chars().cast(pl.Int64, strict=False), pl.Int64
        if src_dtype == pl.String:
            if ds.timestamp_format:
                return src.str.strptime(pl.Datetime("us"), ds.timestamp_format, strict=False)
            return src.str.to_datetime(time_unit="us", strict=False)
        if src_dtype.is_numeric():
            return pl.from_epoch(src.cast(pl.Int64, strict=False), time_unit=ds.timestamp_unit or "s").cast(pl.Datetime("us"))
        if isinstance(src_dtype, pl.Datetime) and src_dtype.time_zone:
            return src.dt.convert_time_zone("UTC").dt.replace_time_zone(None).cast(pl.Datetime("us"))
        return src.cast(pl.Datetime("us"), strict=False)
    if dtype == pl.Float64 and src_dtype == pl.String:
        return src.str.strip_chars().cast(pl.Float64, strict=False)
    if dtype == pl.Int8 and src_dtype == pl.String:
        return src.str.strip_chars().cast(pl.Int64, strict=False).cast(pl.Int8, strict=False)
    return src.cast(dtype, strict=False)


def normalize(raw: pl.DataFrame, ds: DatasetParams, day: dt.date, params: IngestParams) -> IngestResult:
    """Pure core: a raw partition (with _source_file/_source_row columns) -> canonical + rejects."""
    mapping = ds.columns.mapping()
    schema = canonical_schema(ds)
    rows_in = raw.height
    missing = [src for src in mapping.values() if src not in raw.columns]

    if missing:
        rejects = raw.select(
            *[(pl.col(src).cast(pl.String) if src in raw.columns else pl.lit(None, pl.String)).alias(canon)
              for canon, src in mapping.items()],
            pl.lit(f"missing_column:{','.join(missing)}").alias("reject_reason"), FILE, ROW)
        stats = _stats(ds, day, rows_in, 0, rejects, {}, missing)
        return IngestResult(pl.DataFrame(schema=schema), rejects, stats)

    src_types = raw.schema
    joined = raw.select(
        *[_cast(canon, pl.col(src), schema[canon], src_types[src], ds).alias(canon) for canon, src in mapping.items()],
        *[pl.col(src).cast(pl.String).alias(f"__text_{canon}") for canon, src in mapping.items()],
        FILE, ROW)
    casts = {canon: f"{src_types[src]}->{schema[canon]}" for canon, src in mapping.items()
             if src_types[src] != schema[canon]}

    # the first failing check names the row's reason code
    checks: list[tuple[str, pl.Expr]] = [("null_id", pl.col("__text_event_id").is_null())]
    if "event_ts" in schema:
        checks.append(("null_timestamp", pl.col("__text_event_ts").is_null()))
    if "label" in schema:
        checks.append(("null_label", pl.col("__text_label").is_null()))
    for canon in mapping:   # a value present in the source that did not survive the cast
        checks.append((f"cast_failed:{canon}", pl.col(canon).is_null() & pl.col(f"__text_{canon}").is_not_null()))
    reason = pl.lit(None, pl.String)
    for code, cond in reversed(checks):
        reason = pl.when(cond).then(pl.lit(code)).otherwise(reason)
    joined = joined.with_columns(reason.alias("reject_reason"))

    # de-duplicate the rows that survived: keep the earliest (timestamp, source order)
    sort_keys = (["event_ts"] if "event_ts" in schema else []) + [FILE, ROW]
    ok = joined.filter(pl.col("reject_reason").is_null()).sort(sort_keys)
    dup = ok.select(pl.col("event_id").is_duplicated() & ~pl.col("event_id").is_first_distinct()).to_series()
    kept = ok.filter(~dup)
    dups = ok.filter(dup).with_columns(pl.lit("duplicate_id").alias("reject_reason"))
    bad = pl.concat([joined.filter(pl.col("reject_reason").is_not_null()), dups])

    rejects = bad.select([pl.col(f"__text_{c}").alias(c) for c in mapping] + ["reject_reason", FILE, ROW]) \
        .sort([FILE, ROW])
    order = ["event_ts", "event_id"] if "event_ts" in schema else ["event_id"]
    canonical = kept.select(list(mapping)).cast(schema).sort(order)
    if ds.columns.label:
        canonical = canonical.with_columns(
            pl.lit(day).alias("label_date"),
            pl.lit(dt.datetime.combine(day + dt.timedelta(days=1), dt.time())).cast(pl.Datetime("us")).alias("available_at"))
    stats = _stats(ds, day, rows_in, canonical.height, rejects, casts, [])
    return IngestResult(canonical, rejects, stats)


def _stats(ds: DatasetParams, day: dt.date, rows_in: int, rows_out: int, rejects: pl.DataFrame,
           casts: dict, missing: list[str]) -> dict:
    by_reason = dict(sorted(rejects.group_by("reject_reason").len().iter_rows())) if rejects.height else {}
    stats = {"dataset": ds.name, "date": day.isoformat(), "rows_in": rows_in, "rows_out": rows_out,
             "rows_rejected": rejects.height, "rejected_by_reason": by_reason, "casts": casts,
             "missing_columns": missing}
    if rows_in != rows_out + rejects.height:   # the accounting invariant; never publish if it breaks
        raise AssertionError(f"ingest {ds.name} {day}: rows_in {rows_in} != rows_out {rows_out} + rejected {rejects.height}")
    return stats


def read_source(ds: DatasetParams, day: dt.date) -> tuple[pl.DataFrame, list[dict]]:
    """All files of the source partition of `day`, concatenated, with _source_file/_source_row."""
    prefix = ds.partition_uri(day)
    ext = ".parquet" if ds.format == "parquet" else ".csv"
    files = [u for u in storage.list_uris(prefix) if u.endswith(ext)]
    if not files:
        raise IngestError(f"{ds.name} {day}: no source partition at {prefix}/ (expected *{ext} files); "
                          f"nothing published, the run fails")
    frames, sources = [], []
    for uri in files:
        data = storage.read_bytes(uri)
        try:
            if ds.format == "parquet":
                df = pl.read_parquet(io.BytesIO(data))
            else:
                df = pl.read_csv(io.BytesIO(data), infer_schema=False)
        except Exception as exc:
            raise IngestError(f"{ds.name} {day}: source file {uri} is unreadable as {ds.format} "
                              f"({type(exc).__name__}: {str(exc)[:200]}); nothing published, the run fails") from None
        frames.append(df.with_columns(pl.lit(uri.rsplit("/", 1)[-1]).alias(FILE),
                                      pl.int_range(pl.len(), dtype=pl.Int64).alias(ROW)))
        sources.append({"uri": uri, "bytes": len(data), "rows": df.height})
    return pl.concat(frames, how="diagonal_relaxed"), sources


def ingest_partition(ds: DatasetParams, day: dt.date, store: StorageParams, params: IngestParams,
                     pub: storage.Publisher) -> dict:
    """Read, normalize and publish one partition; return its stats. Raises IngestError on a schema
    failure after publishing the rejects and stats (so the evidence is kept)."""
    raw, sources = read_source(ds, day)
    result = normalize(raw, ds, day, params)
    stats = {**result.stats, "sources": sources}
    fields = {"dataset": ds.name, "date": day.isoformat()}
    pub.put_parquet(store.uri("rejects", **fields), result.rejects)
    if result.stats["missing_columns"]:
        pub.remove(store.uri("canonical", **fields))
        pub.put_json(store.uri("ingest_stats", **fields), stats)
        found = sorted(c for c in raw.columns if c not in (FILE, ROW))
        raise IngestError(f"{ds.name} {day}: source column(s) {result.stats['missing_columns']} missing from "
                          f"{ds.partition_uri(day)}/ (found {found}); all {raw.height} rows rejected to "
                          f"{store.uri('rejects', **fields)}, the run fails")
    pub.put_parquet(store.uri("canonical", **fields), result.canonical)
    pub.put_json(store.uri("ingest_stats", **fields), stats)
    return stats


NOT_LANDED = 99     # the nightly DAG's sensor pokes again on this exit code


def check_landed(params, names: list[str], days) -> int:
    """Exit code for a sensor: 0 when every source partition of `days` holds at least one file."""
    missing = []
    for name in names:
        ds = params.dataset(name)
        ext = ".parquet" if ds.format == "parquet" else ".csv"
        for day in days:
            if day >= ds.first_date and not [u for u in storage.list_uris(ds.partition_uri(day)) if u.endswith(ext)]:
                missing.append(f"{ds.partition_uri(day)}/*{ext}")
    if missing:
        print(f"not landed yet: {', '.join(missing)}")
        return NOT_LANDED
    print(f"landed: {', '.join(names)} for {days[0]}..{days[-1]}")
    return 0


def main(argv: list[str]) -> int:
    ap = stage_parser("ingest", __doc__)
    ap.add_argument("--dataset", action="append", help="dataset name(s) (default: all configured)")
    ap.add_argument("--check", action="store_true",
                    help=f"only check that the source partitions have landed: exit 0 if so, {NOT_LANDED} if not")
    args = ap.parse_args(argv)
    params, days = resolve(args)
    store, ing = params.storage, params.ingest
    if args.check:
        return check_landed(params, args.dataset or params.dataset_names, days)
    pub = storage.Publisher(store.lake, args.snapshot)
    failures = []
    for name in args.dataset or params.dataset_names:
        ds = params.dataset(name)
        for day in days:
            if day < ds.first_date:
                log.info("%s %s: before first_date %s, nothing to ingest", name, day, ds.first_date)
                continue
            try:
                s = ingest_partition(ds, day, store, ing, pub)
                log.info("%s %s: in=%d out=%d rejected=%d %s", name, day, s["rows_in"], s["rows_out"],
                         s["rows_rejected"], s["rejected_by_reason"] or "")
            except (IngestError, storage.StorageError) as exc:
                log.error("%s", exc)
                failures.append(str(exc))
    if failures:
        raise StageFailed(f"ingest failed for {len(failures)} partition(s):\n  " + "\n  ".join(failures))
    return 0
