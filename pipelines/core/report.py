"""Self-contained HTML reports, rendered from the Jinja2 templates in pipelines/core/templates/
with one stylesheet inlined: no scripts, no CDN (they must render offline); figures are inlined PNGs."""
from __future__ import annotations

import base64
import datetime as dt
import functools
import io
import json
import os
from pathlib import Path

import polars as pl

from pipelines.core.config import StorageParams
from pipelines.core.lake import dates_present, read_metrics

TEMPLATES = Path(__file__).resolve().parent / "templates"




def fmt(v, digits: int = 4) -> str:
    """A number for a table: floats to `digits` significant digits, None as a dash."""
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def short(v, limit: int = 160) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else v
    return text if len(text) <= limit else text[:limit] + "…"


def png(fig, dpi: int = 80) -> bytes:
    """A matplotlib figure as PNG bytes (no timestamp in the file: the same figure, the same bytes)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def data_uri(png_bytes: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode()


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def css() -> str:
    return (TEMPLATES / "style.css").read_text()


def render(template: str, **context) -> str:
    """A page from pipelines/core/templates/<template>, with the one stylesheet inlined."""
    return _environment().get_template(template).render(css=css(), fmt=fmt, short=short, **context) + "\n"


def _value(v) -> str:
    if isinstance(v, str) and v.startswith("{") and v.endswith("}"):
        return {"{day_start}": "the start of the partition's day", "{day_end}": "its end"}.get(v, v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:,}" if isinstance(v, int) or float(v).is_integer() else f"{v:,.6g}"
    return str(v)


def _values(vs, limit: int = 12) -> str:
    vs = list(vs or [])
    shown = ", ".join(_value(v) for v in vs[:limit])
    return shown + (f" and {len(vs) - limit} more" if len(vs) > limit else "")


def _between(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"between {_value(lo)} and {_value(hi)}"
    return f"at least {_value(lo)}" if lo is not None else (f"at most {_value(hi)}" if hi is not None else "anything")


def rule_text(e: dict) -> str:
    """An expectation in plain language ("amount is between 0 and 25,000 for at least 99 % of rows")."""
    k, t = e.get("kwargs") or {}, e.get("type", "")
    col = k.get("column", "")
    mostly = k.get("mostly")
    share = f" for at least {mostly:.0%} of rows" if isinstance(mostly, (int, float)) and mostly < 1 else " for every row"
    texts = {
        "expect_table_columns_to_match_ordered_list": lambda: f"the columns are exactly, in order: {_values(k.get('column_list'), 40)}",
        "expect_table_row_count_to_be_between": lambda: f"the partition has {_between(k.get('min_value'), k.get('max_value'))} rows",
        "expect_column_values_to_be_of_type": lambda: f"{col} is of type {k.get('type_')}",
        "expect_column_values_to_not_be_null": lambda: f"{col} is present (not null){share}",
        "expect_column_values_to_be_unique": lambda: f"{col} is unique: no value appears twice",
        "expect_column_values_to_be_between": lambda: f"{col} is {_between(k.get('min_value'), k.get('max_value'))}{share}",
        "expect_column_mean_to_be_between": lambda: f"the mean of {col} is {_between(k.get('min_value'), k.get('max_value'))}",
        "expect_column_median_to_be_between": lambda: f"the median of {col} is {_between(k.get('min_value'), k.get('max_value'))}",
        "expect_column_values_to_be_in_set": lambda: f"{col} is one of {_values(k.get('value_set'))}{share}",
        "expect_column_quantile_values_to_be_between": lambda: f"the quantiles of {col} are in their ranges: " + "; ".join(
            f"q{q:g} {_between(*r)}" for q, r in zip((k.get("quantile_ranges") or {}).get("quantiles", []),
                                                     (k.get("quantile_ranges") or {}).get("value_ranges", []))),
    }
    if t in texts:
        return texts[t]()
    return f"{t.removeprefix('expect_').replace('_', ' ')}" + (f" ({_values(f'{a}={b}' for a, b in k.items())})" if k else "")


def observed_text(e: dict, rows: int) -> str:
    """What the partition showed for the expectation, in plain language."""
    if e.get("error"):
        return f"could not be checked: {e['error']}"
    if e.get("row_level"):
        bad = int(e.get("unexpected_count") or 0)
        ok = (rows - bad) / rows if rows else 1.0
        return f"{ok:.2%} of rows pass" + (f" ({bad:,} of {rows:,} fail)" if bad else f" (all {rows:,})")
    obs = e.get("observed")
    if obs is None:
        return "as expected" if e.get("success") else "not as expected"
    if isinstance(obs, dict) and {"quantiles", "values"} <= set(obs):
        return "; ".join(f"q{q:g} = {_value(v)}" for q, v in zip(obs["quantiles"], obs["values"]))
    if isinstance(obs, list):
        return _values(obs, 40)
    return _value(obs)


def validation_html(results: dict, quarantine: pl.DataFrame, sample_rows: int = 20,
                    index_link: str | None = None) -> str:
    """The validation page of one partition: every expectation in plain language with what was
    observed and its outcome, the quarantined sample."""
    q = quarantine.head(sample_rows)
    sample = {"columns": q.columns, "rows": [[str(v) for v in r] for r in q.iter_rows()],
              "total": quarantine.height} if quarantine.height else None
    kpis = [(k.replace("_", " "), results[k]) for k in ("rows_in", "rows_validated", "rows_quarantined", "rows_held")]
    rules = [{**e, "rule": rule_text(e), "seen": observed_text(e, results["rows_in"]),
              "outcome": "pass" if e.get("success") else ("fail" if e.get("severity") == "block" else "warn")}
             for e in results.get("expectations", [])]
    rules.sort(key=lambda e: ({"fail": 0, "warn": 1, "pass": 2}[e["outcome"]]))
    return render("validation.html.j2", r=results, kpis=kpis, sample=sample, rules=rules, index_link=index_link,
                  counts={o: sum(e["outcome"] == o for e in rules) for o in ("pass", "warn", "fail")})


def link(store: StorageParams, frm: str, to: str, date: dt.date | None = None) -> str:
    """A relative link from the page of layout `frm` to the page of layout `to` (for `date`)."""
    here = os.path.dirname(store.layout[frm].format(date=date.isoformat() if date else ""))
    return os.path.relpath(store.layout[to].format(date=date.isoformat() if date else ""), here or ".")


def index_html(store: StorageParams, days: list[dt.date]) -> str:
    """The monitoring index: one row per monitored day, linking its report and its realized report."""
    metrics = read_metrics(store, "monitoring", days)
    realized = set(dates_present(store, "feedback_report")) if "feedback_report" in store.layout else set()
    rows = []
    for d in sorted(days, reverse=True):
        m = {r["metric"]: r["value"] for r in metrics.filter((pl.col("date") == d) & (pl.col("feature") == "")).iter_rows(named=True)}
        rows.append({"date": d, "link": link(store, "monitor_index", "monitor_report", d),
                     "realized": link(store, "monitor_index", "feedback_report", d) if d in realized else None,
                     "rows": int(m.get("rows") or 0), "drifted": bool(m.get("day_drifted")),
                     "features_at_alert": int(m.get("drifted_features") or 0), "review_rate": m.get("review_rate") or 0,
                     "block_rate": m.get("block_rate") or 0, "fallback_share": m.get("fallback_share") or 0,
                     "alerts": metrics.filter((pl.col("date") == d) & (pl.col("status") == "alert")).height})
    return render("monitor_index.html.j2", days=rows, trends=index_trends(metrics))


INDEX_TRENDS = (("rows", "volume (rows)", False), ("review_rate", "review rate", True), ("block_rate", "block rate", True),
                ("hold_rate", "held rows", True), ("fallback_share", "rows on a fallback", True),
                ("score_psi", "score PSI", False), ("drifted_features", "features at alert", False))


def index_trends(metrics: pl.DataFrame) -> list[tuple[str, str]]:
    """Trend charts across every monitored day, with the latest day's warn and alert thresholds."""
    from pipelines.core import charts

    day = metrics.filter(pl.col("feature").is_in(["", "score"]))
    out = []
    for metric, title, percent in INDEX_TRENDS:
        m = day.filter(pl.col("metric") == metric).sort("date")
        if not m.height:
            continue
        last = m.row(-1, named=True)
        out.append((title, charts.svg_uri(charts.trend(
            [(str(d), v) for d, v in zip(m["date"].to_list(), m["value"].to_list())],
            f"{title}, {m.height} days", [("warn", last["warn"]), ("alert", last["alert"])], width=420,
            percent=percent))))
    return out


