"""Closing the loop on the real stack (MLflow server, S3, the Airflow scheduler): simulated nightly
days with a champion and a shadowing challenger, their labels landing 7 days later, realized
metrics, promotion (auto and manual through the `promote` DAG), retirement of a losing
challenger, automatic rollback of a champion broken upstream, and human review verdicts as labels
of the next training.

Two real models of one registered name: A (the session's nightly champion, retrained under a name
of its own) and W (a deliberately weak one: 2 trees of depth 1). Nightly days 02-15..02-17 (their
feature partitions exist), labels landing 02-22..02-24.
"""
from __future__ import annotations

import io
import json
import uuid
from contextlib import redirect_stdout

import polars as pl
import pytest

from pipelines import decide, evaluate, feedback, lifecycle, monitor, register, score, shadow, train, validate
from pipelines.core import registry as models, storage
from pipelines.core.config import load_params
from tests.conftest import REPO, TRAIN_RANGE, nightly_params, publish, state_dir

pytestmark = pytest.mark.integration
D1, D2, D3 = "2026-02-15", "2026-02-16", "2026-02-17"
L1, L2, L3 = "2026-02-22", "2026-02-23", "2026-02-24"
OWN_OUTPUTS = ("predictions", "scored_model", "scoring_stats", "features_observed", "decisions", "decision_summary",
               "review_queue", "overrides", "shadow_predictions", "shadow_model", "shadow_stats",
               "shadow_features_observed", "feedback", "feedback_summary",
               "realized", "feedback_report", "lifecycle_decision", "alerts", "monitoring", "monitoring_perf",
               "monitor_report", "monitor_index", "retrain_decision")


def _quiet(fn, argv):
    with redirect_stdout(io.StringIO()) as buf:
        assert fn(argv) == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def models_aw(nightly_champion, tmp_path_factory):
    """A registered model name holding A (cold start: champion) and W (fails the gate: no alias)."""
    name = f"fraud-xgb-loop-{uuid.uuid4().hex[:6]}"
    root = state_dir("loop")

    def params_a(d):
        d["storage"]["layout"]["training"] = f"test-nightly/{nightly_champion['name']}/{{run}}"
        d["register"]["model_name"] = name

    def params_w(d):
        d["storage"]["layout"]["training"] = f"test-loop/{name}/weak/{{run}}"
        d["register"]["model_name"] = name
        d["train"]["search"] = {"max_depth": [1], "learning_rate": [0.1], "scale_pos_weight": [1.0]}
        d["train"]["num_boost_round"] = 2

    rng = ["--start", TRAIN_RANGE[0], "--end", TRAIN_RANGE[1]]
    (root / "a").mkdir()
    (root / "w").mkdir()
    pa = nightly_params(name, root / "a", params_a)
    _quiet(register.main, ["--params", str(pa), *rng])                    # A's artifacts exist: register only
    pw = nightly_params(name, root / "w", params_w)
    for stage in (train, evaluate):
        assert stage.main(["--params", str(pw), *rng]) == 0
    _quiet(register.main, ["--params", str(pw), *rng])
    c = models.client()
    vs = sorted(int(v.version) for v in c.search_model_versions(f"name='{name}'"))
    assert len(vs) == 2
    a, w = str(vs[0]), str(vs[1])
    assert models.aliases(c, name) == {"champion": a}                     # W did not pass the gate
    return {"name": name, "a": a, "w": w, "root": root, "client": c, "params_a": pa}


def scenario(models_aw, tag: str, champion: str, challenger: str | None, mutate=None):
    """Params with outputs of their own, the aliases set (as a person would, recorded in the history)."""
    name, c = models_aw["name"], models_aw["client"]
    sub = models_aw["root"] / tag
    sub.mkdir()

    def mut(d):
        for k in OWN_OUTPUTS:
            d["storage"]["layout"][k] = f"test-loop/{name}/{tag}/" + d["storage"]["layout"][k]
        d["register"]["model_name"] = name
        if mutate:
            mutate(d)

    path = nightly_params(name, sub, mut)
    models.promote(c, name, champion, f"test setup: {tag}")
    models.move_alias(c, name, "challenger", challenger, f"test setup: {tag}")
    return path


def night(path, day):
    """score (champion) -> shadow (challenger) -> decide, as the nightly DAG does."""
    for stage in (score, shadow, decide):
        _quiet(stage.main, ["--params", str(path), "--date", day])


def labels_in(path, day):
    """The labels of `day` validated with their suite, fed back; then the lifecycle decision."""
    _quiet(validate.main, ["--params", str(path), "--date", day, "--dataset", "labels"])
    _quiet(feedback.main, ["--params", str(path), "--date", day])
    return json.loads(_quiet(lifecycle.main, ["--params", str(path), "--date", day]).strip().splitlines()[-1])


