"""Benchmark: the feature spec (params.yaml `features`) in polars vs a straightforward pandas
(groupby + rolling) implementation of the same spec, on N simulated transactions, in the same run.

    python benchmarks/features.py [--rows 10000000] [--check]

Each side runs in its own process (so each peak RSS is its own); data is generated once into
benchmarks/.out/. Prints wall time, rows/s, the ratio (pandas time / polars time) and peak RSS.
--check first verifies on a small sample that both give the same values (the baseline must compute
the same thing to be a fair baseline). Targets (issue 2): ratio >= 10x, polars peak RSS <= 4 GiB
at 10M rows.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / ".out"
sys.path.insert(0, str(ROOT))

ENTITIES, NUMERICS = ["customer", "terminal"], ["amount"]


def generate(rows: int) -> tuple[Path, Path]:
    """~rows transactions over 56 days (+ labels), cached by size."""
    import polars as pl

    from pipelines.core.config import load_params
    from pipelines.ops.demo_data import DemoParams, make_world, simulate_day

    ev_path, lab_path = OUT / f"events_{rows}.parquet", OUT / f"labels_{rows}.parquet"
    if ev_path.exists() and lab_path.exists():
        return ev_path, lab_path
    OUT.mkdir(parents=True, exist_ok=True)
    params = load_params(ROOT / "params.yaml")
    base = DemoParams.from_dict(params.section("demo_data"))
    days = 56
    customers = max(200, int(rows / days / 1.75))
    p = dataclasses.replace(base, n_customers=customers, n_terminals=max(400, customers * 2), bugs=())
    world = make_world(p)
    evs, labs = [], []
    for i in range(days):
        day = dt.date(2026, 1, 1) + dt.timedelta(days=i)
        d = simulate_day(p, world, day)
        landed = day + dt.timedelta(days=7)
        evs.append(d.select(pl.col("tx_id").alias("event_id"), pl.col("tx_ts").alias("event_ts"),
                            pl.col("customer_id").alias("customer"), pl.col("terminal_id").alias("terminal"),
                            "amount", "category"))
        labs.append(d.select(pl.col("tx_id").alias("event_id"), pl.col("is_fraud").alias("label"),
                             pl.lit(dt.datetime.combine(landed + dt.timedelta(days=1), dt.time())).cast(pl.Datetime("us"))
                             .alias("available_at")))
    pl.concat(evs).write_parquet(ev_path)
    pl.concat(labs).write_parquet(lab_path)
    return ev_path, lab_path


# --------------------------------------------------------------------------- the two sides
def run_polars(ev_path: str, lab_path: str, out: str | None) -> dict:
    import polars as pl

    from pipelines.core.config import load_params
    from pipelines.features import compute_features

    spec = load_params(ROOT / "params.yaml").features
    ev, lab = pl.read_parquet(ev_path), pl.read_parquet(lab_path)
    t = time.perf_counter()
    lo, hi = ev["event_ts"].min().date(), ev["event_ts"].max().date()
    f = compute_features(ev, lab, spec, lo, hi, ENTITIES, NUMERICS)
    took = time.perf_counter() - t
    if out:
        f.write_parquet(out)
    return {"seconds": took, "rows": f.height}


def pandas_features(ev, lab, spec):
    """The same spec, written the way one would in pandas: groupby + time-based rolling."""
    import numpy as np
    import pandas as pd

    df = ev.merge(lab[["event_id", "label", "available_at"]], on="event_id", how="left")
    df = df.sort_values(["event_ts", "event_id"], kind="stable").reset_index(drop=True)
    out = pd.DataFrame({"event_id": df["event_id"], "amount": df["amount"]})
    positions = {}

    def back(ent: str, res) -> np.ndarray:
        """groupby().rolling(on=...) returns rows group by group, indexed (entity, ts): put them
        back in the frame's row order (checked, so the baseline cannot silently misalign)."""
        if ent not in positions:
            positions[ent] = np.concatenate(list(df.groupby(ent, sort=False).indices.values()))
        pos = positions[ent]
        assert (res.index.get_level_values(0) == df[ent].values[pos]).all()
        assert (res.index.get_level_values(1) == df["event_ts"].values[pos]).all()
        vals = np.empty(len(df), dtype=float)
        vals[pos] = res.to_numpy(dtype=float)
        return vals

    for ent, r in spec.rolling.items():
        g = df.groupby(ent, sort=False)
        for w in spec.windows_days:
            roll = g.rolling(f"{w}D", on="event_ts", closed="left")[r.value]
            for agg in r.aggs:
                name = f"{ent}_count_{w}d" if agg == "count" else f"{ent}_{r.value}_{agg}_{w}d"
                vals = back(ent, getattr(roll, agg)())
                if agg in ("count", "sum"):
                    vals = np.nan_to_num(vals)
                out[name] = vals
    delay = pd.Timedelta(days=spec.label_delay_days)
    for ent, windows in spec.target_rate.items():
        labelled = df[df["label"].notna()]
        due = labelled["event_ts"] + delay
        enter = due.where(due > labelled["available_at"], labelled["available_at"])
        for w in windows:
            leave = labelled["event_ts"] + delay + pd.Timedelta(days=w)
            keep = enter < leave
            sums = {}
            for side, key in (("in", enter[keep]), ("out", leave[keep])):
                ev_side = pd.DataFrame({ent: labelled.loc[keep, ent].values, "k": key.values,
                                        "label": labelled.loc[keep, "label"].astype(float).values}).sort_values("k")
                ev_side["s"] = ev_side.groupby(ent)["label"].cumsum()
                ev_side["n"] = ev_side.groupby(ent).cumcount() + 1
                q = df[[ent, "event_ts"]].reset_index().sort_values("event_ts")
                m = pd.merge_asof(q, ev_side, left_on="event_ts", right_on="k", by=ent, allow_exact_matches=False)
                sums[side] = m.set_index("index").sort_index()[["s", "n"]].fillna(0)
            n = sums["in"]["n"] - sums["out"]["n"]
            s = sums["in"]["s"] - sums["out"]["s"]
            out[f"{ent}_fraud_rate_{w}d"] = (s / n.where(n > 0)).values
            out[f"{ent}_labeled_count_{w}d"] = n.values
    horizon = f"{max(spec.windows_days)}D"
    ts_num = df.assign(__t=df["event_ts"].astype("int64"))
    for ent in spec.time_since_last:
        prev = back(ent, ts_num.groupby(ent, sort=False).rolling(horizon, on="event_ts", closed="left")["__t"].max())
        out[f"{ent}_secs_since_last"] = (ts_num["__t"].to_numpy() - prev) / 1e6
    out["is_weekend"] = (df["event_ts"].dt.weekday >= 5).astype("int8")
    h0, h1 = spec.night_hours
    out["is_night"] = df["event_ts"].dt.hour.between(h0, h1, inclusive="left").astype("int8")
    for r in spec.ratios:
        den = out[r.denominator]
        out[r.name] = out[r.numerator] / den.where(den != 0)
    cats = {c: i for i, c in enumerate(spec.categories)}
    for c in spec.categoricals:
        out[f"{c}_code"] = df[c].map(cats)
    return out


