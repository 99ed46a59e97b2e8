"""Scoring, shared by the `score` stage (the champion) and the `shadow` stage (the challenger):
which model serves (registry, local cache, or the rule scorer: flagged fallbacks), the manifest
check, chunked `inplace_predict` and the predictions partition (see pipelines/score.py).
"""
from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import logging
import os
import queue
import shutil
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from pipelines.core import lake, lineage, shards, state, storage
from pipelines.core import modelio as M
from pipelines.core.config import ScoreParams
from pipelines.core.drift import FeatureDrift
from pipelines.core.rules import rule_scores
from pipelines.core.shards import Shard

log = logging.getLogger("pipelines.scoring")
# what scoring needs of a model version, as they are in its MLflow run
FILES = {lake.MODEL: lake.artifact(lake.TRAIN, lake.MODEL), lake.MANIFEST: lake.artifact(lake.TRAIN, lake.MANIFEST),
         lake.SUMMARY: lake.artifact(lake.TRAIN, lake.SUMMARY), lake.PROFILE: lake.artifact(lake.EVALUATE, lake.PROFILE)}

class ScoringError(RuntimeError):
    """The partition cannot be scored (features missing); nothing is published."""


class RegistryUnreachable(RuntimeError):
    pass


@dataclass
class Served:
    """What scores the partition: a model (from the registry or the cache) or the rules."""
    scored_by: str                         # model | rules
    fallback: list[str] = field(default_factory=list)    # registry_cache | rules
    reason: str = ""
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    sha256: str | None = None
    booster: object = None
    manifest: dict | None = None
    threshold: float | None = None
    profile: dict | None = None

    def meta(self) -> dict:
        return {"scored_by": self.scored_by, "fallback": self.fallback, "reason": self.reason, "model_name": self.name,
                "model_version": self.version, "run_id": self.run_id, "model_sha256": self.sha256,
                "threshold": self.threshold, "spec_hash": (self.manifest or {}).get("spec_hash")}


# --------------------------------------------------------------------------- the model and its cache
def cache_root(p: ScoreParams) -> Path:
    if p.cache_dir:
        return Path(p.cache_dir)
    return state.state_dir() / "model-cache"


def _registry_up(timeout: float) -> bool:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith("http"):
        return True                    # a local file/sqlite store: no server to be down
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def _verify(files: dict[str, bytes], sha: str | None, where: str) -> None:
    if sha and M.sha256(files[lake.MODEL]) != sha:
        raise ValueError(f"{where}: model.ubj sha256 {M.sha256(files['model.ubj'])[:12]} != registered {sha[:12]}")


def _served(files: dict[str, bytes], meta: dict, fallback: list[str], reason: str) -> Served:
    booster = M.load_booster(files[lake.MODEL], sklearn=False)   # scoring never needs it
    summary = json.loads(files[lake.SUMMARY])
    return Served("model", fallback, reason, meta["name"], meta["version"], meta["run_id"], meta["sha256"], booster,
                  json.loads(files[lake.MANIFEST]), float(summary["operating_threshold"]),
                  json.loads(files[lake.PROFILE]))


def _cache_dir(root: Path, meta: dict) -> Path:
    # by version *and* run: a registry rebuilt from scratch reuses version numbers
    return root / meta["name"] / f"v{meta['version']}-{meta['run_id']}"


def _write_cache(root: Path, meta: dict, files: dict[str, bytes], remember: bool = True) -> None:
    """<root>/<name>/v<version>-<run>/ written whole then renamed; <root>/<name>/current.json (the
    last model served) replaced atomically."""
    final = _cache_dir(root, meta)
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
        for n, data in files.items():
            (tmp / n).write_bytes(data)
        (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True))
        try:
            tmp.rename(final)
        except OSError:                # another process cached the same version first
            shutil.rmtree(tmp, ignore_errors=True)
    if not remember:                   # a shadow model is cached, never the champion's fallback
        return
    ptr = final.parent / f".current-{os.getpid()}.json"
    ptr.write_text(json.dumps(meta, sort_keys=True))
    os.replace(ptr, final.parent / "current.json")


