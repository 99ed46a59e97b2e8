"""The fault suite: real processes killed, services down or hung, a full disk, concurrent and
out-of-order runs, corrupted objects. Each fault ends in a clear one-line error or a documented
degraded mode; nothing committed is lost; a re-run gives the same bytes.

Elsewhere in the suite: a dead and a hung S3 endpoint (test_s3_path), a corrupt registered model
(test_scoring_fallbacks), the registry down -> cached champion (test_scoring_fallbacks), kill -9 of
each service and `stack down`/`up` losing nothing (test_stack_lifecycle).

Fail points (pipelines/core/faults.py) put a kill -9 exactly where a crash hurts most: while an object
is written, between the objects and their lineage record, between a model version and its alias.
"""
from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import polars as pl
import pytest

from pipelines.core.cli import EXIT_BLOCKED
from pipelines.core import lineage, registry as models, storage
from pipelines.core.config import date_range, load_params
from pipelines.ops.demo_data import DemoParams, make_world, simulate_day, split_labels
from tests.conftest import REPO, TRAIN_RANGE, nightly_params, params_with_lake, state_dir

pytestmark = pytest.mark.integration
START, END = dt.date(2026, 1, 1), dt.date(2026, 1, 16)
KILL_TRIES = 3          # a kill that lands after its stage ended (well under a second): the date again


def cli(*args: str, failpoints: str | None = None, env: dict | None = None, timeout: float = 600
        ) -> tuple[int, str, float]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST_")}   # each run its own bounds
    e.update(env or {})
    e.pop("FRAUDOPS_FAILPOINTS", None)
    if failpoints:
        e["FRAUDOPS_FAILPOINTS"] = failpoints
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=timeout, env=e)
    return r.returncode, r.stderr, time.monotonic() - t0


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("ERROR")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def small_spec(name: str):
    def mutate(data: dict) -> None:
        """A 14-day look-back, no features suite (explicitly), a model name nobody registered (rules)."""
        data["features"]["windows_days"] = [1, 7]
        data["features"]["target_rate"] = {"terminal": [7]}
        data["features"]["ratios"] = [{"name": "amount_over_customer_max_7d", "numerator": "amount",
                                       "denominator": "customer_amount_max_7d"}]
        data["validate"]["suites"]["features"] = False
        data["register"]["model_name"] = name
        data["ingest"]["duplicate_window_days"] = 14
    return mutate


@pytest.fixture(scope="module")
def mini(stack, tmp_path_factory):
    """A lake of local files: 16 days ingested and validated, the features, predictions, decisions
    and monitoring of END made once (the bytes every re-run must give again)."""
    root = tmp_path_factory.mktemp("faults")
    path = params_with_lake(root, str(root / "lake"), small_spec(f"nobody-{uuid.uuid4().hex[:6]}"))
    params = load_params(path)
    p = DemoParams.from_dict(params.section("demo_data"))
    world = make_world(p)
    for day in date_range(START, END):
        tx, labels = split_labels(simulate_day(p, world, day))
        storage.write_bytes(f"{params.dataset('transactions').partition_uri(day)}/part-0.parquet", storage.parquet_bytes(tx))
        if day + dt.timedelta(days=7) <= END:
            storage.write_bytes(f"{params.dataset('labels').partition_uri(day + dt.timedelta(days=7))}/part-0.parquet",
                                storage.parquet_bytes(labels))
    rng = ["--params", str(path), "--start", START.isoformat(), "--end", END.isoformat()]
    for stage in ("ingest", "validate"):
        rc, err, _ = cli(stage, *rng)
        assert rc == 0, err[-2000:]
    day = ["--params", str(path), "--date", END.isoformat()]
    for stage in ("features", "score", "decide", "monitor"):
        rc, err, _ = cli(stage, *day)
        assert rc == 0, (stage, err[-2000:])
    store = params.storage
    d = END.isoformat()
    clean = {k: storage.read_bytes(store.uri(k, dataset="transactions", date=d))
             for k in ("canonical", "validated", "features", "predictions", "decisions", "monitoring")}
    return {"path": str(path), "params": params, "store": store, "root": root, "clean": clean, "day": day, "d": d}


