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

from pipelines.core import lineage, storage
from pipelines.core.cli import DataBlocked, StageFailed, each_partition, resolve, stage_parser
from pipelines.core.gx import load_suite, validate_frame
from pipelines.core.report import validation_html

log = logging.getLogger("pipelines.validate")
class ValidationBlocked(RuntimeError):
    """A partition failed a block-severity expectation; the message names it and the rules."""


def validate_partition(dataset: str, day: dt.date, suite: dict, params, store, pub: storage.Publisher) -> dict:
    """Validate the canonical partition of `day` and publish validated/quarantine/results/report.
    Raises ValidationBlocked (after publishing the evidence) when the partition is blocked."""
    fields = {"dataset": dataset, "date": day.isoformat()}
    src = store.uri("canonical", **fields)
    validated_uri = store.uri("validated", **fields)
    reader = lineage.Reader()
    try:
        df = reader.read_parquet(src)
    except (lineage.NotCommitted, lineage.StaleInput) as exc:
        pub.remove(validated_uri)
        why = "does not exist (did ingest fail?)" if isinstance(exc, lineage.NotCommitted) else f"is not valid ({exc})"
        raise ValidationBlocked(f"{dataset} {day}: canonical partition {src} {why}; nothing validated, any earlier "
                                f"validated partition of the date withdrawn, the run fails") from None
    v = validate_frame(df, suite, dataset, day, params.max_quarantine_fraction, engine=params.engine)
    v.results["source"] = src
    report = validation_html(v.results, v.quarantine).encode()
    if v.blocked:
        pub.remove(validated_uri)
        pub.put_parquet(store.uri("quarantine", **fields), v.quarantine)
        pub.put_json(store.uri("validation_results", **fields), v.results)
        pub.put(store.uri("validation_report", **fields), report, "text/html")
        raise ValidationBlocked(f"{dataset} {day}: partition blocked ({src}): " + "; ".join(v.results["reasons"])
                                + f". Quarantine: {store.uri('quarantine', **fields)}; report: "
                                f"{store.uri('validation_report', **fields)}; nothing downstream reads this date")
    part = pub.partition(validated_uri, "validate", inputs=reader.consumed)
    part.put_parquet(store.uri("quarantine", **fields), v.quarantine)
    part.put_json(store.uri("validation_results", **fields), v.results)
    part.put(store.uri("validation_report", **fields), report, "text/html")
    part.put_parquet(validated_uri, v.validated)
    part.commit()
    return v.results


def main(argv: list[str]) -> int:
    ap = stage_parser("validate", __doc__)
    ap.add_argument("--dataset", default="transactions")
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
            r = validate_partition(args.dataset, day, suite, vp, store, pub)
            log.info("%s %s: passed, %d validated, %d quarantined, warnings: %s", args.dataset, day,
                     r["rows_validated"], r["rows_quarantined"], r["warnings"] or "none")

        each_partition([d for d in days if not (first and d < first)], one, ValidationBlocked, "validate blocked",
                       failure=DataBlocked, stage="validate")
    return 0
