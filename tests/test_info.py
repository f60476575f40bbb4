"""`nst-ext info` and its self-test (nst_ext.info): the report names the build, the self-test checks
every op on every visible device and dtype against the float64 reference, passes here, and fails
(exit status 1, the op named) where an op is wrong."""

import subprocess
import sys

import torch

import nst_ext
from nst_ext import info


def test_the_self_test_passes_here_and_prints_its_table():
    result = subprocess.run(
        [sys.executable, "-m", "nst_ext", "info", "--self-test"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    devices = 1 + torch.cuda.device_count()
    rows = [line for line in result.stdout.splitlines() if line.endswith("  ok")]
    assert len(rows) == devices * len(info.TOLERANCES) * 8, result.stdout
    assert f"self-test: {len(rows)} of {len(rows)} checks passed" in result.stdout
    assert "CPU tensors:" in result.stdout  # the report comes first
    module = subprocess.run([sys.executable, "-m", "nst_ext.info"], capture_output=True, text=True, timeout=300)
    assert module.returncode == 0 and "CPU tensors:" in module.stdout


def test_the_self_test_fails_a_wrong_op_and_names_it(monkeypatch, capsys):
    right = nst_ext.gram_matrix
    monkeypatch.setattr(nst_ext, "gram_matrix", lambda features: right(features) * 1.05)  # off by 5%
    checks = info.self_test(devices=["cpu"])
    failed = {(check.op, check.dtype) for check in checks if not check.passed}
    dtypes = ("float64", "float32", "float16", "bfloat16")
    assert failed == {(op, dtype) for op in ("gram", "gram backward") for dtype in dtypes}, failed
    assert all(check.error >= 0.049 for check in checks if check.op == "gram")
    monkeypatch.setattr(info, "self_test", lambda: checks)
    assert info.run(with_self_test=True) == 1
    out = capsys.readouterr().out
    assert "FAILED: own, shape (1, 1, 1, 1)" in out and "; 8 FAILED" in out


def test_the_self_test_reports_a_raising_op(monkeypatch):
    def raising(features, weights):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(nst_ext, "masked_gram_matrix", raising)
    checks = info.self_test(devices=["cpu"])
    broken = [check for check in checks if check.op == "masked_gram" and check.dtype == "float32"]
    assert len(broken) == 1 and "raised RuntimeError: CUDA error" in broken[0].failure


def test_a_picture_and_the_self_test_are_not_asked_at_once(tmp_path):
    from test_cli import assert_one_line_error, nst_ext_cli

    assert_one_line_error(nst_ext_cli("info", tmp_path / "x.png", "--self-test"), r"--self-test checks this install")
