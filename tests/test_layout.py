"""The package's shape (docs/design.md, "Layout"): folders follow the pipeline, no import cycle between modules,
no module over 400 lines and no function over 60 lines, so each module holds one idea."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for p in (ROOT / "editor").rglob("*.py") if not p.is_symlink()) + [ROOT / "cli.py"]
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def module_name(path: Path) -> str:
    """The installed name: editor/ is the package steerfold, and cli.py is steerfold.cli."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = ("steerfold", *parts[1:]) if parts[0] == "editor" else ("steerfold", *parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every steerfold module ``path`` imports, at the top or inside a function (a lazy import can close a cycle
    too); ``from package import name`` counts as importing ``package.name`` when that is a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found |= subs or ({node.module} & modules)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle():
    modules = {module_name(path) for path in SOURCES}
    graph = {module_name(path): imports_of(path, modules) - {module_name(path)} for path in SOURCES}
    assert cycles(graph) == []


def test_the_cycle_check_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_modules_and_functions_stay_small():
    too_long = []
    for path in SOURCES:
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []


def test_the_folders_follow_the_pipeline():
    stages = ["prompts", "activations", "directions", "edit", "artifacts", "validation", "hub", "pipeline", "research", "models"]
    present = {p.stem if p.is_file() else p.name for p in (ROOT / "editor").iterdir() if not p.name.startswith("__")}
    assert set(stages) <= present
    flat = sorted(p.name for p in (ROOT / "editor").glob("*.py") if p.name != "__init__.py")
    assert flat == ["cli.py", "click_options.py", "endings.py", "errors.py", "hub.py", "interrupts.py", "options.py", "progress.py", "prompts.py"], flat


def test_the_distribution_claims_one_top_level_name():
    """pyproject installs editor/ as steerfold (every package folder listed) and cli.py as steerfold.cli."""
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"] == {"steerfold": "editor"} and "py-modules" not in tool
    folders = {module_name(p) for p in (ROOT / "editor").rglob("__init__.py")}
    assert set(tool["packages"]) == folders
    assert (ROOT / "editor" / "cli.py").resolve() == (ROOT / "cli.py").resolve()
    text = "".join(p.read_text() for p in SOURCES)
    assert "from editor" not in text and "import editor" not in text
