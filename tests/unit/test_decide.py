"""Decisions: precedence, review capacity, human overrides, rule columns."""
from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from pipelines.core.config import DecideParams
from pipelines.core.reviews import OVERRIDE_SCHEMA
from pipelines.decide import ACTION, ENUMS, DecideError, Tally, decisions

D = dt.date(2026, 3, 10)


def decide_all(pred: pl.DataFrame, overrides: pl.DataFrame, p: DecideParams):
    """The stage's own streaming path, in batches of 3 rows: the decisions and the day's summary."""
    def batches():
        for i in range(0, pred.height, 3):
            yield pred.slice(i, 3)
    tally = Tally()
    out = []
    for dec in decisions(batches, overrides, p):
        tally.add(dec)
        out.append(dec)
    return pl.concat(out), tally.summary(overrides, p)


DP = DecideParams(block_threshold=0.9, review_threshold="operating", review_capacity=3, over_capacity="approve",
                  rules=({"name": "huge", "feature": "amount", "op": ">", "value": 1000.0, "decision": "review"},),
                  allow_list={"customer": ("vip",)})


def _pred(scores, customers=None, amounts=None):
    """Predictions as score writes them: keys, outputs and the carried rule column (amount)."""
    n = len(scores)
    return pl.DataFrame({"event_id": [f"e{i}" for i in range(n)], "customer": customers or [f"c{i}" for i in range(n)],
                         "amount": amounts or [10.0] * n,
                         "ds": [D] * n, "score": pl.Series(scores, dtype=pl.Float32),
                         "threshold": pl.Series([0.5] * n, dtype=pl.Float32), "model_name": ["m"] * n,
                         "model_version": ["1"] * n, "scored_by": ["model"] * n,
                         "fallback": pl.Series([[]] * n, dtype=pl.List(pl.String))})


def test_decisions_precedence_capacity_and_overrides():
    pred = _pred([0.95, 0.8, 0.7, 0.6, 0.55, 0.1, 0.2, 0.99], ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "vip"],
                 [10.0, 10, 10, 10, 10, 5000, 10, 10])
    over = pl.DataFrame({"event_id": ["e1", "nope"], "decision": ["block", "approve"], "reviewer": ["ann", "bob"],
                         "note": ["confirmed", ""], "at": [dt.datetime(2026, 3, 10, tzinfo=dt.timezone.utc)] * 2},
                        schema=OVERRIDE_SCHEMA)
    out, s = decide_all(pred, over, DP)
    got = dict(zip(out["event_id"], zip(out["decision"], out["reason_code"])))
    assert got["e0"] == ("block", "model_block")
    assert got["e7"] == ("approve", "allow_list:customer")          # allow-list beats the model's block
    assert got["e5"] == ("review", "rule:huge")                      # the rule beats the model's approve
    assert got["e1"] == ("block", "human_override")                  # the human wins
    # capacity 3: the forced review first, then the highest model scores (e2, e3); e4 spills over
    assert got["e2"] == ("review", "model_review") and got["e3"] == ("review", "model_review")
    assert got["e4"] == ("approve", "over_capacity")
    queue = out.filter(pl.col("queue_rank").is_not_null()).sort("queue_rank")["event_id"].to_list()
    assert queue == ["e5", "e2", "e3"]
    assert out.height == pred.height and out["decision"].null_count() == 0 and out["reason_code"].null_count() == 0
    assert s["overrides_applied"] == 1 and s["overrides_unmatched"] == ["nope"] and s["over_capacity"] == 1
    assert sum(s["decisions"].values()) == pred.height


def test_rule_columns_must_exist():
    bad = DecideParams(**{**DP.__dict__, "rules": ({"name": "x", "feature": "nope", "op": ">", "value": 1,
                                                    "decision": "review"},)})
    with pytest.raises(Exception, match=r"do not carry .*nope.*score.carry_columns"):
        decide_all(_pred([0.1]), pl.DataFrame(schema=OVERRIDE_SCHEMA), bad)


def test_rule_forced_reviews_respect_the_capacity_highest_risk_first():
    """Five rule-forced reviews, capacity 3: the three with the highest scores are queued, the other
    two are counted as over_capacity (never silently dropped)."""
    pred = _pred([0.1, 0.6, 0.2, 0.4, 0.3], amounts=[5000.0] * 5)
    out, s = decide_all(pred, pl.DataFrame(schema=OVERRIDE_SCHEMA), DP)
    got = {r["event_id"]: (r["decision"], r["reason_code"], r["queue_rank"]) for r in out.iter_rows(named=True)}
    assert [e for e, v in sorted(got.items(), key=lambda kv: kv[1][2] or 99) if v[2]] == ["e1", "e3", "e4"]
    assert got["e0"] == got["e2"] == ("approve", "over_capacity", None)
    assert s["review_queue"] == 3 and s["over_capacity"] == 2 and s["rows"] == 5


