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
Review capacity: rule-forced reviews are queued first, then the highest model scores; every review
beyond capacity (rule-forced ones too) becomes an `over_capacity` decision (decide.over_capacity), counted.

Guardrails (params.yaml `guardrails`, pipelines/core/guardrails.py): before the day's decisions are
published for action, its health is checked (holding validation warnings, PSI of the model's top
features, block rate and review volume vs the median of earlier days not rejected, fallback rows). On a
breach the day is held: every decision is published as `hold` (reason guardrail_hold; the would-be
decision stays in proposed_decision; human overrides stand; no review queue), the breach is logged
and alerted. A person releases or rejects the day:
`python -m pipelines decide release --date D --action release|reject --reason TEXT` (DAG release_hold),
recorded in holds/date=D and applied by re-deciding the day (released: the proposed decisions).

Out, for date ds (rows in = rows out): decisions/date=ds (every row: decision, reason_code, the
model's own decision, score, who scored it and its fallback flags), review_queue/date=ds (the
day's review queue, in priority order) and decisions/date=ds/_summary.json (counts, rates,
overrides applied and overrides that matched no event of the day). The decisions record names
what they were made from (`run`: run_key); re-deciding a date with the same key and intact objects
recomputes nothing and says so; `--recompute` decides it anyway (the same bytes).
"""
from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import logging
import os

import polars as pl

from pipelines.core import guardrails as G
from pipelines.core import lake, lineage, storage
from pipelines.core.alerts import send_webhook, webhook_url
from pipelines.core.cli import progress, resolve, stage_parser
from pipelines.core.config import DecideParams, GuardrailParams, StorageParams, load_params, parse_date
from pipelines.core.reviews import (
    DECISIONS,
    add_override,
    latest_overrides,
    override_objects,
    overrides_frame,
    read_overrides,
)
from pipelines.core.rules import rule_mask

log = logging.getLogger("pipelines.decide")
ACTIONS = (*DECISIONS, G.HOLD)          # what a published decision can be
ACTION = pl.Enum(list(ACTIONS))         # the decision columns' type while deciding (published as strings)


def reasons(p: DecideParams) -> pl.Enum:
    """Every reason_code the day can get: decisions are made on these fixed categories (a byte a row,
    not a string: decide at 10M rows spent a third of its writing on the decision strings); the
    published file holds plain strings (ParquetSink with plain_schema)."""
    return pl.Enum([*(f"model_{d}" for d in DECISIONS), *dict.fromkeys(f"rule:{r['name']}" for r in p.rules),
                    *(f"allow_list:{e}" for e in p.allow_list), "over_capacity", "human_override", "guardrail_hold"])


ENUMS = ("decision", "reason_code", "proposed_decision", "model_decision")    # strings once published
SCORED = ("model_name", "model_version", "scored_by")      # the predictions' columns decisions carry: one value a day


def one_valued(path, columns: list[str]) -> dict[str, str]:
    """Those of `columns` of a Parquet file that hold one value in every row (no null), with that value.
    decide then writes them as a literal Enum (its codes: no 10M strings read, copied and
    dictionary-encoded again); a column with two values, or a null, is carried row by row as before.
    Found from the footer where every row group's statistics say it (no nulls, min == max: score
    writes them for its one-valued columns), else from the dictionaries' codes (no string
    decoded; 0.4-0.5 s at 10M rows for three columns)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = {}
    f = pq.ParquetFile(str(path), read_dictionary=columns)
    for c in columns:
        told = _told_one_value(f.metadata, c)
        if told is not None:
            out[c] = told
            continue
        values: set = set()
        col = f.read(columns=[c]).column(c)
        if col.null_count or not pa.types.is_dictionary(col.type):       # (a string column reads as codes)
            continue
        for chunk in (ch for ch in col.chunks if len(ch)):
            lo, hi = (x.as_py() for x in pc.min_max(chunk.indices).values())   # one code in the chunk: one value
            if lo != hi:
                values = set()
                break
            values.add(chunk.dictionary[lo].as_py())
            if len(values) > 1:
                break
        if len(values) == 1 and isinstance(v := next(iter(values)), str):
            out[c] = v
    return out


