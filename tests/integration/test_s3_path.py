"""The production path: objects on an S3 endpoint through boto3 (signed requests, moto's server
here), for the stages and for DVC's remote; and a dead or slow endpoint ends a command within the
configured bound with one line naming the endpoint, publishing nothing."""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import subprocess
import sys
import threading
import time

import polars as pl
import pytest

from pipelines.core import storage
from pipelines.core.config import date_range, load_params
from pipelines.ops.demo_data import DemoParams, make_world, simulate_day, split_labels
from tests.conftest import REPO, params_with_lake, sh

pytestmark = pytest.mark.integration
START, END = dt.date(2026, 1, 1), dt.date(2026, 1, 16)
BUCKET = "fraudops-s3path"


def small_spec(data: dict) -> None:
    """A 14-day look-back (features of END need 16 days of data), no features suite (explicitly)."""
    data["features"]["windows_days"] = [1, 7]
    data["features"]["target_rate"] = {"terminal": [7]}
    data["features"]["ratios"] = [{"name": "amount_over_customer_max_7d", "numerator": "amount",
                                   "denominator": "customer_amount_max_7d"}]
    data["validate"]["suites"]["features"] = False
    data["register"]["model_name"] = "fraud-xgb-s3path"          # none registered: scoring falls back to rules
    data["ingest"]["duplicate_window_days"] = 14
    data["features"]["state_keep_days"] = 14                     # the look-back: the least it may keep


