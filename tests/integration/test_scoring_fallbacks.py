"""Scoring on the real stack: the champion from the MLflow server, and each fallback flagged on every
row it touches: registry down -> cached model; no model or a corrupt one -> rules; a manifest
mismatch -> a clear error and nothing published. Monitoring alerts reach a webhook."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tempfile
import threading
import uuid
from contextlib import redirect_stdout
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import polars as pl
import pytest

from pipelines import decide, monitor, score
from pipelines.core import scoring
from pipelines.core import registry as models, storage
from pipelines.core.config import load_params, parse_date
from tests.conftest import REPO, nightly_params, publish

pytestmark = pytest.mark.integration
DAY = "2026-02-20"            # a TRAIN_RANGE day: its feature partition exists


def _score(params_path, day=DAY) -> pl.DataFrame:
    with redirect_stdout(io.StringIO()):
        assert score.main(["--params", str(params_path), "--date", day]) == 0
    return storage.read_parquet(load_params(params_path).storage.uri("predictions", date=day))


@pytest.fixture(scope="module")
def champion(nightly_champion, tmp_path_factory):
    """Own output prefix, own cache: the nightly DAG test's partitions are left alone."""
    root = tmp_path_factory.mktemp("fallbacks")

    def params(cache: str = "cache", name: str | None = None, **monitor_over):
        sub = root / uuid.uuid4().hex[:6]          # outputs of each call under a prefix of their own
        sub.mkdir()

        def mutate(d):
            d["storage"]["layout"] = {k: (f"test-fallbacks/{root.name}/{sub.name}/{v}" if k not in
                                          ("canonical", "validated", "features", "features_manifest", "training",
                                           "rejects", "ingest_stats", "quarantine", "validation_results",
                                           "validation_report") else v) for k, v in d["storage"]["layout"].items()}
            d["storage"]["layout"]["training"] = f"test-nightly/{nightly_champion['name']}/{{run}}"
            d["register"]["model_name"] = name or nightly_champion["name"]
            d["score"]["cache_dir"] = str(root / cache)
            d["monitor"].update(monitor_over)
        return nightly_params(name or nightly_champion["name"], sub, mutate)

    return {**nightly_champion, "params_for": params, "root": root}


