"""Stage `ingest`: raw partition -> canonical partition + rejects, for one dataset and date.

Data contract (canonical schema, names from params.yaml `datasets.<name>.columns` keys):
  event_id str, [event_ts datetime[us] (naive UTC)], [label int8: 0 | 1], <entities> str,
  <numerics> float64, <categoricals> str; labels also get label_date date and available_at
  datetime[us] (= label_date + 1 day: a label is usable after the day it landed).
Rows are sorted by (event_ts, event_id) (labels: event_id).

Each source file is read and cast on its own (its own column types; a tz-aware timestamp is
converted to UTC, a naive one is UTC already), so files of one partition may differ in types.
A CSV is read as UTF-8 (a byte-order mark is dropped); any other encoding is an error naming the file.

Nothing is dropped silently. A row is rejected, with a reason code (the first that applies), when
  null_id / null_timestamp / null_label      its id, timestamp or label is null
  cast_failed:<column>                       a value cannot be cast to its canonical type
  invalid_label                              a label that is not exactly 0 or 1 (0.5 is not truncated)
  duplicate_id                               its id was already seen in the partition (the earliest by
                                             (timestamp, file, row) is kept)
  conflicting_label                          a duplicate label whose value differs from the kept one
  duplicate_id_across_days                   its id was already ingested for one of the previous
                                             `ingest.duplicate_window_days` days (first arrival wins)
A file that lacks a mapped column, or holds one as a nested type (a list or struct), has all its
rows rejected (`missing_column:<columns>`, `unsupported_type:<columns>`) and the partition fails
(the rows of its other files too: `partition_failed:unusable_file`). Always rows_in = rows_out + rows_rejected. Conflicting labels (within the day and
across days) are counted in the stats and logged.

Each canonical partition also publishes its ids' hashes, sorted (`_ids.<its file>`, in its record): the
duplicate window of later nights matches on them and reads an earlier day's ids only where one matches.

A partition that cannot be ingested (no files, an unreadable file, a missing column) withdraws its
previous canonical partition, so a bad re-delivery never leaves stale data behind: everything
derived from it is refused from then on (pipelines/core/lineage.py).
"""
from __future__ import annotations

import datetime as dt
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl

from pipelines.core import lineage, repeats, storage
from pipelines.core.cli import each_partition, resolve, stage_parser
from pipelines.core.config import DatasetParams, IngestParams, StorageParams

log = logging.getLogger("pipelines.ingest")
ROW = "_source_row"
FILE = "_source_file"
NOT_LANDED = 99     # the nightly DAG's sensor pokes again on this exit code


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
            return (src.str.to_datetime(time_unit="us", strict=False, time_zone="UTC")
                    .dt.replace_time_zone(None))
        if src_dtype.is_numeric():
            return pl.from_epoch(src.cast(pl.Int64, strict=False), time_unit=ds.timestamp_unit or "s").cast(pl.Datetime("us"))
        if isinstance(src_dtype, pl.Datetime) and src_dtype.time_zone:
            return src.dt.convert_time_zone("UTC").dt.replace_time_zone(None).cast(pl.Datetime("us"))
        return src.cast(pl.Datetime("us"), strict=False)
    if name == "label":        # as a number first: a label that is not exactly 0 or 1 is rejected, never truncated
        if src_dtype == pl.String:
            return src.str.strip_chars().cast(pl.Float64, strict=False)
        return src.cast(pl.Float64, strict=False)
    if dtype == pl.Float64 and src_dtype == pl.String:
        return src.str.strip_chars().cast(pl.Float64, strict=False)
    return src.cast(dtype, strict=False)