def test_a_held_day_acts_on_nothing_but_human_overrides_stand():
    pred = _pred([0.95, 0.7, 0.1, 0.99], amounts=[1.0] * 4)
    ov = pl.DataFrame({"event_id": ["e3"], "decision": ["approve"], "reviewer": ["ann"], "note": [""],
                       "at": [dt.datetime(2026, 3, 10, tzinfo=dt.timezone.utc)]}, schema=OVERRIDE_SCHEMA)

    def batches():
        yield pred

    tally = Tally()
    out = pl.concat(list(decisions(batches, ov, DP, held=True)))
    for dec in decisions(batches, ov, DP, held=True):
        tally.add(dec)
    assert out["decision"].to_list() == ["hold", "hold", "hold", "approve"]
    assert out["reason_code"].to_list() == ["guardrail_hold"] * 3 + ["human_override"]
    assert out["proposed_decision"].to_list() == ["block", "review", "approve", "approve"]
    assert out["queue_rank"].null_count() == 4
    s = tally.summary(ov, DP)
    assert s["decisions"]["hold"] == 3 and s["decisions"]["block"] == 0 and s["review_queue"] == 0


def test_the_guardrails_baseline_is_the_latest_days_not_rejected(tmp_path):
    """trailing_days reads the earlier decided days (newest first) and skips the rejected ones."""
    from pipelines.core import storage
    from pipelines.core.config import load_params
    from pipelines.decide import trailing_days
    from tests.conftest import REPO
    from tests.unit.conftest import local_lake

    store = local_lake(tmp_path, load_params(REPO / "params.yaml"))
    for i, status in enumerate(["passed", "rejected", "held", "released", "passed"]):
        d = (D + dt.timedelta(days=i)).isoformat()
        storage.write_bytes(store.uri("decisions", date=d), storage.parquet_bytes(_pred([0.1])))
        storage.write_bytes(store.uri("decision_summary", date=d), storage.json_bytes(
            {"rows": 10, "decisions": {"block": i}, "guardrails": {"status": status,
                                                                   "proposed": {"rows": 10, "blocks": i, "review_volume": 1}}}))
    got = trailing_days(store, D + dt.timedelta(days=5), 3)
    assert [g["date"] for g in got] == [(D + dt.timedelta(days=i)).isoformat() for i in (4, 3, 2)]
    assert [g["blocks"] for g in got] == [4, 3, 2]
    assert trailing_days(store, D, 3) == []


def test_a_verdict_that_is_no_decision_fails_the_day_by_name():
    over = pl.DataFrame({"event_id": ["e0"], "decision": ["maybe"], "reviewer": ["ann"], "note": [""],
                         "at": [dt.datetime(2026, 3, 10, tzinfo=dt.timezone.utc)]}, schema=OVERRIDE_SCHEMA)
    with pytest.raises(DecideError, match=r"1 override\(s\) whose decision is not one of approve, review, block.*maybe"):
        decide_all(_pred([0.1, 0.2]), over, DP)


def test_the_published_decisions_are_plain_strings(tmp_path):
    """Decisions are made on Enums (a byte a row) but the file holds plain strings: what readers,
    the review queue and older partitions have."""
    from pipelines.core import storage

    pred = _pred([0.95, 0.6, 0.1, 0.2], amounts=[10.0, 10.0, 5000.0, 10.0])
    over = pl.DataFrame(schema=OVERRIDE_SCHEMA)
    sink = storage.ParquetSink(str(tmp_path / "out" / "d.parquet"), tmp_path, plain_schema=True)
    made = []
    for dec in decisions(lambda: iter([pred.slice(0, 2), pred.slice(2, 2)]), over, DP):
        assert dec.schema["decision"] == ACTION and isinstance(dec.schema["reason_code"], pl.Enum)
        sink.write(dec)
        made.append(dec)
    sink.close()
    back = pl.read_parquet(tmp_path / "out" / "d.parquet")
    assert all(back.schema[c] == pl.String for c in ("decision", "reason_code", "proposed_decision", "model_decision"))
    assert back.equals(pl.concat(made).with_columns(pl.col(c).cast(pl.String) for c in ENUMS))
    assert back["reason_code"].to_list() == ["model_block", "model_review", "rule:huge", "model_approve"]
    tally = Tally()
    for dec in made:
        tally.add(dec)
    assert all(q.schema["decision"] == pl.String for q in tally.queue)      # the review queue: strings too


