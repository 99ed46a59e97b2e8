"""The local stack (embedded default): the object store, an MLflow tracking server, Airflow 3.

`python -m pipelines stack up|down|status|env`

Embedded default, on 127.0.0.1 only, state under $FRAUDOPS_HOME (default .state/, mode 0700):
  * object store: files under .state/objects/<bucket>/<key> (FRAUDOPS_OBJECT_STORE=file://...): the
    lake, MLflow's artifacts and the DVC remote survive `stack down` and a kill -9 of any service;
  * MLflow with its basic-auth app: user admin, generated password in .state/secrets (0600), handed to
    clients as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD; a request without them gets 401;
  * Airflow 3 (api-server, scheduler, dag-processor, triggerer), LocalExecutor, SQLite, auth on.
Every service runs with umask 077 in its own process group (session) and carries the environment
marker FRAUDOPS_STACK_ID; `down` signals each group (TERM, then KILL after a grace period) and then
sweeps every process that still carries the marker, so children that ignore SIGTERM (Airflow's
workers) or escaped their group do not survive.
A supervisor (`stack supervise`, started by `up`) restarts a service that dies (a crash, the OOM
killer, kill -9) within seconds, on the state it left: at most 5 times in 10 minutes per service,
then it gives up on it (a crash loop) and says so. Its log, .state/logs/supervisor.log, holds each
death with the end of the service's own log. `up`, `down` and the supervisor take one lock
(.state/pids/.lock), so nothing is restarted while the stack starts or stops.

Distributed mode (`stack up --distributed`, remembered in .state/stack-mode until `stack up --local`):
the same services, plus PostgreSQL (Airflow's metadata, MLflow's backend store), Redis (the Celery
broker) and two Celery workers (airflow-worker-1/2); Airflow runs the CeleryExecutor. PostgreSQL and
Redis are Debian's (`make distributed-deps` installs them), bound to 127.0.0.1 with generated
passwords (.state/secrets, 0600), data under .state/postgres and .state/redis, supervised and
stopped like every other service. As root, PostgreSQL runs as the `postgres` user (it refuses root).

Production: set the variables below and the stack starts nothing of that kind:
  AWS_ENDPOINT_URL / AWS_* credentials, or FRAUDOPS_OBJECT_STORE=s3 -> S3 (or MinIO) through boto3
  FRAUDOPS_MLFLOW_TRACKING_URI           -> an existing MLflow server; none is started
  FRAUDOPS_MLFLOW_BACKEND_URI            -> MLflow's backend store (e.g. postgresql://...)
  FRAUDOPS_MLFLOW_ARTIFACTS              -> MLflow's artifact root (e.g. s3://...)
  AIRFLOW__DATABASE__SQL_ALCHEMY_CONN    -> Airflow's metadata database (e.g. postgresql+psycopg2://...)
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from pipelines.core import state
from pipelines.core.state import REPO, SERVICES, SUPERVISOR, load_env_file, state_dir  # noqa: F401 - re-exported

MARKER = "FRAUDOPS_STACK_ID"
BUCKETS = ("fraudops-lake", "fraudops-mlflow", "fraudops-dvc")
UMASK = 0o077          # databases, secrets, logs and objects: readable by their owner only


class StackError(RuntimeError):
    pass


class StackBusy(StackError):
    """Another `stack up` or `stack down` holds the services' lock: this one started nothing."""


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Layout:
    home: Path
    mlflow_port: int
    airflow_port: int
    pg_port: int = 5433
    redis_port: int = 6380

    @property
    def distributed(self) -> bool:
        """PostgreSQL, Redis and Celery workers (FRAUDOPS_STACK_MODE, else what `up` remembered; the
        stack never writes the variable to stack.env, so a client cannot inherit a stale mode)."""
        mode = os.environ.get("FRAUDOPS_STACK_MODE")
        if not mode:
            f = self.home / MODE_FILE
            mode = f.read_text().strip() if f.exists() else "local"
        return mode == "distributed"

    @property
    def s3(self) -> bool:
        """Objects on S3 (an endpoint or AWS) rather than in the embedded file object store."""
        return bool(os.environ.get("AWS_ENDPOINT_URL")) or os.environ.get("FRAUDOPS_OBJECT_STORE") == "s3"

    @property
    def objects(self) -> Path:
        return self.home / "objects"

    @property
    def object_store(self) -> str:
        return "s3" if self.s3 else f"file://{self.objects}"

    @property
    def external_mlflow(self) -> bool:
        return bool(os.environ.get("FRAUDOPS_MLFLOW_TRACKING_URI"))

    @property
    def mlflow_url(self) -> str:
        return os.environ.get("FRAUDOPS_MLFLOW_TRACKING_URI") or f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def password_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json.generated"

    @property
    def mlflow_auth_config(self) -> Path:
        return self.home / "mlflow" / "basic_auth.ini"


def layout() -> Layout:
    return Layout(state_dir(), _port("FRAUDOPS_MLFLOW_PORT", 5500), _port("FRAUDOPS_AIRFLOW_PORT", 8080),
                  _port("FRAUDOPS_PG_PORT", 5433), _port("FRAUDOPS_REDIS_PORT", 6380))