def _read_cache(root: Path, meta: dict | None = None, name: str | None = None) -> tuple[dict, dict[str, bytes]] | None:
    """The cached files of `meta` (name, version, run_id), or of the last model served for `name`."""
    try:
        if meta is None:
            meta = json.loads((root / name / "current.json").read_text())
        d = _cache_dir(root, meta)
        return meta, {n: (d / n).read_bytes() for n in FILES}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _download(run_id: str) -> dict[str, bytes]:
    import mlflow.artifacts

    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, path in FILES.items():
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)
            files[n] = Path(local).read_bytes()
    return files


def resolve_model(p: ScoreParams, shadow: bool = False) -> Served:
    """The scorer for this run (see the module doc for the order). `shadow`: the model under
    `p.alias` or nothing (scored_by "none", with the reason): no fallback, and the cache pointer
    to the last champion served is left alone."""
    root = cache_root(p)
    if shadow:
        try:
            s = _resolve_registered(p, root, remember=False)
        except RegistryUnreachable as exc:
            return Served("none", [], f"registry unreachable ({exc})")
        return s if s.scored_by == "model" else Served("none", [], s.reason)
    try:
        return _resolve_registered(p, root, remember=True)
    except RegistryUnreachable as exc:
        cached = _read_cache(root, name=p.model_name)
        if cached is None:
            return Served("rules", ["rules"], f"registry unreachable ({exc}) and no cached model in {root}")
        meta, files = cached
        try:
            _verify(files, meta.get("sha256"), f"cache {_cache_dir(root, meta)}")
            s = _served(files, meta, ["registry_cache"], f"registry unreachable ({exc}): cached "
                                                         f"{p.model_name} v{meta['version']} used")
        except Exception as err:
            return Served("rules", ["rules"], f"registry unreachable ({exc}); cached model unusable: {err}")
        log.warning("%s", s.reason)
        return s


def _resolve_registered(p: ScoreParams, root: Path, remember: bool) -> Served:
    """The model under p.alias, from the registry (RegistryUnreachable when it does not answer)."""
    if not _registry_up(p.registry_timeout_s):
        raise RegistryUnreachable(f"{os.environ.get('MLFLOW_TRACKING_URI')}/health did not answer "
                                  f"within {p.registry_timeout_s}s")
    from pipelines.core import registry as R

    try:
        mv = R.version_by_alias(p.model_name, p.alias, p.registry_timeout_s)
    except Exception as exc:           # the server went away between the probe and the call
        raise RegistryUnreachable(f"{type(exc).__name__}: {str(exc)[:200]}") from None
    return _load_version(p, root, mv.version if mv else None, mv, remember)


def _load_version(p: ScoreParams, root: Path, version: str | None, mv, remember: bool = True) -> Served:
    if version is None:
        return Served("rules", ["rules"], f"no model {p.model_name}@{p.alias} in the registry")
    meta = {"name": p.model_name, "version": str(mv.version), "run_id": mv.run_id, "sha256": mv.tags.get("model_sha256")}
    try:
        cached = _read_cache(root, meta)
        files = cached[1] if cached else _download(mv.run_id)
        _verify(files, meta["sha256"], f"{p.model_name} v{version}")
        s = _served(files, meta, [], f"{p.model_name}@{p.alias} = v{version}")   # same record, cached or not
        log.info("%s v%s: %s", p.model_name, version, "from the local cache" if cached else "downloaded")
    except Exception as exc:
        return Served("rules", ["rules"], f"{p.model_name}@{p.alias} v{version} failed to load: "
                                          f"{type(exc).__name__}: {str(exc)[:300]}")
    _write_cache(root, meta, files, remember)
    return s


