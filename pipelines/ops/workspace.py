"""A DVC workspace per training run: every task of the training DAG is a DVC stage run.

`python -m pipelines workspace repro --run-id R --stage S [--params F] [--start D --end D] [--force]`
`python -m pipelines workspace push --run-id R [--keep]`
`python -m pipelines workspace path --run-id R`
`python -m pipelines workspace prune [--older-than-hours H] [--dry-run]`

The workspace of run R is a git worktree of the deployed commit (the project's HEAD) under
$FRAUDOPS_HOME/workspaces/<R>, made anew by the run's first stage (ingest; a retry too) and used by
the later ones:
  * its params.yaml is the run's params file with the form's dates as run.start_date/run.end_date,
    so the stage commands of dvc.yaml (`python -m pipelines <stage> --start ${run.start_date} ...`)
    run exactly the run's range and settings;
  * it shares the project's DVC cache (.dvc/cache: the run-cache too) and remotes, and its DVC
    lock is its own: two training runs at once never wait for each other's lock;
  * its `raw` remote is where the run's params read the raw deliveries (the dvc.yaml dependencies
    remote://raw/transactions and remote://raw/labels hash what the stages really read).

`repro` runs `dvc repro --single-item S` there. A stage whose code, params and inputs are unchanged
since some run of it is restored from DVC's run-cache (no stage command runs; the task log says
so). The stages publish to the lake as they run; a restored stage did not, so `repro` re-publishes
its DVC outputs (the bytes the stage published then, records included, under data/<stage>/) to the
lake: each object whose bytes differ, partition records last. After `register` (which logs this
workspace's dvc.lock and params.yaml to the model's MLflow run and takes the lineage tags from that
lock), `push` sends the run's outputs to the DVC remote and removes the worktree (kept for a failed
run, to look at, until `prune` removes the workspaces no stage holds that have not changed for
--older-than-hours, default 24).

No Airflow here: the DAG (dags/training.py) passes the run id and the form's values as arguments.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipelines.core import state, storage
from pipelines.core.state import REPO

# the training stages of dvc.yaml; each writes its DVC output under data/<stage>/ (--snapshot)
STAGES = ("ingest", "validate", "features", "train", "evaluate", "register")
RESTORED = re.compile(r"Stage '(?P<stage>[\w-]+)' (is cached - skipping run|didn't change, skipping)")
EXITED = re.compile(r"exited with (?P<code>\d+)")


class WorkspaceError(RuntimeError):
    pass


def slug(run_id: str) -> str:
    """A folder name for a run id (Airflow's ids hold ':' and '+'): readable, unique by a hash."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", run_id).strip("_")[:80] or "run"
    return f"{safe}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


def path_for(run_id: str) -> Path:
    return state.state_dir() / "workspaces" / slug(run_id)


def _git(*args: str, cwd: Path = REPO) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise WorkspaceError(f"git {' '.join(args)}: {(r.stderr or r.stdout).strip()[-500:]}")
    return r.stdout.strip()


def run_params(params_file: str | Path, start: str | None, end: str | None) -> dict:
    """The run's params: the file's, with the form's dates (when given) as the run's range."""
    data = yaml.safe_load(Path(params_file).read_text()) or {}
    run = dict(data.get("run") or {})
    if start:
        run["start_date"] = start
    if end:
        run["end_date"] = end
    data["run"] = run
    return data


def _raw_remote(data: dict) -> str:
    """Where the run's params read the raw deliveries, as the url of DVC's `raw` remote: the folder
    that holds <transactions> and <labels> (dvc.yaml depends on remote://raw/transactions and
    remote://raw/labels)."""
    sets = data.get("datasets") or {}
    uris = {name: str((sets.get(name) or {}).get("uri", "")).rstrip("/") for name in ("transactions", "labels")}
    parents = {u.rsplit("/", 1)[0] for u in uris.values()}
    if any(u.rsplit("/", 1)[-1] != n for n, u in uris.items()) or len(parents) != 1:
        raise WorkspaceError(f"datasets {uris}: the training DAG's DVC stages depend on <raw>/transactions and "
                             f"<raw>/labels; these params keep them elsewhere (run the stages without DVC)")
    return parents.pop()


def local_config(data: dict, own: Path | None = None) -> str:
    """.dvc/config.local of a workspace: the stack's remotes; on S3 (production), the project's own
    local settings over them (`own`, default .dvc/config.local: `dvc remote modify --local ...` for a
    production remote, its credentials profile, an endpoint; the embedded file store's stack writes
    that file itself, for its own home only); then what is the run's own: the project's DVC cache
    and the `raw` remote's url where the run's params read the raw deliveries."""
    from configobj import ConfigObj      # DVC's own config reader and writer (a dependency of dvc)

    from pipelines.ops import stack

    raw, lay = _raw_remote(data), stack.layout()
    merged = ConfigObj(stack.dvc_local_config(lay, raw=raw).splitlines())
    raw_url = (merged.get('remote "raw"') or {}).get("url") or raw
    own = REPO / ".dvc" / "config.local" if own is None else own
    if lay.s3 and own.exists():
        merged.merge(ConfigObj(str(own)))
    merged.setdefault("cache", {})["dir"] = str(REPO / ".dvc" / "cache")
    merged.setdefault('remote "raw"', {})["url"] = raw_url
    return "\n".join(merged.write()) + "\n"


def prepare(run_id: str, params_file: str | Path, start: str | None, end: str | None, fresh: bool = False) -> Path:
    """The run's workspace: made anew by the run's first stage (`fresh`: a retry or a cleared run
    starts from the deployed commit again), found by the later ones."""
    ws = path_for(run_id)
    text = yaml.safe_dump(run_params(params_file, start, end), sort_keys=False)
    if not fresh:
        if not (ws / ".git").exists():
            raise WorkspaceError(f"no workspace for run {run_id!r} ({ws}): its first stage ({STAGES[0]}) makes it; "
                                 f"clear the run from {STAGES[0]}")
        if (ws / "params.yaml").read_text() != text:
            raise WorkspaceError(f"workspace {ws}: made for other params than this task's ({params_file}, {start}..{end})")
        return ws
    commit = _git("rev-parse", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        print(f"workspace: the project ({REPO}) has uncommitted changes; this run uses commit {commit[:12]} "
              f"without them (commit them to train with them)", file=sys.stderr, flush=True)
    ws.parent.mkdir(parents=True, exist_ok=True)
    if ws.exists():                 # an earlier try of this run: start again from the deployed commit
        shutil.rmtree(ws)
    _git("worktree", "prune")
    _git("worktree", "add", "--detach", "--force", str(ws), commit)
    (ws / "params.yaml").write_text(text)
    (ws / ".dvc" / "config.local").write_text(local_config(yaml.safe_load(text)))
    print(f"workspace {ws}: git worktree of {commit[:12]}, params from {params_file} "
          f"(run {start or 'run.start_date'}..{end or 'run.end_date'})", flush=True)
    return ws


def _env(force: bool = False) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)       # `python` and `dvc` of the project's environment
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "PYTHONPATH": ""}          # the workspace's own code, never the project's
    if force:
        env["FRAUDOPS_TRAIN_FORCE"] = "1"       # train retrains even when the lake holds its model
    return env


