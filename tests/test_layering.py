"""The import layering of cameo_cli (docs/architecture.md, "Layers"), read with `ast`:
no import loop between modules and no job package importing another job package."""

from __future__ import annotations

import ast
from pathlib import Path

import cameo_cli

PACKAGE = Path(cameo_cli.__file__).parent
JOBS = ("train", "sample", "evaluate", "diagnose", "export", "compare")
# Imports of `cameo_cli.sample.outputs` that the shared `cameo_cli.files` module replaces
# (issue 10, io part); the coordinator removes this entry when that branch lands.
AWAITING_IO = "cameo_cli.sample.outputs"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("cameo_cli", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The cameo_cli modules `path` imports (any scope, TYPE_CHECKING included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & known
            found |= submodules
            if len(submodules) < len(node.names):  # names defined in `base` itself
                found.add(base)
    return {module for module in found if module in known} - {name}


def import_graph() -> dict[str, set[str]]:
    names = module_names()
    return {name: imported_modules(name, path, set(names)) for name, path in names.items()}


def job_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in JOBS else None


def find_loop(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(following) == 1:
                return [*path[path.index(following) :], following]
            elif following not in state:
                state[following] = 1
                path.append(following)
                stack.append(iter(sorted(graph[following])))
    return None


def test_there_is_no_import_loop():
    loop = find_loop(import_graph())
    assert loop is None, "import loop: " + " -> ".join(loop)


def test_no_job_imports_another_job():
    crossing = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if job_of(module) and job_of(target) and job_of(module) != job_of(target)
        if target != AWAITING_IO
    )
    assert crossing == []


def test_the_checks_see_a_loop_and_a_crossing():
    graph = {"cameo_cli.a": {"cameo_cli.b"}, "cameo_cli.b": {"cameo_cli.a"}, "cameo_cli.c": set()}
    assert find_loop(graph) == ["cameo_cli.a", "cameo_cli.b", "cameo_cli.a"]
    assert find_loop({"cameo_cli.a": {"cameo_cli.c"}, "cameo_cli.c": set()}) is None
    assert job_of("cameo_cli.train.loop") == "train" and job_of("cameo_cli.pipeline") is None
    names = module_names()
    evaluate = imported_modules(
        "cameo_cli.evaluate.job", names["cameo_cli.evaluate.job"], set(names)
    )
    assert "cameo_cli.pipeline" in evaluate and "cameo_cli.errors" in evaluate


ABOVE_JOBS = ("cameo_cli.commands", "cameo_cli.cli", "cameo_cli.__main__")


def jobs_imported_from_below(graph: dict[str, set[str]]) -> list[str]:
    """`module -> job module` for every core or shared-service module importing a job."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if not job_of(module) and not module.startswith(ABOVE_JOBS)
        for target in targets
        if job_of(target)
    )


def test_no_core_module_or_shared_service_imports_a_job():
    assert jobs_imported_from_below(import_graph()) == []
    fake = {"cameo_cli.run_folder.metrics": {"cameo_cli.train.loop"}, "cameo_cli.commands.x": set()}
    assert jobs_imported_from_below(fake) == [
        "cameo_cli.run_folder.metrics -> cameo_cli.train.loop"
    ]
