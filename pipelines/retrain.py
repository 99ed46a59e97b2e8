"""Stage `retrain`: the drift-triggered retraining decision for one date (it trains nothing itself).

`python -m pipelines retrain --date YYYY-MM-DD`

`should_retrain` is the rule, pure: retrain when the day is drifted and at least `drift_days` (N) of
the last `of_last_days` (M) days are (the latest included); not within `cooldown_days` of the
previous triggered retrain; at most `max_per_30_days` in any 30 days. A day without monitoring
counts as not drifted (and is named in the reason). Every decision, yes or no, is recorded with its
reason in monitoring/retrain/date=ds/decision.json; the last line printed is that record as JSON
(the nightly DAG reads it from XCom and, on yes, triggers the training DAG with the `training`
conf: range [ds - window_days + 1, ds], the reason, the params file, run id retrain__<ds>).

Cooldown and budget count earlier *decisions* (by logical date), so a backfill decides exactly as
the nightly runs did; the nightly DAG runs this task with depends_on_past so dates decide in order.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass

import polars as pl

from pipelines.core import storage
from pipelines.core.cli import resolve, stage_parser
from pipelines.core.config import RetrainParams, StorageParams
from pipelines.core.lake import read_metrics

log = logging.getLogger("pipelines.retrain")


class RetrainError(RuntimeError):
    pass


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reason: str


def should_retrain(today: dt.date, drifted: dict[dt.date, bool | None], previous: list[dt.date],
                   p: RetrainParams) -> Decision:
    """drifted: the day_drifted flag of each date (None = not monitored); previous: dates of earlier
    decisions that triggered a retrain."""
    window = [today - dt.timedelta(days=i) for i in range(p.of_last_days - 1, -1, -1)]
    flags = {d: drifted.get(d) for d in window}
    hits = [d for d, f in flags.items() if f]
    missing = [d.isoformat() for d, f in flags.items() if f is None]
    note = f" (no monitoring for {', '.join(missing)}: counted as not drifted)" if missing else ""
    span = f"{window[0]}..{window[-1]}"
    if not flags[today]:
        return Decision(False, f"{today} is not drifted; {len(hits)} of the last {p.of_last_days} days ({span}) drifted{note}")
    if len(hits) < p.drift_days:
        return Decision(False, f"drift on {len(hits)} of the last {p.of_last_days} days ({span}), "
                               f"{p.drift_days} needed{note}")
    earlier = sorted(d for d in previous if d < today)
    if earlier and (today - earlier[-1]).days < p.cooldown_days:
        return Decision(False, f"drift on {len(hits)} of the last {p.of_last_days} days, but in cooldown: a retrain was "
                               f"triggered on {earlier[-1]} (< {p.cooldown_days} days ago)")
    month = [d for d in earlier if (today - d).days < 30]
    if len(month) >= p.max_per_30_days:
        return Decision(False, f"drift on {len(hits)} of the last {p.of_last_days} days, but the budget of "
                               f"{p.max_per_30_days} retrains per 30 days is spent ({', '.join(map(str, month))})")
    return Decision(True, f"drift on {len(hits)} of the last {p.of_last_days} days "
                          f"({', '.join(d.isoformat() for d in hits)}); cooldown and budget allow it")


def drift_flags(store: StorageParams, days: list[dt.date]) -> dict[dt.date, bool | None]:
    m = read_metrics(store, "monitoring", days)
    m = m.filter(pl.col("metric") == "day_drifted") if m.height else m
    flags: dict[dt.date, bool | None] = {d: None for d in days}
    for r in m.iter_rows(named=True):
        flags[r["date"]] = bool(r["value"])
    return flags


def previous_triggers(store: StorageParams, today: dt.date, lookback: int) -> list[dt.date]:
    out = []
    for i in range(1, lookback + 1):
        d = today - dt.timedelta(days=i)
        try:
            if storage.read_json(store.uri("retrain_decision", date=d.isoformat())).get("retrain"):
                out.append(d)
        except storage.MissingObject:
            pass
    return sorted(out)


def training_conf(today: dt.date, p: RetrainParams, reason: str, params_file: str) -> dict:
    start = today - dt.timedelta(days=p.window_days - 1)
    return {"dag_id": p.dag_id, "run_id": f"retrain__{today.isoformat()}",
            "conf": {"start_date": start.isoformat(), "end_date": today.isoformat(), "force": False,
                     "params_file": params_file, "reason": f"drift-triggered retrain on {today}: {reason}"}}


def decide_day(params, today: dt.date, params_file: str) -> dict:
    p, store = params.retrain, params.storage
    window = [today - dt.timedelta(days=i) for i in range(p.of_last_days - 1, -1, -1)]
    flags = drift_flags(store, window)
    if flags[today] is None:
        raise RetrainError(f"retrain {today}: no monitoring for the day itself "
                           f"({store.uri('monitoring', date=today.isoformat())}); run monitor first")
    prev = previous_triggers(store, today, max(30, p.cooldown_days))
    d = should_retrain(today, flags, prev, p)
    rec = {"date": today.isoformat(), "retrain": d.retrain, "reason": d.reason,
           "drifted": {k.isoformat(): v for k, v in flags.items()}, "previous_triggers": [x.isoformat() for x in prev],
           "rule": {"drift_days": p.drift_days, "of_last_days": p.of_last_days, "cooldown_days": p.cooldown_days,
                    "max_per_30_days": p.max_per_30_days},
           "training": training_conf(today, p, d.reason, params_file) if d.retrain else None}
    storage.Publisher(store.lake).put_json(store.uri("retrain_decision", date=today.isoformat()), rec)
    return rec


def main(argv: list[str]) -> int:
    args = stage_parser("retrain", __doc__).parse_args(argv)
    params, days = resolve(args)
    rec = None
    for today in days:
        rec = decide_day(params, today, args.params)
        (log.warning if rec["retrain"] else log.info)("retrain %s: %s — %s", today, "YES" if rec["retrain"] else "no",
                                                      rec["reason"])
    print(json.dumps(rec, sort_keys=True))    # last line: the XCom the nightly DAG reads
    return 0