MODE_FILE = "stack-mode"
WORKER_SLOTS = 8          # task slots per Celery worker (two workers: the local mode's 16)


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _private_file(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 0600, never readable by others in between)."""
    _private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    path.chmod(0o600)


def _secret(home: Path, name: str) -> str:
    path = home / "secrets" / name
    if not path.exists():
        _private_file(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def schedule_end(lay: "Layout") -> str:
    """The last date the daily DAGs are scheduled for (plugins/fraudops_wiring.schedule_end): the
    environment's FRAUDOPS_SCHEDULE_END when set ("none": open-ended); else, on the embedded default
    (its own object store and MLflow), the last day of its simulated data (params.yaml
    demo_data.end_date): the local stack then creates no run for a date its data does not have;
    else (S3 or an external MLflow: production) open-ended, never a demo's date."""
    if "FRAUDOPS_SCHEDULE_END" in os.environ and "FRAUDOPS_SCHEDULE_END" not in state.FROM_ENV_FILE:
        return os.environ["FRAUDOPS_SCHEDULE_END"]         # (set by a person: what stack.env holds is ours)
    if lay.s3 or lay.external_mlflow:
        return "none"
    import yaml

    demo = (yaml.safe_load((REPO / "params.yaml").read_text()) or {}).get("demo_data") or {}
    return str(demo.get("end_date") or "none")


def _setting(key: str, default: str) -> str:
    """An Airflow setting of the stack: the environment's when set by a person (production tunes it
    there), else ours (a value `python -m pipelines` read back from stack.env is ours: a new default
    of ours replaces it)."""
    return (os.environ.get(key) if key not in state.FROM_ENV_FILE else None) or default