def _cast_file(raw: pl.DataFrame, mapping: dict[str, str], schema: dict[str, pl.DataType], ds: DatasetParams
               ) -> tuple[pl.DataFrame, dict]:
    """One source file -> canonical columns (label as Float64 still), and `__src_<column>` (the source
    values, not copied) for each column whose type changes: a column already of its canonical type
    is its own source (no text copy of it is made; see _text)."""
    types = raw.schema
    casts = {canon: f"{types[src]}->{schema[canon]}" for canon, src in mapping.items() if types[src] != schema[canon]}
    out = raw.select(
        *[_cast(canon, pl.col(src), schema[canon], types[src], ds).alias(canon) for canon, src in mapping.items()],
        *[pl.col(src).alias(f"__src_{canon}") for canon, src in mapping.items() if canon in casts],
        FILE, ROW)
    return out, casts


def _text(canon: str, columns: list[str]) -> pl.Expr:
    """The source value of `canon` as text (rejects keep what was delivered): from its source column
    where the type changed (null in the rows of a file where it did not), else the value itself."""
    own = pl.col(canon).cast(pl.String)
    return pl.coalesce(pl.col(f"__src_{canon}").cast(pl.String), own) if f"__src_{canon}" in columns else own


def _source_null(canon: str, columns: list[str]) -> pl.Expr:
    null = pl.col(canon).is_null()
    return null & pl.col(f"__src_{canon}").is_null() if f"__src_{canon}" in columns else null


