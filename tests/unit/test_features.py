"""Point-in-time correctness (vs a slow reference), the train/score skew check, and the spec."""
from __future__ import annotations

import datetime as dt
import random

import polars as pl
import pytest

from pipelines.core.config import load_params
from pipelines.features import compute_features, feature_names, spec_hash
from tests.unit.reference_features import close, reference_features

ENTITIES, NUMERICS = ["customer", "terminal"], ["amount"]


def small_world(seed: int = 7, n: int = 600, days: int = 50):
    """Random events over `days` days with timestamp ties, and labels that arrive early, on time,
    late, never, on the event's own day, or (a data error that must count nowhere) before the event."""
    rnd = random.Random(seed)
    t0 = dt.datetime(2026, 1, 1)
    ev, lab = [], []
    stamps = [t0 + dt.timedelta(seconds=rnd.randrange(days * 86400)) for _ in range(n - 40)]
    stamps += rnd.sample(stamps, 40)                       # exact ties on the same instant
    for i, ts in enumerate(sorted(stamps)):
        eid = f"e{i:05d}"
        ev.append({"event_id": eid, "event_ts": ts, "customer": f"c{rnd.randrange(12)}",
                   "terminal": f"t{rnd.randrange(6)}", "amount": round(rnd.uniform(1, 300), 2),
                   "category": rnd.choice(["grocery", "online", "travel", "unknown-cat"])})
        kind = rnd.random()
        if kind < 0.9:
            landed = ts.date() + dt.timedelta(days=rnd.choice([7, 7, 7, 5, 9, 12, 20]))   # 20: after the 7d window closed
        elif kind < 0.94:
            landed = ts.date() - dt.timedelta(days=rnd.choice([0, 1, 3]))   # 1, 3: landed before its event
        if kind < 0.94:
            lab.append({"event_id": eid, "label": int(rnd.random() < 0.2), "label_date": landed,
                        "available_at": dt.datetime.combine(landed + dt.timedelta(days=1), dt.time())})
    events = pl.DataFrame(ev).with_columns(pl.col("event_ts").cast(pl.Datetime("us")))
    labels = pl.DataFrame(lab).with_columns(pl.col("label").cast(pl.Int8), pl.col("available_at").cast(pl.Datetime("us")))
    return events, labels


@pytest.fixture(scope="module")
def spec():
    return load_params().features


def test_point_in_time_matches_slow_reference(spec):
    events, labels = small_world()
    start, end = dt.date(2026, 1, 20), dt.date(2026, 2, 19)
    fast = compute_features(events, labels, spec, start, end, ENTITIES, NUMERICS)
    ref = reference_features(events, labels, spec, start, end)
    assert fast.height == len(ref) > 300
    names = feature_names(spec, NUMERICS)
    assert set(names) <= set(ref[next(iter(ref))])
    mismatches = []
    for row in fast.iter_rows(named=True):
        for name in names:
            if not close(row[name], ref[row["event_id"]][name], rel=1e-6, abs_=1e-6):
                mismatches.append((row["event_id"], name, row[name], ref[row["event_id"]][name]))
    assert not mismatches, mismatches[:10]
    # the data exercises what it should: ties, empty windows, partly known labels
    assert fast["customer_count_1d"].min() == 0
    assert fast["terminal_fraud_rate_7d"].null_count() < fast.height
    assert 0 < fast["terminal_labeled_count_30d"].max()


def test_future_events_and_labels_do_not_change_features(spec):
    """Appending events after `end`, and labels that arrive after `end`, changes nothing."""
    events, labels = small_world()
    start, end = dt.date(2026, 1, 25), dt.date(2026, 1, 31)
    base = compute_features(events.filter(pl.col("event_ts") < dt.datetime(2026, 2, 1)),
                            labels.filter(pl.col("available_at") <= dt.datetime(2026, 2, 1)), spec, start, end,
                            ENTITIES, NUMERICS)
    full = compute_features(events, labels, spec, start, end, ENTITIES, NUMERICS)
    assert base.equals(full)


