"""The sha256 of local files that were read and checked before, known by what the file system says of
them, so that a file read again unchanged is not hashed again (as DVC's state database and git's
index know theirs).

Every read of a committed object is checked against the sha256 in its partition's record
(pipelines/core/lineage.py). A night reads most of its objects many nights over: a day's feature
state for the 37 nights of the look-back, a day's id hashes for the 45 nights of the duplicate
window. Where the object is a local file (a lake on a path, the file object store), the first check
that finds the record's sha256 leaves an entry under $FRAUDOPS_HOME/digests: the file's device,
inode, size, modification and change times (ns) and the sha256 found. A later read of that file
whose open handle has exactly that stamp, before and after the bytes are read, and whose record
names that sha256, takes the bytes as checked.

What changes a stamp: a republish (a new file renamed into place: another inode), any write into the
file (its modification and change times), and any change of those times (the change time is set by
the kernel on every change of the file, `touch` included, and cannot be set back). An entry is left
only for a file whose times are more than RACY_S seconds old, so that a write within the same tick
of the file system's clock (a few ms) after the check cannot go unseen. What an entry does not see:
bytes changed on the disk under the file system (bit rot): `FRAUDOPS_DIGESTS=off` hashes every read,
as before. The entries are this machine's (like the model cache); an S3 object is always hashed.

An entry can only ever match the file as it was: once a file is removed, republished or changed, its
entry is dead. At most once every SWEEP_S seconds (a day), the process that leaves an entry first
removes the dead ones (and temporary files left by a process that died while it wrote one), so the
folder holds about one entry per file of the lake that is read, not one per file ever read.

For local file systems with fine time stamps and a real change time (ext4, xfs, btrfs, tmpfs): the
RACY_S rule compares this machine's clock with the file's times. On a network or FUSE file system
whose server's clock runs behind, or whose time stamps are coarse (1-2 s: FAT, exFAT, HFS+), or
that has no real change time, set FRAUDOPS_DIGESTS=off.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

RACY_S = 2.0          # a file changed this recently is not remembered (see above)
SWEEP_S = 86_400.0    # dead entries are removed at most this often (see above)
TMP_S = 3_600.0       # a temporary entry older than this was left by a process that died


def enabled() -> bool:
    return os.environ.get("FRAUDOPS_DIGESTS", "on").strip().lower() not in ("off", "0", "false", "no")


def _root() -> Path:
    from pipelines.core import state

    return state.state_dir() / "digests"


def _marker() -> Path:
    return _root().parent / "digests.swept"


def stamp(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _entry(path: Path) -> Path:
    return _root() / hashlib.sha256(str(path).encode()).hexdigest()[:40]


def known(path: Path, st: os.stat_result) -> str | None:
    """The sha256 remembered for the file `path` with stat `st`, or None."""
    if not enabled():
        return None
    try:
        e = json.loads(_entry(path).read_text())
    except (OSError, ValueError):      # (UnicodeError is a ValueError)
        return None
    if e.get("path") != str(path) or e.get("stamp") != stamp(st):
        return None
    return e.get("sha256")


def remember(path: Path, st: os.stat_result, sha: str) -> None:
    """Leave an entry: `path`, whose bytes with stat `st` were found to have `sha` (and that is what
    its record says). Nothing where the file changed too recently (RACY_S) or the folder cannot be
    written (the next read hashes again: an entry only saves time)."""
    if not enabled() or time.time() - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 <= RACY_S:
        return
    import tempfile

    tmp = None
    try:
        entry = _entry(path)
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            if _sweep_due():
                sweep()
        except OSError:                 # housekeeping: never in the way of the entry
            pass
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({"path": str(path), "stamp": stamp(st), "sha256": sha}))
        os.replace(tmp, entry)
    except (OSError, ValueError):      # (a path that is not text: no entry)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _sweep_due() -> bool:
    """True at most once per SWEEP_S on this machine: the marker's time is moved on first, so that
    processes leaving entries at the same moment do not all sweep (one sweeping twice is harmless)."""
    marker = _marker()
    try:
        if time.time() - marker.stat().st_mtime < SWEEP_S:
            return False
        os.utime(marker)                # (the current time: write access is enough, not ownership)
    except FileNotFoundError:           # the first sweep here (a new machine, or entries from before sweeps)
        marker.touch()
    return True


def sweep() -> int:
    """Remove the dead entries (the file gone, or its stamp no longer the entry's: it can never match
    again), unreadable ones, and temporary files older than TMP_S. The count removed. Only a cache:
    an entry removed while another process rewrites it costs that file one hash later."""
    removed, root = 0, _root()
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    now = time.time()
    for name in names:
        entry = root / name
        try:
            if name.startswith("."):
                dead = name.endswith(".tmp") and now - entry.stat().st_mtime > TMP_S
            else:
                try:
                    e = json.loads(entry.read_text())
                except FileNotFoundError:       # the entry itself went meanwhile
                    continue
                except (OSError, ValueError):   # an entry that cannot be read is no use
                    e = None
                try:
                    dead = e is None or stamp(os.stat(e["path"])) != e["stamp"]
                except (OSError, KeyError, TypeError):
                    dead = True                 # the file is gone (or the entry names none)
            if dead:
                entry.unlink(missing_ok=True)
                removed += 1
        except OSError:
            continue
    return removed
