"""After the labels: the rollback rule, the promotion verdict and their params."""
from __future__ import annotations

import pytest

from pipelines.core.config import ConfigError, PromotionParams, RollbackParams
from pipelines.lifecycle import promotion_verdict, should_rollback

RB = RollbackParams(auto=True, metric="error_rate", factor=2.0, window_days=1, min_rows=100)


@pytest.mark.parametrize("realized,baseline,rows,expected", [
    (0.05, 0.02, 1000, True),          # 2.5x the baseline
    (0.04, 0.02, 1000, False),         # exactly 2x: not over
    (0.05, 0.02, 99, False),           # too few labelled rows to judge
    (None, 0.02, 0, False),
    (0.05, None, 1000, False),         # no baseline: no automatic move
])
def test_rollback_rule(realized, baseline, rows, expected):
    do, why = should_rollback(realized, baseline, rows, RB)
    assert do is expected and why


PR = PromotionParams(mode="auto", metric="average_precision", shadow_days=2, min_wins=2, min_margin=0.0,
                     max_slice_drop=0.05, slice_min_positives=10, lookback_days=30)


def _days(*deltas):
    return [{"date": f"2026-03-0{i + 1}", "delta": d} for i, d in enumerate(deltas)]


def test_promotion_verdict():
    assert promotion_verdict(_days(0.1), None, PR)[0] == "wait"
    assert promotion_verdict(_days(0.1, 0.02), ("is_night=1", 0.01), PR)[0] == "promote"
    action, why = promotion_verdict(_days(0.1, -0.01), None, PR)
    assert action == "retire" and "1 of 2" in why
    action, why = promotion_verdict(_days(0.1, 0.1), ("category_code=3", 0.2), PR)
    assert action == "retire" and "category_code=3" in why
    assert promotion_verdict(_days(-0.5, 0.1, 0.1), None, PR)[0] == "promote"       # the latest S days count
    assert promotion_verdict(_days(0.1, None), None, PR)[0] == "retire"


def test_promotion_and_rollback_params_are_checked():
    with pytest.raises(ConfigError):
        PromotionParams.from_dict({**PR.__dict__, "mode": "yolo"})
    with pytest.raises(ConfigError):
        PromotionParams.from_dict({**PR.__dict__, "min_wins": 3})
    with pytest.raises(ConfigError):
        RollbackParams.from_dict({**RB.__dict__, "metric": "vibes"})


@pytest.mark.parametrize("section,key,value,says", [
    ("promotion", "metric", "ap", "promotion.metric"),                      # every delta n/a: every challenger retired
    ("promotion", "lookback_days", 1, "promotion.lookback_days"),           # < shadow_days: waits forever
    ("promotion", "max_slice_drop", -0.1, "max_slice_drop"),
    ("rollback", "window_days", 0, "rollback.window_days"),                 # an empty range on every label date
    ("rollback", "auto", "false", "rollback.auto"),                         # a string: truthy
    ("rollback", "factor", -1, "rollback.factor"),
    ("shadow", "enabled", "no", "shadow.enabled"),
    ("shadow", "alias", "champion", "shadow.alias"),
    ("retrain", "cooldown_days", -5, "retrain.cooldown_days"),
    ("retrain", "max_per_30_days", 0, "retrain.max_per_30_days"),
    ("register", "gate", {"headline_metric": "ap"}, "register.gate.headline_metric"),
    ("register", "gate", {"minimums": {"average_precison": 0.3}}, "register.gate.minimums"),
    ("register", "gate", {"max_drop_vs_champion": -0.02}, "max_drop_vs_champion"),
])
def test_the_lifecycle_params_that_would_fail_late_or_silently_fail_at_load(tmp_path, section, key, value, says):
    from pipelines.core.config import load_params
    from tests.conftest import params_with_lake

    def mutate(data):
        if isinstance(value, dict):
            data[section][key].update(value)
        else:
            data[section][key] = value
    path = params_with_lake(tmp_path, str(tmp_path / "lake"), mutate)
    with pytest.raises(ConfigError, match=says.replace(".", r"\.")):
        load_params(path)


