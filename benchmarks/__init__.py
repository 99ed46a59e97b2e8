"""Benchmark scripts (not tests): each prints a ratio against a baseline measured in the same run."""
from __future__ import annotations


def own_peak_mib() -> float:
    """This process's own peak RSS in MiB: VmHWM, the high-water mark of its address space.

    Not `getrusage(RUSAGE_SELF).ru_maxrss`: Python starts a child with vfork, and at exec Linux
    folds the parent's high-water mark into the child's maxrss. A child of a parent that peaked at
    4.6 GiB (the 10M-row lake builder) reported 4,627 MiB for a stage whatever the stage used
    (measured; a 13 MiB child of a 2 GB parent read 1,921 MiB). The same holds for wait4's rusage."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource                      # not Linux: the OS's figure, with its caveat

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# `python -c STAGE_WRAPPER <argv of python -m pipelines>` (the repository on PYTHONPATH): the stage as
# Airflow runs it, its own peak RSS written to $FRAUDOPS_BENCH_PEAK_FILE when it exits (a parent's wait4 rusage would carry the
# parent's own high-water mark, see own_peak_mib)
STAGE_WRAPPER = """
import atexit, os, runpy, sys
def _peak():
    from benchmarks import own_peak_mib
    with open(os.environ["FRAUDOPS_BENCH_PEAK_FILE"], "w") as fh:
        fh.write(str(own_peak_mib()))
atexit.register(_peak)
sys.argv = ["pipelines", *sys.argv[1:]]
runpy.run_module("pipelines", run_name="__main__", alter_sys=True)
"""


# `python -c BARE_JOB <model cache dir of the name> <features parquet> <out parquet> <chunk rows>`: the least
# a scoring process does, the anchor score is held to. It imports polars, pyarrow and xgboost (without
# scikit-learn, as the stage does), loads the last model served from the local model cache, reads the
# features partition (the key and the model's columns only) in score's chunks as score reads it,
# `inplace_predict`s each and writes event_id + score (zstd 1). No registry, no checks, no lineage,
# no drift counts, no carried columns. Its own peak RSS goes to $FRAUDOPS_BENCH_PEAK_FILE.
BARE_JOB = """
import atexit, json, os, sys
from pathlib import Path
def _peak():
    from benchmarks import own_peak_mib
    with open(os.environ["FRAUDOPS_BENCH_PEAK_FILE"], "w") as fh:
        fh.write(str(own_peak_mib()))
atexit.register(_peak)
root, features, out, chunk = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
import numpy as np, polars as pl, pyarrow as pa, pyarrow.parquet as pq
sys.modules["sklearn"] = None
import xgboost
cur = json.loads((root / "current.json").read_text())
d = root / f"v{cur['version']}-{cur['run_id']}"
names = json.loads((d / "feature_manifest.json").read_text())["feature_names"]
booster = xgboost.Booster(model_file=str(d / "model.ubj"))
writer = None
for b in pq.ParquetFile(features, pre_buffer=False).iter_batches(batch_size=chunk, columns=["event_id", *names]):
    f = pl.from_arrow(b)                             # read as score reads (storage.iter_parquet)
    x = f.select(pl.col(c).cast(pl.Float32) for c in names).to_numpy(order="c")
    t = pa.table({"event_id": b.column("event_id"), "score": np.asarray(booster.inplace_predict(x), np.float32)})
    writer = writer or pq.ParquetWriter(out, t.schema, compression="zstd", compression_level=1)
    writer.write_table(t)
if writer is not None:                               # (a day without rows writes nothing)
    writer.close()
"""