# --------------------------------------------------------------------------- scoring
def fill_defaults(frame: pl.DataFrame, defaults: dict, features: list[str], profile: dict | None
                  ) -> tuple[pl.DataFrame, pl.Series]:
    """Fill nulls of the configured features; return the frame and, per row, the features filled
    (None when no row needed a default)."""
    filled, flags = [], []
    for f, v in defaults.items():
        if f not in features or f not in frame.columns:
            continue
        if v == "reference_median":
            sample = ((profile or {}).get("features", {}).get(f) or {}).get("sample") or []
            if not sample:
                raise ScoringError(f"score.feature_defaults.{f}: reference_median but the reference profile has "
                                   f"no sample for {f}")
            v = sample[50]
        if frame[f].null_count():
            flags.append(pl.when(pl.col(f).is_null()).then(pl.lit(f)).otherwise(None))
            filled.append(pl.col(f).fill_null(pl.lit(v).cast(frame.schema[f])))
    if not flags:                      # the usual case: nothing to fill, no per-row list to build
        return frame, None
    names = frame.select(pl.concat_list(flags).list.drop_nulls().alias("d"))["d"]
    return frame.with_columns(filled), names


CONSTANT = ("model_name", "model_version", "run_id", "spec_hash", "scored_by")   # one value per partition


def _constant(value) -> pl.Expr:
    """A string column of one value, as an Enum of that value: the sink writes it as its codes (one
    dictionary entry), ~2x less writer time for the predictions at 10M rows and no copy of the strings
    into Arrow. The file holds plain strings (plain_schema), the bytes the strings give once the first
    batch has 20 rows (storage.dictionary_columns); a null stays a null String."""
    return pl.lit(None, dtype=pl.String) if value is None else pl.lit(str(value), dtype=pl.Enum([str(value)]))


def _lists(values: list[str], n: int, name: str) -> pl.Series:
    """`n` rows each holding the list `values` (strings), made as Arrow offsets over the values repeated:
    polars' broadcast of a list literal is materialised row by row when the batch goes to the writer
    (~5 ms per 262,144-row batch for score's two lists, nearly all of them empty); the same column."""
    import pyarrow as pa

    offsets = pa.array(np.arange(n + 1, dtype=np.int64) * len(values))
    return pl.Series(name, pa.LargeListArray.from_arrays(offsets, pa.array(values * n, pa.large_string())))


def _as_scored(batch: pl.DataFrame) -> pl.DataFrame:
    """A batch of predictions read back (plain strings) typed as score_partition makes them: the merge
    of shards writes the bytes of one unsharded run (the sink's choice of dictionaries follows the type)."""
    out = []
    for c in CONSTANT:
        values = batch[c].unique()
        if batch[c].dtype == pl.String and batch[c].null_count() == 0 and len(values) == 1:
            out.append(batch[c].cast(pl.Enum(values.to_list())))
    return batch.with_columns(out)


