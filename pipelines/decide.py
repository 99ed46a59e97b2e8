"""Stage `decide`: scores -> decisions (approve / review / block), each with a reason code.

`python -m pipelines decide --date YYYY-MM-DD`
`python -m pipelines decide override --date D --event-id ID --decision block --reviewer NAME [--note TEXT]`

Decision = model + rules + human judgment, all configured in params.yaml `decide`. Precedence:
  1. a human override for the event (overrides/date=ds, latest per event wins)  human_override
  2. the allow-list (entity ids always approved)                                allow_list:<entity>
  3. business rules, first match wins (e.g. very large amounts always reviewed) rule:<name>
  4. the model: score >= block_threshold -> block                               model_block
                score >= review threshold -> review                            model_review
                else approve                                                    model_approve
Review capacity: rule-forced reviews are always queued; the remaining capacity goes to the highest
model scores; model reviews beyond it become `over_capacity` decisions (reason over_capacity).

Out, for date ds (rows in = rows out): decisions/date=ds (every row: decision, reason_code, the
model's own decision, score, who scored it and its fallback flags), review_queue/date=ds (the
day's review queue, in priority order) and decisions/date=ds/_summary.json (counts, rates,
overrides applied and overrides that matched no event of the day).
"""
from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import logging

import polars as pl

from pipelines import storage
from pipelines.cli import resolve, stage_parser
from pipelines.config import DecideParams, load_params, parse_date
from pipelines.score import OPS

log = logging.getLogger("pipelines.decide")
DECISIONS = ("approve", "review", "block")
OVERRIDE_SCHEMA = {"event_id": pl.String, "decision": pl.String, "reviewer": pl.String, "note": pl.String,
                   "at": pl.Datetime("us", "UTC")}


class DecideError(RuntimeError):
    pass


def _rule_expr(rule: dict, columns: list[str]) -> pl.Expr:
    if rule["feature"] not in columns:
        raise DecideError(f"decide.rules {rule['name']}: column {rule['feature']!r} not in the predictions/features")
    return OPS[rule["op"]](pl.col(rule["feature"]), rule["value"]).fill_null(False)


