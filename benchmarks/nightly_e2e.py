"""Benchmark: one nightly date end to end, every stage a process of its own as Airflow runs it
(`python -m pipelines <stage> --date D`), with a full-volume look-back: every history day as large
as the scored day.

    python benchmarks/nightly_e2e.py [--rows 1000000 5000000 10000000] [--keep] [--rerun] [--pairs 3] [--repeat 1]

For each size, a local lake (benchmarks/.out/e2e_<rows>) gets 44 days of simulated history
(validated and canonical transactions, canonical labels, committed partitions: ingest's duplicate
window reads the earlier days' ids, features the validated look-back) and the raw deliveries of the
scored date (transactions, and the labels landing that day). The night before is run once
(features of D-1: the feature_state partitions of the look-back are made then, as on a real
night; the date's own state is made by the date's features, timed, as on a real night: one kept from an
earlier run is removed first). A model trained on D-1's features is the champion in an MLflow server on 127.0.0.1 (sqlite
backend, started and stopped here), the suites' row-count bounds scaled to the volume. Then, timed,
the date's stages in order: ingest, validate, features, score, decide, monitor: wall, CPU time
(os.wait4) and peak RSS (VmHWM) of each process. `--repeat N` runs the date's stages N times in a row
and reports the run of the median total beside every run's: on a shared VM one run is one draw.

Anchors measured in the same run, on the same partitions:
  * the bare scoring job (benchmarks.BARE_JOB), a process like a stage: it reads the date's features
    (the key and the model's columns), `inplace_predict`s them in score's chunks and writes event_id
    + score; score's target is held to its wall, read from score and the bare job run again side by side
    (--pairs times, the order swapped each pair: the median of their ratios);
  * the predict calls alone (`booster.inplace_predict` over the date's features, only those calls timed):
    the floor under any scoring process;
  * the transactions suite on the canonical partition: the polars evaluator vs GX's own engine;
  * features of the date in a lake that holds only that day (no history): the memory anchor.
Targets (issue 16, 2 cores / 24 GiB): the 10M date <= 180 s end to end and <= 4 GiB peak; features'
peak RSS with the full history within 1.2x of its peak with no history; score >= 0.9x the bare job;
decide <= 5 s at 10M.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / ".out"
sys.path.insert(0, str(ROOT))

from benchmarks import BARE_JOB, STAGE_WRAPPER, own_peak_mib  # noqa: E402
FIRST = dt.date(2026, 1, 1)
DAYS = 45                                   # 44 history days + the scored date
DAY = FIRST + dt.timedelta(days=DAYS - 1)
STAGES = ("ingest", "validate", "features", "score", "decide", "monitor")
ANCHOR = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from benchmarks.nightly_e2e import anchor
print("RESULT " + json.dumps(anchor(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _world(rows: int):
    from pipelines.core.config import load_params
    from pipelines.ops.demo_data import DemoParams, make_world

    base = DemoParams.from_dict(load_params(ROOT / "params.yaml").section("demo_data"))
    customers = max(200, int(rows / 1.75))
    p = dataclasses.replace(base, n_customers=customers, n_terminals=max(400, customers * 2), bugs=())
    return p, make_world(p)


def prepare(rows: int, work: Path) -> Path:
    """The lake (history committed, the date raw), the suites, params.yaml; returns the params path."""
    from benchmarks.features_incremental import build
    from pipelines.core import storage
    from pipelines.ops.demo_data import _encode, simulate_day, split_labels

    lake = work / "lake"
    build(rows, lake)                                     # 45 days validated + labels landing d + 7
    for kind, name in (("validated", "transactions"), ("canonical", "labels")):
        shutil.rmtree(lake / kind / name / f"date={DAY}")  # the date itself arrives raw, below
    p, world = _world(rows)
    tx, _ = split_labels(simulate_day(p, world, DAY))
    _, landing = split_labels(simulate_day(p, world, DAY - dt.timedelta(days=7)))
    for name, frame in (("transactions", tx), ("labels", landing)):
        storage.write_bytes(f"{work}/raw/{name}/date={DAY}/part-0.parquet", _encode(frame, "parquet"))
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["validate"]["suites"] = suites(work, int(rows * 0.5), int(rows * 1.5))
    raw["storage"]["lake"] = str(lake)
    for name, first in (("transactions", FIRST), ("labels", FIRST + dt.timedelta(days=7))):
        raw["datasets"][name]["uri"] = f"{work}/raw/{name}"
        raw["datasets"][name]["first_date"] = first.isoformat()
    raw["score"]["cache_dir"] = str(work / "model-cache")
    raw["features"]["incremental"] = True
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def suites(work: Path, lo: int, hi: int) -> dict[str, str]:
    """The project's suites with their row-count bounds set to [lo, hi], under work/suites."""
    out = work / "suites"
    out.mkdir(exist_ok=True)
    for name in ("transactions", "labels", "features"):
        suite = json.loads((ROOT / "expectations" / f"{name}.json").read_text())
        for e in suite["expectations"]:
            if e["type"] == "expect_table_row_count_to_be_between":
                e["kwargs"] = {"min_value": lo, "max_value": hi}
        (out / f"{name}.json").write_text(json.dumps(suite))
    return {n: str(out / f"{n}.json") for n in ("transactions", "labels", "features")}


