"""params.yaml loaded into frozen, typed objects; each stage receives only its own section.

Importing this module has no side effects. Unknown keys are an error (a typo in params.yaml must
not silently fall back to a default).
"""
from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml


class ConfigError(ValueError):
    """params.yaml is malformed: the message names the section and key."""


def _date(value: Any, where: str) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not a YYYY-MM-DD date") from exc


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not true or false")
    return value


def _whole(value: Any, least: int, where: str, why: str = "") -> int:
    """`value` when it is a whole number >= `least`, else a ConfigError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{where}: {value!r} is not a whole number >= {least}{why}")
    return value


def _chunk_rows(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1_000:
        raise ConfigError(f"{where}: {value!r} is not a whole number of rows >= 1000")
    return value


def _memory_mb(value: Any, where: str) -> int | str | None:
    """auto, null, or a whole number of MiB >= 1."""
    if value is None or value == "auto":
        return value
    return _whole(value, 1, where, " of MiB, auto or null")


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
    return value


def _build(cls: type, data: dict[str, Any] | None, where: str):
    """Build dataclass `cls` from a dict, rejecting unknown keys."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; expected some of {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


# --------------------------------------------------------------------------- storage
@dataclass(frozen=True)
class StorageParams:
    lake: str
    layout: dict[str, str]

    def uri(self, kind: str, **fields: str) -> str:
        """The full URI of `kind` (a key of storage.layout) for the given fields."""
        if kind not in self.layout:
            raise ConfigError(f"storage.layout has no entry {kind!r}")
        return f"{self.lake.rstrip('/')}/{self.layout[kind].format(**fields)}"


# --------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class Columns:
    id: str
    timestamp: str | None = None
    label: str | None = None
    entities: dict[str, str] = field(default_factory=dict)
    numerics: dict[str, str] = field(default_factory=dict)
    categoricals: dict[str, str] = field(default_factory=dict)

    def mapping(self) -> dict[str, str]:
        """canonical name -> source name, in canonical column order."""
        out = {"event_id": self.id}
        if self.timestamp:
            out["event_ts"] = self.timestamp
        if self.label:
            out["label"] = self.label
        out.update(self.entities)
        out.update(self.numerics)
        out.update(self.categoricals)
        return out


@dataclass(frozen=True)
class DatasetParams:
    name: str
    uri: str
    format: str
    partition: str
    first_date: dt.date
    columns: Columns
    delay_days: int = 0
    timestamp_format: str | None = None
    timestamp_unit: str | None = None

    def partition_uri(self, day: dt.date) -> str:
        part = self.partition.format(date=day.isoformat(), yyyymmdd=day.strftime("%Y%m%d"))
        return f"{self.uri.rstrip('/')}/{part}"

    @staticmethod
    def from_dict(name: str, data: dict[str, Any]) -> "DatasetParams":
        data = dict(data)
        where = f"datasets.{name}"
        cols = _build(Columns, data.pop("columns", None), f"{where}.columns")
        if "first_date" in data:
            data["first_date"] = _date(data["first_date"], f"{where}.first_date")
        ds = _build(DatasetParams, {"name": name, "columns": cols, **data}, where)
        if ds.format not in ("parquet", "csv"):
            raise ConfigError(f"{where}.format: {ds.format!r} is not one of parquet, csv")
        if ds.timestamp_unit not in (None, "s", "ms", "us"):
            raise ConfigError(f"{where}.timestamp_unit: {ds.timestamp_unit!r} is not one of s, ms, us")
        return ds


# --------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class RunParams:
    start_date: dt.date
    end_date: dt.date


@dataclass(frozen=True)
class IngestParams:
    dedupe_keep: str = "first"    # the earliest (timestamp, source order) of duplicate ids is kept
    duplicate_window_days: int = 45   # an id ingested for one of these earlier days is rejected again
    dataset_threads: int = 2      # how, not what: datasets ingested side by side (each its days in order)

    def __post_init__(self) -> None:
        if type(self.dataset_threads) is not int or self.dataset_threads < 1:
            raise ConfigError(f"ingest.dataset_threads: {self.dataset_threads!r} is not a whole number >= 1")
        if self.dedupe_keep != "first":
            raise ConfigError(f"ingest.dedupe_keep: {self.dedupe_keep!r} is not supported (only 'first')")
        if type(self.duplicate_window_days) is not int or self.duplicate_window_days < 0:
            raise ConfigError(f"ingest.duplicate_window_days: {self.duplicate_window_days!r} is not a whole number >= 0")


@dataclass(frozen=True)
class ServiceParams:
    timeout_s: float = 60.0       # the longest a command waits on S3 or MLflow before failing with one line

    def __post_init__(self) -> None:
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or not 5 <= self.timeout_s <= 3600:
            raise ConfigError(f"services.timeout_s: {self.timeout_s!r} is not a number of seconds in [5, 3600]")


