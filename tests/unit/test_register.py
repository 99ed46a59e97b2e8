"""Registration: the gate, the validation summary of a training range."""
from __future__ import annotations

from pipelines.core.config import GateParams
from pipelines.register import gate
from tests.unit.conftest import D, local_lake

G = GateParams("average_precision", {"average_precision": 0.3, "recall": 0.3}, 0.02, 0.10)


def _ev(ap: float, recall: float = 0.5, slice_ap: float | None = None) -> dict:
    return {"average_precision": ap, "recall": recall,
            "slices": {"is_night=1": {"positives": 20, "average_precision": ap if slice_ap is None else slice_ap}}}


def test_gate_cold_start_better_worse_and_slices():
    assert gate(_ev(0.5), None, G, 5).alias == "champion"
    cold_fail = gate(_ev(0.2), None, G, 5)
    assert not cold_fail.passed and cold_fail.alias is None and "average_precision >= 0.3" in cold_fail.reasons[0]
    assert gate(_ev(0.6), _ev(0.5), G, 5).alias == "challenger"
    assert gate(_ev(0.49), _ev(0.5), G, 5).alias == "challenger"            # within delta
    worse = gate(_ev(0.45), _ev(0.5), G, 5)
    assert worse.alias is None and any("champion" in r for r in worse.reasons)
    slice_worse = gate(_ev(0.6, slice_ap=0.3), _ev(0.5, slice_ap=0.5), G, 5)
    assert slice_worse.alias is None and "slice is_night=1" in slice_worse.reasons[0]
    assert gate(_ev(0.6, slice_ap=0.3), _ev(0.5, slice_ap=0.5), G, 50).alias == "challenger"   # too few frauds to gate


def test_validation_summary_keeps_status_and_row_accounting(tmp_path, params):
    from pipelines.core import storage
    from pipelines.register import validation_summary

    store = local_lake(tmp_path, params)
    storage.write_bytes(store.uri("validation_results", dataset="transactions", date="2026-02-01"), storage.json_bytes(
        {"status": "blocked", "reasons": ["r1"], "rows_in": 10, "rows_validated": 0, "rows_quarantined": 3,
         "rows_held": 7, "outcomes": ["..."]}))
    out = validation_summary(store, [D(2026, 2, 1), D(2026, 2, 2)])
    assert out == {"2026-02-01": {"status": "blocked", "reasons": ["r1"], "rows_in": 10, "rows_validated": 0,
                                  "rows_quarantined": 3, "rows_held": 7},
                   "2026-02-02": {"status": "missing"}}
