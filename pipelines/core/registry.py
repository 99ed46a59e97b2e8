"""The model registry (MLflow): aliases, their history, lineage (`pipelines/ops/models.py` is the
command line over it: `python -m pipelines models ...`).

MLflow keeps no history of aliases (mlflow/mlflow#2169), so every move made through this module
is also appended to the registered model's tags as `alias_history.<ms>.<n>` = JSON record. The
tags live in MLflow's backend store, so the log survives restarts and travels with the registry
(SQLite here, PostgreSQL in production); entries are only ever added. Moves are safe to re-run:
moving an alias to where it already points changes and records nothing; `--dry-run` says what
would happen.
"""
from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
from dataclasses import dataclass

from pipelines.core import faults

HISTORY_PREFIX = "alias_history."


class RegistryError(RuntimeError):
    """The registry refused or cannot do what was asked; the message says why."""


def client():
    from mlflow import MlflowClient

    return MlflowClient()


@dataclass(frozen=True)
class VersionRef:
    """A model version as scoring needs it (the attributes of MLflow's ModelVersion it reads)."""
    name: str
    version: str
    run_id: str
    tags: dict


def _http_uri() -> str | None:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def _rest_get(path: str, query: dict, timeout: float) -> bytes:
    """GET <tracking server><path>?<query> with the client's credentials (MLFLOW_TRACKING_TOKEN, or
    _USERNAME/_PASSWORD), no MLflow import. HTTPError propagates."""
    import urllib.parse
    import urllib.request

    req = urllib.request.Request(f"{_http_uri()}{path}?{urllib.parse.urlencode(query)}")
    user, pw, token = (os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                                   "MLFLOW_TRACKING_TOKEN"))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    elif user:
        import base64

        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw or ''}".encode()).decode())
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def version_by_alias(name: str, alias: str, timeout: float = 30.0) -> VersionRef | None:
    """The version under `alias` (None when the alias or the model does not exist). Against an
    HTTP tracking server it is one REST call with the client's credentials and no MLflow import
    (a scoring task, a process of its own under Airflow, saves ~2.5 s); otherwise the client."""
    import urllib.error

    uri = _http_uri()
    if uri is None:
        c = client()
        v = get_alias(c, name, alias)
        mv = c.get_model_version(name, v) if v else None
        return VersionRef(name, str(mv.version), mv.run_id, dict(mv.tags)) if mv else None
    try:
        mv = json.loads(_rest_get("/api/2.0/mlflow/registered-models/alias", {"name": name, "alias": alias},
                                  timeout))["model_version"]
    except urllib.error.HTTPError as exc:
        body = exc.read()[:500].decode(errors="replace")
        # an unset alias: INVALID_PARAMETER_VALUE "... not found"; an unknown model: RESOURCE_DOES_NOT_EXIST
        if "RESOURCE_DOES_NOT_EXIST" in body or ("INVALID_PARAMETER_VALUE" in body and "not found" in body):
            return None
        raise RegistryError(f"registry {uri}: {name}@{alias}: HTTP {exc.code}: {body[:200]}") from None
    return VersionRef(mv["name"], str(mv["version"]), mv.get("run_id", ""),
                      {t["key"]: t["value"] for t in mv.get("tags", [])})


def run_artifact(run_id: str, path: str, timeout: float = 30.0) -> bytes | None:
    """One artifact file of a run (None when it does not exist): over the tracking server's REST
    API when it is HTTP (no MLflow import), else through MLflow."""
    import urllib.error

    if _http_uri() is None:
        import tempfile
        from pathlib import Path

        import mlflow.artifacts

        with tempfile.TemporaryDirectory() as tmp:
            try:
                return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)).read_bytes()
            except Exception:  # noqa: BLE001 - MLflow raises several kinds for a missing artifact
                return None
    try:
        return _rest_get("/get-artifact", {"path": path, "run_uuid": run_id}, timeout)
    except urllib.error.HTTPError as exc:
        body = exc.read()[:500].decode(errors="replace")
        if exc.code == 404 or "RESOURCE_DOES_NOT_EXIST" in body or "No such file" in body:
            return None
        raise RegistryError(f"registry {_http_uri()}: run {run_id} artifact {path}: HTTP {exc.code}: {body[:200]}") from None


