"""The local stack (embedded default): S3 (moto server), MLflow tracking server, Airflow 3.

`python -m pipelines stack up|down|status|env`

Every service runs in its own process group (session) and carries the environment marker
FRAUDOPS_STACK_ID; `down` signals each group (TERM, then KILL after a grace period) and then sweeps
every process that still carries the marker, so children that ignore SIGTERM (Airflow's workers)
or escaped their group do not survive.

Production: set the variables below and the stack starts nothing of that kind:
  AWS_ENDPOINT_URL / AWS_* credentials   -> a real S3 or MinIO; no moto is started
  FRAUDOPS_MLFLOW_TRACKING_URI           -> an existing MLflow server; none is started
  FRAUDOPS_MLFLOW_BACKEND_URI            -> MLflow's backend store (e.g. postgresql://...)
  AIRFLOW__DATABASE__SQL_ALCHEMY_CONN    -> Airflow's metadata database (e.g. postgresql+psycopg2://...)
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
MARKER = "FRAUDOPS_STACK_ID"
BUCKETS = ("fraudops-lake", "fraudops-mlflow", "fraudops-dvc")


class StackError(RuntimeError):
    pass


def state_dir() -> Path:
    return Path(os.environ.get("FRAUDOPS_HOME") or REPO / ".state").resolve()


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Layout:
    home: Path
    s3_port: int
    mlflow_port: int
    airflow_port: int

    @property
    def external_s3(self) -> bool:
        url = os.environ.get("AWS_ENDPOINT_URL")
        return bool(url) and url.rstrip("/") != f"http://127.0.0.1:{self.s3_port}"

    @property
    def s3_url(self) -> str:
        return os.environ["AWS_ENDPOINT_URL"] if self.external_s3 else f"http://127.0.0.1:{self.s3_port}"

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


def layout() -> Layout:
    return Layout(state_dir(), _port("FRAUDOPS_S3_PORT", 5400), _port("FRAUDOPS_MLFLOW_PORT", 5500),
                  _port("FRAUDOPS_AIRFLOW_PORT", 8080))


def _secret(home: Path, name: str) -> str:
    path = home / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def stack_env(lay: Layout) -> dict[str, str]:
    """The variables every process of the stack (and every client) needs."""
    home = lay.home
    env = {
        MARKER: str(home),
        "FRAUDOPS_HOME": str(home),
        "AWS_ENDPOINT_URL": lay.s3_url,
        "MLFLOW_TRACKING_URI": lay.mlflow_url,
        "MLFLOW_S3_ENDPOINT_URL": lay.s3_url,
        "AIRFLOW_HOME": str(lay.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(lay.password_file),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{lay.airflow_url}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(lay.airflow_port),
        "AIRFLOW__API__BASE_URL": lay.airflow_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": _secret(home, "api_secret_key"),
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(home, "jwt_secret"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "15",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PYTHONPATH": str(REPO),
        "GIT_PYTHON_REFRESH": "quiet",
    }
    if not os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{lay.airflow_home / 'airflow.db'}"
    if not lay.external_s3:
        env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"})
    return env


def write_env_file(lay: Layout, env: dict[str, str]) -> Path:
    """.state/stack.env: sourced by make, read by `python -m pipelines` for unset variables."""
    path = lay.home / "stack.env"
    hidden = {MARKER, "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"}
    lines = [f"{k}={v}" for k, v in sorted(env.items()) if k not in hidden]
    path.write_text("\n".join(lines) + "\n")
    return path


def load_env_file(home: Path | None = None) -> None:
    """Fill unset variables from the stack's env file (the environment always wins)."""
    path = (home or state_dir()) / "stack.env"
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key and key not in os.environ:
            os.environ[key] = value


# --------------------------------------------------------------------------- processes
def _pidfile(lay: Layout, name: str) -> Path:
    return lay.home / "pids" / f"{name}.json"