def test_the_projects_params_and_other_metrics_load(tmp_path):
    from pipelines.core.config import load_params
    from tests.conftest import params_with_lake

    def mutate(data):
        data["promotion"]["metric"] = "roc_auc"
        data["register"]["gate"]["minimums"]["precision_at_100"] = 0.1
        data["register"]["gate"]["minimums"]["entity_precision_at_20"] = 0.1
        data["rollback"]["auto"] = False
    p = load_params(params_with_lake(tmp_path, str(tmp_path / "lake"), mutate))
    assert p.promotion.metric == "roc_auc" and p.rollback.auto is False and p.shadow.alias == "challenger"


class _Registry:
    """An in-memory registered model: versions, aliases, tags (the alias history lives in tags)."""

    def __init__(self, versions, aliases):
        self.versions = {str(v): {} for v in versions}
        self.al, self.tags = dict(aliases), {}

    def get_model_version_by_alias(self, name, alias):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        if alias not in self.al:
            raise MlflowException(f"alias {alias} not found", error_code=INVALID_PARAMETER_VALUE)
        return self.get_model_version(name, self.al[alias])

    def get_model_version(self, name, v):
        import types

        return types.SimpleNamespace(version=str(v), run_id=f"run{v}", tags=self.versions[str(v)])

    def get_registered_model(self, name):
        import types

        return types.SimpleNamespace(tags=dict(self.tags), aliases=dict(self.al))

    def set_registered_model_tag(self, name, k, v):
        self.tags[k] = v

    def update_registered_model(self, name, description=None):
        pass

    def delete_registered_model_alias(self, name, alias):
        self.al.pop(alias, None)

    def set_registered_model_alias(self, name, alias, v):
        self.al[alias] = str(v)

    def set_model_version_tag(self, name, v, k, val):
        self.versions[str(v)][k] = val

    def delete_model_version_tag(self, name, v, k):
        self.versions[str(v)].pop(k)


@pytest.mark.parametrize("first_write_fails", [False, True])
def test_a_re_run_of_a_lifecycle_date_keeps_the_moves_it_made(tmp_path, monkeypatch, first_write_fails):
    """The challenger wins its shadow and is promoted; the date runs again (a retry after the record's
    write failed, or a cleared task): there is nothing left to move, and the record still holds the
    promotion's moves (the registry's history names them by this decision), so retrain sees the move."""
    import datetime as dt

    from pipelines import lifecycle, retrain
    from pipelines.core import registry as R
    from pipelines.core import storage
    from pipelines.core.config import load_params
    from tests.conftest import params_with_lake

    def mutate(data):
        data["promotion"]["mode"] = "auto"
    params = load_params(params_with_lake(tmp_path, str(tmp_path / "lake"), mutate))
    reg = _Registry([1, 2], {"champion": "1", params.shadow.alias: "2"})
    monkeypatch.setattr(R, "client", lambda: reg)
    monkeypatch.setattr(R, "_http_uri", lambda: None)
    store, landed = params.storage, dt.date(2026, 4, 20)
    scored = landed - dt.timedelta(days=params.dataset("labels").delay_days)
    for i in range(params.promotion.shadow_days):       # labelled shadow days, the challenger ahead on each
        storage.write_bytes(store.uri("feedback_summary", date=(scored - dt.timedelta(days=i)).isoformat()),
                            storage.json_bytes({"comparison": {
                                "challenger_version": "2", "champion_version": "1", "metric": params.promotion.metric,
                                "champion": 0.5, "challenger": 0.6, "delta": 0.1, "rows": 5000, "positives": 40}}))
    uri = store.uri("lifecycle_decision", date=landed.isoformat())
    if first_write_fails:
        real = storage.write_bytes

        def failing(u, data, *a, **k):
            if u == uri:
                raise storage.StorageError(f"{u}: injected write failure")
            return real(u, data, *a, **k)
        monkeypatch.setattr(storage, "write_bytes", failing)
        with pytest.raises(storage.StorageError):
            lifecycle.lifecycle_day(params, landed)
        monkeypatch.setattr(storage, "write_bytes", real)
    else:
        first = lifecycle.lifecycle_day(params, landed)
        assert first["promotion"]["action"] == "promote" and first["moves"]
    assert reg.al["champion"] == "2" and params.shadow.alias not in reg.al
    again = lifecycle.lifecycle_day(params, landed)
    assert again["promotion"]["action"] == "none"
    moves = storage.read_json(uri)["moves"]
    assert [(m["alias"], m["from"], m["to"]) for m in moves] == [
        ("previous", None, "1"), (params.shadow.alias, "2", None), ("champion", "1", "2")]
    assert storage.read_json(uri)["moves_of_earlier_attempts"] == 3
    assert retrain.last_champion_move(params, landed + dt.timedelta(days=1)) == landed


