"""Stage `lifecycle`: after the labels of a day are fed back, move the model aliases if the evidence says so.

`python -m pipelines lifecycle --date D [--dry-run]`      (D = the day the labels landed)

1. Rollback (params `rollback`): the champion's realized metric (default error rate at its
   operating threshold) over the latest labelled window (the `window_days` scored days up to
   d = D - label delay, rows the current champion scored, feed labels) is compared with its
   baseline from evaluation (the same metric on its test window). Worse than `factor` x the
   baseline, on at least `min_rows` rows -> `champion` goes back to the champion it replaced
   (`models rollback`), the version is tagged `rolled_back`, an alert is raised. No previous
   champion -> an alert says so and nothing moves. `rollback.auto: false` -> alert only.
2. Promotion (params `promotion`), when a challenger exists and nothing was rolled back: its shadow
   days with labels, against the current champion, are read from the feedback summaries.
   Fewer than `shadow_days` -> wait. Otherwise, over the latest `shadow_days`: ahead on at least
   `min_wins` days (challenger - champion > min_margin on `metric`, same rows) and no slice worse
   by more than `max_slice_drop` (AP pooled over those days, slices with enough frauds):
     mode auto   -> promoted (champion <- challenger, the old champion keeps `previous`);
     mode manual -> "awaiting manual promotion" + an alert; the `promote` DAG (version, confirm)
                    or `python -m pipelines models promote V` does it.
   Not ahead -> retired: the alias is removed and the version tagged `retired` with the reason.

Every move lands in the registry's alias history with its reason (see `models`); the day's
record, moves and alerts go to monitoring/lifecycle/date=D/decision.json (and the webhook, when
one is configured). Re-running a date is safe: a move already made is not made again.
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import logging

import polars as pl

from pipelines.core import alerts, lake, lineage, storage
from pipelines.core.config import (
    PromotionParams,
    RollbackParams,
    date_range,
    load_params,
    parse_date,
)
from pipelines.core.lake import read_optional
from pipelines.core.metrics import model_metrics, rates, slice_table

log = logging.getLogger("pipelines.lifecycle")


# --------------------------------------------------------------------------- decisions (pure)
def should_rollback(realized: float | None, baseline: float | None, rows: int, p: RollbackParams) -> tuple[bool, str]:
    if realized is None or rows < p.min_rows:
        return False, f"not enough labelled rows of the champion in the window ({rows} < {p.min_rows})"
    if baseline is None:
        return False, f"no evaluation baseline for {p.metric}"
    limit = p.factor * baseline
    if realized > limit:
        return True, (f"realized {p.metric} {realized:.4f} over {rows} labelled rows > {p.factor:g} x baseline "
                      f"{baseline:.4f} = {limit:.4f}")
    return False, f"realized {p.metric} {realized:.4f} <= {p.factor:g} x baseline {baseline:.4f} = {limit:.4f}"


def promotion_verdict(days: list[dict], worst_slice: tuple[str, float] | None, p: PromotionParams) -> tuple[str, str]:
    """('wait' | 'promote' | 'retire', reason) from the labelled shadow days (chronological
    comparisons with `date` and `delta`) and the worst pooled slice drop (slice, champion - challenger)."""
    if len(days) < p.shadow_days:
        return "wait", f"{len(days)} of {p.shadow_days} labelled shadow day(s)"
    last = days[-p.shadow_days:]
    wins = [c["date"] for c in last if c.get("delta") is not None and c["delta"] > p.min_margin]
    deltas = ", ".join(f"{c['date']}: {c['delta']:+.4f}" if c.get("delta") is not None else f"{c['date']}: n/a"
                       for c in last)
    if len(wins) < p.min_wins:
        return "retire", (f"ahead of the champion on {len(wins)} of {len(last)} labelled shadow days "
                          f"({p.min_wins} needed; {p.metric} challenger - champion: {deltas})")
    if worst_slice is not None and worst_slice[1] > p.max_slice_drop:
        return "retire", (f"ahead on {len(wins)} of {len(last)} days ({deltas}) but slice {worst_slice[0]} is worse by "
                          f"{worst_slice[1]:.4f} AP (> {p.max_slice_drop})")
    return "promote", (f"ahead of the champion on {len(wins)} of {len(last)} labelled shadow days ({p.metric} "
                       f"challenger - champion: {deltas}); worst slice drop "
                       f"{'none' if worst_slice is None else f'{worst_slice[0]} {worst_slice[1]:+.4f}'}")


# --------------------------------------------------------------------------- evidence
def _feedback(uri: str) -> pl.DataFrame | None:
    """A day's feedback partition; one made stale by a later change upstream is left out with a
    warning (re-run feedback for it), so one old day never holds every later decision."""
    try:
        return read_optional(uri)
    except lineage.StaleInput as exc:
        log.warning("lifecycle: %s; that day is left out (re-run feedback for it)", exc)
        return None


_summary = storage.read_json_optional


def baseline(run_id: str, metric: str) -> float | None:
    """The metric on the version's test window, from its evaluation.json in the MLflow run (REST)."""
    from pipelines.core import registry as R

    raw = R.run_artifact(run_id, lake.artifact(lake.EVALUATE, lake.EVALUATION))
    if raw is None:         # a model without an evaluation has no baseline
        log.warning("run %s: no %s", run_id, lake.artifact(lake.EVALUATE, lake.EVALUATION))
        return None
    return rates(json.loads(raw)["test"]["confusion_matrix"]).get(metric)


