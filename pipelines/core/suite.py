"""A reviewed expectation suite (expectations/<dataset>.json) and the outcome of one expectation:
what gx.py (GX itself) and suite_polars.py (the polars evaluator) share.

Each expectation in a suite carries `meta.severity`:
  block  the partition is blocked when it fails; a failing *row-level* block expectation sends the
         offending rows to quarantine instead (see gx.judge).
  warn   recorded; the run continues.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.core.config import ConfigError

SEVERITIES = ("block", "warn")


@dataclass(frozen=True)
class Outcome:
    name: str
    type: str
    column: str | None
    severity: str
    success: bool
    row_level: bool
    unexpected_count: int
    observed: Any
    kwargs: dict
    error: str | None = None
    unexpected_rows: tuple[int, ...] = field(default=(), repr=False)

    def public(self) -> dict:
        return {"name": self.name, "type": self.type, "column": self.column, "severity": self.severity,
                "success": self.success, "row_level": self.row_level, "unexpected_count": self.unexpected_count,
                "observed": jsonable(self.observed), "kwargs": jsonable(self.kwargs), "error": self.error}


def jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v, default=lambda o: o.isoformat() if hasattr(o, "isoformat") else
                                 (o.item() if hasattr(o, "item") else str(o))))


def load_suite(path: str | Path) -> dict:
    """A reviewed suite (expectations/<dataset>.json); a suite that cannot be loaded is an error
    (fail closed: nothing is ever published unvalidated because of a typo)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"expectation suite {p} not found; nothing validated, the run fails (generate one with "
                          f"`python -m pipelines expectations suggest` and review it)")
    try:
        suite = json.loads(p.read_text())
    except ValueError as exc:
        raise ConfigError(f"expectation suite {p} is not valid JSON ({exc}); nothing validated, the run fails") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise ConfigError(f"expectation suite {p} has no 'expectations' list; nothing validated, the run fails")
    for i, e in enumerate(suite.get("expectations", [])):
        sev = e.get("meta", {}).get("severity")
        if sev not in SEVERITIES:
            raise ValueError(f"{p}: expectation #{i} ({e.get('type')}) has severity {sev!r}; expected block or warn")
    return suite


def expectation_name(e: dict) -> str:
    meta = e.get("meta", {})
    if meta.get("name"):
        return meta["name"]
    kw = e.get("kwargs", {})
    return f"{e['type'].removeprefix('expect_')}:{kw['column']}" if "column" in kw else e["type"].removeprefix("expect_")


def fill(value: Any, day: dt.date) -> Any:
    """Suites may say {day_start}/{day_end}: the partition's first and last microsecond."""
    start = dt.datetime.combine(day, dt.time())
    marks = {"{day_start}": start, "{day_end}": start + dt.timedelta(days=1, microseconds=-1)}
    if isinstance(value, str) and value in marks:
        return marks[value]
    if isinstance(value, dict):
        return {k: fill(v, day) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, day) for v in value]
    return value
