"""Runs last (file order): `stack down` leaves no process behind and frees every port."""
from __future__ import annotations

import socket
import subprocess
import sys

import psutil
import pytest

from tests.conftest import REPO, TEST_ENV, stack_pids

pytestmark = pytest.mark.integration


def test_stack_down_leaves_no_orphans(stack):
    from pipelines import stack as st

    tree = stack_pids()
    assert len(tree) >= 6                                        # services and their workers
    r = subprocess.run([sys.executable, "-m", "pipelines", "stack", "down"], cwd=REPO, capture_output=True,
                       text=True, timeout=120, env={**__import__("os").environ, **TEST_ENV})
    assert r.returncode == 0, r.stdout + r.stderr
    alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [psutil.Process(p).cmdline() for p in alive]
    assert st._marked_processes(st.layout().home) == []
    for port in (stack.s3_port, stack.mlflow_port, stack.airflow_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
