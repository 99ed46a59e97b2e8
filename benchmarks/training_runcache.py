"""Benchmark: the training DAG twice on the same code, params and data: the first run computes every
stage in its DVC workspace, the second (a new DAG run, a new workspace) restores each stage with a
DVC output from DVC's run-cache (issue 14). Prints both wall times (trigger to end, through the REST
API), their ratio, and each run's task durations.

    python benchmarks/training_runcache.py [--start 2026-01-20] [--end 2026-02-28]

Needs the local stack (`python -m pipelines stack up`) and the raw data of params.yaml
(`python -m pipelines demo-data`). The runs use params.yaml with a lake prefix and a model name of
their own (a new one each time: the first run is never a cache hit of an earlier benchmark).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--start", default="2026-01-20")
    ap.add_argument("--end", default="2026-02-28")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks import own_peak_mib
    import yaml

    from pipelines.core.state import ENV_FILE, load_env_file, state_dir
    from pipelines.ops.airflow_api import AirflowClient

    if not (state_dir() / ENV_FILE).exists():
        raise SystemExit(f"{state_dir() / ENV_FILE} missing: start the stack first")
    load_env_file()
    tag = uuid.uuid4().hex[:8]
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["storage"]["lake"] = f"s3://fraudops-lake/bench-runcache-{tag}"
    data["register"]["model_name"] = f"fraud-xgb-bench-{tag}"
    folder = state_dir() / "params" / f"bench-runcache-{tag}"
    folder.mkdir(parents=True)
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))
    client = AirflowClient()
    client.wait_for_dag("training")
    conf = {"start_date": args.start, "end_date": args.end, "force": False, "params_file": str(params_file)}
    took, tasks = [], []
    for _ in range(2):
        t = time.monotonic()
        run = client.trigger("training", conf)
        done = client.wait("training", run["dag_run_id"], timeout=2400, poll=1)
        took.append(time.monotonic() - t)
        if done["state"] != "success":
            raise SystemExit(f"training run {run['dag_run_id']} ended {done['state']}")
        tis = client.task_instances("training", run["dag_run_id"])
        tasks.append({ti["task_id"]: ti.get("duration") for ti in tis})
        restored = [task for task in ("ingest", "validate", "features", "train", "evaluate")
                    if "restored from DVC's run-cache" in client.task_log("training", run["dag_run_id"], task)]
        tasks[-1]["restored"] = restored
    peak = own_peak_mib()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    for name, secs, t in zip(("first (computes)", "second (run-cache)"), took, tasks):
        order = ("ingest", "validate", "features", "train", "evaluate", "register", "push")
        print(f"{name:20s} {secs:6.1f} s; tasks: " + ", ".join(f"{k} {t.get(k) or 0:.1f}" for k in order)
              + f"; restored from the run-cache: {', '.join(t['restored']) or 'none'}")
    print(f"training {args.start}..{args.end}: second / first = {took[1] / took[0]:.2f} ({took[0] / took[1]:.1f}x "
          f"faster); peak RSS of this client {peak:.0f} MiB (the stages run in Airflow's workers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
