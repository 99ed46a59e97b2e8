"""The simulator: deterministic per day, fraud scenarios, drift knobs."""
from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from pipelines.core.config import load_params
from pipelines.ops.demo_data import DemoParams, make_world, simulate_day


@pytest.fixture(scope="module")
def demo():
    p = DemoParams.from_dict(load_params().section("demo_data"))
    return p, make_world(p)


def test_simulator_is_deterministic_per_day(demo):
    p, world = demo
    day = dt.date(2026, 1, 20)
    assert simulate_day(p, world, day).equals(simulate_day(p, make_world(p), day))
    assert not simulate_day(p, world, day).equals(simulate_day(p, world, day + dt.timedelta(days=1)))


def test_simulator_has_rhythm_rare_fraud_and_scenarios(demo):
    p, world = demo
    days = [simulate_day(p, world, dt.date(2026, 1, 1) + dt.timedelta(days=i)) for i in range(28)]
    df = pl.concat(days)
    share = df["is_fraud"].mean()
    assert 0.001 < share < 0.01
    by_hour = df.group_by(pl.col("tx_ts").dt.hour()).len()
    night = by_hour.filter(pl.col("tx_ts") < 5)["len"].sum() / 5
    afternoon = by_hour.filter(pl.col("tx_ts").is_between(12, 16))["len"].sum() / 5
    assert afternoon > 3 * night
    weekend = df.filter(pl.col("tx_ts").dt.weekday() >= 6).height / 8
    weekday = df.filter(pl.col("tx_ts").dt.weekday() < 6).height / 20
    assert weekend > weekday
    # compromised terminals: fraud concentrates on a few terminals
    per_term = df.filter(pl.col("is_fraud") == 1).group_by("terminal_id").len().sort("len", descending=True)
    assert per_term["len"][0] >= 5


def test_drift_knobs_change_the_data(demo):
    p, world = demo
    import dataclasses

    from pipelines.ops.demo_data import DriftParams

    day = dt.date(2026, 3, 20)
    drifted = dataclasses.replace(p, drift=DriftParams(start_date=dt.date(2026, 3, 15), amount_scale=1.5,
                                                       category_weights={"online": 4.0}, new_fraud_pattern=True))
    base = dataclasses.replace(p, drift=DriftParams())           # params.yaml's demo drifts from March: undo it
    a, b = simulate_day(base, world, day), simulate_day(drifted, world, day)
    assert b["amount"].median() > 1.3 * a["amount"].median()
    share = lambda d: (d["category"] == "online").mean()  # noqa: E731
    assert share(b) > 2 * share(a)
    assert b.filter((pl.col("amount") < 3) & (pl.col("is_fraud") == 1)).height > a.filter(
        (pl.col("amount") < 3) & (pl.col("is_fraud") == 1)).height + 10
