"""The nightly_scoring DAG on the running scheduler: a backfill over 5 dates with drift injected on
the third; drift is flagged from that day, retraining is triggered exactly once (N=2 of M=3, then
no new request from the days it trained on), the triggered training DAG registers a model that
becomes challenger if it passes the gate; nothing is triggered before the injected day; a re-run
date gives byte-identical predictions."""
from __future__ import annotations

import io
import time
from contextlib import redirect_stdout

import pytest

from pipelines import decide, score
from pipelines.core import registry as models, storage
from pipelines.ops.airflow_api import AirflowClient
from pipelines.core.config import date_range, load_params, parse_date
from pipelines.core.lake import training_uri

pytestmark = pytest.mark.integration
FIRST, LAST, DRIFT_FROM = "2026-03-01", "2026-03-05", "2026-03-03"
DAYS = [d.isoformat() for d in date_range(parse_date(FIRST), parse_date(LAST))]


@pytest.fixture(scope="module")
def backfill(nightly_champion):
    from pipelines.ops.demo_data import DemoParams, write_demo

    params = load_params(nightly_champion["params"])
    demo = {**params.section("demo_data"), "bugs": [], "nightly": None,
            "drift": {"start_date": DRIFT_FROM, "amount_scale": 2.0, "category_weights": {"online": 4.0},
                      "new_fraud_pattern": True}}
    tx, lb = params.dataset("transactions"), params.dataset("labels")
    # from 02-22 so the label partitions of 03-01..03-05 are written too (days before the drift are unchanged)
    write_demo(DemoParams.from_dict(demo), tx.partition_uri, lb.partition_uri, parse_date("2026-02-22"), parse_date(LAST))

    client = AirflowClient()
    client.wait_for_dag("training")
    client.wait_for_dag("nightly_scoring")
    try:        # a reused test state may hold this run from an interrupted session: start clean
        client._request("DELETE", "/api/v2/dags/training/dagRuns/retrain__2026-03-04")
    except Exception as exc:
        assert "404" in str(exc), exc
    for old in client._request("GET", "/api/v2/backfills?dag_id=nightly_scoring&limit=100")["backfills"]:
        if not old.get("completed_at"):          # an interrupted session's backfill: one may run at a time
            client._request("PUT", f"/api/v2/backfills/{old['id']}/cancel")
    started = time.monotonic()
    bf = client._request("POST", "/api/v2/backfills", {
        "dag_id": "nightly_scoring", "from_date": f"{FIRST}T00:00:00Z", "to_date": f"{LAST}T00:00:00Z",
        "dag_run_conf": {"params_file": str(nightly_champion["params"])}, "max_active_runs": 2,
        "reprocess_behavior": "completed"})
    deadline = time.monotonic() + 1200
    while True:
        runs = client._request("GET", f"/api/v2/dags/nightly_scoring/dagRuns?limit=100&"
                                      f"logical_date_gte={FIRST}T00:00:00Z&logical_date_lte={LAST}T00:00:00Z")["dag_runs"]
        mine = {r["logical_date"][:10]: r for r in runs if r.get("conf", {}).get("params_file") == str(nightly_champion["params"])}
        if len(mine) == len(DAYS) and all(r["state"] in ("success", "failed") for r in mine.values()):
            break
        assert time.monotonic() < deadline, f"backfill {bf['id']} not done: {[(k, r['state']) for k, r in mine.items()]}"
        time.sleep(5)
    return {**nightly_champion, "client": client, "runs": mine, "params": params, "seconds": time.monotonic() - started}