def validation_index_html(store: StorageParams, limit_days: int = 120) -> str:
    """The index of validation runs: per dataset, the latest `limit_days` partitions validated (passed
    or blocked) with their counts and a link to each page, and the quarantined share over time."""
    import re

    from pipelines.core import charts, storage

    layout = store.layout["validation_results"]
    head = layout.split("{dataset}")[0]
    pattern = re.compile(re.escape(f"{store.lake.rstrip('/')}/{head}") + r"([^/]+)/" +
                         re.escape(layout.split("{dataset}/")[1].split("{date}")[0]) + r"(\d{4}-\d{2}-\d{2})" +
                         re.escape(layout.split("{date}")[1]) + "$")
    found: dict[str, list[str]] = {}
    for uri in storage.list_uris(f"{store.lake.rstrip('/')}/{head.rstrip('/')}"):
        if m := pattern.match(uri):
            found.setdefault(m.group(1), []).append(m.group(2))
    here = os.path.dirname(store.layout["validation_index"])
    datasets = []
    for name in sorted(found):
        rows = []
        for d in sorted(found[name], reverse=True)[:limit_days]:
            try:
                r = storage.read_json(store.uri("validation_results", dataset=name, date=d))
            except storage.MissingObject:
                continue
            rows.append({"date": d, "status": r.get("status"), "rows_in": r.get("rows_in", 0),
                         "rows_validated": r.get("rows_validated", 0), "rows_quarantined": r.get("rows_quarantined", 0),
                         "rows_held": r.get("rows_held", 0), "warnings": len(r.get("warnings") or []),
                         "reasons": [short(x, 200) for x in r.get("reasons") or []],
                         "link": os.path.relpath(store.layout["validation_report"].format(dataset=name, date=d), here or ".")})
        points = [(x["date"], x["rows_quarantined"] / x["rows_in"] if x["rows_in"] else None) for x in reversed(rows)]
        chart = charts.svg_uri(charts.trend(points, f"{name}: quarantined share of rows, {len(points)} days",
                                            width=560, percent=True)) if len(points) > 1 else None
        datasets.append({"name": name, "rows": rows, "chart": chart, "blocked": sum(x["status"] == "blocked" for x in rows)})
    return render("validation_index.html.j2", datasets=datasets)


