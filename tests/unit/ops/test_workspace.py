"""The training DAG's DVC workspaces (pipelines/ops/workspace.py): the run's params, where its DVC
remotes point, and the lake restored from a stage's DVC output after a run-cache hit (a real
`dvc repro` in a workspace: tests/integration/test_training_dag)."""
from __future__ import annotations

import yaml

from pipelines.core import storage
from pipelines.ops import workspace


def test_the_run_params_are_the_file_with_the_form_dates(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"run": {"start_date": "2026-01-01", "end_date": "2026-02-28"}, "train": {"x": 1}}))
    assert workspace.run_params(f, None, None)["run"] == {"start_date": "2026-01-01", "end_date": "2026-02-28"}
    got = workspace.run_params(f, "2026-01-14", "2026-03-13")
    assert got["run"] == {"start_date": "2026-01-14", "end_date": "2026-03-13"} and got["train"] == {"x": 1}


def test_the_raw_remote_is_where_the_params_read_the_deliveries(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAUDOPS_HOME", str(tmp_path))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("FRAUDOPS_OBJECT_STORE", raising=False)
    demo = {"datasets": {"transactions": {"uri": "s3://fraudops-lake/demo/raw/transactions"},
                         "labels": {"uri": "s3://fraudops-lake/demo/raw/labels/"}}}
    assert workspace._raw_remote(demo) == "s3://fraudops-lake/demo/raw"
    config = workspace.local_config(demo)
    assert f"url = {tmp_path / 'objects' / 'fraudops-lake' / 'demo' / 'raw'}\n" in config
    assert f"url = {tmp_path / 'objects' / 'fraudops-dvc' / 'cache'}\n" in config and "[cache]" in config
    other = {"datasets": {"transactions": {"uri": "s3://b/raw/tx"}, "labels": {"uri": "s3://b/raw/labels"}}}
    try:
        workspace._raw_remote(other)
        raise AssertionError("a layout dvc.yaml does not depend on was accepted")
    except workspace.WorkspaceError as exc:
        assert "<raw>/transactions" in str(exc)


def test_on_s3_the_projects_own_local_dvc_settings_reach_the_workspace(tmp_path, monkeypatch):
    """`dvc remote modify --local lake url ...` (a production remote, its profile) in the project is
    kept in each workspace; the cache and the raw remote's url stay the run's."""
    monkeypatch.setenv("FRAUDOPS_HOME", str(tmp_path))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    own = tmp_path / "config.local"
    own.write_text("['remote \"lake\"']\n    url = s3://prod-dvc/cache\n    profile = prod\n"
                   "['remote \"raw\"']\n    url = s3://elsewhere/raw\n    profile = prod\n")
    demo = {"datasets": {"transactions": {"uri": "s3://fraudops-lake/demo/raw/transactions"},
                         "labels": {"uri": "s3://fraudops-lake/demo/raw/labels"}}}
    from configobj import ConfigObj

    got = ConfigObj(workspace.local_config(demo, own=own).splitlines())
    assert got['remote "lake"'] == {"url": "s3://prod-dvc/cache", "profile": "prod", "endpointurl": "http://127.0.0.1:9"}
    assert got['remote "raw"']["url"] == "s3://fraudops-lake/demo/raw" and got['remote "raw"']["profile"] == "prod"
    assert got["cache"]["dir"] == str(workspace.REPO / ".dvc" / "cache")
    monkeypatch.delenv("AWS_ENDPOINT_URL")          # the embedded store: the stack's own remotes only
    got = ConfigObj(workspace.local_config(demo, own=own).splitlines())
    assert got['remote "lake"']["url"] == str(tmp_path / "objects" / "fraudops-dvc" / "cache")


def test_a_restored_stage_output_goes_back_to_the_lake_records_last(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAUDOPS_OBJECT_STORE", f"file://{tmp_path / 'objects'}")
    ws = tmp_path / "ws"
    out = ws / "data" / "validate" / "validated" / "date=2026-02-01"
    out.mkdir(parents=True)
    (out / "part-0.parquet").write_bytes(b"rows")
    (out / f"{storage.RECORD_PREFIX}part-0.parquet.json").write_bytes(b"{}")
    (out / "report.html").write_bytes(b"<html>")
    monkeypatch.setattr(workspace, "snapshot_root", lambda ws, stage: "s3://lake/x")
    written = []
    real = storage.write_bytes
    monkeypatch.setattr(storage, "write_bytes", lambda uri, data, *a: (written.append(uri), real(uri, data, *a)))
    storage.write_bytes("s3://lake/x/validated/date=2026-02-01/report.html", b"<html>")   # already there
    written.clear()
    assert workspace.republish(ws, "validate") == (2, 1)
    assert written == ["s3://lake/x/validated/date=2026-02-01/part-0.parquet",
                       f"s3://lake/x/validated/date=2026-02-01/{storage.RECORD_PREFIX}part-0.parquet.json"]
    assert storage.read_bytes("s3://lake/x/validated/date=2026-02-01/part-0.parquet") == b"rows"
    assert workspace.republish(ws, "validate") == (0, 3)                  # a second restore writes nothing


def test_the_lineage_page_renders_when_no_model_was_served():
    """A date scored by the rules only: no model, MLflow run or DVC lock hop; the page still renders
    and names the problem."""
    from pipelines.ops import trace

    t = {"date": "2026-03-17", "event_id": "e1", "problems": ["no model served (rules only)"],
         "hops": {"decision": {"where": "d", "row": {"decision": "review", "reason_code": "rule:x"}, "verified": True},
                  "score": {"where": "p", "row": {"score": 0.5, "threshold": 0.3, "scored_by": "rules"}, "verified": True},
                  "model": {"where": "m", "name": None, "version": None, "scored_by": "rules"},
                  "airflow": {"where": "a", "nightly_run": None, "state": None, "url": None, "training_run": None,
                              "score_task": None},
                  "inputs": {"where": "i", "partitions": [{"depth": 1, "kind": "input", "stage": "features",
                                                           "uri": "s3://l/f", "sha256": "ab" * 32, "verified": True}],
                             "verified": True},
                  "code": {"where": "c", "features_code_version": "x", "model_git_commit": None, "params_file": "p",
                           "params_sha256": "cd" * 32}}}
    page = trace.html(t)
    assert "no model served" in page and "Problems" in page and "<script" not in page
    assert "rules only" in trace.text(t)


def test_prune_removes_the_worktrees_of_runs_that_are_over_and_keeps_the_busy_and_the_recent(tmp_path, monkeypatch):
    import fcntl
    import os
    import subprocess
    import time

    monkeypatch.setenv("FRAUDOPS_HOME", str(tmp_path))
    root = tmp_path / "workspaces"
    root.mkdir()
    names = {"over": 48, "busy": 48, "recent": 1}           # hours since the last change
    for name, hours in names.items():
        ws = root / name
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(ws), "HEAD"], cwd=workspace.REPO, check=True,
                       capture_output=True)
        old = time.time() - hours * 3600
        for f in (ws, ws / "params.yaml", ws / "dvc.lock"):
            os.utime(f, (old, old))
    try:
        with open(root / "busy.lock", "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)                 # a stage of that run is at work
            assert workspace.prune(24, dry_run=True) == [root / "over"] and (root / "over").exists()
            assert workspace.prune(24) == [root / "over"]
        assert not (root / "over").exists() and (root / "busy").exists() and (root / "recent").exists()
        listed = subprocess.run(["git", "worktree", "list"], cwd=workspace.REPO, capture_output=True, text=True).stdout
        assert str(root / "over") not in listed and str(root / "busy") in listed
        assert workspace.main(["prune", "--older-than-hours", "24"]) == 0 and not (root / "busy").exists()
    finally:
        for name in names:
            if (root / name).exists():
                subprocess.run(["git", "worktree", "remove", "--force", str(root / name)], cwd=workspace.REPO)
        subprocess.run(["git", "worktree", "prune"], cwd=workspace.REPO)