def actor() -> str:
    """Who moves an alias: the Airflow task (from its context variables) or the person at a shell."""
    dag, run, task = (os.environ.get(k) for k in ("AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_DAG_RUN_ID", "AIRFLOW_CTX_TASK_ID"))
    if dag:
        return f"airflow:{dag}/{run}/{task}"
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def get_alias(c, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(c.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        # MLflow answers an unset alias with INVALID_PARAMETER_VALUE "... alias X not found", an
        # unknown model with RESOURCE_DOES_NOT_EXIST; anything else (server down, auth) propagates.
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (
                exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in exc.message):
            return None
        raise


def aliases(c, name: str) -> dict[str, str]:
    return {a: str(v) for a, v in (c.get_registered_model(name).aliases or {}).items()}


def history(c, name: str) -> list[dict]:
    return _history(c.get_registered_model(name).tags or {})


def _history(tags: dict[str, str]) -> list[dict]:
    """The alias moves held in a registered model's tags, in order."""
    return [json.loads(tags[k]) for k in sorted(t for t in tags if t.startswith(HISTORY_PREFIX))]


def moves_of(name: str, marker: str, timeout: float = 30.0) -> list[dict]:
    """The alias moves whose reason holds `marker` (e.g. the lifecycle decision that made them), in
    order, except those a later move of the same alias not made by `marker` undid (a scenario
    replayed on the same registry: the demo's reset moves the aliases back). Against an HTTP
    tracking server one REST call, no MLflow import; otherwise the client."""
    import urllib.error

    if _http_uri() is None:
        records = history(client(), name)
    else:
        try:
            model = json.loads(_rest_get("/api/2.0/mlflow/registered-models/get", {"name": name}, timeout))["registered_model"]
        except urllib.error.HTTPError as exc:
            body = exc.read()[:500].decode(errors="replace")
            if "RESOURCE_DOES_NOT_EXIST" in body:
                return []
            raise RegistryError(f"registry {_http_uri()}: {name}: HTTP {exc.code}: {body[:200]}") from None
        records = _history({t["key"]: t["value"] for t in model.get("tags", [])})
    mine = [marker in (r.get("reason") or "") for r in records]
    return [r for i, r in enumerate(records) if mine[i] and not any(
        not mine[j] and records[j].get("alias") == r.get("alias") for j in range(i + 1, len(records)))]


def _append(c, name: str, record: dict) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    taken = set((c.get_registered_model(name).tags or {}))
    n = 0
    while (key := f"{HISTORY_PREFIX}{int(now.timestamp() * 1000):013d}.{n}") in taken:
        n += 1
    c.set_registered_model_tag(name, key, json.dumps(record, sort_keys=True))
    c.update_registered_model(name, description=history_markdown(history(c, name)))


HISTORY_SHOWN = 40


def history_markdown(records: list[dict]) -> str:
    """The registered model's description: its alias history as a table, newest first (the UI renders
    markdown); the full record stays in the `alias_history.*` tags."""
    def cell(v) -> str:
        return str("-" if v in (None, "") else v).replace("|", "\\|").replace("\n", " ")[:300]

    rows = [f"| {cell(r.get('at'))} | {cell(r.get('alias'))} | {cell(r.get('from'))} | {cell(r.get('to'))} | "
            f"{cell(r.get('reason'))} | {cell(r.get('by'))} |" for r in reversed(records[-HISTORY_SHOWN:])]
    more = (f"\n\n{len(records) - HISTORY_SHOWN} earlier move(s): `python -m pipelines models history`"
            if len(records) > HISTORY_SHOWN else "")
    return ("Alias moves, newest first (written by fraudops at every move; do not edit: the record is the "
            "`alias_history.*` tags).\n\n| when (UTC) | alias | from | to | reason | by |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows) + more)


@dataclass(frozen=True)
class Move:
    alias: str
    frm: str | None
    to: str | None
    reason: str

    def record(self, by: str) -> dict:
        return {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "alias": self.alias,
                "from": self.frm, "to": self.to, "reason": self.reason, "by": by}


def move_alias(c, name: str, alias: str, version: str | None, reason: str, dry_run: bool = False,
               by: str | None = None, op: str | None = None, frm: str | None = None) -> dict | None:
    """Point `alias` at `version` (None removes it) and append the move to the history. Returns
    the record, or None when the alias already points there (nothing changed, nothing recorded).

    `op` names a move that must happen once (e.g. the alias move of one registration): when the
    history already holds it, nothing happens; when a crash left the alias moved but the move not
    recorded, the record is written now (with `frm`, where the alias pointed when the move was planned)."""
    if op is not None and any(r.get("op") == op for r in history(c, name)):
        return None
    current = get_alias(c, name, alias)
    version = None if version is None else str(version)
    if current == version and op is None:
        return None
    rec = Move(alias, current if current != version else frm, version, reason).record(by or actor())
    if op is not None:
        rec["op"] = op
    if dry_run:
        return {**rec, "dry_run": True}
    if current != version:
        if version is None:
            c.delete_registered_model_alias(name, alias)
        else:
            c.set_registered_model_alias(name, alias, version)
    faults.point("models.after_alias_move")
    _append(c, name, rec)
    return rec


def promote(c, name: str, version: str, reason: str, dry_run: bool = False) -> list[dict]:
    """champion <- version; the old champion keeps `previous`; a challenger alias on it is dropped."""
    c.get_model_version(name, str(version))            # raises if the version does not exist
    old = get_alias(c, name, "champion")
    if old == str(version):
        return []
    moves = []
    if old is not None:
        moves.append(move_alias(c, name, "previous", old, f"replaced as champion by v{version}: {reason}", dry_run))
    if get_alias(c, name, "challenger") == str(version):
        moves.append(move_alias(c, name, "challenger", None, f"promoted to champion: {reason}", dry_run))
    moves.append(move_alias(c, name, "champion", str(version), reason, dry_run))
    if not dry_run:                     # the champion on purpose: a fallback again once it is replaced
        tags = c.get_model_version(name, str(version)).tags or {}
        for k in (*RULED_OUT, "retired.reset"):
            if k in tags:
                c.delete_model_version_tag(name, str(version), k)
    return [m for m in moves if m]


def rollback_target(c, name: str) -> str | None:
    """The champion before the current one: the `from` of the move that made the current champion,
    unless that version was retired or rolled back from since or is the challenger now (a candidate whose shadow decides
    it, e.g. a model proposed again after a demo reset, is no fallback); then the `previous` alias,
    which a promotion or a person set on purpose."""
    current, challenger = get_alias(c, name, "champion"), get_alias(c, name, "challenger")
    for rec in reversed(history(c, name)):
        if rec["alias"] == "champion" and rec["to"] == current:
            if rec["from"] and rec["from"] != challenger and not _ruled_out(c, name, rec["from"]):
                return rec["from"]
            break
    prev = get_alias(c, name, "previous")
    return prev if prev not in (current, challenger) and not (prev and _ruled_out(c, name, prev)) else None


RULED_OUT = ("retired", "rolled_back")   # a version's tags that rule it out as a fallback or a candidate again


def _ruled_out(c, name: str, version: str) -> bool:
    """Retired, or rolled back from (and not promoted since): no fallback for a rollback (two models that
    both suffer from the same upstream change would take turns as the champion)."""
    return bool(set(RULED_OUT) & set(c.get_model_version(name, version).tags or {}))


def rollback(c, name: str, reason: str, dry_run: bool = False) -> list[dict]:
    current = get_alias(c, name, "champion")
    target = rollback_target(c, name)
    if target is None:
        raise RegistryError(f"{name}: no previous champion to roll back to (champion is v{current}); nothing changed")
    moves = [move_alias(c, name, "champion", target, f"rollback from v{current}: {reason}", dry_run)]
    if get_alias(c, name, "previous") == target:
        moves.append(move_alias(c, name, "previous", None, f"v{target} is champion again (rollback: {reason})", dry_run))
    if not dry_run and current:
        c.set_model_version_tag(name, current, "rolled_back", reason)
    return [m for m in moves if m]


def lineage(c, name: str, version: str) -> dict:
    mv = c.get_model_version(name, str(version))
    run = c.get_run(mv.run_id)
    tags = run.data.tags
    pick = lambda prefix: {k: v for k, v in sorted(tags.items()) if k.startswith(prefix)}  # noqa: E731
    return {
        "model": name, "version": str(mv.version), "aliases": [a for a, v in aliases(c, name).items() if v == str(mv.version)],
        "run_id": mv.run_id, "experiment_id": run.info.experiment_id, "model_sha256": mv.tags.get("model_sha256"),
        "gate": mv.tags.get("gate"), "data": pick("data."), "dvc": pick("dvc."), "features": pick("features."),
        "git": pick("git."), "device": {k: tags.get(k) for k in ("device_requested", "device_used")},
        "params": dict(sorted(run.data.params.items())),
    }


def versions(c, name: str) -> list[dict]:
    al = aliases(c, name)
    out = []
    for mv in sorted(c.search_model_versions(f"name='{name}'"), key=lambda m: int(m.version)):
        m = c.get_run(mv.run_id).data.metrics if mv.run_id else {}
        out.append({"version": str(mv.version), "aliases": sorted(a for a, v in al.items() if v == str(mv.version)),
                    "gate": mv.tags.get("gate"), "run_id": mv.run_id,
                    "test_ap": m.get("test.average_precision"), "test_recall": m.get("test.recall"),
                    "test_roc_auc": m.get("test.roc_auc"), "range": mv.tags.get("data.range")})
    return out