def test_a_label_known_one_microsecond_too_late_is_not_used(spec):
    t = dt.datetime(2026, 1, 20, 12)
    events = pl.DataFrame({"event_id": ["a", "b"], "event_ts": [t - dt.timedelta(days=8), t],
                           "customer": ["c", "c"], "terminal": ["x", "x"], "amount": [10.0, 20.0],
                           "category": ["online", "online"]}).with_columns(pl.col("event_ts").cast(pl.Datetime("us")))
    for available, expected in ((t - dt.timedelta(microseconds=1), 1), (t, 0)):
        labels = pl.DataFrame({"event_id": ["a"], "label": [1], "available_at": [available]}).with_columns(
            pl.col("label").cast(pl.Int8), pl.col("available_at").cast(pl.Datetime("us")))
        f = compute_features(events, labels, spec, t.date(), t.date(), ENTITIES, NUMERICS)
        assert f["terminal_labeled_count_7d"].to_list() == [expected]
        assert f["terminal_fraud_rate_7d"].to_list() == [1.0 if expected else None]


def test_training_and_scoring_paths_agree(spec):
    """Skew check: a 20-day training range vs each day computed alone with only its look-back."""
    events, labels = small_world(seed=11, n=800)
    start, end = dt.date(2026, 2, 1), dt.date(2026, 2, 19)
    train = compute_features(events, labels, spec, start, end, ENTITIES, NUMERICS)
    for day in (start, dt.date(2026, 2, 10), end):
        lo = dt.datetime.combine(day - dt.timedelta(days=spec.lookback_days), dt.time())
        hi = dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
        window = events.filter((pl.col("event_ts") >= lo) & (pl.col("event_ts") < hi))
        score = compute_features(window, labels.filter(pl.col("available_at") <= hi), spec, day, day, ENTITIES, NUMERICS)
        assert score.height > 0
        assert score.equals(train.filter(pl.col("event_ts").dt.date() == day))


def test_spec_hash_changes_with_the_spec(spec):
    import dataclasses

    other = dataclasses.replace(spec, windows_days=(1, 7))
    assert spec_hash(spec) != spec_hash(other)
    assert "customer_amount_mean_30d" in feature_names(spec, NUMERICS)
    assert "customer_amount_mean_30d" not in feature_names(other, NUMERICS)


def test_entity_buckets_give_the_same_features(spec, monkeypatch):
    """When entity count x time span would overflow one Int64 timeline, entities are split into
    buckets; force that on small data and compare."""
    import pipelines.features as features

    events, labels = small_world(seed=3)
    start, end = dt.date(2026, 1, 20), dt.date(2026, 2, 10)
    one = compute_features(events, labels, spec, start, end, ENTITIES, NUMERICS)
    monkeypatch.setattr(features, "VT_LIMIT", 10**14)        # a few days of timeline per bucket
    many = compute_features(events, labels, spec, start, end, ENTITIES, NUMERICS)
    assert one.equals(many)


def test_row_order_of_the_input_does_not_matter(spec):
    events, labels = small_world(seed=5)
    start, end = dt.date(2026, 1, 20), dt.date(2026, 2, 10)
    ordered = compute_features(events, labels, spec, start, end, ENTITIES, NUMERICS)
    shuffled = compute_features(events.sample(fraction=1.0, shuffle=True, seed=1), labels.sample(fraction=1.0, shuffle=True, seed=2),
                                spec, start, end, ENTITIES, NUMERICS)
    assert ordered.equals(shuffled)
    assert ordered.schema["amount"] == pl.Float64 and ordered.schema["customer_amount_mean_7d"] == pl.Float32


def _with_midnights(events: pl.DataFrame, labels: pl.DataFrame):
    """Events at exactly 00:00 (a label that lands the day before is not known yet: available_at
    == t) and their labels, on top of small_world."""
    extra = []
    for k, day in enumerate(range(5, 50, 3)):
        ts = dt.datetime(2026, 1, 1) + dt.timedelta(days=day)
        extra.append({"event_id": f"m{k:03d}", "event_ts": ts, "customer": f"c{k % 12}", "terminal": f"t{k % 6}",
                      "amount": 10.0 + k, "category": "online"})
    ev = pl.concat([events, pl.DataFrame(extra).with_columns(pl.col("event_ts").cast(pl.Datetime("us")))])
    landed = [(e["event_id"], e["event_ts"].date() + dt.timedelta(days=7)) for e in extra]
    lab = pl.DataFrame({"event_id": [i for i, _ in landed], "label": [1] * len(landed),
                        "label_date": [d for _, d in landed],
                        "available_at": [dt.datetime.combine(d + dt.timedelta(days=1), dt.time()) for _, d in landed]})
    lab = lab.with_columns(pl.col("label").cast(pl.Int8), pl.col("available_at").cast(pl.Datetime("us")))
    return ev.sort("event_ts", "event_id"), pl.concat([labels, lab])