@dataclass(frozen=True)
class ShardParams:
    count: int = 1                # nightly features, score and monitor split into this many shards (1: none)

    def __post_init__(self) -> None:
        if type(self.count) is not int or not 1 <= self.count <= 64:
            raise ConfigError(f"shards.count: {self.count!r} is not a whole number in [1, 64]")


@dataclass(frozen=True)
class SuggestParams:
    reference_start: dt.date
    reference_end: dt.date
    mean_tolerance: float = 0.25
    quantile_tolerance: float = 0.35
    row_count_slack: float = 0.5
    hard_limits: dict[str, tuple[float, float]] = field(default_factory=dict)   # column -> [min, max], block

    def __post_init__(self) -> None:
        for col, lim in self.hard_limits.items():
            if not (isinstance(lim, (list, tuple)) and len(lim) == 2 and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in lim)
                    and lim[0] < lim[1]):
                raise ConfigError(f"validate.suggest.hard_limits.{col}: {lim!r} is not [min, max], finite, with min < max")


@dataclass(frozen=True)
class ValidateParams:
    suites: dict[str, str | bool]     # dataset -> suite path, or false: explicitly no suite
    max_quarantine_fraction: float
    suggest: SuggestParams
    engine: str = "polars"            # polars: core/suite_polars (GX's outcomes, checked equal); gx: GX itself

    def __post_init__(self) -> None:
        if self.engine not in ("polars", "gx"):
            raise ConfigError(f"validate.engine: {self.engine!r}; expected polars or gx")
        for name, path in self.suites.items():
            if path is False:
                continue
            if not isinstance(path, str) or not path:
                raise ConfigError(f"validate.suites.{name}: {path!r} is neither a suite path nor false (no suite)")
            if not Path(path).is_file():
                raise ConfigError(f"validate.suites.{name}: {path} does not exist (run from the project root; set "
                                  f"it to false to run without a {name} suite)")


@dataclass(frozen=True)
class RollingSpec:
    value: str
    aggs: tuple[str, ...]
    # Window sums run in fixed point with this many decimals: integer sums are exact, so a window
    # gives the same bits whatever history precedes it (training == scoring, bit for bit).
    decimals: int = 2


@dataclass(frozen=True)
class RatioSpec:
    name: str
    numerator: str
    denominator: str


@dataclass(frozen=True)
class FeatureParams:
    """The declarative feature spec (see pipelines/features.py for the semantics)."""

    windows_days: tuple[int, ...]
    rolling: dict[str, RollingSpec]
    target_rate: dict[str, tuple[int, ...]]
    time_since_last: tuple[str, ...]
    weekend: bool
    night_hours: tuple[int, int] | None
    ratios: tuple[RatioSpec, ...]
    categoricals: tuple[str, ...]
    categories: tuple[str, ...]
    label_delay_days: int
    missing_history: str = "fail"
    incremental: bool = True       # how, not what: excluded from the spec hash (the features are the same)
    chunk_rows: int = 1_000_000    # how, not what: the timeline rows one chunk of entities is computed on
    timeline_threads: int = 2      # how, not what: chunks of the timeline computed at once
    spill_compression: str = "none"   # how, not what: the nightly History's spill on local disk (none, lz4, zstd)
    state_compression: str = "auto"   # how, not what: the Parquet codec of the feature_state objects folded nightly (auto, lz4, zstd, none)
    state_keep_days: int | None = 44  # how, not what: feature_state partitions older than this are removed
    state_apart_mb: int | None = 64   # how, not what: states of larger days made in processes of their own
    from_raw_memory_mb: int | str | None = "auto"   # how, not what: the most a recomputation from raw may hold

    @property
    def lookback_days(self) -> int:
        """Days of history a feature for day d needs (d itself excluded)."""
        rate = max((max(w) for w in self.target_rate.values() if w), default=0)
        return max(max(self.windows_days, default=0), rate + self.label_delay_days if rate else 0)

    @staticmethod
    def from_dict(data: dict[str, Any], label_delay_days: int) -> "FeatureParams":
        d = dict(data)
        where = "features"
        allowed = {"windows_days", "rolling", "target_rate", "time_since_last", "calendar", "ratios",
                   "categoricals", "categories", "missing_history", "incremental", "chunk_rows", "spill_compression",
                   "state_compression", "timeline_threads", "state_keep_days", "state_apart_mb", "from_raw_memory_mb"}
        unknown = set(d) - allowed
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
        rolling = {}
        for ent, spec in (d.get("rolling") or {}).items():
            r = _build(RollingSpec, spec, f"{where}.rolling.{ent}")
            bad = set(r.aggs) - {"count", "sum", "mean", "std", "max", "min"}
            if bad:
                raise ConfigError(f"{where}.rolling.{ent}.aggs: unsupported {sorted(bad)}")
            rolling[ent] = RollingSpec(r.value, tuple(r.aggs), int(r.decimals))
        cal = dict(d.get("calendar") or {})
        night = cal.get("night_hours")
        missing = d.get("missing_history", "fail")
        if missing not in ("fail", "warn"):
            raise ConfigError(f"{where}.missing_history: {missing!r} is not fail or warn")
        spec = FeatureParams(
            windows_days=tuple(int(w) for w in d.get("windows_days", ())),
            rolling=rolling,
            target_rate={k: tuple(int(w) for w in v) for k, v in (d.get("target_rate") or {}).items()},
            time_since_last=tuple(d.get("time_since_last") or ()),
            weekend=bool(cal.get("weekend", False)),
            night_hours=(int(night[0]), int(night[1])) if night else None,
            ratios=tuple(_build(RatioSpec, r, f"{where}.ratios") for r in d.get("ratios") or ()),
            categoricals=tuple(d.get("categoricals") or ()),
            categories=tuple(d.get("categories") or ()),
            label_delay_days=int(label_delay_days),
            missing_history=missing,
            incremental=_flag(d.get("incremental", True), f"{where}.incremental"),
            chunk_rows=_chunk_rows(d.get("chunk_rows", 1_000_000), f"{where}.chunk_rows"),
            timeline_threads=_whole(d.get("timeline_threads", 2), 1, f"{where}.timeline_threads", " (threads)"),
            spill_compression=_choice(d.get("spill_compression", "none"), ("none", "lz4", "zstd"),
                                      f"{where}.spill_compression"),
            state_compression=_choice(d.get("state_compression", "auto"), ("auto", "lz4", "zstd", "none"),
                                      f"{where}.state_compression"),
            **({"state_keep_days": d["state_keep_days"]} if "state_keep_days" in d else {}),
            state_apart_mb=None if d.get("state_apart_mb", 64) is None else
            _whole(d.get("state_apart_mb", 64), 0, f"{where}.state_apart_mb", " or null"),
            from_raw_memory_mb=_memory_mb(d.get("from_raw_memory_mb", "auto"), f"{where}.from_raw_memory_mb"),
        )
        keep = spec.state_keep_days
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < spec.lookback_days):
            raise ConfigError(f"{where}.state_keep_days: {keep!r} is not null or a whole number of days >= the look-back "
                              f"({spec.lookback_days}): a nightly date reads the states of its look-back")
        return spec


