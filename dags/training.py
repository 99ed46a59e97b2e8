"""training: ingest -> validate -> features over a date range (later: train, evaluate, register).

Wiring only. Each task runs the command of the DVC stage of the same name,
`python -m pipelines <stage>`, in the project root; nothing heavy is imported here and nothing is
read at parse time. Trigger it from the UI (Params form) or the REST API with
conf {"start_date": "YYYY-MM-DD", "end_date": "YYYY-MM-DD"}; empty dates mean run.start_date /
run.end_date from params.yaml.
"""
from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param

from fraudops_wiring import default_args, stage_command  # plugins/ is on sys.path

RANGE = "{% if params.start_date %} --start {{ params.start_date }}{% endif %}" \
        "{% if params.end_date %} --end {{ params.end_date }}{% endif %}"

with DAG(
    dag_id="training",
    description="ingest -> validate (GX, fail closed) -> point-in-time features, one task per DVC stage",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    params={
        "start_date": Param(None, type=["null", "string"], format="date", title="First date",
                            description="YYYY-MM-DD; empty = run.start_date in params.yaml"),
        "end_date": Param(None, type=["null", "string"], format="date", title="Last date",
                          description="YYYY-MM-DD; empty = run.end_date in params.yaml"),
    },
    tags=["fraudops", "training"],
    doc_md=__doc__,
) as dag:
    ingest = BashOperator(task_id="ingest", bash_command=stage_command("ingest", RANGE + " --with-lookback"))
    validate = BashOperator(task_id="validate", bash_command=stage_command("validate", RANGE + " --with-lookback"))
    features = BashOperator(task_id="features", bash_command=stage_command("features", RANGE),
                            execution_timeout=timedelta(hours=2))
    ingest >> validate >> features