def _alive(pid: int) -> bool:
    import psutil

    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _read_pid(lay: Layout, name: str) -> int | None:
    f = _pidfile(lay, name)
    if not f.exists():
        return None
    pid = json.loads(f.read_text())["pid"]
    return pid if _alive(pid) else None


def _start(lay: Layout, name: str, cmd: list[str], env: dict[str, str]) -> int:
    logs = lay.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = open(logs / f"{name}.log", "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **env}, cwd=REPO, start_new_session=True)
    log.close()
    _pidfile(lay, name).parent.mkdir(parents=True, exist_ok=True)
    _pidfile(lay, name).write_text(json.dumps({"pid": proc.pid, "pgid": proc.pid, "cmd": cmd}))
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


def up(timeout: float = 240.0) -> Layout:
    """Start whatever is not running yet and wait until everything is healthy (idempotent)."""
    lay = layout()
    lay.home.mkdir(parents=True, exist_ok=True)
    lay.airflow_home.mkdir(parents=True, exist_ok=True)
    env = stack_env(lay)
    write_env_file(lay, env)
    os.environ.update({k: v for k, v in env.items() if k != MARKER})

    # S3
    if not lay.external_s3:
        if _read_pid(lay, "s3") is None:
            _forget_registry_without_artifacts(lay)
            _start(lay, "s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(lay.s3_port)], env)
        _wait("S3 (moto)", lambda: _http_ok(f"{lay.s3_url}/moto-api/data.json"), timeout, lay, "s3")
    _ensure_buckets(lay)
    _write_dvc_local_config(lay)

    # MLflow
    if not lay.external_mlflow:
        if _read_pid(lay, "mlflow") is None:
            (lay.home / "mlflow").mkdir(exist_ok=True)
            backend = os.environ.get("FRAUDOPS_MLFLOW_BACKEND_URI") or f"sqlite:///{lay.home / 'mlflow' / 'mlflow.db'}"
            artifacts = os.environ.get("FRAUDOPS_MLFLOW_ARTIFACTS") or "s3://fraudops-mlflow/artifacts"
            _start(lay, "mlflow", [_bin("mlflow"), "server", "--backend-store-uri", backend,
                                   "--artifacts-destination", artifacts, "--serve-artifacts",
                                   "--host", "127.0.0.1", "--port", str(lay.mlflow_port), "--workers", "1"], env)
        _wait("MLflow", lambda: _http_ok(f"{lay.mlflow_url}/health"), timeout, lay, "mlflow")

    # Airflow
    if not lay.password_file.exists():
        lay.password_file.write_text(json.dumps({"admin": secrets.token_urlsafe(12)}))
        lay.password_file.chmod(0o600)
    if not all(_read_pid(lay, n) for n in AIRFLOW_SERVICES):
        migrate = subprocess.run([_bin("airflow"), "db", "migrate"], env={**os.environ, **env}, cwd=REPO,
                                 capture_output=True, text=True, timeout=timeout)
        if migrate.returncode != 0:
            raise StackError(f"airflow db migrate failed:\n{migrate.stdout[-2000:]}\n{migrate.stderr[-2000:]}")
    for name, args in AIRFLOW_SERVICES.items():
        if _read_pid(lay, name) is None:
            _start(lay, name, [_bin("airflow"), *args], env)
    _wait("Airflow api-server", lambda: _http_ok(f"{lay.airflow_url}/api/v2/monitor/health"), timeout, lay,
          "airflow-api-server")
    _wait("Airflow scheduler, dag-processor and triggerer",
          lambda: all(_airflow_health(lay).get(k) == "healthy"
                      for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")),
          timeout, lay)
    return lay


def _forget_registry_without_artifacts(lay: Layout) -> None:
    """The embedded S3 keeps objects in memory: when it (re)starts empty, the embedded registry's
    model files are gone, and a registry pointing at them would serve models that cannot load. Its
    database is set aside (kept, renamed) so registry and artifacts start empty together."""
    db = lay.home / "mlflow" / "mlflow.db"
    if lay.external_mlflow or os.environ.get("FRAUDOPS_MLFLOW_BACKEND_URI") or not db.exists() \
            or _read_pid(lay, "mlflow") is not None:
        return
    stale = db.with_name(f"mlflow.db.without-artifacts-{int(time.time())}")
    db.rename(stale)
    print(f"embedded S3 starts empty: the embedded MLflow registry's artifacts were lost with it; its database "
          f"was set aside as {stale}", file=sys.stderr)


def _ensure_buckets(lay: Layout) -> None:
    from pipelines.storage import s3_client

    client = s3_client()
    have = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in BUCKETS:
        if bucket not in have:
            client.create_bucket(Bucket=bucket)


def _write_dvc_local_config(lay: Layout) -> None:
    """Point the DVC remotes at the stack's S3 endpoint (.dvc/config.local is git-ignored).
    In production leave it out and set AWS_ENDPOINT_URL / credentials, or `dvc remote modify --local`."""
    if lay.external_s3 or not (REPO / ".dvc").is_dir() or lay.home != (REPO / ".state").resolve():
        return   # only the default stack owns the workspace's DVC config (tests use their own copies)
    (REPO / ".dvc" / "config.local").write_text(dvc_local_config(lay.s3_url))


def dvc_local_config(s3_url: str) -> str:
    return "".join(f"['remote \"{r}\"']\n    endpointurl = {s3_url}\n    access_key_id = testing\n"
                   f"    secret_access_key = testing\n" for r in ("lake", "raw"))


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
    import psutil

    lay = layout()
    names = ["airflow-api-server", "airflow-triggerer", "airflow-dag-processor", "airflow-scheduler",
             "mlflow", "s3"]
    groups = []
    for name in names:
        f = _pidfile(lay, name)
        if f.exists():
            groups.append(json.loads(f.read_text())["pgid"])
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGTERM)
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


def status() -> dict[str, dict[str, object]]:
    lay = layout()
    health = _airflow_health(lay)
    out: dict[str, dict[str, object]] = {
        "s3": {"url": lay.s3_url, "pid": _read_pid(lay, "s3"),
               "healthy": _http_ok(f"{lay.s3_url}/moto-api/data.json") if not lay.external_s3 else "external"},
        "mlflow": {"url": lay.mlflow_url, "pid": _read_pid(lay, "mlflow"),
                   "healthy": _http_ok(f"{lay.mlflow_url}/health")},
    }
    keys = {"airflow-api-server": "metadatabase", "airflow-scheduler": "scheduler",
            "airflow-dag-processor": "dag_processor", "airflow-triggerer": "triggerer"}
    for name, key in keys.items():
        out[name] = {"url": lay.airflow_url, "pid": _read_pid(lay, name), "healthy": health.get(key) == "healthy"}
    return out


def airflow_password(lay: Layout | None = None) -> str:
    lay = lay or layout()
    return json.loads(lay.password_file.read_text())["admin"]


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipelines stack")
    ap.add_argument("action", choices=["up", "down", "status", "env"])
    ap.add_argument("--timeout", type=float, default=240.0)
    args = ap.parse_args(argv)
    if args.action == "up":
        lay = up(args.timeout)
        for name, info in status().items():
            print(f"{name:22s} {info['url']:28s} pid={info['pid']} healthy={info['healthy']}")
        print(f"Airflow UI: {lay.airflow_url}  (user admin, password in {lay.password_file})")
        print(f"MLflow UI:  {lay.mlflow_url}")
        return 0
    if args.action == "down":
        killed = down()
        left = _marked_processes(layout().home)
        print(f"stack stopped ({len(killed)} process(es) needed SIGKILL); {len(left)} left")
        return 1 if left else 0
    if args.action == "env":
        lay = layout()
        for k, v in sorted(stack_env(lay).items()):
            print(f"export {k}={v}")
        return 0
    st = status()
    for name, info in st.items():
        print(f"{name:22s} {info['url']:28s} pid={info['pid']} healthy={info['healthy']}")
    return 0 if all(i["healthy"] for i in st.values()) else 1
