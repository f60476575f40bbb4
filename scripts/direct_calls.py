"""Bad direct calls of the compiled ops (torch.ops.nst_ext.*, bypassing the Python checks), in a
process of their own. Each call must raise the C++ check's error. When that process crashes, every
case runs again in a process of its own, and each crash is reported with its signal and Python's
fault handler's traceback (and gdb's native backtrace with --gdb, where gdb exists). A crash takes
neither the other cases down nor the test run that calls this. On the H200, four such calls
killed a pytest worker with a segfault and left no trace.

    python scripts/direct_calls.py [--device cpu|cuda] [--algorithm auto|own|blas] [--gdb] [--control]

With --control, a crash is followed by the same kind of bad call of a one-op control extension
(scripts/control_op: a TORCH_CHECK and a copy, built by torch.utils.cpp_extension as nst_ext is,
with nvcc for CUDA): if that crashes too, the fault is in how this machine's build carries a C++
error into Python, not in nst_ext's code.

Each case runs plainly and under torch.inference_mode(). One line per case; exit status 0 when
every case raised its error, 1 otherwise. tests/test_ops.py runs it for every device the tests
run on."""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

# (name, the call with `device` in scope, a regular expression its error must match)
CASES = [
    ("gram, 3-D features", "torch.ops.nst_ext.gram(torch.rand(3, 4, 5, device=device))", "features must be 4-D"),
    (
        "style_loss, wrong target shape",
        "torch.ops.nst_ext.style_loss(torch.rand(1, 3, 4, 5, device=device), torch.rand(2, 2, device=device))",
        "target must have shape",
    ),
    (
        "gram, float8 features",
        "torch.ops.nst_ext.gram(torch.rand(1, 3, 4, 5, device=device).to(torch.float8_e4m3fn))",
        "features must be float16, bfloat16, float32 or float64, got Float8_e4m3fn",
    ),
    (
        "style_loss, float64 target for float32 features",
        "torch.ops.nst_ext.style_loss(torch.rand(1, 3, 4, 5, device=device), "
        "torch.rand(3, 3, device=device, dtype=torch.float64))",
        "target must have dtype",
    ),
    (
        "masked_gram, 2-D weights",
        "torch.ops.nst_ext.masked_gram(torch.rand(2, 3, 4, 5, device=device), torch.rand(4, 5, device=device))",
        r"weights must have shape \(1, 4, 5\) or \(2, 4, 5\)",
    ),
    (
        "masked_gram, float64 weights",
        "torch.ops.nst_ext.masked_gram(torch.rand(2, 3, 4, 5, device=device), "
        "torch.rand(1, 4, 5, device=device, dtype=torch.float64))",
        "weights must have dtype Float",
    ),
    (
        "masked_style_loss, wrong target shape",
        "torch.ops.nst_ext.masked_style_loss(torch.rand(2, 3, 4, 5, device=device), torch.rand(1, 4, 5, device=device), "
        "torch.rand(2, 2, device=device))",
        "target must have shape",
    ),
]

# Runs the cases numbered in argv[2:] (each "N" plainly, "N:inference" under inference mode) on
# the device argv[1]; one line each: "N[:inference] ok" or what went wrong.
CHILD = """
import re, sys
import torch
import nst_ext.ops.dispatch  # loads the compiled library
sys.path.insert(0, sys.argv[1])
from direct_calls import CASES
device = sys.argv[2]
for case in sys.argv[3:]:
    number, _, mode = case.partition(":")
    _, call, pattern = CASES[int(number)]
    try:
        if mode:
            with torch.inference_mode():
                eval(call)
        else:
            eval(call)
        print(case, "no error", flush=True)
    except RuntimeError as error:
        ok = re.search(pattern, str(error))
        print(case, "ok" if ok else "wrong error: " + str(error).splitlines()[0], flush=True)
"""


