"""dvc repro on a copy of the project: runs the stages, a second repro is a no-op, a forced re-run
is byte-identical, and dvc push then dvc pull into a fresh clone restores every output."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def sh(cmd: list[str], cwd: Path, timeout: float = 900) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspace(stack, demo_raw, tmp_path_factory):
    """A git repo holding the project's files (as in a clean clone), a short date range."""
    from pipelines.stack import dvc_local_config

    ws = tmp_path_factory.mktemp("dvc") / "project"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (ws / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, ws / f)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["run"] = {"start_date": "2026-02-10", "end_date": "2026-02-14"}
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (ws / ".dvc" / "config.local").write_text(dvc_local_config(stack.s3_url))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "snapshot"]):
        sh(cmd, ws)
    return ws


def test_repro_twice_then_push_and_pull_into_a_fresh_clone(workspace, stack, tmp_path):
    ws = workspace
    out = sh(["dvc", "repro"], ws)
    for stage in ("ingest", "validate", "features"):
        assert f"Running stage '{stage}'" in out
    data = tree_digest(ws / "data")
    assert any(k.startswith("features/features/date=2026-02-14/") for k in data)
    assert any(k.startswith("validate/reports/validate/transactions/date=2026-02-10/report.html") for k in data)
    lock = (ws / "dvc.lock").read_text()

    again = sh(["dvc", "repro"], ws)
    assert "Data and pipelines are up to date" in again and "Running stage" not in again
    assert (ws / "dvc.lock").read_text() == lock

    forced = sh(["dvc", "repro", "-f"], ws)                     # re-running gives the same bytes
    assert "Running stage 'features'" in forced
    assert tree_digest(ws / "data") == data and (ws / "dvc.lock").read_text() == lock

    sh(["git", "add", "-A"], ws)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock"], ws)
    assert "pushed" in sh(["dvc", "push"], ws)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(ws), str(clone)], tmp_path)
    shutil.copy2(ws / ".dvc" / "config.local", clone / ".dvc" / "config.local")
    assert not (clone / "data").exists()
    sh(["dvc", "pull"], clone)
    assert tree_digest(clone / "data") == data
    status = sh(["dvc", "status"], clone)
    assert "up to date" in status
