"""dvc repro on a copy of the project: runs the stages, a second repro is a no-op, a forced re-run
is byte-identical, and dvc push then dvc pull into a fresh clone restores every output."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import sh

pytestmark = pytest.mark.integration


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_repro_twice_then_push_and_pull_into_a_fresh_clone(dvc_workspace, stack, tmp_path):
    ws, out = dvc_workspace
    for stage in ("ingest", "validate", "features", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in out
    data = tree_digest(ws / "data")
    assert any(k.startswith("features/features/date=2026-02-14/") for k in data)
    assert any(k.startswith("validate/reports/validate/transactions/date=2026-02-10/report.html") for k in data)
    assert {"train/model.ubj", "train/feature_manifest.json", "evaluate/metrics.json", "evaluate/report.html",
            "evaluate/plots/pr.json", "evaluate/images/pr.png", "evaluate/reference_profile.json"} <= set(data)
    metrics = json.loads(sh(["dvc", "metrics", "show", "--json"], ws))
    shown = json.dumps(metrics)
    assert "average_precision" in shown and "precision_at_20" in shown
    lock = (ws / "dvc.lock").read_text()
    # the model dvc repro registered carries this run's lock hashes
    from pipelines.core import registry as models

    c = models.client()
    sha = hashlib.sha256((ws / "data/train/model.ubj").read_bytes()).hexdigest()
    mv = next(v for v in c.search_model_versions("name='fraud-xgb-dvc'") if v.tags.get("model_sha256") == sha)
    tags, locked = c.get_run(mv.run_id).data.tags, yaml.safe_load(lock)["stages"]
    assert tags["dvc.lineage"] == "dvc.lock of this run (dvc repro)", tags.get("dvc.lineage")
    for stage in ("features", "train", "evaluate"):
        assert tags[f"dvc.{stage}.md5"] == locked[stage]["outs"][-1]["md5"], stage

    again = sh(["dvc", "repro"], ws)
    assert "Data and pipelines are up to date" in again and "Running stage" not in again
    assert (ws / "dvc.lock").read_text() == lock

    for stage in ("features", "train", "register"):            # re-running gives the same bytes
        forced = sh(["dvc", "repro", "-f", "-s", stage], ws)
        assert f"Running stage '{stage}'" in forced
    assert "already version" in forced                          # register: no second version
    assert tree_digest(ws / "data") == data and (ws / "dvc.lock").read_text() == lock

    sh(["git", "add", "-A"], ws)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock"], ws)
    assert "pushed" in sh(["dvc", "push"], ws)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(ws), str(clone)], tmp_path)
    shutil.copy2(ws / ".dvc" / "config.local", clone / ".dvc" / "config.local")
    assert not (clone / "data").exists()
    sh(["dvc", "pull"], clone)
    assert tree_digest(clone / "data") == {k: v for k, v in data.items() if not k.startswith("register/")}
    status = sh(["dvc", "status"], clone)
    assert "up to date" in status


OPERATIONAL = {"services"}        # how long to wait on a service: never a reason to re-run a stage


def test_each_dvc_stage_lists_every_params_key_it_reads(dvc_workspace):
    """What the stage processes of `dvc repro` actually read (pipelines/core/config.py traces it)
    is covered by the stage's `params` in dvc.yaml: a change to any of it re-runs the stage."""
    ws, _ = dvc_workspace
    listed = {name: set(spec.get("params") or []) for name, spec in
              yaml.safe_load((ws / "dvc.yaml").read_text())["stages"].items()}
    seen = set()
    for line in (ws.parent / "params-read.jsonl").read_text().splitlines():
        rec = json.loads(line)
        stage = rec["argv"][0]
        seen.add(stage)
        uncovered = [k for k in rec["read"] if k not in OPERATIONAL
                     and not any(k == p or k.startswith(p + ".") for p in listed[stage])]
        assert uncovered == [], f"dvc.yaml stage {stage} reads params {uncovered} it does not list"
    assert seen == set(listed)
