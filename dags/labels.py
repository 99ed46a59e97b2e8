"""labels: wait_for_labels -> ingest_labels -> validate_labels -> feedback -> lifecycle, for the
logical date `ds` = the day the labels landed.

Wiring only; every task runs `python -m pipelines <stage> --date {{ ds }}`. The labels landing on
ds belong to the predictions of ds - datasets.labels.delay_days: `feedback` joins them (with the
reviewers' verdicts and the challenger's shadow scores) and writes the realized metrics per model
version and the shadow comparison; `lifecycle` then rolls the champion back when its realized
error rate is over 2x its evaluation baseline, and promotes (mode auto) or retires the challenger
after its shadow days. `lifecycle` runs with depends_on_past: label dates decide in order (a date whose labels never land
fails its sensor and holds the later decisions until someone looks: clear or mark it).
A partition that fails its expectation suite (expectations/labels.json) stops the run there:
blocked labels are never fed back.

Schedule: daily at 00:00 UTC for the day before. FRAUDOPS_LABELS_CATCHUP=true lets the scheduler
catch up; backfill as for nightly_scoring. Conf: {"params_file": "params.yaml"}.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.sensors.bash import BashSensor
from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from fraudops_wiring import PARAMS_FILE, default_args, stage_command  # plugins/ on sys.path

DS = PARAMS_FILE + " --date {{ ds }}"
LABELS = DS + " --dataset labels"
NOT_LANDED = 99      # pipelines.ingest.NOT_LANDED

with DAG(
    dag_id="labels",
    description="labels that landed on ds -> validated -> joined to their predictions -> realized metrics -> rollback/promotion",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 8, tzinfo=timezone.utc),
    catchup=os.environ.get("FRAUDOPS_LABELS_CATCHUP", "false").lower() == "true",
    max_active_runs=3,          # a day whose labels are late holds a run (its sensor): others may still go
    default_args=default_args(),
    params={"params_file": Param("params.yaml", type="string", title="Params file",
                                 description="relative to the project root (or absolute)")},
    tags=["fraudops", "labels"],
    doc_md=__doc__,
) as dag:
    wait = BashSensor(task_id="wait_for_labels", bash_command=stage_command("ingest", LABELS + " --check"),
                      retry_exit_code=NOT_LANDED, mode="reschedule", poke_interval=600,
                      timeout=timedelta(hours=20).total_seconds())
    ingest = BashOperator(task_id="ingest_labels", bash_command=stage_command("ingest", LABELS))
    validate = BashOperator(task_id="validate_labels", bash_command=stage_command("validate", LABELS))
    feedback = BashOperator(task_id="feedback", bash_command=stage_command("feedback", DS))
    lifecycle = BashOperator(task_id="lifecycle", bash_command=stage_command("lifecycle", DS),
                             depends_on_past=True)      # moves are idempotent: a retry never moves twice
    wait >> ingest >> validate >> feedback >> lifecycle