def champion_window(store, d: dt.date, window_days: int, version: str, metric: str) -> tuple[float | None, int, list[str]]:
    """The champion's realized metric over the scored days d - window + 1 .. d (its rows, feed labels)."""
    days = date_range(d - dt.timedelta(days=window_days - 1), d)
    frames = [f for x in days if (f := _feedback(store.uri("feedback", date=x.isoformat()))) is not None]
    f = pl.concat(frames, how="diagonal_relaxed").filter(
        (pl.col("model_version") == version) & (pl.col("label_source") == "feed")) if frames else None
    if f is None or not f.height:
        return None, 0, [x.isoformat() for x in days]
    value = model_metrics(f["label"].to_numpy(), f["score"].to_numpy(), float(f["threshold"][0]))[metric]
    return value, f.height, [x.isoformat() for x in days]


def shadow_days(store, d: dt.date, lookback: int, champion: str, challenger: str) -> list[dict]:
    """The labelled shadow days of this challenger against this champion, oldest first."""
    out = []
    for x in date_range(d - dt.timedelta(days=lookback - 1), d):
        s = _summary(store.uri("feedback_summary", date=x.isoformat()))
        c = (s or {}).get("comparison")
        if c and str(c["challenger_version"]) == challenger and str(c["champion_version"]) == champion:
            out.append({"date": x.isoformat(), **{k: c[k] for k in ("metric", "champion", "challenger", "delta", "rows", "positives")}})
    return out


def worst_slice(store, days: list[str], slices: tuple[str, ...], min_pos: int) -> tuple[tuple[str, float] | None, dict]:
    """AP per slice pooled over the days, champion and challenger on the same rows; the worst drop."""
    frames = [f for x in days if (f := _feedback(store.uri("feedback", date=x))) is not None]
    if not frames:
        return None, {}
    both = pl.concat(frames, how="diagonal_relaxed").filter(
        (pl.col("label_source") == "feed") & pl.col("shadow_score").is_not_null())
    table = slice_table(both, slices, {"champion": ("score", "threshold"),
                                       "challenger": ("shadow_score", "shadow_threshold")}, min_pos)
    drops = [(s, v["champion"]["average_precision"] - v["challenger"]["average_precision"]) for s, v in table.items()
             if v["champion"]["average_precision"] is not None and v["challenger"]["average_precision"] is not None]
    return (max(drops, key=lambda t: t[1]) if drops else None), table


