"""Airflow DAG `nightly_scoring`: wait_for_data -> ingest -> validate -> features -> score -> decide -> monitor ->
retrain (decision) -> should_retrain -> trigger_training, for the logical date `ds`; after score, in
parallel with decide, `shadow` (the challenger, when there is one, scores the same partition).

Two gates order the work across runs without making one run's failure block another (each waits
until the other task has ended in any state, or has no run: then there is nothing to wait for):
`wait_for_lifecycle` holds `score` until the `labels` run of ds has judged the labels landing on ds
(`lifecycle`: a rollback or promotion they call for applies to tonight's scores); while the early
tasks ingest, validate and build features. `wait_for_previous_night` holds `decide` until the run of
ds - 1 has monitored (decide's guardrails and monitor's rolling windows read the earlier days), so
dates that run side by side in a backfill still decide and monitor in date order. A third,
`wait_for_last_training`, holds `shadow` and `retrain` until the night before has made its retrain
decision final and the training it triggered (if any) has ended: the challenger that training
registers shadows from tonight, and tonight's retrain decision knows it is in shadow. Past their
timeout (2 h) they are skipped and the run goes on with what is there (the aliases as they are; the
earlier days present).

A date too large for one worker (params shards.count = N > 1): `shard_plan` (beside ingest) lists
the N shard tasks, and `features_shard`, `score_shard` and `monitor_shard` are mapped over that list
(dynamic task mapping: N task instances each, `--shard=k/N`, spread over the workers); each publishes
its own shard partition, and the stage's own task (features, score, monitor) merges them into the
date's partition, the same bytes as one task (pipelines/core/shards.py). With N = 1 the list is empty,
the mapped tasks are skipped and each stage task computes the date itself.

Wiring only: every stage task runs `python -m pipelines <stage> --date=<ds>` (the same command a
person or DVC runs) as an argument vector, on the ds partition alone; re-running a date republishes
the same bytes, and dates run side by side (max_active_runs) without sharing a partition. The
retrain decision runs with depends_on_past, so dates decide in order (cooldown and budget count
earlier decisions).

Schedule: daily at 00:00 UTC for the day before (ds = the interval's start). `wait_for_data` waits
(reschedule mode, up to 12 h) for the raw transactions partition to land, then fails with an alert;
`ingest` takes the labels landing on ds too when they are there (the `labels` DAG ingests them
when they land; the features of ds + 1 read them, and fail closed while they are missing). Backfill:
`airflow backfill create --dag-id nightly_scoring --from-date 2026-03-01 --to-date 2026-03-05`
(or the REST API / the UI). Set FRAUDOPS_NIGHTLY_CATCHUP=true to let the scheduler catch up by itself.
Conf: {"params_file": "params.yaml"} (checked: a .yaml file inside the project or its state folder).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

from fraudops_wiring import (SettledSensor, ShardPlan, StageOperator, StageSensor, TrainingSettledSensor,  # plugins/
                             daily_dag, retrain_requested)


TRANSACTIONS = ("--dataset=transactions",)


def stage(task_id: str, **kwargs) -> StageOperator:
    return StageOperator(task_id=task_id, stage=task_id, date=True, **kwargs)


def shards_of(name: str, plan: ShardPlan, **kwargs):
    """`python -m pipelines <name> --date=ds --shard=k/N`, one task instance per shard of the plan."""
    return StageOperator.partial(task_id=f"{name}_shard", stage=name, date=True, **kwargs).expand(args=plan.output)


with daily_dag("nightly_scoring", "score the day with the champion, decide, monitor drift, decide on retraining",
               datetime(2026, 1, 1, tzinfo=timezone.utc), "FRAUDOPS_NIGHTLY_CATCHUP", __doc__, ["nightly"]) as dag:
    wait = StageSensor(task_id="wait_for_data", stage="ingest", args=TRANSACTIONS, mode="reschedule",
                       poke_interval=300, timeout=timedelta(hours=12).total_seconds())
    ingest = stage("ingest", args=("--if-landed=labels",))     # the labels of ds only if they are there
    validate = stage("validate")
    # a skipped gate (timed out) or skipped shard tasks (one shard) let these go on; a failed upstream
    # stage still stops them
    features, score, decide, monitor = (stage(t, trigger_rule="none_failed") for t in ("features", "score", "decide",
                                                                                       "monitor"))
    plan = ShardPlan(task_id="shard_plan")
    features_shards = shards_of("features", plan)
    score_shards = shards_of("score", plan, trigger_rule="none_failed")
    monitor_shards = shards_of("monitor", plan)
    lifecycle = SettledSensor(task_id="wait_for_lifecycle", other_dag="labels", other_task="lifecycle",
                              timeout=timedelta(hours=2).total_seconds())
    previous = SettledSensor(task_id="wait_for_previous_night", other_dag="nightly_scoring", other_task="monitor", days=1,
                             timeout=timedelta(hours=2).total_seconds())
    training = TrainingSettledSensor(task_id="wait_for_last_training", timeout=timedelta(hours=2).total_seconds())
    shadow = stage("shadow", trigger_rule="none_failed")
    retrain = stage("retrain", depends_on_past=True, trigger_rule="none_failed")
    should = ShortCircuitOperator(task_id="should_retrain", python_callable=retrain_requested)
    trigger = TriggerDagRunOperator(
        task_id="trigger_training",
        trigger_dag_id="{{ ti.xcom_pull(task_ids='should_retrain')['dag_id'] }}",
        trigger_run_id="{{ ti.xcom_pull(task_ids='should_retrain')['run_id'] }}",
        conf="{{ ti.xcom_pull(task_ids='should_retrain')['conf'] | tojson }}",
        skip_when_already_exists=True,       # re-running a date never triggers a second training
    )
    wait >> ingest >> validate >> features >> score >> decide >> monitor >> retrain >> should >> trigger
    wait >> plan             # reads the params only: beside ingest and validate, it costs the night no time
    validate >> features_shards >> features
    features >> score_shards >> score
    decide >> monitor_shards >> monitor
    score >> shadow          # the challenger scores next to the champion; its scores never reach decide
    wait >> lifecycle >> [score_shards, score]
    wait >> previous >> decide
    wait >> training >> [shadow, retrain]

if __name__ == "__main__":
    dag.test()
