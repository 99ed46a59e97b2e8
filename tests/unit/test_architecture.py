"""The house's rules, checked: a one-way import graph (dags/ -> the CLI -> stages -> the shared
core; tools in pipelines/ops/ above the stages), no stage importing another, no Airflow in
pipelines/, and every DVC stage listing every project module it runs as a dependency."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import yaml

from pipelines.core.code import imported
from tests.conftest import REPO

STAGES = {"ingest", "validate", "features", "train", "evaluate", "register", "score", "shadow", "decide", "monitor",
          "retrain", "feedback", "lifecycle"}


def module_files(root: Path) -> dict[str, Path]:
    """pipelines module name -> file, for the package under `root`."""
    out = {}
    for f in (root / "pipelines").rglob("*.py"):
        parts = f.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def imports(f: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `f` imports (core/code.py reads the imports; `known` are the modules of the tree under test)."""
    return {m for m in imported(f, name) if m in known} - {name}


def graph(root: Path) -> dict[str, set[str]]:
    mods = module_files(root)
    return {m: imports(f, m, set(mods)) for m, f in mods.items()}


def kind(m: str) -> str:
    if m.startswith("pipelines.core"):
        return "core"
    if m.startswith("pipelines.ops"):
        return "ops"
    if m.rsplit(".", 1)[-1] in STAGES and m.count(".") == 1:
        return "stage"
    return "cli"                                   # pipelines, pipelines.__main__


def violations(root: Path) -> list[str]:
    """Every break of the graph's rules, one line each."""
    g = graph(root)
    allowed = {"core": {"core"}, "stage": {"core"}, "ops": {"core", "stage", "ops", "cli"}, "cli": {"core", "cli"}}
    out = [f"{m} ({kind(m)}) imports {t} ({kind(t)})" for m, ts in sorted(g.items()) for t in sorted(ts)
           if kind(t) not in allowed[kind(m)] and not (kind(m) == "cli" and m == "pipelines")]
    # cycles: a depth-first search with colours
    colour: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        colour[m] = 1
        for t in sorted(g[m]):
            if colour.get(t) == 1:
                out.append("cycle: " + " -> ".join(path[path.index(t):] + [m, t]) if t in path else f"cycle: {m} -> {t}")
            elif not colour.get(t):
                visit(t, path + [m])
        colour[m] = 2

    for m in sorted(g):
        if not colour.get(m):
            visit(m, [])
    for m, f in module_files(root).items():
        tree = ast.parse(f.read_text())
        if any(isinstance(n, (ast.Import, ast.ImportFrom)) and any(
                (getattr(n, "module", None) or "").startswith("airflow") or a.name.startswith("airflow")
                for a in n.names) for n in ast.walk(tree)):
            out.append(f"{m} imports airflow")
    return out


def test_the_import_graph_is_one_way():
    assert violations(REPO) == []


@pytest.mark.parametrize("planted,expected", [
    ("pipelines/decide.py", "pipelines.decide (stage) imports pipelines.score (stage)"),
    ("pipelines/core/storage.py", "pipelines.core.storage (core) imports pipelines.score (stage)"),
])
def test_the_check_fails_on_a_planted_import(tmp_path, planted, expected):
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    f = tmp_path / planted
    f.write_text(f.read_text() + "\n\ndef _planted():\n    from pipelines import score  # noqa\n")
    assert expected in violations(tmp_path)


def test_the_check_sees_a_cycle(tmp_path):
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    f = tmp_path / "pipelines" / "core" / "storage.py"
    f.write_text(f.read_text() + "\n\ndef _planted():\n    from pipelines.core import lineage  # noqa\n")
    assert any(v.startswith("cycle:") and "pipelines.core.lineage" in v for v in violations(tmp_path))


def closure(start: list[str], g: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(g[m])
    return seen


def test_each_dvc_stage_lists_every_module_it_runs():
    """`python -m pipelines <stage>` runs pipelines/__main__.py, the stage module and every project
    module they import (transitively): a change to any of them must re-run the stage."""
    g = graph(REPO)
    files = module_files(REPO)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(stages) <= STAGES
    for stage, spec in stages.items():
        runs = closure(["pipelines", "pipelines.__main__", f"pipelines.{stage}"], g)
        need = {files[m].relative_to(REPO).as_posix() for m in runs if files[m].name != "__init__.py"} - {
            "pipelines/__main__.py"}            # the entry point and package markers hold no stage logic
        if "pipelines/core/report.py" in need:
            need.add("pipelines/core/templates")    # the pages it renders
        listed = {d for d in spec["deps"] if d.startswith("pipelines/")}
        assert sorted(need - listed) == [], f"dvc.yaml stage {stage} lacks deps {sorted(need - listed)}"
        assert sorted(listed - need) == [], f"dvc.yaml stage {stage} lists modules it does not run {sorted(listed - need)}"


def stage_modules(stage: str) -> list[str]:
    """The deps a stage's code needs (used to write dvc.yaml: `python -m tests.unit.test_architecture`)."""
    g, files = graph(REPO), module_files(REPO)
    runs = closure(["pipelines", "pipelines.__main__", f"pipelines.{stage}"], g)
    need = {files[m].relative_to(REPO).as_posix() for m in runs if files[m].name != "__init__.py"} - {"pipelines/__main__.py"}
    if "pipelines/core/report.py" in need:
        need.add("pipelines/core/templates")
    return sorted(need)


if __name__ == "__main__":                      # rewrite the pipelines/ deps of every stage in dvc.yaml
    lines, out, stage, section = (REPO / "dvc.yaml").read_text().splitlines(), [], None, None
    for line in lines:
        s = line.strip()
        if line.startswith("  ") and not line.startswith("    ") and s.endswith(":"):
            stage = s[:-1]
        if line.startswith("    ") and not line.startswith("      "):
            section = s.rstrip(":")
            out.append(line)
            if section == "deps":
                out.extend(f"      - {d}" for d in stage_modules(stage))
            continue
        if section == "deps" and s.startswith("- pipelines/"):
            continue
        out.append(line)
    (REPO / "dvc.yaml").write_text("\n".join(out) + "\n")


def test_every_module_that_names_the_project_root_names_the_same_one():
    """A module moved one level down keeps pointing at the project root (demo ran `dvc repro` in pipelines/)."""
    import importlib

    roots = {}
    for name, f in module_files(REPO).items():
        if "REPO =" in f.read_text():
            roots[name] = getattr(importlib.import_module(name), "REPO")
    assert roots and {k: v for k, v in roots.items() if v != REPO} == {}