def normalize(raw: pl.DataFrame | list[pl.DataFrame], ds: DatasetParams, day: dt.date, params: IngestParams,
              seen: pl.DataFrame | None = None) -> IngestResult:
    """Pure core: the raw files of a partition (each with _source_file/_source_row columns) ->
    canonical + rejects. `seen`: event_id (and label) of the ids ingested for the previous days."""
    files = raw if isinstance(raw, list) else [raw]
    mapping = ds.columns.mapping()
    schema = canonical_schema(ds)
    rows_in = sum(f.height for f in files)
    work_schema = {**schema, "label": pl.Float64()} if "label" in schema else schema

    casted, casts, rejected_files, missing = [], {}, [], []
    for f in files:
        absent = [src for src in mapping.values() if src not in f.columns]
        nested = [src for src in mapping.values() if src in f.columns and f.schema[src].is_nested()]
        if absent or nested:         # the whole file is unusable: its rows are evidence, the partition fails
            missing += [c for c in absent if c not in missing]
            missing += [f"{c} (nested type {f.schema[c]})" for c in nested if c not in missing]
            code = f"missing_column:{','.join(absent)}" if absent else f"unsupported_type:{','.join(nested)}"
            rejected_files.append(f.select(
                *[(pl.col(src).cast(pl.String) if src in f.columns and src not in nested else pl.lit(None, pl.String))
                  .alias(canon) for canon, src in mapping.items()],
                pl.lit(code).alias("reject_reason"), FILE, ROW))
            continue
        out, c = _cast_file(f, mapping, work_schema, ds)
        casted.append(out)
        for k, v in c.items():
            casts.setdefault(k, v)

    if missing:                  # a file without a mapped column: the partition fails, every row is evidence
        good = [c.select(*[_text(k, c.columns).alias(k) for k in mapping],
                         pl.lit("partition_failed:unusable_file").alias("reject_reason"), FILE, ROW) for c in casted]
        rejects = pl.concat([*rejected_files, *good]).sort([FILE, ROW])
        return IngestResult(pl.DataFrame(schema=schema), rejects, _stats(ds, day, rows_in, 0, rejects, casts, missing))

    for col in {c for f in casted for c in f.columns if c.startswith("__src_")}:
        if len({f.schema[col] for f in casted if col in f.columns}) > 1:       # files disagree on a source type:
            casted = [f.with_columns(pl.col(col).cast(pl.String)) if col in f.columns else f for f in casted]  # as text
    joined = pl.concat(casted, how="diagonal_relaxed") if casted else pl.DataFrame(
        schema={**work_schema, FILE: pl.String, ROW: pl.Int64})
    cols = joined.columns

    # the first failing check names the row's reason code; only the flagged rows get one (a few)
    checks: list[tuple[str, pl.Expr]] = [("null_id", _source_null("event_id", cols))]
    if "event_ts" in schema:
        checks.append(("null_timestamp", _source_null("event_ts", cols)))
    if "label" in schema:
        checks.append(("null_label", _source_null("label", cols)))
    for canon in mapping:   # a value present in the source that did not survive the cast
        if f"__src_{canon}" in cols:
            checks.append((f"cast_failed:{canon}", pl.col(canon).is_null() & pl.col(f"__src_{canon}").is_not_null()))
    if "label" in schema:
        checks.append(("invalid_label", ~pl.col("label").is_in([0.0, 1.0])))
    reason = pl.lit(None, pl.String)
    for code, cond in reversed(checks):
        reason = pl.when(cond).then(pl.lit(code)).otherwise(reason)
    flagged = joined.select(pl.any_horizontal(*[cond.fill_null(False) for _, cond in checks])).to_series()
    bad = joined.filter(flagged).with_columns(reason.alias("reject_reason"))

    # The rows that survived are ordered, de-duplicated and cut by the earlier days' ids on their keys
    # alone (row number, timestamp, source file and row, id, label); the canonical partition is then
    # gathered from the source columns once, in its final order: no full-width copy per step.
    sort_keys = (["event_ts"] if "event_ts" in schema else []) + [FILE, ROW]
    keys = joined.select(*sort_keys, "event_id", *(["label"] if "label" in schema else [])).with_row_index("__i") \
        .filter(~flagged).sort(sort_keys)
    # the earliest (timestamp, source order) of each id is kept; found on the ids' hashes (2.2 -> 0.35 s at 10M)
    first = repeats.is_first_distinct(keys["event_id"])
    kept, dups = keys.filter(first), keys.filter(~first)
    conflicts = 0
    if "label" in schema and dups.height:
        dups = dups.join(kept.select("event_id", pl.col("label").alias("__kept")), on="event_id", how="left",
                         maintain_order="left")
        conflicting = dups["label"] != dups["__kept"]
        conflicts = int(conflicting.sum())
        dups = dups.with_columns(pl.when(conflicting).then(pl.lit("conflicting_label")).otherwise(pl.lit("duplicate_id"))
                                 .alias("reject_reason"))
    else:
        dups = dups.with_columns(pl.lit("duplicate_id").alias("reject_reason"))

    # first arrival wins across days: an id ingested for an earlier date is not ingested again
    cross_conflicts = 0
    again_seen = dups.clear()
    if seen is not None and seen.height and kept.height:
        again = kept["event_id"].is_in(seen["event_id"].implode())
        again_seen = kept.filter(again).with_columns(pl.lit("duplicate_id_across_days").alias("reject_reason"))
        kept = kept.filter(~again)
        if "label" in schema and "label" in seen.columns and again_seen.height:
            cmp = again_seen.join(seen.select("event_id", pl.col("label").cast(pl.Float64).alias("__first")),
                                 on="event_id", how="left")
            cross_conflicts = int((cmp["label"] != cmp["__first"]).sum())
    dropped = pl.concat([dups.select("__i", "reject_reason"), again_seen.select("__i", "reject_reason")])
    if dropped.height:
        bad = pl.concat([bad, joined[dropped["__i"]].with_columns(dropped["reject_reason"])])

    rejects = bad.select([_text(c, bad.columns).alias(c) for c in mapping] + ["reject_reason", FILE, ROW]) \
        .sort([FILE, ROW])
    order = ["event_ts", "event_id"] if "event_ts" in schema else ["event_id"]
    canonical = joined.select(list(mapping))[kept.sort(order)["__i"]].cast(schema)
    if ds.columns.label:
        canonical = canonical.with_columns(
            pl.lit(day).alias("label_date"),
            pl.lit(dt.datetime.combine(day + dt.timedelta(days=1), dt.time())).cast(pl.Datetime("us")).alias("available_at"))
    stats = _stats(ds, day, rows_in, canonical.height, rejects, casts, [])
    if "label" in schema:
        stats["label_conflicts"] = {"within_day": conflicts, "across_days": cross_conflicts}
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


