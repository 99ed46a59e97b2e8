"""`python -m pipelines nightly --start D --end D`: the nightly chain for each date, in one process.

The same stage entry points, in the same order, as the nightly_scoring DAG's tasks (ingest ->
validate -> features -> score -> decide -> monitor -> retrain), date after date: for a laptop, a
demo or a catch-up without the scheduler. A retrain decision is only recorded here; pass
--trigger to also trigger the training DAG through the Airflow REST API (as the DAG would).
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import time
from contextlib import redirect_stdout

from pipelines import decide, features, ingest, monitor, retrain, score, validate
from pipelines.config import date_range, parse_date

log = logging.getLogger("pipelines.nightly")
STAGES = (("ingest", ingest), ("validate", validate), ("features", features), ("score", score),
          ("decide", decide), ("monitor", monitor), ("retrain", retrain))


def run_day(params_file: str, day: dt.date) -> dict:
    """Run the chain for one date; return the retrain decision record and per-stage seconds."""
    took, last = {}, ""
    for name, mod in STAGES:
        t = time.perf_counter()
        buf = io.StringIO()
        with redirect_stdout(buf):
            mod.main(["--params", params_file, "--date", day.isoformat()])
        took[name] = round(time.perf_counter() - t, 2)
        last = buf.getvalue().strip().splitlines()[-1] if buf.getvalue().strip() else ""
    return {"decision": json.loads(last), "seconds": took}


def trigger(decision: dict) -> str:
    from pipelines.airflow_api import AirflowApiError, AirflowClient

    t = decision["training"]
    client = AirflowClient()
    client.wait_for_dag(t["dag_id"])
    try:
        client.trigger(t["dag_id"], t["conf"], run_id=t["run_id"])
    except AirflowApiError as exc:
        if "409" not in str(exc):
            raise
    return t["run_id"]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines nightly", description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--start", type=parse_date, required=True)
    ap.add_argument("--end", type=parse_date, required=True)
    ap.add_argument("--trigger", action="store_true", help="trigger the training DAG when a decision says retrain")
    args = ap.parse_args(argv)
    for day in date_range(args.start, args.end):
        out = run_day(args.params, day)
        d = out["decision"]
        print(f"{day}: {sum(out['seconds'].values()):.1f}s  retrain={'YES' if d['retrain'] else 'no'}  {d['reason']}")
        if d["retrain"] and args.trigger:
            print(f"  triggered {d['training']['dag_id']} run {trigger(d)}")
    return 0