@pytest.fixture(autouse=True)
def _mini_made_whole_after_each_test(request):
    """A fault test that failed half-way must not fail the next ones: the END partitions of the
    mini lake are republished (from the first one that is not its clean self) after each test."""
    yield
    if "mini" not in request.fixturenames:
        return
    mini = request.getfixturevalue("mini")
    order = [("ingest", "canonical", ["--dataset", "transactions"]), ("validate", "validated", []),
             ("features", "features", []), ("score", "predictions", []), ("decide", "decisions", []),
             ("monitor", "monitoring", [])]
    broken = [i for i, (_, kind, _) in enumerate(order)
              if not committed(mini["store"], kind, mini["d"]) or not same_bytes(mini, kind)]
    for stage, _, extra in order[min(broken):] if broken else []:
        rc, err, _ = cli(stage, *mini["day"], *extra)
        assert rc == 0, (stage, err[-1500:])


def committed(store, kind: str, d: str, dataset: str = "transactions") -> bool:
    return lineage.Reader().exists(store.uri(kind, dataset=dataset, date=d))


def same_bytes(mini, kind: str) -> bool:
    return storage.read_bytes(mini["store"].uri(kind, dataset="transactions", date=mini["d"])) == mini["clean"][kind]


# --------------------------------------------------------------------------- kill -9 of each stage mid-write
STAGES = [  # (stage, args, the object being written when it dies, the partition it commits)
    ("ingest", ["--dataset", "transactions"], "canonical/transactions/date=", "canonical"),
    ("validate", [], "validated/transactions/date=", "validated"),
    ("features", [], "features/date=", "features"),
    ("score", [], "predictions/date=", "predictions"),
    ("decide", [], "decisions/date=", "decisions"),
    ("monitor", [], "monitoring/metrics/date=", "monitoring"),
]


SINKS = {"predictions", "decisions"}     # published by storage.ParquetSink (moved into a local lake)
KILLS = [(*st, "mid_write") for st in STAGES] + [(*STAGES[3], "before_record"), (*STAGES[0], "before_record")]


@pytest.mark.parametrize("stage,extra,obj,kind,where", KILLS, ids=[f"{k[0]}-{k[4]}" for k in KILLS])
def test_a_stage_killed_mid_write_leaves_nothing_half_published(mini, stage, extra, obj, kind, where):
    """A first publish of the partition (the old one withdrawn) killed while it writes its object,
    or after its objects and before its record: no partition is committed, the next stage refuses
    it in one line, and a re-run publishes the same bytes as a clean run."""
    uri = mini["store"].uri(kind, dataset="transactions", date=mini["d"])
    with storage.Publisher(str(mini["root"])) as pub:
        pub.remove(uri)
    point = f"storage.write@{obj}{mini['d']}/part-0.parquet=kill" if where == "mid_write" else \
        f"publish.before_record@{obj}{mini['d']}/part-0.parquet=kill"
    rc, err, _ = cli(stage, *mini["day"], *extra, failpoints=point)
    assert rc == -signal.SIGKILL, (rc, err[-2000:])
    assert not committed(mini["store"], kind, mini["d"])                    # readers refuse it, not a mix
    path = storage.local_path(uri)
    if where == "mid_write":
        assert not path.exists()
        temporaries = list(path.parent.glob(f".{path.name}.*.tmp"))
        if kind in SINKS:           # written whole in the work folder, renamed into the lake: nothing half there
            assert not temporaries, temporaries
        else:                       # the file being written (or staged, not yet renamed) is a temporary beside it
            assert temporaries
    else:
        assert path.read_bytes() == mini["clean"][kind]                    # whole, but not trusted without its record
    downstream = {"ingest": "validate", "validate": "features", "features": "score", "score": "decide",
                  "decide": "monitor"}.get(stage)
    if downstream:                                                          # the next stage refuses, one line
        rc, err, _ = cli(downstream, *mini["day"])
        assert rc == (EXIT_BLOCKED if downstream == "validate" else 1), err[-1500:]
        line = one_line(err)
        assert ("no committed partition" in line or "does not exist" in line or "missing" in line), line
    rc, err, _ = cli(stage, *mini["day"], *extra)                           # the re-run repairs it
    assert rc == 0, err[-2000:]
    assert committed(mini["store"], kind, mini["d"]) and same_bytes(mini, kind)
    if downstream:                                                          # and what follows is whole again
        rc, err, _ = cli(downstream, *mini["day"])
        assert rc == 0, err[-2000:]


