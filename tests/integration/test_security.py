"""Security probes on the running stack, as an attacker would try them: hostile values for every
string param of every DAG, through the REST API the UI uses, and through a backfill's conf. Nothing
they say ever runs; a run either is refused when it is created (HTTP 400 naming the param) or fails
at its first task with a clear message before anything runs."""
from __future__ import annotations

import time
import uuid

import pytest

from pipelines.ops.airflow_api import AirflowApiError, AirflowClient
from tests.conftest import REPO, base_params, state_dir, write_params

pytestmark = pytest.mark.integration
PAYLOADS = ["params.yaml; touch pwned; exit 1 #", "$(touch pwned)", "`touch pwned`", "x' ; touch pwned ; '",
            'x" && touch pwned && "', "params.yaml\ntouch pwned", "--force", "../../../../etc/passwd"]
STRING_PARAMS = {"training": ["params_file", "start_date", "end_date", "reason"],
                 "nightly_scoring": ["params_file"], "labels": ["params_file"],
                 "promote": ["params_file", "version", "reason"], "rollback": ["params_file", "reason"],
                 "release_hold": ["params_file", "date", "action", "reason"]}


def pwned() -> list:
    return [p for root in (REPO, REPO / "dags", REPO / "plugins") for p in root.glob("pwned*")]


@pytest.fixture(scope="module")
def client(stack):
    c = AirflowClient()
    for dag_id in STRING_PARAMS:
        c.wait_for_dag(dag_id)
    return c


def test_the_dags_take_no_other_string_params(client):
    for dag_id, names in STRING_PARAMS.items():
        dag = client._request("GET", f"/api/v2/dags/{dag_id}/details")
        strings = sorted(k for k, v in (dag.get("params") or {}).items()
                         if "string" in str((v.get("schema") or {}).get("type")))
        assert strings == sorted(names), (dag_id, strings)


@pytest.mark.parametrize("dag_id,param", [(d, p) for d, ps in STRING_PARAMS.items() for p in ps if p != "reason"])
def test_a_hostile_value_is_refused_when_the_run_is_created(client, dag_id, param):
    for value in PAYLOADS:
        conf = {param: value, **({"confirm": True, "version": "1"} if dag_id == "promote" and param != "version" else {})}
        with pytest.raises(AirflowApiError, match=f"HTTP 400.*{param}"):
            client.trigger(dag_id, conf, run_id=f"hostile-{uuid.uuid4().hex[:8]}")
    assert pwned() == []


@pytest.mark.parametrize("dag_id", ["promote", "rollback"])
def test_a_hostile_reason_is_data_never_code(client, dag_id):
    """Free text reaches the command as one argument: a confirmed run with a hostile reason runs
    the models CLI with that text as the reason (here it fails on a model that does not exist)."""
    data = base_params()
    data["register"]["model_name"] = "fraud-xgb-nobody"
    path = write_params(state_dir("security") / "params.yaml", data)
    runs = []
    for reason in PAYLOADS[1:4]:
        conf = {"reason": reason, "confirm": True, "params_file": str(path),
                **({"version": "1"} if dag_id == "promote" else {})}
        run_id = f"hostile-{uuid.uuid4().hex[:8]}"
        client.trigger(dag_id, conf, run_id=run_id)
        runs.append((run_id, reason))
    for run_id, reason in runs:
        run = client.wait(dag_id, run_id, timeout=300, poll=1)
        assert run["state"] == "failed"
        log = _log(client, dag_id, run_id, dag_id)
        assert "Running command" in log and "ERROR models:" in log and "fraud-xgb-nobody" in log, log[-2000:]
        assert repr(f"--reason={reason}") in log, log[-2000:]                   # one argument, as given
    assert pwned() == []


@pytest.mark.parametrize("day,value,message", [(1, "nonexistent/params.yaml", "no such file"),
                                               (2, "/etc/fraudops.yaml", "not a file of the project"),
                                               (3, ".state-test/objects/x.yaml", None)])
