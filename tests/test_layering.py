"""The house's floors (README, "Read next"): every module of nst_ext has one, and every import of a
package module, lazy ones inside functions included, stays on its floor or goes down, never up; no
module imports itself round a circle. Imports under ``if TYPE_CHECKING:`` are for annotations only
(they never run) and are exempt from both rules."""

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nst_ext"
# Top to bottom: each floor's modules (a package, or a root module by name). A module may import its
# own floor's and those below, never those above.
FLOORS = [
    ("cli", ["nst_ext.cli", "nst_ext.__main__"]),
    ("web", ["nst_ext.web"]),
    ("jobs", ["nst_ext.jobs"]),
    # The run itself, and what the command line reads beside it: the op report and the picture judges.
    ("stylizer", ["nst_ext.stylizer", "nst_ext.optimize", "nst_ext.info", "nst_ext.metrics", "nst_ext.judge"]),
    ("objective", ["nst_ext.objective"]),
    ("model", ["nst_ext.model"]),
    ("io", ["nst_ext.io"]),
    ("plan", ["nst_ext.plan"]),
    ("ops", ["nst_ext.ops"]),
    # Modules that import nothing of nst_ext, and the package root (its names load lazily, by name).
    ("base", ["nst_ext.errors", "nst_ext.lbfgs", "nst_ext.parametrization", "nst_ext"]),
]
RANK = {name: rank for rank, (name, _) in enumerate(FLOORS)}


def module_name(path: Path) -> str:
    """nst_ext/jobs/batch.py -> 'nst_ext.jobs.batch'; a package's __init__.py -> the package."""
    parts = ("nst_ext",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(PACKAGE.rglob("*.py"))
NAMES = {module_name(path) for path in MODULES}


def floor_of(module: str) -> str:
    """The floor of a module, by the longest prefix in FLOORS that names it or its package."""
    best, best_length = "", -1
    for floor, prefixes in FLOORS:
        for prefix in prefixes:
            exact_root = prefix == "nst_ext"
            if (module == prefix or (not exact_root and module.startswith(prefix + "."))) and len(prefix) > best_length:
                best, best_length = floor, len(prefix)
    return best


def _type_checking_nodes(tree: ast.AST) -> Set[int]:
    inside: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(child) for child in ast.walk(node))
    return inside


def package_imports(path: Path) -> Iterator[str]:
    """The nst_ext modules `path` imports when it runs (anywhere in the file, TYPE_CHECKING blocks
    left out): ``from nst_ext.io import images`` names nst_ext.io.images, ``from nst_ext.objective
    import TERMS`` names the package nst_ext.objective."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nst_ext") and not node.level:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield submodule if submodule in NAMES else node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("nst_ext"))


GRAPH: Dict[str, List[str]] = {module_name(path): sorted(set(package_imports(path))) for path in MODULES}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_every_module_has_a_floor_and_imports_nothing_above_it(path):
    module = module_name(path)
    own = floor_of(module)
    assert own, f"{module} has no floor in FLOORS"
    upward = [target for target in GRAPH[module] if RANK[floor_of(target)] < RANK[own]]
    assert not upward, f"{module} ({own}) imports {upward}, above it in {[name for name, _ in FLOORS]}"


def find_circle(graph: Dict[str, List[str]]) -> List[str]:
    """One circle of imports in `graph` (module -> the modules it imports), or [] if there is none.
    A package's own __init__ is always run before its modules, so a module importing its own
    package (or a package importing its modules) is not counted as a step back."""

    def steps(module: str) -> List[str]:
        return [target for target in graph.get(module, []) if target != module and not module.startswith(target + ".")]

    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(module: str) -> List[str]:
        state[module] = 1
        path.append(module)
        for target in steps(module):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                circle = visit(target)
                if circle:
                    return circle
        path.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state:
            circle = visit(module)
            if circle:
                return circle
    return []


def test_no_module_imports_itself_round_a_circle():
    circle = find_circle(GRAPH)
    assert not circle, " -> ".join(circle)


def test_the_rules_see_what_they_check():
    # The parser finds lazy imports inside functions, and leaves TYPE_CHECKING ones out.
    assert "nst_ext.stylizer" in GRAPH["nst_ext.jobs.batch"]
    assert "nst_ext.model.network" not in GRAPH["nst_ext.objective.stage"]
    # Every floor holds a real module, and the checks catch what they are for.
    assert {floor_of(name) for name in NAMES} == set(RANK)
    assert find_circle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_circle({"p": ["p.m"], "p.m": ["p"]}) == []
    assert floor_of("nst_ext.web.guard") == "web" and floor_of("nst_ext.erroneous") == ""


def test_the_layout_guide_lists_the_floors_in_order():
    guide = (PACKAGE.parent / "docs" / "layout.md").read_text(encoding="utf-8")
    rows = [line.split("|")[1].strip() for line in guide.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == [name for name, _ in FLOORS]  # rows[0] is the table's header
