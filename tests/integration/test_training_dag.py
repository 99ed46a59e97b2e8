"""The training DAG against the running scheduler, through the REST API (not `dags test`): all six
tasks green, and the same model bytes and metrics as `dvc repro` on the same data and params."""
from __future__ import annotations

import hashlib

import pytest

from pipelines.core import registry as models, storage
from pipelines.core.config import load_params, parse_date
from pipelines.core.lake import training_uri
from tests.conftest import REPO, TRAIN_RANGE

pytestmark = pytest.mark.integration
TASKS = ("ingest", "validate", "features", "train", "evaluate", "register")


def test_training_dag_runs_green_and_matches_dvc_repro(stack, dvc_workspace):
    from pipelines.ops.airflow_api import AirflowClient

    ws, _ = dvc_workspace
    params = load_params(REPO / "params.yaml")
    base = training_uri(params.storage, parse_date(TRAIN_RANGE[0]), parse_date(TRAIN_RANGE[1]))
    for uri in storage.list_uris(base):        # the Airflow run must make every artifact itself
        storage.delete(uri)
    assert not storage.exists(f"{base}/train/model.ubj")

    c = models.client()
    name = params.register.model_name
    from mlflow.exceptions import MlflowException

    try:                                        # a reused test state may already hold this model
        before = {mv.tags.get("model_sha256"): str(mv.version) for mv in c.search_model_versions(f"name='{name}'")}
    except MlflowException:
        before = {}

    client = AirflowClient()
    client.wait_for_dag("training", timeout=180)
    run = client.trigger("training", {"start_date": TRAIN_RANGE[0], "end_date": TRAIN_RANGE[1], "force": True})
    done = client.wait("training", run["dag_run_id"], timeout=1200)
    states = {t["task_id"]: t["state"] for t in client.task_instances("training", run["dag_run_id"])}
    assert done["state"] == "success", states
    assert states == dict.fromkeys(TASKS, "success")

    # dvc repro (workspace snapshot) and Airflow (lake) on the same data and params: same model, same metrics
    model = storage.read_bytes(f"{base}/train/model.ubj")
    assert hashlib.sha256(model).hexdigest() == hashlib.sha256((ws / "data/train/model.ubj").read_bytes()).hexdigest()
    assert storage.read_bytes(f"{base}/evaluate/metrics.json") == (ws / "data/evaluate/metrics.json").read_bytes()
    assert storage.read_bytes(f"{base}/evaluate/reference_profile.json") == \
        (ws / "data/evaluate/reference_profile.json").read_bytes()

    # registered under the project's model name, by this Airflow run, and the model Asset was emitted
    reg = storage.read_json(f"{base}/register/registration.json")
    sha = hashlib.sha256(model).hexdigest()
    mv = c.get_model_version(name, reg["version"])
    assert mv.tags["model_sha256"] == sha
    after = c.search_model_versions(f"name='{name}'")
    if sha in before:                           # idempotent: the same version, no new one
        assert reg["version"] == before[sha] and len(after) == len(before)
    else:
        assert len(after) == len(before) + 1
        tags = c.get_run(mv.run_id).data.tags
        assert tags["registered_by"].startswith(f"airflow:training/{run['dag_run_id']}/register")
        # trained outside dvc repro: no DVC hashes of another run (the committed lock is 01-01..02-28)
        assert not [k for k in tags if k.startswith("dvc.") and k.endswith(".md5")], tags
        assert tags["dvc.lineage"].startswith("none: trained outside `dvc repro`"), tags["dvc.lineage"]
    events = client._request("GET", "/api/v2/assets/events?limit=100")["asset_events"]
    assert any(e.get("uri") == "fraudops://registry/model" and e.get("source_run_id") == run["dag_run_id"]
               for e in events), events[-3:]
