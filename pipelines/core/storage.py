"""Object storage: every read and write of the project goes through here.

URIs are `s3://bucket/key` or plain paths. Where an `s3://` object lives is chosen by the
environment, never by params.yaml or the code:
  * `FRAUDOPS_OBJECT_STORE=file:///abs/root` (the embedded default, set by the local stack): the
    object is the file `<root>/<bucket>/<key>` (buckets are folders, as in MinIO's filesystem mode).
    It survives `stack down` and a kill -9 of any service: nothing lives in a server's memory.
  * otherwise S3 through boto3, exactly as real S3 or MinIO: `AWS_ENDPOINT_URL` (or
    `FRAUDOPS_S3_ENDPOINT_URL`) selects the endpoint, credentials come from the usual AWS variables.

Publishing is atomic per object: an S3 PUT is all-or-nothing; a file is written to a temporary name
and renamed. Parquet is written with fixed settings so that the same frame gives the same bytes
(re-running a partition is byte-identical). A partition is committed by its lineage record (see
`Publisher.partition` and pipelines/core/lineage.py): objects first, the record last.

Every failure is a StorageError naming the URI, the service or path, and what happens next; waits
on S3 are bounded by `configure(timeout_s=...)` (params.yaml `services.timeout_s`).
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core import digests, faults

RECORD_PREFIX = "_lineage."       # <dir>/_lineage.<name>.json: the record that commits <dir>/<name>
_TIMEOUT_S = 60.0                  # the bound on one S3 operation, retries included (services.timeout_s)


class StorageError(RuntimeError):
    """An object could not be read or written; the message names the URI and what happens next."""


class MissingObject(StorageError):
    """The object (or partition) does not exist."""


def configure(timeout_s: float) -> None:
    """Bound every S3 operation (connect, read, retries) by about `timeout_s` seconds."""
    global _TIMEOUT_S
    if float(timeout_s) != _TIMEOUT_S:
        _TIMEOUT_S = float(timeout_s)
        _new_client.cache_clear()


# --------------------------------------------------------------------------- where objects live
def object_root() -> Path | None:
    """The local root of the file object store (FRAUDOPS_OBJECT_STORE=file:///...), or None for S3."""
    spec = os.environ.get("FRAUDOPS_OBJECT_STORE", "").strip()
    if not spec or spec == "s3":
        return None
    if not spec.startswith("file://"):
        raise StorageError(f"FRAUDOPS_OBJECT_STORE={spec!r}: expected s3 or file:///absolute/path")
    return Path(spec[len("file://"):])


def endpoint_url() -> str | None:
    return os.environ.get("FRAUDOPS_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or None


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    return bucket, key


def is_s3(uri: str) -> bool:
    """True when `uri` is served by S3 (an s3:// URI and no file object store)."""
    return uri.startswith("s3://") and object_root() is None


def local_path(uri: str) -> Path:
    """The file behind `uri` when it is not on S3 (an s3:// URI in the file object store, or a path)."""
    if uri.startswith("s3://"):
        root = object_root()
        if root is None:
            raise StorageError(f"{uri}: on S3, not a local file")
        bucket, key = split_s3(uri)
        if ".." in Path(key).parts or not bucket or bucket in (".", ".."):
            raise StorageError(f"{uri}: not a plain object key ('..' would leave the object store)")
        return root / bucket / key
    return Path(uri)


def _local_file(uri: str) -> Path:
    """local_path(uri), which must be a file (MissingObject otherwise)."""
    path = local_path(uri)
    if not path.is_file():
        raise MissingObject(f"{where(uri)}: not found")
    return path


def where(uri: str) -> str:
    """A person-readable location: the URI, and the file behind it in the file object store."""
    if uri.startswith("s3://") and object_root() is not None:
        return f"{uri} (file {local_path(uri)})"
    return uri


def ensure_bucket(name: str) -> str:
    """Create bucket `name` if it does not exist; return `s3://name`."""
    if object_root() is not None:
        (object_root() / name).mkdir(parents=True, exist_ok=True)
        return f"s3://{name}"
    with _s3_errors(f"s3://{name}", "create bucket"):
        client = s3_client()
        if name not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=name)
    return f"s3://{name}"


# --------------------------------------------------------------------------- S3
_CLIENT_LOCK = threading.Lock()


def _client(endpoint: str | None, timeout_s: float):
    """One client per endpoint and timeout, made once: under a lock, as threads may ask at once (ingest's
    datasets; boto3's default session is not safe to make clients from concurrently)."""
    with _CLIENT_LOCK:
        return _new_client(endpoint, timeout_s)


@functools.lru_cache(maxsize=4)
def _new_client(endpoint: str | None, timeout_s: float):
    import boto3
    from botocore.config import Config

    # 3 attempts of at most ~timeout/3 each: a dead or hung endpoint ends the operation within the bound
    per_try = max(1.0, timeout_s / 3 - 1)
    cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=min(5.0, per_try),
                 read_timeout=per_try)
    return boto3.client("s3", endpoint_url=endpoint, config=cfg)


def s3_client():
    return _client(endpoint_url(), _TIMEOUT_S)


NOT_FOUND = ("NoSuchKey", "404", "NoSuchBucket", "NotFound")


