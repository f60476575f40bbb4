"""The benchmark suites and scripts still import against today's package: `make bench` and the GPU
check run them on machines where a stale import would cost the whole run (no timing here)."""

import importlib.util
import py_compile
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
RUNS_CUDA_WHEN_IMPORTED = {"sanitizer_case.py"}  # a script for compute-sanitizer: all of it is its work


@pytest.mark.parametrize("path", MODULES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_imports(path, monkeypatch):
    if path.name in RUNS_CUDA_WHEN_IMPORTED and not torch.cuda.is_available():
        py_compile.compile(str(path), doraise=True)  # no GPU to run it on: its syntax at least
        return
    monkeypatch.syspath_prepend(str(path.parent))  # the suites import their siblings (_common, quality)
    spec = importlib.util.spec_from_file_location(f"_checked_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # module level only: every script runs its work under main()


def test_the_frontier_judges_each_picture_against_the_baseline_curve_of_its_own_pair(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import frontier

    def run(method, weight, rows):
        return {
            "method": method,
            "weight": weight,
            "rows": [
                dict(content=c, style=s, layout=layout, texture=texture, seconds=1.0) for c, s, layout, texture in rows
            ],
        }

    results = {
        "gram @ 1": run("gram", 1, [("a", "x", 1.0, 0.8), ("b", "y", 0.9, 0.5)]),
        "gram @ 9": run("gram", 9, [("a", "x", 0.8, 0.4), ("b", "y", 0.7, 0.3)]),
        # pair a at layout 0.9: Gram's line gives 0.6, so 0.5 is 0.1 below; pair b at 0.95 is outside
        # Gram's sweep (0.7 to 0.9) for b, however good its medians look.
        "new @ 2": run("new", 2, [("a", "x", 0.9, 0.5), ("b", "y", 0.95, 0.1)]),
    }
    verdict = frontier.against_baseline(results)
    assert set(verdict) == {"new @ 2"}
    assert verdict["new @ 2"][("a", "x")] == pytest.approx(-0.1)
    assert verdict["new @ 2"][("b", "y")] is None
