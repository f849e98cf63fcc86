"""The house's import rules, read from the source: no import circle, dependencies one way.

runner imports jobs, ledger and statedb; ledger and jobs import neither runner nor each other;
statedb imports none of them. Only the CLI imports click and tqdm; only runner/client.py
imports anthropic (the simulator speaks HTTP itself). Imports under `if TYPE_CHECKING:` count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("runner", "ledger", "jobs", "statedb")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


MODULES = _modules()


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    # Imports under `if TYPE_CHECKING:` count too: a circle of types is a circle of design
    # (the data model inside one of its renderers), even if Python never runs it.
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def _targets(module: str, path: Path) -> set[str]:
    """Every module `module` imports (project modules by full name, others by top name)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.add(sub if sub in MODULES else base)
    return found


GRAPH = {m: {t for t in _targets(m, p) if t in MODULES and t != m} for m, p in MODULES.items()}
EXTERNAL = {
    m: {t.split(".")[0] for t in _targets(m, p) if t not in MODULES} for m, p in MODULES.items()
}


def _cycles(nodes: set[str]) -> list[list[str]]:
    """The strongly connected components of more than one module among `nodes` (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(GRAPH[node] & nodes):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle(package: str) -> None:
    nodes = {m for m in MODULES if m.split(".")[0] == package}
    assert _cycles(nodes) == []


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        pytest.param("jobs", {"runner", "ledger", "click", "tqdm", "anthropic"}, id="jobs"),
        pytest.param("ledger", {"runner", "jobs", "click", "tqdm", "anthropic"}, id="ledger"),
        pytest.param(
            "statedb", {"runner", "jobs", "ledger", "click", "tqdm", "anthropic"}, id="statedb"
        ),
    ],
)
def test_dependencies_point_one_way(package: str, forbidden: set[str]) -> None:
    broken = {m: sorted({t.split(".")[0] for t in GRAPH[m]} | EXTERNAL[m]) for m in MODULES}
    bad = {
        m: sorted(set(tops) & forbidden)
        for m, tops in broken.items()
        if m.split(".")[0] == package and set(tops) & forbidden
    }
    assert bad == {}


def test_only_the_cli_imports_click_and_tqdm_and_only_the_client_anthropic() -> None:
    bad = sorted(
        (m, lib)
        for m, libs in EXTERNAL.items()
        for lib in libs & {"click", "tqdm", "anthropic"}
        if not (
            (lib in ("click", "tqdm") and m.startswith("runner.cli"))
            or (lib == "anthropic" and m == "runner.client")
        )
    )
    assert bad == []


def test_the_graph_sees_the_known_edges() -> None:
    # A parser that found no edges would pass every test above.
    assert "runner.run.job" in GRAPH["runner.run.plan"]
    assert "statedb.store" in GRAPH["statedb"]
    assert "ledger.store" in GRAPH["ledger.ledger"]
    assert {"jobs", "ledger", "statedb"} <= {t.split(".")[0] for t in GRAPH["runner.run.batch"]} | {
        t.split(".")[0] for m in GRAPH["runner.run.batch"] for t in GRAPH[m]
    }