def _told_one_value(meta, column: str) -> str | None:
    """The one string value of `column` where the statistics of every row group holding rows say so
    (a null count of 0, min == max, the same in every group); None where they do not say it."""
    where = [i for i in range(meta.num_columns) if meta.schema.column(i).path == column]
    if not where:
        return None
    values = set()
    for g in (meta.row_group(k) for k in range(meta.num_row_groups)):
        if not g.num_rows:
            continue
        st = g.column(where[0]).statistics
        # (a truncated min and max cannot be equal: a max cut short is rounded up, so min == max is exact)
        if st is None or not st.has_min_max or not st.has_null_count or st.null_count or st.min != st.max:
            return None
        values.add(st.min)
    return values.pop() if len(values) == 1 and isinstance(next(iter(values)), str) else None


def _act(value: str) -> pl.Expr:
    return pl.lit(value, dtype=ACTION)


class DecideError(RuntimeError):
    pass


def columns_read(p: DecideParams) -> list[str]:
    """The columns the rules and allow-lists read: the predictions carry them (score.carry_columns)."""
    return sorted({r["feature"] for r in p.rules} | set(p.allow_list))


def base_decisions(frame: pl.DataFrame, p: DecideParams) -> pl.DataFrame:
    """Model thresholds, then rules, then allow-lists, for rows of the predictions."""
    missing = [c for c in columns_read(p) if c not in frame.columns]
    if missing:
        raise DecideError(f"decide: the predictions do not carry the rule/allow-list column(s) {missing} "
                          f"(score.carry_columns; re-score the date)")
    review_at = pl.col("threshold") if p.review_threshold == "operating" else pl.lit(float(p.review_threshold))
    why_t = reasons(p)

    def why_lit(value: str) -> pl.Expr:
        return pl.lit(value, dtype=why_t)

    def tiered(lit) -> pl.Expr:     # the model's decision by its thresholds, as `lit` of each decision
        return (pl.when(pl.col("score") >= p.block_threshold).then(lit("block"))
                .when(pl.col("score") >= review_at).then(lit("review")).otherwise(lit("approve")))
    frame = frame.with_columns(tiered(_act).alias("model_decision"))
    dec, why = pl.col("model_decision"), tiered(lambda d: why_lit(f"model_{d}"))
    for r in reversed(p.rules):     # first match wins: apply in reverse so earlier rules end on top
        m = rule_mask(r, frame.columns, f"decide.rules {r['name']}")
        dec, why = pl.when(m).then(_act(r["decision"])).otherwise(dec), \
            pl.when(m).then(why_lit(f"rule:{r['name']}")).otherwise(why)
    for ent, ids in p.allow_list.items():
        if ids:
            m = pl.col(ent).cast(pl.String).is_in(list(ids)).fill_null(False)
            dec, why = pl.when(m).then(_act("approve")).otherwise(dec), \
                pl.when(m).then(why_lit(f"allow_list:{ent}")).otherwise(why)
    return frame.with_columns(dec.alias("decision"), why.alias("reason_code"))


def review_candidates(frame: pl.DataFrame, overridden: pl.Series) -> pl.DataFrame:
    """Rows that want the review queue (events a reviewer already decided use no capacity):
    priority 0 = forced by a rule, 1 = the model's."""
    review = pl.col("decision") == "review"
    # an event a reviewer decided is not a candidate (most days have no verdict: no 10M-row membership
    # test then); an event without an id never is (ingest rejects them; as the membership test did)
    review = review & (~pl.col("event_id").is_in(overridden.implode()) if overridden.len()
                       else pl.col("event_id").is_not_null())
    # a rule's reason: a test of the Enum's codes (base_decisions), not 10M strings made to test a prefix
    rules = [c for c in frame.schema["reason_code"].categories if c.startswith("rule:")]
    forced = review & pl.col("reason_code").is_in(rules)
    modeled = review & (pl.col("reason_code") == "model_review")
    return (frame.with_columns(pl.when(forced).then(0).when(modeled).then(1).otherwise(None).alias("_prio"))
            .filter(pl.col("_prio").is_not_null()).select("__row", "event_id", "_prio", "score"))


