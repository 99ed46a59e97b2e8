"""Shared DAG wiring (plugins/ is on Airflow's sys.path): retries with back-off and the one way a
task calls a stage. Light imports only: DAG files import this at parse time."""
from __future__ import annotations

import shlex
import sys
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def default_args() -> dict:
    return {
        "owner": "fraudops",
        "retries": 2,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(hours=1),
    }


def stage_command(stage: str, args: str = "") -> str:
    """`cd <repo> && <python> -m pipelines <stage> <args>`: the DVC stage's own command line."""
    return f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m pipelines {stage}{args}"
