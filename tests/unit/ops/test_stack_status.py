"""`stack status` tells the truth when a port of the stack is held by someone else (another
checkout's stack, another program): that service is not healthy, and the note says who holds it."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

from pipelines.ops import stack

SERVER = """
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'OK')
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_port_held_by_another_program_is_not_this_stacks_healthy_service(tmp_path, monkeypatch):
    mlflow, airflow = _free_port(), _free_port()
    monkeypatch.setenv("FRAUDOPS_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("FRAUDOPS_MLFLOW_PORT", str(mlflow))
    monkeypatch.setenv("FRAUDOPS_AIRFLOW_PORT", str(airflow))
    for key in ("MLFLOW_TRACKING_URI", "AIRFLOW__API__BASE_URL", "FRAUDOPS_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    other = subprocess.Popen([sys.executable, "-c", SERVER.format(port=mlflow)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{mlflow}/health", timeout=1)   # it answers /health
                break
            except OSError:
                assert time.monotonic() < deadline, "the stand-in server did not start"
                time.sleep(0.2)
        st = stack.status()
        assert st["mlflow"]["healthy"] is False and st["mlflow"]["pid"] is None
        note = st["mlflow"]["note"]
        assert f"port {mlflow} is held by pid {other.pid}" in note and str(tmp_path) in note, note
        assert "not by this stack" in note
        assert st["airflow-api-server"]["healthy"] is False and "note" not in st["airflow-api-server"]   # nobody there
        assert stack.main(["status"]) == 1
    finally:
        other.kill()
        other.wait(10)
