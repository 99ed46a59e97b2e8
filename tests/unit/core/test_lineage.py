"""Lineage records, the file object store, staged DVC outputs, fail points and one-line service
errors: the mechanisms the hardening rests on, on local files."""
from __future__ import annotations

import pytest

from pipelines.core import lineage, storage


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



def test_a_memo_fetches_committed_bytes_once_and_rereads_a_republished_object(tmp_path, monkeypatch):
    import polars as pl

    def frame(ids):
        return storage.parquet_bytes(pl.DataFrame({"event_id": ids, "x": [1] * len(ids)}))

    a = commit(tmp_path, "a", frame(["e1", "e2"]))
    fetched = []
    real, checked = storage.read_bytes, storage.read_checked
    monkeypatch.setattr(storage, "read_checked", lambda uri, want: fetched.append(uri) or checked(uri, want))
    memo: dict = {}
    r1, r2 = lineage.Reader(), lineage.Reader()
    assert r1.read_parquet_memo(a, memo, ["event_id"])["event_id"].to_list() == ["e1", "e2"]
    assert r2.read_parquet_memo(a, memo, ["event_id"]).columns == ["event_id"]
    assert fetched.count(a) == 1                                   # the second reader used the memo
    assert r1.consumed == r2.consumed == {a: sha(real(a))}         # both reads are recorded as inputs
    commit(tmp_path, "a", frame(["e3"]))                           # republished: other bytes, another key
    assert lineage.Reader().read_parquet_memo(a, memo, ["event_id"])["event_id"].to_list() == ["e3"]
    assert fetched.count(a) == 2
    storage.local_path(a).write_bytes(frame(["e4"]))               # altered after its commit: refused, not served
    with pytest.raises(lineage.StaleInput):
        lineage.Reader().read_parquet_memo(a, {}, ["event_id"])


def test_a_fetch_verified_beside_the_read_refuses_altered_or_replaced_bytes(tmp_path, monkeypatch):
    """fetch_verifying: the copy's path at once and its sha256 computed in a thread; the check passes
    for the record's bytes and raises StaleInput for bytes altered since the commit or a file replaced
    while it was read (its stamp changed), as fetch() would have."""
    import os

    monkeypatch.setenv("FRAUDOPS_DIGESTS", "off")             # hashed every time: no entry makes it pass
    a = commit(tmp_path, "a", b"A" * 4096)
    r = lineage.Reader()
    path, verified = r.fetch_verifying(a, tmp_path)
    assert path.read_bytes() == b"A" * 4096 and r.consumed == {a: sha(b"A" * 4096)}
    verified()
    storage.local_path(a).write_bytes(b"B" * 4096)            # altered after the commit, the same size
    path, verified = lineage.Reader().fetch_verifying(a, tmp_path)
    with pytest.raises(lineage.StaleInput, match="changed since it was committed"):
        verified()
    storage.local_path(a).write_bytes(b"A" * 4096)
    path, verified = lineage.Reader().fetch_verifying(a, tmp_path)
    other = tmp_path / "other"
    other.write_bytes(b"A" * 4096)
    os.replace(other, path)                                    # replaced while it was read: another file
    with pytest.raises(lineage.StaleInput, match="changed while it was read"):
        verified()
