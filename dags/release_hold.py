"""Airflow DAG release_hold: a person releases or rejects a day the guardrails held.

When a day's health breaches params.yaml `guardrails` (validation warnings of a holding kind, input
drift above the hard limit on the model's top features, block rate or review volume far above the
trailing median, too many rows on a fallback), `decide` publishes every decision of that day as
`hold` and alerts. Trigger this DAG from the UI with: date, action (release: act on the proposed
decisions; reject: keep the day held), reason, and confirm (must be ticked). It runs
`python -m pipelines decide release --date=D --action=A --reason=R`, which records who, when, why
and this run in holds/date=D and re-decides the day. Form values are checked and reach the command
as arguments of their own, never as shell text. Re-run `monitor` for the date to refresh its page.
"""
from __future__ import annotations

from airflow.sdk import Param

from fraudops_wiring import DATE_PATTERN, ReleaseHoldOperator, manual_dag  # plugins/ on sys.path

dag = manual_dag(
    "release_hold", "release or reject a day held by the guardrails (confirm required)", __doc__, "checked by hand",
    lambda name: ReleaseHoldOperator(task_id=name),
    extra={"date": Param("2026-03-01", type="string", pattern=DATE_PATTERN, title="Held date",
                         description="the date whose decisions are held (YYYY-MM-DD)"),
           "action": Param("release", type="string", enum=["release", "reject"], title="Action",
                           description="release: act on the proposed decisions; reject: keep the day held")},
    tags=("decisions",))

if __name__ == "__main__":
    dag.test()