@contextlib.contextmanager
def _s3_errors(uri: str, what: str) -> Iterator[None]:
    """botocore's exceptions -> one StorageError line naming the URI and the endpoint."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in NOT_FOUND:
            raise MissingObject(f"{uri}: not found ({code})") from None
        raise StorageError(f"{uri}: {what} failed: {code or exc}") from None
    except (BotoCoreError, Boto3Error, OSError) as exc:
        raise StorageError(f"{uri}: {what} failed: S3 endpoint {endpoint_url() or 'AWS'} unreachable or too slow "
                           f"({type(exc).__name__}: {str(exc)[:160]}); nothing was changed there") from None


@contextlib.contextmanager
def _disk_errors(uri: str, what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StorageError(f"{where(uri)}: {what} failed: disk full (ENOSPC); nothing published there: "
                               f"free space and re-run") from None
        raise StorageError(f"{where(uri)}: {what} failed: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- bytes
def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "read"):
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    path = _local_file(uri)
    with _disk_errors(uri, "read"):
        return path.read_bytes()


def _write_local(path: Path, write, uri: str, fault: bool = True) -> None:
    """Write through `write(fh)` to a temporary file next to `path`, then rename (atomic). `fault`:
    the write is a fault point (false where the caller's write has been one already)."""
    with _disk_errors(uri, "write"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                if fault:
                    faults.point("storage.write", path=str(path))
                write(fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _sweep_temporaries(path)


def _sweep_temporaries(path: Path, older_than_s: float = 3600.0, pattern: str | None = None) -> None:
    """Temporary files of `path` (or those of `pattern` beside it) left by a writer that was killed
    (kill -9 runs no cleanup)."""
    import time

    limit = time.time() - older_than_s
    for tmp in path.parent.glob(pattern or f".{path.name}.*.tmp"):
        try:
            if tmp.stat().st_mtime < limit:
                tmp.unlink()
        except OSError:
            pass


SCRATCH_S = 3600.0       # a scratch folder of a process that is gone, untouched this long, is removed


def scratch_dir(what: str) -> tempfile.TemporaryDirectory:
    """A temporary folder for a stage's scratch files (the features' spilled History, fetched
    objects, staged outputs), named `fraudops-<what>-<pid>.<host>-...` in the temporary directory
    (<host>: a hash of the host's name; a $TMPDIR shared by hosts is swept by each for its own only). A process
    that is killed (kill -9, the OOM killer) runs no cleanup: the folders of `what` left by a process
    that is gone and untouched for SCRATCH_S are removed first (a killed features stage at 10M rows a
    day left 1.3-5.6 GB each). A folder whose process is alive, or whose id is this process's, is kept."""
    import time

    import socket

    prefix = f"fraudops-{what}-"
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]   # a shared $TMPDIR: this host's only
    limit = time.time() - SCRATCH_S
    for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*.{host}-*"):
        pid = folder.name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            if folder.is_dir() and folder.stat().st_mtime < limit:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}.{host}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                         # (another user's process: there)
        return True
    return True


_REMOVING: list[threading.Thread] = []


def remove_later(folder: tempfile.TemporaryDirectory) -> None:
    """`folder` removed in a thread of its own while the caller goes on (the features' spill of a 10M-row
    date, a few GB: 1.8 s). The process does not exit before it is gone (not a daemon thread); a stage
    waits for it with removed() before it returns."""
    t = threading.Thread(target=folder.cleanup, name="scratch-remove")
    t.start()
    _REMOVING.append(t)


def removed() -> None:
    """Wait for the folders given to remove_later."""
    while _REMOVING:
        _REMOVING.pop().join()


def write_bytes(uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    """Publish `data` at `uri` atomically (readers see the old object or the new one, never a mix)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        faults.point("storage.write", path=uri)
        with _s3_errors(uri, "write"):
            s3_client().put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
        return
    _write_local(local_path(uri), lambda fh: fh.write(data), uri)


def size(uri: str) -> int:
    """The object's size in bytes (MissingObject when there is none)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "head"):
            return int(s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])
    path = local_path(uri)
    if not path.is_file():
        raise MissingObject(f"{where(uri)}: no such object")
    with _disk_errors(uri, "stat"):
        return path.stat().st_size


def parquet_rows(uri: str) -> int:
    """The rows of a Parquet object, from its footer alone (S3: two ranged reads of its tail, not the
    object; MissingObject when there is none)."""
    if not is_s3(uri):
        path = _local_file(uri)
        try:
            with _disk_errors(uri, "read"):
                return pq.ParquetFile(str(path)).metadata.num_rows
        except pa.ArrowException as exc:
            raise StorageError(f"{where(uri)}: its Parquet footer cannot be read ({exc})") from None
    bucket, key = split_s3(uri)
    with _s3_errors(uri, "read"):
        first = s3_client().get_object(Bucket=bucket, Key=key, Range="bytes=-8")
        tail = first["Body"].read()
        total = int(str(first.get("ContentRange") or "").rpartition("/")[2] or len(tail))
        if len(tail) != 8 or tail[4:] != b"PAR1":
            raise StorageError(f"{where(uri)}: its Parquet footer cannot be read (no footer)")
        n = int.from_bytes(tail[:4], "little")
        if n + 12 > total:             # (magic, footer, length, magic): never more than the object's own tail
            raise StorageError(f"{where(uri)}: its Parquet footer cannot be read (a footer of {n} bytes in {total})")
        second = s3_client().get_object(Bucket=bucket, Key=key, Range=f"bytes={total - n - 8}-{total - 1}")
        footer = second["Body"].read()
        if second.get("ETag") != first.get("ETag") or len(footer) != n + 8:
            raise StorageError(f"{where(uri)}: its Parquet footer cannot be read (the object changed between two reads)")
    try:
        return pq.read_metadata(pa.BufferReader(b"PAR1" + footer)).num_rows
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StorageError(f"{where(uri)}: its Parquet footer cannot be read ({exc})") from None


def exists(uri: str) -> bool:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            with _s3_errors(uri, "head"):
                s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except MissingObject:
            return False
    return local_path(uri).is_file()


def list_uris(prefix: str, hidden: bool = False) -> list[str]:
    """All object URIs under `prefix` (a folder), sorted; hidden/temporary files (. or _) excluded
    unless `hidden`."""
    skip = () if hidden else (".", "_")
    if is_s3(prefix):
        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        out: list[str] = []
        with _s3_errors(prefix, "list"):
            for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                out.extend(f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", []))
        return sorted(u for u in out if not (skip and u.rsplit("/", 1)[-1].startswith(skip)))
    root = local_path(prefix)
    if not root.is_dir():
        return []
    base = prefix.rstrip("/")
    return sorted(f"{base}/{p.relative_to(root).as_posix()}" for p in root.rglob("*")
                  if p.is_file() and not (skip and p.name.startswith(skip)))


def delete_many(uris: list[str]) -> None:
    """Delete these objects, in their order; on S3 up to 1,000 per request (DeleteObjects), not one
    request each."""
    for uri in uris:
        if not is_s3(uri):
            delete(uri)
    remote = [u for u in uris if is_s3(u)]
    for i in range(0, len(remote), 1000):
        batch: dict[str, list[str]] = {}
        for u in remote[i:i + 1000]:
            bucket, key = split_s3(u)
            batch.setdefault(bucket, []).append(key)
        for bucket, keys in batch.items():
            with _s3_errors(f"s3://{bucket}/{keys[0]}", "delete"):
                out = s3_client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys],
                                                                        "Quiet": True})
            if out.get("Errors"):
                e = out["Errors"][0]
                raise StorageError(f"s3://{bucket}/{e.get('Key')}: delete failed: {e.get('Code')} "
                                   f"({len(out['Errors'])} of {len(keys)} objects not deleted)")


