"""The distributed stack (`stack up --distributed`: PostgreSQL, Redis, Airflow's CeleryExecutor with
two workers) running the nightly DAG: a backfill over 5 dates spreads its task instances over both
workers and gives the same bytes as the stages run directly (what the LocalExecutor runs); a worker
killed mid-task: the task is retried on the other worker and its date ends the same; a date in 3
shards (features by entity hash, score and monitor by batch: mapped task instances on both workers)
gives the bytes of the date in one piece.

Run by `make test-distributed` (FRAUDOPS_TEST_DISTRIBUTED=1: tests/conftest.py gives the session
fixtures a distributed stack of their own)."""
from __future__ import annotations

import io
import json
import os
import signal
import time
from contextlib import redirect_stdout

import pytest

from pipelines.core import storage
from pipelines.core.config import date_range, load_params, parse_date
from pipelines.ops.airflow_api import AirflowClient
from tests.conftest import DISTRIBUTED

pytestmark = pytest.mark.integration
assert DISTRIBUTED, "run by make test-distributed (tests/conftest.py collects tests/distributed only then)"
FIRST, LAST, KILL_DAY, SHARD_DAY = "2026-03-01", "2026-03-05", "2026-03-06", "2026-03-07"
KILL_TRIES = 3          # a kill that lands after its task's try ended: the date again (its records dropped)
DAYS = [d.isoformat() for d in date_range(parse_date(FIRST), parse_date(LAST))]
STAGES = ("ingest", "validate", "features", "score", "decide", "monitor")
KINDS = ("canonical", "validated", "features", "predictions", "decisions", "monitoring")


def _uris(params, day: str) -> dict[str, str]:
    store = params.storage
    return {kind: store.uri(kind, dataset="transactions", date=day) if kind in ("canonical", "validated")
            else store.uri(kind, date=day) for kind in KINDS}


def _outputs(params, day: str) -> dict[str, bytes]:
    return {kind: storage.read_bytes(uri) for kind, uri in _uris(params, day).items()}


def _recompute(params, day: str) -> None:
    """The date's stages run directly with --recompute (what each task of the LocalExecutor runs)."""
    from pipelines import decide, features, ingest, monitor, score, validate

    args = ["--params", str(params.path), "--date", day, "--recompute"]
    with redirect_stdout(io.StringIO()):
        assert ingest.main([*args, "--dataset", "transactions"]) == 0
        for mod in (validate, features, score, decide, monitor):
            assert mod.main(args) == 0, mod.__name__


@pytest.fixture(scope="module")
def backfill(stack, nightly_champion):
    from pipelines.ops.demo_data import DemoParams, write_demo

    assert stack.distributed
    params = load_params(nightly_champion["params"])
    demo = {**params.section("demo_data"), "bugs": [], "nightly": None, "drift": None}
    tx, lb = params.dataset("transactions"), params.dataset("labels")
    write_demo(DemoParams.from_dict(demo), tx.partition_uri, lb.partition_uri, parse_date("2026-02-22"),
               parse_date(SHARD_DAY))
    client = AirflowClient()
    client.wait_for_dag("nightly_scoring")
    client.wait_for_dag("training")
    for k in range(KILL_TRIES):                                      # a reused state: start clean
        client.delete_run("nightly_scoring", f"kill__{KILL_DAY}__{k}")
    client.delete_run("nightly_scoring", f"shards__{SHARD_DAY}")
    for old in client._request("GET", "/api/v2/backfills?dag_id=nightly_scoring&limit=100")["backfills"]:
        if not old.get("completed_at"):          # an interrupted session's backfill: one may run at a time
            client._request("PUT", f"/api/v2/backfills/{old['id']}/cancel")
    started = time.monotonic()
    client._request("POST", "/api/v2/backfills", {
        "dag_id": "nightly_scoring", "from_date": f"{FIRST}T00:00:00Z", "to_date": f"{LAST}T00:00:00Z",
        "dag_run_conf": {"params_file": str(nightly_champion["params"])}, "max_active_runs": 3,
        "reprocess_behavior": "completed"})
    deadline = time.monotonic() + 1500
    while True:
        runs = client.runs_between("nightly_scoring", FIRST, LAST)
        mine = {r["logical_date"][:10]: r for r in runs
                if r.get("conf", {}).get("params_file") == str(nightly_champion["params"])}
        if len(mine) == len(DAYS) and all(r["state"] in ("success", "failed") for r in mine.values()):
            break
        assert time.monotonic() < deadline, [(k, r["state"]) for k, r in mine.items()]
        time.sleep(5)
    return {**nightly_champion, "client": client, "runs": mine, "params": params, "seconds": time.monotonic() - started}


