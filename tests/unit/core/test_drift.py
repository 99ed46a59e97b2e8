"""Drift statistics and the reference profile: one bin convention."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipelines.core.drift import SLICE, CategoricalDrift, GridIndex, NumericDrift, psi, reference_profile
from pipelines.core.metrics import slice_metrics


def numeric_drift(col: pl.Series, ref: dict) -> dict:
    return NumericDrift(ref).update(col).result()


def categorical_drift(col: pl.Series, ref: dict) -> dict:
    return CategoricalDrift(ref).update(col).result()


def _ref(values: np.ndarray, bins: int = 10) -> dict:
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    shares = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1) / len(values)
    return {"kind": "numeric", "null_share": 0.0, "edges": edges.tolist(), "shares": shares.tolist(),
            "min": float(values.min()), "max": float(values.max()),
            "sample": np.quantile(values, np.linspace(0, 1, 101)).tolist()}


def test_psi_and_ks_see_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    ref = _ref(rng.lognormal(3, 1, 50_000))
    same = numeric_drift(pl.Series(rng.lognormal(3, 1, 5_000)), ref)
    moved = numeric_drift(pl.Series(rng.lognormal(3, 1, 5_000) * 2.0), ref)
    assert same["psi"] < 0.02 and same["ks"] < 0.04
    assert moved["psi"] > 0.25 and moved["ks"] > 0.15
    beyond = numeric_drift(pl.Series([ref["max"] * 2] * 10 + [ref["sample"][50]] * 90), ref)
    assert beyond["out_of_range_share"] == pytest.approx(0.1)
    zeros = np.where(rng.random(50_000) < 0.95, 0.0, rng.random(50_000))     # zero-inflated, like fraud rates
    z = numeric_drift(pl.Series(np.where(rng.random(5_000) < 0.95, 0.0, rng.random(5_000))), _ref(zeros))
    assert z["ks"] < 0.05 and z["psi"] < 0.05
    nulls = numeric_drift(pl.Series([None] * 500 + list(rng.lognormal(3, 1, 4_500))), ref)
    assert nulls["null_share_increase"] == pytest.approx(0.1) and nulls["psi"] > 0.25
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0


def test_grid_index_is_numpys_binary_search():
    """The bucketed search gives np.searchsorted(grid, v, side="left") exactly: grids of 1-150 points
    over 10 orders of magnitude, signs, zero (and -0.0), integer grids with values on their points, points
    a float apart (many in one bucket), values on, next to, below and above every point, and the
    extremes of float64."""
    rng = np.random.default_rng(7)
    cases = [np.array([0.0]), np.array([-3.0, -1.0, 0.0, 1.0, 2.0, 5.0]), np.arange(0.0, 150.0),
             np.nextafter(1.0, np.inf) + np.arange(40) * np.finfo(float).eps, np.array([-0.0, 1e-300, 1e300])]
    for _ in range(200):
        scale = 10.0 ** rng.integers(-5, 6)
        cases.append(np.unique(np.concatenate([rng.standard_normal(rng.integers(1, 150)) * scale,
                                               [0.0] * rng.integers(0, 2), rng.integers(-3, 3, 4).astype(float)])))
    searched = []
    for grid in cases:
        grid = np.unique(grid)
        searched.append(GridIndex(grid).fallback is not None)
        v = np.concatenate([rng.standard_normal(3_000) * 10.0 ** rng.integers(-6, 7), rng.integers(-4, 4, 500),
                            grid, np.nextafter(grid, np.inf), np.nextafter(grid, -np.inf),
                            [-0.0, 0.0, 1e308, -1e308, 5e-324, -5e-324, np.finfo(float).max, -np.finfo(float).max]])
        idx, eq = GridIndex(grid).locate(v)
        assert np.array_equal(idx, np.searchsorted(grid, v, side="left")), grid[:5]
        assert np.array_equal(eq, np.append(grid, np.inf)[idx] == v), grid[:5]
    assert any(searched) and not all(searched)     # both ways: the bucket table, and numpy for a dense cluster
    assert GridIndex(np.array([0.0, *np.linspace(40.70, 40.71, 99)])).fallback is not None   # coordinates beside a 0
    # and what NumericDrift counts with it, on a zero-inflated feature of 50k rows
    values = np.where(rng.random(50_000) < 0.9, 0.0, rng.lognormal(0, 2, 50_000))
    d = NumericDrift(_ref(values)).update(pl.Series(values))
    idx = np.searchsorted(d.grid, values, side="left")
    assert np.array_equal(d.upto, np.bincount(idx, minlength=len(d.grid) + 1))
    assert np.array_equal(d.equal, np.bincount(idx[d.grid.take(idx, mode="clip") == values], minlength=len(d.grid)))


def test_grid_index_in_32_bits_is_numpys_binary_search_of_the_float64_values():
    """Float32 values searched in 32 bits against a float64 grid (GridIndex single) give the integers of
    np.searchsorted over the values as float64, and their equality with the float64 points: grid points
    that are not float32s (a value is never equal to them) and the float32s on either side of them, points
    beyond float32's range, signs, zero and -0.0, grids with and without negative points (the keys of a
    slice without a sign bit are its bits), and a dense cluster (numpy's search)."""
    rng = np.random.default_rng(17)
    f32 = np.finfo(np.float32)
    cases = [np.array([0.0]), np.array([-3.0, -1.0, 0.0, 1.0, 2.0, 5.0]), np.array([0.1, 0.2, 0.3]),
             np.array([-0.0, 1e-300, 1e-40, 3e38, 1e300]), np.array([0.0, *np.linspace(40.70, 40.71, 99)]),
             np.array([0.0, 0.1 + 1e-12, 0.1 + 2e-12]), np.array([-1e39, -float(f32.max), 0.5, float(f32.max), 1e39])]
    for _ in range(150):
        scale = 10.0 ** rng.integers(-5, 6)
        g = rng.standard_normal(rng.integers(1, 150)) * scale
        cases.append(np.concatenate([np.abs(g) if rng.random() < 0.5 else g, [0.0] * rng.integers(0, 2)]))
    for grid in cases:
        grid = np.unique(grid)
        with np.errstate(over="ignore"):
            down = grid.astype(np.float32)
            values = np.concatenate([rng.standard_normal(3_000) * 10.0 ** rng.integers(-6, 7), rng.integers(-4, 4, 500),
                                     down, np.nextafter(down, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf)),
                                     [-0.0, 0.0, f32.max, -f32.max, f32.smallest_subnormal, -f32.smallest_subnormal]])
            values = values.astype(np.float32)
        values = values[np.isfinite(values)]
        index = GridIndex(grid, single=True)
        for v in (values, np.abs(values)):               # with negatives, and without a sign bit
            idx, eq = index.locate(v)
            assert np.array_equal(idx, np.searchsorted(grid, v.astype(np.float64), side="left")), grid[:5]
            assert np.array_equal(eq, np.append(grid, np.inf)[idx] == v.astype(np.float64)), grid[:5]