def delete_prefix(prefix: str) -> int:
    """Delete every object under `prefix` (a folder), hidden ones (. or _) included; the count."""
    if is_s3(prefix):
        found = list_uris(prefix, hidden=True)
        delete_many(found)
        return len(found)
    root = local_path(prefix)
    if not root.is_dir():
        return 0
    n = sum(1 for p in root.rglob("*") if p.is_file())
    with _disk_errors(prefix, "delete"):
        shutil.rmtree(root)
    return n


def delete(uri: str) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "delete"):
            s3_client().delete_object(Bucket=bucket, Key=key)
        return
    with _disk_errors(uri, "delete"):
        local_path(uri).unlink(missing_ok=True)


# --------------------------------------------------------------------------- files (large objects)
def fetch(uri: str, workdir: str | Path) -> Path:
    """A local, seekable copy of `uri` for streaming reads (S3: a streamed download into `workdir`;
    a file is used in place)."""
    if not is_s3(uri):
        return _local_file(uri)
    bucket, key = split_s3(uri)
    dst = Path(workdir) / f"{hashlib.sha1(uri.encode()).hexdigest()[:16]}-{Path(key).name}"
    with _s3_errors(uri, "read"):
        s3_client().download_file(bucket, key, str(dst))
    return dst


def put_file(uri: str, local: str | Path, content_type: str = "application/octet-stream", move: bool = False) -> None:
    """Publish a local file at `uri` atomically (S3: one streamed, multipart-capable upload). `move`: the
    file is the caller's to give up: on a local lake on the same filesystem it is renamed into place
    (decide's 10M decisions: 0.6 s of copying saved); elsewhere it is copied as always."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        faults.point("storage.write", path=uri)
        with _s3_errors(uri, "write"):
            s3_client().upload_file(str(local), bucket, key, ExtraArgs={"ContentType": content_type})
        return
    path = local_path(uri)
    if move:
        with _disk_errors(uri, "write"):
            path.parent.mkdir(parents=True, exist_ok=True)
            faults.point("storage.write", path=str(path))
        try:
            os.chmod(local, 0o600)     # the mode of the lake's other objects (mkstemp's)
            os.replace(local, path)
            _sweep_temporaries(path)
            return
        except OSError:                # another filesystem (EXDEV) or not allowed: copied below
            pass

    def copy(fh) -> None:
        with open(local, "rb") as src:
            shutil.copyfileobj(src, fh, 1 << 20)
    _write_local(path, copy, uri, fault=not move)


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return _sha256_of(fh)


def _sha256_of(fh) -> str:
    """The sha256 of what is left to read in the open file `fh`, read by blocks of 1 MiB."""
    h = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- checked reads (core/digests.py)
def read_checked(uri: str, want: str) -> tuple[bytes, str]:
    """The bytes of `uri` and their sha256, `want` (what its record names) taken as found without
    hashing where the file is a local one known to have it (digests: the same file, unchanged since
    it was hashed). An S3 object is always hashed."""
    if is_s3(uri):
        data = read_bytes(uri)
        return data, sha256(data)
    path = _local_file(uri)
    with _disk_errors(uri, "read"), open(path, "rb") as fh:
        before = os.fstat(fh.fileno())
        data = fh.read()
        after = os.fstat(fh.fileno())
    return data, _digest(path, before, after, lambda: sha256(data), want)


def known_file(uri: str, want: str) -> tuple[Path, list[int]] | None:
    """The local file of `uri` and its stamp, where it is known (digests) to hold `want`: it can be
    read in place, by its path, with no copy of its bytes in the process first (then `unchanged`
    tells whether it is still that file). None for an S3 object or a file not known to hold it
    (read_checked reads and hashes it). A night's fold reads ~55 state partitions of ~240 MB at 10M
    rows a day: decoded from the bytes read into memory, 0.85 s of CPU each; in place, 0.70 s."""
    if is_s3(uri) or not digests.enabled():
        return None
    path = _local_file(uri)
    with _disk_errors(uri, "read"):
        st = os.stat(path)
    if digests.known(_absolute(path), st) != want:
        return None
    return path, digests.stamp(st)


def stamp_of(path: "str | Path") -> list[int]:
    """What the file system says of the local file `path` (digests.stamp): `unchanged` compares it later."""
    with _disk_errors(str(path), "read"):
        return digests.stamp(os.stat(path))


def read_ahead(uris: list[str]) -> None:
    """Ask the OS to read these local files into its page cache now (posix_fadvise WILLNEED, in a
    thread: the reads are queued, not waited for), for a stage that will read them one after the
    other: the disk reads then overlap the stage's work on the first ones. Ingest's duplicate window
    reads 44 earlier days' id hashes per dataset (2 GB a dataset at 10M rows a day): on a cold page
    cache ingest took 18.67 s without the hint, 17.72-18.28 s with it (17.5 s warm). Objects on S3,
    files that are not there and a system without fadvise: nothing (only a hint)."""
    if not hasattr(os, "posix_fadvise"):
        return
    paths = []
    for uri in uris:
        try:
            if not is_s3(uri):
                paths.append(local_path(uri))
        except StorageError:
            pass

    def hint() -> None:
        for path in paths:
            will_need(path)
    if paths:
        threading.Thread(target=hint, name="read-ahead", daemon=True).start()


def will_need(path: str | Path) -> None:
    """Ask the OS to read the local file `path` into its page cache (posix_fadvise WILLNEED): no copy
    into the process, where reading it through copies every byte (a 10M-row day state: 0.04 s of CPU
    for 337 MB, ~11 GB a night). Only a hint: a file that is not there, or no fadvise, is nothing."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def unchanged(path: "str | Path", stamp: list[int]) -> bool:
    """Is the file at `path` still the one with `stamp` (known_file)?"""
    try:
        return digests.stamp(os.stat(path)) == stamp
    except OSError:
        return False