def test_a_rollback_never_returns_to_the_version_it_rolled_back_from(monkeypatch):
    """v2 replaced v1, then was rolled back: a second rollback (both models suffer from the same
    upstream change) has no target, instead of handing the champion back to v2; the same bytes
    trained again do not pass the gate again; a person promoting v2 again makes it a fallback again."""
    import types

    from pipelines import register
    from pipelines.core import registry as R

    reg = _Registry([1, 2], {})
    monkeypatch.setattr(R, "actor", lambda: "test")
    R.promote(reg, "m", "1", "first")
    R.promote(reg, "m", "2", "better")
    assert R.rollback_target(reg, "m") == "1"
    R.rollback(reg, "m", "realized error rate 3x")
    assert reg.al["champion"] == "1" and "rolled_back" in reg.versions["2"]
    assert R.rollback_target(reg, "m") is None
    with pytest.raises(R.RegistryError, match="no previous champion"):
        R.rollback(reg, "m", "again")
    assert reg.al["champion"] == "1"
    mv = types.SimpleNamespace(version="2", tags=reg.versions["2"])
    assert not register._proposable_again(reg, "m", mv)
    assert register._proposable_again(reg, "m", types.SimpleNamespace(
        version="2", tags={**reg.versions["2"], register.RESET_TAG: "true"}))
    R.promote(reg, "m", "2", "fixed upstream: v2 again, on purpose")
    assert "rolled_back" not in reg.versions["2"] and R.rollback_target(reg, "m") == "1"


def test_the_moves_of_a_decision_leave_out_those_a_later_move_undid(monkeypatch):
    """A scenario replayed on the same registry (the demo's reset moves the aliases back, then the same
    decision runs again): the earlier scenario's moves are not this attempt's."""
    from pipelines.core import registry as R

    reg = _Registry([1, 2], {})
    monkeypatch.setattr(R, "actor", lambda: "test")
    monkeypatch.setattr(R, "client", lambda: reg)
    monkeypatch.setattr(R, "_http_uri", lambda: None)
    mark = "[lifecycle decision lake/monitoring/lifecycle/date=2026-03-16/decision.json]"
    R.promote(reg, "m", "1", "first")
    R.promote(reg, "m", "2", f"after shadow {mark}")
    assert [(m["alias"], m["to"]) for m in R.moves_of("m", mark)] == [("previous", "1"), ("champion", "2")]
    assert R.moves_of("m", mark.replace("03-16", "03-1")) == []
    R.move_alias(reg, "m", "champion", "1", "demo: the scenario starts again")    # undoes the champion move
    assert [(m["alias"], m["to"]) for m in R.moves_of("m", mark)] == [("previous", "1")]
    R.move_alias(reg, "m", "previous", None, "demo: a new scenario")
    assert R.moves_of("m", mark) == []
