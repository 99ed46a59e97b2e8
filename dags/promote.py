"""promote: champion <- a model version, by hand (promotion.mode: manual, or an override).

Trigger from the UI with the Params form: version, confirm (must be ticked), reason. The move is
`python -m pipelines models promote <version> --reason=...` (the same command a person runs): the
old champion keeps the alias `previous`, a challenger alias on the version is dropped, and every
move lands in the registry's alias history with the reason and the Airflow run that made it.
Without confirm the run fails and nothing moves. Form values are checked (the version is a
number) and reach the command as arguments of their own, never as shell text.
"""
from __future__ import annotations

from airflow.sdk import DAG, Param

from fraudops_wiring import (VERSION_PATTERN, ConfirmedModelsOperator, default_args,  # plugins/ on sys.path
                             params_file_param)

with DAG(
    dag_id="promote",
    description="promote a model version to champion (manual; confirm required)",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    default_args={**default_args(), "retries": 0},
    params={
        "version": Param("", type="string", pattern=VERSION_PATTERN, title="Model version",
                         description="the registered version to make champion (usually the challenger)"),
        "confirm": Param(False, type="boolean", title="Confirm", description="tick to really move the alias"),
        "reason": Param("manual promotion", type="string", minLength=1, maxLength=2000, title="Reason",
                        description="recorded in the alias history"),
        "params_file": params_file_param(),
    },
    tags=["fraudops", "registry"],
    doc_md=__doc__,
) as dag:
    ConfirmedModelsOperator(task_id="promote", action="promote")

if __name__ == "__main__":
    dag.test()