def test_airflow_and_mlflow_each_log_in_to_postgres_as_a_role_of_their_own(stack):
    """Not the superuser: each service's login owns its database, cannot create roles or databases,
    and cannot even connect to the other service's database."""
    import psycopg2

    from pipelines.ops import stack as st

    lay = st.layout()
    assert os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
    for db, other in (("airflow", "mlflow"), ("mlflow", "airflow")):
        login = dict(host="127.0.0.1", port=lay.pg_port, user=db, password=st._secret(lay.home, f"postgres_{db}_password"))
        conn = psycopg2.connect(dbname=db, **login)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user")
                assert cur.fetchone() == (False, False, False)
                cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> %s", (db,))
                assert cur.fetchone() == (0,)
                cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
                assert cur.fetchone()[0] > 10                      # the service's own tables, made as that role
        finally:
            conn.close()
        with pytest.raises(psycopg2.OperationalError, match="permission denied"):
            psycopg2.connect(dbname=other, **login)


def test_a_backfill_over_five_dates_runs_on_both_celery_workers(backfill):
    client, runs = backfill["client"], backfill["runs"]
    tis = {d: client.task_instances("nightly_scoring", r["dag_run_id"]) for d, r in runs.items()}
    failed = {d: [(t["task_id"], t["state"]) for t in ts if t["state"] not in ("success", "skipped")]
              for d, ts in tis.items() if runs[d]["state"] != "success"}
    assert not failed, failed
    ran = [t for ts in tis.values() for t in ts if t["state"] == "success"]
    assert {t["executor"] for t in ran if t.get("executor")} <= {"CeleryExecutor"}
    hosts = {t["hostname"] for t in ran}
    assert {h.split("@")[0] for h in hosts} == {"worker1", "worker2"}, hosts     # the workers' own names
    per_worker = {h: sum(1 for t in ran if t["hostname"] == h) for h in hosts}
    assert min(per_worker.values()) >= 5, per_worker


def test_the_distributed_backfill_gives_the_bytes_of_the_stages_run_directly(backfill):
    """Each date's partitions (canonical, validated, features, predictions, decisions, monitoring)
    are the bytes the stages make when run directly with --recompute (what each task of the
    LocalExecutor runs: the same command)."""
    params = backfill["params"]
    for d in (DAYS[0], DAYS[-1]):
        before = _outputs(params, d)
        _recompute(params, d)
        after = _outputs(params, d)
        assert {k: before[k] == after[k] for k in KINDS} == {k: True for k in KINDS}, d


def _kill_a_worker_mid_stage(client, params, day: str, run_id: str) -> tuple[str, dict] | None:
    """Trigger `day` (as `run_id`), SIGKILL the process group of the Celery worker running one of its stages (its
    pid file removed first, so the supervisor does not start it again) and wait for the run. Returns
    (task id, its task instance) when the kill hit the task mid-try; None when the try had ended
    before the kill (a stage of a small date lasts well under a second: a race of the test, not of
    the system). The worker is started again either way."""
    from pipelines.core import state
    from pipelines.ops import stack as st

    import psutil

    lay = st.layout()
    workers = {f"airflow-worker-{i}": json.loads(state.pidfile(lay.home, f"airflow-worker-{i}").read_text())
               for i in (1, 2)}
    client.trigger("nightly_scoring", {"params_file": str(params.path)}, run_id=run_id, logical_date=f"{day}T00:00:00+00:00")

    def running_stage():
        """A stage process of this run on a worker: (task id, worker name, pgid). The processes are
        looked at every 50 ms: a stage of a small date ends in well under a second (polling the
        API for a running task missed all three tries in CI27)."""
        for q in psutil.process_iter(["cmdline"]):
            cl = q.info["cmdline"] or []
            stage = next((a for a in cl if a in STAGES[1:]), None)
            if stage is None or "pipelines" not in cl or not any(str(params.path) in a for a in cl):
                continue
            try:        # the stage runs in a session of its own (SubprocessHook): its worker is an ancestor's group
                groups = {os.getpgid(a.pid) for a in q.parents()}
            except (ProcessLookupError, psutil.Error):
                continue
            for name, info in workers.items():
                if info["pgid"] in groups:
                    return stage, name, info["pgid"], q
        return None

    deadline = time.monotonic() + 600
    while (hit := running_stage()) is None:
        assert time.monotonic() < deadline, "no stage task ran"
        time.sleep(0.05)
    task, name, pgid, proc = hit
    victim = f"worker{name[-1]}"
    state.pidfile(lay.home, name).unlink()                       # the supervisor leaves it dead
    os.killpg(pgid, signal.SIGKILL)
    try:
        proc.kill()                                              # and the stage it was running
    except psutil.NoSuchProcess:
        pass
    try:
        run = client.wait("nightly_scoring", run_id, timeout=900)
        tis = {t["task_id"]: t for t in client.task_instances("nightly_scoring", run_id)}
        assert run["state"] == "success", {k: t["state"] for k, t in tis.items()}
    finally:
        st.up(timeout=300)                                      # the worker back for whatever runs next
    ti = tis[task]
    if ti["try_number"] == 1 and ti["hostname"].startswith(victim):
        return None                                              # it had ended before the kill: a miss
    return task, {**ti, "victim": victim}


