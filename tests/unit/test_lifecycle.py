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
