"""The code a stage runs, as files: the project modules a module imports, transitively (module level
and inside functions), read statically. Its fingerprint changes when any of them changes.

Every stage process computes one fingerprint for its run key, so the imports are found by a scan of
the text (`scanned`, ~1 ms for a stage's ~17 files) rather than by walking each file's syntax tree
(`imported`, ~0.1 s per process). The scan finds every import the tree holds, and may find more (an
import-shaped line in a docstring: a file more in the fingerprint, never one less); the tests hold
it to `imported` over every module of the package."""
from __future__ import annotations

import ast
import functools
import hashlib
import re
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


# an import statement: at a line's start or after `;` or `:` (`try: import x`); a `from` clause's names
# up to its closing parenthesis or the line's end (backslash continuations included)
_STATEMENT = re.compile(r"(?:^|[;:])[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]*(\([^)]*\)|(?:[^\n;#\\]|\\\n)*)"
                        r"|import[ \t]+((?:[^\n;#\\]|\\\n)*))", re.M)
_IMPORT_MODULE = re.compile(r"import_module\(\s*[\"']([\w.]+)[\"']")
_COMMENT = re.compile(r"#[^\n]*")


def scanned(text: str, module: str, is_package: bool = False) -> set[str]:
    """What `imported` finds in a file with this text, found in the text: every module name its import
    statements (relative ones resolved) and `import_module("...")` calls name, perhaps more."""
    pkg = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for m in _STATEMENT.finditer(text):
        base, names, plain = m.group(1), m.group(2), m.group(3)
        if plain is not None:
            found |= {n.split()[0] for n in plain.replace("\\\n", " ").split(",") if n.split()}
            continue
        level = len(base) - len(base.lstrip("."))
        base = base[level:]
        if level:
            parts = pkg.split(".")
            base = ".".join(parts[: len(parts) - level + 1] + ([base] if base else []))
        listed = _COMMENT.sub("", names).replace("\\\n", " ").strip("() \t\n")
        found |= {base, *(f"{base}.{n.split()[0]}" for n in listed.split(",") if n.split())}
    return found | set(_IMPORT_MODULE.findall(text))


def _imports(f: Path, module: str) -> set[str]:
    names = scanned(f.read_text(), module, f.name == "__init__.py")
    return {m for m in names if m.split(".")[0] == "pipelines" and _file(m) is not None}


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
