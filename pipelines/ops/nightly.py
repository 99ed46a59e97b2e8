"""`python -m pipelines nightly --start D --end D`: the nightly chain for each date, in one process.

The same stage entry points, in the same order, as the nightly_scoring DAG's tasks (ingest ->
validate -> features -> score -> shadow -> decide -> monitor -> retrain), date after date: for a laptop, a
demo or a catch-up without the scheduler. A retrain decision is only recorded here; pass
--trigger to also trigger the training DAG through the Airflow REST API (as the DAG would).
"""
from __future__ import annotations

import datetime as dt
import io
import json
import time
from contextlib import redirect_stdout

from pipelines import (
    decide,
    features,
    feedback,
    ingest,
    lifecycle,
    monitor,
    retrain,
    score,
    shadow,
    validate,
)
from pipelines.core.cli import range_parser
from pipelines.core.config import date_range

STAGES = (("ingest", ingest, ["--if-landed", "labels"]), ("validate", validate, []), ("features", features, []), ("score", score, []),
          ("shadow", shadow, []), ("decide", decide, []), ("monitor", monitor, []), ("retrain", retrain, []))
# the labels DAG's tasks
LABEL_STAGES = (("ingest_labels", ingest, ["--dataset", "labels"]), ("validate_labels", validate, ["--dataset", "labels"]),
                ("feedback", feedback, []), ("lifecycle", lifecycle, []))


def _chain(stages, params_file: str, day: dt.date) -> tuple[dict, str]:
    """Run the stages' entry points for one date; per-stage seconds and the last stage's last line."""
    took, last = {}, ""
    for name, mod, extra in stages:
        t = time.perf_counter()
        buf = io.StringIO()
        with redirect_stdout(buf):
            mod.main(["--params", params_file, "--date", day.isoformat(), *extra])
        took[name] = round(time.perf_counter() - t, 2)
        last = buf.getvalue().strip().splitlines()[-1] if buf.getvalue().strip() else ""
    return took, last


def run_day(params_file: str, day: dt.date) -> dict:
    """The nightly chain for one date; the retrain decision record and per-stage seconds."""
    took, last = _chain(STAGES, params_file, day)
    return {"decision": json.loads(last), "seconds": took}


def run_labels_day(params_file: str, day: dt.date) -> dict:
    """The labels chain for the labels landing on `day`; the lifecycle record (moves, alerts)."""
    took, last = _chain(LABEL_STAGES, params_file, day)
    return {"lifecycle": json.loads(last), "seconds": took}


def trigger(decision: dict) -> str:
    """Trigger the training run of a retrain decision (run id retrain__<ds>; an existing run is
    kept, as the DAG's TriggerDagRunOperator does)."""
    from pipelines.ops.airflow_api import AirflowApiError, AirflowClient

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
    ap = range_parser("nightly", __doc__)
    ap.add_argument("--trigger", action="store_true", help="trigger the training DAG when a decision says retrain")
    ap.add_argument("--labels", action="store_true",
                    help="run the labels chain instead (ingest/validate labels -> feedback -> lifecycle), dates = label dates")
    args = ap.parse_args(argv)
    for day in date_range(args.start, args.end):
        if args.labels:
            out = run_labels_day(args.params, day)
            r = out["lifecycle"]
            print(f"{day}: {sum(out['seconds'].values()):.1f}s  rollback={r['rollback']}  promotion={r['promotion']}  "
                  f"moves={len(r['moves'])}")
            continue
        out = run_day(args.params, day)
        d = out["decision"]
        print(f"{day}: {sum(out['seconds'].values()):.1f}s  retrain={'YES' if d['retrain'] else 'no'}  {d['reason']}")
        if d["retrain"] and args.trigger:
            print(f"  triggered {d['training']['dag_id']} run {trigger(d)}")
    return 0
