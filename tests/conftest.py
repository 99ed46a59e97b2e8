"""Session fixtures: the real local stack (own state folder and ports, so a running demo is left
alone), simulated raw data in its S3, and params variants written to temporary files."""
from __future__ import annotations

import copy
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
# The range the training tests use: [train 01-20..01-31][gap][valid 02-08..02-14][test 02-15..02-21]
# (+7 days for the labels of the test window to land).
TRAIN_RANGE = ("2026-01-20", "2026-02-28")
TEST_ENV = {
    # (`make test` runs tests/unit beside the rest in a state folder and on ports of their own)
    "FRAUDOPS_HOME": os.environ.get("FRAUDOPS_TEST_HOME", str(REPO / ".state-test")),
    "FRAUDOPS_MLFLOW_PORT": os.environ.get("FRAUDOPS_TEST_MLFLOW_PORT", "5501"),
    "FRAUDOPS_AIRFLOW_PORT": os.environ.get("FRAUDOPS_TEST_AIRFLOW_PORT", "8081"),
}
# `make test-distributed` (FRAUDOPS_TEST_DISTRIBUTED=1): the same session fixtures on the distributed
# stack (PostgreSQL, Redis, CeleryExecutor with two workers), in a state folder and on ports of its own
DISTRIBUTED = os.environ.get("FRAUDOPS_TEST_DISTRIBUTED") == "1"
collect_ignore = [] if DISTRIBUTED else ["distributed"]        # `make test` leaves them out
if DISTRIBUTED:
    TEST_ENV = {"FRAUDOPS_HOME": str(REPO / ".state-test-distributed"), "FRAUDOPS_MLFLOW_PORT": "5502",
                "FRAUDOPS_AIRFLOW_PORT": "8082", "FRAUDOPS_PG_PORT": "5434", "FRAUDOPS_REDIS_PORT": "6381",
                "FRAUDOPS_STACK_MODE": "distributed"}
S3_TEST_PORT = int(os.environ.get("FRAUDOPS_TEST_S3_PORT", "5401"))     # the S3 endpoint of the boto3-path tests

# Hermetic from the start: no setting of a demo stack or of production leaks into the tests (the
# CLI fills unset variables from $FRAUDOPS_HOME/stack.env, so FRAUDOPS_HOME is the tests' own).
for _key in [k for k in os.environ if k.startswith(("FRAUDOPS_", "MLFLOW_", "AIRFLOW__", "AWS_"))
             or k in ("AIRFLOW_HOME", "AIRFLOW_API_USER", "AIRFLOW_API_PASSWORD")]:
    if _key not in TEST_ENV and _key not in ("FRAUDOPS_TEST_S3_PORT", "FRAUDOPS_TEST_MLFLOW_PORT",
                                             "FRAUDOPS_TEST_AIRFLOW_PORT", "FRAUDOPS_TEST_DISTRIBUTED",
                                             "FRAUDOPS_TEST_HOME"):
        del os.environ[_key]
os.environ.update(TEST_ENV)
# `make test` starts its two sessions as jobs of one shell, where SIGINT comes in ignored: Ctrl-C
# reaches each as a KeyboardInterrupt again, so its fixtures are torn down (the stack stopped)
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def publish(primary: str, data, companions: dict | None = None, stage: str = "test") -> None:
    """Publish a committed partition as a stage would (objects, then its lineage record): `data` and
    the companions' values are a frame, a dict (JSON) or bytes."""
    import polars as pl

    from pipelines.core import storage

    def _bytes(v) -> bytes:
        if isinstance(v, pl.DataFrame):
            return storage.parquet_bytes(v)
        return storage.json_bytes(v) if isinstance(v, (dict, list)) else v

    with storage.Publisher("/nowhere") as pub:
        part = pub.partition(primary, stage)
        for uri, v in (companions or {}).items():
            part.put(uri, _bytes(v))
        part.put(primary, _bytes(data))
        part.commit()