def test_numeric_drift_counts_integers_and_float32_as_float64():
    """Integer features counted by value and Float32 ones in 32 bits get the counts of the float64 path
    (the state, out-of-range counts included), with the reference's ends on the grid or not, nulls, a
    span too wide to count by value, and integers that float64 does not hold."""
    rng = np.random.default_rng(23)
    n = SLICE * 2 + 777
    counts = rng.poisson(3, n).astype(np.int32)
    amounts = rng.lognormal(2, 1.5, n).astype(np.float32)
    amounts[rng.integers(0, n, 50)] = np.nan
    amounts[rng.integers(0, n, 20)] = np.inf
    wide = rng.integers(-(1 << 40), 1 << 40, n)
    huge = np.resize(np.array([2**62, 2**53 + 1, 3, -(2**60)], np.int64), n)
    for values, dtype in ((counts, pl.Int32), (counts.astype(np.uint8), pl.UInt8), (wide, pl.Int64),
                          (huge, pl.Int64), (amounts, pl.Float32)):
        finite = values.astype(np.float64)
        finite = finite[np.isfinite(finite)]
        for ref in (_ref(finite[:5_000]), {**_ref(finite[:5_000]), "min": float(np.quantile(finite, 0.2)), "max": 1e9},
                    {**_ref(finite[:5_000]), "min": None}):
            col = pl.Series(values, dtype=dtype)
            col = pl.select(pl.when(pl.int_range(n) % 101 == 0).then(None).otherwise(col)).to_series()
            got = NumericDrift(ref).update(col.slice(0, 70_001)).update(col.slice(70_001))
            want = NumericDrift(ref).update(col.cast(pl.Float64))
            assert got.state() == want.state(), dtype
            assert got.oor == (0 if ref["min"] is None else
                               int(((want_v := col.cast(pl.Float64).drop_nulls().to_numpy()) < ref["min"]).sum()
                                   + (want_v[np.isfinite(want_v)] > ref["max"]).sum())), dtype


