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
