"""Lineage records: what a published partition was made from, checked before anyone reads it.

Every partition a stage publishes for others to read is committed by a record written after its
objects (storage.Partition): {stage, primary, objects: {uri: sha256}, inputs: {uri: sha256},
sources: {uri: sha256}}. `inputs` are partitions of the lake (which have records of their own),
`sources` external files (raw deliveries).

A `Reader` trusts a partition only when
  * its record exists (a withdrawn or half-published partition has none),
  * the bytes it reads have the sha256 in the record (nothing changed it since; a local file
    read before and unchanged since, by what the file system says of it, is not hashed again:
    pipelines/core/digests.py), and
  * every input in the record is itself trusted, with the sha256 it had when it was read
    (recursively: predictions -> features -> validated -> canonical).
So when a date's validated partition is withdrawn (a re-delivery that now fails validation) or
replaced by other bytes, everything derived from it, including later dates' features whose
look-back read it, is refused with one line naming what changed and what to re-run. Reading is
memoized per process; the records are small JSON objects.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from pipelines.core import storage


class NotCommitted(storage.MissingObject):
    """No record: the partition was never published, was withdrawn, or its publish did not finish."""


class StaleInput(RuntimeError):
    """A partition is not trustworthy any more: it changed after its record, or an input did."""


def stage_of(rec: dict) -> str:
    return rec.get("stage") or "the stage that publishes it"


class Reader:
    """Reads committed partitions and remembers what it read (`consumed`, for the next record)."""

    def __init__(self) -> None:
        self._verified: dict[str, dict] = {}
        self._invalid: dict[str, str] = {}
        self._missing: set[str] = set()
        self.consumed: dict[str, str] = {}

    # -- records
    def record(self, primary: str) -> dict:
        """The verified record of the partition whose primary object is `primary`."""
        if primary in self._missing:
            raise NotCommitted(f"{storage.where(primary)}: no committed partition (never published, withdrawn "
                               f"after a failed run, or its publish did not finish)")
        if primary not in self._verified and primary not in self._invalid:
            self._verify(primary)
        if primary in self._invalid:
            raise StaleInput(self._invalid[primary])
        return self._verified[primary]

    def _verify(self, primary: str) -> None:
        """Depth first, inputs before what was made from them, without recursion (a chain of
        partitions can be longer than Python's stack)."""
        records: dict[str, dict] = {}
        stack = [(primary, False)]
        while stack:
            uri, expanded = stack.pop()
            if uri in self._verified or uri in self._invalid or uri in self._missing:
                continue
            if expanded:
                self._judge(uri, records[uri])
                continue
            if uri not in records:
                try:
                    records[uri] = storage.read_json(storage.record_uri(uri))
                except storage.MissingObject:
                    if uri == primary:
                        raise NotCommitted(f"{storage.where(uri)}: no committed partition (never published, "
                                           f"withdrawn after a failed run, or its publish did not finish)") from None
                    self._missing.add(uri)
                    continue
            stack.append((uri, True))
            stack.extend((inp, False) for inp in records[uri].get("inputs", {}))

    def _judge(self, uri: str, rec: dict) -> None:
        """Trust `uri` when each input it was made from is trusted and unchanged."""
        for inp, sha in sorted(rec.get("inputs", {}).items()):
            if inp in self._missing:
                why = "has since been withdrawn"
            elif inp in self._invalid:
                why = f"is no longer valid ({self._invalid[inp]})"
            elif self._verified[inp]["objects"].get(inp) != sha:
                why = (f"has changed since (sha256 {str(self._verified[inp]['objects'].get(inp))[:12]} now, "
                       f"{sha[:12]} then)")
            else:
                continue
            self._invalid[uri] = f"{uri}: built from {inp}, which {why}; re-run {stage_of(rec)} for it"
            return
        self._verified[uri] = rec

    def _expected(self, uri: str, primary: str | None) -> tuple[dict, str]:
        rec = self.record(primary or uri)
        sha = rec["objects"].get(uri)
        if sha is None:
            raise StaleInput(f"{uri}: not part of the committed partition {primary or uri}; re-run {stage_of(rec)}")
        return rec, sha

    def _check(self, uri: str, rec: dict, want: str, got: str) -> None:
        if got != want:
            raise StaleInput(f"{storage.where(uri)}: changed since it was committed (sha256 {got[:12]}, record says "
                             f"{want[:12]}): a publish was interrupted or the object was altered; re-run "
                             f"{stage_of(rec)} for it")

    # -- objects
    def read_bytes(self, uri: str, primary: str | None = None) -> bytes:
        rec, want = self._expected(uri, primary)
        data, got = storage.read_checked(uri, want)
        self._check(uri, rec, want, got)
        self._consume(primary or uri, rec)
        return data

    def read_fetched(self, uri: str, path: "str | Path", primary: str | None = None) -> bytes:
        """read_bytes of `uri` from `path`, the local copy storage.fetch gave of it: checked the same way."""
        rec, want = self._expected(uri, primary)
        data = Path(path).read_bytes()
        self._check(uri, rec, want, storage.sha256(data))
        self._consume(primary or uri, rec)
        return data

    def in_place(self, uri: str, primary: str | None = None) -> "tuple[Path, Callable[[], None]] | None":
        """The committed object `uri` as a local file to read in place, where it is one known to hold
        the record's bytes (storage.known_file), and a check to call once it is read (StaleInput if
        the file changed meanwhile: a republish, a write). None: read_bytes it."""
        rec, want = self._expected(uri, primary)
        found = storage.known_file(uri, want)
        if found is None:
            return None
        path, stamp = found

        def check() -> None:
            if not storage.unchanged(path, stamp):
                raise _changed_while_read(uri, rec)
        self._consume(primary or uri, rec)
        return path, check

    def read_parquet(self, uri: str, primary: str | None = None, columns: list[str] | None = None):
        """The committed Parquet object, verified whole (sha256), only `columns` decoded when given; a
        local file known to hold its bytes is decoded in place (in_place)."""
        found = self.in_place(uri, primary)
        if found is None:
            return storage.read_parquet_bytes(self.read_bytes(uri, primary), uri, columns)
        path, check = found
        try:
            frame = storage.read_parquet_path(path, uri, columns)
        except storage.StorageError:
            check()                 # a file replaced or removed while it was read: StaleInput, not its read error
            raise
        check()
        return frame

    def read_parquet_memo(self, uri: str, memo: dict, columns: list[str] | None = None, primary: str | None = None):
        """read_parquet (of `columns`) through `memo`, (uri, sha256) -> frame: an object this process
        read before with the same committed bytes is not fetched again (the key is its sha256 from
        the verified record, so a republished object is read anew); the record is verified and the
        read recorded in `consumed` as by read_parquet."""
        rec, want = self._expected(uri, primary)
        key = (uri, want, tuple(columns or ()))
        if key not in memo:
            memo[key] = self.read_parquet(uri, primary, columns)
        else:
            self._consume(primary or uri, rec)
        return memo[key]

    def read_json(self, uri: str, primary: str | None = None) -> Any:
        import json

        return json.loads(self.read_bytes(uri, primary))

    def fetch(self, uri: str, workdir: str | Path, primary: str | None = None) -> Path:
        """A local copy of a committed object (see storage.fetch), verified."""
        rec, want = self._expected(uri, primary)
        path = storage.fetch(uri, workdir)
        # an S3 object's fresh copy is hashed (digests are for files read again, under their own path)
        self._check(uri, rec, want, storage.sha256_file(path) if storage.is_s3(uri) else storage.file_checked(path, want))
        self._consume(primary or uri, rec)
        return path

    def fetch_verifying(self, uri: str, workdir: str | Path, primary: str | None = None
                        ) -> tuple[Path, Callable[[], None]]:
        """fetch(), its sha256 computed in a thread while the caller reads the copy: (the path, a
        function that waits for it and raises StaleInput where it is not the record's, or where the
        local file changed since it was fetched). The caller calls it before it publishes anything made
        from the copy (score: the features partition of a 10M-row date, 828 MB, hashed in 0.6 s
        beside the scoring instead of before it). The object counts in `consumed` at once: no record
        made from `consumed` may be written before the check has passed. Where it is never called (an
        error first), the thread ends with the read."""
        rec, want = self._expected(uri, primary)
        path = storage.fetch(uri, workdir)
        s3 = storage.is_s3(uri)
        stamp = None if s3 else storage.stamp_of(path)
        found: list = []

        def run() -> None:
            try:
                found.append(storage.sha256_file(path) if s3 else storage.file_checked(path, want))
            except OSError as exc:           # removed or unreadable meanwhile: said of the object
                found.append(StaleInput(f"{storage.where(uri)}: could not be read to be checked ({exc.strerror or exc}); "
                                        f"re-run {stage_of(rec)} for it if it is gone"))
            except BaseException as exc:     # noqa: BLE001 - raised by the wait below
                found.append(exc)
        worker = threading.Thread(target=run, name="verify-fetched", daemon=True)
        worker.start()
        self._consume(primary or uri, rec)

        def verified() -> None:
            worker.join()
            got = found[0]
            if isinstance(got, BaseException):
                raise got
            self._check(uri, rec, want, got)
            if stamp is not None and not storage.unchanged(path, stamp):
                raise _changed_while_read(uri, rec)
        return path, verified

    def _consume(self, primary: str, rec: dict) -> None:
        """Inputs are named by their partition's primary object (the key of its record)."""
        self.consumed[primary] = rec["objects"][primary]

    def exists(self, primary: str) -> bool:
        """Is there a committed, valid partition at `primary`? (Stale ones raise.)"""
        try:
            self.record(primary)
            return True
        except NotCommitted:
            return False


def _changed_while_read(uri: str, rec: dict) -> "StaleInput":
    return StaleInput(f"{storage.where(uri)}: changed while it was read: a publish was interrupted or the object "
                      f"was altered; re-run {stage_of(rec)} for it")


# --------------------------------------------------------------------------- a date's run key
def keyed(parts: dict) -> dict:
    """A run's key: what a partition is made of (its inputs' sha256, the model, the params, the
    code, the library versions), with its own sha256 as `key`. Kept as `run` in the record."""
    return {**parts, "key": storage.sha256(storage.json_bytes(parts))}


def committed(uris) -> dict[str, "str | None"]:
    """The sha256 of each partition's primary object as its trusted record names it, None where no
    partition is committed (never published, withdrawn, not landed yet: an absence is part of what
    a run is made of). Raises StaleInput for one that is not trusted any more."""
    reader = Reader()
    out: dict[str, str | None] = {}
    for uri in uris:
        try:
            out[uri] = (reader.record(uri).get("objects") or {}).get(uri)
        except NotCommitted:
            out[uri] = None
    return out


def stage_key(stage: str, inputs: dict[str, "str | None"], settings: Any, module: str,
              libraries: tuple[str, ...] = ("polars", "pyarrow"), **extra: Any) -> dict:
    """The run key of one partition made by `stage`: its inputs ({uri: sha256 or None}), the sha256
    of the settings that shape it (params sections, a suite), the fingerprint of the code `module`
    runs and the versions of the libraries that compute it (see keyed)."""
    import importlib.metadata

    from pipelines.core import code

    return keyed({"stage": stage, "inputs": dict(sorted(inputs.items())),
                  "params_sha256": storage.sha256(storage.json_bytes(settings)),
                  "code_version": code.fingerprint(module),
                  "libraries": {lib: importlib.metadata.version(lib) for lib in libraries}, **extra})


def reusable(primary: str, key: dict | None, pub: Any = None, recompute: bool = False,
             verify: dict[str, "str | None"] | None = None) -> dict | None:
    """The record of `primary` when this run may keep it instead of computing it again: it was made
    with `key` and its objects still have their bytes (unchanged). Never when asked to recompute,
    and never when the publisher also writes a snapshot, or `pub` is a snapshot folder (a DVC output
    wants the bytes written)."""
    if recompute or key is None or storage.snapshotting(pub):
        return None
    return unchanged(primary, key, verify or {})


def unchanged(primary: str, key: dict | None, verify: dict[str, "str | None"]) -> dict | None:
    """The record of `primary` when it was made with `key` and its objects and the inputs in
    `verify` ({uri: sha256}) still have the bytes named (read only on a matching key: a miss costs
    one small record). None: compute it again."""
    if key is None:
        return None
    try:
        rec = storage.read_json(storage.record_uri(primary))
        if (rec.get("run") or {}).get("key") != key["key"]:
            return None
        if any(s is None for s in verify.values()):          # an input with no recorded bytes: no proof
            return None
        wanted = {**verify, **(rec.get("objects") or {})}
        if any(storage.object_checked(u, sha) != sha for u, sha in wanted.items()):
            return None
    except storage.MissingObject:
        return None
    return rec
