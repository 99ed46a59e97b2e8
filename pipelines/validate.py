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
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pipelines import lineage, storage
from pipelines.cli import StageFailed, resolve, stage_parser
from pipelines.config import ConfigError
from pipelines.report import validation_html

log = logging.getLogger("pipelines.validate")
SEVERITIES = ("block", "warn")


class ValidationBlocked(RuntimeError):
    """A partition failed a block-severity expectation; the message names it and the rules."""


@dataclass(frozen=True)
class Outcome:
    name: str
    type: str
    column: str | None
    severity: str
    success: bool
    row_level: bool
    unexpected_count: int
    observed: Any
    kwargs: dict
    error: str | None = None
    unexpected_rows: tuple[int, ...] = field(default=(), repr=False)

    def public(self) -> dict:
        return {"name": self.name, "type": self.type, "column": self.column, "severity": self.severity,
                "success": self.success, "row_level": self.row_level, "unexpected_count": self.unexpected_count,
                "observed": _jsonable(self.observed), "kwargs": _jsonable(self.kwargs), "error": self.error}


@dataclass(frozen=True)
class Validation:
    validated: pl.DataFrame | None
    quarantine: pl.DataFrame
    results: dict

    @property
    def blocked(self) -> bool:
        return self.results["status"] == "blocked"


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v, default=lambda o: o.isoformat() if hasattr(o, "isoformat") else
                                 (o.item() if hasattr(o, "item") else str(o))))


def load_suite(path: str | Path) -> dict:
    """A reviewed suite (expectations/<dataset>.json); a suite that cannot be loaded is an error
    (fail closed: nothing is ever published unvalidated because of a typo)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"expectation suite {p} not found; nothing validated, the run fails (generate one with "
                          f"`python -m pipelines expectations suggest` and review it)")
    try:
        suite = json.loads(p.read_text())
    except ValueError as exc:
        raise ConfigError(f"expectation suite {p} is not valid JSON ({exc}); nothing validated, the run fails") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise ConfigError(f"expectation suite {p} has no 'expectations' list; nothing validated, the run fails")
    for i, e in enumerate(suite.get("expectations", [])):
        sev = e.get("meta", {}).get("severity")
        if sev not in SEVERITIES:
            raise ValueError(f"{p}: expectation #{i} ({e.get('type')}) has severity {sev!r}; expected block or warn")
    return suite


def expectation_name(e: dict) -> str:
    meta = e.get("meta", {})
    if meta.get("name"):
        return meta["name"]
    kw = e.get("kwargs", {})
    return f"{e['type'].removeprefix('expect_')}:{kw['column']}" if "column" in kw else e["type"].removeprefix("expect_")


def _fill(value: Any, day: dt.date) -> Any:
    """Suites may say {day_start}/{day_end}: the partition's first and last microsecond."""
    start = dt.datetime.combine(day, dt.time())
    marks = {"{day_start}": start, "{day_end}": start + dt.timedelta(days=1, microseconds=-1)}
    if isinstance(value, str) and value in marks:
        return marks[value]
    if isinstance(value, dict):
        return {k: _fill(v, day) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, day) for v in value]
    return value


