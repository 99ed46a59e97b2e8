"""The embedded default keeps everything across `stack down` / `stack up`
and a kill -9 of any service, and `stack down` leaves no process behind and frees every port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import REPO, TEST_ENV, sh, stack_pids

pytestmark = pytest.mark.integration


def _stack(action: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "pipelines", "stack", action], cwd=REPO, capture_output=True, text=True,
                       timeout=420, env={**os.environ, **TEST_ENV})
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _everything(stack) -> dict:
    """What a user keeps in the stack: lake objects, the registry and its alias history, Airflow's
    runs, the DVC remote."""
    from pipelines.core import registry as models
    from pipelines.core import storage
    from pipelines.ops.airflow_api import AirflowClient

    files = {p.relative_to(stack.objects).as_posix(): p.stat().st_size for p in stack.objects.rglob("*") if p.is_file()}
    c = models.client()
    registry = {m.name: (sorted((a, str(v)) for a, v in (m.aliases or {}).items()),
                         len(models.history(c, m.name)), len(c.search_model_versions(f"name='{m.name}'")))
                for m in c.search_registered_models(max_results=1000)}
    runs = AirflowClient()._request("GET", "/api/v2/dags/~/dagRuns?limit=1000&order_by=run_after")["dag_runs"]
    assert storage.object_root() == stack.objects
    return {"objects": files, "registry": registry,
            "airflow_runs": {(r["dag_id"], r["dag_run_id"]): r["state"] for r in runs
                             if r["state"] in ("success", "failed")}}


def _kept(before: dict, after: dict) -> None:
    """Everything there before is there after (the scheduler may start a new daily run meanwhile)."""
    assert after["objects"] == before["objects"] and after["registry"] == before["registry"]
    assert {k: after["airflow_runs"].get(k) for k in before["airflow_runs"]} == before["airflow_runs"]


@pytest.fixture
def something_of_everything(stack, nightly_champion, tmp_path):
    """A registered model (registry, alias history, MLflow artifacts), a DVC push to the stack's
    remote and a finished Airflow run, whatever else the session did."""
    from pipelines.ops.airflow_api import AirflowClient
    from pipelines.ops.stack import dvc_local_config

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "kept.txt").write_text(f"pushed by {ws}\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "remote", "add", "-d", "lake", "s3://unused/cache"]):
        sh(cmd, ws)
    (ws / ".dvc" / "config.local").write_text(dvc_local_config(stack))
    sh(["dvc", "add", "-q", "kept.txt"], ws)
    assert "1 file pushed" in sh(["dvc", "push"], ws)
    client = AirflowClient()
    client.wait_for_dag("rollback")
    run = client.trigger("rollback", {"confirm": False, "reason": "kept across restarts"})
    assert client.wait("rollback", run["dag_run_id"], timeout=300, poll=1)["state"] == "failed"


def _all_healthy(timeout: float) -> dict:
    from pipelines.ops import stack as st

    deadline = time.monotonic() + timeout
    while True:
        now = st.status()
        if all(v["healthy"] is True for v in now.values()) or time.monotonic() > deadline:
            return now
        time.sleep(1)


def test_nothing_is_lost_across_kill_9_of_each_service_and_stack_down_up(stack, something_of_everything):
    """kill -9 of every service (a crash): the supervisor starts each again; kill -9 of everything,
    the supervisor too, then `stack down`: no process is left, no port open; `stack up`: the lake,
    MLflow's artifacts, the DVC remote, the registry with its alias history and Airflow's runs are
    all there."""
    from pipelines.ops import stack as st

    before = _everything(stack)
    assert before["registry"] and len(before["airflow_runs"]) > 0                   # the session left real state
    assert any(k.startswith("fraudops-dvc/") for k in before["objects"])        # the DVC remote
    assert any(k.startswith("fraudops-mlflow/artifacts/") for k in before["objects"])   # MLflow's artifacts
    services = ("mlflow", "airflow-scheduler", "airflow-api-server", "airflow-dag-processor", "airflow-triggerer")
    pids = {name: st.status()[name]["pid"] for name in services}
    log = st.layout().home / "logs" / "supervisor.log"
    logged = log.read_text() if log.exists() else ""
    for name in services:                                        # a crash of each: the supervisor restarts it
        os.killpg(pids[name], signal.SIGKILL)
    now = _all_healthy(240)
    assert all(v["healthy"] is True for v in now.values()), now
    assert all(now[n]["pid"] not in (None, pids[n]) for n in services), (pids, now)
    news = log.read_text()[len(logged):]
    assert all(f"{n} (pid {pids[n]}) was not running: restarted as pid {now[n]['pid']}" in news for n in services), news
    _kept(before, _everything(stack))

    tree = stack_pids()
    assert len(tree) >= 6                                        # services, their workers and the supervisor
    for name in (st.SUPERVISOR, *services):                      # everything crashes: nothing restarts it
        os.killpg(st.status()[name]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(st._read_pid(st.layout(), n) for n in st.SERVICES) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(st._read_pid(st.layout(), n) for n in st.SERVICES)
    _stack("down")
    alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [psutil.Process(p).cmdline() for p in alive]
    assert st._marked_processes(st.layout().home) == []
    for port in (stack.mlflow_port, stack.airflow_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
    _stack("up")
    assert all(v["healthy"] is True for v in st.status().values()), st.status()
    _kept(before, _everything(stack))

