"""Known digests of local files (pipelines/core/digests.py): a committed object read again unchanged is
not hashed again, and every change the file system can tell makes it hashed (and refused) again."""
from __future__ import annotations

import json
import os
import time

import pytest

from pipelines.core import digests, lineage, storage


@pytest.fixture()
def hashes(monkeypatch, tmp_path):
    """The sha256 computations of whole objects, counted; digests of files changed a moment ago are
    remembered (RACY_S 0: the tests' files are all fresh); the entries in a folder of the test's own."""
    monkeypatch.setenv("FRAUDOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FRAUDOPS_DIGESTS", "on")
    monkeypatch.setattr(digests, "RACY_S", 0.0)
    import hashlib
    import types

    counted = []

    def counting(data: bytes = b""):
        counted.append(len(data))       # (a file hashed block by block: 0 here)
        return hashlib.sha256(data)

    monkeypatch.setattr(storage, "hashlib", types.SimpleNamespace(sha256=counting, sha1=hashlib.sha1))
    return counted


def sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def commit(lake, data: bytes) -> str:
    uri = f"{lake}/a/part-0.parquet"
    with storage.Publisher(str(lake)) as pub:
        part = pub.partition(uri, "test", extra={"run": {"key": "k"}})
        part.put(uri, data)
        part.commit()
    time.sleep(0.02)                   # (a later write gets another time stamp)
    return uri


def test_an_object_read_again_unchanged_is_not_hashed_again(hashes, tmp_path):
    uri = commit(tmp_path / "lake", b"A" * 1000)
    hashes.clear()
    assert lineage.Reader().read_bytes(uri) == b"A" * 1000 and hashes == [1000]     # hashed, remembered
    assert lineage.Reader().read_bytes(uri) == b"A" * 1000 and hashes == [1000]     # known: not hashed
    path = storage.local_path(uri)
    assert storage.file_checked(path, sha(b"A" * 1000)) == sha(b"A" * 1000) and hashes == [1000]
    assert lineage.Reader().fetch(uri, tmp_path) == path and hashes == [1000]
    assert lineage.unchanged(uri, {"key": "k"}, {}) is not None and hashes == [1000]     # a re-run's check
    assert len(list((tmp_path / "home" / "digests").iterdir())) == 1
    assert storage.file_checked(path, sha(b"B")) == sha(b"A" * 1000) and hashes == [1000, 0]   # asked for other bytes
    digests.remember(path, os.stat(path), sha(b"Z"))     # an entry of other bytes: not what the record says
    hashes.clear()
    assert lineage.Reader().read_bytes(uri) == b"A" * 1000 and hashes == [1000]
    assert lineage.Reader().read_bytes(uri) == b"A" * 1000 and hashes == [1000]     # remembered right again


@pytest.mark.parametrize("change", ["written in place", "written in place, times set back", "republished"])
def test_a_changed_file_is_hashed_again_and_refused(hashes, tmp_path, change):
    uri = commit(tmp_path / "lake", b"A" * 1000)
    path = storage.local_path(uri)
    lineage.Reader().read_bytes(uri)                          # remembered
    st = os.stat(path)
    if change.startswith("written in place"):
        with open(path, "r+b") as fh:                         # the same size, the same inode
            fh.write(b"B")
        if change.endswith("set back"):
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))    # the change time cannot be set back
            assert os.stat(path).st_mtime_ns == st.st_mtime_ns
    else:                                                     # another file renamed into place, record kept
        tmp = path.with_name("other")
        tmp.write_bytes(b"C" * 1000)
        os.replace(tmp, path)
    hashes.clear()
    with pytest.raises(lineage.StaleInput, match="changed since it was committed"):
        lineage.Reader().read_bytes(uri)
    assert hashes == [1000]
    with pytest.raises(lineage.StaleInput, match="changed since it was committed"):
        lineage.Reader().fetch(uri, tmp_path)


def test_a_file_changed_a_moment_ago_is_not_remembered(hashes, monkeypatch, tmp_path):
    """Within RACY_S of its last change a file could change again within the same tick of the file
    system's clock, unseen by its stamp: its digest is not remembered."""
    monkeypatch.setattr(digests, "RACY_S", 3600.0)
    uri = commit(tmp_path / "lake", b"A" * 1000)
    hashes.clear()
    lineage.Reader().read_bytes(uri)
    lineage.Reader().read_bytes(uri)
    assert hashes == [1000, 1000] and not (tmp_path / "home" / "digests").exists()


def test_digests_off_hashes_every_read(hashes, monkeypatch, tmp_path):
    uri = commit(tmp_path / "lake", b"A" * 1000)
    lineage.Reader().read_bytes(uri)                          # remembered while on
    monkeypatch.setenv("FRAUDOPS_DIGESTS", "off")
    hashes.clear()
    lineage.Reader().read_bytes(uri)
    assert hashes == [1000]


