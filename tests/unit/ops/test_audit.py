"""The audit's judgement: planted contradictions are each reported, a consistent story is not."""
from __future__ import annotations

import copy

from pipelines.ops.audit import contradictions

CLEAN = {"date": "2026-03-04", "retrain": {"retrain": True, "training": {"dag_id": "training", "run_id": "retrain__2026-03-04"}},
         "model": {"scored_by": "model", "model_name": "m", "model_version": "2", "model_sha256": "ab" * 32},
         "predictions": 100, "validated": True, "features": True, "decisions": 100, "acted": 100,
         "summary": {"guardrails": {"status": "passed"}}}
FACTS = {"days": [CLEAN], "versions": {"m": {"1": "cd" * 32, "2": "ab" * 32}},
         "runs": {"training": {"retrain__2026-03-04"}, "labels": {"scheduled__2026-03-05"}},
         "moves": [{"at": "2026-03-05T01:00:00+00:00", "model": "m", "alias": "champion", "from": "1", "to": "2",
                    "by": "airflow:labels/scheduled__2026-03-05/lifecycle"},
                   {"at": "2026-03-05T02:00:00+00:00", "model": "m", "alias": "champion", "from": "2", "to": "1",
                    "by": "cli:ann@host"}]}


def planted(**changes):
    f = copy.deepcopy(FACTS)
    for k, v in changes.items():
        if k in ("runs", "versions", "moves"):
            f[k] = v
        else:
            f["days"][0][k] = v
    return contradictions(f)


def test_a_consistent_story_has_no_contradiction():
    assert contradictions(FACTS) == []


def test_each_planted_contradiction_is_reported():
    cases = {
        "Airflow holds no run training/retrain__2026-03-04": planted(runs={"training": set(), "labels": {"scheduled__2026-03-05"}}),
        "a version the registry does not hold": planted(model={**CLEAN["model"], "model_version": "7"}),
        "the registry says cdcdcdcdcdcd": planted(model={**CLEAN["model"], "model_version": "1"}),
        "no validated transactions": planted(validated=False),
        "no features": planted(features=False),
        "decisions without predictions": planted(predictions=None),
        "90 decisions for 100 predictions": planted(decisions=90),
        "held by the guardrails but 100 decision(s) act on it": planted(summary={"guardrails": {"status": "held"}}),
        "a run Airflow does not hold": planted(runs={"training": {"retrain__2026-03-04"}, "labels": set()}),
    }
    for needle, found in cases.items():
        assert len(found) >= 1 and any(needle in line for line in found), (needle, found)
    assert planted(summary={"guardrails": {"status": "held"}}, acted=0) == []        # held, nothing acted: fine
    assert planted(retrain={"retrain": False, "training": None}, runs={"training": set(), "labels": {"scheduled__2026-03-05"}}) == []


def test_without_airflow_its_checks_are_skipped():
    assert planted(runs=None) == []


class _Registry:
    def __init__(self, fail: bool = False):
        self.fail = fail

    def search_model_versions(self, query):
        if self.fail:
            raise ConnectionError("registry down")
        return []


def test_an_audit_that_reads_nothing_never_says_no_contradiction(tmp_path, monkeypatch, capsys):
    """The wrong lake (or range): no date has a record, exit 2 naming the lake; a registry that answers
    an error: exit 2 naming it; never "0 contradiction(s)"."""
    from pipelines.core import registry as models
    from pipelines.ops import audit
    from tests.conftest import params_with_lake

    path = params_with_lake(tmp_path, str(tmp_path / "lake"))
    argv = ["--params", str(path), "--start", "2026-03-01", "--end", "2026-03-03", "--no-airflow"]
    monkeypatch.setattr(models, "client", lambda: _Registry())
    assert audit.main(argv) == 2
    err = capsys.readouterr()
    assert "no date of the range has a record in the lake" in err.err and str(tmp_path / "lake") in err.err
    assert "contradiction" not in err.out
    monkeypatch.setattr(models, "client", lambda: _Registry(fail=True))
    assert audit.main(argv) == 2
    assert "the registry did not answer" in capsys.readouterr().err