def champion(params_path: Path, work: Path, trees: int = 200, depth: int = 6) -> None:
    """A model trained on the features of D-1 (their simulated labels), logged and registered as
    the champion in the MLflow server of MLFLOW_TRACKING_URI, its files in the scoring cache."""
    from pipelines.core import storage
    from pipelines.core.config import load_params

    params = load_params(params_path)
    store, prev = params.storage, (DAY - dt.timedelta(days=1)).isoformat()
    feats = storage.read_parquet(store.uri("features", date=prev))
    man = storage.read_json(store.uri("features_manifest", date=prev))
    labels = storage.read_parquet(store.uri("canonical", dataset="labels",
                                            date=(DAY + dt.timedelta(days=6)).isoformat()))
    frame = feats.join(labels.select("event_id", "label"), on="event_id", how="inner").head(500_000)
    register(params, frame, man, trees, depth)


def register(params, frame, man: dict, trees: int = 200, depth: int = 6) -> None:
    """Train on `frame` (features and `label`), log and register the model as the champion (its
    reference profile from `frame`), its files in the scoring cache."""
    import tempfile

    import mlflow
    import numpy as np
    import polars as pl
    import xgboost as xgb

    from pipelines.core import lake as L
    from pipelines.core import modelio as M
    from pipelines.core import scoring
    from pipelines.core.drift import reference_profile

    prev = (DAY - dt.timedelta(days=1)).isoformat()
    manifest = M.feature_manifest(man)
    x = M.feature_matrix(frame, manifest)
    y = frame["label"].cast(pl.Float32).to_numpy()
    booster = xgb.train({"objective": "binary:logistic", "max_depth": depth, "eta": 0.1, "tree_method": "hist",
                         "seed": 0, "nthread": 2}, xgb.DMatrix(x, label=y), num_boost_round=trees)
    score = M.predict(booster, x)
    prof = reference_profile(frame.with_columns(pl.Series("score", score)), manifest, params.evaluate)
    files = {L.MODEL: bytes(booster.save_raw("ubj")), L.MANIFEST: json.dumps(manifest).encode(),
             L.SUMMARY: json.dumps({"operating_threshold": float(np.quantile(score, 0.99))}).encode(),
             L.PROFILE: json.dumps({**prof, "days": 1, "window": [prev, prev]}).encode()}
    sha = M.sha256(files[L.MODEL])
    name = params.score.model_name
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run() as run:
        for n, art in scoring.FILES.items():
            f = Path(tmp) / n
            f.write_bytes(files[n])
            mlflow.log_artifact(str(f), str(Path(art).parent) if "/" in art else None)
    c = mlflow.MlflowClient()
    c.create_registered_model(name)
    mv = c.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id, tags={"model_sha256": sha})
    c.set_registered_model_alias(name, params.score.alias, mv.version)
    scoring._write_cache(Path(params.score.cache_dir), {"name": name, "version": str(mv.version),
                                                         "run_id": run.info.run_id, "sha256": sha}, files)