def object_checked(uri: str, want: str) -> str:
    """The sha256 of the object at `uri` (read_checked's), without reading a local file known to have
    `want`."""
    if is_s3(uri):
        return sha256(read_bytes(uri))
    path = _local_file(uri)
    with _disk_errors(uri, "read"):
        return file_checked(path, want)


def file_checked(path: "str | Path", want: str) -> str:
    """sha256_file(path), `want` without reading the file where it is known to have it (read_checked)."""
    with open(path, "rb") as fh:
        before = os.fstat(fh.fileno())
        if digests.known(_absolute(path), before) == want:
            return want
        got = _sha256_of(fh)
        after = os.fstat(fh.fileno())
    return _digest(path, before, after, lambda: got, want)


def _absolute(path: "str | Path") -> Path:
    return Path(os.path.abspath(path))


def _digest(path: "str | Path", before: os.stat_result, after: os.stat_result, compute, want: str) -> str:
    """The sha256 of the bytes read between the stats `before` and `after` of one open file: `want`
    where the file is known to have it and did not change while read, else `compute()`; a file that
    was found to have `want` is remembered (digests.remember)."""
    full = _absolute(path)
    same = digests.stamp(before) == digests.stamp(after)
    if same and digests.known(full, before) == want:
        return want
    got = compute()
    if same and got == want:
        digests.remember(full, before, got)
    return got


def iter_parquet(path: "str | Path | io.BytesIO", columns: list[str] | None = None, batch_rows: int = 262_144,
                 streaming: bool = False):
    """Polars frames of exactly `batch_rows` rows (the last one fewer), in file order (`path`: a local
    file, or a file's bytes already read and checked).

    By default one row group at a time (_row_groups: memory one row group, as pyarrow's batches
    without pre-buffering; with it, pyarrow keeps the column chunks it read ahead and memory grows
    with the file, 10M rows: 1.2 GB of Arrow buffers instead of one row group's 0.26 GB). With `streaming`, polars' streaming engine decodes
    them ahead in its own threads: 10M rows x 15 columns in 0.6 s instead of 1.5-3.2 s, but it reads
    as far ahead as its buffers allow (10M x 40 feature columns behind a consumer at score's pace:
    1.47 GB instead of 0.45 GB), so only for a consumer that keeps up (decide). The frames are cut
    again to `batch_rows` here: a stage that writes one row group per frame writes the same bytes
    whatever the engine did."""
    source = path if isinstance(path, io.BytesIO) else str(path)
    if streaming:
        lf = pl.scan_parquet(source, glob=False)
        frames = (lf if columns is None else lf.select(columns)).collect_batches(chunk_size=batch_rows,
                                                                               maintain_order=True)
    else:
        frames = _row_groups(source, columns, batch_rows)
    rows = Rows(frames)
    while (batch := rows.upto(batch_rows)) is not None:
        yield batch


GROUP_BYTES = 256 << 20     # a row group larger than this (uncompressed, all its columns) is read in batches


def _row_groups(source, columns: list[str] | None, batch_rows: int):
    """A Parquet file's rows as polars frames, in order: each row group decoded whole by polars' own
    reader, where it holds at most GROUP_BYTES and polars reads the columns as the types pyarrow's
    batches give (pl.from_arrow); else that row group in pyarrow's batches of `batch_rows`. The same
    frames either way: 10M rows x 39 feature columns in 1.96-1.99 s of CPU by polars, 3.22-3.24 s by
    pyarrow's batches and their conversion into polars (score reads its features with both cores busy
    predicting: its CPU is its wall)."""
    f = pq.ParquetFile(source, pre_buffer=False)
    md = f.metadata
    arrow = f.schema_arrow if columns is None else pa.schema([f.schema_arrow.field(c) for c in columns])
    if isinstance(source, io.BytesIO):
        source.seek(0)
    lf = pl.scan_parquet(source, glob=False)        # (a path with [ or * is a path)
    lf = lf if columns is None else lf.select(columns)
    same = lf.collect_schema() == pl.from_arrow(arrow.empty_table()).schema
    offset = 0
    for g in range(md.num_row_groups):
        group = md.row_group(g)
        if same and group.total_byte_size <= GROUP_BYTES:
            yield lf.slice(offset, group.num_rows).collect()
        else:
            yield from (pl.from_arrow(b) for b in f.iter_batches(batch_size=batch_rows, row_groups=[g], columns=columns))
        offset += group.num_rows


def compact(frame: pl.DataFrame) -> pl.DataFrame:
    """A copy of `frame` that holds only its own rows' bytes. A polars string column cut from a
    batch (filter, select) still points into the whole batch's string buffers: a stage that keeps a
    few rows of every batch would otherwise keep every batch (decide at 10M rows: the review
    candidates held 0.5 GB, and the memory it kept getting was time as well)."""
    return pl.from_arrow(frame.to_arrow()) if frame.height else frame.clear()


class Rows:
    """Exactly n rows at a time from a stream of frames (whatever its batch boundaries)."""

    def __init__(self, frames) -> None:
        self.frames, self.buf = iter(frames), []

    def _fill(self, n: int) -> int:
        """Rows buffered after pulling frames until there are `n` or the stream has ended."""
        have = sum(f.height for f in self.buf)
        while have < n:
            f = next(self.frames, None)
            if f is None:
                break
            self.buf.append(f)
            have += f.height
        return have

    def _cut(self, n: int) -> pl.DataFrame:
        whole = self.buf[0] if len(self.buf) == 1 else pl.concat(self.buf, rechunk=True)
        self.buf = [whole.slice(n)] if whole.height > n else []
        return whole.head(n) if whole.height > n else whole

    def take(self, n: int) -> pl.DataFrame:
        have = self._fill(n)
        if have < n:
            raise StorageError(f"a stream ended {n - have} row(s) short")
        return self._cut(n)

    def upto(self, n: int) -> pl.DataFrame | None:
        """The next `n` rows, fewer at the end of the stream; None after it."""
        have = self._fill(n)
        return self._cut(min(n, have)) if have else None

    def left(self) -> int:
        return sum(f.height for f in self.buf) + sum(f.height for f in self.frames)


