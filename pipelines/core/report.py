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


def validation_html(results: dict, quarantine: pl.DataFrame, sample_rows: int = 20) -> str:
    """The validation page of one partition: every expectation with its outcome, the quarantined sample."""
    q = quarantine.head(sample_rows)
    sample = {"columns": q.columns, "rows": [[str(v) for v in r] for r in q.iter_rows()],
              "total": quarantine.height} if quarantine.height else None
    kpis = [(k.replace("_", " "), results[k]) for k in ("rows_in", "rows_validated", "rows_quarantined", "rows_held")]
    return render("validation.html.j2", r=results, kpis=kpis, sample=sample)


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
    return render("monitor_index.html.j2", days=rows)
