"""`airflow trigger --wait` says what the run is doing: a line each time its task states change."""
from __future__ import annotations

import contextlib
import io

from pipelines.ops.airflow_api import _progress_printer


def test_a_line_per_change_of_the_task_states():
    show, out = _progress_printer(), io.StringIO()
    polls = [
        ("running", {"ingest": "running", "train": None}),
        ("running", {"ingest": "running", "train": None}),          # no change: no line
        ("running", {"ingest": "success", "train": "queued"}),
        ("failed", {"ingest": "success", "train": "failed"}),
    ]
    with contextlib.redirect_stdout(out):
        for state, tasks in polls:
            show({"state": state}, [{"task_id": t, "state": s} for t, s in tasks.items()])
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].endswith("0/2 tasks done; running: ingest (running)")
    assert lines[1].endswith("1/2 tasks done; running: train (running)")
    assert lines[2].endswith("1/2 tasks done; failed: train (failed)") and lines[2].lstrip().startswith("[00:00]")