def queue_ranks(cands: pl.DataFrame, p: DecideParams) -> pl.DataFrame:
    """The day's queue, up to capacity: rule-forced reviews first, then the model's, each by highest
    score; every review beyond capacity (rule-forced too) is `over` (it becomes over_capacity, counted)."""
    ranked = cands.sort(["_prio", "score", "event_id", "__row"], descending=[False, True, False, False]).with_row_index(
        "queue_rank", offset=1)
    return ranked.select("__row", pl.col("queue_rank").cast(pl.Int32),
                         (pl.col("queue_rank") > p.review_capacity).alias("_over")).sort("__row")


def final_decisions(frame: pl.DataFrame, ranks: pl.DataFrame, overrides: pl.DataFrame, p: DecideParams) -> pl.DataFrame:
    """`frame`: a batch's base decisions with `__row` (the row's place in the day's predictions);
    `ranks`: the queue ranks of the day, by `__row`. Joined on that integer, and only with the ranks
    of the batch's rows (at 10M rows the join on event_id was most of decide's compute)."""
    rows = ranks["__row"]
    if frame.height:
        a, b = rows.search_sorted(frame["__row"][0]), rows.search_sorted(frame["__row"][-1] + 1)
        mine = ranks.slice(a, b - a)
    else:
        mine = ranks.clear()
    frame = frame.join(mine, on="__row", how="left", maintain_order="left")
    over = pl.col("_over").fill_null(False)
    why_t = reasons(p)
    frame = frame.with_columns(
        pl.when(over).then(_act(p.over_capacity)).otherwise(pl.col("decision")).alias("decision"),
        pl.when(over).then(pl.lit("over_capacity", dtype=why_t)).otherwise(pl.col("reason_code")).alias("reason_code"),
        pl.when(over).then(None).otherwise(pl.col("queue_rank")).alias("queue_rank"))
    if overrides.height:
        frame = frame.join(overrides.select("event_id", pl.col("decision").cast(ACTION).alias("_od"),
                                            pl.col("reviewer").alias("overridden_by"), pl.col("note").alias("override_note")),
                           on="event_id", how="left", maintain_order="left")
    else:                                   # no reviewer verdict for the day (most days): no join
        frame = frame.with_columns(pl.lit(None, ACTION).alias("_od"), pl.lit(None, pl.String).alias("overridden_by"),
                                   pl.lit(None, pl.String).alias("override_note"))
    hit = pl.col("_od").is_not_null()
    frame = frame.with_columns(
        pl.when(hit).then(pl.col("_od")).otherwise(pl.col("decision")).alias("decision"),
        pl.when(hit).then(pl.lit("human_override", dtype=why_t)).otherwise(pl.col("reason_code")).alias("reason_code"))
    keys = [c for c in ("event_id", "event_ts", "customer", "terminal") if c in frame.columns]
    out = frame.select(
        *keys, "ds", "decision", "reason_code", pl.col("decision").alias("proposed_decision"), "model_decision", "score",
        "threshold", "queue_rank",
        "overridden_by", "override_note", "model_name", "model_version", "scored_by", "fallback")
    bad = out.filter(~pl.col("decision").is_in(ACTIONS) | pl.col("reason_code").is_null())
    if bad.height:
        raise DecideError(f"decide: {bad.height} row(s) without a valid decision/reason, e.g. {bad.head(3).to_dicts()}")
    return out


def verdicts(overrides: pl.DataFrame) -> pl.DataFrame:
    """The latest reviewer verdict per event; one that is not a decision fails the day, by name."""
    ov = latest_overrides(overrides)
    bad = ov.filter(~pl.col("decision").is_in(DECISIONS) | pl.col("decision").is_null())
    if bad.height:
        raise DecideError(f"decide: {bad.height} override(s) whose decision is not one of {', '.join(DECISIONS)}, "
                          f"e.g. {bad.select('event_id', 'decision', 'reviewer').head(3).to_dicts()}; nothing decided "
                          f"(record a valid verdict for each: python -m pipelines decide override --date D --event-id E "
                          f"--decision {'|'.join(DECISIONS)}; the latest verdict per event wins)")
    return ov


