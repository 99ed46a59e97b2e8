"""training: ingest -> validate -> features -> train -> evaluate -> register over a date range.

Wiring only. Each task runs the command of the DVC stage of the same name,
`python -m pipelines <stage>`, in the project root, as an argument vector (no shell): nothing
heavy is imported here and nothing is read at parse time. Trigger it from the UI (Params form) or
the REST API with conf {"start_date": "YYYY-MM-DD", "end_date": "YYYY-MM-DD", "force": false,
"params_file": "params.yaml", "reason": "..."}; empty dates mean run.start_date / run.end_date
from the params file; force retrains even when the range already holds a model made from the same
inputs. Every form value is checked (JSON schema when the run is created, again before a task
runs) and reaches the command as one argument, never as shell text. The nightly DAG triggers it
(run id retrain__<ds>) when drift calls for a retrain, with the reason and the data window. A
successful registration emits the Asset `model` (other DAGs can be scheduled on it); a failed task
records an alert (see plugins/fraudops_wiring.py).
"""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from fraudops_wiring import (DATE_PATTERN, MODEL_ASSET, StageOperator, default_args,  # plugins/ is on sys.path
                             params_file_param)

RANGE = {"start_date": "--start", "end_date": "--end"}
DATES = tuple(RANGE)


def stage(task_id: str, *args: str, **kwargs) -> StageOperator:
    return StageOperator(task_id=task_id, stage=task_id, args=args, options=RANGE, dates=DATES, **kwargs)


with DAG(
    dag_id="training",
    description="ingest -> validate (GX) -> features -> train (XGBoost) -> evaluate -> register (MLflow gate)",
    schedule=None,
    catchup=False,
    max_active_runs=1,
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
    ingest = stage("ingest", "--with-lookback")
    validate = stage("validate", "--with-lookback")
    features = stage("features", execution_timeout=timedelta(hours=2))
    train = StageOperator(task_id="train", stage="train", options=RANGE, dates=DATES, flags={"force": "--force"},
                          execution_timeout=timedelta(hours=4))
    evaluate = stage("evaluate")
    register = stage("register", outlets=[MODEL_ASSET])
    ingest >> validate >> features >> train >> evaluate >> register

if __name__ == "__main__":
    dag.test()