def _dvc(ws: Path, *args: str, force: bool = False) -> tuple[int, str]:
    """A DVC command in the workspace, its output streamed to ours (the task log) and returned."""
    proc = subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=ws, env=_env(force), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line)
    return proc.wait(), "".join(lines)


def snapshot_root(ws: Path, stage: str) -> str:
    """Where in the lake the stage's DVC output folder (data/<stage>) was published: the lake itself
    for the data stages, <training uri>/<stage> for train and evaluate (pipelines.core.modelio.StageOutput)."""
    from pipelines.core import lake
    from pipelines.core.config import load_params

    params = load_params(ws / "params.yaml")
    if stage in ("ingest", "validate", "features"):
        return params.storage.lake.rstrip("/")
    return f"{lake.training_uri(params, params.run.start_date, params.run.end_date)}/{stage}"


def republish(ws: Path, stage: str) -> tuple[int, int]:
    """After a cache restore: the stage's DVC output back into the lake (objects whose bytes differ;
    partition records after their objects). Returns (written, already there)."""
    root, folder = snapshot_root(ws, stage), ws / "data" / stage
    files = sorted((f for f in folder.rglob("*") if f.is_file()),
                   key=lambda f: (f.name.startswith(storage.RECORD_PREFIX), f.as_posix()))
    written = same = 0
    for f in files:
        uri = f"{root}/{f.relative_to(folder).as_posix()}"
        data = f.read_bytes()
        if storage.exists(uri) and storage.read_bytes(uri) == data:
            same += 1
            continue
        storage.write_bytes(uri, data)
        written += 1
    return written, same