# --------------------------------------------------------------------------- tables
# zstd level 1: at 10M rows a day 1.0-1.3 s less per partition written than level 3 (validated 3.57 -> 2.60 s,
# a feature state 4.62 -> 3.34 s, the features 7.91 -> 7.59 s) for files of the same size within 1% (benchmarks/RESULTS.md, stop 48)
PARQUET = {"compression": "zstd", "compression_level": 1, "write_statistics": True, "row_group_size": 1_000_000}
# Another codec for objects read many times over (features.state_compression): a feature state is written
# once and read by ~27-37 nights. lz4 decodes a 10M-row day state in 0.30 s of CPU instead of 0.58 s for
# 44% more bytes (benchmarks/RESULTS.md, stop 59); "none" is the least CPU and the most bytes.
CODECS = {"zstd": {"compression": "zstd", "compression_level": 1}, "lz4": {"compression": "lz4", "compression_level": None},
          "none": {"compression": "none", "compression_level": None}}


def _codec(codec: str | None) -> dict:
    """PARQUET's compression settings, or those of `codec` (a CODECS name)."""
    if codec is None:
        return {"compression": PARQUET["compression"], "compression_level": PARQUET["compression_level"]}
    if codec not in CODECS:
        raise ValueError(f"unknown Parquet codec {codec!r} (one of {sorted(CODECS)})")
    return dict(CODECS[codec])


def parquet_bytes(df: pl.DataFrame | pa.Table, codec: str | None = None) -> bytes:
    """Serialize with fixed settings: same values, same bytes (_write_parquet)."""
    buf = io.BytesIO()
    _write_parquet(df, buf, codec)
    return buf.getvalue()


def parquet_file(df: pl.DataFrame | pa.Table, path: str | Path, codec: str | None = None) -> str:
    """parquet_bytes(df, codec) written into the file `path` as they are encoded (never all held): their sha256."""
    fh = _HashingFile(Path(path))
    try:
        _write_parquet(df, fh, codec)
    except Exception:
        if fh.error is not None:            # the disk's error (full, gone), not the writer's wrapping of it
            raise fh.error from None
        raise
    finally:
        fh.close()
    return fh.hash.hexdigest()


def _has_dictionary(dtype) -> bool:
    """A Categorical or Enum, also inside a List, Array or Struct."""
    if isinstance(dtype, (pl.Categorical, pl.Enum)):
        return True
    inner = getattr(dtype, "inner", None)
    if inner is not None and _has_dictionary(inner):
        return True
    return any(_has_dictionary(f.dtype) for f in getattr(dtype, "fields", None) or [])


def _polars_writes(dtype) -> bool:
    """A column polars' own writer takes: flat (its bytes for a list column change with where the
    frame's chunks start inside a row group), not a dictionary (see _write_parquet), not Null or Object."""
    return not (dtype.is_nested() or isinstance(dtype, (pl.Categorical, pl.Enum, pl.Null, pl.Object)))


def _write_parquet(df: pl.DataFrame | pa.Table, sink, codec: str | None = None) -> None:
    """The one Parquet encoding (PARQUET; its compression that of `codec` where one is named, see
    CODECS). A polars frame is written by polars' own writer, which
    encodes the columns of a row group on all cores (one core for pyarrow's): the features of a
    10M-row date in 4.1 s instead of 7.2 s, a day's feature state 1.4 s instead of 3.2 s, about the
    same bytes (benchmarks/RESULTS.md, stop 57). Its bytes follow the frame's values, not how its
    memory happens to be chunked (tested).
    A frame with a nested column (List, Array, Struct) goes through pyarrow one row group at a time,
    as before; one with a dictionary column (Categorical, Enum, nested too), a Null or Object column,
    and an Arrow table through pyarrow, whole, as they come (slices of a dictionary column may carry
    different dictionaries)."""
    packed = _codec(codec)
    if isinstance(df, pl.DataFrame) and all(_polars_writes(t) for t in df.schema.dtypes()):
        df.write_parquet(sink, compression="uncompressed" if packed["compression"] == "none" else packed["compression"],
                         compression_level=packed["compression_level"], statistics=PARQUET["write_statistics"],
                         row_group_size=PARQUET["row_group_size"])
        return
    if not isinstance(df, pl.DataFrame) or any(_has_dictionary(t) for t in df.schema.dtypes()):
        table = df.to_arrow() if isinstance(df, pl.DataFrame) else df
        pq.write_table(table, sink, **_settings(table.slice(0, PARQUET["row_group_size"]), codec))
        return
    rows = PARQUET["row_group_size"]
    if df.height <= rows:
        table = df.rechunk().to_arrow()
        pq.write_table(table, sink, **_settings(table, codec))
        return
    writer = None
    try:
        for lo in range(0, df.height, rows):
            table = df.slice(lo, rows).rechunk().to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(sink, table.schema, **{k: v for k, v in _settings(table, codec).items()
                                                                 if k != "row_group_size"})
            writer.write_table(table, row_group_size=rows)
            del table
    finally:
        if writer is not None:
            writer.close()


def _settings(first: pa.Table, codec: str | None = None) -> dict:
    """PARQUET, with dictionaries and min/max statistics only for the columns of `first` (the first
    row group) where they pay (dictionary_columns, statistics_columns): a dictionary built for a
    column of distinct values (ids, amounts, most features) is thrown away at the page limit after
    the work is done. The features of a 10M-row date: 10.15 s to encode with a dictionary tried for
    every column, 7.9 s so, ~1% more bytes (benchmarks/RESULTS.md, stop 45). The choice follows the
    values: the same frame, the same bytes."""
    return {**PARQUET, **_codec(codec), "use_dictionary": dictionary_columns(first),
            "write_statistics": statistics_columns(first)}


