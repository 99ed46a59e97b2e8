"""The loop recovers, end to end on the real stack and its scheduler: the demo's short scenario
(params.demo.yaml over params.yaml: labels 1 day late, 3-day windows, drift with a new fraud pattern
from 03-03, a data bug on 03-20) played as `make demo` plays it (`pipelines.ops.demo.play`), in a
lake and under a model name of its own: the first champion from a training DAG run, every night a
run of nightly_scoring and every label day a run of labels, triggered through the REST API; the
nightly DAG triggers the training DAG when its retrain decision says so.

Asserted: every night and label day is an Airflow run, with the states the scenario calls for
(counted through the REST API: the labels runs and the nights green, the bug day red, two training
runs); the drift is flagged; the retrain request waits for the labels of 10 days from the onset,
visibly; the retrained model learns from post-onset days, passes the gate, shadows the champion and
is promoted by the labels, and no new request opens meanwhile or after; the realized AP of the
champion drops during the drift and is back to at least 90 % of its pre-drift level after the
promotion; the audit of the range finds no contradiction."""
from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from contextlib import redirect_stdout

import pytest

from tests.conftest import REPO, state_dir
from pipelines import lifecycle
from pipelines.core import registry as models, storage
from pipelines.core.config import date_range, load_params
from pipelines.core.state import state_dir as home
from pipelines.ops import demo_data
from pipelines.ops.airflow_api import AirflowClient
from pipelines.ops.demo import play, recovery, scenario_params

pytestmark = pytest.mark.integration


def test_drift_waits_for_labels_retrains_promotes_and_recovers_on_the_scheduler(stack):
    from pipelines.ops import stack as st

    tag = uuid.uuid4().hex[:8]
    root = state_dir("recovery")
    lake = f"s3://fraudops-lake/test-recovery-{tag}"
    path = str(scenario_params(REPO / "params.yaml", REPO / "params.demo.yaml", root / "params.yaml", extra={
        "storage": {"lake": lake},
        "datasets": {"transactions": {"uri": f"{lake}/raw/transactions"}, "labels": {"uri": f"{lake}/raw/labels"}},
        "register": {"model_name": f"fraud-xgb-recovery-{tag}"},
        "score": {"cache_dir": str(root / "model-cache")}}))
    params = load_params(path)
    store, name = params.storage, params.register.model_name
    dp = demo_data.DemoParams.from_dict(params.section("demo_data"))
    delay, k = params.dataset("labels").delay_days, params.retrain.min_labelled_days_after_onset
    onset = dp.drift.start_date
    lines: list[str] = []
    with redirect_stdout(io.StringIO()):
        out = play(path, stack, st.airflow_password(stack), say=lambda *a, **kw: lines.append(" ".join(map(str, a))))
    c = models.client()
    first = out["first_champion"]
    nights = date_range(*dp.nightly)
    labelled = date_range(nights[0] + dt.timedelta(days=delay), nights[-1] + dt.timedelta(days=delay))
    bug_days = [b.date for b in dp.bugs]

    # every night and label day is a run on the scheduler, in the state the scenario calls for,
    # as the REST API lists them (what the Airflow UI shows)
    client = AirflowClient()
    listed = {dag: {r["dag_run_id"]: r["state"] for r in client.runs_between(dag, nights[0].isoformat(), "9999-12-31")
                    if r["dag_run_id"].startswith("demo__")} for dag in ("nightly_scoring", "labels")}
    assert listed["nightly_scoring"] == {**{f"demo__{d}": "success" for d in nights},
                                         **{f"demo__{d}": "failed" for d in bug_days}}, listed
    assert listed["labels"] == {f"demo__{d}": "success" for d in labelled}, listed
    assert out["runs"]["nightly_scoring"] == listed["nightly_scoring"] and out["runs"]["labels"] == listed["labels"]
    training = out["runs"]["training"]
    assert len(training) == 2 and set(training.values()) == {"success"}, training
    assert all(client.run("training", r)["state"] == "success" for r in training)
    assert out["contradictions"] == [], out["contradictions"]
    # the bug day is blocked at validate, not retried; nothing downstream runs or is published
    for day in bug_days:
        tis = {t["task_id"]: t for t in client.task_instances("nightly_scoring", f"demo__{day}")}
        assert tis["ingest"]["state"] == "success"
        assert tis["validate"]["state"] == "failed" and tis["validate"]["try_number"] == 1
        assert {tis[t]["state"] for t in ("features", "score", "decide", "monitor", "retrain")} == {"upstream_failed"}
        assert not storage.exists(store.uri("predictions", date=day.isoformat()))
    alerts = [json.loads(x) for x in (home() / "alerts" / "airflow.jsonl").read_text().splitlines()]
    assert all(any(a["run_id"] == f"demo__{day}" and a["task_id"] == "validate" and "blocked" in a["error"]
                   for a in alerts) for day in bug_days), alerts[-3:]
    for dag in ("nightly_scoring", "labels"):          # the stack's schedule ends with its data: nothing scheduled
        got = client._request("GET", f"/api/v2/dags/{dag}/dagRuns?limit=100")["dag_runs"]
        assert not [r["dag_run_id"] for r in got if r["run_type"] == "scheduled"], dag

    decisions = {d: storage.read_json(store.uri("retrain_decision", date=d.isoformat())) for d in nights}
    moves = [(d, m) for d in labelled
             for m in storage.read_json(store.uri("lifecycle_decision", date=d.isoformat())).get("moves", [])]
    assert all(lifecycle.summary(storage.read_json(store.uri("lifecycle_decision", date=d.isoformat())))
               for d in labelled)

    drifted = [d for d in nights if storage.read_json(store.uri("alerts", date=d.isoformat()))["drifted"]]
    assert drifted and min(drifted) >= onset and min(drifted) <= onset + dt.timedelta(days=2), drifted
    # the request waits, visibly, until the labels of k days from the onset have landed; then one retrain
    yes = [d for d, x in decisions.items() if x["retrain"]]
    assert len(yes) == 1, {d.isoformat(): (x["retrain"], x.get("state"), x["reason"]) for d, x in decisions.items()}
    seen = dt.date.fromisoformat(decisions[yes[0]]["onset"])          # the first drifted day of the request
    assert seen == min(drifted), (seen, drifted)
    due = seen + dt.timedelta(days=k - 1 + delay)
    assert yes == [due], (yes, due)
    waiting = [d for d, x in decisions.items() if x.get("state") == "waiting" and d < due]
    assert waiting and min(waiting) <= seen + dt.timedelta(days=2), waiting
    assert all(decisions[d]["labels_due"] == due.isoformat() and decisions[d]["onset"] == seen.isoformat()
               for d in waiting), {d.isoformat(): decisions[d] for d in waiting}
    conf = decisions[due]["training"]["conf"]
    assert conf["end_date"] == due.isoformat()
    # the challenger came from that training, shadowed, and the labels promoted it
    promoted = [(day, m) for day, m in moves if m["alias"] == "champion" and m["from"] == first]
    assert promoted, moves
    when, move = promoted[0]
    assert when > due and move["to"] != first
    assert models.get_alias(c, name, "champion") == move["to"]
    shadowed = [d for d in nights if storage.read_json(store.uri("shadow_model", date=d.isoformat())).get(
        "model_version") == move["to"]]
    assert len(shadowed) >= params.promotion.shadow_days and max(shadowed) < when, shadowed

    # the retrained model answers the change: no new request while it shadows, none after its promotion
    after_retrain = {d.isoformat(): decisions[d]["state"] for d in nights if d > due}
    assert all(st == "shadow" for d, st in after_retrain.items() if d < when.isoformat()), after_retrain
    assert all(st in ("no", "closed") for d, st in after_retrain.items() if d >= when.isoformat()), after_retrain

    phases = out["phases"]
    print(recovery(store, nights, onset))
    before, during, after = (phases[p] for p in ("before the drift", "during (old champion)", "after the promotion"))
    assert before["days"] >= 2 and during["days"] >= 5 and after["days"] >= 3, phases
    assert during["average_precision"] < before["average_precision"], phases          # the drift hurt
    assert after["average_precision"] >= 0.9 * before["average_precision"], phases     # and the loop recovered

    # one prediction row of the last night (the promoted model) followed end to end: every hop is
    # read from its store and checked against the others
    _follow_a_row(path, nights[-1], move["to"], name, client)


