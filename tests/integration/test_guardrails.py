"""Guardrails before actions, on the real stack: a day whose amounts arrive x100 (an upstream unit
bug) is held by decide (no model-driven block is published, the record and the alert say why), the
days before it pass, and a person's release through the release_hold DAG (the running scheduler)
publishes the proposed decisions with who, why and the Airflow run recorded."""
from __future__ import annotations

import datetime as dt
import io
import re
import uuid
from contextlib import redirect_stdout

import polars as pl
import pytest
import yaml

from pipelines import __main__ as cli
from pipelines import decide, monitor, score
from pipelines.core import storage
from pipelines.core.config import load_params
from pipelines.ops.airflow_api import AirflowClient
from tests.conftest import publish, state_dir, write_params

pytestmark = pytest.mark.integration
DAYS = [dt.date(2026, 2, 23) + dt.timedelta(days=i) for i in range(6)]
BUG = DAYS[-1]


@pytest.fixture(scope="module")
def guarded(nightly_champion, make_bucket):
    """Five normal days and a x100 day (features of the training lake, the amount scaled), scored by
    the nightly champion and decided in a lake of their own."""
    base = load_params(nightly_champion["params"])
    data = yaml.safe_load(open(nightly_champion["params"]))
    data["storage"]["lake"] = make_bucket(f"fraudops-guard-{uuid.uuid4().hex[:6]}")
    path = write_params(state_dir("guard") / "params.yaml", data)
    params = load_params(path)
    for day in DAYS:
        d = day.isoformat()
        feats = storage.read_parquet(base.storage.uri("features", date=d))
        if day == BUG:
            feats = feats.with_columns(pl.col("amount") * 100)
        val = params.storage.uri("validated", dataset="transactions", date=d)
        publish(val, storage.read_parquet(base.storage.uri("validated", dataset="transactions", date=d)), stage="validate")
        publish(params.storage.uri("features", date=d), feats,
                {params.storage.uri("features_manifest", date=d): storage.read_json(base.storage.uri("features_manifest", date=d))},
                "features")
    out = {}
    for day in DAYS:
        args = ["--params", str(path), "--date", day.isoformat()]
        with redirect_stdout(io.StringIO()):
            assert score.main(args) == 0 and decide.main(args) == 0 and monitor.main(args) == 0
        out[day] = storage.read_json(params.storage.uri("decision_summary", date=day.isoformat()))
    return {"params": params, "path": path, "summaries": out}


def test_the_x100_day_is_held_and_nothing_is_acted_on(guarded):
    store, summ = guarded["params"].storage, guarded["summaries"]
    assert {d: s["guardrails"]["status"] for d, s in summ.items()} == {d: "held" if d == BUG else "passed" for d in DAYS}
    g = summ[BUG]["guardrails"]
    assert g["trailing_dates"] == [d.isoformat() for d in reversed(DAYS[:-1])]
    breached = {c["check"] for c in g["checks"] if c["breached"]}
    assert "review_volume" in breached and g["proposed"]["review_volume"] > 4 * summ[DAYS[0]]["guardrails"]["proposed"]["review_volume"]
    dec = storage.read_parquet(store.uri("decisions", date=BUG.isoformat()))
    assert dec.height == summ[BUG]["rows"] and set(dec["decision"]) == {"hold"}          # rows in = rows out
    assert (dec["decision"] == "block").sum() == 0 and (dec["proposed_decision"] != "approve").sum() > 0   # it would have acted
    assert storage.read_parquet(store.uri("review_queue", date=BUG.isoformat())).height == 0
    alerts = storage.read_json(store.uri("alerts", date=BUG.isoformat()))["alerts"]
    held = [a["message"] for a in alerts if a["metric"] == "day_held"]
    assert len(held) == 1 and "held by the guardrails" in held[0] and "review_volume" in held[0], alerts
    for day in DAYS[:-1]:
        d = storage.read_parquet(store.uri("decisions", date=day.isoformat()))
        assert "hold" not in set(d["decision"]) and d["decision"].equals(d["proposed_decision"])


