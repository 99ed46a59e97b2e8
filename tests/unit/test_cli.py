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