def run_pandas(ev_path: str, lab_path: str, out: str | None) -> dict:
    import pandas as pd

    from pipelines.core.config import load_params

    spec = load_params(ROOT / "params.yaml").features
    ev, lab = pd.read_parquet(ev_path), pd.read_parquet(lab_path)
    t = time.perf_counter()
    f = pandas_features(ev, lab, spec)
    took = time.perf_counter() - t
    if out:
        f.to_parquet(out)
    return {"seconds": took, "rows": len(f)}


def child(side: str, ev: Path, lab: Path, out: Path | None = None, timeout: float = 7200) -> dict:
    """Run one side in a fresh process; its peak RSS from the OS."""
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); "
            f"from benchmarks.features import run_{side}; r = run_{side}({str(ev)!r}, {str(lab)!r}, "
            f"{str(out) if out else None!r}); "
            "from benchmarks import own_peak_mib; r['peak_rss_mib'] = own_peak_mib(); print(json.dumps(r))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def check(rows: int) -> None:
    import polars as pl

    ev, lab = generate(rows)
    a, b = OUT / "check_polars.parquet", OUT / "check_pandas.parquet"
    child("polars", ev, lab, a), child("pandas", ev, lab, b)
    fa = pl.read_parquet(a).sort("event_id")
    fb = pl.read_parquet(b).sort("event_id")
    worst = {}
    for c in fa.columns:
        if c in ("event_id", "event_ts", "customer", "terminal"):
            continue
        x, y = fa[c].cast(pl.Float64), fb[c].cast(pl.Float64)
        assert (x.is_null() == y.is_null()).all(), f"null pattern differs in {c}"
        d = ((x - y).abs() / (y.abs() + 1e-9)).max()
        worst[c] = d or 0.0
    bad = {c: v for c, v in worst.items() if v > 1e-6}
    assert not bad, f"pandas baseline disagrees with polars: {bad}"
    print(f"check: pandas baseline == polars on {fa.height} rows, {len(worst)} features (max rel diff "
          f"{max(worst.values()):.1e})")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--check", action="store_true", help="verify the baseline on 100k rows first")
    ap.add_argument("--skip-pandas", action="store_true")
    args = ap.parse_args()
    if args.check:
        check(100_000)
    t = time.perf_counter()
    ev, lab = generate(args.rows)
    print(f"data: {ev.name} ({time.perf_counter() - t:.0f}s to generate or load)", flush=True)
    pol = child("polars", ev, lab)
    print(f"polars: {pol['rows']:,} rows in {pol['seconds']:.1f}s ({pol['rows'] / pol['seconds']:,.0f} rows/s), "
          f"peak RSS {pol['peak_rss_mib']:,.0f} MiB", flush=True)
    if args.skip_pandas:
        return 0
    pan = child("pandas", ev, lab)
    print(f"pandas: {pan['rows']:,} rows in {pan['seconds']:.1f}s ({pan['rows'] / pan['seconds']:,.0f} rows/s), "
          f"peak RSS {pan['peak_rss_mib']:,.0f} MiB")
    ratio = pan["seconds"] / pol["seconds"]
    print(f"ratio: polars is {ratio:.1f}x faster than pandas (target >= 10x); polars peak RSS "
          f"{pol['peak_rss_mib'] / 1024:.2f} GiB (target <= 4 GiB) on {platform.machine()}, {os.cpu_count()} cores")
    return 0 if ratio >= 10 and pol["peak_rss_mib"] <= 4096 else 1


if __name__ == "__main__":
    sys.exit(main())
