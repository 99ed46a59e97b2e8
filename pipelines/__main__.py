"""`python -m pipelines <command> ...`: the single entry point for dvc.yaml, Airflow and people."""
from __future__ import annotations

import importlib
import os
import sys

# command -> (module, what it does, the services it needs before anything runs: registry | registry?
# (optional: scoring has a cached-model fallback)); the object store is checked once params.yaml
# says where the lake is (core.cli.resolve), the Airflow api-server by the airflow command itself
COMMANDS = {
    "stack": ("pipelines.ops.stack", "the local stack: up | down | status | env | supervise", ()),
    "demo": ("pipelines.ops.demo", "the main job on Airflow: stack up, demo data, training DAG, nights, label days, audit", ()),
    "demo-data": ("pipelines.ops.demo_data", "write simulated raw transactions and labels", ()),
    "ingest": ("pipelines.ingest", "raw partition(s) -> canonical partition(s) + rejects", ()),
    "validate": ("pipelines.validate", "Great Expectations on canonical partition(s): validated + quarantine", ()),
    "expectations": ("pipelines.ops.expectations", "expectation suites: suggest from reference data", ()),
    "features": ("pipelines.features", "point-in-time features from validated partitions", ()),
    "shards": ("pipelines.core.shards", "the shard tasks of a nightly date (params shards.count), as JSON argument vectors",
               ()),
    "train": ("pipelines.train", "XGBoost on a time-based split (search + early stopping on validation)", ()),
    "evaluate": ("pipelines.evaluate", "test-window metrics, baseline, plots, reference profile, report", ()),
    "register": ("pipelines.register", "MLflow run + model version, champion gate, aliases", ("registry",)),
    "score": ("pipelines.score", "the champion scores one date's features (flagged fallbacks: cache, rules, defaults)",
              ("registry?",)),
    "decide": ("pipelines.decide", "scores -> approve/review/block with reasons; review queue; human overrides", ()),
    "monitor": ("pipelines.monitor", "drift, quality, decisions, fallbacks vs the reference; report; alerts", ()),
    "retrain": ("pipelines.retrain", "drift-triggered retraining decision (N of M days, cooldown, budget)", ()),
    "shadow": ("pipelines.shadow", "the challenger scores the same partition next to the champion (never decides)",
               ("registry?",)),
    "feedback": ("pipelines.feedback", "labels landed on D joined to the predictions of D - delay: realized metrics, "
                                       "shadow comparison", ()),
    "lifecycle": ("pipelines.lifecycle", "after the labels: automatic rollback, challenger promotion or retirement",
                  ("registry",)),
    "nightly": ("pipelines.ops.nightly", "the nightly chain for a date range in one process (no scheduler)",
                ("registry?",)),
    "models": ("pipelines.ops.models", "the registry: list | history | promote | rollback | lineage", ("registry",)),
    "audit": ("pipelines.ops.audit", "cross-check the lake's records, the registry and Airflow's runs for dates",
              ("registry",)),
    "airflow": ("pipelines.ops.airflow_api", "trigger a DAG run through the REST API (and wait)", ()),
    "lineage": ("pipelines.ops.trace", "follow one prediction row: decision -> score -> model -> MLflow run -> Airflow runs -> DVC lock -> inputs -> code", ("registry",)),
    "workspace": ("pipelines.ops.workspace", "the training DAG's DVC workspace of a run: repro one stage | push | path | prune", ()),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        prog = "fraudops" if os.path.basename(sys.argv[0]) == "fraudops" else "python -m pipelines"
        print(f"usage: {prog} <command> [options]   ({prog} <command> --help for its options)\n\ncommands:")
        for name, (_, doc, _needs) in COMMANDS.items():
            print(f"  {name:14s} {doc}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from pipelines.core import services
    from pipelines.core.state import load_env_file

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
        from pipelines.core.cli import EXIT_BLOCKED, DataBlocked

        line = services.explain(exc, command)
        if line is None and (type(exc).__module__.startswith("pipelines.") or isinstance(exc, ValueError)):
            line = str(exc)
        if line is None:
            raise
        print(f"ERROR {command}: {line}", file=sys.stderr)
        return EXIT_BLOCKED if isinstance(exc, DataBlocked) else 1


if __name__ == "__main__":
    sys.exit(main())
