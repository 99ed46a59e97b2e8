"""The loop recovers, end to end on the real stack (object store, MLflow server and registry): the
demo's short scenario (params.demo.yaml over params.yaml: labels 1 day late, 3-day windows, drift
with a new fraud pattern from 03-03) in a lake and under a model name of its own.

The nights and label days run in one process with the same stage entry points the DAGs' tasks run
(`pipelines.ops.nightly`), and a retrain decision runs the training stages for the window it names,
as the training DAG would: the scheduler's part (triggered runs, their order, the blocked night) is
covered by test_nightly_dag and by `make demo`, which runs this scenario on Airflow.

Asserted: the drift is flagged; the retrain request waits for the labels of 10 days from the onset,
visibly; the retrained model learns from post-onset days, passes the gate, shadows the champion and
is promoted by the labels, and no new request opens meanwhile or after; the realized AP of the champion drops during the drift and is back to at
least 90 % of its pre-drift level after the promotion."""
from __future__ import annotations

import datetime as dt
import io
import uuid
from contextlib import redirect_stdout

import pytest

from tests.conftest import REPO, state_dir
from pipelines import evaluate, features, ingest, register, train, validate
from pipelines.core import registry as models, storage
from pipelines.core.config import date_range, load_params
from pipelines.ops import demo_data
from pipelines.ops.demo import recovery, recovery_phases, scenario_params
from pipelines.ops.nightly import run_day, run_labels_day

pytestmark = pytest.mark.integration


def _train(path: str, start: dt.date, end: dt.date, with_data: bool) -> None:
    rng = ["--params", path, "--start", start.isoformat(), "--end", end.isoformat()]
    with redirect_stdout(io.StringIO()):
        if with_data:
            assert ingest.main([*rng, "--with-lookback"]) == 0
            assert validate.main([*rng, "--with-lookback"]) == 0
            assert features.main(rng) == 0
        assert train.main(rng) == 0 and evaluate.main(rng) == 0 and register.main(rng) == 0


def test_drift_waits_for_labels_retrains_promotes_and_recovers(stack):
    tag = uuid.uuid4().hex[:8]
    root = state_dir("recovery")
    lake = f"s3://fraudops-lake/test-recovery-{tag}"
    path = str(scenario_params(REPO / "params.yaml", REPO / "params.demo.yaml", root / "params.yaml", extra={
        "storage": {"lake": lake},
        "datasets": {"transactions": {"uri": f"{lake}/raw/transactions"}, "labels": {"uri": f"{lake}/raw/labels"}},
        "register": {"model_name": f"fraud-xgb-recovery-{tag}"},
        "score": {"cache_dir": str(root / "model-cache")}}))
    params = load_params(path)
    store, run, name = params.storage, params.run, params.register.model_name
    dp = demo_data.DemoParams.from_dict(params.section("demo_data"))
    delay, k = params.dataset("labels").delay_days, params.retrain.min_labelled_days_after_onset
    onset = dp.drift.start_date
    with redirect_stdout(io.StringIO()):
        assert demo_data.main(["--params", path]) == 0
    _train(path, run.start_date, run.end_date, with_data=True)
    c = models.client()
    first = models.get_alias(c, name, "champion")
    assert first is not None

    nights = date_range(*dp.nightly)
    decisions, moves = {}, []
    for day in nights:
        if day >= nights[0] + dt.timedelta(days=delay):
            moves += [(day, m) for m in run_labels_day(path, day)["lifecycle"]["moves"]]
        d = decisions[day] = run_day(path, day)["decision"]
        if d["retrain"]:
            conf = d["training"]["conf"]
            _train(path, dt.date.fromisoformat(conf["start_date"]), dt.date.fromisoformat(conf["end_date"]),
                   with_data=False)

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

    phases = recovery_phases(store, nights, onset)
    print(recovery(store, nights, onset))
    before, during, after = (phases[p] for p in ("before the drift", "during (old champion)", "after the promotion"))
    assert before["days"] >= 2 and during["days"] >= 5 and after["days"] >= 3, phases
    assert during["average_precision"] < before["average_precision"], phases          # the drift hurt
    assert after["average_precision"] >= 0.9 * before["average_precision"], phases     # and the loop recovered
