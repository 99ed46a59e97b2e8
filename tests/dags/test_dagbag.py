"""DAG files: no import errors, the expected task graph, fast parsing, nothing heavy at parse time."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
EXPECTED = {"training": {"ingest": {"validate"}, "validate": {"features"}, "features": {"train"}, "train": {"evaluate"},
                         "evaluate": {"register"}, "register": set()},
            "nightly_scoring": {"wait_for_data": {"ingest"}, "ingest": {"validate"}, "validate": {"features"},
                                "features": {"score"}, "score": {"decide", "shadow"}, "shadow": set(),
                                "decide": {"monitor"}, "monitor": {"retrain"}, "retrain": {"should_retrain"},
                                "should_retrain": {"trigger_training"}, "trigger_training": set()},
            "labels": {"wait_for_labels": {"ingest_labels"}, "ingest_labels": {"validate_labels"},
                       "validate_labels": {"feedback"}, "feedback": {"lifecycle"}, "lifecycle": set()}}
# tasks that wire stages together rather than run one: (task, what its command must contain or None)
NOT_A_STAGE = {"wait_for_data": "-m pipelines ingest", "should_retrain": None, "trigger_training": None,
               "wait_for_labels": "-m pipelines ingest", "ingest_labels": "-m pipelines ingest",
               "validate_labels": "-m pipelines validate"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_task_graphs(dagbag):
    for dag_id, edges in EXPECTED.items():
        dag = dagbag.dags[dag_id]
        assert {t.task_id: set(t.downstream_task_ids) for t in dag.tasks} == edges
        for t in dag.tasks:
            assert t.retries >= 1 and t.retry_exponential_backoff
            if t.task_id not in NOT_A_STAGE:
                assert f"-m pipelines {t.task_id}" in t.bash_command      # one task = one stage command
                assert "--params {{ params.params_file }}" in t.bash_command
            elif NOT_A_STAGE[t.task_id]:
                assert NOT_A_STAGE[t.task_id] in t.bash_command


def test_nightly_works_on_ds_only_and_decides_retraining_in_date_order(dagbag):
    dag = dagbag.dags["nightly_scoring"]
    for t in dag.tasks:
        if hasattr(t, "bash_command"):
            assert "--date {{ ds }}" in t.bash_command and "--start" not in t.bash_command, t.task_id
        assert t.on_failure_callback, t.task_id
    assert dag.get_task("retrain").depends_on_past
    assert not dag.get_task("score").depends_on_past          # dates score side by side
    assert dag.max_active_runs > 1
    sensor = dag.get_task("wait_for_data")
    assert sensor.mode == "reschedule" and sensor.retry_exit_code == 99 and sensor.timeout <= 24 * 3600
    trig = dag.get_task("trigger_training")
    assert trig.skip_when_already_exists and "run_id" in trig.trigger_run_id


def test_retrain_requested_reads_the_decision_record():
    import json
    from types import SimpleNamespace

    import fraudops_wiring

    training = {"dag_id": "training", "run_id": "retrain__2026-03-04", "conf": {"end_date": "2026-03-04"}}
    yes = SimpleNamespace(xcom_pull=lambda task_ids: json.dumps({"retrain": True, "training": training}))
    no = SimpleNamespace(xcom_pull=lambda task_ids: json.dumps({"retrain": False, "training": None}))
    assert fraudops_wiring.retrain_requested(yes) == training
    assert fraudops_wiring.retrain_requested(no) is False


def test_training_has_a_date_range_and_force_form(dagbag):
    params = dagbag.dags["training"].params
    assert {"start_date", "end_date", "force"} <= set(params.keys())
    assert params["force"] is False


def test_register_emits_the_model_asset_and_failures_record_alerts(dagbag):
    dag = dagbag.dags["training"]
    outlets = {t.task_id: [a.name for a in t.outlets] for t in dag.tasks}
    assert outlets["register"] == ["model"] and all(not v for k, v in outlets.items() if k != "register")
    for t in dag.tasks:
        assert t.on_failure_callback, t.task_id
    assert "--force" in dag.get_task("train").bash_command


def test_failure_callback_appends_an_alert_record(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    import fraudops_wiring

    monkeypatch.setenv("FRAUDOPS_HOME", str(tmp_path))
    ti = SimpleNamespace(dag_id="training", task_id="train", run_id="manual__1", try_number=3)
    fraudops_wiring.record_alert({"ti": ti, "exception": ValueError("features 2026-02-01: missing")})
    fraudops_wiring.record_alert({"ti": ti, "exception": None})
    lines = [json.loads(x) for x in fraudops_wiring.alerts_file().read_text().splitlines()]
    assert [r["task_id"] for r in lines] == ["train", "train"]
    assert lines[0]["error"] == "features 2026-02-01: missing" and lines[0]["try_number"] == 3


def test_each_dag_file_parses_in_under_a_second(dagbag):
    from airflow.dag_processing.dagbag import DagBag

    for f in sorted(DAGS.glob("*.py")):
        t = time.perf_counter()
        bag = DagBag(str(f))
        took = time.perf_counter() - t
        assert bag.import_errors == {} and took < 1.0, (f.name, took)


def test_dag_files_import_nothing_heavy():
    code = ("import sys; sys.path[:0] = ['plugins', 'dags']\n"
            "import runpy\n"
            "for f in sys.argv[1:]: runpy.run_path(f)\n"
            "heavy = [m for m in ('polars', 'pandas', 'xgboost', 'mlflow', 'great_expectations', 'pipelines', 'dvc') if m in sys.modules]\n"
            "print(heavy); sys.exit(1 if heavy else 0)")
    files = [str(f) for f in DAGS.glob("*.py")]
    r = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, cwd=DAGS.parent, timeout=120)
    assert r.returncode == 0, r.stdout[-500:] + r.stderr[-2000:]


def test_labels_dag_works_on_ds_labels_and_moves_models_in_date_order(dagbag):
    dag = dagbag.dags["labels"]
    for t in dag.tasks:
        assert "--date {{ ds }}" in t.bash_command and "--start" not in t.bash_command, t.task_id
        assert "--params {{ params.params_file }}" in t.bash_command
    for tid in ("wait_for_labels", "ingest_labels", "validate_labels"):
        assert "--dataset labels" in dag.get_task(tid).bash_command
    assert dag.get_task("lifecycle").depends_on_past and dag.max_active_runs > 1     # a late day does not block the rest
    sensor = dag.get_task("wait_for_labels")
    assert sensor.mode == "reschedule" and sensor.retry_exit_code == 99


@pytest.mark.parametrize("dag_id,action", [("promote", ' promote "$VERSION" '), ("rollback", " rollback ")])
def test_promote_and_rollback_need_confirm_and_keep_form_input_out_of_the_shell(dagbag, dag_id, action):
    dag = dagbag.dags[dag_id]
    assert type(dag.timetable).__name__ == "NullTimetable"                  # manual only: no schedule
    params = dag.params
    assert params["confirm"] is False and "reason" in params
    (task,) = dag.tasks
    assert "-m pipelines models" in task.bash_command and action in task.bash_command
    assert "{{" not in task.bash_command                                      # no template in the shell text
    assert task.env["CONFIRM"] == "{{ params.confirm }}" and task.env["REASON"] == "{{ params.reason }}"
    # the guard, run for real: unconfirmed -> exit 1, nothing called; a hostile reason stays a string
    env = {"CONFIRM": "False", "REASON": "x; touch /tmp/pwned", "VERSION": "1", "PARAMS_FILE": "params.yaml",
           "PATH": "/usr/bin:/bin"}
    r = subprocess.run(["bash", "-c", task.bash_command], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not confirmed" in r.stderr and "nothing changed" in r.stderr
    # confirmed: the models CLI parses the command line and gets as far as the params file
    r = subprocess.run(["bash", "-c", task.bash_command], env={**env, "CONFIRM": "True", "PARAMS_FILE": "/nonexistent.yaml"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "ERROR models:" in r.stderr and "/nonexistent.yaml" in r.stderr, r.stderr