def _read_file(ds: DatasetParams, day: dt.date, uri: str, data: bytes) -> pl.DataFrame:
    where = f"{ds.name} {day}: source file {uri}"
    if not data:
        raise IngestError(f"{where} is empty (0 bytes); nothing published, the run fails")
    try:
        if ds.format == "parquet":
            return pl.read_parquet(io.BytesIO(data))
        try:
            text = data.decode("utf-8-sig")           # a byte-order mark is not part of the first column's name
        except UnicodeDecodeError as exc:
            raise IngestError(f"{where} is not UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 4]!r}); "
                              f"re-deliver it as UTF-8; nothing published, the run fails") from None
        return pl.read_csv(io.StringIO(text), infer_schema=False)
    except IngestError:
        raise
    except Exception as exc:
        raise IngestError(f"{where} is unreadable as {ds.format} ({type(exc).__name__}: {str(exc)[:200]}); "
                          f"nothing published, the run fails") from None


def source_files(ds: DatasetParams, day: dt.date) -> list[tuple[str, bytes]]:
    """The bytes of each file of the source partition of `day`."""
    prefix = ds.partition_uri(day)
    ext = ".parquet" if ds.format == "parquet" else ".csv"
    files = [u for u in storage.list_uris(prefix) if u.endswith(ext)]
    if not files:
        raise IngestError(f"{ds.name} {day}: no source partition at {prefix}/ (expected *{ext} files); "
                          f"nothing published, the run fails")
    return [(uri, storage.read_bytes(uri)) for uri in files]


def _row_numbers(df: pl.DataFrame) -> pl.Series:
    """0..height-1 as ROW, cut in the same chunks as the file's columns (its row groups): a column
    chunked otherwise would make polars copy every column of the frame into one chunk at its first
    select (+0.9 GiB at 11.5M rows)."""
    lengths = [len(c) for c in df.to_series(0).get_chunks()] if df.width else [df.height]
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    return pl.concat([pl.int_range(s, s + n, dtype=pl.Int64, eager=True) for s, n in zip(starts, lengths)]
                     or [pl.Series(dtype=pl.Int64)], rechunk=False).alias(ROW)


def read_source(ds: DatasetParams, day: dt.date, files: list[tuple[str, bytes]] | None = None
                ) -> tuple[list[pl.DataFrame], list[dict]]:
    """Each file of the source partition of `day` (`files`: its bytes, already read), with
    _source_file/_source_row columns."""
    frames, sources = [], []
    for uri, data in files if files is not None else source_files(ds, day):
        df = _read_file(ds, day, uri, data)
        # (replacing a source column of that name, as any unmapped column is ignored)
        frames.append(df.with_columns(_row_numbers(df), pl.lit(uri.rsplit("/", 1)[-1]).alias(FILE)))
        sources.append({"uri": uri, "bytes": len(data), "rows": df.height, "sha256": storage.sha256(data),
                        "columns": [c for c in df.columns if c not in (FILE, ROW)]})
    return frames, sources


ID_SEED = 20261204          # the hash the earlier days' ids are matched by before the ids themselves
ID_BATCH_ROWS = 8_000_000   # earlier days' rows (id, label) held for one hash join: ~200 MB at most


IDS = "_ids."               # + the canonical object's file name, beside it (in its record): its ids' hashes, sorted
# hashed as the ids are (see _probe): short ids (inline in polars' strings) and long ones
ID_PROBES = ["", "7", "tx000001", "tx0000012345", "tx00000123456", "fraudops:event_id", "0" * 40, "é-ü-中-ids"]


def _id_hash() -> pl.Expr:
    return pl.col("event_id").hash(seed=ID_SEED).alias("__h")


