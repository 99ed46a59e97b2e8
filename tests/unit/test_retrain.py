"""The retraining rule: N drifted days of the last M, cooldown, budget."""
from __future__ import annotations

import datetime as dt

import pytest

from pipelines.core.config import RetrainParams
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
