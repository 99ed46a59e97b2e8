"""`python -m pipelines expectations suggest`: draft an expectation suite from reference data.

Like TFX's SchemaGen: it learns the schema, types, null-ness, ranges, value sets, row-count bounds
and distribution bounds (means, quantiles) of a reference window and writes a suite JSON for a
person to review and commit. The draft is run against its own reference partitions before it is
written; an expectation that fails there is dropped and reported.

Severity policy of the draft (edit it in review):
  block: columns and order, types, not-null (where the reference has no nulls), unique id,
         timestamps inside the partition's day, the hard limits of validate.suggest.hard_limits (a
         finite, plausible range: quarantines inf and absurd values), else non-negative numerics
         (where the reference is),
         known category values, row-count bounds
  warn:  upper value bounds, means and quantiles (distribution drift is watched, not blocked)
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
from pathlib import Path

import polars as pl

from pipelines.core import storage
from pipelines.core.config import SuggestParams, date_range, load_params, parse_date

log = logging.getLogger("pipelines.expectations")
QUANTILES = [0.05, 0.25, 0.5, 0.75, 0.95]
FINITE = 1e300            # a bound every finite number meets and +-inf does not


def _e(kind: str, severity: str, name: str, **kwargs) -> dict:
    return {"type": kind, "kwargs": kwargs, "meta": {"severity": severity, "name": name}}


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def suggest_suite(name: str, ref: pl.DataFrame, day_counts: list[int], p: SuggestParams,
                  numerics: list[str], categoricals: list[str], id_col: str = "event_id",
                  ts_col: str = "event_ts", profile: str = "data") -> dict:
    """Pure core: reference rows (several days) -> a suite dict.

    profile "features": window features may be null by definition (thin history), so not-null is
    asked only of keys, counts, sums and flags; rates get [0, 1]; no distribution bounds (drift
    of features is the monitoring stage's job)."""
    pdf_types = ref.head(1).to_pandas().dtypes
    ex = [_e("expect_table_columns_to_match_ordered_list", "block", "columns", column_list=ref.columns),
          _e("expect_table_row_count_to_be_between", "block", "row_count",
             min_value=int(min(day_counts) * (1 - p.row_count_slack)), max_value=int(max(day_counts) * (1 + p.row_count_slack)))]
    for col in ref.columns:
        ex.append(_e("expect_column_values_to_be_of_type", "block", f"type:{col}", column=col, type_=str(pdf_types[col])))
        never_null = profile != "features" or col in (id_col, ts_col) or any(
            tag in col for tag in ("_count_", "_sum_", "is_")) or col in numerics
        if ref[col].null_count() == 0 and never_null:
            ex.append(_e("expect_column_values_to_not_be_null", "block", f"not_null:{col}", column=col))
    if id_col in ref.columns:
        ex.append(_e("expect_column_values_to_be_unique", "block", f"unique:{id_col}", column=id_col))
    if ts_col in ref.columns:
        ex.append(_e("expect_column_values_to_be_between", "block", f"in_partition_day:{ts_col}", column=ts_col,
                     min_value="{day_start}", max_value="{day_end}"))
    for col in ref.columns:
        s = ref[col]
        if not s.dtype.is_numeric() or s.drop_nulls().len() == 0:
            continue
        lo, hi, mean = float(s.min()), float(s.max()), float(s.mean())
        if profile == "features" and "_rate_" in col:
            ex.append(_e("expect_column_values_to_be_between", "block", f"rate:{col}", column=col, min_value=0, max_value=1))
            continue
        if col in p.hard_limits:     # finite and plausible: +-inf and absurd values are quarantined
            h_lo, h_hi = p.hard_limits[col]
            ex.append(_e("expect_column_values_to_be_between", "block", f"plausible_range:{col}", column=col,
                         min_value=h_lo, max_value=h_hi))
        elif col in numerics:        # no configured limits: at least finite (and non-negative where it was)
            ex.append(_e("expect_column_values_to_be_between", "block", f"finite:{col}", column=col,
                         min_value=0 if lo >= 0 else -FINITE, max_value=FINITE))
        elif lo >= 0:
            ex.append(_e("expect_column_values_to_be_between", "block", f"non_negative:{col}", column=col, min_value=0))
        if profile == "features":
            continue
        ex.append(_e("expect_column_values_to_be_between", "warn", f"plausible_max:{col}", column=col,
                     max_value=_round(hi * 3 if hi > 0 else hi + 1)))
        tol = abs(mean) * p.mean_tolerance or p.mean_tolerance
        ex.append(_e("expect_column_mean_to_be_between", "warn", f"mean:{col}", column=col,
                     min_value=_round(mean - tol), max_value=_round(mean + tol)))
        if col in numerics:
            qs = s.drop_nulls().quantile
            ranges = [[_round(qs(q) * (1 - p.quantile_tolerance)), _round(qs(q) * (1 + p.quantile_tolerance))] for q in QUANTILES]
            ex.append(_e("expect_column_quantile_values_to_be_between", "warn", f"quantiles:{col}", column=col,
                         quantile_ranges={"quantiles": QUANTILES, "value_ranges": ranges}))
    for col in categoricals:
        if col in ref.columns:
            ex.append(_e("expect_column_values_to_be_in_set", "block", f"known_values:{col}", column=col,
                         value_set=sorted(ref[col].drop_nulls().unique().to_list())))
    return {"name": name, "expectations": ex,
            "meta": {"generated_by": "python -m pipelines expectations suggest",
                     "reference": {"start": p.reference_start.isoformat(), "end": p.reference_end.isoformat(),
                                   "rows": ref.height, "days": len(day_counts)},
                     "review": "Drafted from reference data. Review every bound and severity before committing."}}


def self_check(suite: dict, frames: list[tuple[dt.date, pl.DataFrame]]) -> tuple[dict, list[str]]:
    """Drop expectations that fail on the reference itself; return (suite, dropped names)."""
    from pipelines.core.gx import run_suite

    failing: set[str] = set()
    for day, df in frames:
        failing |= {o.name for o in run_suite(df, suite, day) if not o.success}
    kept = [e for e in suite["expectations"] if e["meta"]["name"] not in failing]
    return {**suite, "expectations": kept}, sorted(failing)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines expectations")
    sub = ap.add_subparsers(dest="action", required=True)
    s = sub.add_parser("suggest", help="draft a suite from reference partitions")
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--dataset", default="transactions", help="transactions (canonical) or features")
    s.add_argument("--start", type=parse_date)
    s.add_argument("--end", type=parse_date)
    s.add_argument("--out", help="output path (default: validate.suites[dataset])")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    params = load_params(args.params)
    vp, store = params.validate, params.storage
    p = vp.suggest
    start, end = args.start or p.reference_start, args.end or p.reference_end
    p = dataclasses.replace(p, reference_start=start, reference_end=end)
    frames = []
    for day in date_range(start, end):
        uri = (store.uri("features", date=day.isoformat()) if args.dataset == "features"
               else store.uri("canonical", dataset=args.dataset, date=day.isoformat()))
        frames.append((day, storage.read_parquet(uri)))
    ref = pl.concat([f for _, f in frames])
    if args.dataset == "features":
        numerics, cats = list(params.dataset("transactions").columns.numerics), []
    else:
        cols = params.dataset(args.dataset).columns
        numerics, cats = list(cols.numerics), list(cols.categoricals)
    suite = suggest_suite(args.dataset, ref, [f.height for _, f in frames], p, numerics, cats,
                          profile="features" if args.dataset == "features" else "data")
    suite, dropped = self_check(suite, frames[:: max(1, len(frames) // 5)])
    out = Path(args.out or vp.suites[args.dataset])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(suite, indent=2) + "\n")
    print(f"wrote {out}: {len(suite['expectations'])} expectations from {ref.height} rows ({start}..{end}); "
          f"dropped as failing on the reference: {dropped or 'none'}. Review it, then commit.")
    return 0
