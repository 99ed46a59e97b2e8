"""DAG files: no import errors, the expected task graph, fast parsing, nothing heavy at parse time."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
EXPECTED = {"training": {"ingest": {"validate"}, "validate": {"features"}, "features": {"train"}, "train": {"evaluate"},
                         "evaluate": {"register"}, "register": {"push"}, "push": set()},
            "nightly_scoring": {"wait_for_data": {"ingest", "wait_for_lifecycle", "wait_for_previous_night",
                                                  "wait_for_last_training", "shard_plan"},
                                "wait_for_lifecycle": {"score", "score_shard"}, "wait_for_previous_night": {"decide"},
                                "wait_for_last_training": {"shadow", "retrain"},
                                "ingest": {"validate"}, "validate": {"features", "features_shard"},
                                "shard_plan": {"features_shard", "score_shard", "monitor_shard"},
                                "features_shard": {"features"}, "score_shard": {"score"}, "monitor_shard": {"monitor"},
                                "features": {"score", "score_shard"}, "score": {"decide", "shadow"}, "shadow": set(),
                                "decide": {"monitor", "monitor_shard"}, "monitor": {"retrain"}, "retrain": {"should_retrain"},
                                "should_retrain": {"trigger_training"}, "trigger_training": set()},
            "labels": {"wait_for_labels": {"ingest_labels", "wait_for_last_night"}, "wait_for_last_night": {"feedback"},
                       "ingest_labels": {"validate_labels"},
                       "validate_labels": {"feedback"}, "feedback": {"lifecycle"}, "lifecycle": set()}}
# tasks that wire stages together rather than run one: (task, what its command must contain or None)
NOT_A_STAGE = {"wait_for_data": "ingest", "should_retrain": None, "trigger_training": None,
               "wait_for_lifecycle": None, "wait_for_previous_night": None, "wait_for_last_night": None,
               "wait_for_last_training": None, "shard_plan": "shards",
               "wait_for_labels": "ingest", "ingest_labels": "ingest", "validate_labels": "validate"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def _ctx(**params):
    return {"params": {"params_file": "params.yaml", **params}, "ds": "2026-03-01",
            "run_id": "manual__2026-03-01T00:00:00+00:00"}


def test_task_graphs(dagbag):
    for dag_id, edges in EXPECTED.items():
        dag = dagbag.dags[dag_id]
        assert {t.task_id: set(t.downstream_task_ids) for t in dag.tasks} == edges
        for t in dag.tasks:
            assert t.retries >= 1 and t.retry_exponential_backoff
            if dag_id == "training":        # one task = one DVC stage, in the run's own workspace
                argv = t.argv(_ctx())
                run = "--run-id=manual__2026-03-01T00:00:00+00:00"
                if t.task_id == "push":
                    assert argv[1:] == ["-m", "pipelines", "workspace", "push", run], argv
                else:
                    assert argv[1:8] == ["-m", "pipelines", "workspace", "repro", run, f"--stage={t.task_id}",
                                         f"--params={REPO / 'params.yaml'}"], argv
            elif t.task_id.endswith("_shard"):                          # mapped over the shard plan
                assert t.partial_kwargs["stage"] == t.task_id.removesuffix("_shard") and t.partial_kwargs["date"]
                assert set(t.expand_input.value) == {"args"}
            elif t.task_id not in NOT_A_STAGE:
                argv = t.argv(_ctx())                                     # one task = one stage command
                assert argv[1:4] == ["-m", "pipelines", t.task_id], argv
                assert argv[4] == f"--params={REPO / 'params.yaml'}"
            elif NOT_A_STAGE[t.task_id]:
                assert t.stage == NOT_A_STAGE[t.task_id]


def test_trainings_run_side_by_side_and_register_one_at_a_time(dagbag):
    dag = dagbag.dags["training"]
    assert dag.max_active_runs >= 2
    assert dag.get_task("register").max_active_tis_per_dag == 1
    assert all(t.max_active_tis_per_dag is None for t in dag.tasks if t.task_id != "register")


def test_nightly_works_on_ds_only_and_decides_retraining_in_date_order(dagbag):
    dag = dagbag.dags["nightly_scoring"]
    for t in dag.tasks:
        if hasattr(t, "argv"):
            argv = t.argv(_ctx())
            assert "--date=2026-03-01" in argv and not any(a.startswith("--start") for a in argv), t.task_id
        assert t.on_failure_callback, t.task_id
    assert dag.get_task("retrain").depends_on_past
    assert not dag.get_task("score").depends_on_past          # dates score side by side
    assert dag.max_active_runs > 1
    sensor = dag.get_task("wait_for_data")
    assert sensor.mode == "reschedule" and sensor.timeout <= 24 * 3600 and sensor.stage == "ingest"
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
    assert "--force" in dag.get_task("train").argv(_ctx(force=True))
    assert "--force" not in dag.get_task("train").argv(_ctx(force=False))
    argv = dag.get_task("features").argv(_ctx(start_date="2026-02-01", end_date="2026-02-03"))
    assert argv[-2:] == ["--start=2026-02-01", "--end=2026-02-03"]


def test_a_hostile_run_id_is_one_argument_and_a_plain_folder_name(dagbag):
    from pipelines.ops import workspace

    run_id = "manual__x; touch pwned $(id) ../../etc"
    argv = dagbag.dags["training"].get_task("train").argv({**_ctx(), "run_id": run_id})
    assert f"--run-id={run_id}" in argv                                   # never parsed, never a shell's
    folder = workspace.path_for(run_id)
    assert folder.parent == workspace.path_for("other").parent and "/" not in folder.name
    assert folder.name.startswith("manual__x_touch_pwned_id_etc-") and folder != workspace.path_for(run_id + " ")


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
        if hasattr(t, "argv"):
            argv = t.argv(_ctx())
            assert "--date=2026-03-01" in argv and not any(a.startswith("--start") for a in argv), t.task_id
    for tid in ("ingest_labels", "validate_labels"):
        assert "--dataset=labels" in dag.get_task(tid).argv(_ctx())
    assert dag.get_task("wait_for_labels").args == ("--dataset=labels",)
    assert dag.get_task("lifecycle").depends_on_past and dag.max_active_runs > 1     # a late day does not block the rest
    sensor = dag.get_task("wait_for_labels")
    assert sensor.mode == "reschedule" and sensor.stage == "ingest"


HOSTILE_FILES = ["params.yaml; touch pwned; exit 1 #", "$(touch pwned).yaml", "`touch pwned`.yaml", "../../etc/passwd",
                 "/etc/hosts", "params.yaml\nx.yaml", "nonexistent.yaml", "-h.yaml", ".state/secrets/x.yaml", "", None, 7,
                 "/etc/fraudops.yaml", f"{REPO}/.state/objects/fraudops-mlflow/python_env.yaml", f"{REPO}/.venv/x.yaml",
                 "data/validate/x.yaml"]


@pytest.mark.parametrize("value", HOSTILE_FILES)
def test_a_hostile_params_file_is_refused_before_anything_runs(dagbag, value):
    from airflow.sdk.exceptions import AirflowFailException

    for dag_id in ("training", "nightly_scoring", "labels"):
        task = next(t for t in dagbag.dags[dag_id].tasks if hasattr(t, "argv"))
        with pytest.raises(AirflowFailException, match="params_file .* refused.*nothing ran"):
            task.argv({"params": {"params_file": value}, "ds": "2026-03-01"})


def test_a_params_file_is_a_project_file_or_lives_under_the_state_params_folder(dagbag, tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    import fraudops_wiring

    monkeypatch.setenv("FRAUDOPS_HOME", str(tmp_path))
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "p.yaml").write_text("{}")
    (tmp_path / "objects").mkdir()
    (tmp_path / "objects" / "p.yaml").write_text("{}")
    assert fraudops_wiring.checked_params_file(str(tmp_path / "params" / "p.yaml")) == str(tmp_path / "params" / "p.yaml")
    assert fraudops_wiring.checked_params_file("params.yaml") == str(REPO / "params.yaml")
    with pytest.raises(AirflowFailException, match="refused: not a file of the project"):
        fraudops_wiring.checked_params_file(str(tmp_path / "objects" / "p.yaml"))
    with pytest.raises(AirflowFailException, match="trigger it with a logical date"):
        dagbag.dags["nightly_scoring"].get_task("score").argv({"params": {"params_file": "params.yaml"}, "ds": None})


@pytest.mark.parametrize("value", ["2026-02-01; touch pwned", "2026-02-01 --snapshot=/etc", "$(id)", "--force"])
def test_a_hostile_date_is_refused(dagbag, value):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="start_date .* refused"):
        dagbag.dags["training"].get_task("ingest").argv(_ctx(start_date=value))


def test_the_form_schema_refuses_hostile_values_when_the_run_is_created(dagbag):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    for dag_id, bad in (("training", {"params_file": "params.yaml; touch pwned"}),
                        ("training", {"start_date": "2026-01-01; touch pwned"}),
                        ("nightly_scoring", {"params_file": "x.yaml`id`"}),
                        ("promote", {"version": "1; touch pwned"})):
        params = ParamsDict(dagbag.dags[dag_id].params)
        for k, v in bad.items():
            with pytest.raises(ParamValidationError, match=f"param {k}"):
                params[k] = v


@pytest.mark.parametrize("dag_id", ["promote", "rollback"])
def test_promote_and_rollback_need_confirm_and_keep_form_input_out_of_the_shell(dagbag, dag_id, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    dag = dagbag.dags[dag_id]
    assert type(dag.timetable).__name__ == "NullTimetable"                  # manual only: no schedule
    params = dag.params
    assert params["confirm"] is False and "reason" in params
    (task,) = dag.tasks
    hostile = 'x"; touch pwned; echo "$(touch pwned2)`touch pwned3`'
    with pytest.raises(AirflowFailException, match="not confirmed.*nothing changed"):
        task.argv(_ctx(confirm=False, reason=hostile, version="1"))
    argv = task.argv(_ctx(confirm=True, reason=hostile, version="1"))
    assert argv[3] == "models" and argv[-1] == f"--reason={hostile}"           # one argument, never parsed
    assert argv[-3:-1] == (["promote", "1"] if dag_id == "promote" else [argv[-3], "rollback"])[-2:]
    if dag_id == "promote":
        with pytest.raises(AirflowFailException, match="version .* refused"):
            task.argv(_ctx(confirm=True, reason="r", version="1 --dry-run"))
    # run for real (no stack here): the command fails on its own terms; nothing the reason says ran
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "FRAUDOPS_HOME": str(tmp_path)})
    assert r.returncode == 1 and "ERROR models:" in r.stderr, r.stderr
    assert not any(tmp_path.glob("pwned*")) and not any(REPO.glob("pwned*"))


def test_release_hold_needs_confirm_and_keeps_form_input_out_of_the_shell(dagbag):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import AirflowFailException, ParamValidationError

    dag = dagbag.dags["release_hold"]
    assert type(dag.timetable).__name__ == "NullTimetable"
    (task,) = dag.tasks
    hostile = 'x"; touch pwned; echo "$(touch pwned2)'
    with pytest.raises(AirflowFailException, match="not confirmed.*nothing changed"):
        task.argv(_ctx(confirm=False, reason=hostile, date="2026-03-01", action="release"))
    argv = task.argv(_ctx(confirm=True, reason=hostile, date="2026-03-01", action="reject"))
    assert argv[3] == "decide" and argv[-4:] == ["release", "--date=2026-03-01", "--action=reject", f"--reason={hostile}"]
    for bad in ({"date": "2026-03-01; touch pwned"}, {"action": "release; touch pwned"}):
        with pytest.raises(AirflowFailException, match="refused"):
            task.argv(_ctx(confirm=True, reason="r", **{"date": "2026-03-01", "action": "release", **bad}))
    params = ParamsDict(dag.params)
    for k, v in (("date", "2026-03-01`id`"), ("action", "approve_all")):
        with pytest.raises(ParamValidationError, match=f"param {k}"):
            params[k] = v


def test_the_nightly_dag_waits_for_the_transactions_only(dagbag):
    dag = dagbag.dags["nightly_scoring"]
    wait, ingest = dag.get_task("wait_for_data"), dag.get_task("ingest")
    assert wait.args == ("--dataset=transactions",)
    argv = ingest.argv(_ctx())
    assert argv[3] == "ingest" and argv[5:] == ["--date=2026-03-01", "--if-landed=labels"]


def test_gates_order_runs_without_blocking_on_a_failure(dagbag):
    """score waits for the labels run's lifecycle of ds, decide for the previous night's monitor, the
    labels' feedback for the previous night's shadow; a gate that times out is skipped and the stage
    still runs (trigger rule none_failed)."""
    dag = dagbag.dags["nightly_scoring"]
    for dag, gate, (other, task, days), stage in (
            (dag, "wait_for_lifecycle", ("labels", "lifecycle", 0), "score"),
            (dag, "wait_for_previous_night", ("nightly_scoring", "monitor", 1), "decide"),
            (dag, "wait_for_last_training", ("nightly_scoring", "trigger_training", 1), "shadow"),
            (dag, "wait_for_last_training", ("nightly_scoring", "trigger_training", 1), "retrain"),
            (dagbag.dags["labels"], "wait_for_last_night", ("nightly_scoring", "shadow", 1), "feedback")):
        g = dag.get_task(gate)
        assert (g.other_dag, g.other_task, g.days) == (other, task, days)
        assert g.mode == "reschedule" and g.soft_fail and g.timeout <= 2 * 3600
        assert g.poke_interval >= 30                               # no short reschedule (see SettledSensor)
        # a try polls up to 2 min, the training gate through a whole training (it ends within a second of it)
        assert g.window <= 120 if gate != "wait_for_last_training" else g.window >= 600
        assert dag.get_task(stage).trigger_rule == "none_failed"


def test_settled_sensor_poke():
    import datetime as dt
    from types import SimpleNamespace

    import fraudops_wiring

    asked = []

    def ctx(runs):
        def states(dag_id, task_ids, logical_dates):
            asked.append((dag_id, task_ids, logical_dates))
            return runs
        return {"logical_date": dt.datetime(2026, 3, 10, tzinfo=dt.timezone.utc),
                "ti": SimpleNamespace(get_task_states=states)}

    s = fraudops_wiring.SettledSensor(task_id="g", other_dag="nightly_scoring", other_task="monitor", days=1,
                                      window=0.3, every=0.1)
    assert s.poke(ctx({}))                                                  # no run: nothing to wait for
    assert asked[-1] == ("nightly_scoring", ["monitor"], [dt.datetime(2026, 3, 9, tzinfo=dt.timezone.utc)])
    assert not s.poke(ctx({"r": {"monitor": None}}))                        # created, not run yet
    assert not s.poke(ctx({"r": {"monitor": "running"}}))
    assert not s.poke(ctx({"r": {"monitor": "up_for_retry"}}))
    for state in ("success", "failed", "upstream_failed", "skipped"):      # ended, whatever the outcome
        assert s.poke(ctx({"r": {"monitor": state}}))
    answers = iter([{"r": {"monitor": "running"}}, {"r": {"monitor": "success"}}])   # ends within the window
    c = ctx({})
    c["ti"] = SimpleNamespace(get_task_states=lambda **kw: next(answers))
    assert s.poke(c)


def test_the_last_training_gate_waits_for_the_run_the_last_night_triggered():
    import datetime as dt
    from types import SimpleNamespace

    import fraudops_wiring

    g = fraudops_wiring.TrainingSettledSensor(task_id="g", window=0.3, every=0.1)

    def ctx(trigger_state, pushed, run_state=None):
        def states(dag_id, task_ids, logical_dates):
            assert (dag_id, task_ids) == ("nightly_scoring", ["trigger_training"])
            assert logical_dates == [dt.datetime(2026, 3, 13, tzinfo=dt.timezone.utc)]
            return {"demo__2026-03-13": {"trigger_training": trigger_state}} if trigger_state else {}

        def xcom(task_ids, dag_id, run_id):
            assert (task_ids, dag_id, run_id) == ("should_retrain", "nightly_scoring", "demo__2026-03-13")
            return pushed

        def dagrun_state(dag_id, run_id):
            assert (dag_id, run_id) == ("training", "retrain__2026-03-13")
            if run_state is None:
                raise RuntimeError("404: dag run not found")
            return run_state
        return {"logical_date": dt.datetime(2026, 3, 14, tzinfo=dt.timezone.utc),
                "ti": SimpleNamespace(get_task_states=states, xcom_pull=xcom, get_dagrun_state=dagrun_state)}

    run = {"dag_id": "training", "run_id": "retrain__2026-03-13", "conf": {}}
    assert g.poke(ctx(None, None))                                   # no night before: nothing to wait for
    assert g.poke(ctx("skipped", False))                             # no retrain called for
    assert g.poke(ctx("upstream_failed", None))                      # the night failed: go on
    assert not g.poke(ctx("running", None))                          # the decision is not final yet
    assert not g.poke(ctx("success", run, "queued"))
    assert not g.poke(ctx("success", run, "running"))                # the training runs: wait
    assert g.poke(ctx("success", run, "success")) and g.poke(ctx("success", run, "failed"))
    assert not g.poke(ctx("skipped", run, "running"))               # a re-run whose trigger found the run: wait
    assert g.poke(ctx("skipped", run, "success"))
    assert g.poke(ctx("success", run, None))                         # the run is gone: nothing to wait for


def test_the_shard_plan_maps_only_checked_shard_arguments(dagbag, monkeypatch):
    """The shard tasks are mapped over `python -m pipelines shards` output: a JSON list of
    ["--shard=K/N"]; anything else fails the plan (no text from it reaches a command unchecked)."""
    import fraudops_wiring
    from airflow.exceptions import AirflowFailException

    plan = dagbag.dags["nightly_scoring"].get_task("shard_plan")
    assert plan.argv(_ctx())[1:4] == ["-m", "pipelines", "shards"] and "--date=2026-03-01" in plan.argv(_ctx())
    for out, ok in (('log line\n[["--shard=0/3"], ["--shard=1/3"], ["--shard=2/3"]]', True), ("[]", True),
                    ('[["--shard=0/3", "--recompute"]]', False), ('[["--shard=0/3;id"]]', False),
                    ('[["--shard=0/3"], ["--shard=0/3"], ["--shard=2/3"]]', False), ('[["--shard=0/2"]]', False),
                    ('[["--shard=0/1"]]', False), ('[["--shard=\u0661/2"], ["--shard=1/2"]]', False),
                    ('[["--params=/etc/x.yaml"]]', False), ("not json", False), ('{"a": 1}', False)):
        monkeypatch.setattr(fraudops_wiring.StageOperator, "execute", lambda self, context, out=out: out)
        if ok:
            assert plan.execute({}) == json.loads(out.splitlines()[-1])
        else:
            with pytest.raises(AirflowFailException):
                plan.execute({})