# --------------------------------------------------------------------------- the disk is full
@pytest.fixture
def small_disk(tmp_path):
    """A 256 KB tmpfs (the real ENOSPC), or None where this machine cannot mount one."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, timeout=30)
    yield mnt if r.returncode == 0 else None
    if r.returncode == 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_a_full_disk_is_one_line_and_leaves_no_partial_output(mini, small_disk, tmp_path):
    with storage.Publisher(str(mini["root"])) as pub:             # a first publish of the date
        pub.remove(mini["store"].uri("features", date=mini["d"]))
    snap = (small_disk or tmp_path) / "data" / "features"
    rc, err, _ = cli("features", *mini["day"], "--snapshot", str(snap),
                     failpoints=None if small_disk else "storage.write@.features.staging-=enospc")
    assert rc == 1
    line = one_line(err)
    assert "disk full (ENOSPC)" in line and "nothing published" in line, line
    assert not snap.exists() and not list(snap.parent.glob(".features.staging-*"))    # no partial DVC output
    assert not committed(mini["store"], "features", mini["d"])
    rc, err, _ = cli("features", *mini["day"])                       # space again: the same bytes
    assert rc == 0 and committed(mini["store"], "features", mini["d"]) and same_bytes(mini, "features")


# --------------------------------------------------------------------------- runs that collide
def test_concurrent_runs_of_one_date_give_the_bytes_of_one_run(mini):
    procs = [subprocess.Popen([sys.executable, "-m", "pipelines", "score", *mini["day"]], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    assert committed(mini["store"], "predictions", mini["d"]) and same_bytes(mini, "predictions")
    rc, err, _ = cli("decide", *mini["day"])
    assert rc == 0 and same_bytes(mini, "decisions"), err[-1500:]


def test_an_older_date_rerun_after_a_newer_one_changes_nothing(mini):
    older = (END - dt.timedelta(days=3)).isoformat()
    args = ["--params", mini["path"], "--date", older]
    before = storage.read_bytes(mini["store"].uri("validated", dataset="transactions", date=older))
    for stage in ("ingest", "validate"):
        rc, err, _ = cli(stage, *args, *(["--dataset", "transactions"] if stage == "ingest" else []))
        assert rc == 0, err[-1500:]
    assert storage.read_bytes(mini["store"].uri("validated", dataset="transactions", date=older)) == before
    lineage.Reader().record(mini["store"].uri("features", date=mini["d"]))     # the newer date is still valid
    rc, err, _ = cli("score", *mini["day"])
    assert rc == 0 and same_bytes(mini, "predictions"), err[-1500:]


# --------------------------------------------------------------------------- corrupted objects
def test_an_object_altered_after_it_was_committed_is_refused(mini):
    uri = mini["store"].uri("features", date=mini["d"])
    path = storage.local_path(uri)
    good = path.read_bytes()
    try:
        path.write_bytes(good[:-100] + bytes(100))                          # bit rot / a hand edit
        rc, err, _ = cli("score", *mini["day"])
        assert rc == 1
        line = one_line(err)
        assert "changed since it was committed" in line and "nothing scored" in line, line
    finally:
        path.write_bytes(good)
    rc, err, _ = cli("score", *mini["day"])
    assert rc == 0 and same_bytes(mini, "predictions")


def test_a_blocked_redelivery_withdraws_everything_derived_from_it(mini):
    """Deliver, run the night, re-deliver a bad file, re-run: nothing downstream of the bad date
    (its own partitions, and later dates' features whose look-back read it) remains usable."""
    bad_day = (END - dt.timedelta(days=2)).isoformat()
    raw = mini["params"].dataset("transactions").partition_uri(dt.date.fromisoformat(bad_day))
    good = storage.read_bytes(f"{raw}/part-0.parquet")
    try:
        tx = storage.read_parquet_bytes(good, raw)
        storage.write_bytes(f"{raw}/part-0.parquet", storage.parquet_bytes(
            tx.with_columns(pl.when(pl.int_range(pl.len()) < 500).then(None).otherwise(pl.col("amount")).alias("amount"))))
        args = ["--params", mini["path"], "--date", bad_day]
        assert cli("ingest", *args, "--dataset", "transactions")[0] == 0
        rc, err, _ = cli("validate", *args)
        assert rc == EXIT_BLOCKED and "partition blocked" in err                # a block: Airflow does not retry it
        store = mini["store"]
        assert not committed(store, "validated", bad_day)
        for kind, d in (("features", mini["d"]), ("predictions", mini["d"]), ("decisions", mini["d"]),
                        ("monitoring", mini["d"])):
            with pytest.raises(lineage.StaleInput, match=f"validated/transactions/date={bad_day}"):
                lineage.Reader().record(store.uri(kind, date=d))
        for stage in ("score", "decide", "monitor"):                         # every stage refuses, in one line
            rc, err, _ = cli(stage, *mini["day"])
            assert rc == 1 and f"validated/transactions/date={bad_day}" in one_line(err), (stage, err[-1500:])
        rc, err, _ = cli("features", *mini["day"])
        assert rc == 1 and "missing" in one_line(err)
    finally:
        storage.write_bytes(f"{raw}/part-0.parquet", good)
    args = ["--params", mini["path"], "--date", bad_day]
    for stage in ("ingest", "validate"):
        assert cli(stage, *args, *(["--dataset", "transactions"] if stage == "ingest" else []))[0] == 0
    for kind in ("features", "predictions", "decisions", "monitoring"):     # the same bytes: valid again
        lineage.Reader().record(mini["store"].uri(kind, date=mini["d"]))


# --------------------------------------------------------------------------- registration
@pytest.fixture(scope="module")
def trained(training_features, tmp_path_factory):
    """A model trained and evaluated on TRAIN_RANGE under a name of its own (not registered yet)."""
    name = f"fraud-xgb-faults-{uuid.uuid4().hex[:6]}"
    root = tmp_path_factory.mktemp("faults-register")
    path = nightly_params(name, root)
    rng = ["--params", str(path), "--start", TRAIN_RANGE[0], "--end", TRAIN_RANGE[1]]
    for stage in ("train", "evaluate"):
        rc, err, _ = cli(stage, *rng)
        assert rc == 0, err[-2000:]
    return {"name": name, "path": path, "rng": rng}


def test_register_killed_after_the_run_is_logged_resumes_without_a_second_run(trained):
    rc, err, _ = cli("register", *trained["rng"], failpoints="register.after_run=kill")
    assert rc == -signal.SIGKILL, err[-2000:]
    c = models.client()
    exp = c.get_experiment_by_name(load_params(trained["path"]).register.experiment)
    n_runs = len(c.search_runs([exp.experiment_id], "tags.model_uri != ''"))
    assert c.search_model_versions(f"name='{trained['name']}'") == []
    rc, err, _ = cli("register", *trained["rng"], failpoints="register.after_version=kill")
    assert rc == -signal.SIGKILL, err[-2000:]
    assert len(c.search_runs([exp.experiment_id], "tags.model_uri != ''")) == n_runs      # the run was reused
    (mv,) = c.search_model_versions(f"name='{trained['name']}'")
    assert mv.tags.get("registration.complete") is None and models.get_alias(c, trained["name"], "champion") is None
    rc, err, _ = cli("register", *trained["rng"])                                # the re-run completes it
    assert rc == 0, err[-2000:]
    assert models.get_alias(c, trained["name"], "champion") == str(mv.version)
    hist = models.history(c, trained["name"])
    assert [h["alias"] for h in hist] == ["champion"] and hist[0]["op"].endswith(f"v{mv.version}:champion")
    assert c.get_model_version(trained["name"], mv.version).tags["registration.complete"] == "true"
    rc, err, _ = cli("register", *trained["rng"])                                # and a third run does nothing
    assert rc == 0 and len(models.history(c, trained["name"])) == 1
    assert len(c.search_model_versions(f"name='{trained['name']}'")) == 1


def test_register_killed_between_the_alias_move_and_its_history_record_records_it_once(trained, tmp_path):
    import yaml

    data = yaml.safe_load(open(trained["path"]))
    name = f"{trained['name']}-b"
    data["register"]["model_name"] = name
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    rng = ["--params", str(p), "--start", TRAIN_RANGE[0], "--end", TRAIN_RANGE[1]]
    rc, err, _ = cli("register", *rng, failpoints="models.after_alias_move=kill")
    assert rc == -signal.SIGKILL, err[-2000:]
    c = models.client()
    assert models.get_alias(c, name, "champion") == "1" and models.history(c, name) == []   # moved, not recorded
    rc, err, _ = cli("register", *rng)
    assert rc == 0, err[-2000:]
    (h,) = models.history(c, name)
    assert h["alias"] == "champion" and h["to"] == "1" and h["from"] is None and "cold start" in h["reason"]


# --------------------------------------------------------------------------- MLflow down or hung
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Hung:
    """A server that accepts connections and never answers (bounded: it stops by itself)."""

    def __init__(self, seconds: float) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port, self.conns = self.sock.getsockname()[1], []
        threading.Thread(target=self._serve, args=(seconds,), daemon=True).start()

    def _serve(self, seconds: float) -> None:
        self.sock.settimeout(1.0)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                continue
        self.sock.close()


@pytest.mark.parametrize("kind", ["down", "hung"])
def test_mlflow_down_or_hung_during_register_is_one_line_within_the_bound(trained, tmp_path, kind):
    import yaml

    data = yaml.safe_load(open(trained["path"]))
    data["services"] = {"timeout_s": 12}
    data["register"]["model_name"] = f"{trained['name']}-{kind}"
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    hung = _Hung(120) if kind == "hung" else None
    url = f"http://127.0.0.1:{hung.port if hung else _closed_port()}"
    rc, err, took = cli("register", "--params", str(p), "--start", TRAIN_RANGE[0], "--end", TRAIN_RANGE[1],
                        env={"MLFLOW_TRACKING_URI": url}, timeout=300)
    assert rc == 1 and took < 60, (took, err[-2000:])
    line = one_line(err)
    assert url in line and ("not reachable" in line or "unreachable or too slow" in line), line
    assert models.client().search_model_versions(f"name='{trained['name']}-{kind}'") == []    # nothing registered


# --------------------------------------------------------------------------- no stack at all
@pytest.mark.parametrize("command", [["models", "list"], ["score", "--date", "2026-02-20"],
                                     ["airflow", "trigger", "training"]])
def test_without_a_running_stack_commands_fail_in_seconds_and_create_no_file(tmp_path, command):
    home = tmp_path / "home"
    before = set(os.listdir(REPO))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW", "FRAUDOPS", "AWS", "AIRFLOW"))}
    env.update({"FRAUDOPS_HOME": str(home), "FRAUDOPS_AIRFLOW_PORT": str(_closed_port()),
                "FRAUDOPS_MLFLOW_PORT": str(_closed_port())})
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pipelines", *command], cwd=REPO, capture_output=True, text=True,
                       timeout=60, env=env)
    took = time.monotonic() - t0
    assert r.returncode == 1 and took < 10, (took, r.stderr[-1500:])
    assert one_line(r.stderr).endswith("the local stack is not running: python -m pipelines stack up") or \
        "the local stack is not running: python -m pipelines stack up" in one_line(r.stderr)
    assert set(os.listdir(REPO)) == before and not home.exists()             # no mlflow.db, no mlruns, no state


