"""Where this installation keeps its state: $FRAUDOPS_HOME (default `.state/` in the project),
the environment file the local stack writes there, and the pid files of the stack's services.

Declared once here; the DAG wiring (plugins/fraudops_wiring.py) may not import pipelines at parse
time and mirrors STATE_DEFAULT (a test checks that they agree).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STATE_DEFAULT = ".state"                 # relative to the project root
ENV_FILE = "stack.env"
# the stack's services, in the order `stack down` stops them: the supervisor first (it restarts a
# service that dies), so that nothing starts again while the others stop
SUPERVISOR = "supervisor"
SERVICES = (SUPERVISOR, "airflow-worker-1", "airflow-worker-2", "airflow-api-server", "airflow-triggerer",
            "airflow-dag-processor", "airflow-scheduler", "mlflow", "redis", "postgres")
WORKERS = ("airflow-worker-1", "airflow-worker-2")     # Celery workers: the distributed mode only


def state_dir() -> Path:
    return Path(os.environ.get("FRAUDOPS_HOME") or REPO / STATE_DEFAULT).resolve()


FROM_ENV_FILE: set[str] = set()          # the variables load_env_file set (the stack's own, not a user's)


def load_env_file(home: Path | None = None) -> None:
    """Fill unset variables from the stack's env file (the environment always wins; an S3 endpoint
    set by hand means S3, so the stack's file object store is not taken from the file then)."""
    path = (home or state_dir()) / ENV_FILE
    if not path.exists():
        return
    s3_chosen = bool(os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("FRAUDOPS_S3_ENDPOINT_URL"))
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if key == "FRAUDOPS_OBJECT_STORE" and s3_chosen:
            continue
        if sep and key and key not in os.environ:
            os.environ[key] = value
            FROM_ENV_FILE.add(key)


def pidfile(home: Path, name: str) -> Path:
    return home / "pids" / f"{name}.json"


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def started_at(pid: int) -> str | None:
    """When process `pid` started, exactly: "<boot id>:<clock ticks since boot>" (Linux; a wall-clock
    step does not move it, a reboot changes the boot id), else its start time in seconds; None when
    there is no such process."""
    boot = Path("/proc/sys/kernel/random/boot_id")
    if boot.exists():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        return f"{boot.read_text().strip()}:{stat[stat.rfind(')') + 2:].split()[19]}"
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.NoSuchProcess:
        return None


def pid_record(home: Path, name: str) -> dict | None:
    """The pid file of a service of the stack at `home` when its process is still the one started (the
    start recorded is its own: after a reboot or a container restart a pid is soon another
    process's), else None."""
    rec = pid_file(home, name)
    if rec is None:
        return None
    pid = rec.get("pid")
    if not isinstance(pid, int) or not alive(pid):
        return None
    if rec.get("started") is not None and str(rec["started"]) != started_at(pid):
        return None
    return rec


def pid_file(home: Path, name: str) -> dict | None:
    """The pid file as written (whatever its process has become since), None when there is none."""
    try:
        rec = json.loads(pidfile(home, name).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def group_left(rec: dict) -> list[int]:
    """The processes still in the group of a service whose main process is gone (workers that outlived
    it): members of its process group that started after it, on this boot. A record without a start
    (an older version's) vouches for nothing more than before: its whole group."""
    import psutil

    pgid, started = rec.get("pgid"), rec.get("started")
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) != pgid:
                continue
        except OSError:
            continue
        mine = started_at(p.pid)
        if started is None:
            out.append(p.pid)
        elif mine and ":" in str(started) and ":" in mine:
            boot, ticks = str(started).split(":")
            b2, t2 = mine.split(":")
            if b2 == boot and int(t2) >= int(ticks):
                out.append(p.pid)
    return out


def read_pid(home: Path, name: str) -> int | None:
    """The pid of a running service of the stack at `home`, or None."""
    rec = pid_record(home, name)
    return rec["pid"] if rec else None


def stack_alive(home: Path | None = None) -> bool:
    """Is any service of the local stack running?"""
    home = home or state_dir()
    return any(read_pid(home, name) for name in SERVICES)