def _follow_a_row(path: str, day: dt.date, version: str, name: str, client) -> None:
    import hashlib
    import subprocess
    import sys


    store = load_params(path).storage
    dec = storage.read_parquet(store.uri("decisions", date=day.isoformat()))
    row = dec.filter(dec["decision"] != "approve").row(0, named=True) if (dec["decision"] != "approve").any() \
        else dec.row(0, named=True)
    r = subprocess.run([sys.executable, "-m", "pipelines", "lineage", "--params", path, "--date", day.isoformat(),
                        "--event-id", row["event_id"], "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    t = json.loads(r.stdout)
    h = t["hops"]
    assert t["problems"] == [] and h["decision"]["row"]["decision"] == row["decision"]
    assert h["decision"]["row"]["reason_code"] == row["reason_code"]
    pred = storage.read_parquet(store.uri("predictions", date=day.isoformat()))
    assert h["score"]["row"]["score"] == pred.filter(pred["event_id"] == row["event_id"])["score"][0]
    assert h["score"]["decisions_read_these_predictions"] is True
    c = models.client()
    mv = c.get_model_version(name, version)
    assert (h["model"]["version"], h["model"]["served_as"]) == (version, "champion")
    assert h["model"]["sha256"] == mv.tags["model_sha256"] and h["mlflow_run"]["run_id"] == mv.run_id
    assert h["airflow"]["nightly_run"] == f"demo__{day}" and h["airflow"]["state"] == "success"
    assert client.run("nightly_scoring", f"demo__{day}")["state"] == "success"
    training = h["airflow"]["training_run"]
    assert training["dag_id"] == "training" and training["state"] == "success" and training["run_id"].startswith("retrain__")
    # the model was trained by the training DAG through DVC: its lineage is its own workspace's lock
    assert h["dvc"]["tags"]["dvc.lineage"] == "dvc.lock of this run (dvc repro)" and h["dvc"]["tags_match_lock"] is True
    for i in h["inputs"]["partitions"]:                     # every recorded hash is the bytes' now
        assert hashlib.sha256(storage.read_bytes(i["uri"])).hexdigest() == i["sha256"], i["uri"]
    stages = {i["stage"] for i in h["inputs"]["partitions"]}
    assert {"features", "validate", "ingest"} <= stages, stages
    assert h["code"]["model_git_commit"] == subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                                           text=True).stdout.strip()
    page_uri = f"{store.lake.rstrip('/')}/reports/lineage/date={day}/{row['event_id']}.html"
    page = storage.read_bytes(page_uri).decode()
    assert row["event_id"] in page and "Every hop holds" in page and "<script" not in page
    from tests.browser import check_lake_pages            # and in a real browser: it loads whole at 1400 px

    check_lake_pages({"lineage": page_uri}, state_dir("browser"))
