"""Ingest's pure core: every data bug the simulator injects, with the row accounting."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from pipelines.core.config import load_params
from pipelines.ingest import FILE, ROW, normalize
from pipelines.ops.demo_data import (
    Bug,
    DemoParams,
    apply_bug,
    make_world,
    simulate_day,
    split_labels,
)

DAY = dt.date(2026, 1, 12)


@pytest.fixture(scope="module")
def setup():
    params = load_params()
    p = DemoParams.from_dict(params.section("demo_data"))
    tx, labels = split_labels(simulate_day(p, make_world(p), DAY))
    return params, tx, labels


def _raw(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.lit("part-0.parquet").alias(FILE), pl.int_range(pl.len(), dtype=pl.Int64).alias(ROW))


def _run(setup, kind: str, fraction: float = 0.05):
    params, tx, _ = setup
    raw = apply_bug(tx, Bug(DAY, kind, "amount", fraction), seed=1)
    r = normalize(_raw(raw), params.dataset("transactions"), DAY, params.ingest)
    s = r.stats
    assert s["rows_in"] == raw.height == s["rows_out"] + s["rows_rejected"] == r.canonical.height + r.rejects.height
    return raw, r


def test_clean_partition_passes_unchanged(setup):
    params, tx, _ = setup
    r = normalize(_raw(tx), params.dataset("transactions"), DAY, params.ingest)
    assert r.stats["rows_rejected"] == 0 and r.canonical.height == tx.height
    assert r.canonical.columns == ["event_id", "event_ts", "customer", "terminal", "amount", "category"]
    assert r.canonical["event_ts"].is_sorted()


def test_renamed_column_rejects_the_whole_partition_with_a_reason(setup):
    raw, r = _run(setup, "renamed_column")
    assert r.canonical.height == 0 and r.rejects.height == raw.height
    assert r.stats["missing_columns"] == ["amount"]
    assert set(r.rejects["reject_reason"]) == {"missing_column:amount"}


def test_changed_dtype_is_cast_and_unparseable_values_rejected(setup):
    raw, r = _run(setup, "dtype_change")
    assert r.stats["casts"] == {"amount": "String->Float64"}
    bad = r.rejects.filter(pl.col("reject_reason") == "cast_failed:amount")
    assert bad.height == r.stats["rows_rejected"] == round(raw.height * 0.05)
    assert bad["amount"].str.contains(",").all()         # the original text is kept for forensics
    assert r.canonical["amount"].dtype == pl.Float64 and r.canonical["amount"].null_count() == 0


def test_duplicate_ids_keep_the_earliest_and_reject_the_rest(setup):
    params, tx, _ = setup
    raw, r = _run(setup, "duplicate_ids")
    assert r.canonical["event_id"].is_unique().all()
    assert r.canonical.height == tx.height
    assert set(r.rejects["reject_reason"]) == {"duplicate_id"}
    # the kept row of a conflicting duplicate is the one first in source order, not the altered copy
    kept = r.canonical.join(tx.rename({"tx_id": "event_id"}).select("event_id", pl.col("amount").alias("orig")), on="event_id")
    assert (kept["amount"] == kept["orig"]).all()


@pytest.mark.parametrize("kind", ["nulls", "out_of_range", "ts_outside_day"])
def test_row_value_bugs_pass_ingest_for_validation_to_judge(setup, kind):
    raw, r = _run(setup, kind)
    assert r.stats["rows_rejected"] == 0 and r.canonical.height == raw.height


def test_empty_partition_gives_an_empty_canonical_partition(setup):
    raw, r = _run(setup, "empty_partition")
    assert raw.height == 0 and r.canonical.height == 0 and r.rejects.height == 0


def test_null_ids_and_timestamps_are_rejected_with_their_codes(setup):
    params, tx, _ = setup
    raw = tx.head(10).with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("tx_id")).alias("tx_id"),
        pl.when(pl.int_range(pl.len()) == 1).then(None).otherwise(pl.col("tx_ts")).alias("tx_ts"))
    r = normalize(_raw(raw), params.dataset("transactions"), DAY, params.ingest)
    assert r.rejects.sort(ROW)["reject_reason"].to_list() == ["null_id", "null_timestamp"]
    assert r.canonical.height == 8


def test_labels_get_their_availability_time(setup):
    params, _, labels = setup
    landed = DAY + dt.timedelta(days=7)
    r = normalize(_raw(labels), params.dataset("labels"), landed, params.ingest)
    assert r.canonical.columns == ["event_id", "label", "label_date", "available_at"]
    assert r.canonical["available_at"].unique().to_list() == [dt.datetime(2026, 1, 20)]


@pytest.mark.parametrize("hashes", ["none", "all", "some", "hashed_otherwise"])
@pytest.mark.parametrize("how", ["as_is", "one_day_a_batch", "every_id_one_hash"])
def test_ids_of_earlier_days_are_found_exactly_whatever_the_hash_and_batches(tmp_path, monkeypatch, how, hashes):
    """seen_before matches the earlier days by a 64-bit hash of the id: their published hashes
    (put_canonical: a merge of sorted hashes, the day's ids read only where one matches), or, for a
    day published without them or hashed by another polars, the ids hashed in one join over several
    days. Either way it then checks the ids themselves: the rows found are exactly those whose id is
    among the day's, with their labels, also when every id shares one hash (a collision is no match),
    one day a batch, in a range (memo) as for one date; a night with no repeat reads no ids of a day
    that has its hashes."""
    import dataclasses

    from pipelines import ingest
    from pipelines.core import lineage, storage

    params = load_params()
    store = dataclasses.replace(params.storage, lake=str(tmp_path / "lake"))
    ds = params.dataset("labels")
    first = ds.first_date
    days = [first + dt.timedelta(days=k) for k in range(5)]
    if how == "one_day_a_batch":
        monkeypatch.setattr(ingest, "ID_BATCH_ROWS", 1)
    elif how == "every_id_one_hash":
        monkeypatch.setattr(ingest, "_id_hash",
                            lambda: (pl.col("event_id").fill_null("").str.len_bytes().cast(pl.UInt64) * 0 + 7).alias("__h"))
    with storage.Publisher(store.lake, None) as pub:
        for k, d in enumerate(days[:4]):
            uri = store.uri("canonical", dataset=ds.name, date=d.isoformat())
            part = pub.partition(uri, "ingest")
            frame = pl.DataFrame({"event_id": [f"e{k}-{i}" for i in range(50)],
                                  "label": pl.Series([i % 2 for i in range(50)], dtype=pl.Int8)})
            if hashes == "all" or hashes == "hashed_otherwise" or (hashes == "some" and k % 2):
                ingest.put_canonical(part, uri, frame)
            else:
                part.put_parquet(uri, frame)
            part.commit()
    if hashes == "hashed_otherwise":       # a polars whose hash differs from the one that published them
        monkeypatch.setattr(ingest, "_probe", lambda: "another hash")
    read: list[str] = []
    real = lineage.Reader.read_bytes

    def counted(self, uri, primary=None):
        read.append(uri.rsplit("/", 2)[-2] + "/" + uri.rsplit("/", 1)[-1])
        return real(self, uri, primary)
    monkeypatch.setattr(lineage.Reader, "read_bytes", counted)
    asked = pl.DataFrame({"event_id": ["e0-3", "e2-10", "e2-11", "e3-49", "new-1", "e9-1", None]})
    for memo in (None, {}):
        reader = lineage.Reader()
        seen = ingest.seen_before(ds, days[4], store, 45, reader, memo, asked)
        assert sorted(seen.rows()) == [("e0-3", 1), ("e2-10", 0), ("e2-11", 1), ("e3-49", 1)]
        assert seen.columns == ["event_id", "label"]
        assert sorted(reader.consumed) == [store.uri("canonical", dataset=ds.name, date=d.isoformat()) for d in days[:4]]
    read.clear()                        # the next date of a range: what the memo holds is not read again
    assert sorted(ingest.seen_before(ds, days[4], store, 45, lineage.Reader(), memo, asked).rows())[0] == ("e0-3", 1)
    assert read == []
    new = pl.DataFrame({"event_id": ["new-1", "new-2"]})
    assert ingest.seen_before(ds, days[4], store, 45, lineage.Reader(), None, new).height == 0
    if hashes == "all" and how != "every_id_one_hash":
        assert read == [f"date={d}/{ingest.IDS}part-0.parquet" for d in days[:4]]        # the hashes only, no ids
    elif hashes in ("none", "hashed_otherwise"):
        assert read == [f"date={d}/part-0.parquet" for d in days[:4]]
    assert ingest.seen_before(ds, days[4], store, 45, lineage.Reader(), None, asked.clear()).height == 0


def test_partitions_sharing_a_folder_keep_their_own_hashes(tmp_path):
    """A layout may put several canonical partitions in one folder (one file a date): each one's id
    hashes are named after its object, not after the folder, so none overwrites another's."""
    import dataclasses

    from pipelines import ingest
    from pipelines.core import lineage, storage

    params = load_params()
    layout = {**params.storage.layout, "canonical": "canonical/{dataset}/date={date}.parquet"}
    store = dataclasses.replace(params.storage, lake=str(tmp_path / "lake"), layout=layout)
    ds = params.dataset("labels")
    days = [ds.first_date + dt.timedelta(days=k) for k in range(4)]
    with storage.Publisher(store.lake, None) as pub:
        for k, d in enumerate(days[:3]):
            uri = store.uri("canonical", dataset=ds.name, date=d.isoformat())
            part = pub.partition(uri, "ingest")
            ingest.put_canonical(part, uri, pl.DataFrame({"event_id": [f"e{k}-{i}" for i in range(5)],
                                                          "label": pl.Series([0] * 5, dtype=pl.Int8)}))
            part.commit()
    assert len(list((tmp_path / "lake" / "canonical" / ds.name).glob(f"{ingest.IDS}*"))) == 3
    seen = ingest.seen_before(ds, days[3], store, 45, lineage.Reader(), None, pl.DataFrame({"event_id": ["e0-1", "e2-4", "x"]}))
    assert sorted(seen["event_id"].to_list()) == ["e0-1", "e2-4"]


def test_a_partitions_hashes_altered_after_its_record_fail_the_night_by_name(tmp_path):
    """The published id hashes are checked as any object of the partition: altered, the night fails
    naming the earlier day (a lost repeat would let a duplicate through), nothing is guessed."""
    import dataclasses

    from pipelines import ingest
    from pipelines.core import lineage, storage

    params = load_params()
    store = dataclasses.replace(params.storage, lake=str(tmp_path / "lake"))
    ds = params.dataset("labels")
    d = ds.first_date
    uri = store.uri("canonical", dataset=ds.name, date=d.isoformat())
    with storage.Publisher(store.lake, None) as pub:
        part = pub.partition(uri, "ingest")
        ingest.put_canonical(part, uri, pl.DataFrame({"event_id": ["a", "b"], "label": pl.Series([0, 1], dtype=pl.Int8)}))
        part.commit()
    side = Path(uri).parent / f"{ingest.IDS}part-0.parquet"
    ok = pl.read_parquet(side)
    assert ok["h"].to_list() == sorted(pl.Series(["a", "b"]).hash(seed=ingest.ID_SEED).to_list())
    ok.head(1).write_parquet(side)
    with pytest.raises(ingest.IngestError, match=f"cannot be trusted .*date={d}/{ingest.IDS}part-0.parquet: changed since it was committed"):
        ingest.seen_before(ds, d + dt.timedelta(days=1), store, 45, lineage.Reader(), None,
                           pl.DataFrame({"event_id": ["b"]}))


def _by_the_rules(files: list[tuple[str, list[dict]]], seen: dict, label: bool):
    """The rules of pipelines/ingest.py's docstring read row by row in plain Python: (the canonical
    ids in order, [(file, row, reason)] in source order, within-day and across-day label conflicts)."""
    ok, bad = [], []
    for name, rows in files:
        for r, v in enumerate(rows):
            try:
                failed = not label and v["amount"] is not None and float(v["amount"]) is None
            except ValueError:
                failed = True
            reason = ("null_id" if v["id"] is None else "null_timestamp" if not label and v["ts"] is None
                      else "null_label" if label and v["label"] is None else "cast_failed:amount" if failed
                      else "invalid_label" if label and v["label"] not in (0.0, 1.0) else None)
            if reason:
                bad.append((name, r, reason))
            else:
                ok.append(((v["ts"] if not label else 0, name, r), v))
    kept, within, across = {}, 0, 0
    for (_, name, r), v in sorted(ok, key=lambda x: x[0]):
        if v["id"] in kept:
            conflicting = label and v["label"] != kept[v["id"]][1]["label"]
            within += conflicting
            bad.append((name, r, "conflicting_label" if conflicting else "duplicate_id"))
        else:
            kept[v["id"]] = ((name, r), v)
    for i in [i for i in kept if i in seen]:         # the earliest of an id already ingested: no longer kept
        (name, r), v = kept.pop(i)
        across += label and v["label"] != seen[i]
        bad.append((name, r, "duplicate_id_across_days"))
    order = sorted(kept, key=lambda i: (kept[i][1]["ts"], i) if not label else i)
    return order, sorted(bad), within, across


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("dataset", ["transactions", "labels"])
def test_normalize_keeps_and_rejects_what_the_rules_say_row_by_row(seed, dataset):
    """Random partitions of several files (the same ids within and across files, nulls, values that do
    not cast, labels that are not 0/1, ids of earlier days, files of several chunks) against the rules
    read row by row: the same rows kept in the same order, the same rows rejected with the same reason."""
    import random

    from pipelines.ingest import _row_numbers

    params = load_params()
    ds = params.dataset(dataset)
    label = dataset == "labels"
    rng = random.Random(seed)
    t0 = dt.datetime(2026, 1, 12)
    files, frames = [], []
    for name in sorted({f"part-{rng.randrange(4)}.parquet" for _ in range(rng.randrange(1, 4))}):
        rows = [{"id": None if rng.random() < .05 else f"e{rng.randrange(30)}",
                 "ts": None if rng.random() < .05 else t0 + dt.timedelta(seconds=rng.randrange(20)),
                 "amount": rng.choice([None, "1.5", " 2 ", "x", "3e1"]),
                 "label": rng.choice([None, 0.0, 1.0, 1.0, 0.0, 0.5, 2.0])} for _ in range(rng.randrange(0, 40))]
        files.append((name, rows))
        if label:
            df = pl.DataFrame({"tx_id": [v["id"] for v in rows], "is_fraud": [v["label"] for v in rows]},
                              schema={"tx_id": pl.String, "is_fraud": pl.Float64})
        else:
            df = pl.DataFrame({"tx_id": [v["id"] for v in rows], "tx_ts": [v["ts"] for v in rows],
                               "customer_id": ["c"] * len(rows), "terminal_id": ["t"] * len(rows),
                               "amount": [v["amount"] for v in rows], "category": ["a"] * len(rows)},
                              schema={"tx_id": pl.String, "tx_ts": pl.Datetime("us"), "customer_id": pl.String,
                                      "terminal_id": pl.String, "amount": pl.String, "category": pl.String})
        if df.height > 4:                                 # a file of several row groups
            df = pl.concat([df[:df.height // 2], df[df.height // 2:]], rechunk=False)
        rowno = _row_numbers(df)
        assert [len(c) for c in rowno.get_chunks()] == [len(c) for c in df.to_series(0).get_chunks()]
        frames.append(df.hstack([rowno]).with_columns(pl.lit(name).alias(FILE)))
    seen = {f"e{i}": rng.choice([0, 1]) for i in rng.sample(range(40), rng.randrange(0, 6))}
    seen_df = pl.DataFrame({"event_id": list(seen), **({"label": list(seen.values())} if label else {})},
                           schema={"event_id": pl.String, **({"label": pl.Int8} if label else {})})
    r = normalize(frames, ds, DAY, params.ingest, seen_df)
    order, bad, within, across = _by_the_rules(files, seen if label else {k: None for k in seen}, label)
    assert r.canonical["event_id"].to_list() == order
    assert sorted(r.rejects.select(FILE, ROW, "reject_reason").rows()) == bad
    assert r.rejects.select(FILE, ROW).rows() == sorted(r.rejects.select(FILE, ROW).rows())
    assert r.stats["rows_in"] == sum(len(rows) for _, rows in files) == r.canonical.height + r.rejects.height
    if label:
        assert r.stats["label_conflicts"] == {"within_day": within, "across_days": across}


def test_a_source_column_named_like_the_row_number_is_replaced_not_an_error(setup):
    """read_source adds _source_file/_source_row; a delivered column of that name (unmapped, so not
    read) is replaced, as before, and the row numbers follow the file's row groups."""
    import io

    from pipelines.ingest import read_source

    params, tx, _ = setup
    buf = io.BytesIO()
    pl.concat([tx.head(50), tx.slice(50, 70)], rechunk=False).with_columns(pl.lit(-1).alias(ROW)).write_parquet(
        buf, row_group_size=40)
    frames, sources = read_source(params.dataset("transactions"), DAY, [("mem://x/part-0.parquet", buf.getvalue())])
    assert frames[0][ROW].to_list() == list(range(120)) and sources[0]["rows"] == 120
    r = normalize(frames, params.dataset("transactions"), DAY, params.ingest)
    assert r.canonical.height == 120 and r.stats["rows_rejected"] == 0


@pytest.mark.parametrize("weak", [False, True])
def test_the_distinct_ids_count_is_exact_whatever_the_hash(weak):
    """distinct_ids (the duplicate window's `ids_checked`) counts on the ids' hashes and, where a hash
    value is on several rows, on the ids: the same count as n_unique with polars' hash and with one
    that collides for every two ids of a length (repeats, nulls, empty)."""
    import random

    from pipelines.ingest import distinct_ids

    rng = random.Random(7)
    hashed = (lambda s: s.str.len_bytes().fill_null(1).cast(pl.UInt64)) if weak else (lambda s: s.hash(seed=1))
    cases = [pl.Series([], dtype=pl.String), pl.Series([None], dtype=pl.String), pl.Series(["a", None, None, "a", "b"]),
             pl.Series(["x"] * 5), pl.Series([str(rng.randint(0, 500)) if rng.random() > 0.01 else None
                                              for _ in range(5000)])]
    for ids in cases:
        assert distinct_ids(ids, hashed) == ids.n_unique(), ids.to_list()[:10]
    assert distinct_ids(pl.Series(["ab", "cd"]), hashed) == 2          # one collision with the weak hash
    assert distinct_ids(pl.Series(["a", None]), hashed) == 2           # a null and an id: one hash value
