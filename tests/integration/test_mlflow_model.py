"""The registered model as MLflow users load it: `mlflow.pyfunc.load_model("models:/<name>@champion")`
on a feature partition read as the score stage reads it gives exactly the score stage's scores."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from pipelines.core import storage
from pipelines.core.config import load_params
from pipelines.core.scoring import resolve_model, score_partition

pytestmark = pytest.mark.integration


def test_pyfunc_scores_equal_the_score_stage(nightly_champion):
    import mlflow.pyfunc

    params = load_params(nightly_champion["params"])
    day = "2026-02-25"
    frame = storage.read_parquet(params.storage.uri("features", date=day))
    fmanifest = storage.read_json(params.storage.uri("features_manifest", date=day))
    served = resolve_model(params.score)
    assert served.scored_by == "model" and served.version == nightly_champion["version"]
    stage, _ = score_partition(frame, fmanifest, served, params.score, dt.date.fromisoformat(day), "test")
    assert stage["fallback"].list.len().max() == 0            # no row defaulted: the model alone scored

    model = mlflow.pyfunc.load_model(f"models:/{nightly_champion['name']}@champion")
    got = np.asarray(model.predict(frame.to_pandas()))         # every column of the partition, as read
    assert got.shape == (frame.height,)
    np.testing.assert_array_equal(got.astype(np.float32), stage["score"].to_numpy().astype(np.float32))


def test_the_training_run_reads_as_a_classic_ml_run(nightly_champion):
    """The experiment opens as classic ML; the run names its input datasets per window, holds the grid
    search as a table and the chosen model's learning curve per boosting round; the registered model's
    page shows the alias history as a table."""
    import json

    from pipelines.core import registry as models
    from pipelines.core.lake import SUMMARY, TRAIN, artifact

    c = models.client()
    name, version = nightly_champion["name"], nightly_champion["version"]
    run = c.get_run(c.get_model_version(name, version).run_id)
    exp = c.get_experiment(run.info.experiment_id)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"

    summary = json.loads(models.run_artifact(run.info.run_id, artifact(TRAIN, SUMMARY)))
    inputs = {i.tags[0].value if i.tags else None: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "testing"}, inputs
    for context, key in (("training", "train"), ("validation", "valid"), ("testing", "test")):
        assert inputs[context].name == f"features {summary['windows'][key][0]}..{summary['windows'][key][1]}"
        assert "features" in json.loads(inputs[context].source)["uri"]
    assert inputs["training"].digest and inputs["validation"].digest

    trials = json.loads(models.run_artifact(run.info.run_id, "train/search_trials.json"))
    assert len(trials["data"]) == len(summary["search"]) >= 1
    curve = summary["learning_curve"]
    hist = c.get_metric_history(run.info.run_id, f"learning_curve.valid_{curve['metric']}")
    assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(len(curve["valid"])))
    assert len(curve["valid"]) > summary["best_iteration"]            # it ran past the best round, then stopped
    chosen = max(summary["search"], key=lambda t: t[f"valid_{curve['metric']}"])
    assert max(curve["valid"]) == pytest.approx(chosen[f"valid_{curve['metric']}"])

    desc = c.get_registered_model(name).description
    assert "| when (UTC) | alias | from | to | reason | by |" in desc
    assert any(line.startswith("| ") and f"| champion | - | {version} |" in line for line in desc.splitlines()), desc