def base_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def write_params(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def params_with_lake(tmp_path: Path, lake: str, mutate=None) -> Path:
    """params.yaml with every S3 location moved under `lake` (a bucket of its own)."""
    data = copy.deepcopy(base_params())
    data["storage"]["lake"] = lake
    data["datasets"]["transactions"]["uri"] = f"{lake}/raw/transactions"
    data["datasets"]["labels"]["uri"] = f"{lake}/raw/labels"
    data["validate"]["suites"] = {k: str(REPO / v) for k, v in data["validate"]["suites"].items()}
    if mutate:
        mutate(data)
    return write_params(tmp_path / "params.yaml", data)


@pytest.fixture(scope="session")
def stack():
    """The whole local stack, started once for the session and stopped at its end."""
    for key in ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "FRAUDOPS_MLFLOW_TRACKING_URI", "AIRFLOW_HOME",
                "FRAUDOPS_OBJECT_STORE", "FRAUDOPS_S3_ENDPOINT_URL"):
        os.environ.pop(key, None)
    os.environ.update(TEST_ENV)
    from pipelines.ops import stack as st

    try:
        lay = st.up(timeout=300)
    except st.StackBusy:            # another up or down holds the lock: this one started nothing, stops nothing
        raise
    except BaseException:           # a start that failed or was interrupted (Ctrl-C, `make test`'s SIGTERM):
        try:                        # what it had started is stopped, not left running (no teardown follows)
            st.down()
        except Exception as exc:    # (the start's failure is the one told)
            print(f"stack down after a failed start: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise
    yield lay
    stack_down_leaves_nothing(lay)


# where the stack's supervisor logs each service death (pipelines/ops/stack.py), and its size when
# this session began: the session's part is summed up at the end
SUPERVISOR_LOG = Path(TEST_ENV["FRAUDOPS_HOME"]) / "logs" / "supervisor.log"
_SUPERVISOR_LOG_AT_START = SUPERVISOR_LOG.stat().st_size if SUPERVISOR_LOG.exists() else 0


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    """Every service death the supervisor saw in this session, with the end of the service's own
    log. test_faults and test_stack_lifecycle kill services on purpose; any other is a crash to read."""
    if not SUPERVISOR_LOG.exists():
        return
    with open(SUPERVISOR_LOG, "rb") as fh:
        fh.seek(_SUPERVISOR_LOG_AT_START)
        text = fh.read().decode(errors="replace")
    blocks: list[list[str]] = []          # one per supervisor line: the line and the log tail under it
    for line in text.splitlines():
        if line.startswith("    | ") and blocks:
            blocks[-1].append(line)
        else:
            blocks.append([line])
    deaths = [b for b in blocks if "was not running" in b[0] or "giving up" in b[0]]
    terminalreporter.write_sep("=", f"stack supervisor: {len(deaths)} service restart(s) in this session")
    for block in deaths:
        terminalreporter.write_line(block[0])
        for line in block[1:][-8:]:
            terminalreporter.write_line(line[:300])


def stack_down_leaves_nothing(lay) -> None:
    """The session's finalizer, and a check: `stack down` stops every service and every child it
    started (they ignore SIGTERM), leaves no marked process and frees every port."""
    import socket

    import psutil

    from pipelines.ops import stack as st

    tree = stack_pids()
    st.down()
    alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"stack down left {[psutil.Process(p).cmdline() for p in alive]}"
    assert st._marked_processes(st.layout().home) == []
    for port in (lay.mlflow_port, lay.airflow_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"stack down left port {port} open"


def stack_pids() -> set[int]:
    """Every process of the running stack: the services and all their children."""
    import psutil

    from pipelines.ops import stack as st

    pids: set[int] = set()
    for info in st.status().values():
        if info["pid"]:
            proc = psutil.Process(info["pid"])
            pids |= {proc.pid, *(c.pid for c in proc.children(recursive=True))}
    return pids


@pytest.fixture(scope="session")
def make_bucket(stack):
    from pipelines.core.storage import ensure_bucket

    return ensure_bucket


@pytest.fixture(scope="session")
def demo_raw(stack):
    """Simulated raw data (params.yaml demo_data, Jan..Feb) in the stack's default lake bucket."""
    from pipelines.core.config import load_params
    from pipelines.ops.demo_data import DemoParams, write_demo

    params = load_params(REPO / "params.yaml")
    p = DemoParams.from_dict({**params.section("demo_data"), "bugs": []})
    tx, lb = params.dataset("transactions"), params.dataset("labels")
    write_demo(p, tx.partition_uri, lb.partition_uri, p.start_date, params.run.end_date)
    return params


@pytest.fixture(scope="session")
def training_features(stack, demo_raw):
    """Validated feature partitions of TRAIN_RANGE (and the labels they need) in the default lake.
    Built in-process only when missing (whoever built them first made the same bytes)."""
    from pipelines import features, ingest, validate
    from pipelines.core import storage
    from pipelines.core.config import date_range, parse_date

    params = demo_raw
    days = date_range(parse_date(TRAIN_RANGE[0]), parse_date(TRAIN_RANGE[1]))
    if not all(storage.exists(params.storage.uri("features_manifest", date=d.isoformat())) for d in days):
        rng = ["--params", str(REPO / "params.yaml"), "--start", TRAIN_RANGE[0], "--end", TRAIN_RANGE[1]]
        ingest.main([*rng, "--with-lookback"])
        validate.main([*rng, "--with-lookback"])
        features.main(rng)
    return params


def sh(cmd: list[str], cwd: Path, timeout: float = 900, env: dict | None = None) -> str:
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", **(env or {})}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


@pytest.fixture(scope="session")
def dvc_workspace(stack, demo_raw, tmp_path_factory):
    """A git repo holding the project's files (as in a clean clone) with run = TRAIN_RANGE and a
    model name of its own; `dvc repro` has been run once in it (its output is returned too)."""
    import subprocess

    from pipelines.ops.stack import dvc_local_config

    ws = tmp_path_factory.mktemp("dvc") / "project"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    import shutil

    for f in files:
        if (REPO / f).is_file():
            (ws / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, ws / f)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["run"] = {"start_date": TRAIN_RANGE[0], "end_date": TRAIN_RANGE[1]}
    params["register"]["model_name"] = "fraud-xgb-dvc"
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (ws / ".dvc" / "config.local").write_text(dvc_local_config(stack))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "snapshot"]):
        sh(cmd, ws)
    trace = ws.parent / "params-read.jsonl"          # every stage process appends the params keys it read
    out = sh(["dvc", "repro"], ws, timeout=1500, env={"FRAUDOPS_PARAMS_TRACE": str(trace)})
    return ws, out