def evaluation_html(title: str, metrics: dict, evaluation: dict, pngs: dict[str, bytes], note: str = "") -> str:
    """The evaluation page of a model (templates/evaluation.html.j2): tables, and the PNGs inlined.
    evaluate writes it for the candidate; register again titled with the model's name and version."""
    import json

    t, b = evaluation["test"], evaluation["baseline"]
    head = [(k, fmt(t.get(k)), fmt(b.get(k))) for k in ("roc_auc", "average_precision", "brier", "precision", "recall",
                                                        "f1", "alert_rate", "rows", "positives")]
    pak = [(f"{kind} {k}", fmt(v["mean"])) for kind in ("events", "entities") for k, v in t["precision_at_k"][kind].items()]
    slices = [(k, v["rows"], v["positives"], fmt(v["average_precision"]), fmt(v["recall"]), fmt(v["precision"]))
              for k, v in t["slices"].items()]
    cm = t["confusion_matrix"]
    return render("evaluation.html.j2", title=title, note=note, ev=evaluation, head_rows=head,
                  cm_rows=[("legit", cm["tn"], cm["fp"]), ("fraud", cm["fn"], cm["tp"])], pak_rows=pak,
                  slice_rows=slices, images=[(n, data_uri(d)) for n, d in sorted(pngs.items())],
                  metrics_json=json.dumps(metrics, indent=2))