# --------------------------------------------------------------------------- the day
def lifecycle_day(params, label_date: dt.date, dry_run: bool = False) -> dict:
    from pipelines.core import registry as R
    store, name = params.storage, params.register.model_name
    rb, pr, alias = params.rollback, params.promotion, params.shadow.alias
    d = label_date - dt.timedelta(days=params.dataset("labels").delay_days)
    # aliases and the baseline are read over REST; the MLflow client (its import alone is ~3 s of
    # the task) is made only for a move
    c = functools.cache(R.client)
    record: dict = {"date": label_date.isoformat(), "scored_date": d.isoformat(), "model": name, "dry_run": dry_run,
                    "moves": [], "alerts": []}
    champ_ref = R.version_by_alias(name, "champion")
    champion = champ_ref.version if champ_ref else None
    record["champion"] = champion
    # every move names the decision that made it (its `by` names the Airflow run, see registry.actor)
    made_by = f" [lifecycle decision {store.uri('lifecycle_decision', date=label_date.isoformat())}]"

    # 1. rollback
    rolled = False
    if champion is None:
        record["rollback"] = {"rollback": False, "reason": "no champion"}
    else:
        value, rows, window = champion_window(store, d, rb.window_days, champion, rb.metric)
        base = baseline(champ_ref.run_id, rb.metric) if value is not None else None
        do, why = should_rollback(value, base, rows, rb)
        record["rollback"] = {"rollback": do, "reason": why, "metric": rb.metric, "realized": value, "baseline": base,
                              "rows": rows, "window": window, "version": champion}
        if do:
            target = R.rollback_target(c(), name)
            msg = f"{name} v{champion}: {why}"
            if not rb.auto:
                record["alerts"].append({"kind": "rollback_advised", "message": f"{msg}; rollback.auto is off: "
                                         f"run the rollback DAG or `python -m pipelines models rollback`"})
            elif target is None:
                record["alerts"].append({"kind": "rollback_impossible", "message": f"{msg}; no previous champion to "
                                         f"roll back to: investigate (rules fallback is not automatic)"})
            else:
                moves = R.rollback(c(), name, f"automatic, labels of {d} (landed {label_date}): {why}{made_by}", dry_run)
                record["moves"] += moves
                rolled = bool(moves)
                record["alerts"].append({"kind": "rolled_back", "message": f"{msg}; champion rolled back to v{target}"})

    # 2. promotion / retirement of the challenger
    challenger = getattr(R.version_by_alias(name, alias), "version", None)
    champion = getattr(R.version_by_alias(name, "champion"), "version", None) if rolled and not dry_run else champion
    if challenger is None:
        record["promotion"] = {"action": "none", "reason": f"no {alias}"}
    elif challenger == champion:        # e.g. a rollback returned to it: nothing to compare, not retired
        record["promotion"] = {"action": "clear", "reason": f"v{challenger} is the champion now", "challenger": challenger}
        mv = R.move_alias(c(), name, alias, None, f"v{challenger} is the champion now{made_by}", dry_run)
        if mv:
            record["moves"].append(mv)
    elif rolled:
        record["promotion"] = {"action": "wait", "reason": "the champion was rolled back today: shadow days against it "
                               "no longer apply", "challenger": challenger}
    else:
        days = shadow_days(store, d, pr.lookback_days, str(champion), challenger)
        last = [x["date"] for x in days[-pr.shadow_days:]]
        worst, table = worst_slice(store, last, params.feedback.slices, pr.slice_min_positives) if len(days) >= pr.shadow_days \
            else (None, {})
        action, why = promotion_verdict(days, worst, pr)
        record["promotion"] = {"action": action, "reason": why, "challenger": challenger, "champion": champion,
                               "mode": pr.mode, "days": days, "slices": table}
        if action == "promote" and pr.mode == "auto":
            record["moves"] += R.promote(c(), name, challenger, f"automatic after shadow: {why}{made_by}", dry_run)
            record["alerts"].append({"kind": "promoted", "message": f"{name} v{challenger} promoted to champion "
                                     f"(v{champion} kept as previous): {why}"})
        elif action == "promote":
            record["promotion"]["action"] = "awaiting_manual_promotion"
            record["alerts"].append({"kind": "promotion_ready", "message": f"{name} v{challenger} won its shadow ({why}); "
                                     f"promotion.mode is manual: trigger the promote DAG with version {challenger} "
                                     f"and confirm, or run `python -m pipelines models promote {challenger}`"})
        elif action == "retire":
            reason = f"retired after shadow: {why}{made_by}"
            mv = R.move_alias(c(), name, alias, None, reason, dry_run)
            if mv:
                record["moves"].append(mv)
                if not dry_run:
                    c().set_model_version_tag(name, challenger, "retired", reason[:4900])
            record["alerts"].append({"kind": "challenger_retired", "message": f"{name} v{challenger} {reason}"})

    if not dry_run:
        # moves an earlier attempt of this decision made (a retry after its record's write failed, a
        # re-run of the date): the registry's history holds them, named by this decision; a re-run
        # finds nothing left to move, and its record must not forget them
        again = [m for m in R.moves_of(name, made_by.strip()) if m not in record["moves"]]
        if again:
            record["moves"] = again + record["moves"]
            record["moves_of_earlier_attempts"] = len(again)
    url = alerts.webhook_url(params.alerts.webhook_url)
    if record["alerts"] and url and not dry_run:
        record["webhook"] = alerts.send_webhook(url, {"source": "fraudops.lifecycle", **record}, params.alerts.timeout_s)
    if not dry_run:
        storage.write_bytes(store.uri("lifecycle_decision", date=label_date.isoformat()), storage.json_bytes(record))
    for a in record["alerts"]:
        log.warning("lifecycle %s: %s", label_date, a["message"])
    log.info("lifecycle %s: rollback: %s; promotion: %s", label_date, record["rollback"]["reason"],
             record["promotion"].get("reason"))
    return record


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines lifecycle", description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--date", type=parse_date, required=True, help="the day the labels landed")
    ap.add_argument("--dry-run", action="store_true", help="say what would move, move nothing")
    args = ap.parse_args(argv)
    rec = lifecycle_day(load_params(args.params), args.date, args.dry_run)
    print(json.dumps(summary(rec), sort_keys=True, default=str))
    return 0


def summary(rec: dict) -> dict:
    """A lifecycle record in short (the task's XCom, the demo's progress line): the moves, whether
    a rollback was advised, the promotion verdict and the alert kinds."""
    return ({k: rec[k] for k in ("date", "scored_date", "champion", "moves")} |
            {"rollback": rec["rollback"]["rollback"], "promotion": rec["promotion"]["action"],
             "alerts": [a["kind"] for a in rec["alerts"]]})
