"""Airflow DAG `labels`: wait_for_labels -> ingest_labels -> validate_labels -> feedback -> lifecycle, for the
logical date `ds` = the day the labels landed.

Wiring only; every task runs `python -m pipelines <stage> --date=<ds>` as an argument vector. The
labels landing on ds belong to the predictions of ds - datasets.labels.delay_days: `feedback`
joins them (with the reviewers' verdicts and the challenger's shadow scores) and writes the
realized metrics per model version and the shadow comparison; `lifecycle` then rolls the champion
back when its realized error rate is over 2x its evaluation baseline, and promotes (mode auto) or
retires the challenger after its shadow days. `lifecycle` runs with depends_on_past: label dates
decide in order (a date whose labels never land fails its sensor and holds the later decisions
until someone looks: clear or mark it). `wait_for_last_night` holds `feedback` (and so `lifecycle`)
until the nightly_scoring run of ds - 1 has scored with the champion and the challenger (its
`shadow` ended, in any state, or there is no such run): the labels are joined to finished
predictions, and no alias moves while a night is scoring (skipped past 2 h: the run goes on). A
partition that fails its expectation suite
(expectations/labels.json) stops the run there: blocked labels are never fed back.

Schedule: daily at 00:00 UTC for the day before. FRAUDOPS_LABELS_CATCHUP=true lets the scheduler
catch up; backfill as for nightly_scoring. Conf: {"params_file": "params.yaml"}.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fraudops_wiring import SettledSensor, StageOperator, StageSensor, daily_dag  # plugins/ on sys.path

LABELS = ("--dataset=labels",)

with daily_dag("labels", "labels that landed on ds -> validated -> joined to their predictions -> realized metrics "
               "-> rollback/promotion", datetime(2026, 1, 8, tzinfo=timezone.utc), "FRAUDOPS_LABELS_CATCHUP", __doc__,
               ["labels"]) as dag:
    wait = StageSensor(task_id="wait_for_labels", stage="ingest", args=LABELS, mode="reschedule", poke_interval=600,
                       timeout=timedelta(hours=20).total_seconds())
    ingest = StageOperator(task_id="ingest_labels", stage="ingest", date=True, args=LABELS)
    validate = StageOperator(task_id="validate_labels", stage="validate", date=True, args=LABELS)
    feedback = StageOperator(task_id="feedback", stage="feedback", date=True, trigger_rule="none_failed")
    last_night = SettledSensor(task_id="wait_for_last_night", other_dag="nightly_scoring", other_task="shadow", days=1,
                               timeout=timedelta(hours=2).total_seconds())
    lifecycle = StageOperator(task_id="lifecycle", stage="lifecycle", date=True,
                              depends_on_past=True)      # moves are idempotent: a retry never moves twice
    wait >> ingest >> validate >> feedback >> lifecycle
    wait >> last_night >> feedback

if __name__ == "__main__":
    dag.test()