def plan(batches, overrides: pl.DataFrame, p: DecideParams) -> tuple[pl.DataFrame, dict]:
    """First pass over `batches()` (an iterable of the predictions' batches): who wants
    the review queue and in which order, and the proposed counts the guardrails check (rows, blocks,
    review candidates before capacity). Memory: one batch plus the review candidates."""
    ov = verdicts(overrides)
    cands, rows, blocks = [], 0, 0
    for pb in batches():
        base = base_decisions(pb, p).with_row_index("__row", offset=rows)
        rows += base.height
        blocks += int((base["decision"] == "block").sum())
        cands.append(storage.compact(review_candidates(base, ov["event_id"])))   # not the batch
    cand = pl.concat(cands) if cands else pl.DataFrame(schema={"__row": pl.UInt32, "event_id": pl.String, "_prio": pl.Int32,
                                                              "score": pl.Float32})
    ranks = queue_ranks(cand, p)
    if p.over_capacity == "block":
        blocks += int(ranks["_over"].sum())
    return ranks, {"rows": rows, "blocks": blocks, "review_volume": cand.height}


def hold(dec: pl.DataFrame) -> pl.DataFrame:
    """A held day: the model and the rules act on nothing (decision `hold`, no queue); a human
    override stands. The would-be decision stays in proposed_decision."""
    human = pl.col("reason_code") == "human_override"
    return dec.with_columns(pl.when(human).then(pl.col("decision")).otherwise(_act(G.HOLD)).alias("decision"),
                            pl.when(human).then(pl.col("reason_code"))
                            .otherwise(pl.lit("guardrail_hold", dtype=dec.schema["reason_code"])).alias("reason_code"),
                            pl.when(human).then(pl.col("queue_rank")).otherwise(None).alias("queue_rank"))


def decisions(batches, overrides: pl.DataFrame, p: DecideParams, ranks: pl.DataFrame | None = None, held: bool = False):
    """The day's decisions, batch by batch (second pass over `batches()`, with the day's queue
    ranks from `plan`); every one `hold` when the day is held."""
    if ranks is None:
        ranks, _ = plan(batches, overrides, p)
    ov = verdicts(overrides)
    rows = 0
    for pb in batches():
        dec = final_decisions(base_decisions(pb, p).with_row_index("__row", offset=rows), ranks, ov, p)
        rows += pb.height
        yield hold(dec) if held else dec


# --------------------------------------------------------------------------- guardrails
def trailing_days(store: StorageParams, ds: dt.date, n: int) -> list[dict]:
    """Proposed counts of the latest `n` decided days before ds, newest first, except days a person
    rejected. Held days count: the median shrugs off a few bad days, and a lasting new level (a
    real drift) becomes the baseline after about n/2 days instead of holding every day after it."""
    out = []
    for day in sorted((d for d in lake.dates_present(store, "decisions") if d < ds), reverse=True):
        s = storage.read_json(store.uri("decision_summary", date=day.isoformat()))
        g = s.get("guardrails") or {}
        if g.get("status") == "rejected":
            continue
        out.append({"date": day.isoformat(), **(g.get("proposed") or {
            "rows": s["rows"], "blocks": s["decisions"].get("block", 0),
            "review_volume": s.get("review_queue", 0) + s.get("over_capacity", 0)})})
        if len(out) >= n:
            break
    return out


def optional_json(uri: str) -> tuple[dict | None, str | None]:
    """An input that may be absent: its content and sha256 (for the partition's record)."""
    try:
        raw = storage.read_bytes(uri)
    except storage.MissingObject:
        return None, None
    return json.loads(raw), storage.sha256(raw)


def guard_status(breached: list[str], release: dict | None) -> str:
    if not breached:
        return "passed"
    if release is None:
        return "held"
    return "released" if release["action"] == "release" else "rejected"


