"""Storage: deterministic Parquet, atomic local writes, the file object store, staged DVC outputs, a full disk."""
from __future__ import annotations

import errno

import polars as pl
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
    assert services.explain(OSError(errno.ENOSPC, "No space left", "/x"), "features").startswith("disk full")


def test_delete_prefix_removes_hidden_objects_too(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAUDOPS_OBJECT_STORE", f"file://{tmp_path}")
    for name in ("a/x.parquet", "a/_lineage.x.parquet.json", "a/b/.hidden", "keep/y.json"):
        storage.write_bytes(f"s3://lake/{name}", b"1")
    assert storage.delete_prefix("s3://lake/a") == 3
    assert not (tmp_path / "lake" / "a").exists() and storage.exists("s3://lake/keep/y.json")
    assert storage.delete_prefix("s3://lake/none") == 0
