"""core/code: the text scan of imports finds every import the syntax tree holds."""
from __future__ import annotations

from pathlib import Path

from pipelines.core import code

TRICKY = '''"""A docstring."""
from __future__ import annotations
import os, sys as system
import pipelines.core.storage as st
from . import sibling
from .. import config, lake as lk
from .scoring import (resolve_model,   # a comment, with a comma
                      score_day as sd)
from pipelines.core.guardrails import \\
    check, verdict
try: import pipelines.core.alerts
except ImportError: pass
x = 1; import pipelines.core.metrics
def f():
    if True:
        from pipelines.core import drift
    import importlib
    return importlib.import_module("pipelines.core.charts")
'''


def _module(f: Path) -> str:
    rel = f.relative_to(code.PACKAGE.parent).with_suffix("")
    return ".".join(rel.parent.parts if f.name == "__init__.py" else rel.parts)


def test_the_scan_finds_every_import_the_tree_holds_in_the_package():
    files = sorted(code.PACKAGE.rglob("*.py"))
    assert len(files) > 40
    for f in files:
        tree, text = code.imported(f, _module(f)), code.scanned(f.read_text(), _module(f), f.name == "__init__.py")
        assert tree <= text, (f, tree - text)


def test_the_scan_reads_every_form_of_import(tmp_path):
    f = tmp_path / "scoring.py"
    f.write_text(TRICKY)
    tree = code.imported(f, "pipelines.core.scoring")
    assert {"os", "sys", "pipelines.core.storage", "pipelines.core.sibling", "pipelines.config", "pipelines.lake",
            "pipelines.core.scoring.resolve_model", "pipelines.core.scoring.score_day", "pipelines.core.guardrails.check",
            "pipelines.core.guardrails.verdict", "pipelines.core.alerts", "pipelines.core.metrics",
            "pipelines.core.drift", "pipelines.core.charts"} <= tree
    assert "system" not in tree and "st" not in tree
    assert code.scanned(TRICKY, "pipelines.core.scoring") == tree


def test_the_files_of_each_stage_are_those_the_tree_finds():
    def closure(module: str) -> tuple[Path, ...]:
        seen, todo = {}, [module]
        while todo:
            m = todo.pop()
            f = code._file(m)
            if m in seen or f is None:
                continue
            seen[m] = f
            todo.extend(n for n in code.imported(f, m) if n.split(".")[0] == "pipelines")
        return tuple(sorted(set(seen.values())))
    for stage in ("ingest", "validate", "features", "score", "decide", "monitor", "train", "feedback"):
        assert code.files(f"pipelines.{stage}") == closure(f"pipelines.{stage}"), stage
    assert len(code.files("pipelines.core.scoring")) > 10
