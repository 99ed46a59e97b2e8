"""Stage `validate`: Great Expectations suites on a canonical partition; fail closed.

Each expectation in a suite (expectations/<dataset>.json) carries `meta.severity`:
  block  the partition is blocked when it fails: no validated partition is published (a stale one
         is withdrawn), the stage exits non-zero, nothing downstream reads the date.
         A failing *row-level* block expectation sends the offending rows to quarantine instead;
         the partition is blocked only if more than `validate.max_quarantine_fraction` of it
         is quarantined.
  warn   recorded in the results and the report; the run continues.

Data contract: canonical partition in -> validated partition (rows that pass every row-level block
expectation, same schema) + quarantine partition (the other rows, plus `failed_expectations`, the
';'-joined names of the expectations they failed). rows_in = rows_validated + rows_quarantined +
rows_held (held: rows of a blocked partition that are neither). Per partition the results are
written as JSON and as a self-contained HTML report.

GX has no polars engine: frames cross the boundary as Arrow -> pandas, here and nowhere else.
"""
from __future__ import annotations

import datetime as dt
import logging
import os

from pipelines.core import lineage, storage
from pipelines.core.cli import DataBlocked, StageFailed, each_partition, resolve, stage_parser
from pipelines.core.gx import load_suite, validate_frame
from pipelines.core.report import validation_html, validation_index_html

log = logging.getLogger("pipelines.validate")
class ValidationBlocked(RuntimeError):
    """A partition failed a block-severity expectation; the message names it and the rules."""


def run_key(src: str, suite: dict, params) -> dict | None:
    """What a validated partition is made of: the canonical partition (its record), the suite, the
    validate settings, the code and the libraries. Kept as `run` in its record: a re-run with the
    same key recomputes nothing. None when the canonical partition is not trusted."""
    from dataclasses import asdict

    try:
        inputs = lineage.committed([src])
    except lineage.StaleInput:
        return None
    return lineage.stage_key("validate", inputs, {"validate": asdict(params), "suite": suite}, "pipelines.validate",
                             ("great_expectations", "polars", "pyarrow", "pandas"))


def validate_partition(dataset: str, day: dt.date, suite: dict, params, store, pub: storage.Publisher,
                       recompute: bool = False) -> dict:
    """Validate the canonical partition of `day` and publish validated/quarantine/results/report.
    Raises ValidationBlocked (after publishing the evidence) when the partition is blocked. A
    partition validated from the same canonical bytes, suite, settings and code (run_key) is not
    validated again unless `recompute` (a blocked one has no record: it is checked again)."""
    fields = {"dataset": dataset, "date": day.isoformat()}
    src = store.uri("canonical", **fields)
    validated_uri = store.uri("validated", **fields)
    key = run_key(src, suite, params)
    if key is not None and key["inputs"][src] is not None and \
            lineage.reusable(validated_uri, key, pub, recompute, verify=key["inputs"]) is not None:
        try:
            results = storage.read_json(store.uri("validation_results", **fields))
            log.info("%s %s: unchanged since its record (the same canonical partition, suite, settings and code: "
                     "key %s); nothing recomputed -> %s", dataset, day, key["key"][:12], validated_uri)
            return {**results, "unchanged": True}
        except storage.MissingObject:
            pass
    reader = lineage.Reader()
    try:
        data = reader.read_bytes(src)           # checked against its record: the bytes published below
    except (lineage.NotCommitted, lineage.StaleInput) as exc:
        pub.remove(validated_uri)
        why = "does not exist (did ingest fail?)" if isinstance(exc, lineage.NotCommitted) else f"is not valid ({exc})"
        raise ValidationBlocked(f"{dataset} {day}: canonical partition {src} {why}; nothing validated, any earlier "
                                f"validated partition of the date withdrawn, the run fails") from None
    df = storage.read_parquet_bytes(data, src)
    v = validate_frame(df, suite, dataset, day, params.max_quarantine_fraction, engine=params.engine)
    v.results["source"] = src
    index = os.path.relpath(store.layout["validation_index"], os.path.dirname(store.layout["validation_report"])) \
        if "validation_index" in store.layout else None
    report = validation_html(v.results, v.quarantine, index_link=index).encode()
    if v.blocked:
        pub.remove(validated_uri)
        pub.put_parquet(store.uri("quarantine", **fields), v.quarantine)
        pub.put_json(store.uri("validation_results", **fields), v.results)
        pub.put(store.uri("validation_report", **fields), report, "text/html")
        raise ValidationBlocked(f"{dataset} {day}: partition blocked ({src}): " + "; ".join(v.results["reasons"])
                                + f". Quarantine: {store.uri('quarantine', **fields)}; report: "
                                f"{store.uri('validation_report', **fields)}; nothing downstream reads this date")
    part = pub.partition(validated_uri, "validate", inputs=reader.consumed, extra={"run": key} if key else None)
    part.put_parquet(store.uri("quarantine", **fields), v.quarantine)
    part.put_json(store.uri("validation_results", **fields), v.results)
    part.put(store.uri("validation_report", **fields), report, "text/html")
    if v.quarantine.height == 0 and v.validated.height == df.height and v.validated.schema == df.schema:
        # every canonical row passed, in its order: the validated partition is the canonical
        # partition's bytes (checked against its record as they were read), not the rows encoded
        # again (10M rows: ~3 s of a core's zstd and Parquet)
        part.put(validated_uri, data)
    else:
        part.put_parquet(validated_uri, v.validated)
    del data, df
    part.commit()
    return v.results


def main(argv: list[str]) -> int:
    ap = stage_parser("validate", __doc__)
    ap.add_argument("--dataset", default="transactions")
    ap.add_argument("--recompute", action="store_true",
                    help="validate even a partition already validated from the same canonical partition, suite, "
                         "settings and code")
    args = ap.parse_args(argv)
    params, days = resolve(args)
    vp, store = params.validate, params.storage
    if args.dataset not in vp.suites:
        raise StageFailed(f"validate.suites has no suite for dataset {args.dataset!r}")
    if not vp.suites[args.dataset]:
        raise StageFailed(f"validate.suites.{args.dataset} is false: this dataset has no suite to run")
    suite = load_suite(vp.suites[args.dataset])
    first = params.dataset(args.dataset).first_date if params.has_dataset(args.dataset) else None
    with storage.Publisher(store.lake, args.snapshot) as pub:
        def one(day: dt.date) -> None:
            r = validate_partition(args.dataset, day, suite, vp, store, pub, args.recompute)
            log.info("%s %s: passed, %d validated, %d quarantined, warnings: %s", args.dataset, day,
                     r["rows_validated"], r["rows_quarantined"], r["warnings"] or "none")

        try:
            each_partition([d for d in days if not (first and d < first)], one, ValidationBlocked, "validate blocked",
                           failure=DataBlocked, stage="validate")
        finally:
            write_index(store)
    return 0


def write_index(store) -> None:
    """The index of validation runs, blocked ones too: a view over every date, written to the lake
    only (never into a DVC output: it is no date's product and not part of any record)."""
    if "validation_index" not in store.layout:
        return
    try:
        storage.write_bytes(store.uri("validation_index"), validation_index_html(store).encode(), "text/html")
    except storage.StorageError as exc:
        log.warning("validation index not updated (%s); the partitions' own pages are written", exc)
