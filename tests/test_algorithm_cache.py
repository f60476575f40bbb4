"""The forward's algorithm choices kept on disk (nst_ext.io.algorithm_cache): a second process meets
the first one's shapes already chosen, a picture's restored choices are kept, concurrent savers
lose nothing, a bad file is ignored, another machine key reads another file, ``off`` writes
nothing; and a picture's record lists only the choices its run used."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import nst_ext
from nst_ext.io import algorithm_cache
from nst_ext.ops import dispatch

pytestmark = pytest.mark.skipif(dispatch.LOAD_ERROR is not None, reason="no compiled kernels: nothing to choose")

# A child process: with the cache in argv[1], optionally loads it, times the Gram of the shapes
# given as "C,H,W" in argv[3:] under "auto", saves, and prints the choices it holds.
CHILD = textwrap.dedent("""
    import json, os, sys
    os.environ["NST_EXT_CACHE_DIR"] = sys.argv[1]
    import torch
    import nst_ext
    from nst_ext.io import algorithm_cache
    loaded = algorithm_cache.load() if sys.argv[2] == "load" else 0
    before = nst_ext.gram_algorithm_choices()
    for shape in sys.argv[3:]:
        channels, height, width = map(int, shape.split(","))
        nst_ext.gram_matrix(torch.rand(1, channels, height, width))
    algorithm_cache.save()
    print(json.dumps({"loaded": loaded, "before": before, "after": nst_ext.gram_algorithm_choices()}))
""")


def child(folder, *shapes, load=True):
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), "load" if load else "no", *shapes],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, NST_EXT_GRAM_ALGORITHM="auto"),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def spatial_of(choices):
    return sorted({(choice["channels"], choice["spatial"]) for choice in choices})


def test_a_second_process_finds_the_first_ones_choices(tmp_path):
    first = child(tmp_path, "8,5,7", "16,9,3")
    assert first["loaded"] == 0 and first["before"] == []
    assert spatial_of(first["after"]) == [(8, 35), (16, 27)]
    second = child(tmp_path, "8,5,7")
    assert second["loaded"] == 2 and spatial_of(second["before"]) == [(8, 35), (16, 27)]
    assert second["before"] == first["after"]  # the same algorithm for each shape, not timed again
    files = list(tmp_path.glob("gram-choices-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["machine"]["torch"] == torch.__version__


def test_concurrent_savers_lose_no_choice(tmp_path):
    shapes = [f"{channels},4,5" for channels in (3, 5, 7, 9)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), "no", shape],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, NST_EXT_GRAM_ALGORITHM="auto"),
        )
        for shape in shapes
    ]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    stored = json.loads(next(tmp_path.glob("gram-choices-*.json")).read_text())["choices"]
    assert spatial_of(stored) == [(3, 20), (5, 20), (7, 20), (9, 20)]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_bad_file_is_ignored_and_replaced(tmp_path):
    child(tmp_path, "4,3,3")
    path = next(tmp_path.glob("gram-choices-*.json"))
    path.write_text("{not json")
    again = child(tmp_path, "4,3,3")
    assert again["loaded"] == 0 and spatial_of(json.loads(path.read_text())["choices"]) == [(4, 9)]


def test_restored_choices_win_over_the_cache(tmp_path, monkeypatch):
    """A picture's recorded choice (restored for --from) is not replaced by the machine's cache."""
    monkeypatch.setenv("NST_EXT_CACHE_DIR", str(tmp_path))
    key = {
        "device": "cpu",
        "device_index": -1,
        "op": "gram",
        "dtype": "Float",
        "batch": 1,
        "channels": 6,
        "spatial": 10,
        "layout": "nchw",
    }
    path = algorithm_cache.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"machine": {}, "choices": [dict(key, algorithm="blas"), dict(key, channels=7, algorithm="own")]})
    )
    previous = dispatch.gram_algorithm_choices()
    dispatch.clear_gram_algorithm_choices()
    try:
        dispatch.restore_gram_algorithm_choices([dict(key, algorithm="own")])
        assert algorithm_cache.load() == 1
        held = {choice["channels"]: choice["algorithm"] for choice in dispatch.gram_algorithm_choices()}
        assert held == {6: "own", 7: "own"}
    finally:
        dispatch.clear_gram_algorithm_choices()
        dispatch.restore_gram_algorithm_choices(previous)


@pytest.mark.parametrize(
    "wrong",
    [
        {"device": ["cpu"]},
        {"channels": "6"},
        {"batch": True},
        {"layout": "nc\thw"},
        {"op": None},
        {"algorithm": {"own": 1}},
    ],
)
def test_a_forged_choice_is_skipped_and_the_others_kept(tmp_path, monkeypatch, wrong):
    """A cache file with a list (or any other type) where a field belongs: that row is not a choice
    (it gave a traceback), the file's other rows still count."""
    monkeypatch.setenv("NST_EXT_CACHE_DIR", str(tmp_path))
    key = {
        "device": "cpu",
        "device_index": -1,
        "op": "gram",
        "dtype": "Float",
        "batch": 1,
        "channels": 6,
        "spatial": 10,
        "layout": "nchw",
        "algorithm": "blas",
    }
    path = algorithm_cache.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": {}, "choices": [dict(key, **wrong), dict(key, channels=9), "own", 3]}))
    previous = dispatch.gram_algorithm_choices()
    dispatch.clear_gram_algorithm_choices()
    try:
        assert algorithm_cache.load() == 1
        assert [choice["channels"] for choice in dispatch.gram_algorithm_choices()] == [9]
        with pytest.raises(ValueError, match="not an algorithm choice"):
            dispatch.restore_gram_algorithm_choices([dict(key, **wrong)])
    finally:
        dispatch.clear_gram_algorithm_choices()
        dispatch.restore_gram_algorithm_choices(previous)