# --------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainParams:
    """Time-based split and XGBoost settings. Windows count back from the last day whose labels
    have all landed (run end - label delay): [train][gap][valid][test]."""

    test_days: int
    valid_days: int
    gap_days: int
    train_days: int | None
    min_train_positives: int
    device: str
    seed: int
    nthread: int
    num_boost_round: int
    early_stopping_rounds: int
    eval_metric: str
    base: dict[str, Any]
    search: dict[str, list[Any]]
    operating_threshold: Any = "auto"
    exclude_features: tuple[str, ...] = ()
    engine: str = "local"          # local: one process; dask: xgboost.dask on a dask.distributed cluster
    dask_workers: int = 2          # engine dask without FRAUDOPS_DASK_SCHEDULER: a LocalCluster of this many

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device: {self.device!r} is not one of auto, cpu, cuda")
        if self.engine not in ("local", "dask"):
            raise ConfigError(f"train.engine: {self.engine!r} is not one of local, dask")
        if type(self.dask_workers) is not int or self.dask_workers < 1:
            raise ConfigError(f"train.dask_workers: {self.dask_workers!r} is not a positive integer")
        for k in ("test_days", "valid_days"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"train.{k}: must be >= 1")
        thr = self.operating_threshold
        if thr != "auto" and not (isinstance(thr, (int, float)) and 0 < thr < 1):
            raise ConfigError(f"train.operating_threshold: {thr!r} is neither 'auto' nor a number in (0, 1)")
        if not self.search or any(not isinstance(v, list) or not v for v in self.search.values()):
            raise ConfigError("train.search: each key needs a non-empty list of values")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainParams":
        return _build(cls, {**d, "exclude_features": tuple(d.get("exclude_features") or ())}, "train")


@dataclass(frozen=True)
class BaselineRule:
    feature: str
    threshold: float


@dataclass(frozen=True)
class EvaluateParams:
    precision_at_k: tuple[int, ...]
    entity: str
    slices: tuple[str, ...]
    slice_min_positives: int
    calibration_bins: int
    profile_bins: int
    score_bins: int
    baseline_rule: BaselineRule

    @classmethod
    def from_dict(cls, d: dict) -> "EvaluateParams":
        d = dict(d)
        d["baseline_rule"] = _build(BaselineRule, d.get("baseline_rule"), "evaluate.baseline_rule")
        d["precision_at_k"] = tuple(int(k) for k in d.get("precision_at_k") or ())
        d["slices"] = tuple(d.get("slices") or ())
        return _build(cls, d, "evaluate")


