"""The services a command needs (the object store, the MLflow registry): checked before the work
starts, with bounded waits, and every failure to reach one turned into one line that names the
service and what to do.

Without a running local stack, a command that needs it fails in about a second with
"the local stack is not running: python -m pipelines stack up" instead of waiting and printing a
traceback, and creates no file (MLflow is never imported with no tracking URI, which would create
./mlruns or ./mlflow.db).
"""
from __future__ import annotations

import os
import re
import socket
import urllib.error
import urllib.request
from urllib.parse import urlparse

from pipelines.core import state, storage

STACK_HINT = "the local stack is not running: python -m pipelines stack up"
STACK_URL_VAR = "FRAUDOPS_STACK_MLFLOW_URL"     # set by the stack: the tracking URI is the stack's own


class ServiceUnavailable(RuntimeError):
    """A service the command needs cannot be reached; the message names it and what to do."""


def _port_open(url: str, timeout: float = 1.0) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=timeout):
            return True
    except OSError:
        return False


OURS = "FRAUDOPS_MLFLOW_BOUNDS"      # the MLflow variables set by `configure` (not by a person)


def configure(timeout_s: float) -> None:
    """Bound waits on S3 and MLflow by about `timeout_s` seconds (params.yaml services.timeout_s):
    MLflow's own defaults retry for minutes. A variable a person set wins; the ones set here are
    named in FRAUDOPS_MLFLOW_BOUNDS, so a child process with other params sets its own."""
    storage.configure(timeout_s)
    per_try = max(2, int(timeout_s / 4))
    ours = set(filter(None, os.environ.get(OURS, "").split(",")))
    for key, value in (("MLFLOW_HTTP_REQUEST_TIMEOUT", str(per_try)), ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
                       ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"), ("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.5")):
        if key not in os.environ or key in ours:
            os.environ[key] = value
            ours.add(key)
    os.environ[OURS] = ",".join(sorted(ours))


def is_stack_registry(uri: str) -> bool:
    return bool(uri) and uri.rstrip("/") == os.environ.get(STACK_URL_VAR, "").rstrip("/")


def require_lake(lake: str) -> None:
    """Somewhere to read and write `lake` (storage.lake): a local path, the file object store (the
    local stack's) or S3."""
    if not lake.startswith("s3://"):
        return
    root = storage.object_root()
    if root is not None:
        if not root.is_dir():
            raise ServiceUnavailable(f"{STACK_HINT} (the object store {root} does not exist yet)")
        return
    if not (storage.endpoint_url() or os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")
            or os.environ.get("FRAUDOPS_OBJECT_STORE") == "s3"):
        raise ServiceUnavailable(f"{STACK_HINT} (no object store configured: FRAUDOPS_OBJECT_STORE or "
                                 f"AWS_ENDPOINT_URL / AWS credentials)")


def require_registry(optional: bool = False) -> str | None:
    """The MLflow tracking URI, checked. With the local stack's own registry down, the stack is not
    running: fail at once. `optional` (scoring, which has a cached-model fallback): an external
    registry that does not answer is left to the caller's fallback."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise ServiceUnavailable(f"{STACK_HINT} (MLFLOW_TRACKING_URI is not set; in production set "
                                 f"FRAUDOPS_MLFLOW_TRACKING_URI)")
    if not uri.startswith("http"):
        return uri
    if _port_open(uri):
        return uri
    if is_stack_registry(uri) and not state.stack_alive():
        raise ServiceUnavailable(STACK_HINT)
    if optional:
        return None
    raise ServiceUnavailable(f"MLflow at {uri} is not reachable (connection refused or timed out); nothing was "
                             f"changed there; start it (python -m pipelines stack up) or fix MLFLOW_TRACKING_URI")


def explain(exc: BaseException, command: str) -> str | None:
    """One line for a failure to reach a service (or a full disk), else None (a bug: keep the traceback)."""
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"disk full (ENOSPC) at {exc.filename or 'a local file'}; nothing more was published; free space and re-run"
    name = type(exc).__name__
    mod = type(exc).__module__
    text = str(exc).splitlines()[0][:300] if str(exc) else name
    uri = os.environ.get("MLFLOW_TRACKING_URI", "?")
    if mod.startswith("mlflow"):
        code = getattr(exc, "error_code", "") or ""
        try:
            status = exc.get_http_status_code()
        except Exception:  # noqa: BLE001 - not every MLflow exception carries one
            status = None
        if status in (401, 403) or code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or \
                re.search(r"error code 40[13]\b", text):
            return (f"MLflow at {uri} refused the credentials (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD): "
                    f"{text}; the {command} run failed, nothing more was changed")
        if any(s in text for s in ("Max retries", "failed with exception", "timed out", "Read timed out",
                                   "Connection refused", "ConnectionError")):
            return (f"MLflow at {uri} is unreachable or too slow ({text}); the {command} run failed, "
                    f"nothing more was changed; re-run when it answers")
        return f"MLflow at {uri} refused: {code + ': ' if code else ''}{text}; nothing more was changed"
    if mod.startswith(("requests", "urllib3")) or isinstance(exc, (urllib.error.URLError, TimeoutError,
                                                                   ConnectionError)):
        return (f"a service did not answer ({name}: {text}); the {command} run failed, nothing more was changed; "
                f"check `python -m pipelines stack status`")
    return None


def preflight(needs: tuple[str, ...]) -> None:
    """Check, in about a second, that the services a command needs answer (see COMMANDS in
    __main__); the object store is checked once params.yaml says where the lake is (cli.resolve)."""
    if "registry" in needs:
        require_registry()
    elif "registry?" in needs:
        require_registry(optional=True)
