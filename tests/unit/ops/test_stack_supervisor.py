"""The stack's supervisor: how often it restarts a dying service, and the lock that keeps it out of
`stack up` / `stack down` (its restarts of real services: tests/integration/test_stack_lifecycle)."""
from __future__ import annotations

import subprocess
import sys

from pipelines.ops import stack


def test_a_crash_loop_is_restarted_five_times_in_ten_minutes_then_left_down():
    now = 10_000.0
    assert stack.restart_allowed([], now)
    assert stack.restart_allowed([now - 1] * 4, now)
    assert not stack.restart_allowed([now - 1] * 5, now)
    assert stack.restart_allowed([now - 601] * 5 + [now - 1] * 4, now)      # old restarts age out


def _try_lock(env: dict) -> str:
    code = ("from pipelines.ops import stack\n"
            "with stack.services_locked(wait=0) as held:\n    print(held)\n")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, check=True, cwd=stack.REPO).stdout.strip()


def test_the_service_lock_is_exclusive_across_processes_and_reentrant_within_one(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("FRAUDOPS_HOME", str(tmp_path))
    env = {**os.environ, "FRAUDOPS_HOME": str(tmp_path)}
    with stack.services_locked() as held:
        assert held
        with stack.services_locked(wait=0) as again:           # up() calls down() under the lock
            assert again
        assert _try_lock(env) == "False"                         # the supervisor restarts nothing meanwhile
    assert _try_lock(env) == "True"
    assert oct((tmp_path / "pids" / ".lock").stat().st_mode & 0o777) == "0o600"