@contextlib.contextmanager
def staged_file(uri: str) -> Iterator[Path]:
    """A temporary file for an object that put_file(move=True) will publish at `uri`: next to it in
    a local lake (the move is a rename; a killed writer's file is swept as _write_local's are), in
    $TMPDIR for S3 (then uploaded). Removed at the end if still there."""
    with _disk_errors(uri, "write"):
        if is_s3(uri):
            fd, tmp = tempfile.mkstemp(prefix="fraudops-upload-", suffix=".tmp")
            _sweep_temporaries(Path(tmp), pattern="fraudops-upload-*.tmp")     # a killed writer's, over an hour old
        else:
            path = local_path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def staged_parquet(uri: str, df: pl.DataFrame, codec: str | None = None) -> Iterator[tuple[Path, str]]:
    """`df` encoded now (with `codec`, see CODECS) into a staged file for `uri` (staged_file): (its path,
    its sha256), for a Partition.put_path(move=True) later; the caller may let `df` go meanwhile."""
    with staged_file(uri) as tmp:
        with _disk_errors(uri, "write"):
            sha = parquet_file(df, tmp, codec)
        del df                          # not held by this frame while the caller goes on
        yield tmp, sha


@contextlib.contextmanager
def staging_parquet(uri: str, df: pl.DataFrame) -> Iterator[Callable[[], tuple[Path, str]]]:
    """staged_parquet(uri, df) encoded in a thread of its own while the caller goes on (the features
    stage checks the rows meanwhile: the encoder and the check each keep about one core busy). Yields
    a function that waits for the file and gives (its path, its sha256), or raises the encoder's
    error. The staged file is removed when the block ends, unless it was moved; the block's end waits
    for the encoder, whether its file was asked for or not."""
    import concurrent.futures

    staging = staged_parquet(uri, df)
    done: concurrent.futures.Future = concurrent.futures.Future()

    def encode() -> None:
        try:
            done.set_result(staging.__enter__())
        except BaseException as exc:        # raised where the file is asked for
            done.set_exception(exc)
    del df
    worker = threading.Thread(target=encode, name="parquet-encode", daemon=True)
    worker.start()
    try:
        yield done.result
    finally:
        worker.join()
        if done.exception() is None:
            staging.__exit__(None, None, None)      # the staged file removed, if not moved


def read_parquet(uri: str) -> pl.DataFrame:
    return read_parquet_bytes(read_bytes(uri), uri)


