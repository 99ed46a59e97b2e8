"""The champion gate and the registry on the real stack (S3 endpoint + MLflow server):
cold start -> champion; better -> challenger; worse -> no alias with the reason; re-run -> no
duplicate; promote then rollback restores the previous champion and the history shows both moves."""
from __future__ import annotations

import copy
import io
import json
import uuid
from contextlib import redirect_stdout

import pytest

from pipelines import evaluate, register, train
from pipelines.core import registry as models
from pipelines.core import storage
from pipelines.core.config import load_params
from pipelines.ops import models as models_cli
from tests.conftest import REPO, TRAIN_RANGE, base_params, write_params

pytestmark = pytest.mark.integration
RNG = ["--start", TRAIN_RANGE[0], "--end", TRAIN_RANGE[1]]
ONE = {"max_depth": [4], "learning_rate": [0.1], "scale_pos_weight": [1.0]}
VARIANTS = {   # test AP on TRAIN_RANGE's test window, measured: weak ~0.39, full ~0.55, no_amount ~0.11
    "weak": {"search": {**ONE, "max_depth": [1]}, "num_boost_round": 20},
    "full": {"search": ONE},
    "no_amount": {"search": ONE, "exclude_features": ["amount", "amount_over_customer_mean_30d",
                                                      "amount_over_customer_max_7d"]},
}


@pytest.fixture(scope="module")
def registry(training_features, tmp_path_factory):
    name = f"fraud-xgb-gate-{uuid.uuid4().hex[:6]}"
    root = tmp_path_factory.mktemp("gate")

    def params_for(variant: str):
        data = copy.deepcopy(base_params())
        data["validate"]["suites"] = {k: str(REPO / v) for k, v in data["validate"]["suites"].items()}
        data["storage"]["layout"]["training"] = f"test-gate/{name}/{variant}/{{run}}"
        data["train"].update(VARIANTS[variant])
        data["register"]["model_name"] = name
        data["register"]["gate"]["minimums"] = {"average_precision": 0.3, "recall": 0.3, "roc_auc": 0.75}
        return write_params(root / f"{variant}.yaml", data)

    def run(variant: str) -> dict:
        p = ["--params", str(params_for(variant)), *RNG]
        assert train.main(p) == 0 and evaluate.main(p) == 0
        with redirect_stdout(io.StringIO()):
            assert register.main(p) == 0
        params = load_params(params_for(variant))
        from pipelines.core.lake import training_uri
        from pipelines.core.config import parse_date

        base = training_uri(params, parse_date(TRAIN_RANGE[0]), parse_date(TRAIN_RANGE[1]))
        return {"registration": storage.read_json(f"{base}/register/registration.json"),
                "metrics": storage.read_json(f"{base}/evaluate/metrics.json")}

    return name, run


def _cli(*args: str) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert models_cli.main(list(args)) == 0
    return buf.getvalue()