def score_partition(frame: pl.DataFrame, fmanifest: dict, served: Served, p: ScoreParams, ds: dt.date,
                    where: str, observed: FeatureDrift | None = None) -> tuple[pl.DataFrame, dict]:
    """Predictions for one feature partition (rows in = rows out) and timing stats. The rows carry
    the columns of `score.carry_columns` as built (what decide's rules read); `observed` counts the
    features as built against the reference profile (what decide's guardrails and monitor read)."""
    keys = [c for c in fmanifest.get("key_columns", ["event_id"]) if c in frame.columns]
    carry = [c for c in p.carry_columns if c not in keys]
    missing = [c for c in carry if c not in frame.columns]
    if missing:
        raise ScoringError(f"{where}: score.carry_columns {missing} are not columns of the feature partition; "
                           f"nothing scored")
    carried = frame.select(carry)
    if observed is not None:
        observed.update(frame)
    latencies: list[float] = []
    t0 = time.perf_counter()
    if served.scored_by == "model":
        m = served.manifest
        if m["spec_hash"] != fmanifest["spec_hash"]:
            raise M.ManifestMismatch(f"{where}: features built with spec {fmanifest['spec_hash']} but "
                                     f"{served.name} v{served.version} was trained on spec {m['spec_hash']}; "
                                     f"nothing scored (rebuild the features or register a model for this spec)")
        M.check_features(frame, m, where)
        frame, defaulted = fill_defaults(frame, p.feature_defaults, m["feature_names"], served.profile)
        x = M.feature_matrix(frame, m, where, columns=True)
        parts = []
        for i in range(0, max(x.shape[0], 1), p.chunk_rows):
            c0 = time.perf_counter()
            parts.append(M.predict(served.booster, x[i:i + p.chunk_rows], chunk_rows=p.chunk_rows))
            latencies.append((time.perf_counter() - c0) * 1000)
        score = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        threshold = served.threshold
    else:
        defaulted = None
        c0 = time.perf_counter()
        score = rule_scores(frame, p.rules)
        latencies.append((time.perf_counter() - c0) * 1000)
        threshold = float(p.rules["threshold"])
    seconds = time.perf_counter() - t0
    n = frame.height
    base_flags = pl.lit(served.fallback, dtype=pl.List(pl.String))
    out = frame.select(keys).with_columns(
        pl.lit(ds).alias("ds"),
        pl.Series("score", score, dtype=pl.Float32),
        pl.lit(threshold, dtype=pl.Float32).alias("threshold"),
        *(_constant(v).alias(c) for c, v in zip(CONSTANT, (served.name or p.model_name, served.version, served.run_id,
                                                             fmanifest["spec_hash"], served.scored_by))),
        _lists([], n, "defaulted_features") if defaulted is None else defaulted.alias("defaulted_features"),
    )
    out = out.with_columns(_lists(list(served.fallback), n, "fallback") if defaulted is None else
                           pl.when(pl.col("defaulted_features").list.len() > 0)
                           .then(pl.concat_list(base_flags, pl.lit(["feature_default"], dtype=pl.List(pl.String))))
                           .otherwise(base_flags).alias("fallback"))
    out = out.select(*keys, "ds", "score", "threshold", "model_name", "model_version", "run_id", "spec_hash",
                     "scored_by", "fallback", "defaulted_features").with_columns(carried)
    assert out.height == n
    lat = np.array(latencies) if latencies else np.zeros(1)
    stats = {"rows": n, "chunks": len(latencies), "chunk_rows": p.chunk_rows, "seconds": seconds, "latencies_ms": latencies,
             "rows_per_s": n / seconds if seconds > 0 else None,
             "chunk_latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                                  "p99": float(np.percentile(lat, 99)), "max": float(lat.max())},
             "fallback_rows": ({k: n for k in served.fallback} if defaulted is None else fallback_counts(out))
             if n else {}}
    return out, stats


def fallback_counts(pred: pl.DataFrame) -> dict[str, int]:
    counts = pred.select(pl.col("fallback").explode()).drop_nulls()["fallback"].value_counts()
    return {k: int(v) for k, v in sorted(zip(counts["fallback"], counts["count"]))}


def merge_stats(parts: list[dict], seconds: float, chunk_rows: int) -> dict:
    lat = np.array([x for s in parts for x in s["latencies_ms"]] or [0.0])
    rows = sum(s["rows"] for s in parts)
    fb: dict[str, int] = {}
    for s in parts:
        for k, v in s["fallback_rows"].items():
            fb[k] = fb.get(k, 0) + v
    return {"rows": rows, "chunks": int(sum(s["chunks"] for s in parts)), "chunk_rows": chunk_rows, "seconds": seconds,
            "predict_seconds": float(sum(s["seconds"] for s in parts)),
            "rows_per_s": rows / seconds if seconds > 0 else None,
            "chunk_latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                                 "p99": float(np.percentile(lat, 99)), "max": float(lat.max())},
            "fallback_rows": dict(sorted(fb.items()))}


AUTO_WORKERS = 4          # score.workers 0: at most this many (each batch held costs ~40-100 MB)


def workers(p: ScoreParams) -> int:
    """Batches scored at once: score.workers, or (0) the cores this process may use (its CPU affinity and
    its cgroup's CPU quota, as a container's limit sets it), at most AUTO_WORKERS."""
    if p.workers:
        return p.workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, min(cores, AUTO_WORKERS))