def anchor(what: str, params_path: Path, work: Path) -> dict:
    """One anchor in a process of its own: 'predict' (bare inplace_predict over the date's features),
    'suite-polars' / 'suite-gx' (the transactions suite on the canonical partition)."""
    from pipelines.core import lineage, storage
    from pipelines.core.config import load_params

    params = load_params(params_path)
    store = params.storage
    if what == "predict":
        from pipelines.core import modelio as M
        from pipelines.core import scoring

        served = scoring.resolve_model(params.score)
        path = store.uri("features", date=DAY.isoformat())
        bare, rows = 0.0, 0
        for batch in storage.iter_parquet(path, batch_rows=params.score.chunk_rows):
            x = M.feature_matrix(batch, served.manifest)
            t = time.perf_counter()
            served.booster.inplace_predict(x)
            bare += time.perf_counter() - t
            rows += batch.height
        return {"seconds": bare, "rows": rows, "peak_mib": own_peak_mib()}
    from pipelines.core.gx import load_suite, validate_frame

    frame = lineage.Reader().read_parquet(store.uri("canonical", dataset="transactions", date=DAY.isoformat()))
    suite = load_suite(params.validate.suites["transactions"])
    t = time.perf_counter()
    v = validate_frame(frame, suite, "transactions", DAY, params.validate.max_quarantine_fraction,
                       engine=what.split("-")[1])
    return {"seconds": time.perf_counter() - t, "blocked": bool(v.blocked),
            "peak_mib": own_peak_mib()}


def canonical_history(work: Path) -> None:
    """The history's canonical partitions as ingest publishes them (ingest.put_canonical: with their
    ids' hashes): the transactions' the validated partitions' bytes (the simulated history has no
    rejects and no quarantine), the labels' given their hashes where they lack them. Ingest's
    duplicate window reads the `ingest.duplicate_window_days` days before the date every night, a
    look-back of its own. A lake kept before this was measured (stop 40 and earlier) gets them on --rerun."""
    import polars as pl

    from pipelines.core import lineage, storage
    from pipelines.ingest import _ids_uri, put_id_hashes

    lake = work / "lake"
    with storage.Publisher(str(lake), None) as pub:
        for i in range(DAYS - 1):
            d = FIRST + dt.timedelta(days=i)
            for name, source in (("transactions", "validated"), ("labels", "canonical")):
                rel = f"canonical/{name}/date={d}/part-0.parquet"
                src = lake / rel.replace("canonical/", f"{source}/", 1)
                try:
                    rec = lineage.Reader().record(f"{lake}/{rel}")
                except lineage.NotCommitted:
                    rec = {"objects": {}}
                if _ids_uri(f"{lake}/{rel}") in rec["objects"] or not src.exists():
                    continue
                keep = {} if source == "validated" else rec          # a label partition's record, but its hashes
                part = pub.partition(f"{lake}/{rel}", "ingest", inputs=keep.get("inputs"), sources=keep.get("sources"),
                                     extra={k: v for k, v in keep.items()
                                            if k not in ("stage", "primary", "objects", "inputs", "sources")})
                # the same bytes (the labels' states keep their inputs), from a copy (a file is not put on itself)
                copy = work / "canonical.tmp"
                shutil.copyfile(src, copy)
                put_id_hashes(part, f"{lake}/{rel}", pl.read_parquet(copy, columns=["event_id"])["event_id"])
                part.put_path(f"{lake}/{rel}", copy, move=True)
                part.commit()


