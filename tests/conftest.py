"""Session fixtures: the real local stack (own state folder and ports, so a running demo is left
alone), simulated raw data in its S3, and params variants written to temporary files."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
TEST_ENV = {
    "FRAUDOPS_HOME": str(REPO / ".state-test"),
    "FRAUDOPS_S3_PORT": os.environ.get("FRAUDOPS_TEST_S3_PORT", "5401"),
    "FRAUDOPS_MLFLOW_PORT": os.environ.get("FRAUDOPS_TEST_MLFLOW_PORT", "5501"),
    "FRAUDOPS_AIRFLOW_PORT": os.environ.get("FRAUDOPS_TEST_AIRFLOW_PORT", "8081"),
}


def base_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def write_params(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def params_with_lake(tmp_path: Path, lake: str, mutate=None) -> Path:
    """params.yaml with every S3 location moved under `lake` (a bucket of its own)."""
    data = copy.deepcopy(base_params())
    data["storage"]["lake"] = lake
    data["datasets"]["transactions"]["uri"] = f"{lake}/raw/transactions"
    data["datasets"]["labels"]["uri"] = f"{lake}/raw/labels"
    data["validate"]["suites"] = {k: str(REPO / v) for k, v in data["validate"]["suites"].items()}
    if mutate:
        mutate(data)
    return write_params(tmp_path / "params.yaml", data)


@pytest.fixture(scope="session")
def stack():
    """The whole local stack, started once for the session and stopped at its end."""
    for key in ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "FRAUDOPS_MLFLOW_TRACKING_URI", "AIRFLOW_HOME"):
        os.environ.pop(key, None)
    os.environ.update(TEST_ENV)
    from pipelines import stack as st

    lay = st.up(timeout=300)
    yield lay
    st.down()


def stack_pids() -> set[int]:
    """Every process of the running stack: the services and all their children."""
    import psutil

    from pipelines import stack as st

    pids: set[int] = set()
    for info in st.status().values():
        if info["pid"]:
            proc = psutil.Process(info["pid"])
            pids |= {proc.pid, *(c.pid for c in proc.children(recursive=True))}
    return pids


@pytest.fixture(scope="session")
def make_bucket(stack):
    from pipelines.storage import s3_client

    def _make(name: str) -> str:
        client = s3_client()
        if name not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=name)
        return f"s3://{name}"

    return _make


@pytest.fixture(scope="session")
def demo_raw(stack):
    """Simulated raw data (params.yaml demo_data, Jan..Feb) in the stack's default lake bucket."""
    from pipelines.config import load_params
    from pipelines.demo_data import DemoParams, write_demo

    params = load_params(REPO / "params.yaml")
    p = DemoParams.from_dict({**params.section("demo_data"), "bugs": []})
    tx, lb = params.dataset("transactions"), params.dataset("labels")
    write_demo(p, tx.partition_uri, lb.partition_uri, p.start_date, params.run.end_date)
    return params
