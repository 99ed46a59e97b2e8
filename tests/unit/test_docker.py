"""The production stack as files (docker/): the compose file validates against the compose
specification's JSON schema, holds no secret, binds every port to 127.0.0.1 and gives every service
a healthcheck; hadolint passes the Dockerfile. No Docker engine needed."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_the_compose_file_validates_against_the_compose_specification(tmp_path):
    ok = subprocess.run([str(BIN / "check-jsonschema"), "--schemafile", str(DOCKER / "compose-spec.json"),
                         str(DOCKER / "compose.yaml")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "compose.yaml"                    # the check can fail: a service with an unknown key
    data = _compose()
    data["services"]["redis"]["helthcheck"] = data["services"]["redis"].pop("healthcheck")
    broken.write_text(yaml.safe_dump(data))
    bad = subprocess.run([str(BIN / "check-jsonschema"), "--schemafile", str(DOCKER / "compose-spec.json"),
                          str(broken)], capture_output=True, text=True)
    assert bad.returncode != 0 and "helthcheck" in bad.stdout + bad.stderr


def test_the_compose_stack_has_every_service_secrets_from_the_env_file_and_loopback_ports():
    data = _compose()
    services = data["services"]
    assert {"postgres", "redis", "minio", "mlflow", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "airflow-worker"} <= set(services)
    worker = services["airflow-worker"]
    assert worker["deploy"]["replicas"] >= 2 and worker["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert "redis://" in worker["environment"]["AIRFLOW__CELERY__BROKER_URL"]
    assert worker["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    for name, svc in services.items():
        if name.endswith("-init"):
            continue
        assert "healthcheck" in svc, name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    text = (DOCKER / "compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))       # $${X}: the container's own
    example = dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    defaulted = set(re.findall(r"\$\{([A-Z0-9_]+):-", text))
    assert used - defaulted <= set(example), used - defaulted - set(example)   # every secret has its line
    for key in ("PASSWORD", "SECRET"):                     # no secret written into the file itself
        assert not re.search(rf"{key}(?!S_FILE)[A-Z_]*:\s*[^$\s{{]", text), key
    assert "docker/.env" in (REPO / ".gitignore").read_text().split()


def test_hadolint_passes_the_dockerfile(tmp_path):
    ok = subprocess.run([str(BIN / "hadolint"), str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "Dockerfile"                         # the check can fail: an unpinned apt-get install
    bad.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y git\n")
    assert subprocess.run([str(BIN / "hadolint"), str(bad)], capture_output=True).returncode != 0


def test_the_worker_image_is_lean():
    """No dev group (moto, test and lint tools) in the image; xgboost-cpu unless built for CUDA."""
    text = (DOCKER / "Dockerfile").read_text()
    assert "--no-dev" in text and "xgboost-cpu" in text and "ARG XGBOOST=cpu" in text
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    main = " ".join(project["project"]["dependencies"])
    for tool in ("moto", "pytest", "hadolint", "check-jsonschema"):
        assert tool not in main, tool