def finishes(function, seconds=20.0):
    """Whether `function()` returns within `seconds` (run on a daemon thread, so a hang fails the
    test instead of holding it)."""
    import threading

    worker = threading.Thread(target=function, daemon=True)
    worker.start()
    worker.join(seconds)
    return not worker.is_alive()


@pytest.mark.parametrize("which", ["cache", "lock"])
def test_a_fifo_in_the_cache_folder_does_not_hold_the_run(tmp_path, monkeypatch, which):
    """A FIFO where the cache file (or its lock) belongs blocked the first read (or the save) for
    ever: it is not a regular file, so it is not read, and the save skips it."""
    monkeypatch.setenv("NST_EXT_CACHE_DIR", str(tmp_path))
    path = algorithm_cache.cache_path()
    os.mkfifo(path if which == "cache" else path.with_suffix(".lock"))
    read = []
    assert finishes(lambda: read.append(algorithm_cache._read(path))) and read == [[]]
    previous = dispatch.gram_algorithm_choices()
    try:
        with nst_ext.gram_algorithm("auto"):
            nst_ext.gram_matrix(torch.rand(1, 3, 5, 5))  # a choice to save
        assert finishes(algorithm_cache.save)
    finally:
        dispatch.clear_gram_algorithm_choices()
        dispatch.restore_gram_algorithm_choices(previous)


def test_another_machine_reads_another_file_and_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("NST_EXT_CACHE_DIR", str(tmp_path))
    here = algorithm_cache.cache_path()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)  # another thread count: another winner
    assert algorithm_cache.cache_path() != here
    monkeypatch.setenv("NST_EXT_CACHE_DIR", "off")
    assert algorithm_cache.cache_path() is None
    algorithm_cache.save()
    assert not list(tmp_path.iterdir())


def test_the_record_lists_only_the_choices_its_run_used():
    previous = dispatch.gram_algorithm_choices()
    dispatch.clear_gram_algorithm_choices()
    try:
        unused = {
            "device": "cpu",
            "device_index": -1,
            "op": "gram",
            "dtype": "Float",
            "batch": 1,
            "channels": 11,
            "spatial": 13,
            "layout": "nchw",
            "algorithm": "blas",
        }
        dispatch.restore_gram_algorithm_choices([unused])
        with nst_ext.gram_algorithm("auto"):
            nst_ext.gram_matrix(torch.rand(1, 5, 4, 4))
        assert spatial_of(dispatch.gram_algorithm_choices()) == [(5, 16), (11, 13)]
        assert spatial_of(dispatch.gram_algorithm_choices(used_only=True)) == [(5, 16)]
    finally:
        dispatch.clear_gram_algorithm_choices()
        dispatch.restore_gram_algorithm_choices(previous)
