"""The monitoring report."""
from __future__ import annotations

import datetime as dt

import polars as pl


def test_monitor_report_shows_realized_metrics_per_version():
    from pipelines.core.lake import REALIZED_SCHEMA
    from pipelines.monitor import realized_rows

    d = dt.date(2026, 3, 1)
    rows = [(d, d, "m", "1", "champion", "average_precision", "", 0.61), (d, d, "m", "1", "champion", "error_rate", "", 0.002),
            (d, d, "m", "2", "challenger", "average_precision", "", 0.72), (d, d, "m", "1", "champion", "slice.recall", "x=1", 0.5),
            (d, d, "m", "", "review", "reviews.verdicts", "", 3.0)]
    table = realized_rows(pl.DataFrame(rows, schema=REALIZED_SCHEMA, orient="row"))
    assert [r[1:3] for r in table] == [["challenger", "v2"], ["champion", "v1"]]      # no review row; by role
    cells = {r[1]: r[3:] for r in table}
    assert "0.61" in cells["champion"] and "0.72" in cells["challenger"] and "0.002" in cells["champion"]
    assert realized_rows(None) == []