def alone_lake(work: Path) -> None:
    """A lake holding only the date's validated partition (the no-history anchor)."""
    from pipelines.core import storage

    alone = work / "alone"
    rel = f"validated/transactions/date={DAY}/part-0.parquet"
    with storage.Publisher(str(alone / "lake"), None) as pub:
        part = pub.partition(f"{alone}/lake/{rel}", "validate")
        part.put_path(f"{alone}/lake/{rel}", work / "lake" / rel)
        part.commit()


def drop_own_state(params: Path) -> None:
    """Remove the scored date's feature_state partition from the lake of `params` (its folder holds its
    objects and its record): the date's features make it again, as the date's night does."""
    p = yaml.safe_load(params.read_text())
    layout = p["storage"]["layout"]["feature_state"]
    if "{date}" not in layout.rpartition("/")[0]:      # the folder removed must be the date's alone
        raise SystemExit(f"storage.layout.feature_state {layout!r}: no folder of the date's own to remove")
    primary = Path(p["storage"]["lake"]) / layout.format(date=DAY.isoformat())
    shutil.rmtree(primary.parent, ignore_errors=True)


def _timed(argv: list[str], env: dict, log: Path, script: str = STAGE_WRAPPER) -> dict:
    """Run one `python -m pipelines ...` process (or `script` with argv[3:]); its wall time, its CPU time
    (user + system, wait4's: on this shared VM the wall of one run moves by 10-20%, its CPU less) and
    its own peak RSS (VmHWM, written by the process as it exits: wait4's maxrss would carry this
    process's own high-water mark)."""
    import tempfile

    assert argv[1:3] == ["-m", "pipelines"] or script is not STAGE_WRAPPER, argv
    with tempfile.NamedTemporaryFile(prefix="fraudops-bench-peak-", delete=False) as fh:
        peak_file = fh.name
    try:
        with log.open("ab") as out:
            t = time.perf_counter()
            proc = subprocess.Popen([argv[0], "-c", script, *argv[3:]], stdout=out, stderr=subprocess.STDOUT,
                                    env={**env, "FRAUDOPS_BENCH_PEAK_FILE": peak_file,
                                         "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))},
                                    cwd=log.parent)
            try:
                _, status, usage = os.wait4(proc.pid, 0)    # (its CPU: its own and its waited-for children's)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            wall = time.perf_counter() - t
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv[2:6])}: exit {proc.returncode}; see {log}")
        return {"seconds": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                "peak_mib": float(Path(peak_file).read_text())}
    finally:
        os.unlink(peak_file)


def _stage(stage: str, params: Path, env: dict, log: Path, *extra: str) -> dict:
    return _timed([sys.executable, "-m", "pipelines", stage, "--params", str(params), "--date", DAY.isoformat(),
                   *extra], env, log)


def bare_job(params: Path, work: Path, env: dict, log: Path) -> dict:
    """The bare scoring job (benchmarks.BARE_JOB) over the date's features, timed as a process like a stage:
    what score's wall is held to (the issue's 'bare inplace_predict': predict, the partition's read and
    the scores' write)."""
    p = yaml.safe_load(params.read_text())
    features = p["storage"]["lake"] + f"/features/date={DAY.isoformat()}/part-0.parquet"
    out = work / "bare-job.parquet"
    try:
        name = p["score"].get("model_name") or p["register"]["model_name"]
        return _timed([sys.executable, "-m", "bare-job", str(Path(p["score"]["cache_dir"]) / name),
                       features, str(out), str(p["score"]["chunk_rows"])], env, log, BARE_JOB)
    finally:
        out.unlink(missing_ok=True)


def score_pairs(params: Path, work: Path, env: dict, log: Path, n: int) -> list[dict]:
    """score (--recompute: the same bytes published again) and the bare scoring job, `n` times side by side,
    the order swapped every pair: the VM moves a process's wall by up to a third from one run to the next,
    so the target's ratio is read from runs made back to back, not from one score run and one bare run
    minutes apart."""
    pairs = []
    # score hashes the features partition as a night's one read does: the date's own score run left its
    # digest known (pipelines/core/digests.py), which a night's first read never finds
    first_read = {**env, "FRAUDOPS_DIGESTS": "off"}
    for i in range(n):
        if i % 2:
            bare = bare_job(params, work, env, log)
            score = _stage("score", params, first_read, log, "--recompute")
        else:
            score = _stage("score", params, first_read, log, "--recompute")
            bare = bare_job(params, work, env, log)
        pairs.append({"score": score, "bare-job": bare})
    return pairs


