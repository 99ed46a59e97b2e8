"""The incremental features path on a lake of local files: per-entity day totals as feature_state
partitions made from raw when missing, the same bytes as a recomputation from raw, a lost or stale
state made again."""
from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipelines import features
from pipelines.core import storage
from tests.conftest import REPO
from tests.unit.test_features import _with_midnights, small_world

DAY = dt.date(2026, 2, 20)


@pytest.fixture()
def lake(tmp_path):
    """Validated transactions and canonical labels of small_world, one committed partition per day;
    params.yaml with the lake in this test's folder, no features suite."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["storage"]["lake"] = str(tmp_path / "lake")
    raw["datasets"]["labels"]["first_date"] = "2026-01-01"
    raw["validate"]["suites"]["features"] = False
    raw["features"]["incremental"] = True
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    events, labels = _with_midnights(*small_world(seed=29, n=2000, days=55))
    layout = raw["storage"]["layout"]
    lake = raw["storage"]["lake"]
    with storage.Publisher(lake, None) as pub:
        for k in range(55):
            d = dt.date(2026, 1, 1) + dt.timedelta(days=k)
            for kind, name, frame in (("validated", "transactions", events.filter(pl.col("event_ts").dt.date() == d)),
                                      ("canonical", "labels", labels.filter(pl.col("label_date") == d))):
                uri = f"{lake}/" + layout[kind].format(dataset=name, date=d.isoformat())
                part = pub.partition(uri, "ingest" if kind == "canonical" else "validate")
                part.put_parquet(uri, frame)
                part.commit()
    return path, lake, layout


def _run(path, *extra, day: dt.date = DAY) -> bytes:
    assert features.main(["--params", str(path), "--date", day.isoformat(), *extra]) == 0
    return (path.parent / "lake" / "features" / f"date={day}" / "part-0.parquet").read_bytes()


def test_incremental_features_equal_the_recomputation_from_raw(lake, caplog, monkeypatch):
    path, root, layout = lake
    caplog.set_level(logging.INFO, "pipelines.features")
    first = _run(path)
    with monkeypatch.context() as m:              # states folded in frames of 37 rows, spilled in frames of 50 entities
        m.setattr(features, "READ_ROWS", 37)
        m.setattr(features, "SPILL_ROWS", 50)
        assert _run(path, "--recompute") == first
    assert "incremental:" in caplog.text and "computed from raw" not in caplog.text
    # landings whose labels are all of event days outside the rates' runs: their label totals not read,
    # the same bytes as from raw (below)
    assert re.search(r"the label totals of [1-9]\d* of 37 landings not read", caplog.text), caplog.text[-2000:]
    made = sorted(p.parent.name for p in (path.parent / "lake" / "feature_state").glob("*/daily.parquet"))
    assert len(made) == 37 and made[-1] == f"date={DAY}"                 # the label landing days + 1, the day itself
    record = storage.record_uri(f"{root}/features/date={DAY}/part-0.parquet")
    inc = storage.read_json(record)
    assert not any("/feature_state/" in u for u in inc["inputs"])       # made of the look-back, as from raw
    caplog.clear()
    assert _run(path, "--from-raw", "--recompute") == first              # the same bytes from the raw look-back
    assert "incremental:" not in caplog.text
    assert storage.read_json(record) == inc                              # and the same record
    midnight = dt.date(2026, 2, 17)                                      # an event at exactly 00:00
    assert _run(path, day=midnight) == _run(path, "--from-raw", "--recompute", day=midnight)
    rec = storage.read_json(storage.record_uri(f"{root}/features/date={DAY}/part-0.parquet"))
    assert any("/validated/transactions/date=2026-01-21/" in u for u in rec["inputs"])

    # a lost state is made again from raw; the features do not change
    lost = path.parent / "lake" / "feature_state" / "date=2026-02-10"
    for f in lost.rglob("*"):
        if f.is_file():
            f.unlink()
    caplog.clear()
    assert _run(path, "--recompute") == first
    assert "feature state 2026-02-10:" in caplog.text and (lost / "daily.parquet").exists()
    assert storage.read_json(record) == inc

    # a state whose object was altered or lost after its record is made again; the features do not change
    damaged = path.parent / "lake" / "feature_state" / "date=2026-02-03" / "daily.parquet"
    damaged.write_bytes(b"not parquet")
    (path.parent / "lake" / "feature_state" / "date=2026-02-15" / "labels.parquet").unlink()
    caplog.clear()
    assert _run(path, "--recompute") == first
    assert "incremental:" in caplog.text and "computed from raw" not in caplog.text
    assert caplog.text.count("made again from raw") == 2 and damaged.read_bytes() != b"not parquet"

    # a corrected partition of a day inside the windows: its state is made again, the features follow
    uri = f"{root}/" + layout["validated"].format(dataset="transactions", date="2026-02-12")
    frame = storage.read_parquet(uri)
    with storage.Publisher(root, None) as pub:
        part = pub.partition(uri, "validate")
        part.put_parquet(uri, frame.with_columns(pl.col("amount") * 2))
        part.commit()
    caplog.clear()
    changed = _run(path, "--recompute")
    assert changed != first and "feature state 2026-02-12:" in caplog.text
    assert _run(path, "--from-raw", "--recompute") == changed


def test_states_made_from_raw_in_processes_of_their_own_are_the_same_bytes(lake, caplog):
    """A first night (37 states from raw) made in the stage's process (state_apart_mb null); then, with
    features.state_apart_mb 0, six of its states lost (the first, the day's own, others between: a
    repair) are made again each in a spawned process of its own: the states and the features are the
    same bytes. (Six, not 37: each spawn costs ~0.4 s of the suite.)"""
    path, root, layout = lake
    caplog.set_level(logging.INFO, "pipelines.features")
    raw = yaml.safe_load(path.read_text())
    raw["features"]["state_apart_mb"] = None
    path.write_text(yaml.safe_dump(raw))
    together = _run(path)
    folder = path.parent / "lake" / "feature_state"
    states = {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.parquet"))}
    assert len([p for p in states if p.name == "daily.parquet"]) == 37
    assert "each in a process of its own" not in caplog.text
    import shutil

    lost = ["2026-01-15", "2026-01-16", "2026-02-03", "2026-02-10", "2026-02-15", "2026-02-20"]
    for d in lost:
        shutil.rmtree(folder / f"date={d}")
    raw["features"]["state_apart_mb"] = 0
    path.write_text(yaml.safe_dump(raw))
    caplog.clear()
    assert _run(path, "--recompute") == together
    assert "incremental:" in caplog.text and "computed from raw" not in caplog.text
    assert "6 of 6 to make from raw (2026-01-15..2026-02-20) made each in a process of its own" in caplog.text
    assert "6 made in processes of their own, peak RSS" in caplog.text
    assert {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.parquet"))} == states


def test_a_missing_look_back_partition_is_decided_by_the_path_from_raw(lake, caplog):
    """A look-back day the incremental path never reads as events (the first one: read only while
    labels are matched to their events, and not at all when they all matched earlier) missing: the
    run fails as the recomputation from raw does (features.missing_history: fail); no thinner
    features are published. (main sends any date whose run key has a missing input to the path from
    raw, so this holds whether or not the label matching reached that day.)"""
    path, root, layout = lake
    first = DAY - dt.timedelta(days=37)
    uri = f"{root}/" + layout["validated"].format(dataset="transactions", date=first.isoformat())
    storage.delete(storage.record_uri(uri))
    with pytest.raises(features.MissingHistory, match="look-back partition"):
        features.main(["--params", str(path), "--date", DAY.isoformat()])
    assert not (path.parent / "lake" / "features" / f"date={DAY}").exists()


def test_a_look_back_day_no_longer_trusted_fails_the_run_before_any_events_are_read(lake, monkeypatch):
    """The date's own validated partition made from a canonical partition since withdrawn (a re-delivery
    that failed ingest): the run key is None, the date goes to the path from raw, and that path checks
    every record first: StaleInput naming the day, before one day's events are read (not after the 37
    days before it: at 10M rows a day, out of memory first)."""
    from pipelines.core import lineage

    path, root, layout = lake
    uri = f"{root}/" + layout["validated"].format(dataset="transactions", date=DAY.isoformat())
    canonical = f"{root}/" + layout["canonical"].format(dataset="transactions", date=DAY.isoformat())
    frame = pl.read_parquet(storage.local_path(uri))
    with storage.Publisher(root, None) as pub:
        part = pub.partition(uri, "validate", inputs={canonical: "0" * 64})
        part.put_parquet(uri, frame)
        part.commit()
    reads = []
    real = lineage.Reader.read_parquet
    monkeypatch.setattr(lineage.Reader, "read_parquet", lambda self, *a, **k: reads.append(a) or real(self, *a, **k))
    with pytest.raises(lineage.StaleInput, match=f"date={DAY}/part-0.parquet: built from .*, which has since been withdrawn"):
        features.main(["--params", str(path), "--date", DAY.isoformat()])
    assert reads == []
    assert not (path.parent / "lake" / "features" / f"date={DAY}").exists()


def test_a_date_in_shards_by_entity_gives_the_bytes_and_record_of_one_run(lake, caplog):
    """shards.count 3: `--shard k/3` publishes one shard (its entities' blocks, a partition of its own,
    keyed by the date's run key); the date's own run makes the shards it does not find, merges them
    into the bytes and record of the unsharded run and removes them. A shard of another count is
    refused; a shard made from other inputs is not merged."""
    path, root, layout = lake
    one = _run(path)
    rec_one = storage.read_json(storage.record_uri(f"{root}/features/date={DAY}/part-0.parquet"))
    raw = yaml.safe_load(path.read_text())
    raw["shards"] = {"count": 3}
    path.write_text(yaml.safe_dump(raw))
    shards_dir = path.parent / "lake" / "_shards" / "features" / f"date={DAY}" / "of=3"
    assert features.main(["--params", str(path), "--date", DAY.isoformat(), "--shard", "1/3", "--recompute"]) == 0
    assert sorted(p.name for p in (shards_dir / "shard=1").glob("[!_]*")) == ["customer.parquet", "terminal.parquet"]
    assert not (shards_dir / "shard=0").exists()
    with pytest.raises(Exception, match="shards.count is 3"):
        features.main(["--params", str(path), "--date", DAY.isoformat(), "--shard", "1/4", "--recompute"])
    caplog.clear()
    caplog.set_level(logging.INFO, "pipelines.features")
    storage.delete(storage.record_uri(f"{root}/features/date={DAY}/part-0.parquet"))     # the date to do again
    assert _run(path) == one
    assert "shard 1/3: unchanged since its record" in caplog.text and "merged from 3 shards" in caplog.text
    assert "shard 0/3: " in caplog.text and "shard 2/3: " in caplog.text
    assert storage.read_json(storage.record_uri(f"{root}/features/date={DAY}/part-0.parquet")) == rec_one
    assert not [p for p in shards_dir.rglob("*") if p.is_file()], "merged shards are removed, records included"
    # the from-raw path in shards: the same bytes
    assert _run(path, "--recompute", "--from-raw") == one


def test_an_id_in_a_boundary_day_and_the_day_fails_the_incremental_path_by_name(lake):
    """An event id in both the day and one of its windows' boundary days (an older date re-ingested
    after a newer one): the nightly path, which holds only 64-bit hashes of the ids it checks, names
    the id and the dates as the recomputation from raw does; nothing is published."""
    path, root, layout = lake
    boundary = DAY - dt.timedelta(days=7)
    uri = f"{root}/" + layout["validated"].format(dataset="transactions", date=boundary.isoformat())
    own = f"{root}/" + layout["validated"].format(dataset="transactions", date=DAY.isoformat())
    frame = pl.read_parquet(uri)
    twin = pl.read_parquet(own).head(1).with_columns(pl.lit(dt.datetime.combine(boundary, dt.time(12))).cast(
        pl.Datetime("us")).alias("event_ts"))
    with storage.Publisher(str(root), None) as pub:
        part = pub.partition(uri, "validate")
        part.put_parquet(uri, pl.concat([frame, twin]).sort("event_ts", "event_id"))
        part.commit()
    for extra in ([], ["--from-raw"]):
        with pytest.raises(features.MissingHistory, match=rf"appear in more than one partition.*{twin['event_id'][0]}"
                                                          rf".*{boundary}"):
            features.main(["--params", str(path), "--date", DAY.isoformat(), *extra])
    assert not (path.parent / "lake" / "features" / f"date={DAY}").exists()


@pytest.mark.parametrize("weak", ["none", "by_length", "constant"])
def test_entity_keys_match_by_entity_and_id_never_by_hash_alone(monkeypatch, weak):
    """A state row gets the key of its own (entity, id) or none: a row whose hash equals a key's but
    whose id or entity differ is dropped, also when keys share a hash. Weak hashes stand in for
    64-bit collisions."""
    if weak == "by_length":     # distinct among the keys; "xx" and terminal "a" collide with them
        monkeypatch.setattr(features, "_key_hash", lambda: pl.col("id").str.len_bytes().cast(pl.UInt64).alias("__h"))
    elif weak == "constant":    # every key shares one hash
        monkeypatch.setattr(features, "_key_hash", lambda: pl.lit(7, pl.UInt64).alias("__h"))
    keys = features.EntityKeys(pl.DataFrame({"id": ["a", "bb", "ccc"], "entity": ["customer", "customer", "terminal"]}))
    state = pl.DataFrame({"entity": ["customer", "customer", "terminal", "customer", "terminal"],
                          "id": ["bb", "xx", "ccc", "zzzz", "a"], "n": [1, 2, 3, 4, 5]})
    out = keys.key(state)
    assert out.columns == ["n", "__k"] and out.schema["__k"] == pl.UInt32
    got = dict(zip(out["n"].to_list(), keys.named["id"].gather(out["__k"]).to_list()))
    assert got == {1: "bb", 3: "ccc"}
    assert keys.key(state.clear()).height == 0
    # a partition keyed in frames (each joined to its range of hashes) gives the same rows
    pieces = pl.concat([keys.key(state.slice(i, 1)) for i in range(state.height)])
    assert sorted(pieces.rows()) == sorted(out.rows())
    # a null id is no entity's, also where the day's ids hold a null (the same hash)
    nulls = features.EntityKeys(pl.DataFrame({"id": ["bb", None], "entity": ["customer", "customer"]}))
    out = nulls.key(pl.DataFrame({"entity": ["customer", "customer"], "id": [None, "bb"], "n": [1, 2]}))
    assert out["n"].to_list() == [2]


def test_a_release_keeps_the_states_unless_the_state_code_changed(lake, monkeypatch, caplog):
    """A state is keyed by the code of its content (pipelines/core/daystate.py, which imports no other
    project module), not by the features stage's: a release that changes the stage, storage or the
    CLI keeps every state of the look-back (at 10M rows a day, making 37 states from raw is a night's
    work); one that changes the state code makes them again, and the features stay the same."""
    from pipelines.core import code

    assert [f.name for f in code.files("pipelines.core.daystate")] == ["daystate.py"]
    path, root, layout = lake
    first = _run(path)
    states = sorted((path.parent / "lake" / "feature_state").glob("*/_lineage.daily.parquet.json"))
    assert len(states) == 37
    before = {s: s.read_bytes() for s in states}
    real = code.fingerprint

    def release(changed: str):
        return lambda module: "0" * 16 if module == changed else real(module)
    caplog.set_level(logging.INFO, "pipelines.features")
    caplog.clear()          # in the whole suite the logger may be at INFO already: the first run's lines
    monkeypatch.setattr(code, "fingerprint", release("pipelines.features"))   # a new features stage
    assert _run(path, "--recompute") == first
    assert "incremental:" in caplog.text and "feature state " not in caplog.text
    assert {s: s.read_bytes() for s in states} == before                       # not one state made again
    caplog.clear()
    monkeypatch.setattr(code, "fingerprint", release("pipelines.core.daystate"))  # a new state code
    assert _run(path, "--recompute") == first
    assert caplog.text.count("feature state ") == 37 and "incremental:" in caplog.text
    assert all(s.read_bytes() != before[s] for s in states)                    # each made again, under the new key


def _codecs(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    return {meta.row_group(g).column(c).compression for g in range(meta.num_row_groups) for c in range(meta.num_columns)}


def test_the_states_codec_is_how_not_what(lake, caplog):
    """features.state_compression: the state objects every night folds (the day's totals, the label
    totals) are written with it (auto by default: lz4 in a local lake, zstd on S3), the labelled events
    in the lake's codec; a state written with another codec is read as it is, never made again for it,
    and the features are the same bytes whatever the codecs of the states they read."""
    from pipelines.core.config import load_params

    path, root, layout = lake
    raw = yaml.safe_load(path.read_text())
    assert raw["features"].get("state_compression", "auto") == "auto"
    spec = load_params(path).features
    assert features.state_codec(spec, f"{root}/feature_state/date={DAY}/daily.parquet") == "lz4"     # auto: local lake
    assert features.state_codec(spec, f"s3://lake/feature_state/date={DAY}/daily.parquet") == "zstd"  # auto: S3
    raw["features"]["state_compression"] = "zstd"
    path.write_text(yaml.safe_dump(raw))
    first = _run(path)
    states = path.parent / "lake" / "feature_state"
    objects = [p for p in states.rglob("*.parquet")]
    assert len(objects) >= 37 * 2 and all(_codecs(p) == {"ZSTD"} for p in objects)
    before = {p: p.read_bytes() for p in objects}
    raw["features"]["state_compression"] = "auto"
    path.write_text(yaml.safe_dump(raw))
    caplog.set_level(logging.INFO, "pipelines.features")
    caplog.clear()
    assert _run(path, "--recompute") == first
    assert "incremental:" in caplog.text and "feature state " not in caplog.text   # none made again
    assert {p: p.read_bytes() for p in objects} == before
    lost = states / "date=2026-02-10"            # one made again: auto, in this local lake lz4, beside the others' zstd
    for f in lost.rglob("*"):
        if f.is_file():
            f.unlink()
    assert _run(path, "--recompute") == first
    remade = {p.relative_to(lost).as_posix(): _codecs(p) for p in lost.rglob("*.parquet")}
    folded = {"daily.parquet", "labels.parquet"}            # read by every night: lz4; labelled events: the lake's zstd
    assert folded < set(remade) and all(remade[p] == ({"LZ4"} if p in folded else {"ZSTD"}) for p in remade), remade
    raw["features"]["state_compression"] = "lz4"                  # forced: whatever the lake
    path.write_text(yaml.safe_dump(raw))
    assert features.state_codec(load_params(path).features, "s3://lake/x") == "lz4"
    raw["features"]["state_compression"] = "none"
    path.write_text(yaml.safe_dump(raw))
    assert _run(path, "--from-raw", "--recompute") == first


def test_states_older_than_the_kept_days_are_removed_and_made_again_when_a_date_needs_them(lake, caplog):
    """features.state_keep_days: once a nightly date is published, the states dated more than that
    many days before it are removed (record and objects); re-running an earlier date makes the ones
    it needs again from raw, and its features do not change. A value below the look-back is refused."""
    from pipelines.core.config import ConfigError, load_params

    path, root, layout = lake
    raw = yaml.safe_load(path.read_text())
    raw["features"]["state_keep_days"] = 37
    path.write_text(yaml.safe_dump(raw))
    folder = path.parent / "lake" / "feature_state"

    def dates() -> list[str]:
        return sorted(p.parent.name[5:] for p in folder.glob("*/daily.parquet"))
    first = _run(path)
    assert len(dates()) == 37 and dates()[0] == "2026-01-15"            # DAY - 36: the oldest the night reads
    later = DAY + dt.timedelta(days=3)
    caplog.set_level(logging.INFO, "pipelines.features")
    _run(path, day=later)
    assert dates()[0] == "2026-01-17" and dates()[-1] == str(later)      # later - 37 and older: gone
    assert "2 partition(s) dated 2026-01-15..2026-01-16 removed" in caplog.text
    assert not (folder / "date=2026-01-15").exists()                     # record, labels, labelled events too
    caplog.clear()
    assert _run(path, "--recompute") == first                            # DAY again: its two states made again
    assert "feature state 2026-01-15:" in caplog.text and "incremental:" in caplog.text
    assert dates()[0] == "2026-01-15"                                    # DAY - 37 is older than what it keeps

    for bad in (36, True, "44"):
        raw["features"]["state_keep_days"] = bad
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(ConfigError, match=r"features\.state_keep_days: .* the look-back \(37\)"):
            load_params(path)
    raw["features"]["state_keep_days"] = None                            # keep them all
    path.write_text(yaml.safe_dump(raw))
    params = load_params(path)
    assert params.features.state_keep_days is None
    with storage.Publisher(root, None) as pub:
        assert features.prune_states(params, DAY + dt.timedelta(days=400), pub) == []
    assert dates()[0] == "2026-01-15" and len(dates()) == 40


def test_state_reads_stream_in_order_a_few_frames_ahead_and_fail_where_their_source_is_taken():
    """_streamed: each source's items in order, made in a thread at most `depth` items ahead of
    their use; a source's failure is raised where that source's items are taken, after its items
    made before it; closing stops the thread."""
    import threading
    import time

    made: list[tuple[int, int]] = []

    def source(i: int, fail: bool = False):
        def items():
            for j in range(5):
                made.append((i, j))
                yield i, j
            if fail:
                raise RuntimeError(f"source {i} is broken")
        return items

    parts = features._streamed([source(0), source(1, fail=True), source(2)], depth=2)
    first = next(parts)
    assert next(first) == (0, 0)
    time.sleep(0.3)
    assert len(made) <= 4                           # the one taken, two queued, one waiting to be queued
    assert list(first) == [(0, j) for j in range(1, 5)]
    second = next(parts)
    assert [next(second) for _ in range(5)] == [(1, j) for j in range(5)]
    with pytest.raises(RuntimeError, match="source 1 is broken"):
        next(second)
    with pytest.raises(RuntimeError, match="thread has stopped"):      # more taken after a failure: no wait forever
        next(next(parts))
    parts.close()
    assert (2, 0) not in made                       # nothing is read after the failure

    made.clear()
    parts = features._streamed([source(0), source(1)], depth=2)
    assert next(next(parts)) == (0, 0)
    parts.close()                                   # a night that fails while the states are read
    assert not [t for t in threading.enumerate() if t.name == "features-read"]
    assert len(made) <= 4


def test_state_objects_are_fetched_one_ahead_and_a_failed_fetch_is_raised_where_its_object_is_taken(tmp_path, monkeypatch):
    """_Fetched: object i + 1 is fetched when object i is taken (one ahead, never more), then read and
    checked at its take; a fetch that fails is raised by the take of its own object, after the objects
    before it; close leaves no thread and no folder."""
    import threading

    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(name.encode() * 3)
    asked: list[str] = []
    real = storage.fetch

    def fetch(uri, workdir):
        asked.append(Path(uri).name)
        return real(uri, workdir)
    monkeypatch.setattr(storage, "fetch", fetch)
    hinted: list[str] = []                              # a local file: asked of the OS, not read through here
    monkeypatch.setattr(storage, "will_need", lambda path: hinted.append(Path(path).name))

    class Reader:                                       # local files not known to hold their bytes: read_bytes
        def in_place(self, uri, primary=None):
            return None

        def read_bytes(self, uri, primary=None):
            return storage.read_bytes(uri) + f"@{primary}".encode()

    got = features._Fetched(Reader(), [(str(tmp_path / n), p) for n, p in
                                       (("a", None), ("b", "p"), ("lost", None), ("c", None))])
    folder = Path(got._dir.name)
    got.pending[0].result()
    assert asked == ["a"]                               # the first one, before anything is taken
    assert got.take(0) == b"aaa@None"
    got.pending[1].result()
    assert asked == ["a", "b"]                          # one ahead: not "lost" yet
    assert got.take(1) == b"bbb@p"
    assert isinstance(got.pending[2].exception(), storage.MissingObject)
    assert asked == ["a", "b", "lost"]                  # its failure waits for its take
    assert hinted == ["a", "b"]
    with pytest.raises(storage.MissingObject, match="lost"):
        got.take(2)
    got.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("features-fetch")]
    assert not folder.exists()
    features._Fetched(Reader(), []).close()


def test_a_frame_cut_to_the_runs_is_the_same_whether_it_holds_one_day_or_several():
    """_for_run: a frame of one day (kept whole or dropped, no lookup per row) and a frame of several
    days or with nulls (a lookup per row) give what the lookup gives on every row."""
    d = dt.date(2026, 2, 1)
    runs = features._runs([d, d + dt.timedelta(days=1), d + dt.timedelta(days=2), d + dt.timedelta(days=5)])

    def lookup(frame):
        return frame.filter(pl.col("event_date").is_in(list(runs))).with_columns(
            pl.col("event_date").replace_strict(runs, return_dtype=pl.Date))
    one = pl.DataFrame({"id": ["a", "b"], "event_date": [d + dt.timedelta(days=2)] * 2, "n": [1, 2]})
    cases = {"one day of a run": one,
             "one day of none": one.with_columns(pl.lit(d + dt.timedelta(days=3)).alias("event_date")),
             "several days": pl.DataFrame({"id": ["a", "b", "c"], "n": [1, 2, 3], "event_date": [
                 d + dt.timedelta(days=1), d + dt.timedelta(days=4), d + dt.timedelta(days=5)]}),
             "one day and a null": pl.DataFrame({"id": ["a", "b"], "n": [1, 2], "event_date": [d, None]}),
             "nulls only": pl.DataFrame({"id": ["a"], "n": [1], "event_date": [None]}, schema_overrides={"event_date": pl.Date}),
             "empty": one.clear()}
    for name, frame in cases.items():
        got = features._for_run(frame, "event_date", runs)
        assert got.equals(lookup(frame)) and got.schema == frame.schema, name
    assert features._for_run(one, "event_date", runs)["event_date"].to_list() == [d, d]   # the run's first day
    assert features._for_run(cases["one day of none"], "event_date", runs).height == 0


def test_entity_keys_with_no_entity_name_match_nothing_and_do_not_fail():
    """Keys whose entities are all null (no name to code): a frame's rows match none of them, without an
    error (the entity codes have one value per key, not one in all)."""
    keys = features.EntityKeys(pl.DataFrame({"id": ["a", "b"], "entity": [None, None]},
                                            schema={"id": pl.String, "entity": pl.String}))
    assert keys.names == [] and keys.codes.len() == keys.size == 2
    got = keys.key(pl.DataFrame({"entity": ["customer", None], "id": ["a", "b"], "n": [1, 2]}))
    assert got.height == 0 and got.columns == ["n", "__k"]


def test_a_recomputation_from_raw_that_cannot_fit_fails_before_it_reads(lake, caplog, monkeypatch):
    """--from-raw holds the whole look-back in memory: its rows are counted from the Parquet footers
    first, and over features.from_raw_memory_mb (auto: what the OS says is available) the run fails at
    once, naming the events, the labels and the estimate; nothing is read or published. Within it, the
    same bytes as the incremental path."""
    path, root, layout = lake
    first = DAY - dt.timedelta(days=37)
    events = sum(pl.read_parquet(f"{root}/" + layout["validated"].format(dataset="transactions", date=d.isoformat())).height
                 for d in (first + dt.timedelta(days=k) for k in range(38)))
    labels = sum(pl.read_parquet(f"{root}/" + layout["canonical"].format(dataset="labels", date=d.isoformat())).height
                 for d in (first + dt.timedelta(days=k) for k in range(37)))
    # (this look-back is small: each row counted as a large one, so that 1 MiB is too little)
    monkeypatch.setattr(features, "RAW_EVENT_BYTES", 35_000)
    monkeypatch.setattr(features, "RAW_LABEL_BYTES", 6_000)
    need = (events * 35_000 + labels * 6_000) / 2**20
    assert need > 1
    raw = yaml.safe_load(path.read_text())
    raw["features"]["from_raw_memory_mb"] = 1
    tight = path.with_name("tight.yaml")
    tight.write_text(yaml.safe_dump(raw))
    reads, real = [], features.lineage.Reader.read_parquet
    monkeypatch.setattr(features.lineage.Reader, "read_parquet", lambda *a, **k: reads.append(a) or 1 / 0)
    with pytest.raises(features.TooLarge, match=rf"features {DAY}: recomputed from raw \(--from-raw\), which holds its "
                                                rf"whole look-back in memory: {events:,} events and {labels:,} labels, "
                                                rf"~{features._mib(need)} .* over 1 MiB \(features.from_raw_memory_mb\); "
                                                rf"nothing read. Without --from-raw the date is computed from its day states"):
        features.main(["--params", str(tight), "--date", DAY.isoformat(), "--from-raw"])
    # why from raw, in each path that gets there, and what would serve it instead
    with pytest.raises(features.TooLarge, match=r"\.\.2026-02-20: recomputed from raw \(a range of dates\).*run shorter ranges"):
        features.main(["--params", str(tight), "--start", "2026-02-19", "--end", DAY.isoformat()])
    with monkeypatch.context() as m:
        m.setattr(features, "load_history", lambda *a, **k: (_ for _ in ()).throw(features.NeedRaw("a state is beyond repair")))
        with pytest.raises(features.TooLarge, match=r"recomputed from raw \(the incremental path cannot serve it: a state is "
                                                    r"beyond repair\), which holds"):
            features.main(["--params", str(tight), "--date", DAY.isoformat()])
    assert reads == [] and not (Path(root) / "features").exists()
    # a look-back partition not committed fails the run as it did, not for memory (missing_history: fail)
    gone = f"{root}/" + layout["canonical"].format(dataset="labels", date=(DAY - dt.timedelta(days=3)).isoformat())
    record = Path(storage.record_uri(gone))
    kept = record.read_bytes()
    record.unlink()
    with pytest.raises(features.MissingHistory, match="1 look-back partition.s. missing"):
        features.main(["--params", str(tight), "--date", DAY.isoformat(), "--from-raw"])
    record.write_bytes(kept)
    assert reads == []
    monkeypatch.setattr(features.lineage.Reader, "read_parquet", real)
    # auto: what is available; here a machine with less than the estimate
    raw["features"]["from_raw_memory_mb"] = "auto"
    tight.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(features, "available_mib", lambda: need / 2)
    with pytest.raises(features.TooLarge, match=r"\(the memory available now\); nothing read"):
        features.main(["--params", str(tight), "--date", DAY.isoformat(), "--from-raw"])
    monkeypatch.setattr(features, "available_mib", lambda: need * 2)
    caplog.set_level(logging.INFO, "pipelines.features")
    assert _run(tight, "--from-raw") == _run(path, "--recompute")
    assert f"{events} events and {labels} labels of the look-back" in caplog.text


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_memory_available_is_the_least_the_os_and_the_cgroups_above_leave(tmp_path, version):
    """MemAvailable, or less where the process's memory cgroup or one above it is limited: the limit
    less the working set (used less the inactive page cache, which the kernel reclaims first); no
    limit (v1's huge number, v2's max): MemAvailable."""
    proc, fs = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal: 25165824 kB\nMemAvailable: 20971520 kB\n")       # 20 GiB
    gib = 2**30
    if version == "v1":
        (proc / "self" / "cgroup").write_text("5:cpu,cpuacct:/x\n4:memory:/pool/task\n0::/\n")
        files, base, stat = ("memory.limit_in_bytes", "memory.usage_in_bytes"), fs / "memory", "total_inactive_file"
    else:
        (proc / "self" / "cgroup").write_text("0::/pool/task\n")
        files, base, stat = ("memory.max", "memory.current"), fs, "inactive_file"
    for folder, limit, used, idle in ((base / "pool" / "task", "9223372036854771712" if version == "v1" else "max",
                                       3 * gib, 0),
                                      (base / "pool", str(16 * gib), 14 * gib, 6 * gib)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / files[0]).write_text(limit + "\n")
        (folder / files[1]).write_text(f"{used}\n")
        (folder / "memory.stat").write_text(f"cache 1\n{stat} {idle}\n")
    # the pool above: 16 GiB less 14 used of which 6 are inactive cache = 8 GiB
    assert features.available_mib(proc, fs) == 8 * 1024
    (base / "pool" / "memory.stat").write_text(f"{stat} 0\n")
    assert features.available_mib(proc, fs) == 2 * 1024                   # its cache all active: 16 - 14
    (base / "pool" / files[1]).write_text(f"{17 * gib}\n")
    assert features.available_mib(proc, fs) == 0                          # over its limit: nothing, not less
    (base / "pool" / files[0]).write_text("9223372036854771712\n" if version == "v1" else "max\n")
    assert features.available_mib(proc, fs) == 20 * 1024                  # no limit anywhere: MemAvailable
    (proc / "meminfo").unlink()
    (proc / "self" / "cgroup").unlink()
    assert features.available_mib(proc, fs) is None


def test_the_memory_available_is_what_the_os_says():
    """MemAvailable (and a cgroup's limit where it leaves less): more than nothing, less than the machine."""
    total = next(int(x.split()[1]) / 1024 for x in Path("/proc/meminfo").read_text().splitlines()
                 if x.startswith("MemTotal:"))
    assert 0 < features.available_mib() < total


@pytest.mark.parametrize("broken", ["labels", "states"])
def test_either_fold_failing_fails_the_night_stops_the_other_and_leaves_nothing_on_disk(lake, broken, monkeypatch,
                                                                                      tmp_path):
    """The labels' fold runs in a thread beside the day states' fold: a failure in either is the
    night's error (not lost in a thread), the other fold is stopped and waited for (no thread left
    reading), and the spill and fetch folders are removed."""
    import tempfile
    import threading

    path, root, layout = lake
    _run(path)                                            # the states made, the date published
    monkeypatch.setenv("TMPDIR", str(tmp_path / "spill"))
    (tmp_path / "spill").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)        # TMPDIR read again
    seen = {"labels": 0, "states": 0}
    add = features.Totals.add

    def failing(self, part):
        kind = "labels" if self.labels else "states"
        seen[kind] += 1
        if kind == broken and seen[kind] == 3:
            raise RuntimeError(f"the {kind}' fold broke")
        return add(self, part)
    monkeypatch.setattr(features.Totals, "add", failing)
    from pipelines.core.config import load_params

    params = load_params(str(path))
    with storage.Publisher(root, None) as pub:
        with pytest.raises(RuntimeError, match=f"the {broken}' fold broke"):
            features.load_history(params, DAY, pub)
    assert not [t.name for t in threading.enumerate() if t.name.startswith(("features-labels", "features-read",
                                                                           "features-fetch"))]
    assert list((tmp_path / "spill").iterdir()) == []
    assert seen[broken] == 3
