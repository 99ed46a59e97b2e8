"""Lineage records, the file object store, staged DVC outputs, fail points and one-line service
errors: the mechanisms the hardening rests on, on local files."""
from __future__ import annotations

import errno

import pytest

from pipelines import faults, lineage, services, storage


def commit(lake, name: str, data: bytes, inputs: dict | None = None, companions: dict | None = None) -> str:
    uri = f"{lake}/{name}/part-0.parquet"
    with storage.Publisher(str(lake)) as pub:
        part = pub.partition(uri, "test", inputs=inputs)
        for k, v in (companions or {}).items():
            part.put(f"{lake}/{name}/{k}", v)
        part.put(uri, data)
        part.commit()
    return uri


def sha(data: bytes) -> str:
    return storage.sha256(data)


def test_a_partition_is_trusted_only_with_its_record_and_its_bytes(tmp_path):
    a = commit(tmp_path, "a", b"A", companions={"_manifest.json": b"{}"})
    r = lineage.Reader()
    assert r.read_bytes(a) == b"A" and r.read_json(f"{tmp_path}/a/_manifest.json", primary=a) == {}
    assert r.consumed == {a: sha(b"A")}                      # a companion is consumed as its partition
    storage.local_path(a).write_bytes(b"B")                  # altered after the commit
    with pytest.raises(lineage.StaleInput, match="changed since it was committed"):
        lineage.Reader().read_bytes(a)
    storage.delete(storage.record_uri(a))                    # withdrawn (or a publish that did not finish)
    with pytest.raises(lineage.NotCommitted, match="no committed partition"):
        lineage.Reader().read_bytes(a)
    assert not lineage.Reader().exists(a)


def test_a_withdrawn_or_changed_input_invalidates_everything_made_from_it(tmp_path):
    a = commit(tmp_path, "a", b"A")
    b = commit(tmp_path, "b", b"B", inputs={a: sha(b"A")})
    c = commit(tmp_path, "c", b"C", inputs={a: sha(b"A"), b: sha(b"B")})       # a diamond
    assert lineage.Reader().record(c)["objects"] == {c: sha(b"C")}
    commit(tmp_path, "a", b"A")                                                 # the same bytes again: still valid
    lineage.Reader().record(c)
    commit(tmp_path, "a", b"A2")                                                # other bytes: everything after is stale
    with pytest.raises(lineage.StaleInput, match=r"c/part-0.parquet: built from .*a/part-0.parquet, which has changed"):
        lineage.Reader().record(c)
    with pytest.raises(lineage.StaleInput, match="re-run test"):
        lineage.Reader().record(b)
    with storage.Publisher(str(tmp_path)) as pub:
        pub.remove(a)
    with pytest.raises(lineage.StaleInput, match="b/part-0.parquet: built from .*, which has since been withdrawn"):
        lineage.Reader().record(b)
    commit(tmp_path, "a", b"A")                             # back to what b was made from: b is valid again
    d = commit(tmp_path, "d", b"D", inputs={b: sha(b"B")})
    lineage.Reader().record(d)
    storage.delete(storage.record_uri(a))                   # a withdrawn: d is two steps away from it
    with pytest.raises(lineage.StaleInput, match=r"d/part-0.parquet: built from .*b/part-0.parquet, which is no longer "
                                                 r"valid \(.*a/part-0.parquet, which has since been withdrawn"):
        lineage.Reader().record(d)


def test_a_long_chain_is_verified_without_recursion(tmp_path):
    prev = commit(tmp_path, "p0", b"0")
    for i in range(1, 1500):
        prev = commit(tmp_path, f"p{i}", str(i).encode(), inputs={prev: sha(str(i - 1).encode())})
    assert lineage.Reader().record(prev)["stage"] == "test"


def test_a_republish_keeps_the_partition_readable_and_never_mixed(tmp_path):
    a = commit(tmp_path, "a", b"A", companions={"m.json": b"1"})
    with storage.Publisher(str(tmp_path)) as pub:
        part = pub.partition(a, "test")
        part.put(f"{tmp_path}/a/m.json", b"1")                 # the same bytes: still the committed partition
        assert lineage.Reader().read_bytes(a) == b"A"
        part.put(a, b"A2")                                      # other bytes before the new record: refused
        with pytest.raises(lineage.StaleInput, match="changed since it was committed"):
            lineage.Reader().read_bytes(a)
        part.commit()
    assert lineage.Reader().read_bytes(a) == b"A2"


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


def test_fail_points_parse_paths_with_equals_signs(monkeypatch):
    monkeypatch.setenv(faults.ENV, "a=raise;b@date=2026-01-01=raise")
    with pytest.raises(RuntimeError, match="fail point a"):
        faults.point("a")
    faults.point("b", path="x/date=2026-01-02/")
    with pytest.raises(RuntimeError, match="fail point b"):
        faults.point("b", path="x/date=2026-01-01/part")
    monkeypatch.delenv(faults.ENV)
    faults.point("a")


def test_without_a_tracking_uri_the_registry_check_says_how_to_start_the_stack(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(services.ServiceUnavailable, match="the local stack is not running: python -m pipelines stack up"):
        services.require_registry()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv(services.STACK_URL_VAR, "http://127.0.0.1:9")
    monkeypatch.setenv("FRAUDOPS_HOME", str(tmp_path))
    with pytest.raises(services.ServiceUnavailable, match="the local stack is not running"):
        services.require_registry()
    monkeypatch.setenv(services.STACK_URL_VAR, "http://127.0.0.1:5500")   # not the stack's: an outage
    assert services.require_registry(optional=True) is None
    with pytest.raises(services.ServiceUnavailable, match="MLflow at http://127.0.0.1:9 is not reachable"):
        services.require_registry()
    monkeypatch.setenv("FRAUDOPS_OBJECT_STORE", f"file://{tmp_path}/none")
    with pytest.raises(services.ServiceUnavailable, match="not running"):
        services.require_lake("s3://fraudops-lake")
    services.require_lake(str(tmp_path))                                  # a local lake needs no service