def run_suite(df: pl.DataFrame, suite: dict, day: dt.date) -> list[Outcome]:
    """Run every expectation of `suite` on `df` with GX (pandas engine); one Outcome each."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
    ctx = gx.get_context(mode="ephemeral")
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (ctx.data_sources.add_pandas("frame").add_dataframe_asset("partition")
             .add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": df.to_pandas()}))
    specs = suite.get("expectations", [])
    configs = [ExpectationConfiguration(type=e["type"], kwargs=_fill(e.get("kwargs", {}), day),
                                        meta={**e.get("meta", {}), "_index": i}) for i, e in enumerate(specs)]
    gx_suite = gx.ExpectationSuite(name=suite.get("name", "suite"), expectations=[c.to_domain_obj() for c in configs])
    res = batch.validate(gx_suite, result_format={"result_format": "COMPLETE"})
    by_index = {r.expectation_config.meta.get("_index"): r for r in res.results}
    outcomes = []
    for i, e in enumerate(specs):
        r = by_index.get(i)
        result = (r.result or {}) if r else {}
        err = None
        if r is None:
            err = "expectation did not run"
        elif r.exception_info and r.exception_info.get("raised_exception"):
            err = str(r.exception_info.get("exception_message"))[:300]
        row_level = "unexpected_index_list" in result
        rows = tuple(int(j) for j in result.get("unexpected_index_list") or ()) if row_level else ()
        outcomes.append(Outcome(
            name=expectation_name(e), type=e["type"], column=e.get("kwargs", {}).get("column"),
            severity=e["meta"]["severity"], success=bool(r.success) if r and not err else False,
            row_level=row_level, unexpected_count=int(result.get("unexpected_count") or 0),
            observed=result.get("observed_value"), kwargs=e.get("kwargs", {}), error=err, unexpected_rows=rows))
    return outcomes


def judge(df: pl.DataFrame, outcomes: list[Outcome], dataset: str, day: dt.date, max_quarantine_fraction: float,
          allow_quarantine: bool = True) -> Validation:
    """Pure core: outcomes -> validated rows, quarantined rows, status and reasons."""
    n = df.height
    failed_by_row: dict[int, list[str]] = {}
    reasons: list[str] = []
    for o in outcomes:
        if o.success or o.severity != "block":
            continue
        if o.row_level and allow_quarantine and not o.error:
            for i in o.unexpected_rows:
                failed_by_row.setdefault(i, []).append(o.name)
        else:
            reasons.append(f"{o.name} ({o.type}) failed: observed {_jsonable(o.observed)!r}"
                           + (f", error: {o.error}" if o.error else ""))
    bad = sorted(failed_by_row)
    frac = len(bad) / n if n else 0.0
    if frac > max_quarantine_fraction:
        reasons.append(f"{len(bad)} of {n} rows ({frac:.2%}) failed row-level block expectations, more than "
                       f"validate.max_quarantine_fraction={max_quarantine_fraction:.2%}")
    idx = pl.int_range(pl.len(), dtype=pl.Int64)
    flags = pl.DataFrame({"__row": pl.Series(bad, dtype=pl.Int64),
                          "failed_expectations": [";".join(sorted(set(failed_by_row[i]))) for i in bad]},
                         schema={"__row": pl.Int64, "failed_expectations": pl.String})
    tagged = df.with_columns(idx.alias("__row")).join(flags, on="__row", how="left", maintain_order="left")
    quarantine = tagged.filter(pl.col("failed_expectations").is_not_null()).drop("__row")
    blocked = bool(reasons)
    validated = None if blocked else tagged.filter(pl.col("failed_expectations").is_null()).drop("__row", "failed_expectations")
    results = {
        "dataset": dataset, "date": day.isoformat(), "status": "blocked" if blocked else "passed",
        "reasons": reasons, "rows_in": n, "rows_validated": 0 if blocked else validated.height,
        "rows_quarantined": quarantine.height, "rows_held": n - quarantine.height if blocked else 0,
        "warnings": [o.name for o in outcomes if not o.success and o.severity == "warn"],
        "expectations": [o.public() for o in outcomes],
    }
    assert results["rows_in"] == results["rows_validated"] + results["rows_quarantined"] + results["rows_held"]
    return Validation(validated, quarantine, results)


def validate_frame(df: pl.DataFrame, suite: dict, dataset: str, day: dt.date, max_quarantine_fraction: float,
                   allow_quarantine: bool = True) -> Validation:
    return judge(df, run_suite(df, suite, day), dataset, day, max_quarantine_fraction, allow_quarantine)


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
    v = validate_frame(df, suite, dataset, day, params.max_quarantine_fraction)
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
    first = params.dataset(args.dataset).first_date if args.dataset in params.dataset_names else None
    failures = []
    with storage.Publisher(store.lake, args.snapshot) as pub:
        for day in days:
            if first and day < first:
                continue
            try:
                r = validate_partition(args.dataset, day, suite, vp, store, pub)
                log.info("%s %s: passed, %d validated, %d quarantined, warnings: %s", args.dataset, day,
                         r["rows_validated"], r["rows_quarantined"], r["warnings"] or "none")
            except ValidationBlocked as exc:
                log.error("%s", exc)
                failures.append(str(exc))
        if failures:
            raise StageFailed.of("validate blocked", failures)
    return 0
