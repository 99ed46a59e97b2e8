"""Config strictness, the simulator's promises, and storage's determinism and atomicity."""
from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
import yaml

from pipelines import storage
from pipelines.config import ConfigError, load_params
from pipelines.demo_data import DemoParams, make_world, simulate_day


def test_unknown_key_in_params_is_an_error(tmp_path):
    data = yaml.safe_load(open("params.yaml"))
    data["features"]["windws_days"] = [1]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="windws_days"):
        load_params(tmp_path / "p.yaml").features


def _params_with(tmp_path, mutate):
    data = yaml.safe_load(open("params.yaml"))
    mutate(data)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    return load_params(tmp_path / "p.yaml")


def test_a_suite_that_does_not_exist_is_an_error_and_no_suite_must_be_said(tmp_path):
    typo = _params_with(tmp_path, lambda d: d["validate"]["suites"].update(features="expectations/featres.json"))
    with pytest.raises(ConfigError, match=r"validate.suites.features: expectations/featres.json does not exist .*false"):
        typo.validate
    assert _params_with(tmp_path, lambda d: d["validate"]["suites"].update(features=False)).validate.suites["features"] is False
    with pytest.raises(ConfigError, match="neither a suite path nor false"):
        _params_with(tmp_path, lambda d: d["validate"]["suites"].update(features=None)).validate


def test_the_duplicate_window_must_cover_the_features_look_back(tmp_path):
    with pytest.raises(ConfigError, match="duplicate_window_days: 10 is shorter than the features' look-back"):
        _params_with(tmp_path, lambda d: d["ingest"].update(duplicate_window_days=10)).ingest
    assert load_params().ingest.duplicate_window_days >= load_params().features.lookback_days
    with pytest.raises(ConfigError, match="services.timeout_s"):
        _params_with(tmp_path, lambda d: d.update(services={"timeout_s": 0})).services
    with pytest.raises(ConfigError, match="hard_limits.amount"):
        _params_with(tmp_path, lambda d: d["validate"]["suggest"]["hard_limits"].update(amount=[5, 1])).validate


def test_lookback_covers_windows_and_label_delay():
    spec = load_params().features
    assert spec.lookback_days == max(30, 30 + 7)


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

    from pipelines.demo_data import DriftParams

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


def test_parquet_bytes_are_deterministic_and_local_writes_atomic(tmp_path):
    df = pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None]})
    assert storage.parquet_bytes(df) == storage.parquet_bytes(df.clone())
    target = tmp_path / "p" / "part-0.parquet"
    storage.write_bytes(str(target), storage.parquet_bytes(df))
    assert storage.read_parquet(str(target)).equals(df)
    assert [p.name for p in target.parent.iterdir()] == ["part-0.parquet"]     # no temp file left
    with pytest.raises(storage.MissingObject):
        storage.read_bytes(str(tmp_path / "nope"))
