"""The reports' SVG charts: well-formed, self-contained, deterministic, thresholds drawn, text escaped."""
from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

from pipelines.core import charts

NS = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    assert "<script" not in svg and "href" not in svg and "url(" not in svg      # nothing fetched, nothing run
    return root


def test_hbars_one_bar_per_label_and_threshold_lines():
    svg = charts.hbars(["amount", "<b>&x"], [0.31, None], "PSI per feature", "PSI", [("warn", 0.1), ("alert", 0.25)])
    root = _parse(svg)
    bars = [r for r in root.iter(f"{NS}rect") if r.find(f"{NS}title") is not None]
    assert [b.find(f"{NS}title").text for b in bars] == ["amount: 0.31", "<b>&x: 0"]       # escaped, parsed back
    assert float(bars[0].get("width")) > float(bars[1].get("width")) == 0.0
    dashed = [line for line in root.iter(f"{NS}line") if line.get("stroke-dasharray")]
    assert len(dashed) == 2 and any("alert 0.25" in (t.text or "") for t in root.iter(f"{NS}text"))
    assert charts.hbars(["amount", "<b>&x"], [0.31, None], "PSI per feature", "PSI",
                        [("warn", 0.1), ("alert", 0.25)]) == svg                          # same data, same bytes


def test_histograms_overlay_each_series_and_log_scale():
    edges = [0.0, 0.25, 0.5, 0.75, 1.0]
    root = _parse(charts.histograms(edges, [("reference", [0.9, 0.05, 0.04, 0.01]), ("day", [0.7, 0.2, 0.0, 0.1])],
                                    "scores", "score", log=True))
    lines = list(root.iter(f"{NS}polyline"))
    assert len(lines) == 2
    points = [[tuple(map(float, p.split(","))) for p in line.get("points").split()] for line in lines]
    assert all(len(p) == 2 * 4 + 2 for p in points)
    # the higher share is drawn higher (smaller y) on both scales
    ys = {y for _, y in points[0][1:3]}, {y for _, y in points[0][3:5]}
    assert max(ys[0]) < min(ys[1])


def test_trend_gaps_marks_and_data_uri():
    svg = charts.trend([("2026-03-01", 0.01), ("2026-03-02", None), ("2026-03-03", 0.02), ("2026-03-04", 0.03)],
                       "block rate", [("alert", 0.05)], percent=True)
    root = _parse(svg)
    assert len(list(root.iter(f"{NS}circle"))) == 3                    # the missing day is a gap, not a zero
    assert [t.text for t in root.iter(f"{NS}title") if t.text.startswith("alert")] == ["alert 5.0%"]
    uri = charts.svg_uri(svg)
    assert uri.startswith("data:image/svg+xml;base64,") and base64.b64decode(uri.split(",", 1)[1]).decode() == svg
