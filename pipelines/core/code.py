"""The code a stage runs, as files: the project modules a module imports, transitively (module level
and inside functions), read statically. Its fingerprint changes when any of them changes.

Every stage process computes one fingerprint for its run key. Walking the syntax trees of a stage's
~17 files costs ~0.1 s, so what each file imports is kept in a small cache (`imports.json` in
$XDG_CACHE_HOME/fraudops, else ~/.cache/fraudops) under the sha256 of the module's name and the file's
bytes: a file changed is a new key, read again from its tree; a cache that cannot be read or written
is only slower."""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent          # pipelines/
CACHE_ENTRIES = 2000                                       # the newest kept (a few per file version)


def _file(module: str) -> Path | None:
    rel = Path(*module.split("."))
    for f in (PACKAGE.parent / rel.with_suffix(".py"), PACKAGE.parent / rel / "__init__.py"):
        if f.is_file():
            return f
    return None


def imported(f: Path, module: str, text: "str | bytes | None" = None) -> set[str]:
    """Every module name `f` (module `module`) imports, at module level or inside functions, relative
    imports resolved, `importlib.import_module("...")` with a literal name included."""
    pkg = module if f.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(f.read_bytes() if text is None else text)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found |= {base, *(f"{base}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args \
                and isinstance(node.args[0], ast.Constant):
            found.add(node.args[0].value)
    return found


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fraudops" / "imports.json"


def _read_cache() -> dict[str, list[str]]:
    try:
        entries = json.loads(cache_path().read_text()).get("imports")
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def _write_cache(entries: dict[str, list[str]]) -> None:
    """Replace the cache with `entries` (the newest CACHE_ENTRIES), atomically; any error ignored
    (two processes writing at once: the last one wins, every entry is right whoever wrote it)."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".imports-")
        with os.fdopen(fd, "w") as fh:
            json.dump({"imports": dict(list(entries.items())[-CACHE_ENTRIES:])}, fh)
        os.replace(tmp, path)
    except OSError:
        pass


def _project(names: set[str]) -> set[str]:
    return {m for m in names if isinstance(m, str) and m.split(".")[0] == "pipelines" and _file(m) is not None}


@functools.lru_cache(maxsize=None)
def files(module: str) -> tuple[Path, ...]:
    """`module`'s file and every project module file it imports, transitively, sorted."""
    cache, missed = _read_cache(), False
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        m = todo.pop()
        f = _file(m)
        if m in seen or f is None:
            continue
        seen[m] = f
        data = f.read_bytes()
        key = hashlib.sha256(m.encode() + b"\0" + data).hexdigest()
        names = cache.get(key)
        if not isinstance(names, list):           # (every name: which are project files is asked each time)
            names, missed = sorted(imported(f, m, data)), True
            cache[key] = names
        todo.extend(_project(set(names)))
    if missed:
        _write_cache(cache)
    return tuple(sorted(set(seen.values())))


def fingerprint(module: str) -> str:
    """sha256 (16 hex) over the relative path and bytes of every file `module` runs."""
    h = hashlib.sha256()
    for f in files(module):
        h.update(f.relative_to(PACKAGE.parent).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]