@contextlib.contextmanager
def environ(env: dict):
    """This process's environment with `env` on top, restored after (the session's stack keeps
    its own object store)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def s3_lake(stack, s3_endpoint, tmp_path_factory):
    with environ(s3_endpoint["env"]):
        path = params_with_lake(tmp_path_factory.mktemp("s3path"), storage.ensure_bucket(BUCKET), small_spec)
        params = load_params(path)
        p = DemoParams.from_dict(params.section("demo_data"))
        world = make_world(p)
        for day in date_range(START, END):
            tx, labels = split_labels(simulate_day(p, world, day))
            storage.write_bytes(f"{params.dataset('transactions').partition_uri(day)}/part-0.parquet",
                                storage.parquet_bytes(tx))
            if day + dt.timedelta(days=7) <= END:
                storage.write_bytes(f"{params.dataset('labels').partition_uri(day + dt.timedelta(days=7))}/part-0.parquet",
                                    storage.parquet_bytes(labels))
    return str(path), params


def cli(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


def test_the_nightly_chain_reads_and_writes_s3_through_boto3(s3_lake, s3_endpoint, on_s3):
    path, params = s3_lake
    env = s3_endpoint["env"]
    rng = ["--params", path, "--start", START.isoformat(), "--end", END.isoformat()]
    for stage in ("ingest", "validate"):
        r = cli(env, stage, *rng)
        assert r.returncode == 0, r.stderr[-2000:]
    day = ["--params", path, "--date", END.isoformat()]
    for stage in ("features", "score", "decide"):
        r = cli(env, stage, *day)
        assert r.returncode == 0, (stage, r.stderr[-2000:])
        if stage == "features":     # from the states on S3 (downloaded one ahead of the fold), not from raw
            assert "incremental:" in r.stderr and "computed from raw" not in r.stderr, r.stderr[-2000:]
    store = params.storage
    d = END.isoformat()
    keys = {o["Key"] for o in storage.s3_client().list_objects_v2(Bucket=BUCKET, Prefix="")["Contents"]}
    for kind in ("canonical", "validated"):
        assert f"{kind}/transactions/date={d}/part-0.parquet" in keys
    assert f"features/date={d}/_lineage.part-0.parquet.json" in keys                   # committed records, on S3
    assert f"decisions/date={d}/_lineage.part-0.parquet.json" in keys
    feats = storage.read_parquet(store.uri("features", date=d))
    pred = storage.read_parquet(store.uri("predictions", date=d))
    dec = storage.read_parquet(store.uri("decisions", date=d))
    assert feats.height == pred.height == dec.height > 1000
    # the rows of a Parquet object from its footer alone (two ranged reads of its tail: the look-back's
    # count before a recomputation from raw); an object that is not Parquet is named
    with environ(env):
        assert storage.parquet_rows(store.uri("features", date=d)) == feats.height
        with pytest.raises(storage.StorageError, match="Parquet footer cannot be read"):
            storage.parquet_rows(storage.record_uri(store.uri("features", date=d)))
    assert set(pred["scored_by"]) == {"rules"} and pred["fallback"].list.contains("rules").all()   # flagged
    assert storage.object_root() is None and storage.endpoint_url() == s3_endpoint["url"]

    # two reviewers record a verdict at the same moment (two processes; the spaced `--params P override`
    # form): both are kept, and deciding the day again applies both
    events = pred.filter(pl.col("score") < 0.5)["event_id"].head(2).to_list()
    procs = [subprocess.Popen([sys.executable, "-m", "pipelines", "decide", "--params", path, "override", "--date", d,
                               "--event-id", e, "--decision", "block", "--reviewer", f"r{i}"], cwd=REPO, text=True,
                              env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i, e in enumerate(events)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "override recorded" in out, err[-2000:]
    r = cli(env, "decide", *day)
    assert r.returncode == 0, r.stderr[-2000:]
    again = storage.read_parquet(store.uri("decisions", date=d)).filter(pl.col("event_id").is_in(events))
    assert sorted(zip(again["decision"], again["reason_code"])) == [("block", "human_override")] * 2

    # the night made its look-back's feature states on S3; a night 15 days later no longer needs them:
    # pruned (records first, DeleteObjects in batches), nothing left under their prefix
    from pipelines import features

    states = sorted(k for k in keys if k.startswith("feature_state/"))
    made = sorted({k.split("/")[1][5:] for k in states})
    assert len(made) == 14 and any("/labelled/" in k for k in states) and any("/_lineage." in k for k in states)
    with environ(env), storage.Publisher(store.lake, None) as pub:
        gone = features.prune_states(params, END + dt.timedelta(days=15), pub)
    assert [d.isoformat() for d in gone] == made
    assert storage.s3_client().list_objects_v2(Bucket=BUCKET, Prefix="feature_state/").get("KeyCount") == 0


def test_dvc_pushes_and_pulls_through_an_s3_remote(s3_endpoint, tmp_path):
    env = {**s3_endpoint["env"], "DVC_NO_ANALYTICS": "1"}
    with environ(env):
        storage.ensure_bucket("fraudops-dvc-s3path")
        ws = tmp_path / "ws"
        ws.mkdir()
        (ws / "data.txt").write_text("the same bytes on the other side\n")
        for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"],
                    ["dvc", "remote", "add", "-d", "lake", "s3://fraudops-dvc-s3path/cache"],
                    ["dvc", "remote", "modify", "lake", "endpointurl", s3_endpoint["url"]],
                    ["dvc", "add", "-q", "data.txt"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
            sh(cmd, ws)
        assert "1 file pushed" in sh(["dvc", "push"], ws)
        clone = tmp_path / "clone"
        sh(["git", "clone", "-q", str(ws), str(clone)], tmp_path)
        sh(["dvc", "pull"], clone)
        assert (clone / "data.txt").read_text() == "the same bytes on the other side\n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _SlowProxy:
    """Accepts connections to an S3 endpoint and answers nothing for `delay` seconds (a hung
    endpoint), bounded in time: it stops by itself."""

    def __init__(self, delay: float) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.delay, self.conns = delay, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(self.delay)
        end = time.monotonic() + self.delay
        while time.monotonic() < end:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)                   # held open, never answered
            except OSError:
                break
        self.sock.close()


@pytest.mark.parametrize("kind", ["down", "slow"])
def test_a_dead_or_hung_s3_endpoint_ends_within_the_bound_with_one_line(s3_lake, s3_endpoint, kind, tmp_path):
    import yaml

    path, params = s3_lake
    data = yaml.safe_load(open(path))
    data["services"] = {"timeout_s": 12}
    bounded = tmp_path / "params.yaml"
    bounded.write_text(yaml.safe_dump(data))
    proxy = _SlowProxy(120) if kind == "slow" else None
    url = f"http://127.0.0.1:{proxy.port if proxy else _closed_port()}"
    t0 = time.monotonic()
    r = cli({**s3_endpoint["env"], "AWS_ENDPOINT_URL": url}, "score", "--params", str(bounded), "--date",
            END.isoformat(), timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 1 and took < 12 + 25, (took, r.stderr[-1500:])        # the bound, plus start-up
    err = [line for line in r.stderr.splitlines() if line.startswith("ERROR")]
    assert len(err) == 1 and url in err[0] and ("unreachable" in err[0] or "too slow" in err[0]), r.stderr[-1500:]
    assert "Traceback" not in r.stderr