def test_champion_then_registry_down_uses_the_cache_and_flags_every_row(champion, monkeypatch):
    p = champion["params_for"]()
    live = _score(p)
    assert set(live["scored_by"]) == {"model"} and set(live["model_version"]) == {champion["version"]}
    assert live["fallback"].list.len().max() == 0 and live["run_id"].null_count() == 0
    assert live.height == storage.read_json(load_params(p).storage.uri("features_manifest", date=DAY))["rows"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")        # nothing listens there
    cached = _score(p)
    assert cached["fallback"].to_list() == [["registry_cache"]] * cached.height
    assert cached["score"].equals(live["score"]) and set(cached["model_version"]) == {champion["version"]}
    stats = storage.read_json(load_params(p).storage.uri("scoring_stats", date=DAY))
    assert "registry unreachable" in stats["model"]["reason"] and stats["fallback_rows"] == {"registry_cache": live.height}

    cold = _score(champion["params_for"](cache="empty-cache"))            # no registry and no cache: rules
    assert cold["fallback"].to_list() == [["rules"]] * cold.height and set(cold["scored_by"]) == {"rules"}


def test_no_model_or_a_corrupt_model_falls_back_to_rules(champion):
    missing = _score(champion["params_for"](name=f"no-such-model-{uuid.uuid4().hex[:6]}"))
    assert set(missing["scored_by"]) == {"rules"} and missing["fallback"].to_list() == [["rules"]] * missing.height
    assert missing["model_version"].null_count() == missing.height

    import mlflow

    c = models.client()
    good = c.get_model_version(champion["name"], champion["version"])
    name = f"fraud-xgb-corrupt-{uuid.uuid4().hex[:6]}"
    c.create_registered_model(name)
    garbage = b"not an xgboost model"
    with tempfile.TemporaryDirectory() as tmp:
        for path in scoring.FILES.values():
            (Path(tmp) / path).parent.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(run_id=good.run_id, artifact_path=path,
                                                dst_path=str((Path(tmp) / path).parent))
        (Path(tmp) / "train" / "model.ubj").write_bytes(garbage)
        with mlflow.start_run() as run:
            mlflow.log_artifacts(tmp)
    mv = c.create_model_version(name, f"runs:/{run.info.run_id}/train", run_id=run.info.run_id,
                                tags={"model_sha256": scoring.M.sha256(garbage)})
    c.set_registered_model_alias(name, "champion", mv.version)
    p = champion["params_for"](name=name)
    corrupt = _score(p)
    assert set(corrupt["scored_by"]) == {"rules"} and corrupt["fallback"].to_list() == [["rules"]] * corrupt.height
    reason = storage.read_json(load_params(p).storage.uri("scoring_stats", date=DAY))["model"]["reason"]
    assert "failed to load" in reason


def test_manifest_mismatch_is_a_clear_error_and_publishes_nothing(champion):
    p = champion["params_for"]()
    params = load_params(p)
    store = params.storage
    part = storage.read_parquet(store.uri("features", date=DAY)).with_columns(pl.col("amount").cast(pl.Float32))
    man = storage.read_json(store.uri("features_manifest", date=DAY))
    import yaml

    raw = yaml.safe_load(Path(p).read_text())
    raw["storage"]["layout"]["features"] = f"test-fallbacks/{champion['root'].name}/bad-features/date={{date}}/part-0.parquet"
    raw["storage"]["layout"]["features_manifest"] = f"test-fallbacks/{champion['root'].name}/bad-features/date={{date}}/_manifest.json"
    Path(p).write_text(yaml.safe_dump(raw, sort_keys=False))
    store = load_params(p).storage
    publish(store.uri("features", date=DAY), part, {store.uri("features_manifest", date=DAY): man})
    r = subprocess.run([sys.executable, "-m", "pipelines", "score", "--params", str(p), "--date", DAY], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "ERROR score:" in r.stderr and "dtype mismatch" in r.stderr and "amount" in r.stderr
    assert not storage.exists(store.uri("predictions", date=DAY))


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_monitoring_alerts_are_stored_and_sent_to_the_webhook(champion, monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("FRAUDOPS_ALERT_WEBHOOK", f"http://127.0.0.1:{server.server_port}/hook")
        p = champion["params_for"](psi={"warn": 0.0, "alert": 0.0})           # every feature alerts
        _score(p)
        with redirect_stdout(io.StringIO()):
            assert decide.main(["--params", str(p), "--date", DAY]) == 0
            assert monitor.main(["--params", str(p), "--date", DAY]) == 0
        store = load_params(p).storage
        rec = storage.read_json(store.uri("alerts", date=DAY))
        assert rec["drifted"] and rec["alerts"] and rec["webhook"]["delivered"] is True
        assert len(_Hook.received) == 1 and _Hook.received[0]["alerts"] == rec["alerts"]
        html = storage.read_bytes(store.uri("monitor_report", date=DAY)).decode()
        assert "data:image/svg+xml;base64," in html and "<script" not in html and "<link" not in html
        assert not re.search(r'(src|href)="(https?:)?//', html) and "url(http" not in html   # nothing from a CDN
        index = storage.read_bytes(store.uri("monitor_index")).decode()
        assert f"date={DAY}/report.html" in index
        metrics = storage.read_parquet(store.uri("monitoring", date=DAY))
        assert {"psi", "ks", "score_psi", "review_rate", "fallback_share", "null_share_increase", "rows"} <= set(metrics["metric"])
        psi = metrics.filter(pl.col("metric") == "psi")
        assert psi.filter(pl.col("status") == "alert").height == psi.filter(pl.col("value") > 0).height > 10
        perf = storage.read_parquet(store.uri("monitoring_perf", date=DAY))
        assert {"rows_per_s", "chunk_latency_p95_ms"} <= set(perf["metric"])
        assert parse_date(DAY) in set(metrics["date"])
    finally:
        server.shutdown()