def test_a_file_that_changes_while_it_is_read_is_hashed_and_not_remembered(hashes, tmp_path):
    """The stamps of the open file before and after its bytes are read differ: the bytes are hashed
    (whatever is known of the file) and nothing is remembered of them."""
    uri = commit(tmp_path / "lake", b"A" * 1000)
    path = storage.local_path(uri)
    lineage.Reader().read_bytes(uri)                          # remembered
    before = os.stat(path)
    after = os.stat_result((*before[:8], before.st_mtime + 1, before.st_ctime))       # written during the read
    hashes.clear()
    assert storage._digest(path, before, after, lambda: "computed", sha(b"A" * 1000)) == "computed"
    entry = next((tmp_path / "home" / "digests").iterdir())
    entry.unlink()
    assert storage._digest(path, before, after, lambda: sha(b"A" * 1000), sha(b"A" * 1000)) == sha(b"A" * 1000)
    assert not any((tmp_path / "home" / "digests").iterdir())


def test_dead_entries_are_swept_once_a_day(hashes, monkeypatch, tmp_path):
    """An entry matches only the file as it was: those of files removed or republished since, an
    unreadable one and a temporary one left by a process that died are removed, at most once per
    SWEEP_S, by the process that next leaves an entry; the live entries stay and still serve."""
    lake = tmp_path / "lake"
    (lake / "a").mkdir(parents=True)
    for name in ("kept", "removed", "republished"):
        (lake / "a" / f"{name}.bin").write_bytes(name.encode() * 100)
    time.sleep(0.02)
    for name in ("kept", "removed", "republished"):
        storage.file_checked(lake / "a" / f"{name}.bin", sha(name.encode() * 100))     # remembered
    root = tmp_path / "home" / "digests"
    assert len(list(root.iterdir())) == 3 and (tmp_path / "home" / "digests.swept").exists()
    (lake / "a" / "removed.bin").unlink()
    other = lake / "a" / "other"
    other.write_bytes(b"R" * 10)
    os.replace(other, lake / "a" / "republished.bin")
    (root / "junk").write_text("not json")
    (root / ".x.tmp").write_text("{}")
    (root / ".y.tmp").write_text("{}")
    old = time.time() - digests.TMP_S - 10
    os.utime(root / ".x.tmp", (old, old))                     # left by a process that died an hour ago

    fresh = lake / "a" / "fresh.bin"
    fresh.write_bytes(b"F")
    digests.remember(fresh, os.stat(fresh), sha(b"F"))         # the last sweep was less than a day ago
    assert len(list(root.iterdir())) == 7
    monkeypatch.setattr(digests, "SWEEP_S", 0.0)
    later = lake / "a" / "later.bin"
    later.write_bytes(b"L")
    digests.remember(later, os.stat(later), sha(b"L"))        # due: swept first
    left = sorted(json.loads(e.read_text())["path"] for e in root.iterdir() if not e.name.startswith("."))
    assert left == sorted(str(lake / "a" / n) for n in ("fresh.bin", "kept.bin", "later.bin"))
    assert [e.name for e in root.iterdir() if e.name.startswith(".")] == [".y.tmp"]   # one in flight: kept
    hashes.clear()
    kept = lake / "a" / "kept.bin"
    assert storage.file_checked(kept, sha(b"kept" * 100)) == sha(b"kept" * 100) and hashes == []   # still known
    assert digests.sweep() == 0


def test_a_known_file_is_decoded_in_place_and_a_change_while_it_is_read_is_refused(hashes, tmp_path):
    """Reader.read_parquet of a local file known to hold the record's bytes decodes the file itself (no
    copy of its bytes read first): the same frame; a file not known yet is read and hashed as before;
    one changed between its check and the end of its read is refused (StaleInput), never taken."""
    import polars as pl

    frame = pl.DataFrame({"a": list(range(1000)), "b": [str(i) for i in range(1000)]})
    uri = commit(tmp_path / "lake", storage.parquet_bytes(frame))
    hashes.clear()
    reader = lineage.Reader()
    assert reader.in_place(uri) is None                                    # not known yet: its bytes are read
    assert reader.read_parquet(uri, columns=["b"]).equals(frame.select("b")) and len(hashes) == 1
    path, check = reader.in_place(uri)                                     # known since
    assert path == storage.local_path(uri) and reader.consumed == {uri: sha(storage.parquet_bytes(frame))}
    check()
    assert lineage.Reader().read_parquet(uri).equals(frame) and len(hashes) == 1      # in place: not hashed
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1000))  # changed while read
    with pytest.raises(lineage.StaleInput, match="changed while it was read"):
        check()
    assert lineage.Reader().in_place(uri) is None                          # no longer known: read and hashed again
    assert lineage.Reader().read_parquet(uri).equals(frame) and len(hashes) == 2     # (the same bytes: taken)


def test_a_known_file_removed_while_it_is_decoded_in_place_is_stale_not_unreadable(hashes, tmp_path, monkeypatch):
    """A file that goes (a republish, a prune) between its check and its decoding in place: the read
    fails as StaleInput naming the object (what a fold heals by making the state again), not as the
    decoder's error."""
    import polars as pl

    uri = commit(tmp_path / "lake", storage.parquet_bytes(pl.DataFrame({"a": [1, 2, 3]})))
    lineage.Reader().read_bytes(uri)                                       # known since
    real = storage.read_parquet_path

    def vanishing(path, *a, **k):
        os.unlink(path)
        return real(path, *a, **k)
    monkeypatch.setattr(storage, "read_parquet_path", vanishing)
    with pytest.raises(lineage.StaleInput, match="changed while it was read"):
        lineage.Reader().read_parquet(uri)
