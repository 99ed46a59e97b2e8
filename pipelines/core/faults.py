"""Fail points: named places in the code where a test can inject a fault into a real process.

`FRAUDOPS_FAILPOINTS="name=action[;name@match=action...]"`, read at each point (nothing happens
when the variable is unset, the production case). `match` is a substring of the point's `path`
context (e.g. `storage.write@features/=enospc`). Actions:
  kill      SIGKILL this process (a crash mid-write: no cleanup runs)
  enospc    raise OSError(ENOSPC) (the disk is full)
  raise     raise RuntimeError
  sleep:S   sleep S seconds (a slow step)
"""
from __future__ import annotations

import errno
import os
import signal
import time

ENV = "FRAUDOPS_FAILPOINTS"


def _actions(name: str, path: str) -> list[str]:
    spec = os.environ.get(ENV)
    if not spec:
        return []
    out = []
    for item in spec.split(";"):
        key, sep, action = item.strip().rpartition("=")     # a path may hold "=" (date=...): the action may not
        if not sep:
            continue
        point, _, match = key.partition("@")
        if point == name and (not match or match in path):
            out.append(action)
    return out


def point(name: str, path: str = "") -> None:
    """A fail point: does nothing unless FRAUDOPS_FAILPOINTS names it."""
    for action in _actions(name, path):
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path or name)
        elif action == "raise":
            raise RuntimeError(f"fail point {name} ({path})")
        elif action.startswith("sleep:"):
            time.sleep(float(action.split(":", 1)[1]))