def distinct_ids(ids: pl.Series, hashed=lambda s: s.hash(seed=ID_SEED)) -> int:
    """`ids.n_unique()` (a null counts as one value), exactly, from the ids' 64-bit hashes
    (repeats.n_unique): 0.2-0.3 s instead of 2.0 s for 10M ids."""
    return repeats.n_unique(ids, hashed)


def _ids_uri(canonical_uri: str) -> str:
    """Named after the canonical object (as its record is): unique whatever the layout puts in one
    folder, and hidden (`_`) from a listing or a reader's glob of the folder's data."""
    folder, name = canonical_uri.rsplit("/", 1)
    return f"{folder}/{IDS}{name}"


def _probe() -> str:
    """What this process hashes ID_PROBES to: a partition's id hashes are used only where they match (a
    polars whose hash changed, for any length of id, reads the ids themselves instead: no repeat missed)."""
    return ",".join(str(h) for h in pl.Series(ID_PROBES).hash(seed=ID_SEED).to_list())


def _withdraw(pub: storage.Publisher, canonical_uri: str) -> None:
    """A canonical partition withdrawn: its record, its object, its ids' hashes."""
    pub.remove(canonical_uri)
    pub.remove(_ids_uri(canonical_uri))


def put_canonical(part: storage.Partition, uri: str, canonical: pl.DataFrame) -> None:
    """The canonical partition's Parquet and, beside it, its ids' hashes (put_id_hashes), made in a
    thread while the Parquet is encoded (on one core, the last of the night's ingest: 10M transactions'
    hashes took 0.45 s after it)."""
    with ThreadPoolExecutor(1, thread_name_prefix="id-hashes") as pool:
        hashed = pool.submit(id_hashes, canonical["event_id"])
        part.put_parquet(uri, canonical)
        data = hashed.result()
    _put_hashes(part, uri, data)


def put_id_hashes(part: storage.Partition, uri: str, ids: pl.Series) -> None:
    """Beside the canonical partition `uri`: its ids' 64-bit hashes (id_hashes), and in the record how
    they were hashed. Every later night's duplicate window reads these instead of the ids (seen_before)."""
    _put_hashes(part, uri, id_hashes(ids))


def id_hashes(ids: pl.Series) -> bytes:
    """The ids' 64-bit hashes (ID_SEED), unique and sorted, as Parquet: one UInt64 column `h`
    delta-encoded (~5 bytes an id: 31 MB at 6.3M rows, vs the partition's 89 MB)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    hashes = ids.to_frame("event_id").select(_id_hash())["__h"].unique().sort()
    buf = io.BytesIO()
    pq.write_table(pa.table({"h": hashes.to_arrow()}), buf, compression="none", use_dictionary=False,
                   column_encoding={"h": "DELTA_BINARY_PACKED"}, write_statistics=False)
    return buf.getvalue()


def _put_hashes(part: storage.Partition, uri: str, data: bytes) -> None:
    part.put(_ids_uri(uri), data)
    part.extra["ids"] = {"object": _ids_uri(uri).rsplit("/", 1)[1], "hash": "polars", "seed": ID_SEED,
                         "probe": _probe()}


def _read(reader: lineage.Reader, uri: str, memo: dict | None, columns: list[str], primary: str | None = None
          ) -> pl.DataFrame:
    """A committed Parquet object's `columns`, through `memo` when there is one (a range)."""
    return reader.read_parquet_memo(uri, memo, columns, primary) if memo is not None else \
        reader.read_parquet(uri, primary, columns)


def _hashes(reader: lineage.Reader, uri: str, memo: dict | None, probe: str) -> pl.DataFrame | None:
    """The sorted id hashes of the committed canonical partition `uri` (put_canonical), verified as
    any object of it; None where it has none (published before them) or they were hashed otherwise."""
    rec = reader.record(uri)
    ids = rec.get("ids") or {}
    side = _ids_uri(uri)
    if ids.get("probe") != probe or ids.get("seed") != ID_SEED or side not in rec["objects"]:
        return None
    return _read(reader, side, memo, ["h"], uri).with_columns(pl.col("h").set_sorted())


