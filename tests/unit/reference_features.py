"""A slow, obviously-correct feature implementation: one Python loop per row, straight from the
definitions in pipelines/features.py. Used only to check the fast path on small data."""
from __future__ import annotations

import datetime as dt
import math
import statistics

import polars as pl


def reference_features(events: pl.DataFrame, labels: pl.DataFrame, spec, start: dt.date, end: dt.date) -> dict:
    """{event_id: {feature: value}} for events dated in [start, end]."""
    lab = {r["event_id"]: r for r in labels.iter_rows(named=True)}
    rows = events.to_dicts()
    delay = dt.timedelta(days=spec.label_delay_days)
    out = {}
    for r in rows:
        t = r["event_ts"]
        if not (start <= t.date() <= end):
            continue
        f = {"amount": r["amount"]}
        for ent, rs in spec.rolling.items():
            for w in spec.windows_days:
                win = [x[rs.value] for x in rows if x[ent] == r[ent] and t - dt.timedelta(days=w) <= x["event_ts"] < t]
                for agg in rs.aggs:
                    if agg == "count":
                        f[f"{ent}_count_{w}d"] = len(win)
                    elif agg == "sum":
                        f[f"{ent}_{rs.value}_sum_{w}d"] = float(sum(win))
                    elif agg == "mean":
                        f[f"{ent}_{rs.value}_mean_{w}d"] = statistics.fmean(win) if win else None
                    elif agg == "std":
                        f[f"{ent}_{rs.value}_std_{w}d"] = statistics.stdev(win) if len(win) >= 2 else None
                    elif agg == "max":
                        f[f"{ent}_{rs.value}_max_{w}d"] = max(win) if win else None
                    elif agg == "min":
                        f[f"{ent}_{rs.value}_min_{w}d"] = min(win) if win else None
        for ent, windows in spec.target_rate.items():
            for w in windows:
                known = []
                for x in rows:
                    lx = lab.get(x["event_id"])
                    if (x[ent] == r[ent] and lx is not None and lx["label"] is not None
                            and t - delay - dt.timedelta(days=w) <= x["event_ts"] < t - delay and x["event_ts"] < lx["available_at"] < t):
                        known.append(lx["label"])
                f[f"{ent}_fraud_rate_{w}d"] = sum(known) / len(known) if known else None
                f[f"{ent}_labeled_count_{w}d"] = len(known)
        horizon = dt.timedelta(days=max(spec.windows_days))
        for ent in spec.time_since_last:
            prev = [x["event_ts"] for x in rows if x[ent] == r[ent] and t - horizon <= x["event_ts"] < t]
            f[f"{ent}_secs_since_last"] = (t - max(prev)).total_seconds() if prev else None
        if spec.weekend:
            f["is_weekend"] = int(t.weekday() >= 5)
        if spec.night_hours:
            f["is_night"] = int(spec.night_hours[0] <= t.hour < spec.night_hours[1])
        for ratio in spec.ratios:
            den = f.get(ratio.denominator)
            f[ratio.name] = None if den in (None, 0) else f[ratio.numerator] / den
        for c in spec.categoricals:
            f[f"{c}_code"] = spec.categories.index(r[c]) if r[c] in spec.categories else None
        out[r["event_id"]] = f
    return out


def close(a, b, rel=1e-9, abs_=1e-9) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and math.isnan(a):
        return False
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_)