def read_parquet_bytes(data: bytes, uri: str, columns: list[str] | None = None) -> pl.DataFrame:
    """The Parquet file `data` (of `uri`, named in the error), only `columns` decoded when given."""
    try:
        return pl.read_parquet(io.BytesIO(data), columns=columns)
    except Exception as exc:
        raise StorageError(f"{uri}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc


def read_parquet_path(path: "str | Path", uri: str, columns: list[str] | None = None) -> pl.DataFrame:
    """The Parquet file at `path` (the local file of `uri`, named in the error), only `columns` decoded when given."""
    try:
        return pl.read_parquet(path, columns=columns)
    except Exception as exc:
        raise StorageError(f"{uri}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc


def json_bytes(obj: Any) -> bytes:
    """Canonical JSON (sorted keys, fixed separators): same object, same bytes."""
    return (json.dumps(obj, sort_keys=True, indent=2, default=str) + "\n").encode()


def read_json(uri: str) -> Any:
    data = read_bytes(uri)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise StorageError(f"{where(uri)}: not valid JSON ({exc})") from None


# --------------------------------------------------------------------------- publishing
def read_json_optional(uri: str) -> Any:
    """read_json, or None when there is no object at `uri`."""
    try:
        return read_json(uri)
    except MissingObject:
        return None


def record_uri(uri: str) -> str:
    """Where the lineage record that commits the partition whose primary object is `uri` lives."""
    head, _, name = uri.rpartition("/")
    return f"{head}/{RECORD_PREFIX}{name}.json"


DICTIONARY_SAMPLE = 1 << 16     # the rows dictionary_columns counts


def dictionary_columns(table: pa.Table) -> list[str]:
    """The columns worth a dictionary: nested ones and those with at most one distinct value in 20
    rows of the first DICTIONARY_SAMPLE rows of `table` (the first batch of a sink, the first row
    group of an object: the choice is the same on a re-run). A dictionary built for an id column
    (every value distinct) is thrown away at the page limit after the work is done: decide's 10M
    decisions were written in 5.7 s with one for every column, 3.6 s so. The distinct values are
    counted in the first rows only: in all 1M rows of the features' first row group (39 columns) the
    count took 2.0 s, more than the dictionaries it saves."""
    import pyarrow.compute as pc

    table = table.slice(0, DICTIONARY_SAMPLE)
    out = []
    for name, col in zip(table.column_names, table.columns):
        t = col.type
        if pa.types.is_nested(t):                   # the writer names a nested column's values by their paths
            out += _leaves(table.schema.field(name))
            continue
        if pa.types.is_dictionary(t) or pa.types.is_null(t):     # already few values
            out.append(name)
            continue
        try:
            few = pc.count_distinct(col, mode="all").as_py() * 20 <= table.num_rows
        except pa.ArrowNotImplementedError:         # a type with no distinct count: the writer's default
            few = True
        if few:
            out.append(name)
    return out


def _leaves(field: pa.Field) -> list[str]:
    """The Parquet column paths of a nested field (pyarrow's names: `x.list.element`, `s.a`, ...), as
    use_dictionary wants them: the same file would give them."""
    buf = io.BytesIO()
    # (pa.nulls, not pa.array([]) or pa.table({...}): those import pandas, 0.4-0.6 s of a decide at 10M)
    pq.write_table(pa.Table.from_arrays([pa.nulls(0, field.type)], names=[field.name]), buf)
    return [c.path for c in pq.ParquetFile(io.BytesIO(buf.getvalue())).schema]


def delta_columns(table: pa.Table) -> list[str]:
    """The timestamp columns: delta-encoded (DELTA_BINARY_PACKED). A stage's batches are in event
    order, so the deltas are small: the writer takes ~12 ms per 1M timestamps instead of 28-41 ms
    (plain values, zstd), and the column is ~20% smaller. Never a dictionary."""
    return [f.name for f in table.schema if pa.types.is_timestamp(f.type)]


def statistics_columns(table: pa.Table) -> list[str]:
    """The columns whose min/max statistics a reader can prune row groups with: times, dates and
    numbers. Strings and lists get none: a stage's batches are in event order, so every row group
    of an id or a decision column spans nearly all its values and prunes nothing, while computing
    their min/max was ~20-35% of the writer's time (decide, 10M rows)."""
    return [f.name for f in table.schema
            if not (pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_string_view(f.type)
                    or pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) or pa.types.is_nested(f.type)
                    or pa.types.is_dictionary(f.type))]


class _HashingFile(io.RawIOBase):
    """A binary file that keeps the sha256 of what is written through it (the sink's object is hashed
    as it is written, not read back)."""

    def __init__(self, path: Path) -> None:
        self.fh, self.hash = open(path, "wb"), hashlib.sha256()
        self.error: OSError | None = None       # the write's own error (polars' writer raises its own type)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.hash.update(data)
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        if not self.fh.closed:
            self.fh.flush()

    def close(self) -> None:
        if not self.closed:
            try:
                super().close()
            finally:
                self.fh.close()


class ParquetSink:
    """Batches -> one Parquet file (zstd level 1: 13% less time than parquet_bytes' level 3 for 3%
    more bytes on decide's 10M rows; one row group per batch; dictionaries only where they pay:
    dictionary_columns), written locally and published at `uri` on close: memory stays at one batch;
    same batches, same bytes.

    The row groups are encoded and compressed by a writer thread (pyarrow lets go of the GIL), one
    batch behind the caller, so a stage computes its next batch while the last one is written (decide
    at 1M rows: the write was 0.43 s of 1.1 s). A failure of the writer is raised by the next
    write() or by close(); abort() stops the thread without publishing.

    `plain_schema`: no Arrow schema in the file, so readers get the Parquet types: a polars Enum
    column (an Arrow dictionary, written as its codes: ~3x faster than the strings) reads back as a
    plain string column. `statistics`: columns given min/max statistics besides statistics_columns'
    (a column of one value a day: its readers learn the value from the footer)."""

    def __init__(self, uri: str, workdir: str | Path, publisher: "Publisher | Partition | None" = None,
                 plain_schema: bool = False, statistics: tuple[str, ...] = ()) -> None:
        import queue

        self.uri, self.publisher, self.plain_schema, self.statistics = uri, publisher, plain_schema, statistics
        self.path = Path(workdir) / f"sink-{hashlib.sha1(uri.encode()).hexdigest()[:16]}.parquet"
        self.writer = None
        self.file: _HashingFile | None = None
        self.rows = 0
        self.schema: pl.Schema | None = None
        self.closed = False
        self.error: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._drain, name="parquet-sink", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while True:
            table = self.queue.get()
            if table is None:
                return
            if self.error is not None:
                continue                              # drain what is queued; the caller raises it
            try:
                if self.writer is None:
                    self.file = _HashingFile(self.path)
                    deltas = delta_columns(table)
                    self.writer = pq.ParquetWriter(self.file, table.schema, compression="zstd",
                                                   compression_level=1,
                                                   write_statistics=[*statistics_columns(table), *(
                                                       c for c in self.statistics if c in table.column_names)],
                                                   use_dictionary=[c for c in dictionary_columns(table)
                                                                   if c not in deltas],
                                                   column_encoding=dict.fromkeys(deltas, "DELTA_BINARY_PACKED"),
                                                   store_schema=not self.plain_schema)
                self.writer.write_table(table, row_group_size=1_000_000)
            except BaseException as exc:              # noqa: BLE001 - handed to the caller
                self.error = exc

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def write(self, df: pl.DataFrame) -> None:
        if self.closed:
            raise StorageError(f"{self.uri}: a batch written after the sink was closed or aborted")
        self._raise()
        if self.schema is None:
            self.schema = df.schema
        elif df.schema != self.schema:
            raise StorageError(f"{self.uri}: a batch with another schema than the first one: {dict(df.schema)} vs "
                               f"{dict(self.schema)}")
        # converted here: pyarrow's cast of polars' string views in the writer thread costs 2.5x
        self.queue.put(df.to_arrow())
        self.rows += df.height

    def _finish(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def abort(self) -> None:
        """Stop the writer thread; nothing is published (the local file is the caller's to remove).
        After close(), nothing to do."""
        self.closed = True
        self._finish()
        if self.writer is not None and self.writer.is_open:
            with contextlib.suppress(Exception):
                self.writer.close()
        if self.file is not None:
            with contextlib.suppress(Exception):
                self.file.close()

    def close(self, empty_schema: dict | None = None) -> None:
        if self.closed:
            raise StorageError(f"{self.uri}: the sink was closed or aborted already")
        self.closed = True
        self._finish()
        self._raise()
        if self.writer is None:                       # no rows at all: an empty file with the schema
            pq.write_table(pl.DataFrame(schema=empty_schema or {}).to_arrow(), str(self.path), compression="zstd")
            digest = sha256_file(self.path)
        else:
            self.writer.close()
            self.file.close()
            digest = self.file.hash.hexdigest()
        if self.publisher is not None:                # the local file is given up: moved into a local lake
            self.publisher.put_path(self.uri, self.path, sha=digest, move=True)
        else:
            put_file(self.uri, self.path, move=True)

    def __enter__(self) -> "ParquetSink":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.abort()                                  # closed already, or left unpublished


class Partition:
    """The objects one stage publishes for one partition, committed together by a lineage record
    written last (pipelines/core/lineage.py reads it): {stage, objects: {uri: sha256}, inputs: {uri:
    sha256}, sources: {uri: sha256}}. Until the record is written (or when it is withdrawn), readers
    that verify refuse the partition; an object changed after its record is caught by its sha256.

    `volatile` objects (timings) are published but not in the record: they may differ on a re-run."""

    def __init__(self, pub: "Publisher", primary: str, stage: str, inputs: dict[str, str] | None = None,
                 sources: dict[str, str] | None = None, extra: dict | None = None) -> None:
        self.pub, self.primary, self.stage = pub, primary, stage
        self.inputs = dict(inputs or {})
        self.sources = dict(sources or {})
        self.extra = dict(extra or {})
        self.objects: dict[str, str] = {}

    def put(self, uri: str, data: bytes, content_type: str = "application/octet-stream", volatile: bool = False) -> None:
        self.pub.put(uri, data, content_type)
        if not volatile:
            self.objects[uri] = sha256(data)

    def put_path(self, uri: str, local: str | Path, volatile: bool = False, sha: str | None = None,
                 move: bool = False) -> None:
        """`sha`: the file's sha256 when the caller has it; `move`: the file may be moved (put_file)."""
        digest = None if volatile else (sha or sha256_file(local))
        self.pub.put_path(uri, local, move=move)
        if not volatile:
            self.objects[uri] = digest

    def put_parquet(self, uri: str, df: pl.DataFrame, codec: str | None = None) -> None:
        """parquet_bytes(df, codec) at `uri`, encoded into a staged file (hashed as written) and published
        by a rename (local) or an upload (S3): the file is never held in memory (the features of a 10M-row
        date: 0.55 GB, held twice by parquet_bytes, at the stage's peak)."""
        with staged_parquet(uri, df, codec) as (tmp, sha):
            self.put_path(uri, tmp, sha=sha, move=True)

    def put_json(self, uri: str, obj: Any, volatile: bool = False) -> None:
        self.put(uri, json_bytes(obj), "application/json", volatile)

    def record(self) -> dict:
        return {"stage": self.stage, "primary": self.primary, "objects": dict(sorted(self.objects.items())),
                "inputs": dict(sorted(self.inputs.items())), "sources": dict(sorted(self.sources.items())),
                **self.extra}

    def commit(self) -> dict:
        if self.primary not in self.objects:
            raise StorageError(f"{self.primary}: partition committed without its primary object")
        rec = self.record()
        faults.point("publish.before_record", path=self.primary)
        self.pub.put(record_uri(self.primary), json_bytes(rec), "application/json")
        return rec


class Publisher:
    """Writes a stage's outputs to the lake and, when a snapshot folder is given (the DVC pipeline
    gives one per stage), the same bytes under <snapshot>/<path relative to the lake>, so that DVC
    versions exactly what was published. The snapshot is staged next to its folder and moved into
    place by `close()`: a stage that fails leaves no partial DVC output.

    Use as a context manager: on a clean exit the snapshot is committed, on an exception discarded."""

    def __init__(self, lake: str, snapshot: str | Path | None = None) -> None:
        self.lake = lake.rstrip("/")
        self.final = Path(snapshot) if snapshot else None
        self.snapshot = None
        if self.final is not None:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.snapshot = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{self.final.name}.staging-"))
        self.published: list[str] = []

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()

    def close(self) -> None:
        """Move the staged snapshot into place (replacing what was there)."""
        if self.snapshot is None:
            return
        with _disk_errors(str(self.final), "commit DVC output"):
            if self.final.exists():
                shutil.rmtree(self.final)
            os.replace(self.snapshot, self.final)
        self.snapshot = None

    def discard(self) -> None:
        if self.snapshot is not None:
            shutil.rmtree(self.snapshot, ignore_errors=True)
            self.snapshot = None

    def _snap(self, uri: str) -> Path | None:
        if self.snapshot is not None and uri.startswith(self.lake + "/"):
            return self.snapshot / uri[len(self.lake) + 1:]
        return None

    def put(self, uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        write_bytes(uri, data, content_type)
        self.published.append(uri)
        if (snap := self._snap(uri)) is not None:
            _write_local(snap, lambda fh: fh.write(data), str(snap))

    def put_path(self, uri: str, local: str | Path, move: bool = False, sha: str | None = None) -> None:
        """`move`: see put_file; `sha` (what Partition.put_path takes) is not needed here."""
        if (snap := self._snap(uri)) is not None:      # the snapshot's copy first: `move` may take the file
            put_file(str(snap), local)
        put_file(uri, local, move=move)
        self.published.append(uri)

    def put_parquet(self, uri: str, df: pl.DataFrame) -> None:
        self.put(uri, parquet_bytes(df))

    def put_json(self, uri: str, obj: Any) -> None:
        self.put(uri, json_bytes(obj), "application/json")

    def partition(self, primary: str, stage: str, inputs: dict[str, str] | None = None,
                  sources: dict[str, str] | None = None, extra: dict | None = None) -> Partition:
        """Start publishing a partition; publish its objects through it, then `commit()`. The old
        record stays until the new one replaces it: a re-run that writes the same bytes never makes
        the partition disappear, and an object that changed before its new record is written (a
        crash, or a reader in between) does not match the record and is refused, never mixed."""
        return Partition(self, primary, stage, inputs, sources, extra)

    def withdraw_record(self, primary: str) -> None:
        delete(record_uri(primary))
        if (snap := self._snap(record_uri(primary))) is not None:
            snap.unlink(missing_ok=True)

    def remove(self, uri: str) -> None:
        """Withdraw a previously published object (e.g. a partition that now fails validation): its
        record first (readers stop trusting it at once), then the object."""
        self.withdraw_record(uri)
        delete(uri)
        if (snap := self._snap(uri)) is not None:
            snap.unlink(missing_ok=True)


def snapshotting(out: "Publisher | str | Path | None") -> bool:
    """Does `out` (a Publisher or a snapshot folder) also write a DVC output? Then the bytes must be
    written even when the lake holds them already (nothing reused), and nothing is sharded."""
    return isinstance(out, (str, Path)) or getattr(out, "snapshot", None) is not None


@contextlib.contextmanager
def publishing(lake: str, out: "Publisher | str | Path | None") -> Iterator[Publisher]:
    """`out` when it is a Publisher already (a command publishing several days through one: its DVC
    output holds them all), else a Publisher of its own for `lake` and snapshot folder `out`."""
    if isinstance(out, Publisher):
        yield out
        return
    with Publisher(lake, out) as pub:
        yield pub
