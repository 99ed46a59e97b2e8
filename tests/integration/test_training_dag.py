"""The training DAG against the running scheduler, through the REST API (not `dags test`): every
task is a DVC stage run in the DAG run's own workspace; all tasks green, the same model bytes and
metrics as `dvc repro` on the same data and params, lineage tags from the run's own dvc.lock (logged
with its params to the MLflow run); the same training again is a run-cache restore of every stage."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from pipelines.core import registry as models, storage
from pipelines.core.config import load_params, parse_date
from pipelines.core.lake import training_uri
from pipelines.ops import workspace
from tests.conftest import REPO, TRAIN_RANGE, state_dir

pytestmark = pytest.mark.integration
TASKS = ("ingest", "validate", "features", "train", "evaluate", "register", "push")
CACHED = ("ingest", "validate", "features", "train", "evaluate")      # register is always forced: it has no DVC output


def test_training_dag_runs_green_and_matches_dvc_repro(stack, dvc_workspace):
    from pipelines.ops.airflow_api import AirflowClient

    ws, _ = dvc_workspace
    # params.yaml with a model name of this test's own: the registration below is always a new version
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    name = data["register"]["model_name"] = f"fraud-xgb-dag-{uuid.uuid4().hex[:6]}"
    params_file = state_dir("training-dag") / "params.yaml"
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))
    params = load_params(params_file)
    base = training_uri(params, parse_date(TRAIN_RANGE[0]), parse_date(TRAIN_RANGE[1]))
    for uri in storage.list_uris(base):        # the Airflow run must make every artifact itself
        storage.delete(uri)
    assert not storage.exists(f"{base}/train/model.ubj")
    c = models.client()

    client = AirflowClient()
    client.wait_for_dag("training", timeout=180)
    conf = {"start_date": TRAIN_RANGE[0], "end_date": TRAIN_RANGE[1], "force": True, "params_file": str(params_file)}
    started = time.monotonic()
    run = client.trigger("training", conf)
    done = client.wait("training", run["dag_run_id"], timeout=1200)
    first_took = time.monotonic() - started
    states = {t["task_id"]: t["state"] for t in client.task_instances("training", run["dag_run_id"])}
    assert done["state"] == "success", states
    assert states == dict.fromkeys(TASKS, "success")
    train_log = client.task_log("training", run["dag_run_id"], "train")
    assert "Running stage 'train'" in train_log and "train: ran (dvc repro --single-item train)" in train_log, train_log[-3000:]
    assert not workspace.path_for(run["dag_run_id"]).exists()             # pushed, then removed

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
    assert [str(v.version) for v in c.search_model_versions(f"name='{name}'")] == [reg["version"]]
    tags = c.get_run(mv.run_id).data.tags
    assert tags["registered_by"].startswith(f"airflow:training/{run['dag_run_id']}/register")
    assert tags["training.uri"] == base and base.endswith(f"/{tags['training.key']}"), (tags["training.uri"], base)
    _lineage_is_the_runs_own_lock(c, mv.run_id)
    # the evaluation page titled with the model's name and version, in the lake and on its run
    page = storage.read_bytes(f"{base}/register/report.html")
    assert f"<title>{name} v{reg['version']}</title>".encode() in page, page[:300]
    assert "evaluation_report.html" in {a.path for a in c.list_artifacts(mv.run_id)}
    events = client._request("GET", "/api/v2/assets/events?limit=100")["asset_events"]
    assert any(e.get("uri") == "fraudops://registry/model" and e.get("source_run_id") == run["dag_run_id"]
               for e in events), events[-3:]

    # the same training again: every stage with a DVC output is restored from the run-cache (no stage
    # command runs), the lake keeps the same bytes, the registry the same version
    conf["force"] = False
    started = time.monotonic()
    again = client.trigger("training", conf)
    assert client.wait("training", again["dag_run_id"], timeout=900)["state"] == "success"
    second_took = time.monotonic() - started
    for task in CACHED:
        log = client.task_log("training", again["dag_run_id"], task)
        assert f"{task}: restored from DVC's run-cache, no stage command ran" in log, (task, log[-3000:])
        assert f"Running stage '{task}'" not in log, (task, log[-3000:])
    assert storage.read_bytes(f"{base}/train/model.ubj") == model
    assert storage.read_json(f"{base}/register/registration.json")["version"] == reg["version"]
    print(f"training DAG {TRAIN_RANGE[0]}..{TRAIN_RANGE[1]}: first run {first_took:.1f} s, the same again "
          f"(run-cache) {second_took:.1f} s = {second_took / first_took:.2f}")
    assert second_took < 0.75 * first_took, (first_took, second_took)

    # two runs at once (max_active_runs 2): each in its own DVC workspace, no lock error; register one
    # at a time, so the second finds the first's version: still one version of these bytes
    pair = [client.trigger("training", conf) for _ in range(2)]
    for r in pair:
        assert client.wait("training", r["dag_run_id"], timeout=900)["state"] == "success", r["dag_run_id"]
    starts = {}
    for r in pair:
        tis = {t["task_id"]: t for t in client.task_instances("training", r["dag_run_id"])}
        starts[r["dag_run_id"]] = (tis["ingest"]["start_date"], tis["push"]["end_date"])
        assert {t: ti.get("try_number") for t, ti in tis.items() if ti.get("try_number") != 1} == {}   # no retry
        assert "Unable to acquire lock" not in client.task_log("training", r["dag_run_id"], "ingest")
    (a0, a1), (b0, b1) = starts.values()
    assert a0 < b1 and b0 < a1, starts                                      # they did overlap
    assert [str(v.version) for v in c.search_model_versions(f"name='{name}'")] == [reg["version"]]

    # `models reproduce`: the version rebuilt from its logged lock and params in a fresh workspace
    r = subprocess.run([sys.executable, "-m", "pipelines", "models", "--params", str(params_file), "reproduce",
                        reg["version"]], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and f"{name} v{reg['version']}: rebuilt byte-identical" in r.stdout, \
        r.stdout[-3000:] + r.stderr[-3000:]
    assert "Running stage 'train'" in r.stdout, r.stdout[-3000:]                # retrained, not restored
    assert storage.read_bytes(f"{base}/train/model.ubj") == model                # the registered artifacts untouched
    assert not storage.local_path(f"{params.storage.lake.rstrip('/')}/_reproduce").exists() or not any(
        p.is_file() for p in storage.local_path(f"{params.storage.lake.rstrip('/')}/_reproduce").rglob("*"))  # removed


def _lineage_is_the_runs_own_lock(c, run_id: str) -> None:
    """The model's dvc.* tags are the hashes of the dvc.lock logged with its run, whose train stage
    ran this range and whose params.yaml (logged too) names it."""
    import tempfile
    from pathlib import Path

    import mlflow
    import yaml

    tags = c.get_run(run_id).data.tags
    assert tags["dvc.lineage"] == "dvc.lock of this run (dvc repro)", tags["dvc.lineage"]
    with tempfile.TemporaryDirectory() as tmp:
        got = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="dvc", dst_path=tmp))
        lock = yaml.safe_load((got / "dvc.lock").read_text())["stages"]
        params = yaml.safe_load((got / "params.yaml").read_text())
    assert params["run"] == {"start_date": TRAIN_RANGE[0], "end_date": TRAIN_RANGE[1]}
    assert f"--start {TRAIN_RANGE[0]} --end {TRAIN_RANGE[1]}" in lock["train"]["cmd"]
    for stage in ("ingest", "validate", "features", "train", "evaluate"):
        outs = {o["path"]: o["md5"] for o in lock[stage]["outs"]}
        assert tags[f"dvc.{stage}.md5"] in outs.values(), (stage, outs, tags)