def seen_before(ds: DatasetParams, day: dt.date, store: StorageParams, window_days: int, reader: lineage.Reader,
                memo: dict | None = None, ids: pl.DataFrame | None = None) -> pl.DataFrame:
    """event_id (and label) of the rows ingested for the `window_days` days before `day` (read
    through their records: a half-published partition is not trusted); with `ids` (an event_id
    column: the ids delivered for `day`) only those rows. An earlier day with its ids' hashes
    (put_canonical) is matched on them: a merge of two sorted columns, and the day's ids themselves
    are read only where a hash matches (a repeat, or a collision the ids then tell apart); a night
    with no repeat reads no earlier day's ids (the 44 days before a 6.3M-row date: 27.1 s of
    transactions ingest with the ids read, see benchmarks/RESULTS.md). Other days are cut by a hash
    join over several days at once (ID_BATCH_ROWS rows held), so memory holds a few earlier days at
    most, not the window (45 days of ids). `memo`: kept across
    the days of a range (each earlier day is fetched once, not once per later day: 45x fewer reads,
    the window held in memory), pruned to this day's window."""
    cols = ["event_id", "label"] if ds.columns.label else ["event_id"]
    frames, window = [], set()
    hashed = _id_hash()
    wanted = None if ids is None else ids.select(hashed)        # hashed once: each earlier day is cut by it
    # the day's hashes, unique and sorted: joined with an earlier day's (sorted too) by a merge
    mine = None if ids is None else wanted.select(pl.col("__h").unique().sort().set_sorted().alias("h"))
    probe = _probe()
    batch: list[pl.DataFrame] = []
    days = [d for d in (day - dt.timedelta(days=i) for i in range(window_days, 0, -1)) if d >= ds.first_date]
    uris = [store.uri("canonical", dataset=ds.name, date=d.isoformat()) for d in days]
    if mine is not None and memo is None:   # one date: the window's id hashes read ahead by the OS, in order
        storage.read_ahead([_ids_uri(u) for u in uris])

    def cut() -> None:
        """The batch's rows whose id hash is one of `ids`' (one hash join of the hashes alone for
        several days: the join's build is most of its cost), then checked on the ids themselves: a
        hash collision is no match."""
        if not batch:
            return
        hashes = pl.concat([f.select(hashed) for f in batch]).with_row_index("__r")
        rows = hashes.join(wanted, on="__h", how="semi")["__r"]
        start = 0
        for f in batch:
            mine = rows.filter((rows >= start) & (rows < start + f.height)) - start
            if mine.len():
                frames.append(f.gather(mine).join(ids, on="event_id", how="semi"))
            start += f.height
        batch.clear()
    for uri in uris:
        window |= {uri, _ids_uri(uri)}
        try:
            hashes = _hashes(reader, uri, memo, probe) if mine is not None else None
            if hashes is not None:
                found = hashes.join(mine, on="h", how="inner")["h"]
                if found.len():                 # the day's ids where a hash matched, checked on the ids below
                    frames.append(_read(reader, uri, memo, cols).filter(hashed.is_in(found.implode()))
                                  .join(ids, on="event_id", how="semi"))
                continue
            frame = _read(reader, uri, memo, cols)
        except lineage.NotCommitted:            # a day that was never ingested or was withdrawn
            continue
        except lineage.StaleInput as exc:
            raise IngestError(f"{ds.name} {day}: the ids of an earlier day cannot be trusted ({exc}); re-run ingest "
                              f"for the earlier dates first; nothing published, the run fails") from None
        if wanted is None:
            frames.append(frame)
            continue
        batch.append(frame)
        del frame
        if sum(b.height for b in batch) >= ID_BATCH_ROWS:
            cut()
    if wanted is not None:
        cut()
    for key in [k for k in (memo or {}) if k[0] not in window]:
        del memo[key]
    return pl.concat(frames) if frames else pl.DataFrame(schema={c: pl.String if c == "event_id" else pl.Int8 for c in cols})