@pytest.mark.parametrize("seed,mins", [(11, False), (23, False), (17, True)])
def test_incremental_path_is_bit_identical_to_the_full_recomputation(spec, seed, mins):
    """Each day from its own events + boundary days + per-entity day totals + label totals (what the
    feature_state partitions hold) equals the recomputation from the whole look-back, bit for bit,
    including late labels, labels that never come, ties and events at exactly 00:00. With `mins`, a
    window minimum too (the day minimums are carried only where an aggregate reads them)."""
    import dataclasses

    from pipelines.features import history_from_events, plan

    if mins:
        rolling = {e: dataclasses.replace(r, aggs=(*r.aggs, "min")) for e, r in spec.rolling.items()}
        spec = dataclasses.replace(spec, rolling=rolling)
        assert "customer_amount_min_7d" in feature_names(spec, NUMERICS)
    events, labels = _with_midnights(*small_world(seed=seed, n=1500, days=60))
    on = pl.col("event_ts").dt.date()
    checked = 0
    for day in [dt.date(2026, 1, 1) + dt.timedelta(days=k) for k in range(3, 60, 3)]:
        full = compute_features(events, labels, spec, day, day, ENTITIES, NUMERICS)
        hist = history_from_events(events, labels, spec, day, ENTITIES)
        inc = compute_features(events.filter(on == day), labels.head(0), spec, day, day, ENTITIES, NUMERICS, history=hist)
        assert inc.equals(full), (day, [c for c in full.columns if not inc[c].equals(full[c])])
        checked += full.height
    assert checked > 400
    p = plan(spec, dt.date(2026, 2, 20))
    assert p.boundary == [dt.date(2026, 1, 21), dt.date(2026, 2, 13), dt.date(2026, 2, 19)]
    assert len(p.totals) == 27 and dt.date(2026, 2, 13) not in p.totals


@pytest.mark.parametrize("count", [3, 5])
def test_shards_by_entity_merge_into_the_unsharded_features(spec, count):
    """N shards, each the features of the entities whose id hashes to it (full and incremental path),
    merged: the unsharded features bit for bit; a shard left out or given twice is refused."""
    from pipelines.core.shards import ShardError, all_of
    from pipelines.features import history_from_events, merge_shards

    events, labels = _with_midnights(*small_world(seed=5, n=1500, days=50))
    on = pl.col("event_ts").dt.date()
    start, end = dt.date(2026, 2, 10), dt.date(2026, 2, 14)
    full = compute_features(events, labels, spec, start, end, ENTITIES, NUMERICS)
    parts = [compute_features(events, labels, spec, start, end, ENTITIES, NUMERICS, shard=s) for s in all_of(count)]
    sizes = [p["customer"].height for p in parts]
    assert min(sizes) > 0 and sum(sizes) == full.height                  # every shard holds some rows, none twice
    target = events.filter(on.is_between(start, end))
    assert merge_shards(target, parts, spec, start, end, ENTITIES, NUMERICS).equals(full)
    with pytest.raises(ShardError, match="rows"):
        merge_shards(target, parts[1:], spec, start, end, ENTITIES, NUMERICS)
    with pytest.raises(ShardError, match="rows"):
        merge_shards(target, [parts[0], *parts], spec, start, end, ENTITIES, NUMERICS)
    day = dt.date(2026, 2, 17)                                             # with an event at 00:00
    hist = history_from_events(events, labels, spec, day, ENTITIES)
    today = events.filter(on == day)
    inc = [compute_features(today, labels.head(0), spec, day, day, ENTITIES, NUMERICS, history=hist, shard=s)
           for s in all_of(count)]
    assert merge_shards(today, inc, spec, day, day, ENTITIES, NUMERICS).equals(
        compute_features(events, labels, spec, day, day, ENTITIES, NUMERICS))


