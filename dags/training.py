"""training: ingest -> validate -> features -> train -> evaluate -> register -> push, over a date range.

Wiring only. Each task is the DVC stage of the same name, run by DVC (`dvc repro --single-item
<stage>`) in a DVC workspace of this DAG run's own: a git worktree of the deployed commit under the
state folder, whose params.yaml is the run's params file with the form's dates, sharing the
project's DVC cache and remotes (pipelines/ops/workspace.py; the task runs `python -m pipelines
workspace repro ...` as an argument vector, no shell). A stage whose code, params and inputs DVC has
seen before is restored from its run-cache, not run again (the task log says so). `register` tags
the model with that workspace's dvc.lock and logs the lock and params to its MLflow run; `push`
sends the run's outputs to the DVC remote and removes the workspace. Two runs go side by side (each
in its own workspace and training folder); `register` runs one at a time across them. Nothing heavy is imported here
and nothing is read at parse time. Trigger it from the UI (Params form) or the REST API with conf
{"start_date": "YYYY-MM-DD", "end_date": "YYYY-MM-DD", "force": false, "params_file": "params.yaml",
"reason": "..."}; empty dates mean run.start_date / run.end_date from the params file; force
retrains (the train stage runs even when DVC's cache holds it). Every form value is checked (JSON
schema when the run is created, again before a task runs) and reaches the command as one argument,
never as shell text. The nightly DAG triggers it (run id retrain__<ds>) when drift calls for a
retrain, with the reason and the data window. A successful registration emits the Asset `model`
(other DAGs can be scheduled on it); a failed task records an alert (see plugins/fraudops_wiring.py).
"""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from fraudops_wiring import (DATE_PATTERN, MODEL_ASSET, DvcStageOperator, default_args,  # plugins/ is on sys.path
                             params_file_param)

RANGE = {"start_date": "--start", "end_date": "--end"}
DATES = tuple(RANGE)


def stage(task_id: str, **kwargs) -> DvcStageOperator:
    return DvcStageOperator(task_id=task_id, stage=task_id, options=RANGE, dates=DATES, **kwargs)


with DAG(
    dag_id="training",
    description="ingest -> validate (GX) -> features -> train (XGBoost) -> evaluate -> register (MLflow gate)",
    schedule=None,
    catchup=False,
    max_active_runs=2,          # two experiments at once: each has its own DVC workspace and training folder
    default_args=default_args(),
    params={
        "start_date": Param(None, type=["null", "string"], format="date", pattern=DATE_PATTERN, title="First date",
                            description="YYYY-MM-DD; empty = run.start_date in params.yaml"),
        "end_date": Param(None, type=["null", "string"], format="date", pattern=DATE_PATTERN, title="Last date",
                          description="YYYY-MM-DD; empty = run.end_date in params.yaml"),
        "force": Param(False, type="boolean", title="Force retraining",
                       description="retrain even if this range already has a model from the same inputs"),
        "params_file": params_file_param(),
        "reason": Param("manual", type="string", maxLength=2000, title="Why this training",
                        description="recorded with the run; drift-triggered runs say which days drifted"),
    },
    tags=["fraudops", "training"],
    doc_md=__doc__,
) as dag:
    ingest = stage("ingest")
    validate = stage("validate")
    features = stage("features", execution_timeout=timedelta(hours=2))
    train = stage("train", flags={"force": "--force"}, execution_timeout=timedelta(hours=4))
    evaluate = stage("evaluate")
    # one registration at a time across runs: a second registration of the same model bytes finds the
    # first's version instead of making another, and alias moves never interleave
    register = stage("register", outlets=[MODEL_ASSET], max_active_tis_per_dag=1)
    push = DvcStageOperator(task_id="push", stage="push")
    ingest >> validate >> features >> train >> evaluate >> register >> push

if __name__ == "__main__":
    dag.test()