# --------------------------------------------------------------------------- the registry dies mid-night
def test_mlflow_killed_mid_night_scores_from_the_cache_flagged_then_comes_back_whole(stack, nightly_champion, tmp_path):
    """Documented degraded mode: the registry is down, the last champion served (local cache)
    scores, every row says so; `stack up` brings MLflow back with the registry and its history."""
    from pipelines.ops import stack as st

    name = nightly_champion["name"]
    c = models.client()
    before = (models.aliases(c, name), len(models.history(c, name)))

    def mutate(d):
        d["storage"]["layout"].update({k: f"test-faults/{tmp_path.name}/{v}" for k, v in d["storage"]["layout"].items()
                                       if k.startswith(("predictions", "scored_model", "scoring_stats", "features_observed"))})
        d["storage"]["layout"]["training"] = f"test-nightly/{name}/{{run}}"
    p = nightly_params(name, tmp_path, mutate)
    args = ["--params", str(p), "--date", "2026-02-20"]
    assert cli("score", *args)[0] == 0                                      # the cache now holds the champion
    live = storage.read_parquet(load_params(p).storage.uri("predictions", date="2026-02-20"))
    try:
        with st.services_locked() as held:                       # the supervisor restarts nothing meanwhile
            assert held
            os.killpg(st.status()["mlflow"]["pid"], signal.SIGKILL)
            rc, err, _ = cli("score", *args)
        assert rc == 0, err[-2000:]
        pred = storage.read_parquet(load_params(p).storage.uri("predictions", date="2026-02-20"))
        assert pred["fallback"].to_list() == [["registry_cache"]] * pred.height
        assert pred["score"].equals(live["score"]) and set(pred["model_version"]) == {nightly_champion["version"]}
    finally:
        st.up(timeout=180)
    c = models.client()
    assert (models.aliases(c, name), len(models.history(c, name))) == before


