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
