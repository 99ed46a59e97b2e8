"""The rule language of params.yaml: {feature, op, value} over a frame's columns.

`score.rules` (the fallback scorer: first matching rule gives the score) and `decide.rules`
(business rules: first match gives the decision) both speak it. The op names are declared in
core/config.py (checked when params.yaml is loaded); their meaning is here.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from pipelines.core.config import RULE_OPS

OPS = {">": lambda c, v: c > v, ">=": lambda c, v: c >= v, "<": lambda c, v: c < v, "<=": lambda c, v: c <= v,
       "==": lambda c, v: c == v, "!=": lambda c, v: c != v, "in": lambda c, v: c.is_in(list(v)),
       "not_in": lambda c, v: ~c.is_in(list(v))}
assert tuple(OPS) == RULE_OPS, "core/config.py RULE_OPS and core/rules.py OPS must name the same ops"


class RuleError(ValueError):
    """A rule reads a column the frame does not have."""


def rule_mask(rule: dict, columns: list[str], where: str) -> pl.Expr:
    """A rule {feature, op, value} as a boolean expression (a null value never matches)."""
    if rule["feature"] not in columns:
        raise RuleError(f"{where}: rule {rule.get('name') or rule}: column {rule['feature']!r} is not in the "
                        f"partition; nothing published")
    return OPS[rule["op"]](pl.col(rule["feature"]), rule["value"]).fill_null(False)


def rule_scores(frame: pl.DataFrame, rules: dict) -> np.ndarray:
    """Per row, the score of the first matching rule of `rules["when"]`, else `rules["default_score"]`."""
    expr = pl.lit(float(rules["default_score"]))
    for r in reversed(rules["when"]):
        expr = pl.when(rule_mask(r, frame.columns, "score.rules")).then(pl.lit(float(r["score"]))).otherwise(expr)
    return frame.select(expr.cast(pl.Float32).alias("s"))["s"].to_numpy()