@pytest.mark.parametrize("chunk_rows,threads", [(40, 1), (40, 3), (300, 2)])
def test_chunks_of_entities_give_the_same_features(spec, chunk_rows, threads, monkeypatch):
    """Each entity's timeline computed in chunks of entities (features.chunk_rows: the stage's memory),
    `features.timeline_threads` of them at once, gives the same bytes as one chunk: on the full path,
    the incremental one and in a shard."""
    import dataclasses

    import pipelines.features as features
    from pipelines.core.shards import Shard
    from pipelines.features import history_from_events

    events, labels = _with_midnights(*small_world(seed=13, n=1500, days=50))
    on = pl.col("event_ts").dt.date()
    start, end, day = dt.date(2026, 2, 10), dt.date(2026, 2, 14), dt.date(2026, 2, 17)
    small = dataclasses.replace(spec, chunk_rows=chunk_rows, timeline_threads=threads)
    hist = history_from_events(events, labels, spec, day, ENTITIES)
    today = events.filter(on == day)
    one = [compute_features(events, labels, spec, start, end, ENTITIES, NUMERICS),
           compute_features(today, labels.head(0), spec, day, day, ENTITIES, NUMERICS, history=hist),
           compute_features(events, labels, spec, start, end, ENTITIES, NUMERICS, shard=Shard(1, 2))]
    calls = []
    inner = features._entity_block
    monkeypatch.setattr(features, "_entity_block", lambda *a, **k: calls.append(a[0].height) or inner(*a, **k))
    many = [compute_features(events, labels, small, start, end, ENTITIES, NUMERICS),
            compute_features(today, labels.head(0), small, day, day, ENTITIES, NUMERICS, history=hist),
            compute_features(events, labels, small, start, end, ENTITIES, NUMERICS, shard=Shard(1, 2))]
    assert len(calls) >= 2 * 2 * 3                    # 2 entities x 3 calls: at least 2 chunks each
    assert all(a.equals(b) for a, b in zip(one[:2], many[:2]))
    assert all(one[2][e].equals(many[2][e]) for e in one[2])


def test_a_failing_chunk_fails_the_features_and_no_later_chunk_is_started(spec, monkeypatch):
    """With chunks computed in threads, a chunk's error is the features' error (not lost in its
    thread), and the chunks not yet started when it is known are not computed."""
    import dataclasses

    import pipelines.features as features

    events, labels = _with_midnights(*small_world(seed=13, n=1500, days=50))
    start, end = dt.date(2026, 2, 10), dt.date(2026, 2, 14)
    small = dataclasses.replace(spec, chunk_rows=40, timeline_threads=2)
    calls = []
    inner = features._entity_block

    def block(*a, **k):
        calls.append(a[0].height)
        if len(calls) == 3:
            raise RuntimeError("chunk 3 broke")
        return inner(*a, **k)
    monkeypatch.setattr(features, "_entity_block", block)
    with pytest.raises(RuntimeError, match="chunk 3 broke"):
        compute_features(events, labels, small, start, end, ENTITIES, NUMERICS)
    chunks = features._chunk_count(events.height, 40)
    assert chunks >= 8 and len(calls) <= 3 + 2     # the two in flight beside it at most, not the rest


@pytest.mark.parametrize("chunk_rows,compression,mins", [(40, "none", False), (100_000, "none", False),
                                                        (40, "zstd", False), (100_000, "lz4", False), (40, "none", True)])
def test_a_history_spilled_to_disk_gives_the_same_pieces_and_features(spec, chunk_rows, compression, mins):
    """The nightly path keeps its History on local disk (SpilledHistory): each chunk's piece read back
    holds the rows of the in-memory History's piece (another order), the features are the same bytes
    whatever the chunks, the files read are closed once an entity's chunks are done, and the spill's
    folder is gone once it is closed. With `mins`, a window minimum: the day minimums are carried
    (and only then)."""
    import dataclasses
    from pathlib import Path

    from pipelines.features import SpilledHistory, _chunk_of, _grouped, history_from_events

    if mins:
        spec = dataclasses.replace(spec, rolling={e: dataclasses.replace(r, aggs=(*r.aggs, "min"))
                                                  for e, r in spec.rolling.items()})
    events, labels = _with_midnights(*small_world(seed=21, n=1500, days=50))
    day = dt.date(2026, 2, 17)
    hist = history_from_events(events, labels, spec, day, ENTITIES)
    today = events.filter(pl.col("event_ts").dt.date() == day)
    ids = {e: today.select(pl.col(e).cast(pl.String).unique()) for e in ENTITIES}
    small = dataclasses.replace(spec, chunk_rows=chunk_rows)
    want = compute_features(today, labels.head(0), small, day, day, ENTITIES, NUMERICS, history=hist)
    assert ("mn" in hist.totals.columns) == mins and ("customer_amount_min_7d" in want.columns) == mins
    with SpilledHistory(_grouped(spec), compression) as spilled:
        folder = Path(spilled._dir.name)
        half = hist.events.height // 2              # a kind may come in several frames
        spilled.add("events", hist.events.head(half), ids)
        spilled.add("events", hist.events.tail(hist.events.height - half), ids)
        spilled.add("totals", hist.totals)
        spilled.add("labelled", hist.labelled, ids)
        spilled.add("label_totals", hist.label_totals)
        assert len(list(folder.iterdir())) >= 8 and spilled.rows() > 0
        for ent in ENTITIES:
            for chunks in (1, 4):
                mine = spilled.split(ent, _chunk_of(chunks), chunks)
                theirs = hist.split(ent, _chunk_of(chunks), chunks)
                for c in range(chunks):
                    a, b = mine(c), theirs(c)
                    for kind in SpilledHistory.KINDS:
                        x, y = getattr(a, kind), getattr(b, kind)
                        if kind in ("totals", "label_totals"):
                            y = y.filter(pl.col("entity") == ent) if y.height else y
                        else:
                            y = y.join(ids[ent], on=ent, how="semi") if y.height else y
                        assert x.height == y.height, (ent, chunks, c, kind)
                        if x.height:
                            x = x.with_columns(pl.col(pl.Decimal).cast(pl.Int128))
                            y = y.with_columns(pl.col(pl.Decimal).cast(pl.Int128)).select(x.columns)
                            assert x.sort(x.columns).equals(y.sort(y.columns)), (ent, chunks, c, kind)
        opened = list(spilled._open)
        assert opened and not any(f.closed for f in opened)
        got = compute_features(today, labels.head(0), small, day, day, ENTITIES, NUMERICS, history=spilled)
        assert all(f.closed for f in opened) and not spilled._open
    sizes = {}
    for how in {compression, "none"}:                # written as configured: compressed is smaller
        with _spilled(hist, today, spec, how) as other:
            sizes[how] = sum(f.stat().st_size for f in Path(other._dir.name).iterdir())
    assert compression == "none" or sizes[compression] < sizes["none"]
    assert got.equals(want)
    assert not folder.exists()


