"""Service checks: the registry, the object store, one line per failure."""
from __future__ import annotations

import pytest

from pipelines.core import services


def test_without_a_tracking_uri_the_registry_check_says_how_to_start_the_stack(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(services.ServiceUnavailable, match="the local stack is not running: python -m pipelines stack up"):
        services.require_registry()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv(services.STACK_URL_VAR, "http://127.0.0.1:9")
    monkeypatch.setenv("FRAUDOPS_HOME", str(tmp_path))
    with pytest.raises(services.ServiceUnavailable, match="the local stack is not running"):
        services.require_registry()
    monkeypatch.setenv(services.STACK_URL_VAR, "http://127.0.0.1:5500")   # not the stack's: an outage
    assert services.require_registry(optional=True) is None
    with pytest.raises(services.ServiceUnavailable, match="MLflow at http://127.0.0.1:9 is not reachable"):
        services.require_registry()
    monkeypatch.setenv("FRAUDOPS_OBJECT_STORE", f"file://{tmp_path}/none")
    with pytest.raises(services.ServiceUnavailable, match="not running"):
        services.require_lake("s3://fraudops-lake")
    services.require_lake(str(tmp_path))                                  # a local lake needs no service