def test_the_local_stack_schedules_no_run_by_itself(stack):
    """The daily DAGs' schedule ends with the simulated data (DailyUntil, from demo_data.end_date):
    the scheduler plans no run for them, and none it made exists (every run is triggered or backfilled)."""
    client = AirflowClient()
    end = load_params("params.yaml").section("demo_data")["end_date"]
    for dag_id in ("nightly_scoring", "labels"):
        dag = client.wait_for_dag(dag_id)
        assert dag["timetable_summary"] == f"daily until {end}", dag["timetable_summary"]
        assert dag["next_dagrun_logical_date"] is None and dag["next_dagrun_run_after"] is None, dag
        runs = client._request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100&run_type=scheduled")
        assert runs["total_entries"] == 0, [r["run_id"] for r in runs["dag_runs"]]


def test_backfill_over_five_dates_succeeds(backfill):
    client, runs = backfill["client"], backfill["runs"]
    failed = {d: [(t["task_id"], t["state"]) for t in client.task_instances("nightly_scoring", r["dag_run_id"])]
              for d, r in runs.items() if r["state"] != "success"}
    assert not failed, failed
    assert sorted(runs) == DAYS
    store = backfill["params"].storage
    for d in DAYS:          # every date has its own partitions: predictions, decisions, queue, monitoring
        for kind in ("predictions", "decisions", "review_queue", "monitoring", "monitor_report", "retrain_decision"):
            assert storage.exists(store.uri(kind, date=d)), (kind, d)
        pred = storage.read_parquet(store.uri("predictions", date=d))
        assert pred.height == storage.read_json(store.uri("features_manifest", date=d))["rows"]   # rows in = rows out
        assert set(pred["model_version"]) == {backfill["version"]} and set(pred["scored_by"]) == {"model"}
        assert pred["fallback"].list.len().max() == 0 and pred["ds"].unique().to_list() == [parse_date(d)]


def test_drift_flagged_from_the_injected_day_and_retraining_triggered_exactly_once(backfill):
    store, client = backfill["params"].storage, backfill["client"]
    drifted = {d: storage.read_json(store.uri("alerts", date=d))["drifted"] for d in DAYS}
    assert drifted == {d: d >= DRIFT_FROM for d in DAYS}, drifted
    decisions = {d: storage.read_json(store.uri("retrain_decision", date=d)) for d in DAYS}
    assert {d: r["retrain"] for d, r in decisions.items()} == {d: d == "2026-03-04" for d in DAYS}
    assert "2 needed" in decisions["2026-03-03"]["reason"]
    # the day after: the drifted days up to 03-04 were in that retrain's data (only 03-05 counts), or
    # its model already shadows the champion (when the training registered before this date decided)
    after = decisions["2026-03-05"]
    assert (after["state"] == "no" and "after the retrain of 2026-03-04" in after["reason"]) or \
        (after["state"] == "shadow" and "retrain of 2026-03-04 answers the change" in after["reason"]), after
    trig = {d: {t["task_id"]: t["state"] for t in client.task_instances("nightly_scoring", r["dag_run_id"])}["trigger_training"]
            for d, r in backfill["runs"].items()}
    assert trig == {d: "success" if d == "2026-03-04" else "skipped" for d in DAYS}, trig
    runs = client._request("GET", "/api/v2/dags/training/dagRuns?limit=100")["dag_runs"]
    mine = [r for r in runs if r.get("conf", {}).get("params_file") == str(backfill["params"].path)]
    assert [r["dag_run_id"] for r in mine] == ["retrain__2026-03-04"]          # once, and not before the drift
    conf = mine[0]["conf"]
    assert conf["end_date"] == "2026-03-04" and "drift on 2 of the last 3 days" in conf["reason"]


def test_triggered_training_registers_a_model_through_the_gate(backfill):
    client, name = backfill["client"], backfill["name"]
    run = client.wait("training", "retrain__2026-03-04", timeout=1500)
    assert run["state"] == "success", [(t["task_id"], t["state"]) for t in client.task_instances("training", run["dag_run_id"])]
    base = training_uri(backfill["params"], parse_date(run["conf"]["start_date"]), parse_date("2026-03-04"))
    reg = storage.read_json(f"{base}/register/registration.json")
    aliases = models.aliases(models.client(), name)
    assert aliases["champion"] == backfill["version"] and reg["version"] != backfill["version"]
    if reg["gate"] == "passed":
        assert reg["alias"] == "challenger" and aliases.get("challenger") == reg["version"]
    else:
        assert reg["alias"] is None and aliases.get("challenger") != reg["version"] and reg["reasons"]