@dataclass(frozen=True)
class GateParams:
    headline_metric: str
    minimums: dict[str, float]
    max_drop_vs_champion: float
    max_slice_drop_vs_champion: float


@dataclass(frozen=True)
class RegisterParams:
    model_name: str
    experiment: str
    gate: GateParams
    pip_requirements: tuple[str, ...]

    @classmethod
    def from_dict(cls, d: dict) -> "RegisterParams":
        g = _build(GateParams, d.get("gate"), "register.gate")
        if g.headline_metric not in HIGHER_IS_BETTER:
            raise ConfigError(f"register.gate.headline_metric: {g.headline_metric!r} is not one of {list(HIGHER_IS_BETTER)}")
        for k, v in (g.minimums or {}).items():
            if not (k in HIGHER_IS_BETTER or re.fullmatch(r"(entity_)?precision_at_[1-9][0-9]*", str(k))) or not _number(v):
                raise ConfigError(f"register.gate.minimums: {k}: {v!r} (a metric of {list(HIGHER_IS_BETTER)} or "
                                  f"(entity_)precision_at_K, and a number)")
        for k in ("max_drop_vs_champion", "max_slice_drop_vs_champion"):
            if not (_number(getattr(g, k)) and getattr(g, k) >= 0):
                raise ConfigError(f"register.gate.{k}: {getattr(g, k)!r} is not a number >= 0")
        return _build(cls, {**d, "gate": g, "pip_requirements": tuple(d.get("pip_requirements") or ())}, "register")


# the evaluation's and the shadow comparison's metrics where higher is better (a gate's headline and
# minimums, promotion.metric)
HIGHER_IS_BETTER = ("average_precision", "roc_auc", "precision", "recall", "f1")


# --------------------------------------------------------------------------- nightly
RULE_OPS = (">", ">=", "<", "<=", "==", "!=", "in", "not_in")     # meanings: core/rules.py


def _rule(r: dict, where: str, extra: tuple[str, ...]) -> dict:
    r = dict(r or {})
    need = ("feature", "op", "value", *extra)
    missing = [k for k in need if k not in r]
    if missing:
        raise ConfigError(f"{where}: rule {r} lacks {missing}")
    if r["op"] not in RULE_OPS:
        raise ConfigError(f"{where}: rule {r}: op must be one of {RULE_OPS}")
    return r


# what score writes on every row besides the key columns (a carried column may not take their names)
PREDICTION_COLUMNS = {"ds", "score", "threshold", "model_name", "model_version", "run_id", "spec_hash", "scored_by",
                      "fallback", "defaulted_features"}


@dataclass(frozen=True)
class ScoreParams:
    model_name: str | None            # None = register.model_name
    alias: str
    chunk_rows: int
    cache_dir: str | None             # None = $FRAUDOPS_HOME/model-cache
    registry_timeout_s: float
    feature_defaults: dict[str, Any]  # feature -> number | "reference_median"
    rules: dict[str, Any]             # {default_score, threshold, when: [{feature, op, value, score}]}
    carry_columns: tuple[str, ...]    # feature columns the predictions carry as built (decide's rules read them)
    workers: int = 0                  # how, not what: batches scored at once, one thread each (0 = this process's cores)

    @classmethod
    def from_dict(cls, d: dict, model_name: str) -> "ScoreParams":
        s = _build(cls, d, "score")
        _whole(s.workers, 0, "score.workers", " (0 = the cores this process may use)")
        rules = dict(s.rules or {})
        for k in ("default_score", "threshold", "when"):
            if k not in rules:
                raise ConfigError(f"score.rules: missing {k!r}")
        rules["when"] = [_rule(r, "score.rules.when", ("score",)) for r in rules["when"]]
        for f, v in s.feature_defaults.items():
            if not (isinstance(v, (int, float)) or v == "reference_median"):
                raise ConfigError(f"score.feature_defaults.{f}: {v!r} is neither a number nor 'reference_median'")
        carry = s.carry_columns
        if not isinstance(carry, (list, tuple)) or not all(isinstance(c, str) and c for c in carry) \
                or len(set(carry)) != len(carry):
            raise ConfigError(f"score.carry_columns: {carry!r} is not a list of distinct column names")
        clash = sorted(set(carry) & PREDICTION_COLUMNS)
        if clash:
            raise ConfigError(f"score.carry_columns: {clash} would replace the predictions' own column(s)")
        return dataclasses.replace(s, model_name=s.model_name or model_name, rules=rules, carry_columns=tuple(carry))


