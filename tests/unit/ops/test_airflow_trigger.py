"""`airflow trigger` never makes two runs of one request: the run id is made by the client, so a POST
tried again after a late answer meets a 409 (the first try was committed) and gets that run back."""
from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from pipelines.ops.airflow_api import AirflowApiError, AirflowClient


def test_a_post_tried_again_after_a_late_answer_makes_one_run():
    runs: dict[str, dict] = {}

    class Api(http.server.BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict) -> None:
            try:
                self.send_response(code)
                self.end_headers()
                self.wfile.write(json.dumps(body).encode())
            except OSError:
                pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
            if self.path == "/auth/token":
                return self._send(200, {"access_token": "t"})
            rid = body.get("dag_run_id") or f"manual__server-{len(runs)}"
            if rid in runs:
                return self._send(409, {"detail": f"run {rid} exists"})
            runs[rid] = {"dag_run_id": rid, "state": "queued", "conf": body.get("conf")}
            if len(runs) == 1:
                time.sleep(1.5)                      # committed, but answered after the client gave up
            self._send(200, runs[rid])

        def do_GET(self):
            rid = self.path.rsplit("/", 1)[1]
            self._send(200, runs[rid]) if rid in runs else self._send(404, {})

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        c = AirflowClient(f"http://127.0.0.1:{srv.server_port}", "admin", "pw", timeout=0.5)
        c.RETRIES = (0.1, 0.1)
        run = c.trigger("training", {"start_date": "2026-02-01"})
        assert list(runs) == [run["dag_run_id"]] and run["dag_run_id"].startswith("manual__")
        assert run["conf"] == {"start_date": "2026-02-01"}
        # a caller's own run id that exists already: its 409 stands
        with pytest.raises(AirflowApiError, match="HTTP 409"):
            c.trigger("training", {}, run_id=run["dag_run_id"])
        assert len(runs) == 1
    finally:
        srv.shutdown()
