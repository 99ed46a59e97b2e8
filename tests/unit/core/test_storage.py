"""Storage: deterministic Parquet, atomic local writes, the file object store, staged DVC outputs, a full disk."""
from __future__ import annotations

import errno
import io
import os

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipelines.core import faults, services, storage


def test_parquet_bytes_are_deterministic_and_local_writes_atomic(tmp_path):
    df = pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None]})
    assert storage.parquet_bytes(df) == storage.parquet_bytes(df.clone())
    target = tmp_path / "p" / "part-0.parquet"
    storage.write_bytes(str(target), storage.parquet_bytes(df))
    assert storage.read_parquet(str(target)).equals(df)
    assert [p.name for p in target.parent.iterdir()] == ["part-0.parquet"]     # no temp file left
    with pytest.raises(storage.MissingObject):
        storage.read_bytes(str(tmp_path / "nope"))


def test_a_partition_writes_parquet_through_a_staged_file_with_the_bytes_of_parquet_bytes(tmp_path, monkeypatch):
    """Partition.put_parquet encodes into a file beside the object (hashed as written, one row group
    at a time) and renames it into place: the bytes of parquet_bytes, its sha256 in the record, no
    temporary left; also with several row groups, nulls, and a categorical column."""
    import datetime as dt

    from pipelines.core import lineage

    monkeypatch.setitem(storage.PARQUET, "row_group_size", 100)
    n = 1050
    frames = {
        "plain": pl.DataFrame({"id": [f"event-{i:08d}-with-a-long-id" if i % 7 else None for i in range(n)],
                               "x": [i / 3 if i % 5 else None for i in range(n)],
                               "d": [dt.date(2026, 1, 1) + dt.timedelta(days=i % 40) for i in range(n)]}),
        "categorical": pl.DataFrame({"c": ["a", "b", "c"] * (n // 3)}, schema={"c": pl.Categorical}),
        "nested categorical": pl.DataFrame({"c": ["a", "b", "c"] * (n // 3)}, schema={"c": pl.Categorical})
        .select(pl.struct("c").alias("s")),
    }
    for name, df in frames.items():
        uri = str(tmp_path / "lake" / name / "part-0.parquet")
        with storage.Publisher(str(tmp_path / "lake"), None) as pub:
            part = pub.partition(uri, "features")
            part.put_parquet(uri, df)
            part.commit()
        data = storage.read_bytes(uri)
        assert data == storage.parquet_bytes(df), name
        if name != "categorical" and name != "nested categorical":    # the values make the bytes, not the chunks
            assert data == storage.parquet_bytes(df.rechunk()), name
        assert lineage.Reader().record(uri)["objects"][uri] == storage.sha256(data), name
        assert sorted(p.name for p in (tmp_path / "lake" / name).iterdir()) == \
            ["_lineage.part-0.parquet.json", "part-0.parquet"], name
    assert pl.read_parquet(str(tmp_path / "lake" / "plain" / "part-0.parquet")).equals(frames["plain"])
    assert pq.ParquetFile(str(tmp_path / "lake" / "plain" / "part-0.parquet")).metadata.num_row_groups == 11


def test_a_codec_named_compresses_every_column_with_it_on_every_writer_path(tmp_path, monkeypatch):
    """parquet_bytes(df, codec) / Partition.put_parquet(uri, df, codec): the same values back, the
    named codec on every column chunk (polars' writer, pyarrow's for a dictionary column and for a
    nested one in row groups), the same bytes twice; PARQUET's zstd when none is named."""
    monkeypatch.setitem(storage.PARQUET, "row_group_size", 100)
    n = 450
    frames = {"plain": pl.DataFrame({"id": [f"e{i}" for i in range(n)], "x": [i / 7 for i in range(n)]}),
              "categorical": pl.DataFrame({"c": ["a", "b", "c"] * (n // 3)}, schema={"c": pl.Categorical}),
              "nested": pl.DataFrame({"l": [[i, i + 1] for i in range(n)]})}
    want = {None: "ZSTD", "zstd": "ZSTD", "lz4": "LZ4", "none": "UNCOMPRESSED"}
    for name, df in frames.items():
        for codec, expected in want.items():
            data = storage.parquet_bytes(df, codec)
            assert data == storage.parquet_bytes(df, codec), (name, codec)
            meta = pq.ParquetFile(io.BytesIO(data)).metadata
            got = {meta.row_group(g).column(c).compression for g in range(meta.num_row_groups)
                   for c in range(meta.num_columns)}
            assert got == {expected}, (name, codec, got)
            assert pl.read_parquet(io.BytesIO(data)).equals(df), (name, codec)
    uri = str(tmp_path / "lake" / "s" / "part-0.parquet")
    with storage.Publisher(str(tmp_path / "lake"), None) as pub:
        part = pub.partition(uri, "features")
        part.put_parquet(uri, frames["plain"], "lz4")
        part.commit()
    assert storage.read_bytes(uri) == storage.parquet_bytes(frames["plain"], "lz4")
    with pytest.raises(ValueError, match="unknown Parquet codec 'gzip'"):
        storage.parquet_bytes(frames["plain"], "gzip")


def test_a_parquet_file_staged_in_a_thread_has_the_same_bytes_and_leaves_nothing_behind(tmp_path, monkeypatch):
    """staging_parquet encodes in a thread while the caller goes on: the file and sha256 of
    staged_parquet; moved, it is published; not asked for, or the block failing, nothing is left
    beside the object; the encoder's error is raised where the file is asked for."""
    monkeypatch.setitem(storage.PARQUET, "row_group_size", 100)
    df = pl.DataFrame({"id": [f"e{i}" for i in range(1050)], "x": [i / 7 for i in range(1050)]})
    folder = tmp_path / "lake" / "features"
    uri = str(folder / "part-0.parquet")
    with storage.staging_parquet(uri, df) as encoded:
        path, sha = encoded()
        assert path.read_bytes() == storage.parquet_bytes(df) and sha == storage.sha256(path.read_bytes())
        storage.put_file(uri, path, move=True)
    assert [p.name for p in folder.iterdir()] == ["part-0.parquet"]
    with storage.staging_parquet(str(folder / "part-1.parquet"), df):
        pass                                               # not asked for: removed all the same
    with pytest.raises(ValueError, match="the check failed"):
        with storage.staging_parquet(str(folder / "part-1.parquet"), df) as encoded:
            raise ValueError("the check failed")
    assert [p.name for p in folder.iterdir()] == ["part-0.parquet"]
    monkeypatch.setattr(storage, "parquet_file", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(storage.StorageError, match="part-1.parquet: write failed: disk full"):
        with storage.staging_parquet(str(folder / "part-1.parquet"), df) as encoded:
            encoded()
    assert [p.name for p in folder.iterdir()] == ["part-0.parquet"]


def test_parquet_bytes_follow_the_values_not_how_the_frame_is_chunked(tmp_path, monkeypatch):
    """A frame whose columns are cut at other rows than its row groups (and than each other) is written
    with the bytes of the same values in one piece (pyarrow cut pages where the chunks it was given
    started; polars' writer, used now, does not); the staged file has them too."""
    monkeypatch.setitem(storage.PARQUET, "row_group_size", 100_000)
    n = 300_000
    a = pl.Series("a", range(n))
    s = pl.Series("s", [f"value-{i * 7919 % 1000003:09d}" for i in range(n)])
    df = pl.DataFrame([pl.concat([a[:150_001], a[150_001:]], rechunk=False),
                       pl.concat([s[:100_000], s[100_000:150_001], s[150_001:]], rechunk=False)])
    assert df["s"].n_chunks() == 3
    whole = storage.parquet_bytes(df.rechunk())
    assert storage.parquet_bytes(df) == whole
    assert storage.parquet_file(df, tmp_path / "f.parquet") == storage.sha256(whole)
    assert (tmp_path / "f.parquet").read_bytes() == whole
    # a list column (polars' writer would give other bytes for a chunk that starts inside a row group)
    lists = pl.DataFrame({"a": a, "l": [[i % 5] for i in range(n)]})
    cut = pl.concat([lists.slice(0, 1_000), lists.slice(1_000)], rechunk=False)
    assert storage.parquet_bytes(cut) == storage.parquet_bytes(lists.rechunk())


def test_the_file_object_store_maps_buckets_to_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAUDOPS_OBJECT_STORE", f"file://{tmp_path}")
    assert storage.ensure_bucket("lake") == "s3://lake" and (tmp_path / "lake").is_dir()
    storage.write_bytes("s3://lake/x/date=1/part-0.parquet", b"1")
    storage.write_bytes("s3://lake/x/date=1/_hidden.json", b"{}")
    assert (tmp_path / "lake" / "x" / "date=1" / "part-0.parquet").read_bytes() == b"1"
    assert storage.list_uris("s3://lake/x") == ["s3://lake/x/date=1/part-0.parquet"]
    assert storage.exists("s3://lake/x/date=1/part-0.parquet") and not storage.is_s3("s3://lake/x")
    with pytest.raises(storage.MissingObject):
        storage.read_bytes("s3://lake/nope")
    monkeypatch.setenv("FRAUDOPS_OBJECT_STORE", "ftp://x")
    with pytest.raises(storage.StorageError, match="expected s3 or file"):
        storage.object_root()


def test_a_failed_stage_leaves_no_partial_dvc_output(tmp_path):
    snap = tmp_path / "data" / "stage"
    with pytest.raises(RuntimeError):
        with storage.Publisher(str(tmp_path / "lake"), snap) as pub:
            pub.put(f"{tmp_path}/lake/a/one.json", b"1")
            raise RuntimeError("bad data")
    assert not snap.exists() and not list(snap.parent.iterdir())
    with storage.Publisher(str(tmp_path / "lake"), snap) as pub:
        pub.put(f"{tmp_path}/lake/a/one.json", b"1")
    assert (snap / "a" / "one.json").read_bytes() == b"1"


def test_a_full_disk_is_one_storage_error_and_no_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setenv(faults.ENV, f"storage.write@{tmp_path}/lake/a=enospc")
    with pytest.raises(storage.StorageError, match=r"disk full \(ENOSPC\); nothing published there"):
        storage.write_bytes(f"{tmp_path}/lake/a/x.json", b"1")
    assert list((tmp_path / "lake" / "a").iterdir()) == []
    storage.write_bytes(f"{tmp_path}/lake/b/x.json", b"1")        # another path: no fault
    # the disk fills while a partition's Parquet is encoded into its staged file: the same one error
    real = storage._HashingFile.__init__

    class Full:                                 # the staged file's disk: full past its first bytes
        def __init__(self, fh) -> None:
            self.fh = fh

        def write(self, data) -> int:
            if self.fh.tell() + len(data) > 100:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    def full(self, path) -> None:
        real(self, path)
        self.fh = Full(self.fh)
    monkeypatch.delenv(faults.ENV)
    monkeypatch.setattr(storage._HashingFile, "__init__", full)
    uri = f"{tmp_path}/lake/c/part-0.parquet"
    with storage.Publisher(f"{tmp_path}/lake", None) as pub:
        part = pub.partition(uri, "features")
        with pytest.raises(storage.StorageError, match=r"lake/c/part-0.parquet: write failed: disk full"):
            part.put_parquet(uri, pl.DataFrame({"a": [f"row {i}" for i in range(5000)]}))
    assert list((tmp_path / "lake" / "c").iterdir()) == []                # nothing published, no temporary
    assert services.explain(OSError(errno.ENOSPC, "No space left", "/x"), "features").startswith("disk full")


def test_delete_prefix_removes_hidden_objects_too(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAUDOPS_OBJECT_STORE", f"file://{tmp_path}")
    for name in ("a/x.parquet", "a/_lineage.x.parquet.json", "a/b/.hidden", "keep/y.json"):
        storage.write_bytes(f"s3://lake/{name}", b"1")
    assert storage.delete_prefix("s3://lake/a") == 3
    assert not (tmp_path / "lake" / "a").exists() and storage.exists("s3://lake/keep/y.json")
    assert storage.delete_prefix("s3://lake/none") == 0


def test_the_parquet_sink_writes_in_a_thread_the_bytes_of_a_plain_writer_and_raises_its_errors(tmp_path):
    """The sink's writer thread gives the file a synchronous writer makes from the same batches;
    a batch the writer refuses is raised by the next write or by close, and nothing is published."""
    import pyarrow.parquet as pq

    batches = [pl.DataFrame({"event_id": [f"e{i}-{k}" for k in range(1000)], "score": [k / 1000 for k in range(1000)]})
               for i in range(5)]
    sink = storage.ParquetSink(str(tmp_path / "out" / "a.parquet"), tmp_path)
    for b in batches:
        sink.write(b)
    sink.close()
    assert storage.dictionary_columns(batches[0].with_columns(pl.lit("v1").alias("model")).to_arrow()) == ["model"]
    with pq.ParquetWriter(str(tmp_path / "b.parquet"), batches[0].to_arrow().schema, compression="zstd",
                          compression_level=1, write_statistics=["score"],
                          use_dictionary=storage.dictionary_columns(batches[0].to_arrow())) as w:
        for b in batches:
            w.write_table(b.to_arrow(), row_group_size=1_000_000)
    assert (tmp_path / "out" / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    # min/max only where they can prune a read: the numbers, not the ids (random within a batch)
    rg = pq.ParquetFile(tmp_path / "out" / "a.parquet").metadata.row_group(0)
    assert rg.column(1).statistics.has_min_max and rg.column(1).statistics.min == 0.0
    assert rg.column(0).statistics is None or not rg.column(0).statistics.has_min_max
    assert pl.read_parquet(tmp_path / "out" / "a.parquet").equals(pl.concat(batches))
    assert not sink.thread.is_alive()
    with pytest.raises(storage.StorageError, match="after the sink was closed"):
        sink.write(batches[0])                      # nothing is lost silently, nothing hangs
    cat = pl.DataFrame({"c": pl.Series(["a", "b"] * 50, dtype=pl.Categorical), "n": pl.Series([None] * 100)})
    assert storage.dictionary_columns(cat.to_arrow()) == ["c", "n"]
    odd = storage.ParquetSink(str(tmp_path / "out" / "odd.parquet"), tmp_path)
    odd.write(cat)
    odd.close()
    assert pl.read_parquet(tmp_path / "out" / "odd.parquet")["c"].cast(pl.String).equals(cat["c"].cast(pl.String))

    bad = storage.ParquetSink(str(tmp_path / "out" / "c.parquet"), tmp_path)
    bad.write(batches[0])
    with pytest.raises(storage.StorageError, match="another schema"):
        bad.write(batches[1].with_columns(pl.col("score").cast(pl.String)))   # not the file's schema
    bad.abort()
    assert not (tmp_path / "out" / "c.parquet").exists() and not bad.thread.is_alive()
    full = storage.ParquetSink(str(tmp_path / "out" / "e.parquet"), tmp_path)
    full.write(batches[0])
    full.queue.put("not a table")                   # what the writer thread cannot write
    with pytest.raises(Exception):
        full.close()                                # the thread works one behind: close raises its error
    assert not (tmp_path / "out" / "e.parquet").exists() and not full.thread.is_alive()
    with pytest.raises(RuntimeError), storage.ParquetSink(str(tmp_path / "out" / "d.parquet"), tmp_path) as s:
        s.write(batches[0])
        raise RuntimeError("the stage failed between two batches")
    assert not s.thread.is_alive() and not (tmp_path / "out" / "d.parquet").exists()


def test_a_sink_in_a_partition_records_the_sha256_of_the_bytes_published_moved_or_copied(tmp_path, monkeypatch):
    """The sink hashes its file as it writes it: the record names the sha256 of the published bytes.
    On a local lake the file is moved into place (nothing left in the work folder); where a rename is
    refused (another filesystem) it is copied, with the same bytes and record."""
    import os

    from pipelines.core import lineage

    batches = [pl.DataFrame({"event_id": [f"e{i}-{k}" for k in range(3000)], "score": [k / 7 for k in range(3000)]})
               for i in range(4)]
    renames = []
    real = os.replace

    def refusing(src, dst):                        # the sink's move refused; every other rename as always
        if str(src).endswith(".parquet") and "sink-" in str(src):
            renames.append(str(dst))
            raise OSError(18, "Invalid cross-device link")
        return real(src, dst)

    shas = []
    for refuse in (False, True):
        if refuse:
            monkeypatch.setattr(storage.os, "replace", refusing)
        lake, work = tmp_path / f"lake{refuse}", tmp_path / f"work{refuse}"
        work.mkdir()
        uri = str(lake / "predictions" / "date=2026-01-01" / "part-0.parquet")
        with storage.Publisher(str(lake), None) as pub:
            part = pub.partition(uri, "score")
            with storage.ParquetSink(uri, work, part) as sink:
                for b in batches:
                    sink.write(b)
                sink.close()
            part.commit()
        recorded = lineage.Reader().record(uri)["objects"][uri]
        assert recorded == storage.sha256_file(uri), refuse
        assert pl.read_parquet(uri).equals(pl.concat(batches))
        assert list(work.iterdir()) == ([] if not refuse else [sink.path])   # moved, or copied and left
        shas.append(recorded)
    assert renames and shas[0] == shas[1]


def test_the_sink_delta_encodes_timestamps_and_never_gives_them_a_dictionary(tmp_path):
    """Timestamps (in event order, small deltas) are written DELTA_BINARY_PACKED, even a batch of one
    repeated time that would otherwise take a dictionary; they read back the same."""
    import datetime as dt

    import pyarrow.parquet as pq

    t0 = dt.datetime(2026, 2, 14)
    batches = [pl.DataFrame({"event_ts": [t0 + dt.timedelta(seconds=k) for k in range(i * 50, i * 50 + 50)],
                             "n": list(range(50))}) for i in range(3)]
    same = pl.DataFrame({"event_ts": [t0] * 50, "n": [1] * 50})
    for name, frames in (("a", batches), ("b", [same, *batches])):
        sink = storage.ParquetSink(str(tmp_path / "out" / f"{name}.parquet"), tmp_path, plain_schema=True)
        for b in frames:
            sink.write(b)
        sink.close()
        md = pq.ParquetFile(tmp_path / "out" / f"{name}.parquet").metadata
        encodings = {e for g in range(md.num_row_groups) for e in md.row_group(g).column(0).encodings}
        assert "DELTA_BINARY_PACKED" in encodings and not encodings & {"RLE_DICTIONARY", "PLAIN_DICTIONARY"}
        assert pl.read_parquet(tmp_path / "out" / f"{name}.parquet").equals(pl.concat(frames))
    assert storage.delta_columns(same.to_arrow()) == ["event_ts"]


def test_iter_parquet_gives_exact_batches_in_file_order_with_the_columns_asked_for(tmp_path):
    df = pl.DataFrame({"a": list(range(10_000)), "b": [str(i) for i in range(10_000)],
                       "c": [[str(i)] if i % 3 else [] for i in range(10_000)]})
    storage.write_bytes(str(tmp_path / "x.parquet"), storage.parquet_bytes(df))
    for streaming in (False, True):
        got = list(storage.iter_parquet(tmp_path / "x.parquet", batch_rows=999, streaming=streaming))
        assert [g.height for g in got] == [999] * 10 + [10] and pl.concat(got).equals(df)
        only = list(storage.iter_parquet(tmp_path / "x.parquet", ["b"], batch_rows=4096, streaming=streaming))
        assert [g.columns for g in only] == [["b"]] * 3 and pl.concat(only)["b"].equals(df["b"])


def test_iter_parquet_reads_row_groups_by_polars_and_large_or_other_typed_ones_by_pyarrow(tmp_path, monkeypatch):
    """Row groups decoded by polars give the frames pyarrow's batches give; a row group above
    GROUP_BYTES is read in pyarrow's batches, as is a file whose types polars' reader gives otherwise
    than pyarrow (a date64 column); a file's bytes in memory as well."""
    import datetime as dt
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    df = pl.DataFrame({"a": list(range(5_000)), "s": [f"x{i % 7}" for i in range(5_000)],
                       "f": pl.Series([i / 3 if i % 5 else None for i in range(5_000)], dtype=pl.Float32),
                       "l": [[str(i)] if i % 3 else [] for i in range(5_000)]})
    path = tmp_path / "g.parquet"
    pq.write_table(df.to_arrow(), path, row_group_size=1_000)
    pyarrow = pl.concat([pl.from_arrow(b) for b in pq.ParquetFile(path).iter_batches(batch_size=700)])
    read = []
    real = pl.LazyFrame.collect
    monkeypatch.setattr(pl.LazyFrame, "collect", lambda self, *a, **k: read.append(1) or real(self, *a, **k))

    def batches(source, columns=None):
        read.clear()
        got = list(storage.iter_parquet(source, columns, batch_rows=700))
        assert [g.height for g in got] == [700] * 7 + [100]
        return pl.concat(got), len(read)

    got, groups = batches(path)
    assert got.equals(pyarrow) and groups == 5                      # five row groups, each read by polars
    got, _ = batches(io.BytesIO(path.read_bytes()), ["f", "a"])
    assert got.equals(pyarrow.select("f", "a"))
    odd = tmp_path / "a[b]*" / "g.parquet"                          # a path, not a glob
    odd.parent.mkdir()
    odd.write_bytes(path.read_bytes())
    assert batches(odd)[0].equals(pyarrow)
    assert pl.concat(list(storage.iter_parquet(odd, batch_rows=700, streaming=True))).equals(pyarrow)
    monkeypatch.setattr(storage, "GROUP_BYTES", pq.ParquetFile(path).metadata.row_group(0).total_byte_size - 1)
    got, groups = batches(path)
    assert got.equals(pyarrow) and groups == 0                      # each above the bound: pyarrow's batches
    monkeypatch.undo()
    other = tmp_path / "d.parquet"           # a date64 column: pyarrow gives a Date, polars' reader a Datetime
    pq.write_table(df.to_arrow().append_column("d", pa.array([dt.date(2026, 1, 1)] * 5_000, pa.date64())), other,
                   row_group_size=1_000)
    got, groups = batches(other)
    assert groups == 0 and got.schema["d"] == pl.Date and pl.scan_parquet(other).collect_schema()["d"] != pl.Date
    assert got.drop("d").equals(pyarrow)


def test_scratch_folders_of_killed_processes_are_swept_and_removed_later_is_waited_for(tmp_path, monkeypatch):
    """scratch_dir removes the folders of its kind left by a process that is gone and untouched for
    SCRATCH_S (kill -9 runs no cleanup); a live process's folder, a recent one, another kind's and
    another host's (a shared $TMPDIR) are kept. remove_later removes a folder in a thread; removed() waits for it."""
    import os
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead = int(gone.stdout)
    old = time.time() - storage.SCRATCH_S - 60
    folders = {}
    import hashlib
    import socket

    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    for name, pid, age in (("dead-old", dead, old), ("dead-new", dead, None), ("alive", os.getppid(), old),
                           ("other-kind", dead, old), ("other-host", dead, old)):
        kind = "features-fetch" if name == "other-kind" else "features-history"
        f = tmp_path / f"fraudops-{kind}-{pid}.{'0' * 8 if name == 'other-host' else host}-{name}"
        (f / "sub").mkdir(parents=True)
        (f / "sub" / "spill.arrow").write_bytes(b"x" * 100)
        if age:
            os.utime(f, (age, age))
        folders[name] = f
    mine = storage.scratch_dir("features-history")
    assert Path(mine.name).name.startswith(f"fraudops-features-history-{os.getpid()}.{host}-")
    assert [n for n, f in folders.items() if f.exists()] == ["dead-new", "alive", "other-kind", "other-host"]
    (Path(mine.name) / "a").write_bytes(b"y" * 1000)
    storage.remove_later(mine)
    storage.removed()
    assert not Path(mine.name).exists()


class _RangedS3:
    """get_object with Range (bytes=-N, bytes=a-b) over objects in memory, as S3 answers it (ContentRange,
    ETag); `swap` replaces an object after its first read; every range asked is kept."""

    def __init__(self, objects: dict[str, bytes], swap: dict[str, bytes] | None = None) -> None:
        self.objects, self.swap, self.asked = dict(objects), dict(swap or {}), []

    def get_object(self, Bucket, Key, Range):
        import hashlib
        import io

        data = self.objects[Key]
        if Key in self.swap:
            self.objects[Key] = self.swap.pop(Key)
        spec = Range.removeprefix("bytes=")
        lo, hi = (max(0, len(data) - int(spec[1:])), len(data) - 1) if spec.startswith("-") else \
            tuple(int(x) for x in spec.split("-"))
        self.asked.append(hi - lo + 1)
        return {"Body": io.BytesIO(data[lo:hi + 1]), "ContentRange": f"bytes {lo}-{hi}/{len(data)}",
                "ETag": hashlib.md5(data).hexdigest()}


def test_parquet_rows_reads_the_footer_alone_and_names_an_object_it_cannot_read(monkeypatch, tmp_path):
    """The rows of a Parquet object from its footer: a local file, or on S3 two ranged reads of the
    tail (the object itself is never downloaded); a damaged footer, a footer length beyond the
    object, an object too small, one replaced between the two reads: a StorageError naming it."""
    frame = pl.DataFrame({"a": range(5000), "b": [f"x{i}" for i in range(5000)]})
    good = storage.parquet_bytes(frame)
    local = tmp_path / "part-0.parquet"
    local.write_bytes(good)
    assert storage.parquet_rows(str(local)) == 5000
    n = int.from_bytes(good[-8:-4], "little")
    damaged = good[:-n - 8] + bytes(n) + good[-8:]
    too_long = good[:-8] + (len(good) + 10).to_bytes(4, "little") + b"PAR1"
    fake = _RangedS3({"good": good, "damaged": damaged, "too_long": too_long, "tiny": b"PAR1",
                      "swapped": good}, swap={"swapped": storage.parquet_bytes(frame.head(10))})
    monkeypatch.setattr(storage, "s3_client", lambda: fake)
    monkeypatch.setenv("FRAUDOPS_OBJECT_STORE", "s3")            # (the suite's file object store: not here)
    assert storage.parquet_rows("s3://b/good") == 5000
    assert fake.asked == [8, n + 8] and n + 8 < len(good) / 4        # the tail only
    for key, why in (("damaged", "thrift|deserial|Couldn"), ("too_long", f"a footer of {len(good) + 10} bytes"),
                     ("tiny", "no footer"), ("swapped", "changed between two reads")):
        fake.asked.clear()
        with pytest.raises(storage.StorageError, match=rf"s3://b/{key}: its Parquet footer cannot be read \(.*({why})"):
            storage.parquet_rows(f"s3://b/{key}")
        assert sum(fake.asked) <= n + 16, key                        # never the whole object
    local.write_bytes(b"not parquet at all")
    with pytest.raises(storage.StorageError, match="part-0.parquet: its Parquet footer cannot be read"):
        storage.parquet_rows(str(local))


@pytest.mark.skipif(not hasattr(os, "POSIX_FADV_WILLNEED"), reason="no posix_fadvise here: read_ahead does nothing")
def test_read_ahead_asks_the_os_for_the_local_files_that_are_there(tmp_path, monkeypatch):
    """storage.read_ahead: WILLNEED asked for each local file there is, in a thread; a missing file
    and an object on S3 are passed over (a hint, never an error)."""
    import threading

    from pipelines.core import storage

    advised = []

    def fadvise(fd, offset, length, advice):
        advised.append((os.fstat(fd).st_ino, advice))
    monkeypatch.setattr(os, "posix_fadvise", fadvise, raising=False)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    a.write_bytes(b"x")
    b.write_bytes(b"y")
    storage.read_ahead([str(a), str(tmp_path / "missing.parquet"), "s3://bucket/key.parquet", str(b)])
    for t in [t for t in threading.enumerate() if t.name == "read-ahead"]:
        t.join(timeout=10)
    assert advised == [(a.stat().st_ino, os.POSIX_FADV_WILLNEED), (b.stat().st_ino, os.POSIX_FADV_WILLNEED)]
    advised.clear()
    storage.will_need(a)                                 # one file, in the caller's thread
    storage.will_need(tmp_path / "missing.parquet")
    assert advised == [(a.stat().st_ino, os.POSIX_FADV_WILLNEED)]


def test_frames_polars_writer_cannot_take_go_through_pyarrow_and_read_back_the_same(tmp_path):
    """polars' writer takes flat plain columns; a Null column, a list, an Enum (also in a list) and an
    Arrow table go through pyarrow. Each reads back with its values and, where the frame is plain, the same bytes
    on every write."""
    import pyarrow as pa

    plain = pl.DataFrame({"id": ["a", "b", None], "x": [1.5, None, 2.0],
                          "t": pl.Series([1, 2, 3]).cast(pl.Datetime("us"))})
    assert all(storage._polars_writes(t) for t in plain.schema.dtypes())
    assert storage.parquet_bytes(plain) == storage.parquet_bytes(plain.clone())
    assert pl.read_parquet(storage.parquet_bytes(plain)).equals(plain)
    enum = pl.Enum(["no", "yes"])
    for other in [plain.with_columns(pl.lit(None).alias("n")), plain.with_columns(pl.Series("l", [["p"], [], None])),
                  plain.with_columns(pl.Series("e", ["no", "yes", None], dtype=enum)),
                  plain.with_columns(pl.Series("le", [["no"], [], None], dtype=pl.List(enum)))]:
        assert not all(storage._polars_writes(t) for t in other.schema.dtypes())
        back, last = pl.read_parquet(storage.parquet_bytes(other)), other.columns[-1]
        assert back.drop(last).equals(plain)
        as_text = pl.List(pl.String) if last in ("l", "le") else pl.String
        assert back[last].cast(as_text).to_list() == other[last].cast(as_text).to_list()
    table = pa.table({"a": [1, 2]})
    assert pl.read_parquet(storage.parquet_bytes(table))["a"].to_list() == [1, 2]
