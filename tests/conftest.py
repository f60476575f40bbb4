import atexit
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import nst_ext

# The helpers the tests share with the benchmarks (benchmarks/clips.py: the synthetic clip).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

# The runs' algorithm choices (nst_ext.io.algorithm_cache) go to a folder of this session's, never the
# user's cache; the CLI tests' subprocesses inherit it.
os.environ["NST_EXT_CACHE_DIR"] = tempfile.mkdtemp(prefix="nst-ext-test-cache-")
atexit.register(shutil.rmtree, os.environ["NST_EXT_CACHE_DIR"], True)

# The Ctrl-C tests' subprocesses need Ctrl-C: a shell without job control starts its background
# commands with SIGINT ignored (`make test &` in a script), and the ignoring is inherited through
# exec, so Python would never install its handler in them. A handler here is SIG_DFL in a child.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


# Set to replay a failure: NST_EXT_TEST_SEED=N gives every test that seed.
SEED_VARIABLE = "NST_EXT_TEST_SEED"


@pytest.fixture
def seed():
    """A fresh seed per test (printed in the test's report, so a failure can be replayed with
    NST_EXT_TEST_SEED), so every run draws new inputs."""
    given = os.environ.get(SEED_VARIABLE, "").strip()
    value = int(given) if given else int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(value)
    print(f"torch seed {value} (replay: {SEED_VARIABLE}={value})")
    return value


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=["own", "blas"])
def compiled(device, request):
    """The device, for a test run once with each forward algorithm forced (our own kernel,
    then the BLAS path); skips where the compiled kernels do not serve the device."""
    if nst_ext.backend_info()[device] == "reference":
        pytest.skip(f"no compiled kernels for {device}: {nst_ext.backend_info()['load_error']}")
    with nst_ext.gram_algorithm(request.param):
        yield device
