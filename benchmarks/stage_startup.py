"""Benchmark: what one Airflow task pays for one stage process on one demo date (issue 13: "under a
scheduler every task is a process: measure a task's fixed start-up cost and cut it").

    python benchmarks/stage_startup.py [--date 2026-03-18] [--repeat 3] [--params .state/params/demo.yaml]

Needs the local stack and a lake with the demo's nights (run `make demo` first; its params file,
the scenario laid over params.yaml, is the default). For each stage the
nightly_scoring and labels DAGs run, the command the task runs (`python -m pipelines <stage>
--date D ...`) is started as a fresh process `repeat` times; the median wall time and peak RSS are
printed, with two anchors measured in the same run:
  * bare: `python -c "import polars, pyarrow"` (an interpreter with the data libraries: the floor);
  * validate with `validate.engine: gx` (GX's pandas engine) next to the polars evaluator.
Stages that publish re-publish the same bytes (a date is a transaction), so re-running is safe;
lifecycle runs with --dry-run (it would move aliases).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], repeat: int) -> tuple[float, float]:
    """Median wall seconds and peak RSS (MiB) of `argv` over `repeat` fresh processes."""
    walls, peak = [], 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        p = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        walls.append(time.perf_counter() - t)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(argv[2:])} exited {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    return statistics.median(walls), peak


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--date", default="2026-03-18")
    ap.add_argument("--params", help="default: <state>/params/demo.yaml (written by make demo)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    py, d = sys.executable, args.date
    env_file = Path(os.environ.get("FRAUDOPS_HOME") or ROOT / ".state") / "stack.env"
    if not env_file.exists():
        raise SystemExit(f"{env_file} missing: start the stack and run `make demo` first")
    for line in env_file.read_text().splitlines():
        k, _, v = line.partition("=")
        os.environ.setdefault(k, v)
    params = Path(args.params or env_file.parent / "params" / "demo.yaml")
    if not params.exists():
        raise SystemExit(f"{params} missing: run `make demo` first")
    gx_params = Path(tempfile.mkdtemp()) / "params.yaml"
    data = yaml.safe_load(params.read_text())
    data["validate"]["engine"] = "gx"
    gx_params.write_text(yaml.safe_dump(data, sort_keys=False))

    cases = [("bare interpreter + polars + pyarrow", [py, "-c", "import polars, pyarrow"])]
    stage = [py, "-m", "pipelines"]
    cases += [(name, stage + cmd + ([] if "--params" in cmd else ["--params", str(params)])) for name, cmd in [
        ("wait_for_data (ingest --check)", ["ingest", "--date", d, "--dataset", "transactions", "--check"]),
        ("ingest", ["ingest", "--date", d, "--if-landed", "labels"]),
        ("validate (polars evaluator)", ["validate", "--date", d]),
        ("validate (GX engine)", ["validate", "--date", d, "--params", str(gx_params)]),
        ("features", ["features", "--date", d]),
        ("score", ["score", "--date", d]),
        ("shadow", ["shadow", "--date", d]),
        ("decide", ["decide", "--date", d]),
        ("monitor", ["monitor", "--date", d]),
        ("retrain", ["retrain", "--date", d]),
        ("validate_labels", ["validate", "--date", d, "--dataset", "labels"]),
        ("feedback", ["feedback", "--date", d]),
        ("lifecycle (--dry-run)", ["lifecycle", "--date", d, "--dry-run"]),
    ]]
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"date {d}, median of {args.repeat}")
    res = {}
    for name, argv in cases:
        res[name] = run(argv, args.repeat)
        print(f"  {name:38s} {res[name][0]:6.2f} s   peak RSS (all so far) {res[name][1]:6.0f} MiB", flush=True)
    bare = res["bare interpreter + polars + pyarrow"][0]
    night = sum(res[n][0] for n in res if n not in ("bare interpreter + polars + pyarrow", "validate (GX engine)"))
    print(f"validate GX / polars evaluator: {res['validate (GX engine)'][0] / res['validate (polars evaluator)'][0]:.1f}x; "
          f"every stage of a date, one process each: {night:.1f} s = {night / bare:.0f}x the bare interpreter ({bare:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
