"""Guardrails before actions: is a day healthy enough for its decisions to be acted on?

Pure checks over what the day already produced (validation warnings, the features the model relies
on most, the proposed decisions, fallbacks) against the limits in params.yaml `guardrails` and a
trailing baseline (the median of the earlier days a person did not reject). Each check is recorded, passed or not; any
breach holds the day (decide publishes every decision as `hold` until a person releases it).
"""
from __future__ import annotations

import statistics

import polars as pl

from pipelines.core.config import GuardrailParams
from pipelines.core.drift import FeatureDrift, drift_of

HOLD = "hold"


def top_features(importance: dict[str, float] | None, k: int) -> list[str]:
    """The model's `k` most important features (highest total gain first; ties by name)."""
    return [f for f, _ in sorted((importance or {}).items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


class DayHealth:
    """What the checks need from the day, accumulated batch by batch (memory: the counters). The
    features' counts come from what score observed as it read them (FeatureDrift state)."""

    def __init__(self, profile: dict | None, features: list[str], p: GuardrailParams, observed: dict) -> None:
        refs = (profile or {}).get("features", {})
        accs = FeatureDrift.merged(profile, [observed], only=set(features)).accs
        # the model's order (most important first); a profiled feature score saw on no row (a day with
        # no rows) compares as empty against its reference: a PSI far above any limit holds the day
        self.drift = {f: accs.get(f) or drift_of(refs[f]) for f in features if f in refs}
        self.kinds, self.rows, self.fallback_rows = set(p.fallback_kinds), 0, 0

    def add_predictions(self, batch: pl.DataFrame) -> None:
        self.rows += batch.height
        hit = batch.select(pl.col("fallback").list.eval(pl.element().is_in(list(self.kinds))).list.any().fill_null(False))
        self.fallback_rows += int(hit.to_series().sum())

    def feature_psi(self) -> dict[str, float]:
        return {f: acc.result()["psi"] for f, acc in self.drift.items()}


def checks(p: GuardrailParams, *, warnings: list[str], feature_psi: dict[str, float], rows: int, blocks: int,
           review_volume: int, fallback_rows: int, trailing: list[dict]) -> list[dict]:
    """Every check of the day: {check, value, limit, breached, message}. `trailing`: the proposed
    counts of earlier days not rejected ({"rows", "blocks", "review_volume"}), newest first."""
    out = []

    def add(check: str, value, limit, breached: bool, message: str) -> None:
        out.append({"check": check, "value": value, "limit": limit, "breached": bool(breached), "message": message})

    kinds = set(p.validation_warning_kinds)
    hit = sorted(w for w in warnings if w.split(":", 1)[0] in kinds)
    add("validation_warnings", hit, sorted(kinds), bool(hit),
        f"validation warned on {hit} (kinds {sorted(kinds)} hold the day)" if hit else "no holding validation warning")
    worst = max(feature_psi.items(), key=lambda kv: kv[1], default=(None, 0.0))
    over = sorted(f for f, v in feature_psi.items() if v > p.max_feature_psi)
    add("feature_psi", round(worst[1], 4), p.max_feature_psi, bool(over),
        f"input drift above the hard limit on the model's top feature(s) {over}: PSI "
        f"{', '.join(f'{f}={feature_psi[f]:.2f}' for f in over)} > {p.max_feature_psi}" if over else
        f"top features' PSI at most {worst[1]:.2f} ({worst[0]})")
    base = trailing[: p.trailing_days]
    for check, num, limit in (("block_rate", blocks, p.max_block_rate_ratio),
                              ("review_volume", review_volume, p.max_review_volume_ratio)):
        rate = num / rows if rows else 0.0
        if len(base) < p.min_trailing_days:
            add(check, rate, None, False, f"{check}: {len(base)} earlier day(s), {p.min_trailing_days} needed for a "
                                          f"baseline: not checked")
            continue
        key = "blocks" if check == "block_rate" else "review_volume"
        median = statistics.median(b[key] / b["rows"] if b["rows"] else 0.0 for b in base)
        floor = 1.0 / rows if rows else 0.0            # one row: a zero baseline does not make any row a breach
        breached = rate > limit * max(median, floor)
        add(check, rate, limit * max(median, floor), breached,
            f"{check} {rate:.4%} is {rate / median if median else float('inf'):.1f}x the median of the last {len(base)} "
            f"days ({median:.4%}; limit {limit}x)")
    share = fallback_rows / rows if rows else 0.0
    add("fallback_share", share, p.max_fallback_share, share > p.max_fallback_share,
        f"{share:.2%} of rows scored on fallback(s) {sorted(p.fallback_kinds)} (limit {p.max_fallback_share:.0%})")
    return out


def breaches(results: list[dict]) -> list[str]:
    return [r["message"] for r in results if r["breached"]]