@dataclass(frozen=True)
class DecideParams:
    block_threshold: float
    review_threshold: Any             # "operating" (the model's operating threshold) or a number
    review_capacity: int
    over_capacity: str                # approve | block
    rules: tuple[dict, ...]
    allow_list: dict[str, tuple[str, ...]]

    @classmethod
    def from_dict(cls, d: dict) -> "DecideParams":
        d = dict(d)
        d["rules"] = tuple(_rule(r, "decide.rules", ("name", "decision")) for r in d.get("rules") or ())
        for r in d["rules"]:
            if r["decision"] not in ("review", "block", "approve"):
                raise ConfigError(f"decide.rules: {r['name']}: decision must be review | block | approve")
        d["allow_list"] = {k: tuple(str(x) for x in (v or ())) for k, v in (d.get("allow_list") or {}).items()}
        p = _build(cls, d, "decide")
        if p.over_capacity not in ("approve", "block"):
            raise ConfigError("decide.over_capacity must be approve | block")
        if p.review_threshold != "operating" and not isinstance(p.review_threshold, (int, float)):
            raise ConfigError("decide.review_threshold must be 'operating' or a number")
        return p


class _Pair:
    """Two finite numbers in order, read from a mapping: first <= second (first < second if strict)."""
    strict = False

    @classmethod
    def of(cls, d: Any, where: str):
        x = _build(cls, d, where)
        (n1, a), (n2, b) = ((f.name, getattr(x, f.name)) for f in dataclasses.fields(x))
        if not (_number(a) and _number(b) and (a < b if cls.strict else a <= b)):
            raise ConfigError(f"{where}: need numbers {n1} {'<' if cls.strict else '<='} {n2} (got {n1}={a!r}, {n2}={b!r})")
        return x


@dataclass(frozen=True)
class Band(_Pair):
    """Thresholds of a metric where higher is worse: warn <= alert."""
    warn: float
    alert: float


@dataclass(frozen=True)
class Range(_Pair):
    """The normal band of a metric: below low or above high is an alert (low < high)."""
    strict = True
    low: float
    high: float


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class MonitorParams:
    exclude_features: tuple[str, ...]
    psi: Band                         # per feature, on the reference's quantile bins (+ a null bin)
    ks: Band
    score_psi: Band
    drift_min_features: int
    null_share_increase: Band
    out_of_range_share: Band
    volume_ratio: Range               # rows vs the reference's rows per day
    fallback_share: Band
    review_rate: Range                # share of rows sent to review
    rolling_days: int

    @classmethod
    def from_dict(cls, d: dict) -> "MonitorParams":
        d = dict(d)
        d["exclude_features"] = tuple(d.get("exclude_features") or ())
        for k in ("psi", "ks", "score_psi", "null_share_increase", "out_of_range_share", "fallback_share"):
            if k in d:
                d[k] = Band.of(d[k], f"monitor.{k}")
        for k in ("volume_ratio", "review_rate"):
            if k in d:
                d[k] = Range.of(d[k], f"monitor.{k}")
        return _build(cls, d, "monitor")


@dataclass(frozen=True)
class GuardrailParams:
    """Health limits checked before a day's decisions are acted on; a breach holds the day."""
    on_breach: str = "hold"                        # hold: decisions published as `hold` until a person releases
    validation_warning_kinds: tuple[str, ...] = ()  # a validation warning of these kinds (name before ':') holds
    top_features: int = 5                          # the model's most important features (total gain) ...
    max_feature_psi: float = 2.0                   # ... whose PSI above this holds the day
    trailing_days: int = 7                         # the baseline: median of the last N days not rejected
    min_trailing_days: int = 3                     # fewer earlier days: the ratio checks are skipped (said)
    max_block_rate_ratio: float = 4.0              # block rate above k x the trailing median
    max_review_volume_ratio: float = 4.0           # review candidates above k x the trailing median
    fallback_kinds: tuple[str, ...] = ("feature_default",)
    max_fallback_share: float = 0.2                # rows on those fallbacks

    @classmethod
    def from_dict(cls, d: dict | None) -> "GuardrailParams":
        d = dict(d or {})
        for k in ("validation_warning_kinds", "fallback_kinds"):
            if k in d:
                d[k] = tuple(str(x) for x in d[k] or ())
        g = _build(cls, d, "guardrails")
        if g.on_breach != "hold":
            raise ConfigError(f"guardrails.on_breach: {g.on_breach!r} is not supported (hold)")
        for k in ("max_block_rate_ratio", "max_review_volume_ratio"):
            if not (_number(getattr(g, k)) and getattr(g, k) > 1):
                raise ConfigError(f"guardrails.{k}: need a number above 1 (got {getattr(g, k)!r})")
        if not (_number(g.max_feature_psi) and g.max_feature_psi > 0 and 0 <= g.max_fallback_share <= 1):
            raise ConfigError("guardrails: max_feature_psi must be > 0 and max_fallback_share in [0, 1]")
        if not (0 <= g.min_trailing_days <= g.trailing_days and g.top_features >= 0):
            raise ConfigError("guardrails: need 0 <= min_trailing_days <= trailing_days and top_features >= 0")
        return g


