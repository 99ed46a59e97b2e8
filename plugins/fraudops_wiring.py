"""Shared DAG wiring (plugins/ is on Airflow's sys.path): retries with back-off and the one way a
task calls a stage. Light imports only: DAG files import this at parse time."""
from __future__ import annotations

import json
import os
import shlex
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.sdk import Asset

REPO = Path(__file__).resolve().parent.parent
# Emitted when `register` succeeds: a new model version exists (with or without an alias).
MODEL_ASSET = Asset(name="model", uri="fraudops://registry/model")


def alerts_file() -> Path:
    return Path(os.environ.get("FRAUDOPS_HOME") or REPO / ".state") / "alerts" / "airflow.jsonl"


def record_alert(context) -> None:
    """on_failure_callback: append an alert record (dag, task, run, try, error) to the alerts log."""
    ti = context.get("ti") or context.get("task_instance")
    rec = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "kind": "task_failed",
           "dag_id": getattr(ti, "dag_id", None), "task_id": getattr(ti, "task_id", None),
           "run_id": getattr(ti, "run_id", None), "try_number": getattr(ti, "try_number", None),
           "error": str(context.get("exception"))[:2000]}
    path = alerts_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(rec, sort_keys=True) + "\n")


def default_args() -> dict:
    return {
        "owner": "fraudops",
        "retries": 2,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(hours=1),
        "on_failure_callback": record_alert,
    }


PARAMS_FILE = " --params {{ params.params_file }}"


def retrain_requested(ti) -> dict | bool:
    """ShortCircuit callable: the `training` part of the retrain decision (pushed by the `retrain`
    task as its last stdout line), or False to skip the trigger."""
    raw = ti.xcom_pull(task_ids="retrain")
    rec = json.loads(raw) if isinstance(raw, str) else raw
    if not rec or not rec.get("retrain"):
        return False
    return rec["training"]


def stage_command(stage: str, args: str = "") -> str:
    """`cd <repo> && <python> -m pipelines <stage> <args>`: the DVC stage's own command line."""
    return f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m pipelines {stage}{args}"


def guarded_command(action: str) -> str:
    """`python -m pipelines models <action>` from a Params form: refused unless CONFIRM is True; the
    version, reason and params file come from the environment (quoted), so form input is never
    shell text."""
    return (f'if [ "$CONFIRM" != "True" ]; then echo "not confirmed: tick confirm in the form to move the alias; '
            f'nothing changed" >&2; exit 1; fi; '
            + stage_command("models", f' --params "$PARAMS_FILE" {action} --reason "$REASON"'))