def test_a_date_is_a_run_cache_entry_and_recomputing_it_gives_the_same_bytes(backfill, caplog):
    """The predictions record names what they were made from (features and manifest sha256, the
    model, the params, the code): a re-run with the same is a hit that recomputes nothing (the
    volatile timings of the first run stay); --recompute, or the record removed, scores it again:
    the same bytes."""
    import logging

    store = backfill["params"].storage
    uri = store.uri("predictions", date="2026-03-02")
    stats_uri = store.uri("scoring_stats", date="2026-03-02")
    before, stats = storage.read_bytes(uri), storage.read_bytes(stats_uri)
    rec = storage.read_json(storage.record_uri(uri))
    feats = store.uri("features", date="2026-03-02")
    assert rec["run"]["features"][feats] == storage.read_json(storage.record_uri(feats))["objects"][feats]
    assert rec["run"]["model"]["model_version"] == backfill["version"] and rec["run"]["code_version"]
    assert rec["run"]["params_sha256"] and rec["run"]["key"]
    args = ["--params", str(backfill["params"].path), "--date", "2026-03-02"]
    with redirect_stdout(io.StringIO()), caplog.at_level(logging.INFO, logger="pipelines.scoring"):
        assert score.main(args) == 0
    assert "unchanged since its record" in caplog.text and "nothing recomputed" in caplog.text
    assert storage.read_bytes(uri) == before and storage.read_bytes(stats_uri) == stats    # nothing ran
    with redirect_stdout(io.StringIO()):
        assert score.main([*args, "--recompute"]) == 0
    assert storage.read_bytes(uri) == before and storage.read_bytes(stats_uri) != stats    # it ran: same bytes
    storage.delete(storage.record_uri(uri))                                 # a lost record: scored again
    storage.delete(uri)
    with redirect_stdout(io.StringIO()):
        assert score.main(args) == 0
    assert storage.read_bytes(uri) == before and storage.read_json(storage.record_uri(uri)) == rec


