"""Airflow DAG rollback: champion <- the champion before it, on demand (the automatic rollback
lives in the `labels` DAG's `lifecycle` task).

Trigger from the UI with the Params form: confirm (must be ticked) and reason. The move is
`python -m pipelines models rollback --reason=...`, recorded in the alias history; the rolled-back
version is tagged `rolled_back`. Without confirm the run fails and nothing moves. The reason
reaches the command as an argument of its own, never as shell text.
"""
from __future__ import annotations

from fraudops_wiring import registry_dag  # plugins/ on sys.path

dag = registry_dag("rollback", "roll the champion back to the one it replaced (manual; confirm required)", __doc__,
                   "manual rollback")

if __name__ == "__main__":
    dag.test()
