"""The library's layout (issue 22): one subpackage per pipeline stage, no import cycles, every import arrow
pointing down the stages, few top-level modules and none of over 700 lines.

Imports are read from the source (``ast``), inside functions too: a lazy import is still an arrow between
two modules. The package root ``ccfv/__init__.py`` is left out of the graph: it holds the version and lazy
entry points (``ccfv.rank_models``), and every module reaches it through ``from .. import __version__``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ccfv"

#: The stages, upstream first: a module may import from its own package or from a package above it in this
#: list, never from one below. Top-level ``io`` is shared I/O under everything; ``workflow`` and ``cli`` are
#: entry points over everything.
STAGES = ["ccfv.io", "ccfv.reproducibility", "ccfv.data", "ccfv.preprocess", "ccfv.bank", "ccfv.models", "ccfv.features", "ccfv.scores",
          "ccfv.finetune", "ccfv.results", "ccfv.rank", "ccfv.workflow", "ccfv.cli"]
MAX_TOP_LEVEL_MODULES = 5
MAX_LINES = 700


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """The ccfv modules ``name`` imports anywhere in its source (``from X import y`` counts as X.y when
    X.y is a module, else X)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
        else:
            continue
        found |= {t for t in targets if t.startswith("ccfv.") and t != name}
    return found


GRAPH = {name: {t for t in imported_modules(name, path) if t in MODULES}
         for name, path in MODULES.items() if name != "ccfv"}


def stage_of(module: str) -> int:
    matches = [i for i, s in enumerate(STAGES) if module == s or module.startswith(s + ".")]
    assert matches, f"{module} belongs to no stage of {STAGES}: add its package to STAGES"
    return matches[0]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down_the_stages(module):
    up = [t for t in GRAPH[module] if stage_of(t) > stage_of(module)]
    assert not up, f"{module} (stage {STAGES[stage_of(module)]}) imports {up} from a later stage"


def test_at_most_five_top_level_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_module_over_700_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_every_subpackage_is_a_stage():
    packages = sorted(module_name(p.parent / "__init__.py") for p in PACKAGE.glob("*/__init__.py"))
    assert all(p in STAGES for p in packages), (packages, STAGES)
