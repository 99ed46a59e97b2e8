"""Great Expectations suites: load a reviewed suite, run it on a frame, judge the outcome.

Each expectation in a suite (expectations/<dataset>.json) carries `meta.severity`:
  block  the partition is blocked when it fails; a failing *row-level* block expectation sends the
         offending rows to quarantine instead, and the partition is blocked only if more than
         `max_quarantine_fraction` of it is quarantined.
  warn   recorded; the run continues.
GX has no polars engine: frames cross the boundary as Arrow -> pandas, here and nowhere else. With
`validate.engine: polars` (the default) the suite is evaluated by core/suite_polars, which gives
GX's own outcomes without importing GX; an expectation it does not reproduce runs in GX.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass

import polars as pl

from pipelines.core.suite import Outcome, expectation_name, fill, jsonable, load_suite  # noqa: F401 (load_suite: re-exported)

log = logging.getLogger("pipelines.gx")


@dataclass(frozen=True)
class Validation:
    validated: pl.DataFrame | None
    quarantine: pl.DataFrame
    results: dict

    @property
    def blocked(self) -> bool:
        return self.results["status"] == "blocked"


def run_suite(df: pl.DataFrame, suite: dict, day: dt.date, engine: str = "gx") -> list[Outcome]:
    """Run every expectation of `suite` on `df`; one Outcome each. engine "polars": the polars
    evaluator when it covers the whole suite, else GX; "gx": GX (pandas engine)."""
    if engine == "polars":
        from pipelines.core import suite_polars

        got = suite_polars.run_suite(df, suite, day)
        if got is not None:
            return got
        log.info("suite %s: an expectation outside the polars evaluator; running GX", suite.get("name"))
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
    ctx = gx.get_context(mode="ephemeral")
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (ctx.data_sources.add_pandas("frame").add_dataframe_asset("partition")
             .add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": df.to_pandas()}))
    specs = suite.get("expectations", [])
    configs = [ExpectationConfiguration(type=e["type"], kwargs=fill(e.get("kwargs", {}), day),
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
            reasons.append(f"{o.name} ({o.type}) failed: observed {jsonable(o.observed)!r}"
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
                   allow_quarantine: bool = True, engine: str = "gx") -> Validation:
    return judge(df, run_suite(df, suite, day, engine), dataset, day, max_quarantine_fraction, allow_quarantine)
