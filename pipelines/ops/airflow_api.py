"""A small client of the Airflow 3 REST API (JWT from /auth/token): trigger a DAG run and wait.

`python -m pipelines airflow trigger training --conf '{"start_date": "2026-02-01"}' --wait`

Plain HTTP: no Airflow import, so it works from anywhere that reaches the api-server.
Credentials: AIRFLOW_API_USER / AIRFLOW_API_PASSWORD, else the local stack's admin password file.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TERMINAL = {"success", "failed"}


class AirflowApiError(RuntimeError):
    pass


class AirflowClient:
    def __init__(self, base_url: str | None = None, user: str | None = None, password: str | None = None,
                 timeout: float = 60.0) -> None:
        from pipelines.ops import stack

        lay = stack.layout()
        self.base = (base_url or os.environ.get("AIRFLOW__API__BASE_URL") or lay.airflow_url).rstrip("/")
        self.user = user or os.environ.get("AIRFLOW_API_USER", "admin")
        self.password = password or os.environ.get("AIRFLOW_API_PASSWORD") or stack.airflow_password(lay)
        self.timeout = timeout
        self._token: str | None = None

    RETRIES = (1.0, 2.0, 4.0, 8.0)       # an HTTP 5xx or no answer (e.g. SQLite busy under load) is tried again

    def _request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        for wait in (*self.RETRIES, None):
            req = urllib.request.Request(f"{self.base}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
            if auth:
                req.add_header("Authorization", f"Bearer {self.token()}")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                    return json.loads(raw) if raw else None
            except urllib.error.HTTPError as exc:
                err = AirflowApiError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:500]!r}")
                if exc.code < 500 or wait is None:
                    raise err from None
            except (TimeoutError, ConnectionError, urllib.error.URLError, http.client.HTTPException) as exc:
                # a busy api-server (SQLite waits up to 10 s for a lock) or one restarting: tried again;
                # a POST whose first try was committed after all comes back as HTTP 409 (callers expect it)
                if wait is None:
                    raise AirflowApiError(f"{method} {self.base}{path}: the Airflow api-server did not answer "
                                          f"({type(exc).__name__}: {exc}) after {len(self.RETRIES) + 1} tries") from None
            time.sleep(wait)

    def token(self) -> str:
        if self._token is None:
            out = self._request("POST", "/auth/token", {"username": self.user, "password": self.password}, auth=False)
            self._token = out["access_token"]
        return self._token

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0, unpause: bool = True) -> dict:
        """Wait until the dag-processor has parsed `dag_id`, and fail at once when it has parsed every
        DAG file of the folder without finding it (a misspelt id). A paused DAG is unpaused, said on
        stderr, when `unpause`; otherwise it is an error (a run of a paused DAG never starts)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                dag = self._request("GET", f"/api/v2/dags/{dag_id}")
                break
            except AirflowApiError as exc:
                if "404" not in str(exc):
                    raise
                known, complete = self.parsed_dags()
                if complete:
                    raise AirflowApiError(f"no DAG {dag_id!r}: the DAGs are {', '.join(sorted(known))}") from None
                if time.monotonic() > deadline:
                    raise AirflowApiError(f"DAG {dag_id} not available after {timeout:.0f}s: {exc}") from None
            time.sleep(2)
        if dag.get("is_paused"):
            if not unpause:
                raise AirflowApiError(f"DAG {dag_id} is paused: a run would wait until someone unpauses it "
                                      f"(pass --unpause, or unpause it in the UI)")
            dag = self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
            print(f"DAG {dag_id} was paused: unpaused it", file=sys.stderr, flush=True)
        return dag

    def parsed_dags(self) -> tuple[set[str], bool]:
        """The DAG ids Airflow knows, and whether every .py file of the DAG folder has been parsed
        (it holds a DAG or an import error): then a DAG that is not listed does not exist."""
        dags = self._request("GET", "/api/v2/dags?limit=1000")["dags"]
        errors = self._request("GET", "/api/v2/importErrors?limit=1000").get("import_errors", [])
        seen = {Path(d.get("fileloc") or d.get("relative_fileloc") or "").name for d in dags}
        seen |= {Path(e.get("filename") or "").name for e in errors}
        folder = Path(os.environ.get("AIRFLOW__CORE__DAGS_FOLDER") or Path(__file__).resolve().parents[2] / "dags")
        files = {p.name for p in folder.glob("*.py") if not p.name.startswith("_")}
        return {d["dag_id"] for d in dags}, bool(files) and files <= seen

    def trigger(self, dag_id: str, conf: dict | None = None, run_id: str | None = None,
                logical_date: str | None = None) -> dict:
        """A new run of `dag_id`. Without `run_id` the run gets an id made here (manual__<UTC time>-<token>),
        so that a POST tried again after an answer that came too late cannot make a second run: its
        409 means the first try was committed, and that run is returned. A caller's own run_id keeps
        its 409 (the run existed before)."""
        import datetime as dt
        import secrets

        mine = run_id is None
        run_id = run_id or f"manual__{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%S.%f}+00:00-{secrets.token_hex(4)}"
        body: dict[str, Any] = {"conf": conf or {}, "logical_date": logical_date, "dag_run_id": run_id}
        try:
            return self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)
        except AirflowApiError as exc:
            if mine and "HTTP 409" in str(exc):
                try:
                    return self.run(dag_id, run_id)
                except AirflowApiError:
                    raise exc from None      # not our run: another conflict (a logical date taken), as answered
            raise

    def run(self, dag_id: str, run_id: str) -> dict:
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def run_ids(self, dag_id: str, page: int = 100) -> set[str]:
        """Every run id of `dag_id` (paged); none for a DAG Airflow does not know."""
        out: set[str] = set()
        while True:
            try:
                got = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit={page}&offset={len(out)}")
            except AirflowApiError as exc:
                if "HTTP 404" in str(exc):
                    return out
                raise
            out |= {r["dag_run_id"] for r in got["dag_runs"]}
            if len(got["dag_runs"]) < page or len(out) >= got.get("total_entries", 0):
                return out

    def runs_between(self, dag_id: str, first: str, last: str, page: int = 100) -> list[dict]:
        """The runs of `dag_id` whose logical date lies in [first, last] (YYYY-MM-DD), paged."""
        out: list[dict] = []
        while True:
            got = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit={page}&offset={len(out)}"
                                       f"&logical_date_gte={first}T00:00:00Z&logical_date_lte={last}T23:59:59Z")
            out += got["dag_runs"]
            if len(got["dag_runs"]) < page or len(out) >= got.get("total_entries", 0):
                return out

    def delete_run(self, dag_id: str, run_id: str) -> bool:
        """Delete a run (a running one is marked failed first); False when there was none."""
        try:
            run = self.run(dag_id, run_id)
        except AirflowApiError as exc:
            if "HTTP 404" in str(exc):
                return False
            raise
        if run["state"] not in TERMINAL:
            self._request("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", {"state": "failed"})
        self._request("DELETE", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        return True

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def task_log(self, dag_id: str, run_id: str, task_id: str) -> str:
        """A task's log (its last try) as text: each record's event and error details, one per line."""
        tis = {t["task_id"]: t for t in self.task_instances(dag_id, run_id)}
        tries = max(1, tis[task_id].get("try_number") or 1)
        out = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{tries}"
                                   "?full_content=true")
        lines = []
        for rec in out.get("content") or []:
            if isinstance(rec, dict):
                lines.append(str(rec.get("event", "")))
                lines += [str(d.get("exc_value", "")) for d in rec.get("error_detail") or [] if isinstance(d, dict)]
            else:
                lines.append(str(rec))
        return "\n".join(lines) or json.dumps(out)

    def wait(self, dag_id: str, run_id: str, timeout: float = 900.0, poll: float = 3.0, progress=None) -> dict:
        """Poll the run until it ends. `progress(run, task_instances)` is called at each poll."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(dag_id, run_id)
            if progress is not None:
                progress(run, self.task_instances(dag_id, run_id))
            if run["state"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise AirflowApiError(f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f}s")
            time.sleep(poll)


def _require_api_server() -> None:
    """Fail in about a second, with the command that starts it, when nothing answers."""
    import socket
    from urllib.parse import urlparse

    from pipelines.core import state
    from pipelines.core.services import STACK_HINT, ServiceUnavailable
    from pipelines.ops import stack

    url = urlparse(os.environ.get("AIRFLOW__API__BASE_URL") or stack.layout().airflow_url)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=1.0):
            return
    except OSError:
        pass
    if not state.stack_alive():
        raise ServiceUnavailable(f"{STACK_HINT} (the Airflow api-server at {url.geturl()} does not answer)")
    raise ServiceUnavailable(f"the Airflow api-server at {url.geturl()} does not answer; check "
                             f"`python -m pipelines stack status`")


def _progress_printer():
    """A line each time the run's task states change: elapsed time, tasks done of all, what runs."""
    started, last = time.monotonic(), [None]

    def show(run: dict, tis: list[dict]) -> None:
        done = [t for t in tis if t.get("state") in ("success", "skipped")]
        active = sorted(t["task_id"] for t in tis if t.get("state") in ("running", "queued", "up_for_retry",
                                                                         "up_for_reschedule", "deferred"))
        failed = sorted(t["task_id"] for t in tis if t.get("state") in ("failed", "upstream_failed"))
        line = (f"{len(done)}/{len(tis)} tasks done" + (f"; running: {', '.join(active)}" if active else "")
                + (f"; failed: {', '.join(failed)}" if failed else "") + f" ({run['state']})")
        if line != last[0]:
            elapsed = int(time.monotonic() - started)
            print(f"  [{elapsed // 60:02d}:{elapsed % 60:02d}] {line}", flush=True)
            last[0] = line
    return show


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines airflow")
    sub = ap.add_subparsers(dest="action", required=True)
    t = sub.add_parser("trigger", help="trigger a DAG run through the REST API")
    t.add_argument("dag_id")
    t.add_argument("--conf", default="{}", help="JSON object for the run's params")
    t.add_argument("--wait", action="store_true", help="wait until the run ends; exit 1 unless it succeeded")
    t.add_argument("--timeout", type=float, default=1800)
    t.add_argument("--unpause", action="store_true", help="unpause the DAG first when it is paused (said on stderr)")
    args = ap.parse_args(argv)
    _require_api_server()
    client = AirflowClient()
    try:
        client.wait_for_dag(args.dag_id, unpause=args.unpause)
    except AirflowApiError as exc:
        print(f"airflow trigger: {exc}", file=sys.stderr)
        return 2
    run = client.trigger(args.dag_id, json.loads(args.conf))
    print(f"triggered {args.dag_id} run {run['dag_run_id']} ({client.base}/dags/{args.dag_id})")
    if not args.wait:
        return 0
    run = client.wait(args.dag_id, run["dag_run_id"], args.timeout, progress=_progress_printer())
    for ti in client.task_instances(args.dag_id, run["dag_run_id"]):
        print(f"  {ti['task_id']:12s} {ti['state']}  tries={ti.get('try_number')}")
    print(f"{args.dag_id} run {run['dag_run_id']}: {run['state']}")
    return 0 if run["state"] == "success" else 1
