"""`python -m pipelines <command> ...`: the single entry point for dvc.yaml, Airflow and people."""
from __future__ import annotations

import importlib
import sys

# command -> (module, what it does, the services it needs: lake | registry | registry? (optional) | airflow)
COMMANDS = {
    "stack": ("pipelines.stack", "the local stack: up | down | status | env", ()),
    "demo": ("pipelines.demo", "the main job: stack up, demo data, dvc repro, summary", ()),
    "demo-data": ("pipelines.demo_data", "write simulated raw transactions and labels", ("lake",)),
    "ingest": ("pipelines.ingest", "raw partition(s) -> canonical partition(s) + rejects", ("lake",)),
    "validate": ("pipelines.validate", "Great Expectations on canonical partition(s): validated + quarantine", ("lake",)),
    "expectations": ("pipelines.expectations", "expectation suites: suggest from reference data", ("lake",)),
    "features": ("pipelines.features", "point-in-time features from validated partitions", ("lake",)),
    "train": ("pipelines.train", "XGBoost on a time-based split (search + early stopping on validation)", ("lake",)),
    "evaluate": ("pipelines.evaluate", "test-window metrics, baseline, plots, reference profile, report", ("lake",)),
    "register": ("pipelines.register", "MLflow run + model version, champion gate, aliases", ("lake", "registry")),
    "score": ("pipelines.score", "the champion scores one date's features (flagged fallbacks: cache, rules, defaults)",
              ("lake", "registry?")),
    "decide": ("pipelines.decide", "scores -> approve/review/block with reasons; review queue; human overrides", ("lake",)),
    "monitor": ("pipelines.monitor", "drift, quality, decisions, fallbacks vs the reference; report; alerts", ("lake",)),
    "retrain": ("pipelines.retrain", "drift-triggered retraining decision (N of M days, cooldown, budget)", ("lake",)),
    "shadow": ("pipelines.shadow", "the challenger scores the same partition next to the champion (never decides)",
               ("lake", "registry?")),
    "feedback": ("pipelines.feedback", "labels landed on D joined to the predictions of D - delay: realized metrics, "
                                       "shadow comparison", ("lake",)),
    "lifecycle": ("pipelines.lifecycle", "after the labels: automatic rollback, challenger promotion or retirement",
                  ("lake", "registry")),
    "nightly": ("pipelines.nightly", "the nightly chain for a date range in one process (no scheduler)",
                ("lake", "registry?")),
    "models": ("pipelines.models", "the registry: list | history | promote | rollback | lineage", ("registry",)),
    "airflow": ("pipelines.airflow_api", "trigger a DAG run through the REST API (and wait)", ("airflow",)),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m pipelines <command> [options]\n\ncommands:")
        for name, (_, doc, _needs) in COMMANDS.items():
            print(f"  {name:14s} {doc}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from pipelines import services
    from pipelines.stack import load_env_file

    load_env_file()
    command = argv[0]
    module_name, _, needs = COMMANDS[command]
    try:
        if not any(a in ("-h", "--help") for a in argv[1:]):
            services.preflight(needs)
        module = importlib.import_module(module_name)
        return int(module.main(argv[1:]) or 0)
    except Exception as exc:
        # Expected failures (bad data, missing partitions, bad config, a service that does not answer)
        # end in one clear message and exit 1; anything else is a bug and keeps its traceback.
        line = services.explain(exc, command)
        if line is None and (type(exc).__module__.startswith("pipelines.") or isinstance(exc, ValueError)):
            line = str(exc)
        if line is None:
            raise
        print(f"ERROR {command}: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
