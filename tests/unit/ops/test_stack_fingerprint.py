"""`stack up` restarts Airflow when what its processes read at start changed: plugins/ or its settings."""
from __future__ import annotations

from pipelines.ops import stack


def test_fingerprint_follows_settings_and_ignores_other_variables():
    env = {"AIRFLOW__CORE__PARALLELISM": "6", "AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "PATH": "/bin"}
    same = stack.airflow_fingerprint(env)
    assert stack.airflow_fingerprint(dict(reversed(list(env.items())))) == same          # order does not matter
    assert stack.airflow_fingerprint({**env, "PATH": "/usr/bin"}) == same                 # not an Airflow setting
    assert stack.airflow_fingerprint({**env, "AIRFLOW__CORE__PARALLELISM": "4"}) != same


def test_fingerprint_follows_the_plugins(tmp_path, monkeypatch):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "wiring.py").write_text("A = 1\n")
    monkeypatch.setattr(stack, "REPO", tmp_path)
    before = stack.airflow_fingerprint({})
    (tmp_path / "plugins" / "wiring.py").write_text("A = 2\n")
    assert stack.airflow_fingerprint({}) != before