class Tally:
    """The day's summary, accumulated batch by batch."""

    def __init__(self) -> None:
        self.rows, self.disagree = 0, 0
        self.decisions: dict[str, int] = {d: 0 for d in ACTIONS}
        self.reasons: dict[str, int] = {}
        self.matched: set[str] = set()
        self.queue: list[pl.DataFrame] = []

    def add(self, dec: pl.DataFrame) -> None:
        self.rows += dec.height
        for k, why, v in dec.group_by("decision", "reason_code").len().iter_rows():   # one pass for both
            self.decisions[k] += v
            self.reasons[why] = self.reasons.get(why, 0) + v
        self.disagree += int((dec["proposed_decision"] != dec["model_decision"]).sum())
        self.matched |= set(dec.filter(pl.col("reason_code") == "human_override")["event_id"].to_list())
        self.queue.append(storage.compact(dec.filter(pl.col("queue_rank").is_not_null()).with_columns(
            pl.col(c).cast(pl.String) for c, t in dec.schema.items() if isinstance(t, pl.Enum))))

    def summary(self, overrides: pl.DataFrame, p: DecideParams) -> dict:
        n = self.rows
        unmatched = sorted(set(overrides["event_id"].to_list()) - self.matched) if overrides.height else []
        return {"rows": n, "decisions": self.decisions,
                "rates": {d: (c / n if n else 0.0) for d, c in self.decisions.items()},
                "reasons": dict(sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
                "review_queue": sum(q.height for q in self.queue), "review_capacity": p.review_capacity,
                "over_capacity": self.reasons.get("over_capacity", 0), "overrides_applied": len(self.matched),
                "overrides_unmatched": unmatched, "model_disagrees": self.disagree}


def run_key(ds: dt.date, p: DecideParams, g: GuardrailParams, store: StorageParams) -> dict | None:
    """What a date's decisions are made of: the predictions (the sha256 of their record's objects,
    the rule columns and the features' counts score publishes with them included), the reviewers'
    verdicts, the validation results and the hold release of the date, the earlier days the
    guardrails compare with, the decide and guardrails params, the code and the library versions. Kept as `run` in the decisions record: a re-run with the same key
    recomputes nothing. None when the predictions have no trusted record (the run then fails on them
    as always)."""
    import importlib.metadata
    from dataclasses import asdict

    from pipelines.core import code

    d = ds.isoformat()
    try:        # trusted the way a read trusts them (their inputs, recursively)
        pred = lineage.Reader().record(store.uri("predictions", date=d)).get("objects") or {}
    except (storage.MissingObject, lineage.StaleInput):
        return None
    overrides = read_overrides(store, ds)
    parts = {"inputs": pred,
             "overrides": storage.sha256(storage.parquet_bytes(overrides)) if overrides.height else None,
             "validation": optional_json(store.uri("validation_results", dataset="transactions", date=d))[1],
             "release": optional_json(store.uri("hold_release", date=d))[1],
             "trailing": trailing_days(store, ds, g.trailing_days),
             "params_sha256": storage.sha256(storage.json_bytes({"decide": asdict(p), "guardrails": asdict(g)})),
             "code_version": code.fingerprint("pipelines.decide"),
             "libraries": {lib: importlib.metadata.version(lib) for lib in ("polars", "pyarrow")}}
    return lineage.keyed(parts)


def decide_day(ds: dt.date, p: DecideParams, g: GuardrailParams, store: StorageParams, pub: storage.Publisher,
               alerts, recompute: bool = False) -> dict:
    """Decide one date: plan, check the guardrails, publish decisions, queue and summary. A date
    decided from the same inputs, params and code (run_key) is not decided again unless `recompute`."""
    import pyarrow.parquet as pq

    d = ds.isoformat()
    key = run_key(ds, p, g, store)
    if not recompute and not getattr(pub, "snapshot", None) and \
            lineage.unchanged(store.uri("decisions", date=d), key, key["inputs"] if key else {}) is not None:
        try:
            summ = storage.read_json(store.uri("decision_summary", date=d))
        except storage.MissingObject:
            summ = None
        if summ is not None:
            log.info("decide %s: unchanged since its record (the same predictions, verdicts, guardrail "
                     "inputs, params and code: key %s); nothing recomputed -> %s", d, key["key"][:12],
                     store.uri("decisions", date=d))
            print(json.dumps({"date": d, **summ["decisions"], "review_queue": summ["review_queue"],
                              "guardrails": (summ.get("guardrails") or {}).get("status"), "unchanged": True},
                             sort_keys=True))
            return summ
    reader = lineage.Reader()
    with storage.scratch_dir("decide") as tmp:
        pred_uri = store.uri("predictions", date=d)
        try:
            pred_path = reader.fetch(pred_uri, tmp)
            model_doc = reader.read_json(store.uri("scored_model", date=d), primary=pred_uri)
            observed = reader.read_json(store.uri("features_observed", date=d), primary=pred_uri)
        except lineage.NotCommitted as exc:
            raise DecideError(f"decide {d}: {exc}; nothing decided (run features and score for {d} first)") from None
        except lineage.StaleInput as exc:
            raise DecideError(f"decide {d}: {exc}; nothing decided") from None
        profiled = (model_doc.get("reference_profile") or {}).get("features", {})
        top = [f for f in G.top_features(model_doc.get("importance"), g.top_features) if f in profiled]
        stored = override_objects(store, ds)        # the day's verdicts as stored: each named in the record
        overrides = overrides_frame(stored)

        names = pq.ParquetFile(str(pred_path)).schema_arrow.names
        fixed = one_valued(pred_path, [c for c in SCORED if c in names])

        def batches(pred_path=pred_path):
            for pb in storage.iter_parquet(pred_path, [c for c in names if c not in fixed], streaming=True):
                yield pb.with_columns(pl.lit(v, dtype=pl.Enum([v])).alias(c) for c, v in fixed.items())

        # the day's health, before anything is published for action: the top features' counts as
        # score observed them while it read the features; the fallbacks, in the plan's pass
        health = G.DayHealth(model_doc.get("reference_profile"), top, g, observed)
        first = [c for c in dict.fromkeys(["event_id", "score", "threshold", "fallback", *columns_read(p)]) if c in names]

        def planned(pred_path=pred_path, first=first):      # only the columns the plan and the health read
            for pb in storage.iter_parquet(pred_path, first, streaming=True):
                health.add_predictions(pb)
                yield pb
        val_uri = store.uri("validation_results", dataset="transactions", date=d)
        validation, val_sha = optional_json(val_uri)
        rel_uri = store.uri("hold_release", date=d)
        release, rel_sha = optional_json(rel_uri)
        ranks, proposed = plan(planned, overrides, p)
        trailing = trailing_days(store, ds, g.trailing_days)
        results = G.checks(g, warnings=(validation or {}).get("warnings", []), feature_psi=health.feature_psi(),
                           rows=proposed["rows"], blocks=proposed["blocks"], review_volume=proposed["review_volume"],
                           fallback_rows=health.fallback_rows, trailing=trailing)
        breached = G.breaches(results)
        status = guard_status(breached, release)
        held = status in ("held", "rejected")

        sources = {**{u: storage.sha256(data) for u, data in stored},
                   **{u: s for u, s in ((val_uri, val_sha), (rel_uri, rel_sha)) if s}}
        part = pub.partition(store.uri("decisions", date=d), "decide", inputs=reader.consumed, sources=sources,
                             extra={"run": key} if key else None)
        tally = Tally()
        with storage.ParquetSink(store.uri("decisions", date=d), tmp, part, plain_schema=True) as sink:
            for dec in decisions(batches, overrides, p, ranks, held):
                sink.write(dec)
                tally.add(dec)
            if not tally.rows:              # a day without events: a file with the decisions' columns, none the less
                for dec in decisions(lambda: iter([pl.read_parquet(pred_path, n_rows=0)]), overrides, p, ranks, held):
                    sink.write(dec)
            summ = tally.summary(overrides, p)
            summ["guardrails"] = {"status": status, "breaches": breached, "checks": results, "proposed": proposed,
                                  "top_features": top, "trailing_dates": [x["date"] for x in trailing],
                                  "release": release}
            n_pred = pq.ParquetFile(str(pred_path)).metadata.num_rows
            if summ["rows"] != n_pred:
                raise DecideError(f"decide {d}: {summ['rows']} decisions for {n_pred} predictions")
            queue = pl.concat(tally.queue).sort("queue_rank") if tally.queue else pl.DataFrame()
            part.put_parquet(store.uri("review_queue", date=d), queue)
            part.put_json(store.uri("decision_summary", date=d), summ)
            sink.close()
        part.commit()
    if summ["overrides_applied"]:
        log.info("%d human override(s) applied for %s (reason_code human_override, reviewer in overridden_by)",
                 summ["overrides_applied"], d)
    if summ["overrides_unmatched"]:
        log.warning("%d override(s) for %s match no event of the day: %s", len(summ["overrides_unmatched"]), d,
                    summ["overrides_unmatched"][:10])
    if breached:
        what = {"held": "HELD: nothing is acted on until a person releases it (DAG release_hold)",
                "rejected": "held and REJECTED by a person", "released": f"released by {(release or {}).get('by')}"}[status]
        log.error("decide %s: guardrails breached: %s; the day is %s", d, " | ".join(breached), what)
        url = webhook_url(alerts.webhook_url)
        if url and status == "held":
            send_webhook(url, {"date": d, "kind": "guardrail_hold", "breaches": breached}, alerts.timeout_s)
    log.info("decide %s: %s; review queue %d/%d (%d over capacity); guardrails %s", d, summ["decisions"],
             summ["review_queue"], p.review_capacity, summ["over_capacity"], status)
    print(json.dumps({"date": d, **summ["decisions"], "review_queue": summ["review_queue"], "guardrails": status},
                     sort_keys=True))
    return summ


def release_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines decide release",
                                 description="release (act on the proposed decisions) or reject a day held by the guardrails")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--date", type=parse_date, required=True)
    ap.add_argument("--action", required=True, choices=("release", "reject"))
    ap.add_argument("--reason", required=True)
    ap.add_argument("--reviewer", default=None)
    a = ap.parse_args(argv)
    store = load_params(a.params).storage
    d = a.date.isoformat()
    summ, _ = optional_json(store.uri("decision_summary", date=d))
    status = ((summ or {}).get("guardrails") or {}).get("status")
    if status not in ("held", "released", "rejected"):
        raise DecideError(f"decide release {d}: the day is not held by the guardrails (status {status or 'not decided'}); "
                          f"nothing recorded")
    rec = {"date": d, "action": a.action, "by": a.reviewer or os.environ.get("AIRFLOW_CTX_DAG_OWNER") or getpass.getuser(),
           "reason": a.reason, "airflow_run": os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"),
           "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    storage.write_bytes(store.uri("hold_release", date=d), json.dumps(rec, sort_keys=True, indent=1).encode(),
                        "application/json")
    log.warning("decide %s: %s by %s (%s); re-deciding the day", d, a.action, rec["by"], a.reason)
    return main(["--params", a.params, "--date", d])


