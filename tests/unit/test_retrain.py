"""The retraining rule: N drifted days of the last M, cooldown, budget."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from pipelines.core.config import RetrainParams, RetrainPerformance
from pipelines.retrain import should_retrain

D = dt.date(2026, 3, 10)


RP = RetrainParams(drift_days=2, of_last_days=3, cooldown_days=7, max_per_30_days=2, window_days=40, dag_id="training")


def days(*offsets):
    return {D - dt.timedelta(days=o): True for o in offsets}


@pytest.mark.parametrize("drifted,previous,expect,why", [
    ({}, [], False, "not drifted"),
    (days(0), [], False, "1 of the last 3"),
    (days(1, 2), [], False, "not drifted"),                 # the latest day must be drifted
    (days(0, 2), [], True, "drift on 2 of the last 3"),
    (days(0, 3), [], False, "1 of the last 3"),              # day -3 is outside the window
    (days(0, 1), [D - dt.timedelta(days=6)], False, "cooldown"),
    (days(0, 1), [D - dt.timedelta(days=7)], True, "drift on 2"),
    (days(0, 1), [D - dt.timedelta(days=10), D - dt.timedelta(days=20)], False, "budget"),
    (days(0, 1), [D - dt.timedelta(days=10), D - dt.timedelta(days=30)], True, "drift on 2"),
])
def test_retrain_rule(drifted, previous, expect, why):
    d = should_retrain(D, drifted, previous, RP)
    assert d.retrain is expect and why in d.reason, d.reason


def test_retrain_fires_once_per_cooldown_over_a_drifting_fortnight():
    flags, fired = {}, []
    start = dt.date(2026, 3, 1)
    for i in range(20):
        day = start + dt.timedelta(days=i)
        flags[day] = i >= 5                       # drift from day 5 on, every day
        if should_retrain(day, flags, fired, RP).retrain:
            fired.append(day)
    assert fired == [start + dt.timedelta(days=6), start + dt.timedelta(days=13)]   # N=2, then cooldown 7
    # a missing monitoring day counts as not drifted, and says so
    d = should_retrain(D, {D: True, D - dt.timedelta(days=1): None}, [], RP)
    assert not d.retrain and "no monitoring for" in d.reason


WAIT = RetrainParams(drift_days=2, of_last_days=3, cooldown_days=7, max_per_30_days=2, window_days=59, dag_id="training",
                     min_labelled_days_after_onset=14)     # shorter than params.yaml's 28: the rule is the same


def test_a_request_waits_for_the_labels_of_the_changed_days_then_trains_once():
    """Drift from day 5 on, labels 7 days late: the request opens on day 6 (onset day 5), waits,
    and trains on day 5 + 14 - 1 + 7 = day 25, once; the record says what it waits for."""
    start, delay = dt.date(2026, 3, 1), 7
    flags, fired, req, states = {}, [], None, {}
    for i in range(40):
        day = start + dt.timedelta(days=i)
        flags[day] = i >= 5
        landed = {start + dt.timedelta(days=j) for j in range(i + 1)}          # every label day on time
        d = should_retrain(day, flags, fired, WAIT, open_request=req, landed=landed, delay=delay)
        states[i] = d.state
        req = (d.onset, d.why) if d.state in ("waiting", "cooldown", "budget") else None
        if d.retrain:
            fired.append(day)
        if i == 6:
            assert d.state == "waiting" and d.onset == start + dt.timedelta(days=5)
            assert d.due == start + dt.timedelta(days=5 + 13 + 7) and "waiting for the labels of 2026-03-06..2026-03-19" in d.reason
    assert fired[0] == start + dt.timedelta(days=25) and states[25] == "trigger"
    assert all(states[i] == "waiting" for i in range(6, 25))
    # the drift goes on: days up to the retrain were in its data; a new request needs N of the next
    # days (onset day 26), then waits for its own labels
    assert fired == [start + dt.timedelta(days=25)] and states[26] == "no" and states[27] == "waiting"


def test_late_labels_keep_the_request_waiting_and_say_which():
    onset, delay = dt.date(2026, 3, 6), 7
    due = onset + dt.timedelta(days=13 + delay)
    landed = {onset + dt.timedelta(days=i + delay) for i in range(14)} - {onset + dt.timedelta(days=9)}
    ongoing = {due - dt.timedelta(days=i): True for i in range(3)}
    d = should_retrain(due, ongoing, [], WAIT, open_request=(onset, "drift"), landed=landed, delay=delay)
    assert d.state == "waiting" and "due but not landed: 2026-03-15" in d.reason
    d = should_retrain(due, ongoing, [], WAIT, open_request=(onset, "drift"), landed=landed | {onset + dt.timedelta(days=9)},
                       delay=delay)
    assert d.retrain and d.state == "trigger"


def test_realized_performance_opens_a_request_with_its_onset():
    from pipelines.core.config import RetrainPerformance

    p = RetrainParams(**{**vars(WAIT), "performance": RetrainPerformance("average_precision", 0.4)})
    day = dt.date(2026, 3, 20)
    ap = {dt.date(2026, 3, 10): 0.7, dt.date(2026, 3, 11): 0.35, dt.date(2026, 3, 12): 0.3, dt.date(2026, 3, 13): 0.2}
    d = should_retrain(day, {day: False}, [], p, degraded=ap, delay=7)
    assert d.state == "waiting" and d.onset == dt.date(2026, 3, 11) and "realized average_precision 0.2000" in d.reason
    assert should_retrain(day, {day: False}, [], p, degraded={**ap, dt.date(2026, 3, 14): 0.6}, delay=7).state == "no"
    err = RetrainParams(**{**vars(WAIT), "performance": RetrainPerformance("error_rate", 0.01)})
    assert should_retrain(day, {day: False}, [], err, degraded={dt.date(2026, 3, 13): 0.02}, delay=7).onset == dt.date(2026, 3, 13)


def test_an_open_request_closes_when_the_change_is_over():
    from pipelines.core.config import RetrainPerformance

    p = RetrainParams(**{**vars(WAIT), "performance": RetrainPerformance("average_precision", 0.4)})
    day, onset = dt.date(2026, 4, 25), dt.date(2026, 4, 10)
    calm = {day - dt.timedelta(days=i): False for i in range(3)}
    d = should_retrain(day, calm, [], p, degraded={dt.date(2026, 4, 18): 0.72}, open_request=(onset, "drift"), delay=7)
    assert d.state == "closed" and not d.retrain and "2026-04-10 is closed" in d.reason
    # still degraded (the old champion's labels), or one drifted day in the window: it stays open
    assert should_retrain(day, calm, [], p, degraded={dt.date(2026, 4, 18): 0.3}, open_request=(onset, "drift"),
                          delay=7).state == "waiting"
    assert should_retrain(day, {**calm, day - dt.timedelta(days=2): True}, [], p, open_request=(onset, "drift"),
                          delay=7).state == "waiting"


def test_no_new_request_while_the_retrained_model_is_in_shadow_then_only_fresh_evidence():
    """After a retrain its challenger answers the change: drift against the old champion's reference
    opens nothing (state shadow); after the promotion, days before it are no evidence."""
    day, retrained = dt.date(2026, 3, 16), dt.date(2026, 3, 13)
    drifting = {day - dt.timedelta(days=i): True for i in range(10)}
    d = should_retrain(day, drifting, [retrained], WAIT, pending=(retrained, "2"))
    assert d.state == "shadow" and not d.retrain and "v2 is in shadow" in d.reason
    # promoted on 03-16: the old champion's bad AP of 03-15 and drift up to 03-15 are not evidence
    p = dataclasses.replace(WAIT, performance=RetrainPerformance("average_precision", 0.4))
    calm = {**drifting, day: False}
    d = should_retrain(day, calm, [retrained], p, degraded={dt.date(2026, 3, 15): 0.3}, delay=1,
                       since=dt.date(2026, 3, 15))
    assert d.state == "no" and not d.retrain, d.reason
    # without the reset the same evidence would open a request
    assert should_retrain(day, calm, [retrained], p, degraded={dt.date(2026, 3, 15): 0.3}, delay=1).state == "waiting"


def test_a_day_the_rules_scored_is_monitored_but_not_judged_and_retrain_goes_on(tmp_path):
    """No champion yet (or a model that failed to load): the rules scored the day, there is no reference
    profile, monitor writes reference_missing and no day_drifted. retrain reads that day as monitored
    without a verdict (no drift evidence, listed in not_judged), not as a missing monitor run; a day
    with no monitoring at all still fails by name."""
    import polars as pl

    from pipelines import monitor, retrain
    from pipelines.core import storage
    from pipelines.core.config import load_params
    from pipelines.core.lake import METRIC_SCHEMA
    from tests.conftest import params_with_lake

    path = params_with_lake(tmp_path, str(tmp_path / "lake"))
    params = load_params(path)
    obs = monitor.Observed(rows=1000, features={}, score=None, above_threshold=5, fallback_any=1000,
                           fallback={"rules": 1000})
    rows, _ = monitor.day_metrics(D, obs, {"rates": {"approve": 0.99, "review": 0.01}},
                                  {"scored_by": "rules", "reference_profile": None}, params.monitor)
    assert "reference_missing" in {r["metric"] for r in rows} and "day_drifted" not in {r["metric"] for r in rows}
    storage.write_bytes(params.storage.uri("monitoring", date=D.isoformat()),
                        storage.parquet_bytes(pl.DataFrame(rows, schema=METRIC_SCHEMA)))
    rec = retrain.decide_day(params, D, str(path))
    assert rec["retrain"] is False and rec["not_judged"] == [D.isoformat()] and rec["drifted"][D.isoformat()] is False
    with pytest.raises(retrain.RetrainError, match="no monitoring for the day itself"):
        retrain.decide_day(params, D + dt.timedelta(days=1), str(path))


@pytest.mark.parametrize("route,left_on", [
    ("promoted by hand", 4),          # `models promote 2` / the promote DAG: v2 scores day 4 as the champion
    ("replaced", 5),                  # a later registration: the shadow scores v3 from day 5
    ("alias removed", 5),             # the challenger alias was removed: the shadow finds no model
    ("registry down", None),          # the shadow could not ask: still in shadow
])
def test_the_challenger_leaves_shadow_by_any_route_the_nights_record(tmp_path, route, left_on):
    """retrain's 'shadow' state ends when the challenger it registered leaves the shadow, whoever moved it:
    the nights' own records (which model scored the day, which one shadowed it) show it, not only the
    lifecycle decisions' moves."""
    from pipelines import retrain
    from pipelines.core import storage
    from pipelines.core.config import load_params
    from pipelines.core.lake import REGISTER, REGISTRATION, artifact, training_uri
    from tests.conftest import params_with_lake

    params = load_params(params_with_lake(tmp_path, str(tmp_path / "lake")))
    store, last = params.storage, D
    storage.write_bytes(store.uri("retrain_decision", date=last.isoformat()), storage.json_bytes({"retrain": True}))
    conf = retrain.training_conf(last, params.retrain, "", "")["conf"]
    storage.write_bytes(f"{training_uri(params, dt.date.fromisoformat(conf['start_date']), last)}/"
                        f"{artifact(REGISTER, REGISTRATION)}", storage.json_bytes({"alias": params.shadow.alias, "version": 2}))

    def night(i: int, champion: str, shadow: dict) -> None:
        d = (last + dt.timedelta(days=i)).isoformat()
        storage.write_bytes(store.uri("scored_model", date=d), storage.json_bytes(
            {"scored_by": "model", "model_version": champion}))
        storage.write_bytes(store.uri("shadow_model", date=d), storage.json_bytes(shadow))

    v2 = {"scored_by": "model", "model_version": "2"}
    night(1, "1", {"scored_by": "none", "model_version": None, "reason": "no model fraud-xgb@challenger in the registry"})
    for i in (2, 3):                  # (day 1: the training had not registered it yet)
        night(i, "1", v2)
    if route == "promoted by hand":
        night(4, "2", {"scored_by": "none", "model_version": None, "reason": "no model fraud-xgb@challenger in the registry"})
    else:
        night(4, "1", v2)
        night(5, "1", {"replaced": {"scored_by": "model", "model_version": "3"},
                       "alias removed": {"scored_by": "none", "model_version": None,
                                         "reason": "no model fraud-xgb@challenger in the registry"},
                       "registry down": {"scored_by": "none", "model_version": None,
                                         "reason": "registry unreachable (health did not answer)"}}[route])
    for i in range(1, 7):
        today = last + dt.timedelta(days=i)
        pending = retrain.pending_challenger(params, today, retrain.previous_triggers(store, today, 30))
        gone = left_on is not None and i >= left_on
        assert pending == (None if gone else (last, "2")), (route, i, pending)