def test_better_challenger_shadows_wins_and_is_promoted_automatically(models_aw):
    name, a, w, c = models_aw["name"], models_aw["a"], models_aw["w"], models_aw["client"]
    path = scenario(models_aw, "auto", champion=w, challenger=a)
    store = load_params(path).storage
    for day in (D1, D2):
        night(path, day)
    pred = storage.read_parquet(store.uri("predictions", date=D1))
    sh = storage.read_parquet(store.uri("shadow_predictions", date=D1))
    dec = storage.read_parquet(store.uri("decisions", date=D1))
    assert set(pred["model_version"]) == {w} and set(sh["model_version"]) == {a}
    assert sh["event_id"].to_list() == pred["event_id"].to_list()                # same partition, same rows
    assert dec["score"].equals(pred["score"])                                     # decisions ride the champion only

    first = labels_in(path, L1)
    assert first["promotion"] == "wait" and models.aliases(c, name)["champion"] == w
    second = labels_in(path, L2)
    assert second["promotion"] == "promote", second
    al = models.aliases(c, name)
    assert al["champion"] == a and al["previous"] == w and "challenger" not in al
    last = [h for h in models.history(c, name) if h["alias"] == "champion"][-1]
    assert last["from"] == w and last["to"] == a and last["reason"].startswith("automatic after shadow")
    assert f"[lifecycle decision {store.uri('lifecycle_decision', date=L2)}]" in last["reason"]

    # the day's report: realized metrics per model version and the shadow comparison
    summ = storage.read_json(store.uri("feedback_summary", date=D2))
    assert set(summ["realized"]["champion"]) == {w} and set(summ["realized"]["challenger"]) == {a}
    cmp_ = summ["comparison"]
    assert cmp_["challenger"] > cmp_["champion"] and cmp_["rows"] == summ["accounting"]["labels_matched"]
    acc = summ["accounting"]
    assert acc["labels_in"] == acc["labels_matched"] + acc["labels_unmatched"] + acc["labels_repeated"]
    assert acc["rows_out"] == acc["predictions"] == storage.read_parquet(store.uri("predictions", date=D2)).height
    page = storage.read_bytes(store.uri("feedback_report", date=D2)).decode()
    assert f"v{w}" in page and f"v{a}" in page and "Shadow comparison" in page and "challenger ahead" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    # the nightly monitoring report of a later run shows them too, and the index links the day's report
    _quiet(monitor.main, ["--params", str(path), "--date", D2])
    page = storage.read_bytes(store.uri("monitor_report", date=D2)).decode()
    assert "Realized performance" in page and f"<td>challenger</td><td>v{a}</td>" in page and f"<td>champion</td><td>v{w}</td>" in page
    assert f"../feedback/date={D2}/report.html" in storage.read_bytes(store.uri("monitor_index")).decode()
    realized = storage.read_parquet(store.uri("realized", date=D2))
    assert {"error_rate", "average_precision", "decision.block.fraud", "precision_at_20"} <= set(realized["metric"])
    assert set(realized.filter(pl.col("role") != "review")["model_version"]) == {a, w}

    # every report kind in a real browser (headless Chromium): it loads whole at 1400 px, no failed
    # request, no script error; screenshots in test-artifacts/browser/
    from pipelines.core.config import parse_date
    from pipelines.core.lake import training_uri
    from tests.browser import check_lake_pages

    champion = load_params(models_aw["params_a"])             # A's training: its evaluation page
    tmp = state_dir("browser")
    got = check_lake_pages({
        "feedback_day": store.uri("feedback_report", date=D2), "monitor_day": store.uri("monitor_report", date=D2),
        "monitor_index": store.uri("monitor_index"),
        "validation_day": store.uri("validation_report", dataset="transactions", date=D2),
        # titled with the model's name and version at registration (evaluate/report.html: the candidate's)
        "evaluation": f"{training_uri(champion, parse_date(TRAIN_RANGE[0]), parse_date(TRAIN_RANGE[1]))}/register/report.html",
        "validation_index": store.uri("validation_index"),
    }, tmp)
    assert got["feedback_day"]["title"] == f"Feedback {D2}" and got["monitor_day"]["title"] == f"Monitoring {D2}"
    import re                               # (the last registration of those bytes names the page)
    assert re.fullmatch(r"fraud-xgb\S* v\d+", got["evaluation"]["title"]), got["evaluation"]["title"]
    assert got["validation_index"]["title"] == "Validation runs"


