"""Self-contained HTML reports: inline CSS, no scripts, no CDN (they must render offline)."""
from __future__ import annotations

import html
import json

import polars as pl

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.muted{color:#667} table{border-collapse:collapse;width:100%;margin:8px 0}
th,td{border-bottom:1px solid #e3e6ea;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f5f7f9;font-weight:600} code{font-size:12px;word-break:break-all}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.pass{background:#dff3e4;color:#17663a} .fail{background:#fde2e1;color:#a4161a} .warn{background:#fff1cc;color:#8a5a00}
.kpis{display:flex;gap:12px;flex-wrap:wrap} .kpi{border:1px solid #e3e6ea;border-radius:8px;padding:8px 14px}
.kpi b{display:block;font-size:20px}
"""


def _badge(ok: bool, severity: str) -> str:
    if ok:
        return '<span class="badge pass">pass</span>'
    return f'<span class="badge {"fail" if severity == "block" else "warn"}">{"fail" if severity == "block" else "warn"}</span>'


def _short(v, limit: int = 160) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else v
    return html.escape(text if len(text) <= limit else text[:limit] + "…")


def validation_html(results: dict, quarantine: pl.DataFrame, sample_rows: int = 20) -> str:
    status = results["status"]
    head = (f'<h1>Validation: {html.escape(results["dataset"])} · {results["date"]} '
            f'<span class="badge {"pass" if status == "passed" else "fail"}">{status}</span></h1>'
            f'<div class="muted">source {html.escape(str(results.get("source", "")))}</div>')
    kpis = "".join(f'<div class="kpi"><b>{results[k]}</b>{k.replace("_", " ")}</div>'
                   for k in ("rows_in", "rows_validated", "rows_quarantined", "rows_held"))
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in results["reasons"]) or "<li>none</li>"
    rows = []
    for e in results["expectations"]:
        rows.append(
            f"<tr><td>{_badge(e['success'], e['severity'])}</td><td>{html.escape(e['name'])}</td>"
            f"<td><code>{html.escape(e['type'])}</code></td><td>{e['severity']}</td>"
            f"<td>{e['unexpected_count'] if e['row_level'] else ''}</td>"
            f"<td><code>{_short(e['observed'])}</code></td><td><code>{_short(e['kwargs'])}</code></td>"
            f"<td>{html.escape(e['error'] or '')}</td></tr>")
    table = ("<table><tr><th></th><th>expectation</th><th>type</th><th>severity</th><th>unexpected rows</th>"
             "<th>observed</th><th>rule</th><th>error</th></tr>" + "".join(rows) + "</table>")
    sample = ""
    if quarantine.height:
        q = quarantine.head(sample_rows)
        cells = "".join(f"<th>{html.escape(c)}</th>" for c in q.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in q.iter_rows())
        sample = f"<h2>Quarantined rows (first {q.height} of {quarantine.height})</h2><table><tr>{cells}</tr>{body}</table>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>validation {results['dataset']} {results['date']}"
            f"</title><style>{CSS}</style></head><body>{head}<div class='kpis'>{kpis}</div>"
            f"<h2>Why blocked</h2><ul>{reasons}</ul><h2>Expectations</h2>{table}{sample}</body></html>\n")