def _anchor(what: str, params: Path, work: Path, env: dict, log: Path) -> dict:
    argv = [sys.executable, "-c", ANCHOR.format(root=str(ROOT)), what, str(params), str(work)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=work)
    if proc.returncode:
        raise SystemExit(f"anchor {what}: {proc.stderr[-3000:]}")
    return json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])


@contextlib.contextmanager
def mlflow_server(work: Path):
    """An MLflow server on a free loopback port (sqlite and artifacts under `work`), started and
    stopped here; yields the environment the stages run with (it, FRAUDOPS_HOME under `work`)."""
    import urllib.request

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FRAUDOPS_HOME": str(work / "home"),
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        env.pop(k, None)
    mlflow = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--backend-store-uri", f"sqlite:///{work}/mlflow.db",
                               "--default-artifact-root", str(work / "mlartifacts"), "--workers", "1"],
                              stdout=(work / "mlflow.log").open("wb"), stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if time.time() > deadline or mlflow.poll() is not None:
                    raise SystemExit(f"mlflow server did not start; see {work / 'mlflow.log'}") from None
                time.sleep(1)
        _quiet(mlflow.pid)
        yield env
    finally:
        os.killpg(mlflow.pid, 15)
        try:
            mlflow.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(mlflow.pid, 9)