# --------------------------------------------------------------------------- under the scheduler
def test_a_killed_task_and_a_restarted_scheduler_still_finish_the_run(stack, nightly_champion, tmp_path):
    """kill -9 of a running task's stage process: Airflow retries it; kill -9 of the scheduler
    mid-run: the stack's supervisor starts it again and the run finishes; the predictions are the
    bytes of a run from the command line."""
    import psutil

    from pipelines.ops import stack as st
    from pipelines.ops.airflow_api import AirflowClient

    name = nightly_champion["name"]
    day = "2026-02-24"

    def mutate(d):
        d["storage"]["layout"].update({k: f"test-faults/{tmp_path.name}/{v}" for k, v in d["storage"]["layout"].items()
                                       if k.startswith(("predictions", "scored_model", "scoring_stats", "features_observed", "decision",
                                                        "review_queue", "monitor", "alerts", "retrain", "shadow"))})
        d["storage"]["layout"]["training"] = f"test-nightly/{name}/{{run}}"
    p = nightly_params(name, state_dir("faults"), mutate)
    client = AirflowClient()
    client.wait_for_dag("nightly_scoring")

    def stage_procs(stage: str) -> list:
        return [q for q in psutil.process_iter(["cmdline"]) if q.info["cmdline"] and "pipelines" in q.info["cmdline"]
                and stage in q.info["cmdline"] and any(str(p) in a for a in q.info["cmdline"])]

    def features_ti(run_id: str) -> dict:
        return {t["task_id"]: t for t in client.task_instances("nightly_scoring", run_id)}.get("features") or {}

    def kill_features(run_id: str) -> dict | None:
        """Trigger the date and kill -9 its features stage process; the task instance once Airflow saw
        the kill, None when the kill missed (the stage of a day whose features are there already ends
        in well under a second: a process that ended before the kill, or a try that succeeded)."""
        client.trigger("nightly_scoring", {"params_file": str(p)}, run_id=run_id, logical_date=f"{day}T00:00:00+00:00")
        deadline = time.monotonic() + 300
        victims: list = []
        while not victims and time.monotonic() < deadline:
            victims = stage_procs("features")
            if not victims:
                if features_ti(run_id).get("state") in ("success", "failed", "upstream_failed"):
                    return None                                             # it ran between two looks
                time.sleep(0.05)
        assert victims, f"the features task never started: {features_ti(run_id)}"
        hit = 0
        for q in victims:
            try:
                q.kill()                                                    # the task's process dies: a retry
                hit += 1
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ti = features_ti(run_id)
            if (ti.get("try_number") or 0) >= 2 or ti.get("state") == "up_for_retry":
                return ti
            if ti.get("state") == "success" or not hit:
                return None
            time.sleep(1)
        raise AssertionError(f"no retry of features within 120 s of its kill: {ti}")

    for old in client.runs_between("nightly_scoring", day, day):             # a reused state: start clean
        if old["dag_run_id"].startswith("test-faults-"):
            client.delete_run("nightly_scoring", old["dag_run_id"])
    for k in range(KILL_TRIES):
        run_id = f"test-faults-{uuid.uuid4().hex[:8]}"
        ti = kill_features(run_id)
        if ti is not None:
            break
        client.wait("nightly_scoring", run_id, timeout=900)                 # one run per logical date: the
        client.delete_run("nightly_scoring", run_id)                        # missed one ends and goes
    else:
        pytest.fail(f"every kill ({KILL_TRIES} tries) landed after the features stage had ended")
    assert ti["state"] != "failed", ti
    dead = st.status()["airflow-scheduler"]["pid"]
    os.killpg(dead, signal.SIGKILL)                                         # the scheduler dies mid-run
    deadline = time.monotonic() + 60                                        # and the supervisor starts it again
    while st.status()["airflow-scheduler"]["pid"] in (None, dead) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert st.status()["airflow-scheduler"]["pid"] not in (None, dead)
    run = client.wait("nightly_scoring", run_id, timeout=900)
    assert run["state"] == "success", run
    tis = {t["task_id"]: t for t in AirflowClient().task_instances("nightly_scoring", run_id)}
    assert tis["features"]["try_number"] >= 2 and tis["score"]["state"] == "success"
    store = load_params(p).storage
    dag_bytes = storage.read_bytes(store.uri("predictions", date=day))
    assert cli("score", "--params", str(p), "--date", day, "--recompute")[0] == 0
    assert storage.read_bytes(store.uri("predictions", date=day)) == dag_bytes