def test_manual_mode_waits_for_the_promote_dag_with_confirm(models_aw):
    from pipelines.ops.airflow_api import AirflowClient

    name, a, w, c = models_aw["name"], models_aw["a"], models_aw["w"], models_aw["client"]
    path = scenario(models_aw, "manual", champion=w, challenger=a,
                    mutate=lambda d: d["promotion"].update({"mode": "manual"}))
    for day in (D1, D2):
        night(path, day)
    labels_in(path, L1)
    # the labels of the second shadow day go through the `labels` DAG on the scheduler
    client = AirflowClient()
    client.wait_for_dag("labels")
    stale = client._request("GET", f"/api/v2/dags/labels/dagRuns?logical_date_gte={L2}T00:00:00Z"
                                   f"&logical_date_lte={L2}T00:00:00Z")["dag_runs"]
    for r in stale:             # a reused test state may hold a run of this date (logical dates are unique)
        client._request("DELETE", f"/api/v2/dags/labels/dagRuns/{r['dag_run_id']}")
    run = client.trigger("labels", {"params_file": str(path)}, run_id=f"test-loop-{uuid.uuid4().hex[:8]}",
                         logical_date=f"{L2}T00:00:00Z")
    run = client.wait("labels", run["dag_run_id"], timeout=600)
    tis = {t["task_id"]: t["state"] for t in client.task_instances("labels", run["dag_run_id"])}
    assert run["state"] == "success" and set(tis.values()) == {"success"}, tis
    rec = storage.read_json(load_params(path).storage.uri("lifecycle_decision", date=L2))
    assert rec["promotion"]["action"] == "awaiting_manual_promotion", rec["promotion"]
    assert [a["kind"] for a in rec["alerts"]] == ["promotion_ready"]
    assert models.aliases(c, name)["champion"] == w                                 # nothing moved by itself

    client.wait_for_dag("promote")
    conf = {"version": a, "reason": "reviewed the shadow report", "params_file": str(path)}
    refused = client.trigger("promote", {**conf, "confirm": False})
    assert client.wait("promote", refused["dag_run_id"], timeout=300)["state"] == "failed"
    assert models.aliases(c, name)["champion"] == w
    done = client.trigger("promote", {**conf, "confirm": True})
    assert client.wait("promote", done["dag_run_id"], timeout=300)["state"] == "success"
    al = models.aliases(c, name)
    assert al["champion"] == a and al["previous"] == w
    last = [h for h in models.history(c, name) if h["alias"] == "champion"][-1]
    assert last["reason"] == "reviewed the shadow report" and last["by"].startswith("airflow:promote/")


def test_losing_challenger_is_retired_with_its_reason(models_aw):
    name, a, w, c = models_aw["name"], models_aw["a"], models_aw["w"], models_aw["client"]
    path = scenario(models_aw, "lose", champion=a, challenger=w)
    for day in (D1, D2):
        night(path, day)
    assert labels_in(path, L1)["promotion"] == "wait"
    rec = labels_in(path, L2)
    assert rec["promotion"] == "retire" and "challenger_retired" in rec["alerts"]
    al = models.aliases(c, name)
    assert al["champion"] == a and "challenger" not in al
    retired = c.get_model_version(name, w).tags["retired"]
    assert "ahead of the champion on 0 of 2" in retired
    last = [h for h in models.history(c, name) if h["alias"] == "challenger"][-1]
    assert last["from"] == w and last["to"] is None and "retired after shadow" in last["reason"]
    decision = storage.read_json(load_params(path).storage.uri("lifecycle_decision", date=L2))
    assert decision["promotion"]["action"] == "retire" and len(decision["promotion"]["days"]) == 2