@contextlib.contextmanager
def _one_thread_each(booster, n: int):
    """With `n` batches predicted at once, each in one thread of the booster (its own thread count
    restored after). XGBoost's inplace_predict is thread-safe; one batch over all cores meets
    OpenMP's barriers once per block of rows, and a thread the OS takes away for the writer or the
    reader holds the others there: 16 batches of 10M x 34 features in 4.9-5.3 s two at a time,
    one thread each, against 5.5-6.4 s one at a time over both cores (2 cores; the same floats)."""
    if booster is None or n <= 1:
        yield
        return
    before = json.loads(booster.save_config())["learner"]["generic_param"].get("nthread", "0")
    booster.set_param({"nthread": 1})
    try:
        yield
    finally:
        booster.set_param({"nthread": int(before)})


SPLIT_ROWS = 16_384       # the file's last batch is scored in n slices where each holds at least this many rows


def _joined(results: list[tuple[pl.DataFrame, dict]]) -> tuple[pl.DataFrame, dict]:
    """One batch's predictions and stats from those of its slices, in order (the rows as one piece:
    the sink writes the bytes the whole batch gives). The batch stays one chunk, its latency the
    slowest slice's (they ran at once): the chunk stats do not depend on the threads."""
    if len(results) == 1:
        return results[0]
    sts = [st for _, st in results]
    latency = max(x for s in sts for x in s["latencies_ms"])
    st = {**merge_stats(sts, sum(s["seconds"] for s in sts), sts[0]["chunk_rows"]), "chunks": 1,
          "latencies_ms": [latency], "chunk_latency_ms": dict.fromkeys(("p50", "p95", "p99", "max"), latency)}
    return pl.concat([out for out, _ in results]).rechunk(), st


