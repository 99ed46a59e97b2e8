"""Fail points."""
from __future__ import annotations

import pytest

from pipelines.core import faults


def test_fail_points_parse_paths_with_equals_signs(monkeypatch):
    monkeypatch.setenv(faults.ENV, "a=raise;b@date=2026-01-01=raise")
    with pytest.raises(RuntimeError, match="fail point a"):
        faults.point("a")
    faults.point("b", path="x/date=2026-01-02/")
    with pytest.raises(RuntimeError, match="fail point b"):
        faults.point("b", path="x/date=2026-01-01/part")
    monkeypatch.delenv(faults.ENV)
    faults.point("a")