def decide_frame(pred: pl.DataFrame, feats: pl.DataFrame, overrides: pl.DataFrame, p: DecideParams) -> pl.DataFrame:
    """The pure core: one decision and reason per prediction row, in the predictions' order."""
    rule_cols = sorted({r["feature"] for r in p.rules} | set(p.allow_list))
    need = [c for c in rule_cols if c not in pred.columns]
    frame = pred.with_row_index("_row")
    if need:
        missing = [c for c in need if c not in feats.columns]
        if missing:
            raise DecideError(f"decide: rule/allow-list column(s) {missing} in neither predictions nor features")
        frame = frame.join(feats.select("event_id", *need), on="event_id", how="left", maintain_order="left")
    review_at = pl.col("threshold") if p.review_threshold == "operating" else pl.lit(float(p.review_threshold))
    model = (pl.when(pl.col("score") >= p.block_threshold).then(pl.lit("block"))
             .when(pl.col("score") >= review_at).then(pl.lit("review")).otherwise(pl.lit("approve")))
    frame = frame.with_columns(model.alias("model_decision"))
    dec, why = pl.col("model_decision"), pl.lit("model_") + pl.col("model_decision")
    for r in reversed(p.rules):     # first match wins: apply in reverse so earlier rules end on top
        m = _rule_expr(r, frame.columns)
        dec, why = pl.when(m).then(pl.lit(r["decision"])).otherwise(dec), \
            pl.when(m).then(pl.lit(f"rule:{r['name']}")).otherwise(why)
    for ent, ids in p.allow_list.items():
        if ids:
            m = pl.col(ent).cast(pl.String).is_in(list(ids)).fill_null(False)
            dec, why = pl.when(m).then(pl.lit("approve")).otherwise(dec), \
                pl.when(m).then(pl.lit(f"allow_list:{ent}")).otherwise(why)
    frame = frame.with_columns(dec.alias("decision"), why.alias("reason_code"))

    # human overrides: looked up first, so events a reviewer already decided use no review capacity
    latest = overrides.sort("at").unique("event_id", keep="last", maintain_order=True)
    frame = frame.join(latest.select("event_id", pl.col("decision").alias("_od"), pl.col("reviewer").alias("overridden_by"),
                                     pl.col("note").alias("override_note")), on="event_id", how="left",
                       maintain_order="left")
    free = pl.col("_od").is_null()

    # capacity: forced (rule) reviews first, then the model's reviews by score
    forced = free & (pl.col("decision") == "review") & pl.col("reason_code").str.starts_with("rule:")
    modeled = free & (pl.col("decision") == "review") & (pl.col("reason_code") == "model_review")
    frame = frame.with_columns(
        pl.when(forced).then(0).when(modeled).then(1).otherwise(None).alias("_prio"))
    ranked = (frame.filter(pl.col("_prio").is_not_null()).sort(["_prio", "score", "event_id"],
                                                               descending=[False, True, False])
              .with_row_index("queue_rank", offset=1).select("_row", "queue_rank"))
    frame = frame.join(ranked, on="_row", how="left", maintain_order="left")
    n_forced = frame.filter(forced).height
    keep = max(p.review_capacity, n_forced)
    over = modeled & (pl.col("queue_rank") > keep)
    frame = frame.with_columns(
        pl.when(over).then(pl.lit(p.over_capacity)).otherwise(pl.col("decision")).alias("decision"),
        pl.when(over).then(pl.lit("over_capacity")).otherwise(pl.col("reason_code")).alias("reason_code"),
        pl.when(over).then(None).otherwise(pl.col("queue_rank")).alias("queue_rank"))
    hit = ~free
    frame = frame.with_columns(
        pl.when(hit).then(pl.col("_od")).otherwise(pl.col("decision")).alias("decision"),
        pl.when(hit).then(pl.lit("human_override")).otherwise(pl.col("reason_code")).alias("reason_code")).drop("_od")
    keys = [c for c in ("event_id", "event_ts", "customer", "terminal") if c in pred.columns]
    out = frame.sort("_row").select(
        *keys, "ds", "decision", "reason_code", "model_decision", "score", "threshold",
        pl.col("queue_rank").cast(pl.Int32), "overridden_by", "override_note", "model_name", "model_version",
        "scored_by", "fallback")
    assert out.height == pred.height, "decide: rows in != rows out"
    bad = out.filter(~pl.col("decision").is_in(DECISIONS) | pl.col("reason_code").is_null())
    if bad.height:
        raise DecideError(f"decide: {bad.height} row(s) without a valid decision/reason, e.g. {bad.head(3).to_dicts()}")
    return out


def summary(dec: pl.DataFrame, overrides: pl.DataFrame, p: DecideParams) -> dict:
    n = dec.height
    by_dec = {d: int(dec.filter(pl.col("decision") == d).height) for d in DECISIONS}
    reasons = dec["reason_code"].value_counts(sort=True)
    matched = set(dec.filter(pl.col("reason_code") == "human_override")["event_id"].to_list())
    unmatched = sorted(set(overrides["event_id"].to_list()) - matched) if overrides.height else []
    return {"rows": n, "decisions": by_dec, "rates": {d: (c / n if n else 0.0) for d, c in by_dec.items()},
            "reasons": {r: int(c) for r, c in zip(reasons["reason_code"], reasons["count"])},
            "review_queue": int(dec["queue_rank"].is_not_null().sum()), "review_capacity": p.review_capacity,
            "over_capacity": int((dec["reason_code"] == "over_capacity").sum()),
            "overrides_applied": len(matched), "overrides_unmatched": unmatched,
            "model_disagrees": int((dec["decision"] != dec["model_decision"]).sum())}


