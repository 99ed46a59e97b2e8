"""rollback: champion <- the champion before it, on demand (the automatic rollback lives in the
`labels` DAG's `lifecycle` task).

Trigger from the UI with the Params form: confirm (must be ticked) and reason. The move is
`python -m pipelines models rollback --reason=...`, recorded in the alias history; the rolled-back
version is tagged `rolled_back`. Without confirm the run fails and nothing moves. The reason
reaches the command as an argument of its own, never as shell text.
"""
from __future__ import annotations

from airflow.sdk import DAG, Param

from fraudops_wiring import ConfirmedModelsOperator, default_args, params_file_param  # plugins/ on sys.path

with DAG(
    dag_id="rollback",
    description="roll the champion back to the one it replaced (manual; confirm required)",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    default_args={**default_args(), "retries": 0},
    params={
        "confirm": Param(False, type="boolean", title="Confirm", description="tick to really move the alias"),
        "reason": Param("manual rollback", type="string", minLength=1, maxLength=2000, title="Reason",
                        description="recorded in the alias history"),
        "params_file": params_file_param(),
    },
    tags=["fraudops", "registry"],
    doc_md=__doc__,
) as dag:
    ConfirmedModelsOperator(task_id="rollback", action="rollback")

if __name__ == "__main__":
    dag.test()
