"""The in-process chain runner runs the DAG tasks in order, with their arguments."""
from __future__ import annotations

import datetime as dt


def test_the_in_process_chains_run_the_dag_tasks_in_order_with_their_arguments():
    from types import SimpleNamespace

    from pipelines.ops import nightly

    assert [n for n, *_ in nightly.STAGES] == ["ingest", "validate", "features", "score", "shadow", "decide",
                                                 "monitor", "retrain"]
    assert [n for n, *_ in nightly.LABEL_STAGES] == ["ingest_labels", "validate_labels", "feedback", "lifecycle"]
    calls = []

    def fake(name):
        return SimpleNamespace(main=lambda argv: (calls.append((name, argv)), print(f'{{"stage": "{name}"}}'))[-1])

    stages = [("a", fake("a"), ["--dataset", "labels"]), ("b", fake("b"), [])]
    took, last = nightly._chain(stages, "p.yaml", dt.date(2026, 3, 8))
    assert calls == [("a", ["--params", "p.yaml", "--date", "2026-03-08", "--dataset", "labels"]),
                     ("b", ["--params", "p.yaml", "--date", "2026-03-08"])]
    assert set(took) == {"a", "b"} and last == '{"stage": "b"}'
