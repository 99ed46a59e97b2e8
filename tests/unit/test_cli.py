"""One CLI, two names: `fraudops` (the console script) and `python -m pipelines`; every command
answers --help without any service running."""
from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import pytest

from pipelines.__main__ import COMMANDS, main
from tests.conftest import REPO


def test_the_console_script_lists_every_command():
    script = REPO / ".venv" / "bin" / "fraudops"
    assert script.exists(), "make install makes the console script (pyproject [project.scripts])"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("usage: fraudops <command>"), out.stdout + out.stderr
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")}
    assert listed == set(COMMANDS), listed ^ set(COMMANDS)
    same = subprocess.run([sys.executable, "-m", "pipelines", "--help"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert same.stdout.replace("python -m pipelines", "fraudops") == out.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, monkeypatch):
    from pipelines.core import state

    monkeypatch.setattr(sys, "argv", ["fraudops", command, "--help"])
    monkeypatch.setattr(state, "load_env_file", lambda *a, **k: None)     # the stack's env stays out of this process
    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and "usage:" in text.getvalue(), text.getvalue()[:500]


def test_a_range_says_how_far_it_is(caplog):
    import logging

    from pipelines.core.cli import progress

    with caplog.at_level(logging.INFO, logger="pipelines"):
        assert list(progress(range(25), "features")) == list(range(25))
        assert list(progress([7], "score")) == [7]                 # one date: no progress line
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("features: 1/25 (4%)") and "left" in lines[0]
    assert lines[-1].startswith("features: 25/25 (100%)") and "left" not in lines[-1]
    assert len(lines) == 1 + 12 + 1 and not any(m.startswith("score") for m in lines)    # the first, every 2nd, the last


def test_partitions_in_lanes_run_side_by_side_each_lane_in_order_and_every_failure_is_named():
    """each_partition with lanes: two lanes run at once (each reaches a barrier the other must also
    reach), a lane's items one after the other in their order, a failed partition does not stop the
    others, and the one StageFailed names every failure in the items' order."""
    import threading

    from pipelines.core.cli import StageFailed, each_partition

    items = [("tx", 1), ("labels", 1), ("tx", 2), ("labels", 2), ("tx", 3)]
    met = threading.Barrier(2, timeout=30)
    done: list[tuple[str, int]] = []

    def one(item):
        if item[1] == 1:
            met.wait()                    # both lanes' first items at once, or a BrokenBarrierError
        done.append(item)
        if item in (("labels", 2), ("tx", 2)):
            raise ValueError(f"{item[0]} day {item[1]} is broken")

    with pytest.raises(StageFailed, match=r"failed for 2 partition\(s\): tx day 2 is broken \| labels day 2 is broken"):
        each_partition(items, one, ValueError, "failed for", lane=lambda item: item[0], threads=2)
    assert sorted(done) == sorted(items)
    assert [d for d in done if d[0] == "tx"] == [("tx", 1), ("tx", 2), ("tx", 3)]
    done.clear()
    with pytest.raises(StageFailed):                  # one thread: the items' order, no barrier met
        each_partition([i for i in items if i[1] != 1], one, ValueError, "failed for", lane=lambda item: item[0],
                       threads=1)
    assert done == [("tx", 2), ("labels", 2), ("tx", 3)]


def test_a_lane_failing_otherwise_stops_the_other_lanes_at_their_next_item():
    """An error that is not a partition's (a bug, an interrupt) ends the stage: the other lanes finish
    the item in hand (a transaction of its own) and start no other; the error is raised as it is."""
    import threading

    from pipelines.core.cli import each_partition

    started = threading.Event()
    done: list[tuple[str, int]] = []

    def one(item):
        if item == ("labels", 1):
            started.wait(30)               # tx's first item is under way
            raise KeyError("a bug")
        if item == ("tx", 1):
            started.set()
            threading.Event().wait(0.5)     # still in hand when the other lane fails
        done.append(item)

    items = [("tx", 1), ("labels", 1), ("tx", 2), ("tx", 3), ("labels", 2)]
    with pytest.raises(KeyError, match="a bug"):
        each_partition(items, one, ValueError, "failed for", lane=lambda item: item[0], threads=2)
    assert done == [("tx", 1)]