def _session_cpu(sid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of session `sid` (Linux /proc)."""
    tck, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:                       # (a process that ended meanwhile)
            continue
        if int(fields[3]) == sid:             # (the session id: the 6th field of stat, 4th after the name)
            # its own and its waited-for children's (a worker that ended is still counted by its parent)
            total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tck
    return total


def _quiet(sid: int, timeout: float = 120.0) -> None:
    """Wait until the MLflow server (the session `sid`) is idle: it answers its health check ~9 s
    after it starts, then keeps both cores of this machine busy for another ~10 s (its workers
    starting), which ran beside the night's first stages and slowed ingest by several seconds (a
    night's server runs all along, not started at its first stage). Idle: under 0.1 s of CPU in
    each of two seconds in a row; after `timeout`, timed anyway (said on stderr)."""
    if not Path("/proc/self/stat").exists():
        return
    deadline, calm, last = time.monotonic() + timeout, 0, _session_cpu(sid)
    while calm < 2:
        if time.monotonic() > deadline:
            print(f"the MLflow server was still busy after {timeout:.0f} s: the stages are timed beside it",
                  file=sys.stderr)
            return
        time.sleep(1)
        now = _session_cpu(sid)
        calm, last = (calm + 1 if abs(now - last) < 0.1 else 0), now     # (a process gone unwaited: not calm)


def one_size(rows: int, keep: bool, rerun: bool = False, pairs: int = 2, repeat: int = 1) -> dict:
    """One size end to end. `rerun`: a lake kept by an earlier --keep run is used as it is (its history,
    the night before's states, its champion) and only the date's stages and the anchors run again
    (--recompute): the code changed, not the data (the states are made again first if their code changed).
    `repeat`: the date's stages run that many times in a row (each made again, its own state first):
    every run is kept, the one of the median total is the date's (the anchors run once, after)."""
    work = OUT / f"e2e_{rows}"
    params = work / "params.yaml"
    log = work / "stages.log"
    t = time.perf_counter()
    if rerun and not (params.exists() and (work / "alone" / "params.yaml").exists()):
        raise SystemExit(f"--rerun: no lake kept at {work} (run with --keep first)")
    if not rerun:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        # the data is made in a process of its own: a process's peak RSS (wait4) includes its parent's
        # memory at the fork, so the parent that launches the stages stays small
        subprocess.run([sys.executable, __file__, "--child", "prepare", "--rows", str(rows), "--work", str(work)],
                       check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    subprocess.run([sys.executable, __file__, "--child", "canonical", "--rows", str(rows), "--work", str(work)],
                   check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    again = ("--recompute",) if rerun else ()
    with mlflow_server(work) as env:
        logged = log.stat().st_size if log.exists() else 0
        night_before = _timed([sys.executable, "-m", "pipelines", "features", "--params", str(params), "--date",
                               (DAY - dt.timedelta(days=1)).isoformat()], env, log)
        # states made from raw in processes of their own (features.state_apart_mb): their peak, as logged
        with log.open("rb") as fh:
            fh.seek(logged)
            apart = re.findall(rb"made in processes of their own, peak RSS (\d+) MiB", fh.read())
        if apart:
            night_before["states_apart_peak_mib"] = max(float(x) for x in apart)
        if not rerun:
            subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
                            "from benchmarks.nightly_e2e import champion; champion(Path(sys.argv[2]), Path(sys.argv[3]))",
                            str(ROOT), str(params), str(work)], check=True, env=env, cwd=work,
                           stdout=subprocess.DEVNULL)
        prep = time.perf_counter() - t
        # the date's own feature state (its events' totals, the labels landed the day before) is made by
        # the date's features, as on a real night: one kept from an earlier run is removed (a --rerun
        # found it made and timed a night without it: ~20 s of the 10M night's features)
        runs = []
        for i in range(repeat):
            drop_own_state(params)
            runs.append({stage: _stage(stage, params, env, log, *(again if rerun or i == 0 else ("--recompute",)))
                         for stage in STAGES})
        runs_by_total = sorted(runs, key=lambda r: sum(s["seconds"] for s in r.values()))
        stages = runs_by_total[(len(runs) - 1) // 2]            # the median run (the lower of two middles)
        anchors = {w: _anchor(w, params, work, env, log) for w in ("predict", "suite-polars", "suite-gx")}
        anchors["bare-job"] = bare_job(params, work, env, log)
        anchors["pairs"] = score_pairs(params, work, env, log, pairs)
        # features of the date with no history at all: the same partition in a lake of that day alone
        alone = work / "alone"
        if not rerun:
            subprocess.run([sys.executable, __file__, "--child", "alone", "--rows", str(rows), "--work", str(work)],
                           check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            a = yaml.safe_load(params.read_text())
            a["storage"]["lake"] = str(alone / "lake")
            a["datasets"]["transactions"]["first_date"] = DAY.isoformat()
            a["datasets"]["labels"]["first_date"] = (DAY + dt.timedelta(days=1)).isoformat()
            (alone / "params.yaml").write_text(yaml.safe_dump(a, sort_keys=False))
        drop_own_state(alone / "params.yaml")
        anchors["features-no-history"] = _stage("features", alone / "params.yaml", env, log, *again)
    n = anchors["predict"]["rows"]
    res = {"rows": n, "prepare_s": prep, "night_before_features": night_before, "stages": stages, "runs": runs,
           "anchors": anchors}
    (OUT / f"nightly_e2e_{rows}.json").write_text(json.dumps(res, indent=1))
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return res


def report(res: dict) -> None:
    n, st, an = res["rows"], res["stages"], res["anchors"]
    total = sum(s["seconds"] for s in st.values())
    peak = max(s["peak_mib"] for s in st.values())
    print(f"\ndate {DAY}, {n:,} transactions, look-back {DAYS - 1} days of the same volume "
          f"(prepared in {res['prepare_s']:.0f} s; the night before's features {res['night_before_features']['seconds']:.0f} s, "
          f"peak {res['night_before_features']['peak_mib']:.0f} MiB"
          + (f", its states made apart {res['night_before_features']['states_apart_peak_mib']:.0f} MiB at most"
             if "states_apart_peak_mib" in res["night_before_features"] else "") + ")")
    runs = res.get("runs") or [st]
    if len(runs) > 1:
        print(f"  the date run {len(runs)}x, the run of the median total below")
    print(f"  {'stage':10s} {'wall':>8s} {'CPU':>8s} {'rows/s':>12s} {'peak RSS':>10s}")
    for k, s in st.items():
        print(f"  {k:10s} {s['seconds']:7.1f}s {s.get('cpu_s', float('nan')):7.1f}s {n / s['seconds']:12,.0f} "
              f"{s['peak_mib']:7.0f} MiB")
    cpu = sum(s.get("cpu_s", float("nan")) for s in st.values())
    print(f"  {'date':10s} {total:7.1f}s {cpu:7.1f}s {n / total:12,.0f} {peak:7.0f} MiB   "
          f"(targets at 10M: <= 180 s, <= 4096 MiB)")
    if len(runs) > 1:
        each = [(sum(s["seconds"] for s in r.values()), max(s["peak_mib"] for s in r.values()),
                 r["features"]["seconds"]) for r in runs]
        print("  every run, in order (the date / its peak / features): "
              + "; ".join(f"{t:.1f} s / {p:.0f} MiB / {f:.1f} s" for t, p, f in each)
              + f"; median {statistics.median(t for t, _, _ in each):.1f} s, "
              f"{sum(t <= 180 for t, _, _ in each)} of {len(each)} <= 180 s")
    score_ratios(st["score"], an)
    print(f"  transactions suite: polars {an['suite-polars']['seconds']:.2f} s, GX {an['suite-gx']['seconds']:.2f} s "
          f"({an['suite-gx']['seconds'] / max(an['suite-polars']['seconds'], 1e-9):.0f}x)")
    nh = an["features-no-history"]
    print(f"  features peak RSS with the full history / with none ({nh['peak_mib']:.0f} MiB): "
          f"{st['features']['peak_mib'] / nh['peak_mib']:.2f} (target <= 1.2); wall {st['features']['seconds']:.1f} s "
          f"vs {nh['seconds']:.1f} s")


def score_ratios(score: dict, an: dict) -> None:
    """score against its two anchors: the bare scoring job as a process (the target's anchor) and the
    predict calls alone (what no scoring process can beat: reading and writing are not in it)."""
    if "bare-job" in an:
        print(f"  score / bare scoring job ({an['bare-job']['seconds']:.1f} s, {an['bare-job']['peak_mib']:.0f} MiB: "
              f"read, inplace_predict, write): {an['bare-job']['seconds'] / score['seconds']:.2f} (target >= 0.9)")
    print(f"  score / the predict calls alone ({an['predict']['seconds']:.1f} s): "
          f"{an['predict']['seconds'] / score['seconds']:.2f}")
    pairs = an.get("pairs") or []
    if pairs:
        ratios = sorted(p["bare-job"]["seconds"] / p["score"]["seconds"] for p in pairs)
        each = ", ".join(f"{p['score']['seconds']:.1f} s / {p['bare-job']['seconds']:.1f} s" for p in pairs)
        print(f"  score / bare scoring job, run side by side {len(pairs)}x (score / bare: {each}): "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f} (target >= 0.9)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000, 10_000_000])
    ap.add_argument("--keep", action="store_true", help="keep the generated lakes (benchmarks/.out/e2e_<rows>)")
    ap.add_argument("--rerun", action="store_true",
                    help="reuse the lakes a --keep run left (history, states, champion): time the date's stages again")
    ap.add_argument("--pairs", type=int, default=3,
                    help="score and the bare job run again side by side this many times (the ratio's median)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the date's stages this many times in a row: every run printed, the median one reported")
    ap.add_argument("--child", choices=["prepare", "canonical", "alone"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "prepare":
        prepare(args.rows[0], Path(args.work))
        return 0
    if args.child == "canonical":
        canonical_history(Path(args.work))
        return 0
    if args.child == "alone":
        alone_lake(Path(args.work))
        return 0
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, python {platform.python_version()}")
    for rows in args.rows:
        report(one_size(rows, args.keep or args.rerun, args.rerun, args.pairs, max(1, args.repeat)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