def test_numeric_drift_counts_a_long_column_slice_by_slice_as_one():
    """A batch longer than drift.SLICE (nulls, NaN and infinities among the values) gets the
    counts of one pass of np.searchsorted over its finite values, and two batches add up to one."""
    rng = np.random.default_rng(11)
    n = SLICE * 3 + 1234
    values = np.where(rng.random(n) < 0.3, 0.0, rng.lognormal(2, 1.5, n))
    values[rng.integers(0, n, 300)] = np.nan
    values[rng.integers(0, n, 200)] = np.inf
    values[rng.integers(0, n, 100)] = -np.inf
    ref = _ref(values[np.isfinite(values)][:20_000])
    col = pl.Series([None if i % 97 == 0 else v for i, v in enumerate(values.tolist())], dtype=pl.Float64)
    d = NumericDrift(ref).update(col)
    finite = values[[i % 97 != 0 for i in range(n)]]
    finite = finite[np.isfinite(finite)]
    idx = np.searchsorted(d.grid, finite, side="left")
    assert d.n == n and d.nulls == len(range(0, n, 97)) and d.finite == len(finite)
    assert np.array_equal(d.upto, np.bincount(idx, minlength=len(d.grid) + 1))
    assert np.array_equal(d.equal, np.bincount(idx[d.grid.take(idx, mode="clip") == finite], minlength=len(d.grid)))
    assert d.oor == int(((finite < ref["min"]) | (finite > ref["max"])).sum()) > 0
    two = NumericDrift(ref).update(col.slice(0, 70_001)).update(col.slice(70_001))
    assert two.state() == d.state()


def test_categorical_drift_counts_unseen_values():
    ref = {"kind": "categorical", "null_share": 0.0, "frequencies": {"0": 0.5, "1": 0.5}}
    same = categorical_drift(pl.Series([0, 1] * 500, dtype=pl.Int16), ref)
    new = categorical_drift(pl.Series([0] * 500 + [7] * 500, dtype=pl.Int16), ref)
    assert same["psi"] == pytest.approx(0.0, abs=1e-9) and new["psi"] > 1 and new["out_of_range_share"] == 0.5


def test_slices_and_reference_profile(params):
    rng = np.random.default_rng(0)
    n = 1000
    f = pl.DataFrame({"amount": rng.exponential(50, n), "is_night": rng.integers(0, 2, n).astype(np.int8),
                      "label": (rng.random(n) < 0.1).astype(np.int8), "score": rng.random(n).astype(np.float32)})
    f = f.with_columns(pl.when(pl.int_range(n) < 50).then(None).otherwise(pl.col("amount")).alias("amount"))
    s = slice_metrics(f, ("is_night",), 0.5)
    assert set(s) == {"is_night=0", "is_night=1"} and sum(v["rows"] for v in s.values()) == n
    man = {"feature_names": ["amount", "is_night"]}
    prof = reference_profile(f, man, params.evaluate)
    a = prof["features"]["amount"]
    assert a["kind"] == "numeric" and a["null_share"] == pytest.approx(0.05)
    assert len(a["edges"]) == 9 and sum(a["shares"]) == pytest.approx(0.95)   # nulls are their own share
    assert prof["features"]["is_night"]["kind"] == "categorical"
    assert sum(prof["score"]["shares"]) == pytest.approx(1.0)


def test_categorical_drift_counts_integers_as_a_counter_does():
    """The bincount path (a span of integer codes) and the hash path (a wider span, or not integers)
    count what collections.Counter counts, nulls apart, batch after batch."""
    from collections import Counter

    rng = np.random.default_rng(3)
    ref = {"kind": "categorical", "null_share": 0.0, "frequencies": {"0": 0.5, "1": 0.5}}
    n = SLICE * 2 + 77
    cases = [pl.Series(rng.integers(-5, 40, n), dtype=pl.Int8), pl.Series(rng.integers(0, 3, n), dtype=pl.Int32),
             pl.Series(np.where(rng.random(n) < 0.5, 0, rng.integers(-(1 << 40), 1 << 40, n)), dtype=pl.Int64),
             pl.Series(rng.integers(0, 1 << 20, n), dtype=pl.UInt32),
             pl.Series((1 << 63) + rng.integers(0, 5, n).astype(np.uint64), dtype=pl.UInt64),   # beyond int64
             pl.Series(rng.integers(0, 7, n), dtype=pl.UInt64), pl.Series(rng.integers(-3, 3, n), dtype=pl.Int128),
             pl.Series(rng.random(n) < 0.3),
             pl.Series(rng.choice(["a", "b", "c"], n))]
    for col in cases:
        col = pl.select(pl.when(pl.int_range(n) % 13 == 0).then(None).otherwise(col)).to_series()
        d = CategoricalDrift(ref).update(col.slice(0, 1000)).update(col.slice(1000)).update(col.clear())
        want = Counter(str(v) for v in col.to_list() if v is not None)
        assert d.counts == dict(want) and d.nulls == col.null_count() and d.n == n, col.dtype
