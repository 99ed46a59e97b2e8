"""Airflow DAG promote: champion <- a model version, by hand (promotion.mode: manual, or an override).

Trigger from the UI with the Params form: version, confirm (must be ticked), reason. The move is
`python -m pipelines models promote <version> --reason=...` (the same command a person runs): the
old champion keeps the alias `previous`, a challenger alias on the version is dropped, and every
move lands in the registry's alias history with the reason and the Airflow run that made it.
Without confirm the run fails and nothing moves. Form values are checked (the version is a
number) and reach the command as arguments of their own, never as shell text.
"""
from __future__ import annotations

from airflow.sdk import Param

from fraudops_wiring import VERSION_PATTERN, registry_dag  # plugins/ on sys.path

dag = registry_dag(
    "promote", "promote a model version to champion (manual; confirm required)", __doc__, "manual promotion",
    extra={"version": Param("", type="string", pattern=VERSION_PATTERN, title="Model version",
                            description="the registered version to make champion (usually the challenger)")})

if __name__ == "__main__":
    dag.test()