def _scored(batches, fmanifest: dict, served: Served, p: ScoreParams, ds: dt.date, where: str,
            observed: FeatureDrift, n: int, last: int | None = None):
    """(index, predictions, stats) of each (index, batch) of `batches`, in their order, scored `n` at
    once in threads of their own: each counts its features into an accumulator of its own, added into
    `observed` at the end (exact: counts). At most n + 1 batches are held besides the one being read,
    so that no thread waits on the reader. Batch `last` (the file's last) is scored as n slices, one
    per thread, so that its tail does not leave n - 1 threads idle (1.15M rows: 5 batches, the fifth
    ~100k rows scored alone on one core); the rows scored are the same, so are the bytes."""
    if n <= 1:
        for i, batch in batches:
            yield (i, *score_partition(batch, fmanifest, served, p, ds, where, observed))
        return
    spare: queue.SimpleQueue = queue.SimpleQueue()
    accs = [FeatureDrift(served.profile) for _ in range(n)]
    for a in accs:
        spare.put(a)

    def one(batch: pl.DataFrame):
        acc = spare.get()
        try:
            return score_partition(batch, fmanifest, served, p, ds, where, acc)
        finally:
            spare.put(acc)

    def sliced(i: int, batch: pl.DataFrame) -> list[pl.DataFrame]:
        if i != last or batch.height < n * SPLIT_ROWS:
            return [batch]
        step = -(-batch.height // n)
        return [batch.slice(k, step) for k in range(0, batch.height, step)]

    running: collections.deque = collections.deque()
    with _one_thread_each(served.booster, n), ThreadPoolExecutor(n, thread_name_prefix="score") as pool:
        try:
            for i, batch in batches:
                running.append((i, [pool.submit(one, piece) for piece in sliced(i, batch)]))
                while len(running) > n:
                    i0, futs = running.popleft()
                    yield (i0, *_joined([f.result() for f in futs]))
            while running:
                i0, futs = running.popleft()
                yield (i0, *_joined([f.result() for f in futs]))
        finally:                     # (an error: the batches not started are not scored)
            for _, futs in running:
                for fut in futs:
                    fut.cancel()
    observed.accs = FeatureDrift.merged(served.profile, [observed.state(), *(a.state() for a in accs)]).accs


def score_file(path, fmanifest: dict, served: Served, p: ScoreParams, ds: dt.date, where: str,
               sink: storage.ParquetSink, observed: FeatureDrift, shard: "Shard | None" = None) -> dict:
    """Stream a feature partition file through `score_partition`, batch by batch (memory: a few
    batches), `workers(p)` batches at once, the features counted into `observed`; the predictions
    written in the file's order. With `shard`, only the shard's batches (batch i of the file
    goes to shard i mod N); the stats then list them (`batches`: [index, rows]) and keep the per-batch
    stats (`parts`) for the merge."""
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    parts, batches = [], []
    owned = ((i, b) for i, b in enumerate(storage.iter_parquet(path, batch_rows=p.chunk_rows))
             if shard is None or shard.owns(i))
    with pq.ParquetFile(str(path)) as f:
        last = (f.metadata.num_rows - 1) // p.chunk_rows
    # closed at once on an error here (the sink's): the threads stopped and the booster's thread count
    # restored then, not when the generator is collected (a traceback kept would keep it)
    with contextlib.closing(_scored(owned, fmanifest, served, p, ds, where, observed, workers(p), last)) as scored:
        for i, out, st in scored:
            sink.write(out)
            parts.append(st)
            batches.append([i, out.height])
    if not parts and shard is None:    # an empty partition still gets an (empty) predictions file
        out, st = score_partition(pl.from_arrow(pq.ParquetFile(str(path)).schema_arrow.empty_table()), fmanifest,
                                  served, p, ds, where, observed)
        sink.write(out)
        parts.append(st)
    stats = merge_stats(parts, time.perf_counter() - t0, p.chunk_rows)
    return stats if shard is None else {**stats, "batches": batches, "parts": parts}


def load_features(store, ds: dt.date, workdir, reader: lineage.Reader) -> tuple[Path, dict, str, Callable[[], None]]:
    """The ds feature partition (a local copy), its manifest, its uri and the check of the copy's
    sha256 against its record, computed in a thread while the rows are scored (the features of a
    10M-row date: 0.6 s of hashing no longer before the first batch): call it before anything made from
    the copy is published (ScoringError where the copy is not the record's: nothing published)."""
    uri = store.uri("features", date=ds.isoformat())
    try:
        fman = reader.read_json(store.uri("features_manifest", date=ds.isoformat()), primary=uri)
        path, check = reader.fetch_verifying(uri, workdir)
    except lineage.NotCommitted:
        raise ScoringError(f"{uri}: feature partition missing (features not built, blocked by validation, or "
                           f"withdrawn); nothing scored") from None
    except lineage.StaleInput as exc:
        raise ScoringError(f"{exc}; nothing scored") from None

    def verified() -> None:
        try:
            check()
        except lineage.StaleInput as exc:
            raise ScoringError(f"{exc}; nothing scored") from None
    return path, fman, uri, verified


def _score_shard(params, ds: dt.date, served: Served, pub, path, fman: dict, uri: str, reader, key: dict | None,
                 shard: "Shard", recompute: bool = False) -> dict:
    """One shard of the date's predictions (its batches), a partition of its own; kept when one with
    the same key (the date's run key and k/N) is there. Returns its record."""
    where = shards.folder(params.storage, "score", ds, shard)
    primary = f"{where}/part-0.parquet"
    skey, rec = shards.found(log, "score", ds, shard, primary, key, recompute)
    if rec is not None:
        return rec
    with storage.scratch_dir("score-shard") as tmp:
        with storage.ParquetSink(primary, tmp, None, plain_schema=True, statistics=CONSTANT) as sink:
            observed = FeatureDrift(served.profile)
            stats = score_file(path, fman, served, params.score, ds, uri, sink, observed, shard)
            part = pub.partition(primary, "score", inputs=reader.consumed,
                                 extra={"run": skey, "shard": str(shard), "batches": stats["batches"]})
            sink.publisher = part
            part.put_json(f"{where}/_stats.json", stats, volatile=True)
            part.put_json(f"{where}/{OBSERVED}", observed.state())
            sink.close()
        rec = part.commit()
    log.info("score %s shard %s: %d batches, %d rows -> %s", ds, shard, len(stats["batches"]), stats["rows"], primary)
    return rec


def _merge_shards(params, ds: dt.date, served: Served, pub, path, fman: dict, uri: str, read: lineage.Reader,
                  key: dict, count: int, recompute: bool, sink: storage.ParquetSink, observed: FeatureDrift) -> dict:
    """The date's predictions written to `sink` from its shards, batch by batch in the order of the
    feature partition (every batch from exactly one shard); the shards' stats and feature counts
    merged (`observed`: their sum)."""
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    total = pq.ParquetFile(str(path)).metadata.num_rows
    if total == 0:                                           # nothing to split: one (empty) file as always
        return score_file(path, fman, served, params.score, ds, uri, sink, observed)
    records = [_score_shard(params, ds, served, pub, path, fman, uri, read, key, s, recompute)
               for s in shards.all_of(count)]
    owner = {i: (k, rows) for k, r in enumerate(records) for i, rows in r["batches"]}
    shards.check_batches([i for r in records for i, _ in r["batches"]], sum(rows for _, rows in owner.values()),
                         total, f"score {ds}")
    reader = lineage.Reader()
    with storage.scratch_dir("score-merge") as tmp:
        streams = [storage.Rows(storage.iter_parquet(reader.fetch(r["primary"], tmp), batch_rows=params.score.chunk_rows))
                   for r in records]
        for i in range(len(owner)):
            k, rows = owner[i]
            sink.write(_as_scored(streams[k].take(rows)))
        if any(s.left() for s in streams):
            raise shards.ShardError(f"score {ds}: a shard holds rows beyond its batches; nothing published")
        states = [reader.read_json(f"{r['primary'].rsplit('/', 1)[0]}/{OBSERVED}", primary=r["primary"]) for r in records]
        observed.accs = FeatureDrift.merged(served.profile, states).accs
    parts, seconds = [], time.perf_counter() - t0               # the merge's own time, plus each shard's
    for r in records:
        where = f"{r['primary'].rsplit('/', 1)[0]}/_stats.json"
        try:
            st = storage.read_json(where)
            parts += st.get("parts") or []
            seconds += st.get("seconds") or 0.0
        except storage.MissingObject:
            log.warning("score %s: %s missing: the shard's timings are not in the date's stats", ds, storage.where(where))
    stats = merge_stats(parts, seconds, params.score.chunk_rows)
    return {**stats, "shards": count}


OUTPUTS = {"champion": ("predictions", "scored_model", "scoring_stats", "features_observed"),
           "shadow": ("shadow_predictions", "shadow_model", "shadow_stats", "shadow_features_observed")}
OBSERVED = "_features_observed.json"   # a shard's features' counts (FeatureDrift state), beside its predictions


def run_key(params, ds: dt.date, served: Served, role: str) -> dict | None:
    """What a date's scores are made of: the feature partition and its manifest (their sha256 in the
    features record), the model served, the score params, the scoring code and the versions of the
    libraries that compute the scores. Its `key` (sha256)
    is kept in the predictions record: a re-run with the same key recomputes nothing. None when the
    feature partition has no record (the run then fails on it as always)."""
    import importlib.metadata

    from pipelines.core import code

    store, d = params.storage, ds.isoformat()
    uri, man = store.uri("features", date=d), store.uri("features_manifest", date=d)
    try:        # the features record, trusted the way a read trusts it (its inputs, recursively)
        objects = lineage.Reader().record(uri).get("objects") or {}
    except (storage.MissingObject, lineage.StaleInput):
        return None
    parts = {"features": {uri: objects.get(uri), man: objects.get(man)}, "role": role,
             "model": {k: v for k, v in served.meta().items() if k != "reason"},
             "params_sha256": storage.sha256(storage.json_bytes(_what(params.score))),
             "code_version": code.fingerprint("pipelines.core.scoring"),
             "libraries": {lib: importlib.metadata.version(lib) for lib in ("xgboost", "polars", "pyarrow", "numpy")}}
    return lineage.keyed(parts)


def _what(p: ScoreParams) -> dict:
    """The score params that make the scores (not `workers`: how many batches are scored at once)."""
    d = asdict(p)
    d.pop("workers")
    return d


def _unchanged(primary: str, key: dict | None) -> dict | None:
    """The record of `primary` when it was made with `key` and both its objects and the feature
    partition still have the bytes their records name (lineage.unchanged)."""
    return lineage.unchanged(primary, key, key["features"] if key else {})


def score_day(params, ds: dt.date, served: Served, snapshot: "str | storage.Publisher | None" = None,
              role: str = "champion", recompute: bool = False, shard: "Shard | None" = None, count: int = 1) -> dict:
    """Score the ds partition with `served`; publish predictions, _model.json and _stats.json (for
    role "shadow": the shadow partition, the same code and columns). A date whose predictions were
    made from the same features, model, params and code (run_key) is not scored again unless
    `recompute`. With `shard` only that shard is scored and published (core/shards.py); with `count` > 1
    the date's predictions are merged from its shards (those not found made here): the same bytes."""
    p, store = params.score, params.storage
    d = ds.isoformat()
    kind, model_kind, stats_kind, observed_kind = OUTPUTS[role]
    key = run_key(params, ds, served, role)
    stats = None
    done = not recompute and not storage.snapshotting(snapshot) and _unchanged(store.uri(kind, date=d), key) is not None
    if done and shard is not None:
        log.info("score %s shard %s: the date is scored already from the same inputs (key %s); nothing to do", d, shard,
                 key["key"][:12])
        return {"skipped": True}
    if done:                                                            # (a DVC output wants the bytes written)
        try:
            stats = storage.read_json(store.uri(stats_kind, date=d))
        except storage.MissingObject:
            stats = None
    if stats is not None:
        log.info("score %s (%s): unchanged since its record (the same features, model, params and code: key %s); "
                 "nothing recomputed -> %s", d, role, key["key"][:12], store.uri(kind, date=d))
        return {**stats, "skipped": True}
    reader = lineage.Reader()
    with storage.scratch_dir("score") as tmp, storage.publishing(store.lake, snapshot) as pub:
        path, fman, uri, verified = load_features(store, ds, tmp, reader)
        if shard is not None:
            verified()                 # (a shard's batches: checked first, as its partition is made within)
            return _score_shard(params, ds, served, pub, path, fman, uri, reader, key, shard, recompute)
        primary = store.uri(kind, date=d)
        part = pub.partition(primary, role if role == "shadow" else "score", inputs=reader.consumed,
                             extra={"model": {k: v for k, v in served.meta().items() if k != "reason"},
                                    **({"run": key} if key else {})})
        with storage.ParquetSink(primary, tmp, part, plain_schema=True, statistics=CONSTANT) as sink:
            observed = FeatureDrift(served.profile)
            sharded = count > 1 and key is not None and not storage.snapshotting(pub)
            if sharded:
                verified()             # (the shards it makes are partitions of their own: checked first)
                stats = _merge_shards(params, ds, served, pub, path, fman, uri, reader, key, count, recompute, sink,
                                      observed)
            else:
                try:
                    stats = score_file(path, fman, served, p, ds, uri, sink, observed)
                except Exception:
                    verified()         # bytes that are not the record's (a cut file): that is the error told
                    raise
            verified()                 # the features read were the record's: else nothing is published
            imp = M.importance(served.booster, served.manifest["feature_names"]) if served.booster is not None else {}
            part.put_json(store.uri(model_kind, date=d), {**served.meta(), "role": role,
                                                          "reference_profile": served.profile, "importance": imp})
            part.put_json(store.uri(observed_kind, date=d), observed.state())
            part.put_json(store.uri(stats_kind, date=d), {**stats, "model": served.meta(), "features": uri},
                          volatile=True)
            sink.close()
        part.commit()                  # the record last: until it is written, the date is not scored
        if sharded:                    # merged and published: the shards have served
            shards.clear(store, "score", ds, count)
    log.info("score %s (%s): %d rows by %s%s in %.2fs (%.0f rows/s), chunk p95 %.1f ms -> %s", d, role, stats["rows"],
             served.scored_by, f" v{served.version}" if served.version else "",
             stats["seconds"], stats["rows_per_s"] or 0, stats["chunk_latency_ms"]["p95"], store.uri(kind, date=d))
    return stats
