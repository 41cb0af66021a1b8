"""The package's layering: no import cycles, the CLI on top, one name per thing."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sana_deploy"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every ``sana_deploy`` module ``path`` imports, at the top or inside a function."""

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sana_deploy"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(owner(full) if full in modules else owner(node.module))
        elif isinstance(node, ast.Import):
            found |= {owner(a.name) for a in node.names if a.name.startswith("sana_deploy")}
    return {m for m in found if m}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    """Function-level imports count too: a lazy import does not make a cycle acceptable."""
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_library_module_imports_the_cli() -> None:
    graph = _graph()
    offenders = [
        m
        for m, deps in graph.items()
        if not (m == "sana_deploy.cli" or m.startswith("sana_deploy.cli.") or m == "sana_deploy.__main__")
        and any(d == "sana_deploy.cli" or d.startswith("sana_deploy.cli.") for d in deps)
    ]
    assert offenders == []


def test_layers_point_downwards() -> None:
    """values -> runners -> export -> engines -> runtime -> quantize -> bench -> serve -> cli: nothing imports a
    higher layer (quantize calibrates on the runtime's pipeline; the engine builder only reads its graphs)."""
    order = ["contract", "runners", "export", "engines", "runtime", "quantize", "bench", "serve", "cli"]
    rank = {f"sana_deploy.{name}": i for i, name in enumerate(order)}

    def layer(module: str) -> int | None:
        parts = module.split(".")
        return rank.get(".".join(parts[:2]))

    wrong = []
    for module, deps in _graph().items():
        mine = layer(module)
        for dep in deps:
            theirs = layer(dep)
            if mine is not None and theirs is not None and theirs > mine:
                wrong.append(f"{module} -> {dep}")
    assert wrong == []


def test_public_class_names_are_unique() -> None:
    """One name, one thing (Triton requires every Python-backend model file to define TritonPythonModel)."""
    where = defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                where[node.name].append(str(path.relative_to(PACKAGE)))
    dupes = {k: v for k, v in where.items() if len(v) > 1 and k != "TritonPythonModel"}
    assert dupes == {}
