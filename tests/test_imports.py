"""The arrows between our modules, read from their source: packages point node → swarm, expert → protocol and
never back; inside node/ no module imports its way back to itself, and no role or loop reaches the daemon (each
gets a NodeContext, not even as a type). Imports under `if TYPE_CHECKING:` do not make a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "swarm", "expert", "node")
ALLOWED = {"protocol": set(), "swarm": {"protocol"}, "expert": {"protocol"},
           "node": {"protocol", "swarm", "expert"}}


def _runtime_imports(path: Path, *, types: bool = False) -> set[str]:
    """Every module `path` imports when it runs (at top level or inside functions); with `types`, also those
    imported under `if TYPE_CHECKING:` for annotations only."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if not types and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from node import loops`
    return found


def _graph(package: str, *, types: bool = False) -> dict[str, set[str]]:
    mods = {f"{package}.{p.stem}": p for p in (ROOT / package).glob("*.py") if p.stem != "__init__"}
    return {m: {i for i in _runtime_imports(p, types=types) if i in mods and i != m} for m, p in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*stack[stack.index(n):], n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_downward(package):
    wrong = sorted(f"{p.relative_to(ROOT)} imports {i}" for p in (ROOT / package).glob("*.py")
                   for i in _runtime_imports(p)
                   if i.split(".")[0] in PACKAGES and i.split(".")[0] not in ALLOWED[package] | {package})
    assert not wrong, wrong


@pytest.mark.parametrize("package", ["protocol", "swarm", "node"])  # expert: backbone ↔ vae (lazy imports)
def test_no_import_cycle_inside_a_package(package):
    assert _cycle(_graph(package)) is None, " → ".join(_cycle(_graph(package)) or [])


def test_nothing_in_node_reaches_the_daemon_but_the_command_line():
    graph = _graph("node", types=True)  # not even for a type: a part receives what it uses, never its owner
    users = sorted(m for m, deps in graph.items() if "node.daemon" in deps)
    assert users == ["node.cli_swarm"], users
    for m in graph:
        if m.startswith(("node.role_", "node.loops", "node.lane", "node.context", "node.takeover")):
            assert not {"node.cli", "node.cli_swarm", "node.metrics"} & graph[m], m


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