def test_champion_broken_upstream_is_rolled_back_the_day_its_labels_land(models_aw):
    name, a, w, c = models_aw["name"], models_aw["a"], models_aw["w"], models_aw["client"]
    tag = "rollback"

    def broken_features(d):      # the features of D3 come from a copy where `amount` arrives in cents
        d["storage"]["layout"]["features"] = f"test-loop/{name}/{tag}/features/date={{date}}/part-0.parquet"
        d["storage"]["layout"]["features_manifest"] = f"test-loop/{name}/{tag}/features/date={{date}}/_manifest.json"

    path = scenario(models_aw, tag, champion=w, challenger=None, mutate=broken_features)
    models.promote(c, name, a, "test setup: A replaces W")                        # W is `previous`
    params = load_params(path)
    shared = load_params(REPO / "params.yaml").storage                          # the session's feature partitions
    for day in (D2, D3):
        part = storage.read_parquet(shared.uri("features", date=day))
        if day == D3:            # amounts in cents from today; the ratios divide them by a history in euros
            part = part.with_columns(pl.col(c) * 100 for c in ("amount", "amount_over_customer_mean_30d",
                                                              "amount_over_customer_max_7d"))
        publish(params.storage.uri("features", date=day), part,
                {params.storage.uri("features_manifest", date=day): storage.read_bytes(shared.uri("features_manifest",
                                                                                                 date=day))})
        night(path, day)
    healthy = labels_in(path, L2)
    assert not healthy["rollback"] and models.aliases(c, name)["champion"] == a
    rec = labels_in(path, L3)
    decision = storage.read_json(params.storage.uri("lifecycle_decision", date=L3))
    assert rec["rollback"] and "rolled_back" in rec["alerts"], decision["rollback"]
    assert models.aliases(c, name)["champion"] == w
    last = [h for h in models.history(c, name) if h["alias"] == "champion"][-1]
    assert last["from"] == a and last["to"] == w and "error_rate" in last["reason"] and D3 in last["reason"]
    assert c.get_model_version(name, a).tags.get("rolled_back")
    assert decision["rollback"]["realized"] > 2 * decision["rollback"]["baseline"]
    moved = len(models.history(c, name))
    again = labels_in(path, L3)              # a re-run moves nothing, and its record keeps the first run's moves
    assert not again["rollback"] and models.aliases(c, name)["champion"] == w and len(models.history(c, name)) == moved
    redo = storage.read_json(params.storage.uri("lifecycle_decision", date=L3))
    assert [(m["alias"], m["from"], m["to"]) for m in redo["moves"]] == \
        [(m["alias"], m["from"], m["to"]) for m in decision["moves"]] and redo["moves_of_earlier_attempts"] == len(decision["moves"])


def test_review_verdicts_are_labels_of_the_next_training_with_provenance(models_aw, nightly_champion):
    """A verdict on an event whose feed label never came becomes its label (source review); a
    verdict on a labelled event is kept as provenance next to the feed label, which wins."""
    name = models_aw["name"]
    tag = "reviews"
    day, land = "2026-01-25", "2026-02-01"          # a train-window day and the day its labels landed

    def own(d):
        d["storage"]["layout"]["canonical"] = f"test-loop/{name}/{tag}/canonical/{{dataset}}/date={{date}}/part-0.parquet"
        d["storage"]["layout"]["training"] = f"test-loop/{name}/{tag}/training/{{run}}"
        d["storage"]["layout"]["overrides"] = f"test-loop/{name}/{tag}/overrides/date={{date}}/part-0.parquet"

    (models_aw["root"] / tag).mkdir()
    path = nightly_params(name, models_aw["root"] / tag, own)
    params = load_params(path)
    shared = load_params(REPO / "params.yaml").storage                          # the session's partitions
    from pipelines.core.config import date_range, parse_date

    # this training reads its labels from a copy; in the copy, one event's feed label never came
    for d in date_range(parse_date("2026-01-27"), parse_date("2026-02-28")):
        part = storage.read_parquet(shared.uri("canonical", dataset="labels", date=d.isoformat()))
        publish(params.storage.uri("canonical", dataset="labels", date=d.isoformat()), part)
    feats = storage.read_parquet(shared.uri("features", date=day)).select("event_id")
    lost, kept = feats["event_id"][10], feats["event_id"][11]
    part = storage.read_parquet(params.storage.uri("canonical", dataset="labels", date=land))
    feed_kept = int(part.filter(pl.col("event_id") == kept)["label"][0])
    publish(params.storage.uri("canonical", dataset="labels", date=land), part.filter(pl.col("event_id") != lost))
    for ev, verdict in ((lost, "block"), (kept, "approve" if feed_kept else "block")):     # the second disagrees
        _quiet(decide.main, ["override", "--params", str(path), "--date", day, "--event-id", ev, "--decision", verdict,
                             "--reviewer", "ana", "--note", "called the customer"])
    assert train.main(["--params", str(path), "--start", TRAIN_RANGE[0], "--end", TRAIN_RANGE[1]]) == 0
    from pipelines.core.lake import training_uri

    base = training_uri(params, parse_date(TRAIN_RANGE[0]), parse_date(TRAIN_RANGE[1]))
    lab = storage.read_parquet(f"{base}/train/labels.parquet")
    row = lab.filter(pl.col("event_id") == lost).to_dicts()[0]
    assert row["label"] == 1 and row["label_source"] == "review" and row["reviewer"] == "ana"
    row = lab.filter(pl.col("event_id") == kept).to_dicts()[0]
    assert row["label"] == feed_kept and row["label_source"] == "feed" and row["review_label"] == 1 - feed_kept
    assert row["review_agrees"] is False and row["reviewer"] == "ana"
    summary = storage.read_json(f"{base}/train/summary.json")
    assert summary["labels"]["review_only"] == 1 and summary["labels"]["disagree"] == 1 and summary["labels"]["verdicts"] == 2
    assert summary["rows"]["rows_labelled"] == lab.height
