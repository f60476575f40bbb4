"""The house's layers (README, "Read next"; the brief's CLI → jobs → stylizer → objective → network /
memory → losses → ops, with the browser views between the CLI and the jobs): every import of a package module, lazy ones inside functions included,
goes down the chain, never up; the helpers beside the chain (options, images, outputs, weights, …)
import nothing above memory."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nst_ext"
# Top to bottom; a module may import those below it, never those above.
CHAIN = ["cli", "web", "jobs", "stylizer", "objective", "network", "memory", "losses", "_ops"]
RANK = {name: rank for rank, name in enumerate(CHAIN)}
HELPER_MAY_REACH = RANK["memory"]  # a helper (not in the chain) may import memory and below


def chain_member(module: str) -> str:
    """'nst_ext.jobs.batch' -> 'jobs'; the chain member a module belongs to, or '' for a helper."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] == "__main__":  # `python -m nst_ext` is the command line
        return "cli"
    return parts[1] if len(parts) > 1 and parts[1] in RANK else ""


def package_imports(path: Path):
    """The nst_ext modules `path` imports, anywhere in the file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nst_ext"):
            names = [f"{node.module}.{alias.name}" for alias in node.names] if node.module == "nst_ext" else [node.module]
            yield from names
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("nst_ext"))


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_go_down_the_chain(path):
    module = "nst_ext." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts).replace(".__init__", "")
    own = chain_member(module)
    ceiling = RANK[own] if own else HELPER_MAY_REACH
    upward = [target for target in package_imports(path)
              if chain_member(target) and chain_member(target) != own and RANK[chain_member(target)] < ceiling]
    assert not upward, f"{module} imports {upward}, above it in {CHAIN}"


def test_the_chain_is_checked_on_real_modules():
    found = {chain_member("nst_ext." + p.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", "."))
             for p in MODULES}
    assert set(CHAIN) <= found
    assert "nst_ext.stylizer" in set(package_imports(PACKAGE / "jobs" / "batch.py"))  # the parser sees lazy imports