@dataclass(frozen=True)
class AlertParams:
    webhook_url: str | None = None    # alerts are POSTed here too (FRAUDOPS_ALERT_WEBHOOK overrides)
    timeout_s: float = 5.0


@dataclass(frozen=True)
class RetrainPerformance:
    metric: str                       # average_precision (lower is worse) | error_rate (higher is worse)
    limit: float                      # the champion's realized metric past this on a scored day: a request

    def degraded(self, value: float | None) -> bool:
        if value is None:
            return False
        return value < self.limit if self.metric == "average_precision" else value > self.limit


@dataclass(frozen=True)
class RetrainParams:
    drift_days: int                   # N: drifted days needed ...
    of_last_days: int                 # ... among the last M (the latest included)
    cooldown_days: int
    max_per_30_days: int
    window_days: int
    dag_id: str
    min_labelled_days_after_onset: int = 0   # train once the labels of this many days from the onset landed
    performance: RetrainPerformance | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "RetrainParams":
        d = dict(d)
        if d.get("performance") is not None:
            perf = _build(RetrainPerformance, d["performance"], "retrain.performance")
            if perf.metric not in ("average_precision", "error_rate") or not _number(perf.limit):
                raise ConfigError("retrain.performance: metric must be average_precision | error_rate, limit a number")
            d["performance"] = perf
        p = _build(cls, d, "retrain")
        if not 1 <= p.drift_days <= p.of_last_days:
            raise ConfigError("retrain: need 1 <= drift_days <= of_last_days")
        if not (isinstance(p.min_labelled_days_after_onset, int) and p.min_labelled_days_after_onset >= 0):
            raise ConfigError("retrain.min_labelled_days_after_onset: need an integer >= 0")
        for k, least in (("cooldown_days", 0), ("max_per_30_days", 1), ("window_days", 1), ("drift_days", 1)):
            _whole(getattr(p, k), least, f"retrain.{k}")
        return p


@dataclass(frozen=True)
class FeedbackParams:
    precision_at_k: tuple[int, ...]   # realized precision among the k highest scores of the day
    slices: tuple[str, ...]           # feature columns to slice realized metrics and the shadow comparison by
    review_verdicts: dict[str, int]   # human decision -> label (block: 1 = fraud, approve: 0 = legit)

    @classmethod
    def from_dict(cls, d: dict) -> "FeedbackParams":
        d = dict(d)
        d["precision_at_k"] = tuple(d.get("precision_at_k") or ())
        d["slices"] = tuple(d.get("slices") or ())
        p = _build(cls, d, "feedback")
        for k, v in p.review_verdicts.items():
            if k not in ("block", "review", "approve") or v not in (0, 1):
                raise ConfigError(f"feedback.review_verdicts: {k}: {v} (decisions block|review|approve -> 0|1)")
        return p


