"""Stage `retrain`: the retraining decision for one date (it trains nothing itself).

`python -m pipelines retrain --date YYYY-MM-DD`

A request opens when the day is drifted and at least `drift_days` (N) of the last `of_last_days` (M)
days are (onset: the first of them), or when the champion's realized performance (the labels fed
back, `performance`: average_precision below / error_rate above `limit`) is past its limit on the
latest scored day whose labels landed (onset: the first of that run of days). A day without
monitoring counts as not drifted (and is named in the reason).

The request trains only once the validated labels of `min_labelled_days_after_onset` days from the
onset have landed (labels of day x land on x + datasets.labels.delay_days): until then each night
records `state: waiting` with the onset and the date the labels are due, and carries the request
on. When they have landed, and not within `cooldown_days` of the previous triggered retrain, and at
most `max_per_30_days` in any 30 days (a request held by cooldown or budget stays open), the
decision is YES: the training range is [ds - window_days + 1, ds], so the training windows end at the
latest fully labelled day and hold the changed days (with the defaults, the test and validation
windows and the last 7 training days are all post-onset days). 0 turns the wait off (the rule before labels were awaited).

After a YES, the days up to it were in that retrain's data: a new request counts only later days
(drifted days, the realized metric's run), and while the model of that retrain is in shadow (the
`challenger` its registration made, not yet promoted or retired by a lifecycle decision) no new
request opens (state `shadow`): the drift against the old champion's reference goes on until the
promotion, and it is the change that model answers. Likewise after a champion move (promotion or
rollback on label date P), only days from P on count: the earlier ones judged another model.

Every decision, yes or no, is recorded with its reason in monitoring/retrain/date=ds/decision.json;
the last line printed is that record as JSON (the nightly DAG reads it from XCom and, on yes,
triggers the training DAG with the `training` conf: range, reason, params file, run id retrain__<ds>).
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
from pipelines.core.lake import REGISTER, REGISTRATION, artifact, read_metrics, read_realized, training_uri

log = logging.getLogger("pipelines.retrain")


class RetrainError(RuntimeError):
    pass


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reason: str
    state: str = "no"                 # no | waiting (for labels) | cooldown | budget | trigger | closed | shadow
    onset: dt.date | None = None      # the first day of the change the request answers
    due: dt.date | None = None        # when the labels the training needs are due
    why: str = ""                     # what opened the request


def wanted(today: dt.date, drifted: dict[dt.date, bool | None], degraded: dict[dt.date, float | None],
           p: RetrainParams, since: dt.date | None = None) -> tuple[dt.date, str] | Decision:
    """Does today open a retrain request? (onset, why), or a no with its reason. Drift: today drifted
    and N of the last M days (onset: the first of them). Performance: the champion's realized metric
    past its limit on the latest scored day whose labels landed (onset: the first of the run of
    such days ending there). `since`: the last triggered retrain; the days up to it were in its data,
    so only later days count."""
    window = [today - dt.timedelta(days=i) for i in range(p.of_last_days - 1, -1, -1)]
    flags = {d: drifted.get(d) for d in window}
    hits = [d for d, f in flags.items() if f and (since is None or d > since)]
    missing = [d.isoformat() for d, f in flags.items() if f is None]
    note = f" (no monitoring for {', '.join(missing)}: counted as not drifted)" if missing else ""
    span = f"{window[0]}..{window[-1]}"
    found: list[tuple[dt.date, str]] = []
    if flags[today] and len(hits) >= p.drift_days:
        found.append((hits[0], f"drift on {len(hits)} of the last {p.of_last_days} days ({', '.join(d.isoformat() for d in hits)})"))
    perf = p.performance
    seen = sorted(d for d in degraded if d <= today and (since is None or d > since))
    if perf and seen and perf.degraded(degraded[seen[-1]]):
        run = [seen[-1]]
        for d in reversed(seen[:-1]):
            if not perf.degraded(degraded[d]):
                break
            run.insert(0, d)
        found.append((run[0], f"realized {perf.metric} {degraded[seen[-1]]:.4f} past its limit {perf.limit} on "
                              f"{seen[-1]} ({len(run)} scored day(s) in a row)"))
    if found:
        return min(o for o, _ in found), "; ".join(w for _, w in found)
    after = f" after the retrain of {since}" if since is not None and since >= window[0] else ""
    if not flags[today]:
        return Decision(False, f"{today} is not drifted; {len(hits)} of the last {p.of_last_days} days ({span}) "
                               f"drifted{after}{note}")
    return Decision(False, f"drift on {len(hits)} of the last {p.of_last_days} days ({span}){after}, "
                           f"{p.drift_days} needed{note}")


def settled(today: dt.date, drifted: dict[dt.date, bool | None], degraded: dict[dt.date, float | None],
            p: RetrainParams) -> bool:
    """The change is over: no drifted day in the last M and the latest realized metric within its limit
    (e.g. a retrained model became champion: monitoring compares against its own reference)."""
    window = [today - dt.timedelta(days=i) for i in range(p.of_last_days)]
    seen = sorted(d for d in degraded if d <= today)
    bad = bool(p.performance and seen and p.performance.degraded(degraded[seen[-1]]))
    return not any(drifted.get(d) for d in window) and not bad


def should_retrain(today: dt.date, drifted: dict[dt.date, bool | None], previous: list[dt.date], p: RetrainParams,
                   degraded: dict[dt.date, float | None] | None = None, open_request: tuple[dt.date, str] | None = None,
                   landed: set[dt.date] | None = None, delay: int = 0,
                   pending: tuple[dt.date, str] | None = None, since: dt.date | None = None) -> Decision:
    """The decision of `today`. drifted: the day_drifted flag of each date (None = not monitored);
    previous: dates of earlier decisions that triggered a retrain; degraded: the champion's realized
    metric per scored day; open_request: (onset, why) of a request still waiting; landed: the label
    dates whose validated labels exist (None: trust the calendar); delay: the label delay in days;
    pending: (date, version) of the last retrain's model while it is in shadow (it answers the change);
    since: only later days are evidence for a new request (default: the last retrain).

    A request trains only once the labels of `min_labelled_days_after_onset` days from its onset have
    landed (the training window then ends at the latest fully labelled day, so it holds the changed
    days); until then it waits, and the record says for what and until when."""
    if open_request is not None and settled(today, drifted, degraded or {}, p):
        return Decision(False, f"the request of onset {open_request[0]} is closed: no drifted day in the last "
                               f"{p.of_last_days} days" + (f" and the champion's realized {p.performance.metric} within its "
                                                          f"limit" if p.performance else ""), "closed")
    if pending is not None and open_request is None:
        return Decision(False, f"the retrain of {pending[0]} answers the change: its model v{pending[1]} is in shadow "
                               f"(no new request until it is promoted or retired)", "shadow")
    earlier = sorted(d for d in previous if d < today)
    if since is None and earlier:
        since = earlier[-1]
    req = open_request or wanted(today, drifted, degraded or {}, p, since)
    if isinstance(req, Decision):
        return req
    onset, why = req
    k = p.min_labelled_days_after_onset
    need = [onset + dt.timedelta(days=i + delay) for i in range(k)]       # the label dates of onset..onset+k-1
    due = need[-1] if need else today
    late = [d for d in need if d <= today and landed is not None and d not in landed]
    if need and (due > today or late):
        labels_of = f"{onset}..{onset + dt.timedelta(days=k - 1)}"
        return Decision(False, f"{why}; waiting for the labels of {labels_of} (onset {onset}), due on {due}"
                               + (f"; due but not landed: {', '.join(map(str, late[:5]))}" if late else ""),
                        "waiting", onset, due, why)
    earlier = sorted(d for d in previous if d < today)
    if earlier and (today - earlier[-1]).days < p.cooldown_days:
        return Decision(False, f"{why}, but in cooldown: a retrain was triggered on {earlier[-1]} "
                               f"(< {p.cooldown_days} days ago)", "cooldown", onset, due, why)
    month = [d for d in earlier if (today - d).days < 30]
    if len(month) >= p.max_per_30_days:
        return Decision(False, f"{why}, but the budget of {p.max_per_30_days} retrains per 30 days is spent "
                               f"({', '.join(map(str, month))})", "budget", onset, due, why)
    labelled = f"; the labels of {k} day(s) from the onset {onset} have landed" if k else ""
    return Decision(True, f"{why}{labelled}; cooldown and budget allow it", "trigger", onset, due, why)


def drift_flags(store: StorageParams, days: list[dt.date]) -> tuple[dict[dt.date, bool | None], list[dt.date]]:
    """Per day: drifted (True/False) by monitor's day_drifted; None where the day has no monitoring.
    A day monitored without a drift verdict (scored by the rules scorer: no reference profile, monitor
    says reference_missing) is no evidence of drift: False, and listed (the second value: not judged)."""
    m = read_metrics(store, "monitoring", days)
    flags: dict[dt.date, bool | None] = {d: None for d in days}
    monitored = {d for d in (m["date"].to_list() if m.height else []) if d in flags}
    for r in (m.filter(pl.col("metric") == "day_drifted") if m.height else m).iter_rows(named=True):
        flags[r["date"]] = bool(r["value"])
    unjudged = sorted(d for d in monitored if flags[d] is None)
    for d in unjudged:
        flags[d] = False
    return flags, unjudged


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


def realized_metric(store: StorageParams, today: dt.date, p: RetrainParams, delay: int = 0,
                    days: int = 30) -> dict[dt.date, float | None]:
    """The champion's realized `retrain.performance.metric` per scored day (the last `days` days) as
    known on `today`: only the days whose labels had landed by then (scored on or before today -
    delay), so a date decides the same whenever it runs (a re-run, a backfill, a labels run that
    ran ahead)."""
    if p.performance is None:
        return {}
    last = today - dt.timedelta(days=delay)
    m = read_realized(store, [last - dt.timedelta(days=i) for i in range(days - 1, -1, -1)])
    m = m.filter((pl.col("role") == "champion") & (pl.col("metric") == p.performance.metric) & (pl.col("slice") == ""))
    return {r["date"]: r["value"] for r in m.sort("date").iter_rows(named=True)}


def open_request(store: StorageParams, today: dt.date, lookback: int = 90) -> tuple[dt.date, str] | None:
    """The request the latest earlier decision left open (waiting for labels, or held by cooldown or budget)."""
    for i in range(1, lookback + 1):
        try:
            rec = storage.read_json(store.uri("retrain_decision", date=(today - dt.timedelta(days=i)).isoformat()))
        except storage.MissingObject:
            continue
        if rec.get("state") in ("waiting", "cooldown", "budget") and rec.get("onset"):
            return dt.date.fromisoformat(rec["onset"]), rec.get("request") or "an earlier request"
        return None
    return None


def pending_challenger(params, today: dt.date, previous: list[dt.date]) -> tuple[dt.date, str] | None:
    """(date, version) when the last triggered retrain registered a challenger that is still in shadow:
    no lifecycle decision since has promoted or retired it, it has not scored a day as the champion,
    and the shadow has not moved on from it (to another version, or to no challenger); else None."""
    earlier = [d for d in previous if d < today]
    if not earlier:
        return None
    last, store, alias = earlier[-1], params.storage, params.shadow.alias
    conf = training_conf(last, params.retrain, "", "")["conf"]
    try:
        reg = storage.read_json(f"{training_uri(params, dt.date.fromisoformat(conf['start_date']), last)}/"
                                f"{artifact(REGISTER, REGISTRATION)}")
    except storage.MissingObject:       # no model (yet): the usual rules, cooldown included
        return None
    if reg.get("alias") != alias or reg.get("version") is None:
        return None
    version = str(reg["version"])
    shadowed = False
    for i in range(1, (today - last).days + 1):
        day = (last + dt.timedelta(days=i)).isoformat()
        rec = storage.read_json_optional(store.uri("lifecycle_decision", date=day)) or {}
        if any(m.get("alias") == alias and str(m.get("from")) == version for m in rec.get("moves", [])):
            return None
        # a move no lifecycle decision made (`models promote`, the promote DAG, a later registration, a
        # person): the nights' own records show it. It scored the day as the champion, or it shadowed
        # and then the shadow scored another version or found no challenger
        champ = storage.read_json_optional(store.uri("scored_model", date=day))
        shadow = storage.read_json_optional(store.uri("shadow_model", date=day))
        if champ is not None and champ.get("scored_by") == "model" and str(champ.get("model_version")) == version:
            return None
        if shadow is not None:
            if shadow.get("scored_by") == "model":
                if str(shadow.get("model_version")) == version:
                    shadowed = True
                elif shadowed:
                    return None
            elif shadowed and str(shadow.get("reason", "")).startswith("no model "):
                return None
    return last, version


def last_champion_move(params, today: dt.date, lookback: int = 30) -> dt.date | None:
    """The latest label date (up to today) whose lifecycle decision moved the champion (a promotion
    or a rollback): the days scored before it were scored, and drift measured, against another model."""
    for i in range(lookback + 1):
        day = today - dt.timedelta(days=i)
        try:
            rec = storage.read_json(params.storage.uri("lifecycle_decision", date=day.isoformat()))
        except storage.MissingObject:
            continue
        if any(m.get("alias") == "champion" for m in rec.get("moves", [])):
            return day
    return None


def landed_labels(params, today: dt.date, onset: dt.date | None, k: int, delay: int) -> set[dt.date]:
    if onset is None or not params.has_dataset("labels"):
        return set()
    dates = [onset + dt.timedelta(days=i + delay) for i in range(k)]
    return {d for d in dates if d <= today and storage.exists(
        params.storage.uri("validated", dataset="labels", date=d.isoformat()))}


def decide_day(params, today: dt.date, params_file: str) -> dict:
    p, store = params.retrain, params.storage
    window = [today - dt.timedelta(days=i) for i in range(p.of_last_days - 1, -1, -1)]
    flags, unjudged = drift_flags(store, window)
    if flags[today] is None:
        raise RetrainError(f"retrain {today}: no monitoring for the day itself "
                           f"({store.uri('monitoring', date=today.isoformat())}); run monitor first")
    prev = previous_triggers(store, today, max(30, p.cooldown_days))
    delay = params.dataset("labels").delay_days if params.has_dataset("labels") else 0
    degraded = realized_metric(store, today, p, delay)
    req = open_request(store, today)
    # evidence counts from the last retrain (its data held the days before) or the last champion
    # move (the days before it were scored, and drift measured, against another model)
    moved = last_champion_move(params, today)
    marks = [x for x in (prev[-1] if prev else None, moved - dt.timedelta(days=1) if moved else None) if x is not None]
    since = max(marks) if marks else None
    onset = req[0] if req else None
    if onset is None:
        first = wanted(today, flags, degraded, p, since)
        onset = None if isinstance(first, Decision) else first[0]
    d = should_retrain(today, flags, prev, p, degraded, req,
                       landed_labels(params, today, onset, p.min_labelled_days_after_onset, delay), delay,
                       pending_challenger(params, today, prev), since)
    rec = {"date": today.isoformat(), "retrain": d.retrain, "state": d.state, "reason": d.reason,
           "request": d.why or None, "onset": d.onset.isoformat() if d.onset else None,
           "labels_due": d.due.isoformat() if d.due else None,
           "drifted": {k.isoformat(): v for k, v in flags.items()},
           "not_judged": [x.isoformat() for x in unjudged],
           "realized": {k.isoformat(): v for k, v in degraded.items()}, "previous_triggers": [x.isoformat() for x in prev],
           "rule": {"drift_days": p.drift_days, "of_last_days": p.of_last_days, "cooldown_days": p.cooldown_days,
                    "max_per_30_days": p.max_per_30_days, "min_labelled_days_after_onset": p.min_labelled_days_after_onset,
                    "performance": vars(p.performance) if p.performance else None, "label_delay_days": delay},
           "training": training_conf(today, p, d.reason, params_file) if d.retrain else None}
    storage.Publisher(store.lake).put_json(store.uri("retrain_decision", date=today.isoformat()), rec)
    return rec


def main(argv: list[str]) -> int:
    args = stage_parser("retrain", __doc__).parse_args(argv)
    params, days = resolve(args)
    rec = None
    for today in days:
        rec = decide_day(params, today, args.params)
        (log.warning if rec["retrain"] else log.info)("retrain %s: %s — %s", today,
                                                      "YES" if rec["retrain"] else rec["state"], rec["reason"])
    print(json.dumps(rec, sort_keys=True))    # last line: the XCom the nightly DAG reads
    return 0
