"""The stack never acts on what is not its own: a stale pid file (its pid reused since a reboot) names
no service and no group to kill; a port another program holds stops `up`; two `up`s never run at
once; production is never scheduled to a demo's end date; `stack env` leaves out the marker and the
servers' secrets; Airflow settings in the environment win; the stack's own database URL read back
from stack.env does not look like a change (no restart)."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pipelines.core import state
from pipelines.ops import stack


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAUDOPS_HOME", str(tmp_path / "state"))
    for key in ("MLFLOW_TRACKING_URI", "FRAUDOPS_MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "FRAUDOPS_OBJECT_STORE",
                "FRAUDOPS_SCHEDULE_END", "FRAUDOPS_STACK_MODE", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                "AIRFLOW__CORE__PARALLELISM", stack.MARKER):
        monkeypatch.delenv(key, raising=False)
    return tmp_path / "state"


def _pidfile(home, name: str, rec: dict) -> None:
    state.pidfile(home, name).parent.mkdir(parents=True, exist_ok=True)
    state.pidfile(home, name).write_text(json.dumps(rec))


def test_a_stale_pid_file_names_no_service_and_down_kills_nothing_of_others(home):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    try:
        started = state.started_at(other.pid)
        assert started == state.started_at(other.pid) and ":" in started      # <boot id>:<ticks>: exact, clock-proof
        boot, ticks = started.split(":")
        # the pid file of a service that started before a reboot: its pid is now someone else's
        for stale in (f"{boot}:{int(ticks) - 100}", f"another-boot:{ticks}"):
            _pidfile(home, "mlflow", {"pid": other.pid, "pgid": other.pid, "cmd": ["mlflow"], "started": stale})
            assert state.read_pid(home, "mlflow") is None
        stack._down(stack.layout(), grace=1)
        assert other.poll() is None, "stack down killed a process that is not the stack's"
        # the same process recorded when it started: ours (a file of an older version, without the time, too)
        _pidfile(home, "mlflow", {"pid": other.pid, "pgid": other.pid, "cmd": ["mlflow"], "started": started})
        assert state.read_pid(home, "mlflow") == other.pid
        _pidfile(home, "mlflow", {"pid": other.pid, "pgid": other.pid, "cmd": ["mlflow"]})
        assert state.read_pid(home, "mlflow") == other.pid
    finally:
        other.kill()
        other.wait(10)


def test_a_port_another_program_holds_stops_up_naming_it(home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(stack.StackError, match=rf"port {port} is held by pid {os.getpid()}.*mlflow not started"):
            stack._port_free(stack.layout(), "mlflow", port)
    stack._port_free(stack.layout(), "mlflow", port)          # free again: nothing to say


def test_up_never_runs_beside_another_up(home):
    code = ("import time\nfrom pipelines.ops import stack\n"
            "with stack.services_locked(wait=0) as held:\n    print(held, flush=True)\n    time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], env={**os.environ}, stdout=subprocess.PIPE, text=True,
                              cwd=stack.REPO)
    try:
        assert holder.stdout.readline().strip() == "True"
        t = time.monotonic()
        with pytest.raises(stack.StackBusy, match="another `stack up` or `stack down` holds"):
            stack.up(timeout=5, lock_wait=0.5)
        assert time.monotonic() - t < 10
        assert not (home / "stack.env").exists()               # nothing started, nothing written
    finally:
        holder.kill()
        holder.wait(10)


def test_production_is_never_scheduled_to_a_demo_end_date(home, monkeypatch):
    lay = stack.layout()
    assert stack.schedule_end(lay) == "2026-05-01"             # the embedded default: its simulated data's end
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.com")
    assert stack.schedule_end(lay) == "none"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("FRAUDOPS_MLFLOW_TRACKING_URI", "https://mlflow.example.com")
    assert stack.schedule_end(lay) == "none" and stack.stack_env(lay)["FRAUDOPS_SCHEDULE_END"] == "none"
    monkeypatch.setenv("FRAUDOPS_SCHEDULE_END", "2027-01-31")
    assert stack.schedule_end(lay) == "2027-01-31"
    # the demo's end date read back from stack.env is the stack's own, not a person's: not on S3
    monkeypatch.setenv("FRAUDOPS_SCHEDULE_END", "2026-05-01")
    monkeypatch.setattr(state, "FROM_ENV_FILE", {"FRAUDOPS_SCHEDULE_END"})
    assert stack.schedule_end(lay) == "none"


def test_stack_env_prints_what_clients_need_not_the_marker_nor_the_servers_secrets(home, capsys):
    assert stack.main(["env"]) == 0
    out = capsys.readouterr().out
    names = {line.split("=", 1)[0].removeprefix("export ") for line in out.splitlines()}
    assert "MLFLOW_TRACKING_URI" in names and "AIRFLOW__API__BASE_URL" in names
    assert not names & {stack.MARKER, "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"}
    secret = (home / "secrets" / "jwt_secret").read_text().strip()
    assert secret not in out


def test_airflow_settings_in_the_environment_win_and_our_own_database_is_no_change(home, monkeypatch):
    lay = stack.layout()
    env = stack.stack_env(lay)
    assert env["AIRFLOW__CORE__PARALLELISM"] == "16"
    # `python -m pipelines` loads stack.env into the environment: the same settings, no restart
    for k in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__PARALLELISM"):
        monkeypatch.setenv(k, env[k])
    assert stack.airflow_fingerprint(stack.stack_env(lay)) == stack.airflow_fingerprint(env)
    # a value read back from stack.env is ours: our default wins over it (here: an older 12)
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "12")
    monkeypatch.setattr(state, "FROM_ENV_FILE", {"AIRFLOW__CORE__PARALLELISM"})
    assert stack.stack_env(lay)["AIRFLOW__CORE__PARALLELISM"] == "16"
    monkeypatch.setattr(state, "FROM_ENV_FILE", set())
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "64")
    tuned = stack.stack_env(lay)
    assert tuned["AIRFLOW__CORE__PARALLELISM"] == "64" and stack.airflow_fingerprint(tuned) != stack.airflow_fingerprint(env)


def test_down_stops_the_workers_a_dead_service_left_in_its_group(home):
    """The service's main process died (OOM, a kill), its workers live on in its process group (their
    process title may have wiped the marker): `stack down` still stops them."""
    code = ("import os, sys, time\n"
            "if os.fork() == 0:\n    time.sleep(300)\n    sys.exit(0)\n"
            "print('ready', flush=True)\ntime.sleep(300)\n")
    leader = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True,
                              env={k: v for k, v in os.environ.items() if k != stack.MARKER})
    try:
        assert leader.stdout.readline().strip() == "ready"
        _pidfile(home, "airflow-scheduler", {"pid": leader.pid, "pgid": leader.pid, "cmd": ["airflow"],
                                             "started": state.started_at(leader.pid)})
        import psutil

        (worker,) = psutil.Process(leader.pid).children()
        leader.kill()
        leader.wait(10)
        assert state.read_pid(home, "airflow-scheduler") is None and worker.is_running()
        assert state.group_left(state.pid_file(home, "airflow-scheduler")) == [worker.pid]
        stack._down(stack.layout(), grace=1)
        worker.wait(10)
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, 9)
