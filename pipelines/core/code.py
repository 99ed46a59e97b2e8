"""The code a stage runs, as files: the project modules a module imports, transitively (module level
and inside functions), read statically. Its fingerprint changes when any of them changes."""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent          # pipelines/


def _file(module: str) -> Path | None:
    rel = Path(*module.split("."))
    for f in (PACKAGE.parent / rel.with_suffix(".py"), PACKAGE.parent / rel / "__init__.py"):
        if f.is_file():
            return f
    return None


def imported(f: Path, module: str) -> set[str]:
    """Every module name `f` (module `module`) imports, at module level or inside functions, relative
    imports resolved, `importlib.import_module("...")` with a literal name included."""
    pkg = module if f.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(f.read_text())):
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


def _imports(f: Path, module: str) -> set[str]:
    return {m for m in imported(f, module) if m.split(".")[0] == "pipelines" and _file(m) is not None}


@functools.lru_cache(maxsize=None)
def files(module: str) -> tuple[Path, ...]:
    """`module`'s file and every project module file it imports, transitively, sorted."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        m = todo.pop()
        f = _file(m)
        if m in seen or f is None:
            continue
        seen[m] = f
        todo.extend(_imports(f, m))
    return tuple(sorted(set(seen.values())))


def fingerprint(module: str) -> str:
    """sha256 (16 hex) over the relative path and bytes of every file `module` runs."""
    h = hashlib.sha256()
    for f in files(module):
        h.update(f.relative_to(PACKAGE.parent).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]
