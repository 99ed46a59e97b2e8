"""The local stack: healthy, authenticated, on loopback only."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import psutil
import pytest

from tests.conftest import stack_pids

pytestmark = pytest.mark.integration


def test_every_service_is_healthy_and_up_is_idempotent(stack):
    from pipelines.ops import stack as st

    before = {k: v["pid"] for k, v in st.status().items()}
    assert all(v["healthy"] is True for v in st.status().values()), st.status()
    st.up(timeout=120)                                   # a second up starts nothing new
    assert {k: v["pid"] for k, v in st.status().items()} == before


def test_airflow_requires_auth_and_issues_jwt(stack):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{stack.airflow_url}/api/v2/dags", timeout=10)
    assert err.value.code == 401
    from pipelines.ops.airflow_api import AirflowClient

    client = AirflowClient()
    assert client.token().count(".") == 2                  # a JWT
    dags = client._request("GET", "/api/v2/dags")
    assert "dags" in dags


def test_services_listen_on_loopback_only(stack):
    ours = stack_pids()
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert listening, "no listening sockets found for the stack"
    exposed = [(c.laddr.ip, c.laddr.port) for c in listening if not c.laddr.ip.startswith("127.")]
    assert exposed == []


def test_the_embedded_object_store_is_files_that_outlive_the_services(stack):
    from pipelines.core import storage

    root = storage.object_root()
    assert root == stack.objects and root.is_dir()
    storage.write_bytes("s3://fraudops-lake/_probe/x.json", b'{"ok": 1}')
    assert json.loads(storage.read_bytes("s3://fraudops-lake/_probe/x.json")) == {"ok": 1}
    assert (root / "fraudops-lake" / "_probe" / "x.json").read_bytes() == b'{"ok": 1}'   # a plain file on disk
    listening = {c.laddr.port for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert 5400 not in listening or stack_pids().isdisjoint(
        {c.pid for c in psutil.net_connections(kind="inet") if c.laddr.port == 5400})   # no S3 server of ours


def test_mlflow_refuses_requests_without_credentials(stack):
    url = f"{stack.mlflow_url}/api/2.0/mlflow/registered-models/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=10)
    assert err.value.code == 401
    req = urllib.request.Request(url, headers={"Authorization": "Basic " + __import__("base64").b64encode(
        b"admin:wrong-password").decode()})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401
    from pipelines.core import registry as models

    assert isinstance(models.client().search_registered_models(max_results=1), list)   # the clients' credentials work
    assert urllib.request.urlopen(f"{stack.mlflow_url}/health", timeout=10).status == 200   # health stays open


def test_state_files_are_readable_by_their_owner_only(stack):
    import stat

    home = stack.home
    private = [home / "stack.env", stack.password_file, stack.mlflow_auth_config, *home.glob("secrets/*"),
               *home.glob("**/*.db")]
    assert len([p for p in private if p.name.endswith(".db")]) >= 3          # airflow, mlflow, basic auth
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path}: {oct(path.stat().st_mode)}"
    for folder in (home, home / "secrets", home / "mlflow", stack.airflow_home, stack.objects):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, f"{folder}: {oct(folder.stat().st_mode)}"
    assert "MLFLOW_TRACKING_PASSWORD=" in (home / "stack.env").read_text()
