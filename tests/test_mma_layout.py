"""The tensor-core Gram kernel (csrc/cuda/gram_mma.cu) checked without a GPU.

* Its index math (csrc/cuda/mma_layout.h) is compiled into tests/csrc/mma_layout_test.cpp, which
  checks every helper over its whole range and emulates whole Grams lane by lane through
  cp.async, ldmatrix(.trans), the mma fragments, split inner dimensions and the epilogue, against
  float64 (16-bit exactly; 3xTF32 within 1e-5 of the largest entry).
* The CUDA unit alone is compiled for sm_80 and sm_90 with ptxas's report: its PTX must use
  mma.sync, ldmatrix and cp.async, and no kernel may spill registers.
On a GPU of sm_80 or newer the kernel itself runs against float64 here and, as the "own"
algorithm, in tests/test_ops.py.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import nst_ext
from nst_ext.ops import reference

ROOT = Path(__file__).resolve().parents[1]
CUDA_UNIT = ROOT / "csrc" / "cuda" / "gram_mma.cu"
KERNEL_VARIANTS = 12  # tile 64/128 x float16/bfloat16/float32 x NCHW/channels-last


def _cxx():
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _nvcc():
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return shutil.which("nvcc")


@pytest.mark.skipif(_cxx() is None, reason="no C++ compiler")
def test_index_math_and_lane_by_lane_emulation(tmp_path, seed):
    binary = tmp_path / "mma_layout_test"
    subprocess.run(
        [
            _cxx(),
            "-std=c++17",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-o",
            str(binary),
            str(ROOT / "tests" / "csrc" / "mma_layout_test.cpp"),
        ],
        check=True,
        timeout=300,
    )
    result = subprocess.run([str(binary), str(seed)], capture_output=True, text=True, timeout=300)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dataflow:" in result.stdout and "FAILED" not in result.stdout + result.stderr


@pytest.mark.skipif(_nvcc() is None, reason="no nvcc")
def test_ptx_uses_tensor_cores_and_ptxas_reports_no_spills(tmp_path):
    archs = ["80", "90"]
    command = [
        _nvcc(),
        "-std=c++17",
        "-O3",
        "--threads",
        "2",
        "-Xptxas",
        "-v",
        "-keep",
        "-keep-dir",
        str(tmp_path),
        "-c",
        str(CUDA_UNIT),
        "-o",
        str(tmp_path / "gram_mma.o"),
    ]
    for arch in archs:
        command += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    report = result.stdout + result.stderr

    for arch in archs:
        (ptx_file,) = [p for p in tmp_path.glob("*.ptx") if f"sm_{arch}" in p.name or f"compute_{arch}" in p.name]
        ptx = ptx_file.read_text()
        for instruction in [
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
            "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
            "cvt.rna.tf32.f32",
            "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
            "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
            "cp.async.cg.shared.global",
            "cp.async.wait_group",
        ]:
            assert instruction in ptx, f"sm_{arch}: {instruction} not in the PTX"
        assert ptx.count(".entry ") == KERNEL_VARIANTS, f"sm_{arch}: {ptx.count('.entry ')} kernels"

        compiled = re.findall(rf"Compiling entry function '(\w+)' for 'sm_{arch}'", report)
        assert len(compiled) == KERNEL_VARIANTS, report[-4000:]
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert len(spills) == KERNEL_VARIANTS * len(archs), report[-4000:]
    assert all(stores == "0" and loads == "0" for stores, loads in spills), report[-4000:]


TENSOR_CORES = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
    reason="no GPU of compute capability 8.0 or newer",
)


@TENSOR_CORES
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
# VGG-like layers (one tile, several, a split inner dimension), channel counts off the tile, a
# batch, and positions that are no multiple of a stage.
@pytest.mark.parametrize(
    "shape", [(1, 64, 96, 96), (1, 512, 24, 20), (2, 136, 13, 16), (3, 48, 9, 8), (1, 256, 64, 64), (1, 8, 4, 2)]
)
def test_tensor_core_kernel_matches_float64(seed, dtype, shape, layout):
    """The own algorithm on a GPU of sm_80+ takes the tensor-core kernel for these shapes (16-byte
    rows); its Gram and fused loss match float64 on the same values and repeat bit for bit."""
    from test_ops import RTOL, assert_close, features_like_vgg

    x = features_like_vgg(shape, "cuda", dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    exact = x.double()
    target = reference.gram_matrix(features_like_vgg(shape, "cuda")).float()
    with nst_ext.gram_algorithm("own"):
        gram = nst_ext.gram_matrix(x)
        again = nst_ext.gram_matrix(x)
        loss = nst_ext.style_loss(x, target)
        loss_broadcast = nst_ext.style_loss(x, target[:1])
    assert torch.equal(gram, again)
    assert_close(gram.double(), reference.gram_matrix(exact), seed, rtol=RTOL[dtype])
    assert_close(loss.double(), reference.style_loss(exact, target.double()), seed, rtol=RTOL[dtype] * 10)
    assert_close(loss_broadcast.double(), reference.style_loss(exact, target[:1].double()), seed, rtol=RTOL[dtype] * 10)