@dataclass(frozen=True)
class ShadowParams:
    enabled: bool
    alias: str                        # the registry alias that shadows the champion

    @classmethod
    def from_dict(cls, d: dict) -> "ShadowParams":
        p = _build(cls, d, "shadow")
        _flag(p.enabled, "shadow.enabled")
        if not (isinstance(p.alias, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", p.alias)) or p.alias == "champion":
            raise ConfigError(f"shadow.alias: {p.alias!r} is not an alias name other than champion")
        return p


@dataclass(frozen=True)
class PromotionParams:
    mode: str                         # auto | manual
    metric: str                       # compared per labelled shadow day (higher is better)
    shadow_days: int                  # S: labelled shadow days before deciding
    min_wins: int                     # W: days the challenger must be ahead on
    min_margin: float                 # ahead = challenger - champion > this
    max_slice_drop: float             # delta: no slice worse by more than this (pooled over the S days)
    slice_min_positives: int
    lookback_days: int                # how far back shadow days are looked for

    @classmethod
    def from_dict(cls, d: dict) -> "PromotionParams":
        p = _build(cls, d, "promotion")
        if p.mode not in ("auto", "manual"):
            raise ConfigError("promotion.mode must be auto | manual")
        if not 1 <= p.min_wins <= p.shadow_days:
            raise ConfigError("promotion: need 1 <= min_wins <= shadow_days")
        if p.metric not in HIGHER_IS_BETTER:
            raise ConfigError(f"promotion.metric: {p.metric!r} is not one of {list(HIGHER_IS_BETTER)}")
        _whole(p.lookback_days, p.shadow_days, "promotion.lookback_days", " (shadow_days): no shadow could ever be judged")
        if not _number(p.min_margin) or not (_number(p.max_slice_drop) and p.max_slice_drop >= 0):
            raise ConfigError("promotion: min_margin must be a number, max_slice_drop a number >= 0")
        _whole(p.slice_min_positives, 0, "promotion.slice_min_positives")
        return p


@dataclass(frozen=True)
class RollbackParams:
    auto: bool
    metric: str                       # error_rate (lower is better) at the model's operating threshold
    factor: float                     # roll back when realized > factor x the evaluation baseline
    window_days: int                  # the latest labelled window (days of predictions)
    min_rows: int                     # fewer labelled rows in the window: no judgement

    @classmethod
    def from_dict(cls, d: dict) -> "RollbackParams":
        p = _build(cls, d, "rollback")
        if p.metric not in ROLLBACK_METRICS:
            raise ConfigError(f"rollback.metric must be one of {sorted(ROLLBACK_METRICS)}")
        _flag(p.auto, "rollback.auto")
        if not (_number(p.factor) and p.factor > 0):
            raise ConfigError(f"rollback.factor: {p.factor!r} is not a number > 0")
        for k, least in (("window_days", 1), ("min_rows", 0)):
            _whole(getattr(p, k), least, f"rollback.{k}")
        return p


ROLLBACK_METRICS = {"error_rate", "false_positive_rate", "miss_rate"}


# --------------------------------------------------------------------------- the file
TRACE_ENV = "FRAUDOPS_PARAMS_TRACE"     # a file: each process appends the params keys it read (tests)
_TRACED: list["Params"] = []


S = TypeVar("S")


class _Section(Generic[S]):
    """A typed section of params.yaml, parsed and checked on each read: `decide = _Section(DecideParams)`
    builds DecideParams from raw["decide"] (its `from_dict`, else field by field, unknown keys
    refused) and records the read. An optional section may be absent (its defaults apply)."""

    def __init__(self, cls: type[S], optional: bool = False) -> None:
        self.cls, self.optional = cls, optional

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: "Params | None", owner: type | None = None) -> S:
        if obj is None:
            return self  # type: ignore[return-value]
        if self.optional:
            obj.read.add(self.name)
        data = obj.raw.get(self.name) if self.optional else obj.section(self.name)
        if hasattr(self.cls, "from_dict"):
            return self.cls.from_dict(data)  # type: ignore[attr-defined]
        return _build(self.cls, data, self.name)

@dataclass(frozen=True)
class Params:
    """The whole params.yaml; stages take one attribute of it, never the whole. The keys a process
    reads are remembered (`read`): DVC must list them as the stage's params (a test checks)."""

    raw: dict[str, Any]
    path: Path
    read: set[str] = field(default_factory=set, compare=False, repr=False)

    def section(self, name: str) -> dict[str, Any]:
        if name not in self.raw:
            raise ConfigError(f"{self.path}: section {name!r} is missing")
        self.read.add(name)
        return self.raw[name]

    storage = _Section(StorageParams)
    services = _Section(ServiceParams, optional=True)
    shards = _Section(ShardParams, optional=True)
    alerts = _Section(AlertParams, optional=True)
    guardrails = _Section(GuardrailParams, optional=True)
    train = _Section(TrainParams)
    evaluate = _Section(EvaluateParams)
    register = _Section(RegisterParams)
    decide = _Section(DecideParams)
    monitor = _Section(MonitorParams)
    retrain = _Section(RetrainParams)
    feedback = _Section(FeedbackParams)
    shadow = _Section(ShadowParams)
    promotion = _Section(PromotionParams)
    rollback = _Section(RollbackParams)

    @property
    def lookback_days(self) -> int:
        """Days of history the features of a day need (see FeatureParams.lookback_days), from the
        three keys it depends on only."""
        f, delay = self.raw.get("features") or {}, self._labels_delay()
        self.read.update({"features.windows_days", "features.target_rate"})
        rate = max((max(w) for w in (f.get("target_rate") or {}).values() if w), default=0)
        return max(max(f.get("windows_days") or [0]), rate + delay if rate else 0)

    def _labels_delay(self) -> int:
        sets = self.raw.get("datasets") or {}
        if "labels" not in sets:
            return 0
        self.read.add("datasets.labels.delay_days")
        return int(sets["labels"].get("delay_days") or 0)

    @property
    def run(self) -> RunParams:
        s = self.section("run")
        return RunParams(_date(s["start_date"], "run.start_date"), _date(s["end_date"], "run.end_date"))

    def dataset(self, name: str) -> DatasetParams:
        sets = self.raw.get("datasets") or {}
        if name not in sets:
            raise ConfigError(f"datasets.{name} is not configured (have {sorted(sets)})")
        self.read.add(f"datasets.{name}")
        return DatasetParams.from_dict(name, sets[name])

    def has_dataset(self, name: str) -> bool:
        return name in (self.raw.get("datasets") or {})

    @property
    def dataset_names(self) -> list[str]:
        return list(self.section("datasets"))

    @property
    def ingest(self) -> IngestParams:
        p = _build(IngestParams, self.raw.get("ingest"), "ingest")
        lookback = self.lookback_days if "features" in self.raw else 0
        if p.duplicate_window_days < lookback:
            raise ConfigError(f"ingest.duplicate_window_days: {p.duplicate_window_days} is shorter than the features' "
                              f"look-back ({lookback} days): a re-sent id could reach the features twice")
        return p

    def check(self) -> "Params":
        """Parse every section (so a typo anywhere fails at load, with its key path) and check what
        spans sections. Reading for the check is not reading for a stage: the trace is left empty."""
        self.storage, self.run, self.ingest, self.services, self.shards, self.alerts, self.validate  # noqa: B018
        feats = self.features
        tx = self.dataset("transactions") if self.has_dataset("transactions") else None
        labels = self.dataset("labels") if self.has_dataset("labels") else None
        for name in self.dataset_names:
            self.dataset(name)
        train, ev = self.train, self.evaluate
        self.register, self.score, self.shadow, self.monitor, self.feedback, self.guardrails  # noqa: B018
        self.promotion, self.rollback  # noqa: B018
        decide, retrain = self.decide, self.retrain
        delay = labels.delay_days if labels else 0
        if train.gap_days < delay:
            raise ConfigError(f"train.gap_days: {train.gap_days} is shorter than the label delay ({delay} days, "
                              f"datasets.labels.delay_days): validation would leak")
        need = delay + train.test_days + train.valid_days + train.gap_days + 1
        if retrain.window_days < need:
            raise ConfigError(f"retrain.window_days: {retrain.window_days} cannot hold the split (label delay {delay} + "
                              f"test {train.test_days} + valid {train.valid_days} + gap {train.gap_days} + 1 train day "
                              f"= {need})")
        k = retrain.min_labelled_days_after_onset
        least = train.test_days + train.valid_days + train.gap_days + 1
        if k and k < least:
            raise ConfigError(f"retrain.min_labelled_days_after_onset: {k} labelled days after the onset leave the "
                              f"training window without a changed day (test {train.test_days} + valid {train.valid_days} + "
                              f"gap {train.gap_days} come first): at least {least}; 0 turns the wait off")
        if decide.review_threshold != "operating" and not decide.review_threshold < decide.block_threshold:
            raise ConfigError(f"decide.review_threshold: {decide.review_threshold} must be below block_threshold "
                              f"{decide.block_threshold}")
        if tx is not None:
            entities = set(tx.columns.entities)
            keys = {"event_id", "event_ts", *entities}          # what every prediction row carries already
            uncarried = ({r["feature"] for r in decide.rules} | set(decide.allow_list)) - keys - set(self.score.carry_columns)
            if uncarried:
                raise ConfigError(f"score.carry_columns: decide.rules/allow_list read {sorted(uncarried)}, which the "
                                  f"predictions do not carry (add them to score.carry_columns)")
            used = {*feats.rolling, *feats.target_rate, *feats.time_since_last}
            if used - entities:
                raise ConfigError(f"features: entities {sorted(used - entities)} are not columns of "
                                  f"datasets.transactions.columns.entities {sorted(entities)}")
            if ev.entity not in entities:
                raise ConfigError(f"evaluate.entity: {ev.entity!r} is not one of {sorted(entities)}")
        self.read.clear()
        return self

    @property
    def validate(self) -> ValidateParams:
        s = dict(self.section("validate"))
        sug = dict(s.pop("suggest", {}))
        for k in ("reference_start", "reference_end"):
            if k in sug:
                sug[k] = _date(sug[k], f"validate.suggest.{k}")
        return _build(ValidateParams, {**s, "suggest": _build(SuggestParams, sug, "validate.suggest")}, "validate")

    @property
    def features(self) -> FeatureParams:
        return FeatureParams.from_dict(self.section("features"), self._labels_delay())

    @property
    def score(self) -> ScoreParams:
        return ScoreParams.from_dict(self.section("score"), self.register.model_name)


def load_params(path: str | Path = "params.yaml") -> Params:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: params file not found (run from the project root or pass --params)")
    with p.open() as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    params = Params(raw=raw, path=p).check()
    if os.environ.get(TRACE_ENV):
        if not _TRACED:
            atexit.register(_write_trace, os.environ[TRACE_ENV])
        _TRACED.append(params)
    return params


def _write_trace(path: str) -> None:
    import sys

    read = sorted(set().union(*(p.read for p in _TRACED)))
    with open(path, "a") as fh:
        fh.write(json.dumps({"argv": sys.argv[1:], "read": read}) + "\n")


def parse_date(value: str) -> dt.date:
    return _date(value, "date")


def date_range(start: dt.date, end: dt.date) -> list[dt.date]:
    if end < start:
        raise ConfigError(f"date range: end {end} is before start {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
