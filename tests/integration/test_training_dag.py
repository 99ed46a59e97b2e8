"""The training DAG against the running scheduler, through the REST API (not `dags test`)."""
from __future__ import annotations

import pytest

from pipelines import storage
from pipelines.config import date_range, load_params, parse_date
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_training_dag_runs_green_from_the_rest_api(stack, demo_raw):
    from pipelines.airflow_api import AirflowClient

    client = AirflowClient()
    client.wait_for_dag("training", timeout=180)
    conf = {"start_date": "2026-02-20", "end_date": "2026-02-21"}
    run = client.trigger("training", conf)
    done = client.wait("training", run["dag_run_id"], timeout=600)
    states = {t["task_id"]: t["state"] for t in client.task_instances("training", run["dag_run_id"])}
    assert done["state"] == "success", states
    assert states == {"ingest": "success", "validate": "success", "features": "success"}
    params = load_params(REPO / "params.yaml")
    for day in date_range(parse_date(conf["start_date"]), parse_date(conf["end_date"])):
        m = storage.read_json(params.storage.uri("features_manifest", date=day.isoformat()))
        assert m["rows"] > 1000 and m["date"] == day.isoformat()