def read_overrides(store, ds: dt.date) -> pl.DataFrame:
    try:
        return storage.read_parquet(store.uri("overrides", date=ds.isoformat())).cast(OVERRIDE_SCHEMA)
    except storage.MissingObject:
        return pl.DataFrame(schema=OVERRIDE_SCHEMA)


def add_override(store, ds: dt.date, event_id: str, decision: str, reviewer: str, note: str,
                 at: dt.datetime) -> pl.DataFrame:
    if decision not in DECISIONS:
        raise DecideError(f"override decision must be one of {DECISIONS}, not {decision!r}")
    cur = read_overrides(store, ds)
    row = pl.DataFrame({"event_id": [event_id], "decision": [decision], "reviewer": [reviewer], "note": [note],
                        "at": [at]}, schema=OVERRIDE_SCHEMA)
    out = pl.concat([cur, row])
    storage.write_bytes(store.uri("overrides", date=ds.isoformat()), storage.parquet_bytes(out))
    return out


def main(argv: list[str]) -> int:
    if argv and argv[0] == "override":
        ap = argparse.ArgumentParser(prog="python -m pipelines decide override",
                                     description="record a reviewer's decision for one event (it wins on the next decide run)")
        ap.add_argument("--params", default="params.yaml")
        ap.add_argument("--date", type=parse_date, required=True)
        ap.add_argument("--event-id", required=True)
        ap.add_argument("--decision", required=True, choices=DECISIONS)
        ap.add_argument("--reviewer", default=None)
        ap.add_argument("--note", default="")
        a = ap.parse_args(argv[1:])
        store = load_params(a.params).storage
        reviewer = a.reviewer or getpass.getuser()
        add_override(store, a.date, a.event_id, a.decision, reviewer, a.note, dt.datetime.now(dt.timezone.utc))
        print(f"override recorded: {a.event_id} -> {a.decision} by {reviewer} ({store.uri('overrides', date=a.date.isoformat())}); "
              f"re-run `python -m pipelines decide --date {a.date}` to apply it")
        return 0
    args = stage_parser("decide", __doc__).parse_args(argv)
    params, days = resolve(args)
    p, store = params.decide, params.storage
    for ds in days:
        d = ds.isoformat()
        try:
            pred = storage.read_parquet(store.uri("predictions", date=d))
        except storage.MissingObject:
            raise DecideError(f"{store.uri('predictions', date=d)}: no predictions for {d} (run score first)") from None
        feats = storage.read_parquet(store.uri("features", date=d))
        overrides = read_overrides(store, ds)
        dec = decide_frame(pred, feats, overrides, p)
        summ = summary(dec, overrides, p)
        for row in dec.filter(pl.col("reason_code") == "human_override").iter_rows(named=True):
            log.info("human override %s: %s (model said %s, score %.3f) by %s: %s", row["event_id"], row["decision"],
                     row["model_decision"], row["score"], row["overridden_by"], row["override_note"])
        if summ["overrides_unmatched"]:
            log.warning("%d override(s) for %s match no event of the day: %s", len(summ["overrides_unmatched"]), d,
                        summ["overrides_unmatched"][:10])
        queue = dec.filter(pl.col("queue_rank").is_not_null()).sort("queue_rank")
        pub = storage.Publisher(store.lake, args.snapshot)
        pub.put_parquet(store.uri("review_queue", date=d), queue)
        pub.put_json(store.uri("decision_summary", date=d), summ)
        pub.put_parquet(store.uri("decisions", date=d), dec)
        log.info("decide %s: %s; review queue %d/%d (%d over capacity)", d, summ["decisions"], summ["review_queue"],
                 p.review_capacity, summ["over_capacity"])
        print(json.dumps({"date": d, **summ["decisions"], "review_queue": summ["review_queue"]}, sort_keys=True))
    return 0