def test_a_worker_killed_mid_task_the_task_is_retried_on_the_other_worker(backfill):
    """SIGKILL to one Celery worker's process group while it runs a stage of a new date: Airflow fails
    the orphaned try on its heartbeat timeout and retries it on the other worker; the date succeeds
    with the same bytes as the stages run directly. A kill that lands after its task's try ended
    (the date then simply runs on the other worker) is tried again: the date's records dropped, so
    that every stage computes again (a later date would want this one's look-back)."""
    client, params = backfill["client"], backfill["params"]
    for k in range(KILL_TRIES):
        if k:               # one run per logical date: the missed one goes, and the date's records
            client.delete_run("nightly_scoring", f"kill__{KILL_DAY}__{k - 1}")
            for uri in _uris(params, KILL_DAY).values():
                storage.delete(storage.record_uri(uri))
        hit = _kill_a_worker_mid_stage(client, params, KILL_DAY, f"kill__{KILL_DAY}__{k}")
        if hit is not None:
            break
    else:
        pytest.fail(f"every kill ({KILL_TRIES} tries) landed after its task had ended")
    task, ti = hit
    assert ti["try_number"] >= 2 and not ti["hostname"].startswith(ti["victim"]), (task, ti)
    before = _outputs(params, KILL_DAY)
    _recompute(params, KILL_DAY)
    assert _outputs(params, KILL_DAY) == before


def test_a_date_in_three_shards_gives_the_bytes_of_one_piece(backfill):
    """shards.count 3: shard_plan maps features_shard, score_shard and monitor_shard over three shards
    (task instances on both workers); features, score and monitor merge them; every partition of the
    date is the bytes the stages make in one piece (run directly, shards.count 1); no shard is left."""
    import yaml

    client, params = backfill["client"], backfill["params"]
    raw = yaml.safe_load(params.path.read_text())
    raw["shards"] = {"count": 3}
    sharded = params.path.with_name("params-shards.yaml")
    sharded.write_text(yaml.safe_dump(raw, sort_keys=False))
    run_id = f"shards__{SHARD_DAY}"
    client.trigger("nightly_scoring", {"params_file": str(sharded)}, run_id=run_id,
                   logical_date=f"{SHARD_DAY}T00:00:00+00:00")
    run = client.wait("nightly_scoring", run_id, timeout=900)
    tis = client._request("GET", f"/api/v2/dags/nightly_scoring/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    assert run["state"] == "success", [(t["task_id"], t["map_index"], t["state"]) for t in tis]
    mapped = {(t["task_id"], t["map_index"]): t for t in tis if t["task_id"].endswith("_shard")}
    assert sorted(mapped) == [(f"{s}_shard", k) for s in ("features", "monitor", "score") for k in range(3)], sorted(mapped)
    assert {t["state"] for t in mapped.values()} == {"success"}
    assert {t["hostname"].split("@")[0] for t in mapped.values()} == {"worker1", "worker2"}
    logs = {s: client.task_log("nightly_scoring", run_id, s) for s in ("features", "score", "monitor")}
    assert "merged from 3 shards" in logs["features"] and "observed in 3 shards" in logs["monitor"], logs
    assert logs["score"].count("unchanged since its record") >= 3, logs["score"]       # the three tasks' shards merged
    store = params.storage
    assert not [u for u in storage.list_uris(f"{store.lake}/_shards/", hidden=True) if f"date={SHARD_DAY}/" in u]
    before = _outputs(params, SHARD_DAY)
    _recompute(params, SHARD_DAY)                                    # in one piece: shards.count 1
    assert _outputs(params, SHARD_DAY) == before