# Builds the control op in argv[3] and calls it badly on the device argv[2], plainly and under
# inference mode; one line each: "plain ok", "inference ok", or what went wrong.
CONTROL_CHILD = """
import os, sys
import torch
from torch.utils.cpp_extension import load
here, device, build = sys.argv[1:4]
sources = [os.path.join(here, "control_op", "control_op.cpp")]
if device.startswith("cuda"):
    sources.append(os.path.join(here, "control_op", "control_op_cuda.cu"))
load(name="nst_ext_control", sources=sources, build_directory=build, is_python_module=False)
for mode in ("plain", "inference"):
    try:
        with torch.inference_mode(mode == "inference"):
            torch.ops.nst_ext_control.checked(torch.rand(3, 4, 5, device=device))
        print(mode, "no error", flush=True)
    except RuntimeError as error:
        print(mode, "ok" if "features must be 4-D" in str(error) else "wrong error: " + str(error)[:200], flush=True)
"""


def control_report(device, environment):
    """The control op's verdict: whether its bad call raised as it must, or crashed too."""
    with tempfile.TemporaryDirectory() as build:
        result = subprocess.run(
            [
                sys.executable,
                "-X",
                "faulthandler",
                "-c",
                CONTROL_CHILD,
                os.path.dirname(os.path.abspath(__file__)),
                device,
                build,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=environment,
        )
    if result.returncode < 0:
        return (
            f"crashed (signal {-result.returncode}) too: the fault is in how this build carries a C++ error "
            f"into Python, not in nst_ext's code\n{result.stderr[-2000:]}"
        )
    if result.returncode:
        return f"not built or not run (exit status {result.returncode}): {result.stderr.strip()[-500:]}"
    if result.stdout.split("\n")[:2] == ["plain ok", "inference ok"]:
        return "raised its error, plainly and in inference mode: the crash is in nst_ext's own code"
    return "did not raise as it must: " + result.stdout.strip()


def run_cases(device, cases, environment):
    """The child's result for `cases`: its exit status, its lines by case, its stderr."""
    arguments = [
        sys.executable,
        "-X",
        "faulthandler",
        "-c",
        CHILD,
        os.path.dirname(os.path.abspath(__file__)),
        device,
        *cases,
    ]
    result = subprocess.run(arguments, capture_output=True, text=True, timeout=300, env=environment)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    return result.returncode, lines, result.stderr, arguments


def crash_report(device, case, environment, gdb):
    """One case alone: "ok", what went wrong, or its crash with the tracebacks."""
    status, lines, stderr, arguments = run_cases(device, [case], environment)
    if status >= 0:
        return lines.get(case, f"exit status {status}: {stderr.strip()[-300:]}")
    report = f"crashed (signal {-status})\n{stderr[-3000:]}"
    if gdb and shutil.which("gdb"):
        native = subprocess.run(
            ["gdb", "-batch", "-ex", "run", "-ex", "bt 30", "--args", *arguments],
            capture_output=True,
            text=True,
            timeout=120,
            env=environment,
        )
        report += "\n-- gdb backtrace --\n" + native.stdout[-4000:]
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--algorithm", default="auto", choices=["auto", "own", "blas"])
    parser.add_argument("--gdb", action="store_true", help="a crashed case again under gdb, for its native backtrace")
    parser.add_argument(
        "--control", action="store_true", help="after a crash, build the one-op control extension and make its bad call"
    )
    args = parser.parse_args()
    environment = dict(os.environ, NST_EXT_GRAM_ALGORITHM=args.algorithm, PYTHONFAULTHANDLER="1")
    cases = [f"{number}{mode}" for number in range(len(CASES)) for mode in ("", ":inference")]
    status, lines, _, _ = run_cases(args.device, cases, environment)
    if status < 0:  # a crash: each case alone, to find which
        lines = {case: crash_report(args.device, case, environment, args.gdb) for case in cases}
    all_passed = True
    for case in cases:
        number, _, mode = case.partition(":")
        report = lines.get(case, "not run")
        all_passed &= report == "ok"
        name = CASES[int(number)][0] + (" (inference mode)" if mode else "")
        print(f"{'ok  ' if report == 'ok' else 'FAIL'} {args.device} {name}: {report}", flush=True)
    if status < 0 and args.control:
        print(f"control {args.device}: {control_report(args.device, environment)}", flush=True)
    return 0 if all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