def repro(run_id: str, stage: str, params_file: str, start: str | None, end: str | None, force: bool) -> int:
    if stage not in STAGES:
        raise WorkspaceError(f"stage {stage!r}: not a training stage ({', '.join(STAGES)})")
    import fcntl

    path_for(run_id).parent.mkdir(parents=True, exist_ok=True)
    with open(path_for(run_id).with_name(path_for(run_id).name + ".lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)   # a second try of the same task (a reset) waits: never two in one workspace
        return _repro(run_id, stage, params_file, start, end, force)


def _reviewed(ws: Path) -> bool:
    """Whether reviewers' verdicts exist in the run's range: train and evaluate read them from the
    lake, and they are not a DVC dependency, so those stages are then never restored from the cache."""
    from pipelines.core.config import date_range, load_params
    from pipelines.core.reviews import has_overrides

    params = load_params(ws / "params.yaml")
    return any(has_overrides(params.storage, d)
               for d in date_range(params.run.start_date, params.run.end_date))


def _repro(run_id: str, stage: str, params_file: str, start: str | None, end: str | None, force: bool) -> int:
    ws = prepare(run_id, params_file, start, end, fresh=stage == STAGES[0])
    if stage == "register":
        force = True         # no DVC output: DVC would skip it when the lock matches; registering is idempotent
    elif stage in ("train", "evaluate") and not force and _reviewed(ws):
        print(f"{stage}: reviewers' verdicts exist in the range (not a DVC dependency): the stage runs, its own "
              f"fingerprint decides whether to reuse the lake's model", flush=True)
        code, out = _dvc(ws, "repro", "--single-item", "--force", stage)
        return _finish(ws, stage, code, out)
    code, out = _dvc(ws, "repro", "--single-item", stage, *(["--force"] if force else []),
                     force=force and stage == "train")
    return _finish(ws, stage, code, out)


def _finish(ws: Path, stage: str, code: int, out: str) -> int:
    if code != 0:
        m = EXITED.findall(out)        # the stage command's own exit code, DVC's last word (a data block is not retried)
        print(f"dvc repro {stage} failed in {ws}", file=sys.stderr)
        return int(m[-1]) if m else code
    restored = [m.group("stage") for m in RESTORED.finditer(out)]
    if stage in restored:
        written, same = republish(ws, stage)
        print(f"{stage}: restored from DVC's run-cache, no stage command ran (its code, params and inputs are "
              f"those of an earlier run); lake: {written} object(s) re-published, {same} already there", flush=True)
    else:
        print(f"{stage}: ran (dvc repro --single-item {stage}); lock entry written to {ws / 'dvc.lock'}", flush=True)
    return 0


def push(run_id: str, keep: bool) -> int:
    ws = path_for(run_id)
    if not (ws / ".git").exists():
        raise WorkspaceError(f"no workspace for run {run_id!r} ({ws})")
    code, _ = _dvc(ws, "push")
    if code != 0:
        return code
    if not keep:
        _git("worktree", "remove", "--force", str(ws))
        ws.with_name(ws.name + ".lock").unlink(missing_ok=True)
        print(f"workspace {ws} removed (its dvc.lock and params are in the model's MLflow run)", flush=True)
    return 0


def prune(older_than_hours: float, dry_run: bool = False) -> list[Path]:
    """Remove the workspaces of runs that are over: no task holds the folder's lock (a running or
    retrying stage holds it) and nothing in it changed for `older_than_hours` (a failed run's
    worktree is kept that long to look at). Returns the folders removed (or, dry run, to remove)."""
    import fcntl
    import time

    root = state.state_dir() / "workspaces"
    if not root.is_dir():
        return []
    cutoff, gone = time.time() - older_than_hours * 3600, []
    for ws in sorted(p for p in root.iterdir() if p.is_dir()):
        newest = max([ws.stat().st_mtime, *(f.stat().st_mtime for f in (ws / "params.yaml", ws / "dvc.lock") if f.exists())])
        if newest > cutoff:
            continue
        lock = ws.with_name(ws.name + ".lock")
        with open(lock, "a") as held:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:         # a stage of that run is at work
                continue
            if not dry_run:
                if (ws / ".git").exists():
                    _git("worktree", "remove", "--force", str(ws))
                shutil.rmtree(ws, ignore_errors=True)      # a folder git no longer knows
                lock.unlink(missing_ok=True)
            gone.append(ws)
    if not dry_run:
        _git("worktree", "prune")
    return gone


def reproduce(name: str, version: str, keep: bool = False) -> dict:
    """Rebuild model `name` version `version` and compare its sha256 with the registered one. In a
    fresh workspace of the commit it was trained at, with the dvc.lock and params logged with its
    MLflow run, train's DVC dependencies pulled, `dvc repro --single-item --force train` retrains it (the stage command runs, the
    lake's model is not reused) from the lake's feature partitions of its range, each verified
    against its lineage record as every read is. Its outputs go to a scratch training path of the
    lake (storage.layout.training under _reproduce/), removed afterwards: the registered model's
    artifacts are never touched."""
    import tempfile
    import uuid

    import mlflow

    from pipelines.core import registry

    c = registry.client()
    mv = c.get_model_version(name, version)
    tags = c.get_run(mv.run_id).data.tags
    expected = mv.tags.get("model_sha256") or tags.get("model_sha256")
    if not str(tags.get("dvc.lineage", "")).startswith("dvc.lock of this run"):
        raise WorkspaceError(f"{name} v{version}: no DVC lock to rebuild it from ({tags.get('dvc.lineage', 'no dvc.lineage tag')})")
    commit = str(tags.get("git.commit", ""))
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise WorkspaceError(f"{name} v{version}: git.commit tag {commit[:60]!r} is not a commit id")
    tag = uuid.uuid4().hex[:8]
    ws = state.state_dir() / "workspaces" / f"reproduce-{slug(f'{name}-v{version}')}-{tag}"
    ws.parent.mkdir(parents=True, exist_ok=True)
    _git("worktree", "add", "--detach", "--force", str(ws), commit)
    scratch = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            logged = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="dvc", dst_path=tmp))
            if (ws / "dvc.yaml").read_bytes() != (logged / "dvc.yaml").read_bytes():
                raise WorkspaceError(f"{name} v{version}: the logged dvc.yaml is not commit {commit[:12]}'s")
            shutil.copy2(logged / "dvc.lock", ws / "dvc.lock")
            data = yaml.safe_load((logged / "params.yaml").read_text())
        layout = data["storage"]["layout"]
        layout["training"] = f"_reproduce/{tag}/{layout['training']}"
        scratch = f"{data['storage']['lake'].rstrip('/')}/_reproduce/{tag}"
        (ws / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        (ws / ".dvc" / "config.local").write_text(local_config(data))
        print(f"reproduce {name} v{version}: workspace {ws} at commit {commit[:12]} with its logged dvc.lock and "
              f"params; outputs under {scratch}", flush=True)
        _dvc(ws, "pull", "ingest", "features")       # train's DVC dependencies, as the lock names them
        code, out = _dvc(ws, "repro", "--single-item", "--force", "train", force=True)
        model = ws / "data" / "train" / "model.ubj"
        got = hashlib.sha256(model.read_bytes()).hexdigest() if code == 0 and model.exists() else None
        ran = sorted(set(re.findall(r"Running stage '([\w-]+)'", out)))
    finally:
        if scratch is not None:
            storage.delete_prefix(scratch)
        if not keep:
            _git("worktree", "remove", "--force", str(ws))
    return {"name": name, "version": str(version), "commit": commit, "workspace": str(ws) if keep else None,
            "expected_sha256": expected, "sha256": got, "identical": got is not None and got == expected,
            "stages_run": ran, "dvc_exit": code}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines workspace", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="action", required=True)
    rp = sub.add_parser("repro", help="dvc repro one stage in the run's workspace")
    rp.add_argument("--run-id", required=True)
    rp.add_argument("--stage", required=True)
    rp.add_argument("--params", default="params.yaml")
    rp.add_argument("--start")
    rp.add_argument("--end")
    rp.add_argument("--force", action="store_true", help="run the stage even if DVC's cache holds it")
    pp = sub.add_parser("push", help="dvc push the run's outputs, then remove its workspace")
    pp.add_argument("--run-id", required=True)
    pp.add_argument("--keep", action="store_true")
    wp = sub.add_parser("path", help="print the run's workspace folder")
    wp.add_argument("--run-id", required=True)
    kp = sub.add_parser("prune", help="remove the workspaces of runs that are over (failed runs keep theirs until then)")
    kp.add_argument("--older-than-hours", type=float, default=24.0,
                    help="only workspaces unchanged for this long (default 24)")
    kp.add_argument("--dry-run", action="store_true", help="list what would be removed")
    args = ap.parse_args(argv)
    try:
        if args.action == "repro":
            return repro(args.run_id, args.stage, args.params, args.start, args.end, args.force)
        if args.action == "push":
            return push(args.run_id, args.keep)
        if args.action == "prune":
            gone = prune(args.older_than_hours, args.dry_run)
            for ws in gone:
                print(f"{'would remove' if args.dry_run else 'removed'} {ws}")
            print(f"{len(gone)} workspace(s) {'to remove' if args.dry_run else 'removed'}")
            return 0
        print(path_for(args.run_id))
        return 0
    except WorkspaceError as exc:
        print(f"workspace: {exc}", file=sys.stderr)
        return 1