ONE_GRID = {"max_depth": [4], "learning_rate": [0.1], "scale_pos_weight": [1.0]}


def nightly_params(name: str, root: Path, mutate=None) -> Path:
    """params.yaml for the nightly tests: the default lake (TRAIN_RANGE's features), a model name and
    training artifacts of their own, a small search grid, a retrain window that fits the demo data."""
    data = copy.deepcopy(base_params())
    data["validate"]["suites"] = {k: str(REPO / v) for k, v in data["validate"]["suites"].items()}
    data["storage"]["layout"]["training"] = f"test-nightly/{name}/{{run}}"
    data["train"]["search"] = ONE_GRID
    data["register"]["model_name"] = name
    data["score"]["cache_dir"] = str(root / "model-cache")
    # no wait for labels: the nightly tests cover the trigger chain on a 5-day backfill (the wait is
    # covered by tests/unit/test_retrain.py and the demo)
    data["retrain"].update({"window_days": 40, "drift_days": 2, "of_last_days": 3, "cooldown_days": 7,
                            "min_labelled_days_after_onset": 0})
    if mutate:
        mutate(data)
    return write_params(root / "params.yaml", data)


def state_dir(name: str) -> Path:
    """A new folder under <state>/params/: a params file given to a DAG run must be a project file
    or live there (the DAGs refuse any other path)."""
    import uuid

    path = Path(os.environ["FRAUDOPS_HOME"]) / "params" / f"{name}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="session")
def nightly_champion(training_features, tmp_path_factory):
    """A champion of its own (trained, evaluated, registered on TRAIN_RANGE) for the nightly tests."""
    import io
    import uuid
    from contextlib import redirect_stdout

    from pipelines import evaluate, register, train
    from pipelines.core import registry as models

    name = f"fraud-xgb-nightly-{uuid.uuid4().hex[:6]}"
    root = state_dir("nightly")
    path = nightly_params(name, root)
    p = ["--params", str(path), "--start", TRAIN_RANGE[0], "--end", TRAIN_RANGE[1]]
    assert train.main(p) == 0 and evaluate.main(p) == 0
    with redirect_stdout(io.StringIO()):
        assert register.main(p) == 0
    version = models.get_alias(models.client(), name, "champion")
    assert version is not None
    return {"name": name, "version": version, "params": path, "root": root}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """An S3 endpoint (moto's server) for the tests of the production path: boto3 against a real
    HTTP endpoint with signed requests. The embedded default keeps its objects on disk instead."""
    import subprocess
    import sys
    import time
    import urllib.request

    url = f"http://127.0.0.1:{S3_TEST_PORT}"
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(S3_TEST_PORT)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=2)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.3)
    env = {"FRAUDOPS_OBJECT_STORE": "s3", "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    yield {"url": url, "env": env, "proc": proc}
    proc.kill()
    proc.wait(timeout=30)


@pytest.fixture
def on_s3(s3_endpoint, monkeypatch):
    """This process's storage goes to the S3 endpoint (for the duration of one test)."""
    for k, v in s3_endpoint["env"].items():
        monkeypatch.setenv(k, v)
    return s3_endpoint