def run_key(ds: DatasetParams, day: dt.date, store: StorageParams, params: IngestParams,
            files: list[tuple[str, bytes]]) -> dict | None:
    """What a canonical partition is made of: the source files' bytes, the earlier days' partitions
    whose ids it is checked against (their records), the dataset's and the ingest settings, the
    code and the libraries. Kept as `run` in its record: a re-run with the same key recomputes
    nothing. None when an earlier day is not trusted (the run then fails on it as always)."""
    from dataclasses import asdict

    window = [day - dt.timedelta(days=i) for i in range(params.duplicate_window_days, 0, -1)]
    try:
        earlier = lineage.committed([store.uri("canonical", dataset=ds.name, date=d.isoformat())
                                     for d in window if d >= ds.first_date])
    except lineage.StaleInput:
        return None
    settings = {k: v for k, v in asdict(params).items() if k != "dataset_threads"}     # how, not what
    return lineage.stage_key("ingest", earlier, {"ingest": settings, "dataset": asdict(ds)}, "pipelines.ingest",
                             sources={uri: storage.sha256(data) for uri, data in files})


def ingest_partition(ds: DatasetParams, day: dt.date, store: StorageParams, params: IngestParams,
                     pub: storage.Publisher, memo: dict | None = None, recompute: bool = False) -> dict:
    """Read, normalize and publish one partition; return its stats. Raises IngestError when the
    partition cannot be ingested, after withdrawing its previous canonical partition and publishing
    the evidence (rejects, stats). A partition made from the same source bytes, earlier days,
    settings and code (run_key) is not made again unless `recompute`."""
    fields = {"dataset": ds.name, "date": day.isoformat()}
    canonical_uri = store.uri("canonical", **fields)
    try:
        files = source_files(ds, day)
        key = run_key(ds, day, store, params, files)
        if lineage.reusable(canonical_uri, key, pub, recompute) is not None:
            try:
                stats = storage.read_json(store.uri("ingest_stats", **fields))
                log.info("%s %s: unchanged since its record (the same source files, earlier days, settings and "
                         "code: key %s); nothing recomputed -> %s", ds.name, day, key["key"][:12], canonical_uri)
                return {**stats, "unchanged": True}
            except storage.MissingObject:
                pass
        frames, sources = read_source(ds, day, files)
        del files                               # (their bytes: decoded into frames)
    except (IngestError, storage.StorageError) as exc:
        _withdraw(pub, canonical_uri)
        pub.put_json(store.uri("ingest_stats", **fields), {"dataset": ds.name, "date": day.isoformat(),
                                                           "status": "failed", "reason": str(exc)})
        raise IngestError(str(exc)) from None
    reader = lineage.Reader()
    src = ds.columns.mapping()["event_id"]
    ids = pl.concat([f.select(pl.col(src).cast(pl.String, strict=False).alias("event_id")) for f in frames
                     if src in f.columns and not f.schema[src].is_nested()]     # (a nested id: rejected below)
                    or [pl.DataFrame(schema={"event_id": pl.String})])      # (the columns themselves: no copy)
    checked = distinct_ids(ids["event_id"])   # counted, not made: a unique copy held through normalize (+350 MiB at 11.5M)
    seen = seen_before(ds, day, store, params.duplicate_window_days, reader, memo, ids)
    result = normalize(frames, ds, day, params, seen)
    stats = {**result.stats, "status": "published", "sources": [{k: v for k, v in s.items() if k != "sha256"}
                                                               for s in sources],
             "duplicate_window": {"days": params.duplicate_window_days, "ids_checked": checked,
                                  "ids_found": seen.height}}
    del ids, frames                             # the source columns: in result.canonical now, or gone
    if result.stats["missing_columns"]:
        _withdraw(pub, canonical_uri)
        pub.put_parquet(store.uri("rejects", **fields), result.rejects)
        pub.put_json(store.uri("ingest_stats", **fields), {**stats, "status": "failed"})
        found = {s["uri"].rsplit("/", 1)[-1]: s["columns"] for s in sources}
        raise IngestError(f"{ds.name} {day}: source column(s) {result.stats['missing_columns']} missing from or "
                          f"unusable in {ds.partition_uri(day)}/ (found {found}); all {stats['rows_in']} rows rejected "
                          f"to {store.uri('rejects', **fields)}, nothing published, the run fails")
    # the earlier days' ids are recorded, not chained as inputs: re-ingesting an old day does not
    # invalidate every later one (an id that reaches two days anyway stops the features, by name)
    part = pub.partition(canonical_uri, "ingest", sources={s["uri"]: s["sha256"] for s in sources},
                         extra={"ids_seen_in": reader.consumed, **({"run": key} if key else {})})
    part.put_parquet(store.uri("rejects", **fields), result.rejects)
    put_canonical(part, canonical_uri, result.canonical)
    part.put_json(store.uri("ingest_stats", **fields), stats)
    part.commit()
    conflicts = stats.get("label_conflicts") or {}
    if any(conflicts.values()):
        log.warning("%s %s: conflicting labels for the same id: %d within the day, %d against an earlier day "
                    "(the first is kept; the others are in %s)", ds.name, day, conflicts["within_day"],
                    conflicts["across_days"], store.uri("rejects", **fields))
    return stats