def stack_env(lay: Layout) -> dict[str, str]:
    """The variables every process of the stack (and every client) needs."""
    home = lay.home
    own_db = f"sqlite:///{lay.airflow_home / 'airflow.db'}"
    env = {
        MARKER: str(home),
        "FRAUDOPS_HOME": str(home),
        "FRAUDOPS_OBJECT_STORE": lay.object_store,
        "MLFLOW_TRACKING_URI": lay.mlflow_url,
        "AIRFLOW_HOME": str(lay.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # 16 task slots: a gate (SettledSensor) sleeps in its slot while it polls (up to a minute).
        # Two nights in flight hold up to eight gates (three per nightly run, one per labels run):
        # with 8 slots the demo measured stages queued up to 5 s behind sleeping gates. A sleeping
        # gate costs no CPU, ~150 MB of memory.
        "AIRFLOW__CORE__PARALLELISM": _setting("AIRFLOW__CORE__PARALLELISM", "16"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(lay.password_file),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{lay.airflow_url}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(lay.airflow_port),
        "AIRFLOW__API__BASE_URL": lay.airflow_url,
        "AIRFLOW__API__WORKERS": _setting("AIRFLOW__API__WORKERS", "1"),
        "AIRFLOW__API__SECRET_KEY": _secret(home, "api_secret_key"),
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(home, "jwt_secret"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": _setting("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "15"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # The scheduler's idle loop: 0.5 s (Airflow's default 1 s). It cuts the gap between two tasks
        # of a run from 0.5-1.1 s to 0.2-0.4 s (the demo: ~10 tasks a night one after the other).
        # At 0.2 s an earlier measurement saw the scheduler die in a race with a backfill created
        # through the REST API (IntegrityError creating its task instances, then ObjectDeletedError);
        # at 0.5 s it did not happen in the demos and CI runs of 2026-12-02 (CI makes such a
        # backfill), but nothing restarts a dead service except `stack up`. Set it in the
        # environment to trade.
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": _setting("AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME", "0.5"),
        # a task whose process died with the scheduler (kill -9, a crash) is failed and retried after
        # a minute, not five
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": _setting("AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT", "60"),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": _setting("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PYTHONPATH": str(REPO),
        "GIT_PYTHON_REFRESH": "quiet",
        "FRAUDOPS_SCHEDULE_END": schedule_end(lay),
    }
    if lay.distributed:
        env.update({"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _pg_url(lay, "airflow"),
                    "AIRFLOW__CELERY__BROKER_URL": f"redis://:{_secret(home, 'redis_password')}@127.0.0.1:"
                                                   f"{lay.redis_port}/0",
                    "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + _pg_url(lay, "airflow"),
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": _setting("AIRFLOW__CELERY__WORKER_CONCURRENCY", str(WORKER_SLOTS))})
    elif os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") in (None, "", _pg_url(lay, "airflow"), own_db):
        # (the stack's own database: not set, or as stack.env or the distributed mode left it)
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = own_db
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] = "pipelines.ops.airflow_db.SQLITE_CONNECT_ARGS"
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC"] = "pipelines.ops.airflow_db.SQLITE_CONNECT_ARGS_ASYNC"
    if os.environ.get("AWS_ENDPOINT_URL"):
        env["MLFLOW_S3_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"]
    if not lay.external_mlflow:     # the stack's own registry: its admin credentials, for every client
        env.update({"FRAUDOPS_STACK_MLFLOW_URL": lay.mlflow_url, "MLFLOW_TRACKING_USERNAME": "admin",
                    "MLFLOW_TRACKING_PASSWORD": _secret(home, "mlflow_admin_password")})
    return env


# the stack's own: the marker `stack down` finds its processes by (a shell that exported it would be
# stopped with the stack) and the Airflow servers' signing secrets (no client needs them)
CLIENT_HIDDEN = {MARKER, "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"}


def write_env_file(lay: Layout, env: dict[str, str]) -> Path:
    """.state/stack.env: sourced by make, read by `python -m pipelines` for unset variables."""
    path = lay.home / state.ENV_FILE
    lines = [f"{k}={v}" for k, v in sorted(env.items()) if k not in CLIENT_HIDDEN]
    _private_file(path, "\n".join(lines) + "\n")       # holds the MLflow client password
    return path


# --------------------------------------------------------------------------- processes
def _pidfile(lay: Layout, name: str) -> Path:
    return state.pidfile(lay.home, name)


def _read_pid(lay: Layout, name: str) -> int | None:
    return state.read_pid(lay.home, name)


def _start(lay: Layout, name: str, cmd: list[str], env: dict[str, str]) -> int:
    logs = _private_dir(lay.home / "logs")
    fd = os.open(logs / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    log = os.fdopen(fd, "ab")
    db_user = name == "postgres" and os.geteuid() == 0       # PostgreSQL refuses root: its own user, no wrapper
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **env}, cwd="/" if db_user else REPO, start_new_session=True,
                            umask=UMASK, **({"user": "postgres", "group": "postgres"} if db_user else {}))
    log.close()
    _private_dir(_pidfile(lay, name).parent)
    tmp = _pidfile(lay, name).with_suffix(".tmp")          # atomic: a reader never sees a half-written file
    tmp.write_text(json.dumps({"pid": proc.pid, "pgid": proc.pid, "cmd": cmd, "started": state.started_at(proc.pid)}))
    os.replace(tmp, _pidfile(lay, name))
    return proc.pid


def _http_ok(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait(what: str, check: Callable[[], bool], timeout: float, lay: Layout, name: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if name and _read_pid(lay, name) is None:
            raise StackError(f"{what} exited during start-up; see {lay.home / 'logs' / (name + '.log')}")
        time.sleep(0.5)
    hint = f"; see {lay.home / 'logs' / (name + '.log')}" if name else ""
    raise StackError(f"{what} not healthy after {timeout:.0f}s{hint}")


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _airflow_health(lay: Layout) -> dict[str, str]:
    try:
        with urllib.request.urlopen(f"{lay.airflow_url}/api/v2/monitor/health", timeout=3) as resp:
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return {k: (v or {}).get("status", "unknown") for k, v in data.items() if isinstance(v, dict)}


AIRFLOW_SERVICES = {
    "airflow-api-server": ["api-server", "--host", "127.0.0.1"],
    "airflow-scheduler": ["scheduler", "--skip-serve-logs"],
    "airflow-dag-processor": ["dag-processor"],
    "airflow-triggerer": ["triggerer", "--skip-serve-logs"],
}


def up(timeout: float = 240.0, lock_wait: float = 60.0) -> Layout:
    """Start whatever is not running yet and wait until everything is healthy (idempotent; a
    service that died, even by kill -9, is started again on the state it left)."""
    with services_locked(wait=lock_wait) as held:
        if not held:       # another `up` (a slow first start) or `down` is at work: never two at once
            raise StackBusy(f"stack up: another `stack up` or `stack down` holds {layout().home / 'pids' / '.lock'}; "
                             f"nothing started (run it again once that one is done)")
        return _up(timeout)


def _port_free(lay: Layout, name: str, port: int) -> None:
    """Before starting `name` on `port`: another program (or another checkout's stack) answering there
    would pass our health check while our server dies with EADDRINUSE."""
    why = _foreign(lay, port)
    if why:
        raise StackError(f"stack up: {why}: {name} not started (stop that program, or give this stack other "
                         f"ports: FRAUDOPS_MLFLOW_PORT, FRAUDOPS_AIRFLOW_PORT)")


def _up(timeout: float) -> Layout:
    lay = layout()
    _private_dir(lay.home)
    _private_dir(lay.airflow_home)
    env = stack_env(lay)
    write_env_file(lay, env)
    os.environ.update({k: v for k, v in env.items() if k != MARKER})

    # the object store: buckets are folders of .state/objects (embedded) or S3 buckets
    if not lay.s3:
        _private_dir(lay.objects)
    _ensure_buckets(lay)
    _write_dvc_local_config(lay)

    # the distributed mode's PostgreSQL and Redis, before anything that uses them
    if lay.distributed:
        _start_postgres(lay, env, timeout)
        _start_redis(lay, env, timeout)

    # MLflow, with its basic-auth app
    if not lay.external_mlflow:
        if _read_pid(lay, "mlflow") is None:
            _port_free(lay, "mlflow", lay.mlflow_port)
            _start(lay, "mlflow", *_service_command(lay, "mlflow", env))
        _wait("MLflow", lambda: _http_ok(f"{lay.mlflow_url}/health"), timeout, lay, "mlflow")

    # Airflow (restarted when plugins/ or its settings changed since it started: its processes
    # import the wiring module once, so a DAG that needs a new operator would fail to parse until
    # they restart, and they read their settings at start)
    wiring = airflow_fingerprint(env)
    stamp = lay.airflow_home / "started-with.sha256"     # airflow_fingerprint at start
    airflow = [*AIRFLOW_SERVICES, *(state.WORKERS if lay.distributed else ())]
    if any(_read_pid(lay, n) for n in airflow) and (not stamp.exists() or stamp.read_text() != wiring):
        print("stack: plugins/ or Airflow's settings changed since the stack started: restarting it", file=sys.stderr,
              flush=True)
        down()
        return _up(timeout)
    if not lay.password_file.exists():
        _private_file(lay.password_file, json.dumps({"admin": secrets.token_urlsafe(12)}))
    if not all(_read_pid(lay, n) for n in airflow):
        migrate = subprocess.run([_bin("airflow"), "db", "migrate"], env={**os.environ, **env}, cwd=REPO,
                                 capture_output=True, text=True, timeout=timeout, umask=UMASK)
        if migrate.returncode != 0:
            raise StackError(f"airflow db migrate failed:\n{migrate.stdout[-2000:]}\n{migrate.stderr[-2000:]}")
    started: dict[str, int] = {}                           # service -> its log's size before this start
    for name in airflow:
        if _read_pid(lay, name) is None:
            if name == "airflow-api-server":
                _port_free(lay, name, lay.airflow_port)
            log = lay.home / "logs" / f"{name}.log"
            started[name] = log.stat().st_size if log.exists() else 0
            _start(lay, name, *_service_command(lay, name, env))
    stamp.write_text(wiring)
    for name in [n for n in airflow[len(AIRFLOW_SERVICES):] if n in started]:   # a started Celery worker says
        _wait(f"Celery worker {name}", lambda n=name: _said(lay.home / "logs" / f"{n}.log", started[n], " ready."),
              timeout, lay, name)                                            # "ready" once it consumes tasks
    _wait("Airflow api-server", lambda: _http_ok(f"{lay.airflow_url}/api/v2/monitor/health"), timeout, lay,
          "airflow-api-server")
    _wait("Airflow scheduler, dag-processor and triggerer",
          lambda: all(_airflow_health(lay).get(k) == "healthy"
                      for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")),
          timeout, lay)
    if _read_pid(lay, SUPERVISOR) is None:
        _start(lay, SUPERVISOR, *_service_command(lay, SUPERVISOR, env))
    _restrict_state(lay)
    return lay


def _service_command(lay: Layout, name: str, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one service: how `up` and the supervisor start it."""
    if name == "mlflow":
        mdir = _private_dir(lay.home / "mlflow")
        backend = os.environ.get("FRAUDOPS_MLFLOW_BACKEND_URI") or (
            _pg_url(lay, "mlflow") if lay.distributed else f"sqlite:///{mdir / 'mlflow.db'}")
        artifacts = os.environ.get("FRAUDOPS_MLFLOW_ARTIFACTS") or (
            "s3://fraudops-mlflow/artifacts" if lay.s3 else str(lay.objects / "fraudops-mlflow" / "artifacts"))
        _write_mlflow_auth_config(lay, env["MLFLOW_TRACKING_PASSWORD"])
        return ([_bin("mlflow"), "server", "--app-name", "basic-auth",      # the store URI (a password in it) by
                 "--artifacts-destination", artifacts, "--serve-artifacts",   # the environment, never in `ps`
                 "--host", "127.0.0.1", "--port", str(lay.mlflow_port), "--workers", "1"],
                {**env, "MLFLOW_BACKEND_STORE_URI": backend, "MLFLOW_AUTH_CONFIG_PATH": str(lay.mlflow_auth_config),
                 "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(lay.home, "mlflow_flask_secret_key")})
    if name == SUPERVISOR:
        return [sys.executable, "-m", "pipelines", "stack", "supervise"], env
    if name == "postgres":
        return [_pg_bin("postgres"), "-D", str(lay.home / "postgres" / "data"), "-h", "127.0.0.1",
                "-p", str(lay.pg_port), "-c", "unix_socket_directories=", "-c", "max_connections=300"], env
    if name == "redis":
        return [_redis_bin(), str(lay.home / "redis" / "redis.conf")], env
    if name in state.WORKERS:
        import socket

        worker = f"worker{name.rsplit('-', 1)[1]}@{socket.gethostname()}"
        return ([_bin("airflow"), "celery", "worker", "--celery-hostname", worker, "--concurrency",
                 env.get("AIRFLOW__CELERY__WORKER_CONCURRENCY", str(WORKER_SLOTS)),
                 "--skip-serve-logs"],
                {**env, "FRAUDOPS_WORKER_NAME": worker,
                 "AIRFLOW__CORE__HOSTNAME_CALLABLE": "pipelines.ops.airflow_db.worker_hostname"})
    if name == "airflow-api-server" and env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", "").startswith(
            "pipelines.ops.airflow_db."):          # SQLite: a short lock wait ends its self-deadlock (airflow_db.py)
        env = {**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "pipelines.ops.airflow_db.SQLITE_CONNECT_ARGS_API",
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "pipelines.ops.airflow_db.SQLITE_CONNECT_ARGS_API_ASYNC"}
    return [_bin("airflow"), *AIRFLOW_SERVICES[name]], env


# --------------------------------------------------------------------------- PostgreSQL and Redis
DEPS_HINT = "run `make distributed-deps` (Debian's postgresql and redis-server)"


PG_SERVICES = ("airflow", "mlflow")      # one database and one login role each (the role owns the database)


def _pg_url(lay: Layout, db: str) -> str:
    """The service `db`'s own login (not the superuser): Airflow cannot read MLflow's store, nor MLflow
    Airflow's, and neither can create roles or databases."""
    return f"postgresql+psycopg2://{db}:{_secret(lay.home, f'postgres_{db}_password')}@127.0.0.1:{lay.pg_port}/{db}"


def _pg_bin(name: str) -> str:
    import shutil

    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if found:
        return str(found[-1])
    if shutil.which(name):
        return str(shutil.which(name))
    raise StackError(f"the distributed stack needs PostgreSQL, and {name} is not installed: {DEPS_HINT}")


def _redis_bin() -> str:
    import shutil

    if not shutil.which("redis-server"):
        raise StackError(f"the distributed stack needs Redis, and redis-server is not installed: {DEPS_HINT}")
    return str(shutil.which("redis-server"))


def _as_db_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, its commands run as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _db_owned(path: Path) -> None:
    if os.geteuid() == 0:
        import shutil

        shutil.chown(path, "postgres", "postgres")


def _start_postgres(lay: Layout, env: dict[str, str], timeout: float) -> None:
    """PostgreSQL on 127.0.0.1:pg_port (TCP only, scram-sha-256), its data in .state/postgres/data,
    made by initdb on the first start (superuser `fraudops`, used only here); the databases `airflow`
    and `mlflow`, each owned by a login role of the same name with a password of its own (what the
    services connect as). A database made before the roles existed is handed over to its role."""
    import psycopg2

    pg = _private_dir(lay.home / "postgres")
    data = pg / "data"
    password = _secret(lay.home, "postgres_password")
    if os.geteuid() == 0:
        lay.home.chmod(0o711)            # the postgres user may pass through (not list) the state folder
        _db_owned(pg)
    if not (data / "PG_VERSION").exists():
        pwfile = pg / "initdb.pw"
        _private_file(pwfile, password)
        _db_owned(pwfile)
        try:
            init = subprocess.run([*_as_db_user(), _pg_bin("initdb"), "-D", str(data), "-U", "fraudops", "--pwfile",
                                   str(pwfile), "-A", "scram-sha-256", "-E", "UTF8", "--no-instructions"],
                                  capture_output=True, text=True, timeout=timeout, cwd="/")
        finally:
            pwfile.unlink(missing_ok=True)
        if init.returncode != 0:
            raise StackError(f"initdb failed:\n{init.stdout[-2000:]}\n{init.stderr[-2000:]}")
    if _read_pid(lay, "postgres") is None:
        _start(lay, "postgres", *_service_command(lay, "postgres", env))

    def connect(db: str = "postgres"):
        return psycopg2.connect(host="127.0.0.1", port=lay.pg_port, user="fraudops", password=password, dbname=db,
                                connect_timeout=3)

    def ready() -> bool:
        try:
            connect().close()
            return True
        except psycopg2.OperationalError:
            return False

    _wait("PostgreSQL", ready, timeout, lay, "postgres")
    from psycopg2 import sql

    conn = connect()
    handed = []
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for db in PG_SERVICES:
                role = sql.Identifier(db)
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (db,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s").format(role),
                            (_secret(lay.home, f"postgres_{db}_password"),))
                cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (db,))
                row = cur.fetchone()
                if row is None:
                    cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(role, role))
                elif row[0] != db:
                    cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(role, role))
                    handed.append(db)
                cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(role))
    finally:
        conn.close()
    for db in handed:                     # objects the superuser made there (a stack of an earlier version)
        conn = connect(db)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(_HAND_OVER, {"role": db})
        finally:
            conn.close()


# every table, view, sequence and type of the public schema not owned by the service's role, handed to it
# (%% is psycopg2's escape of format()'s %)
_HAND_OVER = """
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT format('ALTER %%s public.%%I OWNER TO %%I',
                         CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                        ELSE 'TABLE' END, c.relname, %(role)s) AS q
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
             AND pg_get_userbyid(c.relowner) <> %(role)s
             AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
  LOOP EXECUTE r.q; END LOOP;
  FOR r IN SELECT format('ALTER TYPE public.%%I OWNER TO %%I', t.typname, %(role)s) AS q
           FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
           WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'c') AND pg_get_userbyid(t.typowner) <> %(role)s
             AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')
  LOOP EXECUTE r.q; END LOOP;
END $$;
"""


def _start_redis(lay: Layout, env: dict[str, str], timeout: float) -> None:
    """Redis on 127.0.0.1:redis_port with a password (its config file is 0600), append-only file in
    .state/redis: queued Celery messages survive a restart."""
    import redis

    rdir = _private_dir(lay.home / "redis")
    password = _secret(lay.home, "redis_password")
    _private_file(rdir / "redis.conf", f"bind 127.0.0.1\nport {lay.redis_port}\nprotected-mode yes\n"
                                       f"requirepass {password}\ndir {rdir}\nappendonly yes\nsave \"\"\n"
                                       f"daemonize no\nlogfile \"\"\n")
    if _read_pid(lay, "redis") is None:
        _start(lay, "redis", *_service_command(lay, "redis", env))

    def ready() -> bool:
        try:
            return bool(redis.Redis(host="127.0.0.1", port=lay.redis_port, password=password,
                                    socket_connect_timeout=2).ping())
        except redis.RedisError:
            return False

    _wait("Redis", ready, timeout, lay, "redis")


# --------------------------------------------------------------------------- the supervisor
_lock_depth = 0
_lock_fd: int | None = None


@contextlib.contextmanager
def services_locked(wait: float = 60.0) -> Iterator[bool]:
    """Hold the stack's service lock (reentrant in one process): while it is held, the supervisor
    restarts nothing. Yields False if it could not be taken within `wait` seconds (then the caller
    goes on without it: a hung holder must not stop `down`)."""
    global _lock_depth, _lock_fd
    if _lock_depth:
        _lock_depth += 1
        try:
            yield True
        finally:
            _lock_depth -= 1
        return
    path = _private_dir(layout().home / "pids") / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    got = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            got = True
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    if not got:
        os.close(fd)
        yield False
        return
    _lock_depth, _lock_fd = 1, fd
    try:
        yield True
    finally:
        _lock_depth, _lock_fd = 0, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def restart_allowed(past: list[float], now: float, limit: int = 5, window: float = 600.0) -> bool:
    """A service is restarted at most `limit` times in `window` seconds: past that it is crash-looping
    and restarting it again would only hide that."""
    return sum(1 for t in past if now - t < window) < limit


def _said(path: Path, offset: int, text: str) -> bool:
    """Has the log at `path` said `text` after byte `offset` (what a service wrote since its start)?"""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return text.encode() in fh.read()
    except OSError:
        return False


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - 16384))
            return "\n".join(fh.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def supervise(interval: float = 2.0) -> int:
    """The supervisor's loop (a service of the stack): every `interval` seconds, restart each service
    that `up` started and that is no longer running."""
    lay = layout()
    env = stack_env(lay)
    me = os.getpid()
    restarts: dict[str, list[float]] = {}
    given_up: dict[str, int] = {}          # service -> the pid it gave up on
    logfile = lay.home / "logs" / f"{SUPERVISOR}.log"

    def say(text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(logfile, "a") as fh:
            fh.write(f"{stamp} {text}\n")

    say(f"supervising {', '.join(n for n in SERVICES if n != SUPERVISOR)} (pid {me})")
    born = time.monotonic()
    while True:
        try:
            f = _pidfile(lay, SUPERVISOR)
            mine = f.exists() and json.loads(f.read_text())["pid"] == me
            if not mine and time.monotonic() - born > 10:     # (`up` writes the pid file just after the start)
                say("no longer the stack's supervisor: exiting")
                return 0
            with services_locked(wait=0) as held:
                for name in (n for n in SERVICES if n != SUPERVISOR) if held and mine else ():
                    pf = _pidfile(lay, name)
                    if not pf.exists():
                        continue
                    old = json.loads(pf.read_text())["pid"]
                    if name in given_up and given_up[name] != old:
                        del given_up[name]                   # started again since (`stack up`): supervised again
                    if name in given_up or _read_pid(lay, name) is not None:
                        continue
                    now = time.monotonic()
                    if not restart_allowed(restarts.get(name, []), now):
                        given_up[name] = old
                        say(f"{name} (pid {old}) died again: {len(restarts[name])} restarts in 10 minutes, "
                            f"giving up on it (`stack up` starts it again)")
                        continue
                    tail = _log_tail(lay.home / "logs" / f"{name}.log")
                    restarts.setdefault(name, []).append(now)
                    pid = _start(lay, name, *_service_command(lay, name, env))
                    say(f"{name} (pid {old}) was not running: restarted as pid {pid}; its log ended with:\n"
                        + "\n".join(f"    | {line}" for line in tail.splitlines()))
        except Exception as exc:           # the supervisor outlives a bad pid file, a full disk, ...
            say(f"supervisor: {type(exc).__name__}: {exc} (retrying)")
        time.sleep(interval)


def airflow_fingerprint(env: dict[str, str]) -> str:
    """sha256 over plugins/*.py and pipelines/ops/airflow_db.py (names and bytes: the DAG wiring and
    database settings the Airflow processes imported) and the AIRFLOW__* settings of `env` (what
    they read at start)."""
    h = hashlib.sha256()
    for f in [*sorted((REPO / "plugins").glob("*.py")), REPO / "pipelines" / "ops" / "airflow_db.py"]:
        if not f.is_file():
            continue
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    for key in sorted(k for k in env if k.startswith("AIRFLOW__")):
        h.update(f"{key}={env[key]}\0".encode())
    return h.hexdigest()


def _write_mlflow_auth_config(lay: Layout, password: str) -> None:
    """MLflow's basic-auth app: its user database in .state/mlflow, the admin created on first start
    with the generated password (the file is 0600: it holds the password)."""
    db = lay.home / "mlflow" / "basic_auth.db"
    _private_file(lay.mlflow_auth_config, "[mlflow]\n"
                  "default_permission = READ\n"
                  f"database_uri = sqlite:///{db}\n"
                  "admin_username = admin\n"
                  f"admin_password = {password}\n"
                  "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                  # one PBKDF2 check per (user, password) per 5 min, not per request (one worker: no staleness)
                  "auth_cache_ttl_seconds = 300\n")


def _restrict_state(lay: Layout) -> None:
    """Databases, secrets and the env file: owner only (also for a state folder made before umask 077)."""
    for path in [lay.home / "stack.env", lay.password_file, lay.mlflow_auth_config,
                 *lay.home.glob("secrets/*"), *lay.home.glob("**/*.db")]:
        if path.is_file():
            path.chmod(0o600)
    for path in (lay.home, lay.home / "secrets", lay.home / "mlflow", lay.airflow_home):
        if path.is_dir():
            path.chmod(0o711 if path == lay.home and lay.distributed and os.geteuid() == 0 else 0o700)


def _ensure_buckets(lay: Layout) -> None:
    from pipelines.core import storage

    for bucket in BUCKETS:
        storage.ensure_bucket(bucket)


def _write_dvc_local_config(lay: Layout) -> None:
    """Point the DVC remotes at the stack's object store (.dvc/config.local is git-ignored). In
    production leave it out and set AWS_ENDPOINT_URL / credentials, or `dvc remote modify --local`."""
    if not (REPO / ".dvc").is_dir() or lay.home != (REPO / state.STATE_DEFAULT).resolve():
        return   # only the default stack owns the workspace's DVC config (tests use their own copies)
    (REPO / ".dvc" / "config.local").write_text(dvc_local_config(lay))


RAW_REMOTE = "s3://fraudops-lake/raw"      # the `raw` remote's url in .dvc/config (params.yaml's raw deliveries)


def dvc_local_config(lay: Layout, raw: str = RAW_REMOTE) -> str:
    """The DVC remotes `lake` (the cache) and `raw` (the raw deliveries, by default where params.yaml
    reads them; a training DAG workspace passes its params' folder) on this stack's object store."""
    if not lay.s3:
        local = lay.objects / raw[len("s3://"):] if raw.startswith("s3://") else Path(raw)
        return (f"['remote \"lake\"']\n    url = {lay.objects / 'fraudops-dvc' / 'cache'}\n"
                f"['remote \"raw\"']\n    url = {local}\n")
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    out = ""
    for remote in ("lake", "raw"):
        lines = (f"    url = {raw}\n" if remote == "raw" and raw != RAW_REMOTE else "") + \
                (f"    endpointurl = {endpoint}\n" if endpoint else "")
        out += f"['remote \"{remote}\"']\n{lines}" if lines else ""
    return out


def _marked_processes(home: Path) -> list:
    import psutil

    found = []
    for p in psutil.process_iter(["pid"]):
        if p.pid == os.getpid():
            continue
        try:
            if p.environ().get(MARKER) == str(home):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def down(grace: float = 10.0) -> list[int]:
    """Stop every process the stack started; return the pids that had to be SIGKILLed."""
    lay = layout()
    with services_locked(wait=30):
        return _down(lay, grace)


def _down(lay: Layout, grace: float) -> list[int]:
    import psutil

    sup = _read_pid(lay, SUPERVISOR)      # first, so that it restarts nothing while the rest stops
    if sup is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sup, signal.SIGKILL)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.wait_procs([psutil.Process(sup)], timeout=5)
    names = list(SERVICES)
    groups, fast = [], []
    for name in names:
        # a pid file whose process is gone names its group only while members it started are left (workers
        # whose process title wiped the marker); one whose pid was reused since names nothing
        rec = state.pid_record(lay.home, name)
        if rec is None and (rec := state.pid_file(lay.home, name)) is not None and not state.group_left(rec):
            rec = None
        if rec is not None:
            groups.append(rec["pgid"])
            fast.append(name == "postgres")
    for pgid, pg in zip(groups, fast):
        try:      # PostgreSQL: SIGINT, its fast shutdown (SIGTERM waits for every client to leave)
            os.killpg(pgid, signal.SIGINT if pg else signal.SIGTERM)
        except ProcessLookupError:
            pass
    procs = _marked_processes(lay.home)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    killed = []
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in alive + _marked_processes(lay.home):
        try:
            p.kill()
            killed.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(_marked_processes(lay.home), timeout=5)
    # killed children linger as zombies until init reaps them: wait a little so `ps` is clean
    seen = {p.pid for p in procs} | set(groups)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(psutil.pid_exists(pid) for pid in seen):
        time.sleep(0.2)
    for name in names:
        _pidfile(lay, name).unlink(missing_ok=True)
    return killed


def _port_owner(port: int) -> tuple[int | None, str]:
    """The pid and command line of the process listening on 127.0.0.1:`port` (None: nobody, or
    not visible to this user)."""
    import psutil

    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None, ""
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            try:
                return c.pid, " ".join(" ".join(psutil.Process(c.pid).cmdline()).split())[:120]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return c.pid, ""
    return None, ""


def _foreign(lay: Layout, port: int) -> str | None:
    """Why the service answering on `port` is not this stack's (another checkout's stack, another
    program), or None when it is ours or nobody listens."""
    owner, cmd = _port_owner(port)
    if owner is None:
        return None
    import psutil

    ours = {pid for name in SERVICES if (pid := _read_pid(lay, name))}
    with contextlib.suppress(OSError):
        if os.getpgid(owner) in {os.getpgid(p) for p in ours if state.alive(p)}:    # a worker of our server
            return None

    home = None
    try:       # a server that sets its process title overwrites its own environ: ask its parents too
        proc = psutil.Process(owner)
        for p in (proc, *proc.parents()):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                if home := p.environ().get(MARKER):
                    break
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    if home == str(lay.home):
        return None
    if home:
        where = f"the stack of {home}"
    else:
        try:
            cwd = psutil.Process(owner).cwd()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            cwd = ""
        where = f"{cmd or 'another program'}{', started in ' + cwd if cwd else ''}"
        if cwd and Path(cwd).resolve() == REPO.resolve() and not home:
            where += "; its environment is not readable, so whose stack it is is unknown"
    return f"port {port} is held by pid {owner} ({where}), not by this stack ({lay.home})"


def status() -> dict[str, dict[str, object]]:
    """Each service: its URL, its pid (from this stack's pid file), and whether it is healthy, which
    it is only when it is this stack's own (a port held by another checkout's stack or another
    program is reported in `note`)."""
    lay = layout()
    health = _airflow_health(lay)
    if lay.s3:
        objects = {"url": os.environ.get("AWS_ENDPOINT_URL") or "AWS S3", "pid": None, "kind": "s3",
                   "healthy": _s3_ok()}
    else:
        objects = {"url": str(lay.objects), "pid": None, "kind": "files", "healthy": lay.objects.is_dir()}
    out: dict[str, dict[str, object]] = {
        "objects": objects,
        "mlflow": {"url": lay.mlflow_url, "pid": _read_pid(lay, "mlflow") if not lay.external_mlflow else None,
                   "healthy": _http_ok(f"{lay.mlflow_url}/health")},
    }
    keys = {"airflow-api-server": "metadatabase", "airflow-scheduler": "scheduler",
            "airflow-dag-processor": "dag_processor", "airflow-triggerer": "triggerer"}
    for name, key in keys.items():
        out[name] = {"url": lay.airflow_url, "pid": _read_pid(lay, name), "healthy": health.get(key) == "healthy"}
    if lay.distributed:
        out["postgres"] = {"url": f"127.0.0.1:{lay.pg_port}", "pid": _read_pid(lay, "postgres"),
                           "healthy": _read_pid(lay, "postgres") is not None}
        out["redis"] = {"url": f"127.0.0.1:{lay.redis_port}", "pid": _read_pid(lay, "redis"),
                        "healthy": _read_pid(lay, "redis") is not None}
        for name in state.WORKERS:
            out[name] = {"url": "celery", "pid": _read_pid(lay, name), "healthy": _read_pid(lay, name) is not None}
    sup = _read_pid(lay, SUPERVISOR)
    out[SUPERVISOR] = {"url": str(lay.home / "logs" / f"{SUPERVISOR}.log"), "pid": sup, "healthy": sup is not None}
    airflow = _foreign(lay, lay.airflow_port)
    for name, port, why in (("mlflow", lay.mlflow_port, None if lay.external_mlflow else _foreign(lay, lay.mlflow_port)),
                            *((n, lay.airflow_port, airflow) for n in keys)):
        if why:
            out[name].update(healthy=False, note=why)
        elif out[name]["healthy"] and out[name]["pid"] is None and not (name == "mlflow" and lay.external_mlflow):
            out[name].update(healthy=False, note="answers, but this stack has no pid file for it (started by hand?)")
    return out


def _status_line(name: str, info: dict) -> str:
    line = f"{name:22s} {info['url']:40s} pid={info['pid'] or '-'} healthy={info['healthy']}"
    return line + (f"  ({info['note']})" if info.get("note") else "")


def _s3_ok() -> bool:
    from pipelines.core import storage

    try:
        storage.list_uris(f"s3://{BUCKETS[0]}/_health")
        return True
    except storage.StorageError:
        return False


def airflow_password(lay: Layout | None = None) -> str:
    lay = lay or layout()
    return json.loads(lay.password_file.read_text())["admin"]


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipelines stack")
    ap.add_argument("action", choices=["up", "down", "status", "env", "supervise"])
    ap.add_argument("--timeout", type=float, default=240.0)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--distributed", action="store_true",
                      help="up: PostgreSQL, Redis and Airflow's CeleryExecutor with two workers (remembered)")
    mode.add_argument("--local", action="store_true", help="up: back to the embedded default (SQLite, LocalExecutor)")
    args = ap.parse_args(argv)
    if args.action == "up":
        if args.distributed or args.local:
            home = _private_dir(layout().home)
            if state.stack_alive(home) and layout().distributed != args.distributed:
                down()                   # the mode changes what every service is: start it afresh
            (home / MODE_FILE).write_text("distributed\n" if args.distributed else "local\n")
        lay = up(args.timeout)
        for name, info in status().items():
            print(_status_line(name, info))
        print(f"Airflow UI: {lay.airflow_url}  (user admin, password in {lay.password_file})")
        print(f"MLflow UI:  {lay.mlflow_url}")
        return 0
    if args.action == "down":
        killed = down()
        left = _marked_processes(layout().home)
        print(f"stack stopped ({len(killed)} process(es) needed SIGKILL); {len(left)} left")
        return 1 if left else 0
    if args.action == "supervise":
        return supervise()
    if args.action == "env":
        lay = layout()
        for k, v in sorted(stack_env(lay).items()):
            if k not in CLIENT_HIDDEN:       # what clients need, as in stack.env: not the servers' secrets nor the marker
                print(f"export {k}={shlex.quote(v)}")
        return 0
    st = status()
    for name, info in st.items():
        print(_status_line(name, info))
    return 0 if all(i["healthy"] for i in st.values()) else 1