def test_a_params_file_the_schema_lets_through_is_refused_before_anything_runs(client, day, value, message):
    """A well-formed path that is not a params file of the project: the run is created, and its
    first task fails before any command starts."""
    run_id = f"hostile-{uuid.uuid4().hex[:8]}"
    try:                                  # a date of its own (one run per logical date), after the start
        client.trigger("nightly_scoring", {"params_file": value}, run_id=run_id,
                       logical_date=f"2026-10-0{day}T00:00:00+00:00")
    except AirflowApiError as exc:                            # a leading "." is not even a path the form takes
        assert message is None and "HTTP 400" in str(exc)
        return
    assert client.wait("nightly_scoring", run_id, timeout=300, poll=1)["state"] == "failed"
    log = _log(client, "nightly_scoring", run_id, "wait_for_data")
    assert f"params_file {value!r} refused: {message}" in log and "nothing ran" in log, log[-2000:]
    assert "Running command" not in log
    tis = {t["task_id"]: t["state"] for t in client.task_instances("nightly_scoring", run_id)}
    assert tis["wait_for_data"] == "failed" and tis["ingest"] == "upstream_failed"


def test_an_unconfirmed_move_fails_before_anything_runs(client):
    run_id = f"unconfirmed-{uuid.uuid4().hex[:8]}"
    client.trigger("rollback", {"reason": "$(touch pwned)", "confirm": False}, run_id=run_id)
    assert client.wait("rollback", run_id, timeout=300, poll=1)["state"] == "failed"
    log = _log(client, "rollback", run_id, "rollback")
    assert "not confirmed" in log and "nothing changed" in log and "Running command" not in log
    assert pwned() == []


def test_a_hostile_backfill_conf_fails_at_the_first_task_and_runs_nothing(client):
    """A backfill's conf is the one way around the form's schema: the task checks the value again
    and the run fails before any command starts."""
    hostile = "params.yaml; touch pwned; exit 1 #"
    try:
        bf = client._request("POST", "/api/v2/backfills", {
            "dag_id": "labels", "from_date": "2026-01-09T00:00:00Z", "to_date": "2026-01-09T00:00:00Z",
            "dag_run_conf": {"params_file": hostile}, "max_active_runs": 1, "reprocess_behavior": "completed"})
    except AirflowApiError as exc:                 # refused outright: as good (nothing ran)
        assert "400" in str(exc) or "422" in str(exc), exc
        assert pwned() == []
        return
    deadline = time.monotonic() + 300
    while True:
        runs = [r for r in client._request("GET", "/api/v2/dags/labels/dagRuns?limit=100")["dag_runs"]
                if (r.get("conf") or {}).get("params_file") == hostile]
        if runs and all(r["state"] in ("success", "failed") for r in runs):
            break
        assert time.monotonic() < deadline, f"backfill {bf['id']} not finished"
        time.sleep(2)
    for r in runs:
        assert r["state"] == "failed"
        log = _log(client, "labels", r["dag_run_id"], "wait_for_labels")
        assert "refused" in log and "nothing ran" in log and "Running command" not in log, log[-2000:]
    assert pwned() == []


def _log(client: AirflowClient, dag_id: str, run_id: str, task_id: str) -> str:
    return client.task_log(dag_id, run_id, task_id)


def test_a_misspelt_or_paused_dag_fails_at_once_and_nothing_is_unpaused_silently(client):
    import subprocess
    import sys

    def trigger(*args: str) -> tuple[subprocess.CompletedProcess, float]:
        t = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "pipelines", "airflow", "trigger", *args], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        return r, time.monotonic() - t

    r, took = trigger("trainig")
    assert r.returncode == 2 and took < 15, (r.returncode, took, r.stderr[-500:])
    assert "no DAG 'trainig'" in r.stderr and "training" in r.stderr.split("the DAGs are", 1)[1], r.stderr[-500:]
    client._request("PATCH", "/api/v2/dags/rollback", {"is_paused": True})
    try:
        before = client.run_ids("rollback")
        r, took = trigger("rollback", "--conf", '{"reason": "a paused DAG"}')
        assert r.returncode == 2 and took < 15 and "is paused" in r.stderr and "--unpause" in r.stderr, r.stderr[-500:]
        assert client._request("GET", "/api/v2/dags/rollback")["is_paused"] is True
        assert client.run_ids("rollback") == before                     # no run was made
    finally:
        client._request("PATCH", "/api/v2/dags/rollback", {"is_paused": False})