def test_gate_lifecycle_and_alias_history(registry, tmp_path):
    name, run = registry
    c = models.client()

    weak = run("weak")                                          # cold start: minimums only -> champion
    assert weak["registration"]["alias"] == "champion" and weak["registration"]["gate"] == "passed"
    assert models.aliases(c, name) == {"champion": weak["registration"]["version"]}

    full = run("full")                                          # better than the champion -> challenger
    assert full["metrics"]["test"]["average_precision"] > weak["metrics"]["test"]["average_precision"] + 0.05
    assert full["registration"]["alias"] == "challenger"
    v_weak, v_full = weak["registration"]["version"], full["registration"]["version"]
    assert models.aliases(c, name) == {"champion": v_weak, "challenger": v_full}

    worse = run("no_amount")                                    # worse: registered, no alias, reason kept
    reg = worse["registration"]
    assert reg["gate"] == "failed" and reg["alias"] is None and reg["version"] not in (v_weak, v_full)
    mv = c.get_model_version(name, reg["version"])
    assert "average_precision" in mv.description and "FAILED" in mv.description
    assert mv.tags["gate"] == "failed" and "failed: average_precision" in mv.tags["gate_reasons"]
    assert models.aliases(c, name) == {"champion": v_weak, "challenger": v_full}

    versions_before = len(c.search_model_versions(f"name='{name}'"))
    again = run("full")                                         # same model again: nothing new, nothing moved
    assert again["registration"]["version"] == v_full
    assert len(c.search_model_versions(f"name='{name}'")) == versions_before == 3
    assert models.aliases(c, name) == {"champion": v_weak, "challenger": v_full}

    # the MLflow run carries metrics, plots, lineage tags and the model with its signature
    run_ = c.get_run(full["registration"]["run_id"])
    assert run_.data.metrics["test.average_precision"] == pytest.approx(full["metrics"]["test"]["average_precision"])
    for tag in ("git.commit", "git.dirty", "data.range", "data.features_sha256", "features.spec_hash",
                "device_used", "model_sha256"):
        assert run_.data.tags.get(tag), tag
    assert run_.data.tags["device_used"] == "cpu"
    arts = {a.path for a in c.list_artifacts(run_.info.run_id, "evaluate/images")}
    assert {"evaluate/images/pr.png", "evaluate/images/roc.png", "evaluate/images/calibration.png"} <= arts
    import mlflow

    loaded = mlflow.pyfunc.load_model(f"models:/{name}/{v_full}")
    assert loaded.metadata.get_input_schema().input_names()[:1] == ["amount"]

    # promote the challenger, then roll back: the previous champion returns; history has every move
    params_file = tmp_path / "p.yaml"
    write_params(params_file, {**base_params(), "register": {**base_params()["register"], "model_name": name}})
    dry = json.loads(_cli("--params", str(params_file), "promote", v_full, "--reason", "test", "--dry-run"))
    assert all(m["dry_run"] for m in dry) and models.aliases(c, name)["champion"] == v_weak
    _cli("--params", str(params_file), "promote", v_full, "--reason", "shadow won")
    assert models.aliases(c, name) == {"champion": v_full, "previous": v_weak}
    assert json.loads(_cli("--params", str(params_file), "promote", v_full)) == []      # idempotent
    _cli("--params", str(params_file), "rollback", "--reason", "bad night")
    assert models.aliases(c, name) == {"champion": v_weak}
    moves = [(h["alias"], h["from"], h["to"]) for h in models.history(c, name)]
    assert moves == [("champion", None, v_weak), ("challenger", None, v_full), ("previous", None, v_weak),
                     ("challenger", v_full, None), ("champion", v_weak, v_full), ("champion", v_full, v_weak),
                     ("previous", v_weak, None)]
    hist = models.history(c, name)
    assert "rollback from v" in hist[-2]["reason"] and hist[-2]["by"].startswith("cli:")
    lineage = json.loads(_cli("--params", str(params_file), "lineage", v_full))
    assert lineage["run_id"] == full["registration"]["run_id"] and lineage["features"]["features.spec_hash"]
    assert lineage["git"]["git.commit"] and lineage["data"]["data.test_window"] == "2026-02-15..2026-02-21"
    listing = _cli("--params", str(params_file), "list")
    assert f"{v_weak} champion" in " ".join(listing.split())

    # the version rolled back from is no fallback: a second rollback has nowhere to go (two models hurt
    # by the same upstream change do not take turns), and says so, changing nothing
    assert c.get_model_version(name, v_full).tags.get("rolled_back") and models.rollback_target(c, name) is None
    with pytest.raises(models.RegistryError, match="no previous champion"):
        models.rollback(c, name, "again")
    assert models.aliases(c, name) == {"champion": v_weak}
    # promoted again by a person, it is a fallback again (its tag goes)
    _cli("--params", str(params_file), "promote", v_full, "--reason", "fixed upstream")
    assert not c.get_model_version(name, v_full).tags.get("rolled_back") and models.rollback_target(c, name) == v_weak
    # the version a rollback would return to is no fallback while it is the challenger (its shadow
    # decides it): e.g. a model proposed again after the demo's reset
    models.move_alias(c, name, "challenger", v_weak, "test: proposed again")
    assert models.rollback_target(c, name) is None
    models.move_alias(c, name, "challenger", None, "test: retired")
    assert models.rollback_target(c, name) == v_weak