def test_the_spill_filter_by_id_hash_keeps_every_entity_of_the_day_and_colliding_ones_change_nothing(spec, monkeypatch):
    """The spill keeps the boundary days' rows of the day's entities by a 64-bit hash of the id; an
    id of another entity with the same hash comes along and the timeline's exact join drops it. With
    every id sharing one hash, every row is spilled, and the features are the same bytes."""
    from pipelines import features
    from pipelines.features import history_from_events

    events, labels = _with_midnights(*small_world(seed=23, n=1200, days=45))
    day = dt.date(2026, 2, 12)
    hist = history_from_events(events, labels, spec, day, ENTITIES)
    today = events.filter(pl.col("event_ts").dt.date() == day).head(3)     # a few entities: most rows are others'
    want = compute_features(today, labels.head(0), spec, day, day, ENTITIES, NUMERICS, history=hist)
    with _spilled(hist, today, spec) as exact:
        assert compute_features(today, labels.head(0), spec, day, day, ENTITIES, NUMERICS, history=exact).equals(want)
        kept = exact.heights["events"]
    monkeypatch.setattr(features, "_id_hash", lambda column: pl.col(column).cast(pl.String).str.len_bytes() * 0)
    with _spilled(hist, today, spec) as weak:
        assert weak.heights["events"] == hist.events.height > kept        # all of them: one hash for every id
        assert compute_features(today, labels.head(0), spec, day, day, ENTITIES, NUMERICS, history=weak).equals(want)


def test_the_spill_hash_filter_never_misses_an_id_of_the_day_and_lets_few_others_through():
    """_HashFilter, the spill's test of an id's 64-bit hash against the day's: every hash of the set
    passes (whatever its top and low bits), others pass at the rate it is sized for (~0.2%), an empty
    set lets nothing through."""
    import numpy as np

    from pipelines.features import _HashFilter

    rng = np.random.default_rng(7)
    mine = pl.Series(np.concatenate([rng.integers(0, 2**64 - 1, 200_000, dtype=np.uint64, endpoint=True),
                                     np.array([0, 1, 2**64 - 1, 2**63, 2**32 - 1], np.uint64)]))
    test = _HashFilter(pl.concat([mine, mine.head(1000)]))          # repeated hashes: the same set
    assert test(mine).all()
    others = pl.Series(rng.integers(0, 2**64 - 1, 500_000, dtype=np.uint64, endpoint=True))
    others = others.filter(~others.is_in(mine.implode()))
    share = test(others).mean()
    assert 0 < share < 0.005, share
    assert not _HashFilter(pl.Series([], dtype=pl.UInt64))(others).any()
    assert test(pl.Series([], dtype=pl.UInt64)).len() == 0


