"""`python -m pipelines <command> ...`: the single entry point for dvc.yaml, Airflow and people."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "stack": ("pipelines.stack", "the local stack: up | down | status | env"),
    "demo": ("pipelines.demo", "the main job: stack up, demo data, dvc repro, summary"),
    "demo-data": ("pipelines.demo_data", "write simulated raw transactions and labels"),
    "ingest": ("pipelines.ingest", "raw partition(s) -> canonical partition(s) + rejects"),
    "validate": ("pipelines.validate", "Great Expectations on canonical partition(s): validated + quarantine"),
    "expectations": ("pipelines.expectations", "expectation suites: suggest from reference data"),
    "features": ("pipelines.features", "point-in-time features from validated partitions"),
    "train": ("pipelines.train", "XGBoost on a time-based split (search + early stopping on validation)"),
    "evaluate": ("pipelines.evaluate", "test-window metrics, baseline, plots, reference profile, report"),
    "register": ("pipelines.register", "MLflow run + model version, champion gate, aliases"),
    "score": ("pipelines.score", "the champion scores one date's features (flagged fallbacks: cache, rules, defaults)"),
    "decide": ("pipelines.decide", "scores -> approve/review/block with reasons; review queue; human overrides"),
    "monitor": ("pipelines.monitor", "drift, quality, decisions, fallbacks vs the reference; report; alerts"),
    "retrain": ("pipelines.retrain", "drift-triggered retraining decision (N of M days, cooldown, budget)"),
    "shadow": ("pipelines.shadow", "the challenger scores the same partition next to the champion (never decides)"),
    "feedback": ("pipelines.feedback", "labels landed on D joined to the predictions of D - delay: realized metrics, shadow comparison"),
    "lifecycle": ("pipelines.lifecycle", "after the labels: automatic rollback, challenger promotion or retirement"),
    "nightly": ("pipelines.nightly", "the nightly chain for a date range in one process (no scheduler)"),
    "models": ("pipelines.models", "the registry: list | history | promote | rollback | lineage"),
    "airflow": ("pipelines.airflow_api", "trigger a DAG run through the REST API (and wait)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m pipelines <command> [options]\n\ncommands:")
        for name, (_, doc) in COMMANDS.items():
            print(f"  {name:14s} {doc}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from pipelines.stack import load_env_file

    load_env_file()
    module = importlib.import_module(COMMANDS[argv[0]][0])
    try:
        return int(module.main(argv[1:]) or 0)
    except Exception as exc:
        # Expected failures (bad data, missing partitions, bad config) end in one clear message and
        # exit 1; anything else is a bug and keeps its traceback.
        if type(exc).__module__.startswith("pipelines.") or isinstance(exc, ValueError):
            print(f"ERROR {argv[0]}: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
