"""Benchmark: ingest over a date range (what a training run's first task does), with the earlier
days' ids read once per range (the memo) against once per later day (the baseline, measured in the
same run). Both republish the same bytes (a date is a transaction); the records are compared.

    python benchmarks/ingest_range.py [--start 2026-01-01] [--end 2026-02-28] [--params .state/params/demo.yaml]

Needs the local stack and the demo's raw data (run `make demo` first).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--start", default="2026-01-01")
    ap.add_argument("--end", default="2026-02-28")
    ap.add_argument("--params", help="default: <state>/params/demo.yaml (written by make demo)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks import own_peak_mib
    from pipelines.core import storage
    from pipelines.core.config import date_range, load_params, parse_date
    from pipelines.core.state import ENV_FILE, load_env_file, state_dir
    from pipelines.ingest import ingest_partition

    if not (state_dir() / ENV_FILE).exists():
        raise SystemExit(f"{state_dir() / ENV_FILE} missing: start the stack and run `make demo` first")
    load_env_file()
    params = load_params(args.params or state_dir() / "params" / "demo.yaml")
    store, ing = params.storage, params.ingest
    days = date_range(parse_date(args.start), parse_date(args.end))
    todo = [(params.dataset(n), d) for n in params.dataset_names for d in days if d >= params.dataset(n).first_date]

    def run(memo: bool) -> tuple[float, dict]:
        memos: dict = {}
        t = time.perf_counter()
        with storage.Publisher(store.lake) as pub:
            for ds, day in todo:
                # recompute: a partition made from the same inputs is otherwise kept, and nothing is timed
                ingest_partition(ds, day, store, ing, pub, memos.setdefault(ds.name, {}) if memo else None,
                                 recompute=True)
        records = {(ds.name, day): storage.read_bytes(storage.record_uri(store.uri("canonical", dataset=ds.name,
                                                                                   date=day.isoformat())))
                   for ds, day in todo}
        return time.perf_counter() - t, records

    base, base_records = run(memo=False)
    fast, fast_records = run(memo=True)
    assert fast_records == base_records, "the records differ"
    peak = own_peak_mib()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"ingest {args.start}..{args.end}, {len(todo)} partitions: once per later day {base:.1f} s, "
          f"memo {fast:.1f} s: {base / fast:.2f}x; records identical; peak RSS {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