def test_a_release_through_the_dag_publishes_the_decisions(guarded, stack):
    store, path = guarded["params"].storage, guarded["path"]
    client = AirflowClient()
    client.wait_for_dag("release_hold")
    refused = f"release-{uuid.uuid4().hex[:8]}"
    client.trigger("release_hold", {"date": BUG.isoformat(), "action": "release", "reason": "no confirm",
                                    "params_file": str(path)}, run_id=refused)
    assert client.wait("release_hold", refused, timeout=300, poll=1)["state"] == "failed"
    assert storage.read_json(store.uri("decision_summary", date=BUG.isoformat()))["guardrails"]["status"] == "held"
    run_id = f"release-{uuid.uuid4().hex[:8]}"
    client.trigger("release_hold", {"date": BUG.isoformat(), "action": "release", "confirm": True,
                                    "reason": "upstream fixed the unit; amounts checked by hand",
                                    "params_file": str(path)}, run_id=run_id)
    assert client.wait("release_hold", run_id, timeout=300, poll=1)["state"] == "success"
    summ = storage.read_json(store.uri("decision_summary", date=BUG.isoformat()))
    assert summ["guardrails"]["status"] == "released" and summ["guardrails"]["breaches"]
    rel = summ["guardrails"]["release"]
    assert rel["action"] == "release" and rel["airflow_run"] == run_id and "by hand" in rel["reason"]
    dec = storage.read_parquet(store.uri("decisions", date=BUG.isoformat()))
    assert "hold" not in set(dec["decision"]) and dec["decision"].equals(dec["proposed_decision"])
    assert summ["decisions"]["hold"] == 0 and summ["review_queue"] == min(150, summ["guardrails"]["proposed"]["review_volume"])


def _audit(path) -> tuple[int, str]:
    with redirect_stdout(io.StringIO()) as buf:
        rc = cli.main(["audit", "--params", str(path), "--start", DAYS[0].isoformat(), "--end", BUG.isoformat()])
    return rc, buf.getvalue()


def test_the_audit_finds_nothing_then_every_planted_contradiction(guarded, stack):
    store, path = guarded["params"].storage, guarded["path"]
    rc, out = _audit(path)
    assert rc == 0 and re.search(r"6 date\(s\), [56] with records, 0 contradiction\(s\)", out), out
    d0, d1, d2, d3 = (d.isoformat() for d in DAYS[:4])
    storage.write_bytes(store.uri("retrain_decision", date=d0), storage.json_bytes(
        {"retrain": True, "reason": "planted", "training": {"dag_id": "training", "run_id": f"retrain__{d0}-planted"}}))
    doc = storage.read_json(store.uri("scored_model", date=d1))
    storage.write_bytes(store.uri("scored_model", date=d1), storage.json_bytes({**doc, "model_version": "9999"}))
    summ = storage.read_json(store.uri("decision_summary", date=d2))
    summ["guardrails"]["status"] = "held"
    storage.write_bytes(store.uri("decision_summary", date=d2), storage.json_bytes(summ))
    dec = storage.read_parquet(store.uri("decisions", date=d3))
    storage.write_bytes(store.uri("decisions", date=d3), storage.parquet_bytes(dec.head(10)))
    rc, out = _audit(path)
    assert rc == 1 and "4 contradiction(s)" in out, out
    for needle in (f"{d0}: the retrain decision says YES but Airflow holds no run training/retrain__{d0}-planted",
                   f"{d1}: predictions scored by {doc['model_name']} v9999, a version the registry does not hold",
                   f"{d2}: the day is held by the guardrails but", f"{d3}: 10 decisions for {dec.height} predictions"):
        assert f"CONTRADICTION {needle}" in out, (needle, out)