def _spilled(hist, today: pl.DataFrame, spec, compression: str = "none"):
    """A SpilledHistory holding `hist` (as the nightly path's _gather fills it)."""
    from pipelines.features import SpilledHistory, _grouped

    ids = {e: today.select(pl.col(e).cast(pl.String).unique()) for e in _grouped(spec)}
    out = SpilledHistory(_grouped(spec), compression)
    out.add("events", hist.events, {e: v for e, v in ids.items() if e in spec.rolling or e in spec.time_since_last})
    out.add("totals", hist.totals)
    out.add("labelled", hist.labelled, {e: v for e, v in ids.items() if e in spec.target_rate})
    out.add("label_totals", hist.label_totals)
    return out


def test_one_event_of_the_day_with_no_label_anywhere_and_an_entity_with_rates_only(spec):
    """Review findings of stop 31: a chunk holding a single row of the day and no label (the running
    label sums were gathered from an empty series), and an entity with rates but neither rolling
    aggregates nor time since last (no weights on its timeline): both paths give the same bytes."""
    import dataclasses

    from pipelines.features import history_from_events

    t = dt.datetime(2026, 1, 20, 12)
    nolab = pl.DataFrame(schema={"event_id": pl.String, "label": pl.Int8, "label_date": pl.Date,
                                 "available_at": pl.Datetime("us")})
    rows = [{"event_id": f"h{i}", "event_ts": t - dt.timedelta(days=d), "customer": "c", "terminal": "x",
             "amount": 5.0 + i, "category": "online"} for i, d in enumerate([1, 3, 7, 20])]
    rows.append({"event_id": "a", "event_ts": t, "customer": "c", "terminal": "x", "amount": 10.0, "category": "online"})
    events = pl.DataFrame(rows).with_columns(pl.col("event_ts").cast(pl.Datetime("us"))).sort("event_ts")
    day = t.date()
    today = events.filter(pl.col("event_ts").dt.date() == day)
    full = compute_features(events, nolab, spec, day, day, ENTITIES, NUMERICS)
    assert full.height == 1 and full["customer_count_30d"][0] == 4 and full["customer_fraud_rate_30d"][0] is None
    hist = history_from_events(events, nolab, spec, day, ENTITIES)
    assert compute_features(today, nolab, spec, day, day, ENTITIES, NUMERICS, history=hist).equals(full)
    with _spilled(hist, today, spec) as spilled:
        assert compute_features(today, nolab, spec, day, day, ENTITIES, NUMERICS, history=spilled).equals(full)

    rates_only = dataclasses.replace(spec, rolling={"customer": spec.rolling["customer"]}, time_since_last=("customer",))
    events, labels = _with_midnights(*small_world(seed=11, n=1200, days=50))
    day = dt.date(2026, 2, 14)
    today = events.filter(pl.col("event_ts").dt.date() == day)
    full = compute_features(events, labels, rates_only, day, day, ENTITIES, NUMERICS)
    assert full["terminal_labeled_count_30d"].sum() > 0
    hist = history_from_events(events, labels, rates_only, day, ENTITIES)
    with _spilled(hist, today, rates_only) as spilled:
        for h in (hist, spilled):
            assert compute_features(today, labels.head(0), rates_only, day, day, ENTITIES, NUMERICS,
                                    history=h).equals(full)


def test_the_spill_of_long_ids_is_about_the_size_of_the_rows():
    """Ids longer than 12 bytes (UUIDs): each bucket's batch holds its own strings, not a view into
    the whole frame's buffer written again for each of the 256 buckets (review, stop 31)."""
    import uuid
    from pathlib import Path

    from pipelines.features import BUCKETS, SpilledHistory

    rnd = random.Random(5)
    ids = [str(uuid.UUID(int=rnd.getrandbits(128))) for _ in range(4000)]
    frame = pl.DataFrame({"event_ts": [dt.datetime(2026, 1, 1)] * 8000, "customer": ids * 2,
                          "terminal": [f"t{i % 97}" for i in range(8000)], "amount": [1.0] * 8000})
    with SpilledHistory(["customer"]) as spilled:
        spilled.add("events", frame, {"customer": frame.select(pl.col("customer").unique())})
        size = sum(p.stat().st_size for p in Path(spilled._dir.name).iterdir())
        back = spilled.split("customer", lambda c: pl.lit(0), 1)(0).events
    assert back.height == 8000 and sorted(back["customer"].to_list()) == sorted(ids * 2)
    # the rows' bytes plus each of the 256 batches' framing (~1 KB uncompressed); a view into the
    # whole buffer per bucket would be ~256x the strings
    assert size < frame.estimated_size() + BUCKETS * 2048, (size, frame.estimated_size())


