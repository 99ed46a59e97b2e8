"""validate's judging: severities, quarantine, the block threshold, the accounting; GX for real."""
from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pytest

from pipelines.core.gx import load_suite, validate_frame
from pipelines.core.report import validation_html

DAY = dt.date(2026, 1, 12)
SUITE = {"name": "t", "expectations": [
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "amount"}, "meta": {"severity": "block", "name": "nn"}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "amount", "min_value": 0}, "meta": {"severity": "block", "name": "pos"}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "event_ts", "min_value": "{day_start}", "max_value": "{day_end}"}, "meta": {"severity": "block", "name": "day"}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "amount", "max_value": 1000}, "meta": {"severity": "warn", "name": "big"}},
    {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 5}, "meta": {"severity": "block", "name": "rows"}},
]}


def frame(amounts, ts=None):
    n = len(amounts)
    ts = ts or [dt.datetime(2026, 1, 12, 10) + dt.timedelta(seconds=i) for i in range(n)]
    return pl.DataFrame({"event_id": [f"e{i}" for i in range(n)], "event_ts": ts, "amount": amounts}).with_columns(
        pl.col("event_ts").cast(pl.Datetime("us")))


def test_clean_frame_passes():
    v = validate_frame(frame([1.0] * 200), SUITE, "t", DAY, 0.01)
    assert not v.blocked and v.validated.height == 200 and v.quarantine.height == 0


def test_few_bad_rows_are_quarantined_and_the_rest_passes():
    amounts = [1.0] * 198 + [None, -5.0]
    v = validate_frame(frame(amounts), SUITE, "t", DAY, 0.01)
    assert not v.blocked
    assert v.validated.height == 198
    assert dict(zip(v.quarantine["event_id"], v.quarantine["failed_expectations"])) == {"e198": "nn", "e199": "pos"}
    r = v.results
    assert r["rows_in"] == r["rows_validated"] + r["rows_quarantined"] + r["rows_held"]


def test_too_many_bad_rows_block_the_partition():
    v = validate_frame(frame([1.0] * 90 + [-1.0] * 10), SUITE, "t", DAY, 0.01)
    assert v.blocked and v.validated is None
    assert v.results["rows_quarantined"] == 10 and v.results["rows_held"] == 90
    assert "10 of 100 rows" in v.results["reasons"][0]


def test_timestamps_outside_the_partition_day_are_caught():
    ts = [dt.datetime(2026, 1, 12, 10)] * 199 + [dt.datetime(2026, 1, 14, 1)]
    v = validate_frame(frame([1.0] * 200, ts), SUITE, "t", DAY, 0.01)
    assert v.quarantine["failed_expectations"].to_list() == ["day"]


def test_table_level_block_fails_and_warn_only_records():
    v = validate_frame(frame([2000.0, 1.0]), SUITE, "t", DAY, 0.01)
    assert v.blocked and any(r.startswith("rows ") for r in v.results["reasons"])
    assert v.results["warnings"] == ["big"]
    assert v.quarantine.height == 0          # warn rows are not quarantined


def test_missing_column_is_a_block_failure_not_a_crash():
    v = validate_frame(frame([1.0] * 10).drop("amount"), SUITE, "t", DAY, 0.5)
    assert v.blocked
    failed = {e["name"] for e in v.results["expectations"] if not e["success"]}
    assert {"nn", "pos"} <= failed


def test_report_is_self_contained_html():
    v = validate_frame(frame([1.0] * 198 + [None, -5.0]), SUITE, "t", DAY, 0.01)
    page = validation_html(v.results, v.quarantine)
    assert "<style>" in page and "e199" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_suite_without_severity_is_refused(tmp_path):
    bad = {"name": "x", "expectations": [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}, "meta": {}}]}
    (tmp_path / "s.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="severity"):
        load_suite(tmp_path / "s.json")


def test_committed_suites_load_and_have_both_severities():
    for name in ("transactions", "features"):
        suite = load_suite(f"expectations/{name}.json")
        assert {e["meta"]["severity"] for e in suite["expectations"]} >= {"block"}
    tx = load_suite("expectations/transactions.json")
    assert {e["meta"]["severity"] for e in tx["expectations"]} == {"block", "warn"}
    kinds = {e["type"] for e in tx["expectations"]}
    assert {"expect_column_mean_to_be_between", "expect_column_quantile_values_to_be_between",
            "expect_table_row_count_to_be_between", "expect_column_values_to_be_unique",
            "expect_column_values_to_be_in_set", "expect_column_values_to_be_of_type"} <= kinds


def test_the_page_says_each_rule_in_plain_language_with_what_was_observed():
    v = validate_frame(frame([1.0] * 197 + [None, -5.0, 2000.0]), SUITE, "t", DAY, 0.05)
    page = validation_html(v.results, v.quarantine, index_link="../../index.html")
    assert not v.blocked and "Why it is blocked" not in page and "Why blocked" not in page
    assert "amount is at least 0 for every row" in page and "99.50% of rows pass (1 of 200 fail)" in page
    assert "event_ts is between the start of the partition&#39;s day and its end" in page
    assert "the partition has at least 5 rows" in page and "amount is present (not null) for every row" in page
    assert "expect_column" not in page.replace('title="expect_column', "")        # the GX names only as hover text
    assert page.index("amount is at most 1,000") < page.index("the partition has at least 5 rows")  # warnings first
    assert 'href="../../index.html"' in page
    blocked = validate_frame(frame([None] * 100 + [1.0] * 100), SUITE, "t", DAY, 0.05)
    assert "Why it is blocked" in validation_html(blocked.results, blocked.quarantine)


def test_the_index_lists_every_validation_run_with_links(tmp_path):
    import dataclasses

    from pipelines.core import storage
    from pipelines.core.config import load_params
    from pipelines.core.report import validation_index_html

    store = dataclasses.replace(load_params("params.yaml").storage, lake=str(tmp_path))
    for d, amounts in (("2026-01-12", [1.0] * 200), ("2026-01-13", [None] * 100 + [1.0] * 100)):
        r = validate_frame(frame(amounts), SUITE, "transactions", dt.date.fromisoformat(d), 0.05).results
        storage.write_bytes(store.uri("validation_results", dataset="transactions", date=d), storage.json_bytes(r))
    page = validation_index_html(store)
    assert "transactions: 2 partition(s), 1 blocked" in page
    assert page.index("2026-01-13") < page.index("2026-01-12")                # newest first
    assert 'href="transactions/date=2026-01-12/report.html"' in page and "failed row-level block" in page
    assert "data:image/svg+xml;base64," in page