def _subcommand(argv: list[str]) -> tuple[str | None, list[str]]:
    """`release` or `override` where it stands (first, or after `--params P` / `--params=P`) and the
    arguments without that one word: `--action release` or `--reason release` keep their values."""
    at = 1 if argv[:1] and argv[0].startswith("--params=") else 2 if argv[:1] == ["--params"] else 0
    if argv[at:at + 1] in (["release"], ["override"]):
        return argv[at], argv[:at] + argv[at + 1:]
    return None, argv


def main(argv: list[str]) -> int:
    sub, rest = _subcommand(argv)
    if sub == "release":
        return release_main(rest)
    if sub == "override":
        ap = argparse.ArgumentParser(prog="python -m pipelines decide override",
                                     description="record a reviewer's decision for one event (it wins on the next decide run)")
        ap.add_argument("--params", default="params.yaml")
        ap.add_argument("--date", type=parse_date, required=True)
        ap.add_argument("--event-id", required=True)
        ap.add_argument("--decision", required=True, choices=DECISIONS)
        ap.add_argument("--reviewer", default=None)
        ap.add_argument("--note", default="")
        a = ap.parse_args(rest)
        store = load_params(a.params).storage
        reviewer = a.reviewer or getpass.getuser()
        where = add_override(store, a.date, a.event_id, a.decision, reviewer, a.note, dt.datetime.now(dt.timezone.utc))
        print(f"override recorded: {a.event_id} -> {a.decision} by {reviewer} ({where}); "
              f"re-run `python -m pipelines decide --date {a.date}` to apply it")
        return 0
    ap = stage_parser("decide", __doc__)
    ap.add_argument("--recompute", action="store_true",
                    help="decide even a date whose decisions were made from the same inputs, params and code")
    args = ap.parse_args(argv)
    params, days = resolve(args)
    p, g, store = params.decide, params.guardrails, params.storage
    with storage.Publisher(store.lake, args.snapshot) as pub:
        for ds in progress(days, "decide"):
            decide_day(ds, p, g, store, pub, params.alerts, recompute=args.recompute)
    return 0
