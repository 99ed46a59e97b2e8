"""core/code: the files a module runs, read from the syntax trees, kept in a cache by content."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.core import code


def _closure(module: str) -> tuple[Path, ...]:
    """The files `module` runs, from the syntax trees alone (no cache)."""
    seen, todo = {}, [module]
    while todo:
        m = todo.pop()
        f = code._file(m)
        if m in seen or f is None:
            continue
        seen[m] = f
        todo.extend(n for n in code.imported(f, m) if n.split(".")[0] == "pipelines")
    return tuple(sorted(set(seen.values())))


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    code.files.cache_clear()
    yield tmp_path / "xdg" / "fraudops" / "imports.json"
    code.files.cache_clear()


def test_the_files_of_each_stage_are_those_of_the_trees_cache_cold_or_warm(cache, monkeypatch):
    stages = ("ingest", "validate", "features", "score", "decide", "monitor", "train", "feedback", "core.scoring")
    trees = {s: _closure(f"pipelines.{s}") for s in stages}
    assert len(trees["core.scoring"]) > 10
    assert {s: code.files(f"pipelines.{s}") for s in stages} == trees and cache.is_file()
    before = {s: code.fingerprint(f"pipelines.{s}") for s in stages}
    code.files.cache_clear()

    def no_tree(*a, **k):
        raise AssertionError("read from the tree though cached")
    monkeypatch.setattr(code, "imported", no_tree)                 # a warm cache: no tree is walked
    assert {s: code.files(f"pipelines.{s}") for s in stages} == trees
    assert {s: code.fingerprint(f"pipelines.{s}") for s in stages} == before


def test_a_changed_file_is_read_again_and_a_broken_cache_is_only_slower(cache, tmp_path, monkeypatch):
    root = tmp_path / "src"
    pkg = root / "pipelines"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pipelines import b\n")
    (pkg / "b.py").write_text("import json\n")
    (pkg / "c.py").write_text("")
    monkeypatch.setattr(code, "PACKAGE", pkg)
    names = lambda: [f.name for f in code.files("pipelines.a")]                       # noqa: E731
    assert names() == ["__init__.py", "a.py", "b.py"]
    first = code.fingerprint("pipelines.a")
    code.files.cache_clear()
    (pkg / "a.py").write_text("from pipelines import b\n\n\ndef f():\n    import pipelines.c\n")
    assert names() == ["__init__.py", "a.py", "b.py", "c.py"]             # the new content, not the cached
    assert code.fingerprint("pipelines.a") != first
    assert len(json.loads(cache.read_text())["imports"]) == 5                # a.py twice, b.py, c.py, __init__.py
    for broken in ("not json", '{"imports": [1]}', '{"imports": {"x": 3}}'):
        cache.write_text(broken)
        code.files.cache_clear()
        assert names() == ["__init__.py", "a.py", "b.py", "c.py"]
        assert len(json.loads(cache.read_text())["imports"]) >= 3          # written again, whole
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))           # a cache that cannot be written
    code.files.cache_clear()
    assert names() == ["__init__.py", "a.py", "b.py", "c.py"]
