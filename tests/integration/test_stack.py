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
    from pipelines import stack as st

    before = {k: v["pid"] for k, v in st.status().items()}
    assert all(v["healthy"] is True for v in st.status().values()), st.status()
    st.up(timeout=120)                                   # a second up starts nothing new
    assert {k: v["pid"] for k, v in st.status().items()} == before


def test_airflow_requires_auth_and_issues_jwt(stack):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{stack.airflow_url}/api/v2/dags", timeout=10)
    assert err.value.code == 401
    from pipelines.airflow_api import AirflowClient

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


def test_s3_is_reached_over_http_with_an_endpoint(stack):
    from pipelines import storage

    assert storage.endpoint_url() == stack.s3_url
    storage.write_bytes("s3://fraudops-lake/_probe/x.json", b'{"ok": 1}')
    assert json.loads(storage.read_bytes("s3://fraudops-lake/_probe/x.json")) == {"ok": 1}
    with pytest.raises(urllib.error.HTTPError) as err:       # unsigned requests are refused, as on real S3
        urllib.request.urlopen(f"{stack.s3_url}/fraudops-lake/_probe/x.json", timeout=10)
    assert err.value.code == 403
