"""training: ingest -> validate -> features -> train -> evaluate -> register over a date range.

Wiring only. Each task runs the command of the DVC stage of the same name,
`python -m pipelines <stage>`, in the project root; nothing heavy is imported here and nothing is
read at parse time. Trigger it from the UI (Params form) or the REST API with
conf {"start_date": "YYYY-MM-DD", "end_date": "YYYY-MM-DD", "force": false, "params_file": "params.yaml",
"reason": "..."}; empty dates mean run.start_date / run.end_date from the params file; force retrains
even when the range already holds a model made from the same inputs. The nightly DAG triggers it
(run id retrain__<ds>) when drift calls for a retrain, with the reason and the data window. A successful registration emits the Asset `model` (other DAGs
can be scheduled on it); a failed task records an alert (see plugins/fraudops_wiring.py).
"""
from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param

from fraudops_wiring import MODEL_ASSET, PARAMS_FILE, default_args, stage_command  # plugins/ is on sys.path

RANGE = PARAMS_FILE + "{% if params.start_date %} --start {{ params.start_date }}{% endif %}" \
        "{% if params.end_date %} --end {{ params.end_date }}{% endif %}"

with DAG(
    dag_id="training",
    description="ingest -> validate (GX) -> features -> train (XGBoost) -> evaluate -> register (MLflow gate)",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    params={
        "start_date": Param(None, type=["null", "string"], format="date", title="First date",
                            description="YYYY-MM-DD; empty = run.start_date in params.yaml"),
        "end_date": Param(None, type=["null", "string"], format="date", title="Last date",
                          description="YYYY-MM-DD; empty = run.end_date in params.yaml"),
        "force": Param(False, type="boolean", title="Force retraining",
                       description="retrain even if this range already has a model from the same inputs"),
        "params_file": Param("params.yaml", type="string", title="Params file",
                             description="relative to the project root (or absolute)"),
        "reason": Param("manual", type="string", title="Why this training",
                        description="recorded with the run; drift-triggered runs say which days drifted"),
    },
    tags=["fraudops", "training"],
    doc_md=__doc__,
) as dag:
    ingest = BashOperator(task_id="ingest", bash_command=stage_command("ingest", RANGE + " --with-lookback"))
    validate = BashOperator(task_id="validate", bash_command=stage_command("validate", RANGE + " --with-lookback"))
    features = BashOperator(task_id="features", bash_command=stage_command("features", RANGE),
                            execution_timeout=timedelta(hours=2))
    train = BashOperator(task_id="train", bash_command=stage_command(
        "train", RANGE + "{% if params.force %} --force{% endif %}"), execution_timeout=timedelta(hours=4))
    evaluate = BashOperator(task_id="evaluate", bash_command=stage_command("evaluate", RANGE))
    register = BashOperator(task_id="register", bash_command=stage_command("register", RANGE), outlets=[MODEL_ASSET])
    ingest >> validate >> features >> train >> evaluate >> register