def test_an_entity_with_time_since_last_only_is_served_by_the_nightly_path(spec):
    """An entity with time since last but no rolled value (no sums in its day totals) is served by
    the nightly path, the same bytes as from raw (it used to need raw every night: review, stop 31)."""
    import dataclasses

    from pipelines.features import history_from_events

    since_only = dataclasses.replace(spec, rolling={"customer": spec.rolling["customer"]},
                                     time_since_last=("customer", "terminal"))
    events, labels = _with_midnights(*small_world(seed=17, n=1200, days=50))
    day = dt.date(2026, 2, 14)
    today = events.filter(pl.col("event_ts").dt.date() == day)
    full = compute_features(events, labels, since_only, day, day, ENTITIES, NUMERICS)
    assert full["terminal_secs_since_last"].null_count() < full.height
    hist = history_from_events(events, labels, since_only, day, ENTITIES)
    assert hist.totals.filter(pl.col("entity") == "terminal").height > 0
    with _spilled(hist, today, since_only) as spilled:
        for h in (hist, spilled):
            assert compute_features(today, labels.head(0), since_only, day, day, ENTITIES, NUMERICS,
                                    history=h).equals(full)


def test_a_partition_spilled_in_frames_counts_its_rows_as_if_whole(spec):
    """A boundary day (or a labelled object) read in frames is spilled frame by frame; the rows the
    History counts (its chunk count, the log) are those of the whole partition: its largest entity's."""
    from pipelines.features import SpilledHistory, _grouped, history_from_events

    events, labels = small_world(seed=5, n=1500, days=50)
    day = dt.date(2026, 2, 17)
    hist = history_from_events(events, labels, spec, day, ENTITIES)
    today = events.filter(pl.col("event_ts").dt.date() == day)
    ids = {e: today.select(pl.col(e).cast(pl.String).unique()) for e in ENTITIES}
    with SpilledHistory(_grouped(spec)) as whole, SpilledHistory(_grouped(spec)) as pieces:
        whole.add("events", hist.events, ids)
        whole.add("labelled", hist.labelled, ids)
        for kind, frame in (("events", hist.events), ("labelled", hist.labelled)):
            for lo in range(0, frame.height, 7):
                pieces.add(kind, frame.slice(lo, 7), ids, part=f"{kind}-day")
        assert pieces.heights == whole.heights and whole.heights["events"] > 0 and whole.heights["labelled"] > 0


