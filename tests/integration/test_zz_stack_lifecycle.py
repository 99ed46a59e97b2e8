"""Runs last (file order): the embedded default keeps everything across `stack down` / `stack up`
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

from tests.conftest import REPO, TEST_ENV, stack_pids

pytestmark = pytest.mark.integration


def _stack(action: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "pipelines", "stack", action], cwd=REPO, capture_output=True, text=True,
                       timeout=420, env={**os.environ, **TEST_ENV})
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _everything(stack) -> dict:
    """What a user keeps in the stack: lake objects, the registry and its alias history, Airflow's
    runs, the DVC remote."""
    from pipelines import models, storage
    from pipelines.airflow_api import AirflowClient

    files = {p.relative_to(stack.objects).as_posix(): p.stat().st_size for p in stack.objects.rglob("*") if p.is_file()}
    c = models.client()
    registry = {m.name: (sorted((a, str(v)) for a, v in (m.aliases or {}).items()),
                         len(models.history(c, m.name)), len(c.search_model_versions(f"name='{m.name}'")))
                for m in c.search_registered_models(max_results=1000)}
    runs = AirflowClient()._request("GET", "/api/v2/dags/~/dagRuns?limit=1")["total_entries"]
    assert storage.object_root() == stack.objects
    return {"objects": files, "registry": registry, "airflow_runs": runs}


def test_nothing_is_lost_across_stack_down_up_and_kill_9_of_each_service(stack):
    from pipelines import stack as st

    before = _everything(stack)
    assert before["registry"] and before["airflow_runs"] > 0                    # the session left real state
    assert any(k.startswith("fraudops-dvc/") for k in before["objects"])        # the DVC remote
    assert any(k.startswith("fraudops-mlflow/artifacts/") for k in before["objects"])   # MLflow's artifacts
    tree = stack_pids()
    _stack("down")
    assert st._marked_processes(st.layout().home) == []
    assert [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE] == []
    _stack("up")
    assert _everything(stack) == before

    for name in ("mlflow", "airflow-scheduler", "airflow-api-server", "airflow-dag-processor", "airflow-triggerer"):
        pid = st.status()[name]["pid"]
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while st._read_pid(st.layout(), name) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert st._read_pid(st.layout(), name) is None, name
    _stack("up")                                                                  # starts what died
    assert all(v["healthy"] is True for v in st.status().values()), st.status()
    assert _everything(stack) == before


def test_stack_down_leaves_no_orphans(stack):
    from pipelines import stack as st

    tree = stack_pids()
    assert len(tree) >= 5                                        # services and their workers
    _stack("down")
    alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [psutil.Process(p).cmdline() for p in alive]
    assert st._marked_processes(st.layout().home) == []
    for port in (stack.mlflow_port, stack.airflow_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