def landed(ds: DatasetParams, day: dt.date) -> bool:
    """Does the source partition of `day` hold at least one file of the dataset's format?"""
    ext = ".parquet" if ds.format == "parquet" else ".csv"
    return any(u.endswith(ext) for u in storage.list_uris(ds.partition_uri(day)))


def check_landed(params, names: list[str], days) -> int:
    """Exit code for a sensor: 0 when every source partition of `days` holds at least one file."""
    missing = []
    for name in names:
        ds = params.dataset(name)
        ext = ".parquet" if ds.format == "parquet" else ".csv"
        for day in days:
            if day >= ds.first_date and not landed(ds, day):
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
    ap.add_argument("--if-landed", action="append", default=[], metavar="DATASET",
                    help="ingest this dataset only where its partition has landed (else skip it, said in the log): the "
                         "nightly DAG waits for the transactions and takes the labels that are there")
    ap.add_argument("--recompute", action="store_true",
                    help="ingest even a partition made from the same source files, earlier days, settings and code")
    args = ap.parse_args(argv)
    params, days = resolve(args)
    store, ing = params.storage, params.ingest
    if args.check:
        return check_landed(params, args.dataset or params.dataset_names, days)
    memos: dict[str, dict] = {}           # per dataset: the earlier days' ids, across the days of a range
    with storage.Publisher(store.lake, args.snapshot) as pub:
        def one(item: tuple[DatasetParams, dt.date]) -> None:
            ds, day = item
            memo = memos.setdefault(ds.name, {}) if len(days) > 1 else None    # one date: one earlier day at a time
            s = ingest_partition(ds, day, store, ing, pub, memo, args.recompute)
            log.info("%s %s: in=%d out=%d rejected=%d %s", ds.name, day, s["rows_in"], s["rows_out"],
                     s["rows_rejected"], s["rejected_by_reason"] or "")

        todo = []
        for name in args.dataset or params.dataset_names:
            ds = params.dataset(name)
            for day in days:
                if day < ds.first_date:
                    log.info("%s %s: before first_date %s, nothing to ingest", name, day, ds.first_date)
                elif name in args.if_landed and not landed(ds, day):
                    log.warning("%s %s: not landed yet (%s), skipped (--if-landed); its own DAG ingests it when it lands",
                                name, day, ds.partition_uri(day))
                else:
                    todo.append((ds, day))
        each_partition(todo, one, (IngestError, storage.StorageError), "ingest failed for", stage="ingest",
                       lane=lambda item: item[0].name, threads=ing.dataset_threads)
    return 0