def test_a_rolling_max_alone_reads_no_sum_of_the_values():
    """Each window's rolling sums are computed once, and only those an aggregate reads: a max (or min)
    alone never makes the fixed-point sum, which a NaN or an infinite value cannot enter."""
    from pipelines.core.config import RollingSpec
    from pipelines.features import US_PER_DAY, _rolling_exprs

    part = pl.DataFrame({"__vt": [0, US_PER_DAY // 2, US_PER_DAY], "amount": [1.0, float("nan"), 2.0],
                         "__w": [1, 1, 1]}).with_columns(pl.col("__vt").set_sorted())
    for aggs, want in ((("max",), [None, 1.0, float("nan")]), (("min",), [None, 1.0, float("nan")])):
        [(sums, exprs)] = _rolling_exprs("c", RollingSpec("amount", aggs, 2), (1,), pl.Int64, False)
        got = part.select(sums).select(exprs).to_series()
        assert [s.meta.output_name() for s in sums] == [f"__{aggs[0]}"]
        assert str(got.to_list()) == str(pl.Series(want, dtype=pl.Float32).to_list())
    [(sums, _)] = _rolling_exprs("c", RollingSpec("amount", ("count", "mean"), 2), (1,), pl.Int64, False)
    assert [s.meta.output_name() for s in sums] == ["__n", "__s"]


def _constants_by_group_by(ids, ent, spec, hist, day):
    """What Constants.of held before it laid each slot on the codes: one group-by over the slots (the
    reference its dense frame is checked against)."""
    from pipelines.features import _code

    code, lag = _code(ent), spec.label_delay_days

    def mine(frame):
        return frame.filter(pl.col("entity") == ent).rename({"id": ent}).join(ids, on=ent, how="inner")
    tot, lt = mine(hist.totals), mine(hist.label_totals)
    aggs = []
    for w in spec.windows_days:
        inside = pl.col("day") > pl.lit(day - dt.timedelta(days=w))
        aggs += [pl.col("n").filter(inside).sum().cast(pl.Int64).alias(f"__n{w}"),
                 pl.col("fx").filter(inside).sum().cast(pl.Int64).alias(f"__s{w}"),
                 pl.col("q").cast(pl.Int128).filter(inside).sum().alias(f"__sq{w}"),
                 pl.col("mx").filter(inside).max().alias(f"__max{w}")]
    aggs.append(pl.col("last").filter(pl.col("day") > pl.lit(day - dt.timedelta(days=max(spec.windows_days))))
                .max().alias("__last"))
    available = sorted(lt["available_at"].cast(pl.Int64).unique().drop_nulls().to_list())
    label_aggs = []
    for j, a in enumerate(available):
        known = pl.col("available_at").cast(pl.Int64) == a
        for n in spec.target_rate[ent]:
            inside = known & (pl.col("event_date") > pl.lit(day - dt.timedelta(days=lag + n)))
            label_aggs += [pl.col("s").filter(inside).sum().cast(pl.Int64).alias(f"__ls{n}_{j}"),
                           pl.col("n").filter(inside).sum().cast(pl.Int64).alias(f"__ln{n}_{j}")]
    return tot.group_by(code).agg(aggs).join(lt.group_by(code).agg(label_aggs), on=code, how="full", coalesce=True)


def test_the_earlier_days_constants_are_a_group_by_of_their_slots_laid_on_the_codes():
    """Constants.of gathers each slot's rows (one per entity) onto the codes instead of a group-by with
    a filter per window: the same exact sums, the same max (NaN only where nothing else, null where
    no row), zeros and nulls for the codes without totals; an entity twice in one slot is refused."""
    from pipelines.features import Constants, History, _code

    spec = load_params("params.yaml").features
    day, rnd, ent = dt.date(2026, 2, 14), random.Random(3), "customer"
    ids = pl.DataFrame({ent: [f"c{i}" for i in range(40)]}).with_row_index(_code(ent))
    totals, label_totals = [], []
    for slot in (day - dt.timedelta(days=29), day - dt.timedelta(days=6), day - dt.timedelta(days=3)):
        for i in rnd.sample(range(45), 25):               # c40..c44: not the day's entities
            totals.append({"n": rnd.randrange(1, 9), "fx": rnd.randrange(10**6), "q": rnd.randrange(10**12),
                           "mx": rnd.choice([rnd.uniform(1, 9), None, float("nan")]), "last": rnd.randrange(10**12),
                           "day": slot, "id": f"c{i}", "entity": ent})
    for e, a in [(day - dt.timedelta(days=40), 1), (day - dt.timedelta(days=20), 1), (day - dt.timedelta(days=20), 2)]:
        for i in rnd.sample(range(45), 20):
            label_totals.append({"n": rnd.randrange(1, 5), "s": rnd.randrange(3), "event_date": e,
                                 "available_at": dt.datetime.combine(day - dt.timedelta(days=a), dt.time()),
                                 "id": f"c{i}", "entity": ent})
    tot = pl.DataFrame(totals).with_columns(pl.col("q").cast(pl.Decimal(38, 0)))
    lt = pl.DataFrame(label_totals).with_columns(pl.col("available_at").cast(pl.Datetime("us")))
    hist = History(pl.DataFrame(), tot, pl.DataFrame(), lt)
    got = Constants.of(ids, ent, spec, hist, day)
    want = _constants_by_group_by(ids, ent, spec, hist, day)
    assert got.frame.height == ids.height and want.height < ids.height     # codes without totals too
    rows = pl.DataFrame({_code(ent): pl.Series(range(ids.height), dtype=pl.UInt32)})
    dense = got._joined(rows, [c for c in want.columns if c != _code(ent)])
    ref = rows.join(want, on=_code(ent), how="left", maintain_order="left")
    for c in want.columns:
        a, b = dense[c], ref[c]
        if c.startswith(("__n", "__s", "__ls", "__ln")):
            b = b.fill_null(0)                               # (what the windows add where a code has no row)
        assert a.dtype == b.dtype, c
        if a.dtype.is_float():                              # NaN where the group-by gave NaN, null where null
            assert a.is_nan().fill_null(False).to_list() == b.is_nan().fill_null(False).to_list(), c
            a, b = a.fill_nan(None), b.fill_nan(None)
        assert a.to_list() == b.to_list(), (c, [(x, y) for x, y in zip(a.to_list(), b.to_list()) if x != y][:5])
    twice = pl.concat([tot, tot.head(1)])
    with pytest.raises(RuntimeError, match="twice"):
        Constants.of(ids, ent, spec, History(pl.DataFrame(), twice, pl.DataFrame(), lt), day)