def test_the_predictions_one_valued_columns_are_found_from_their_codes(tmp_path):
    """decide carries model_name/model_version/scored_by as a literal when every row of the day holds
    the same value (found from the Parquet dictionaries' codes); a second value, a null or a column that
    is not a string is not one-valued. The decisions are the same either way."""
    from pipelines.core import storage
    from pipelines.decide import one_valued

    pred = pl.concat([_pred([0.95, 0.6, 0.1, 0.2] * 10, amounts=[10.0, 10.0, 5000.0, 10.0] * 10)] * 3)
    pred = pred.with_columns(pl.Series("model_version", ["1"] * 80 + ["2"] * 40),
                             pl.Series("scored_by", ["model"] * 119 + [None]), pl.lit(D).alias("ds"))
    for name, frame in (("strings", pred), ("enum", pred.with_columns(pl.lit("m", dtype=pl.Enum(["m"])).alias("model_name")))):
        sink = storage.ParquetSink(str(tmp_path / "p" / f"{name}.parquet"), tmp_path, plain_schema=True)
        for i in range(0, 120, 40):                      # three row groups
            sink.write(frame.slice(i, 40))
        sink.close()
        found = one_valued(tmp_path / "p" / f"{name}.parquet", ["model_name", "model_version", "scored_by", "ds", "score"])
        assert found == {"model_name": "m"}
    assert one_valued(tmp_path / "p" / "strings.parquet", ["event_id"]) == {}     # every row its own value
    # with statistics (score writes them for these columns) the footer tells, where it can: the same answers
    import pyarrow.parquet as pq

    from pipelines.decide import SCORED, _told_one_value

    sink = storage.ParquetSink(str(tmp_path / "p" / "stats.parquet"), tmp_path, plain_schema=True, statistics=SCORED)
    for i in range(0, 120, 40):
        sink.write(pred.slice(i, 40))
    sink.close()
    meta = pq.ParquetFile(tmp_path / "p" / "stats.parquet").metadata
    assert [_told_one_value(meta, c) for c in SCORED] == ["m", None, None]       # two values; a null
    assert one_valued(tmp_path / "p" / "stats.parquet", ["model_name", "model_version", "scored_by"]) == {"model_name": "m"}
    one = pred.with_columns(pl.lit("1").alias("model_version"), pl.lit("model").alias("scored_by"))
    for stats in ((), SCORED):
        sink = storage.ParquetSink(str(tmp_path / "p" / "one.parquet"), tmp_path, plain_schema=True, statistics=stats)
        sink.write(one)
        sink.close()
        meta = pq.ParquetFile(tmp_path / "p" / "one.parquet").metadata
        assert [_told_one_value(meta, c) for c in SCORED] == (["m", "1", "model"] if stats else [None] * 3)
        fixed = one_valued(tmp_path / "p" / "one.parquet", ["model_name", "model_version", "scored_by"])
        assert fixed == {"model_name": "m", "model_version": "1", "scored_by": "model"}
    over = pl.DataFrame(schema=OVERRIDE_SCHEMA)
    literal = one.drop(*fixed).with_columns(pl.lit(v, dtype=pl.Enum([v])).alias(c) for c, v in fixed.items())
    rows = list(decisions(lambda: iter([one.slice(0, 60), one.slice(60)]), over, DP))
    lits = list(decisions(lambda: iter([literal.slice(0, 60), literal.slice(60)]), over, DP))
    assert pl.concat(lits).with_columns(pl.col(c).cast(pl.String) for c in fixed).equals(pl.concat(rows))


def test_a_day_without_events_publishes_the_decisions_columns(tmp_path):
    """No predictions: the file still has the decisions' columns (audit and feedback select them)."""
    from pipelines.core import storage

    sink = storage.ParquetSink(str(tmp_path / "out" / "d.parquet"), tmp_path, plain_schema=True)
    for dec in decisions(lambda: iter([_pred([0.5]).clear()]), pl.DataFrame(schema=OVERRIDE_SCHEMA), DP):
        assert dec.height == 0
        sink.write(dec)
    sink.close()
    back = pl.read_parquet(tmp_path / "out" / "d.parquet")
    assert back.height == 0 and {"event_id", "decision", "reason_code", "queue_rank", "model_version"} <= set(back.columns)
    assert back.schema["decision"] == pl.String


def test_review_candidates_leave_out_decided_events_and_events_without_an_id():
    """With verdicts, the events decided use no capacity; with none (the fast path), the same rows as
    the membership test gave: an event without an id is never a candidate."""
    from pipelines.decide import base_decisions, review_candidates

    pred = _pred([0.7, 0.6, 0.1, 0.8], amounts=[10.0, 10.0, 5000.0, 10.0]).with_columns(
        pl.Series("event_id", ["e0", None, "e2", "e3"]))
    base = base_decisions(pred, DP).with_row_index("__row")
    none = review_candidates(base, pl.Series("event_id", [], dtype=pl.String))
    assert none.sort("__row").select("__row", "_prio").rows() == [(0, 1), (2, 0), (3, 1)]
    some = review_candidates(base, pl.Series("event_id", ["e3"]))
    assert some.sort("__row").select("__row", "_prio").rows() == [(0, 1), (2, 0)]
