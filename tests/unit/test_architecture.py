"""The import graph (docs/ARCHITECTURE.md §1): one-way layers, no cycles, no UI in the core."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"store": 0, "cache": 1, "explorer": 2, "refusal_tui": 3, "refusal_web": 3, "app_tui": 3, "app_web": 3}
UI_LIBRARIES = {"textual", "gradio", "playwright"}


def _modules() -> dict[str, Path]:
    found = {}
    for top in LAYERS:
        single = ROOT / f"{top}.py"
        paths = [single] if single.exists() else sorted((ROOT / top).rglob("*.py"))
        for path in paths:
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every module this one imports, anywhere in it (top level, functions, TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in modules else base)
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target in _imports(path, name, modules):
            while target and target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def test_imports_go_one_way_store_cache_explorer_viewers() -> None:
    upward = [f"{source} -> {target}" for source, targets in _graph().items() for target in targets
              if _layer(target) > _layer(source)]
    assert not upward, "imports against the layers (store <- cache <- explorer <- viewers):\n" + "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_core_imports_no_ui_library() -> None:
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        if _layer(name) >= 3:
            continue
        for target in _imports(path, name, modules):
            if target.split(".")[0] in UI_LIBRARIES:
                offenders.append(f"{name} imports {target}")
    assert not offenders, offenders


def test_the_graph_sees_the_known_edges() -> None:
    """Guard against a test that passes because it parses nothing."""
    graph = _graph()
    assert "store.errors" in graph["cache.pipeline"] and "explorer.cli.shell" in graph["explorer.cli.stages.greedy"]
    assert "explorer.cli.shell" in graph["app_tui"] and len(graph) > 60


def test_tests_share_builders_through_modules_and_conftest_not_through_test_modules() -> None:
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "bench").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for target in _imports(path, name, {}):
            if target.split(".")[-1].startswith("test_") or ".test_" in target:
                offenders.append(f"{name} imports {target}")
    assert not offenders, offenders


def test_the_product_imports_no_test_code() -> None:
    modules = _modules()
    offenders = [f"{name} imports {target}" for name, path in modules.items()
                 for target in _imports(path, name, modules) if target.split(".")[0] == "tests"]
    assert not offenders, offenders