def test_ingest_validate_features_and_monitor_of_a_date_are_run_cache_entries_too(backfill, caplog, monkeypatch):
    """Each partition's record names its run key (its inputs' bytes, settings, code, libraries): the
    nightly stages other than score and decide re-run on an unchanged date compute nothing
    (normalize, the suite, compute_features and the monitor's pass are never called); --recompute,
    or the record lost, makes the same bytes and the same record again."""
    import logging

    from pipelines import features, ingest, monitor, validate

    store, d = backfill["params"].storage, FIRST      # (its earlier days were in before the backfill ran)
    uris = {"ingest": store.uri("canonical", dataset="transactions", date=d),
            "labels": store.uri("canonical", dataset="labels", date=d),
            "validate": store.uri("validated", dataset="transactions", date=d),
            "features": store.uri("features", date=d), "monitor": store.uri("monitoring", date=d)}
    before = {k: (storage.read_bytes(u), storage.read_json(storage.record_uri(u))) for k, u in uris.items()}
    for k, (_, rec) in before.items():
        assert rec["run"]["key"] and rec["run"]["code_version"] and rec["run"]["params_sha256"], k
    assert before["validate"][1]["run"]["inputs"] == {uris["ingest"]: before["ingest"][1]["objects"][uris["ingest"]]}
    feat_inputs = before["features"][1]["run"]["inputs"]
    assert feat_inputs[uris["validate"]] == before["validate"][1]["objects"][uris["validate"]]
    assert set(before["features"][1]["inputs"]) <= set(feat_inputs)       # what it read, and what was absent
    args = ["--params", str(backfill["params"].path), "--date", d]
    runs = {"ingest": lambda *a: ingest.main([*args, "--dataset", "transactions", "--dataset", "labels", *a]),
            "validate": lambda *a: validate.main([*args, *a]), "features": lambda *a: features.main([*args, *a]),
            "monitor": lambda *a: monitor.main([*args, *a])}

    def boom(*a, **k):
        raise AssertionError("an unchanged date was computed again")

    for mod, fn in ((ingest, "normalize"), (validate, "validate_frame"), (features, "compute_features"),
                    (monitor, "observe")):
        monkeypatch.setattr(mod, fn, boom)
    with redirect_stdout(io.StringIO()), caplog.at_level(logging.INFO):
        for stage, run in runs.items():
            assert run() == 0, stage
    assert caplog.text.count("unchanged since its record") >= 5, caplog.text   # tx + labels, validated, features, monitor
    observed = store.uri("features_observed", date=d)                  # the features' counts score made
    monitor_inputs = before["monitor"][1]["run"]["inputs"]
    assert monitor_inputs[observed] == storage.read_json(storage.record_uri(store.uri("predictions", date=d)))["objects"][observed]
    assert uris["features"] not in monitor_inputs                          # the feature partition is not read again
    monkeypatch.undo()
    with redirect_stdout(io.StringIO()):
        for stage, run in runs.items():
            assert run("--recompute") == 0, stage
    after = {k: (storage.read_bytes(u), storage.read_json(storage.record_uri(u))) for k, u in uris.items()}
    assert after == before
    storage.delete(storage.record_uri(uris["features"]))                     # a lost record: computed again
    storage.delete(uris["features"])
    with redirect_stdout(io.StringIO()):
        assert runs["features"]() == 0
    assert (storage.read_bytes(uris["features"]), storage.read_json(storage.record_uri(uris["features"]))) == \
        before["features"]


def test_a_decided_date_is_a_run_cache_entry_too(backfill, caplog, monkeypatch):
    """The decisions record names what they were made from (the predictions' bytes, the rule columns
    and the features' counts they carry included; verdicts, guardrail inputs, params, code; not the
    feature partition, which decide no longer reads): deciding the date again with the same computes nothing
    (plan is never called); --recompute decides it anyway into the same bytes and the same record."""
    import logging

    store, d = backfill["params"].storage, "2026-03-03"
    uri, pred = store.uri("decisions", date=d), store.uri("predictions", date=d)
    summary = store.uri("decision_summary", date=d)
    before, summ, rec = storage.read_bytes(uri), storage.read_bytes(summary), storage.read_json(storage.record_uri(uri))
    assert rec["run"]["inputs"][pred] == storage.read_json(storage.record_uri(pred))["objects"][pred]
    assert rec["run"]["key"] and rec["run"]["code_version"] and rec["run"]["params_sha256"]
    observed, feats = store.uri("features_observed", date=d), store.uri("features", date=d)
    assert pred in rec["inputs"] and observed in rec["run"]["inputs"]
    assert feats not in rec["inputs"] and feats not in rec["run"]["inputs"]
    args = ["--params", str(backfill["params"].path), "--date", d]

    def boom(*a, **k):
        raise AssertionError("decide recomputed an unchanged date")

    monkeypatch.setattr(decide, "plan", boom)
    with redirect_stdout(io.StringIO()), caplog.at_level(logging.INFO, logger="pipelines.decide"):
        assert decide.main(args) == 0
    assert "unchanged since its record" in caplog.text and "nothing recomputed" in caplog.text
    with pytest.raises(AssertionError, match="recomputed"):          # --recompute really computes
        decide.main([*args, "--recompute"])
    monkeypatch.undo()
    with redirect_stdout(io.StringIO()):
        assert decide.main([*args, "--recompute"]) == 0
    assert storage.read_bytes(uri) == before and storage.read_bytes(summary) == summ
    assert storage.read_json(storage.record_uri(uri)) == rec
