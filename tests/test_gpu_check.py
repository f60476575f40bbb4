"""scripts/gpu_check.sh where no GPU is visible, and its summary from a results folder."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(torch.cuda.is_available() or shutil.which("nvidia-smi") is not None, reason="a GPU is visible")
def test_without_a_gpu_it_exits_3_with_one_line_and_runs_nothing(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), str(tmp_path / "results")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert result.stdout == "" and result.stderr.count("\n") == 1 and "no CUDA GPU visible" in result.stderr
    assert not (tmp_path / "results").exists()
    assert time.monotonic() - started < 60


def test_usage_error_exits_2():
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "gpu_check.sh")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "usage: scripts/gpu_check.sh RESULTS_DIR" in result.stderr


def summarize(folder, parts):
    (folder / "parts.tsv").write_text("".join("\t".join(p) + "\n" for p in parts))
    (folder / "machine.txt").write_text("gpu: Test GPU\n")
    (folder / "tests.log").write_text("FAILED tests/test_ops.py::test_x - AssertionError\n1 failed, 9 passed\n")
    ops = {
        "complete": False,
        "choices": [{"algorithm": "own"}, {"algorithm": "blas"}, {"algorithm": "blas"}],
        "rows": [
            {"op": "gram", "dtype": "bfloat16", "seconds": {"compiled": 1.0, "torch.bmm": 2.0, "reference": 4.0}},
            {"op": "gram", "dtype": "bfloat16", "seconds": {"compiled": 2.0, "torch.bmm": 1.0, "reference": 3.0}},
        ],
    }
    (folder / "ops.json").write_text(json.dumps(ops))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "gpu_check_summary.py"), str(folder), "123"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, (folder / "summary.md").read_text(), json.loads((folder / "summary.json").read_text())


def test_summary_of_a_failed_check(tmp_path):
    result, text, summary = summarize(
        tmp_path,
        [
            ("build", "passed", "40", ""),
            ("tests", "failed", "90", "exit status 1"),
            ("step", "not run", "0", "only 10s of the budget left, needs 30s"),
        ],
    )
    assert result.returncode == 1 and summary["passed"] is False
    assert [p["status"] for p in summary["parts"]] == ["passed", "failed", "not run"]
    assert "Overall: **FAILED** in 123 s." in text and "FAILED tests/test_ops.py::test_x" in text
    # bfloat16 Gram: compiled 2x faster than torch.bmm on one row, 2x slower on the other.
    assert "| gram | bfloat16 | 0.50x / 1.25x | 1.50x / 2.75x | 2 |" in text
    assert "auto chose our own kernel for 1 of 3 shapes" in text and "stopped at its time limit" in text
    assert "(no step benchmark results)" in text
    assert "(needs both the kernel and the step benchmark)" in text


def test_the_style_losses_share_of_a_step(tmp_path):
    """Per size and dtype: the channels-last style_loss+backward rows summed over the layers, over
    the step benchmark's median with convolutions of that dtype; other rows left out."""
    (tmp_path / "step.json").write_text(
        json.dumps(
            {
                "benchmarks": [
                    {
                        "group": "stylization step 512px cuda",
                        "name": "test_stylization_step[compiled-cuda-512]",
                        "params": {"step_size": 512, "implementation": "compiled", "device": "cuda"},
                        "stats": {"median": 0.010},
                    },
                    {
                        "group": "stylization step 512px cuda",
                        "name": "test_stylization_step[compiled-bf16-cuda-512]",
                        "params": {"step_size": 512, "implementation": "compiled-bf16", "device": "cuda"},
                        "stats": {"median": 0.004},
                    },
                ]
            }
        )
    )
    loss = dict(op="style_loss+backward", size=512, layout="channels_last")
    (tmp_path / "ops.json").write_text(
        json.dumps(
            {
                "rows": [
                    dict(loss, dtype="float32", seconds={"compiled": 0.0010}),
                    dict(loss, dtype="float32", seconds={"compiled": 0.0005}),
                    dict(loss, dtype="bfloat16", seconds={"compiled": 0.0002}),
                    dict(loss, dtype="float32", layout="nchw", seconds={"compiled": 1.0}),
                    dict(loss, dtype="float32", op="gram", seconds={"compiled": 1.0}),
                    dict(loss, dtype="float16", seconds={"compiled": 1.0}),  # no float16 step: left out
                ]
            }
        )
    )
    (tmp_path / "parts.tsv").write_text("step\tpassed\t30\t\n")
    (tmp_path / "machine.txt").write_text("gpu: Test GPU\n")
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "gpu_check_summary.py"), str(tmp_path), "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = (tmp_path / "summary.md").read_text()
    assert "| 512 | float32 | 1.500 (2 layers) | 10.00 | 15.0% |" in text
    assert "| 512 | bfloat16 | 0.200 (1 layers) | 4.00 | 5.0% |" in text
    assert "| 512 | float16 |" not in text


def test_summary_of_a_passed_check(tmp_path):
    result, text, summary = summarize(tmp_path, [("build", "passed", "40", ""), ("tests", "passed", "90", "")])
    assert result.returncode == 0 and summary["passed"] is True and "Overall: **passed**" in text
