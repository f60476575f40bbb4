"""The hostile battery of issue 28, replayed: batch, video, the list file, the manifest, full disks,
FIFOs, memory limits, odd images and the Python API, each case as a user or a fault meets it. CLI
cases run in a subprocess where the path a person takes matters (progress bars, a terminal, a
real full disk); faults that need injecting run in-process through ``cli.main``."""

import errno
import fcntl
import json
import importlib.util
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nst_ext
from nst_ext.plan import budget
from nst_ext.cli import main
from nst_ext.errors import ImageError, JobWarning, OptionError
from nst_ext.jobs import LOCK_NAME, MANIFEST_NAME, append_record, read_manifest
from nst_ext.io.outputs import WriteError
from nst_ext.stylizer import Stylizer

from test_jobs_batch import done_counts, make_job
from test_cli import CONTENT, STYLE, assert_one_line_error, nst_ext_cli
from test_safety import main_as_unprivileged_user

av = pytest.importorskip("av", reason="video needs PyAV (requirements.txt pins it)")
# A video job with the default optical flow needs OpenCV (requirements.txt pins it; a GPU machine
# brings it as a wheel, scripts/gpu_check.sh).
needs_opencv = pytest.mark.skipif(importlib.util.find_spec("cv2") is None, reason="video flow needs OpenCV")
from clips import synthetic_clip  # noqa: E402

TINY = ["--size", "40", "--steps", "2", "--device", "cpu"]
VIDEO_TINY = [*TINY, "--frame-steps", "1"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return synthetic_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=3, size=(36, 48), fps=6, audio=False)


def one_picture(path: Path, size=(60, 52)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(CONTENT).convert("RGB").resize(size).save(path)
    return path


def single_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- 1: the progress bars on (not --quiet), as a person at a terminal runs them -------------------------


def run_in_terminal(args, cwd, timeout=300):
    """`nst-ext ARGS` with a pseudo-terminal as its stdin, stdout and stderr: (exit status, output)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size
    process = subprocess.Popen(
        [sys.executable, "-m", "nst_ext", *map(str, args)],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=cwd,
        close_fds=True,
    )
    os.close(follower)
    output, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    return process.wait(timeout=60), output.decode(errors="replace")


@needs_opencv
def test_batch_and_video_with_progress_bars_in_a_terminal(tmp_path, clip):
    job = make_job(tmp_path / "photos", count=2)
    (job / "broken.png").unlink()
    status, output = run_in_terminal(["batch", job, STYLE, "-o", tmp_path / "new" / "styled", *TINY], tmp_path)
    assert status == 0 and "Traceback" not in output, output
    assert "2 done, 0 skipped" in output and "image" in output  # the bar's unit
    assert sorted(p.name for p in (tmp_path / "new" / "styled").rglob("*.png")) == ["photo0.png", "photo1.png"]
    status, output = run_in_terminal(["video", clip, STYLE, "-o", tmp_path / "styled.mp4", *VIDEO_TINY], tmp_path)
    assert status == 0 and "Traceback" not in output, output
    assert "frame" in output and (tmp_path / "styled.mp4").exists()


def test_batch_with_its_progress_bar_into_a_pipe(tmp_path):
    job = make_job(tmp_path / "photos", count=1)
    result = nst_ext_cli("batch", job, STYLE, "-o", tmp_path / "styled", *TINY)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr  # broken.png fails
    assert "1 done, 0 skipped as already done, 1 failed (broken.png)" in result.stderr


# -- 2, 3, 13: no input of a job is ever one of its outputs -------------------------------------------


def test_a_list_file_never_replaces_its_own_pictures(tmp_path, capsys):
    photo = one_picture(tmp_path / "L" / "a.png")
    before = photo.read_bytes()
    (tmp_path / "L" / "list.txt").write_text("a.png\n")
    for extra in ([], ["--overwrite"]):
        assert main(["batch", str(tmp_path / "L" / "list.txt"), STYLE, "-o", str(tmp_path / "L"), *TINY, *extra]) == 2
        line = single_error_line(capsys.readouterr().err)
        assert "'a.png' would be written to" in line and "one of this job's inputs" in line
    assert photo.read_bytes() == before


def test_a_batch_never_replaces_its_style_image(tmp_path, capsys):
    one_picture(tmp_path / "in" / "a.jpg")
    style = tmp_path / "out" / "a.png"
    style.parent.mkdir()
    style.write_bytes(Path(STYLE).read_bytes())
    assert main(["batch", str(tmp_path / "in"), str(style), "-o", str(tmp_path / "out"), *TINY, "--overwrite"]) == 2
    assert "one of this job's inputs" in single_error_line(capsys.readouterr().err)
    assert style.read_bytes() == Path(STYLE).read_bytes()


def test_a_video_never_replaces_its_style_or_init_image(tmp_path, clip, capsys):
    gif = tmp_path / "sty.gif"
    Image.open(STYLE).save(gif)
    before = gif.read_bytes()
    cases = [[str(clip), str(gif), "-o", str(gif)], [str(clip), STYLE, "-o", str(gif), "--init", str(gif)]]
    for arguments in cases:
        assert main(["video", *arguments, "--overwrite", *VIDEO_TINY]) == 2
        assert "is one of this run's inputs" in single_error_line(capsys.readouterr().err)
    assert gif.read_bytes() == before


def test_the_output_folder_is_the_input_folder(tmp_path, capsys):
    one_picture(tmp_path / "same" / "a.jpg")
    assert main(["batch", str(tmp_path / "same"), STYLE, "-o", str(tmp_path / "same" / "."), *TINY]) == 2
    assert "is the input folder" in single_error_line(capsys.readouterr().err)


# -- 4: every output inside OUT_DIR ----------------------------------------------------------------------


def test_list_lines_climbing_out_of_the_folder_land_inside_it(tmp_path):
    one_picture(tmp_path / "pic.jpg")
    one_picture(tmp_path / "deep" / "other.jpg")
    listing = tmp_path / "lists" / "list.txt"
    listing.parent.mkdir()
    listing.write_text(f"../pic.jpg\n../deep/../deep/other.jpg\n{tmp_path / 'deep' / 'other.jpg'}\n")
    out = tmp_path / "lists" / "out"
    before = sorted(p for p in tmp_path.rglob("*") if out not in p.parents and p != out)
    summary = nst_ext.jobs.run_batch(listing, [STYLE], out, nst_ext.StyleOptions(size=40, steps=2, device="cpu"))
    assert (summary.done, summary.failed) == (3, [])
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["deep/other.png", "pic.png", str(tmp_path / "deep" / "other.png").lstrip("/")]
    after = sorted(p for p in tmp_path.rglob("*") if out not in p.parents and p != out)
    assert after == before  # nothing written outside OUT_DIR


# -- 5: a full disk --------------------------------------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path):
    """A tiny tmpfs, filled: every write of data there fails with ENOSPC (needs root and mount)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        filler = mount / "filler"
        with open(filler, "wb", buffering=0) as stream:
            try:
                while stream.write(b"\0" * 4096):
                    pass
            except OSError as error:
                assert error.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_stylize_on_a_full_disk_keeps_the_picture(tmp_path, full_disk):
    rescue = tmp_path / "rescue"
    rescue.mkdir()
    out = full_disk / "out.png"
    result = subprocess.run(
        [sys.executable, "-m", "nst_ext", "stylize", CONTENT, STYLE, "-o", str(out), *TINY],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TMPDIR=str(rescue)),
    )
    assert result.returncode == 1, result.stderr
    line = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(line) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "the disk is full" in line[0] and "the picture was saved to" in line[0]
    saved = list(rescue.glob("nst-ext-rescued-*-out.png"))
    assert len(saved) == 1 and str(saved[0]) in line[0] and Image.open(saved[0]).size == (40, 40)
    assert not out.exists() and not [p for p in full_disk.iterdir() if p.name.endswith(".tmp")]


def test_intermediate_images_on_a_full_disk_do_not_stop_the_run(tmp_path, full_disk):
    rescue = tmp_path / "rescue"
    rescue.mkdir()
    out = full_disk / "out.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nst_ext",
            "stylize",
            CONTENT,
            STYLE,
            "-o",
            str(out),
            *TINY,
            "--save-every",
            "1",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TMPDIR=str(rescue)),
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    warnings_seen = [line for line in result.stderr.splitlines() if line.startswith("nst-ext: warning: ")]
    assert len(warnings_seen) == 1 and "no more intermediate images are written" in warnings_seen[0]
    assert "the picture was saved to" in result.stderr and len(list(rescue.glob("nst-ext-rescued-*-out.png"))) == 1


def test_batch_on_a_full_disk_stops_keeps_the_picture_and_resumes(tmp_path, full_disk, monkeypatch, capsys):
    job = make_job(tmp_path / "in", count=2)
    (job / "broken.png").unlink()
    rescue = tmp_path / "rescue"
    rescue.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(rescue))
    out = full_disk / "styled"
    assert main(["batch", str(job), STYLE, "-o", str(out), *TINY, "--quiet"]) == 1
    line = single_error_line(capsys.readouterr().err)
    assert "the disk is full" in line and "the picture was saved to" in line and "run the same command again" in line
    assert len(list(rescue.glob("nst-ext-rescued-*.png"))) == 1
    (full_disk / "filler").unlink()  # space again: the same command finishes the job
    assert main(["batch", str(job), STYLE, "-o", str(out), *TINY, "--quiet"]) == 0
    assert "2 done, 0 skipped" in capsys.readouterr().err
    assert sorted(done_counts(out).values()) == [1, 1]


# -- 6, 7: the manifest --------------------------------------------------------------------------------


def test_a_short_write_is_caught_and_its_torn_line_skipped(tmp_path, monkeypatch):
    manifest = tmp_path / MANIFEST_NAME
    record = dict(item="a.jpg", output="a.png", status="done", settings="s")
    real_write = os.write
    monkeypatch.setattr("nst_ext.jobs.batch.os.write", lambda handle, data: real_write(handle, data[: len(data) // 2]))
    with pytest.raises(WriteError, match="no space left"):
        append_record(manifest, record)
    monkeypatch.setattr("nst_ext.jobs.batch.os.write", real_write)
    append_record(manifest, dict(record, item="b.jpg"))
    with pytest.warns(JobWarning, match="line 1 is not a record"):
        assert [r["item"] for r in read_manifest(manifest)] == ["b.jpg"]


def test_a_job_resumes_past_torn_and_foreign_manifest_lines(tmp_path, capsys):
    job = make_job(tmp_path / "in", count=2)
    (job / "broken.png").unlink()
    out = tmp_path / "out"
    assert main(["batch", str(job), STYLE, "-o", str(out), *TINY, "--quiet"]) == 0
    capsys.readouterr()
    manifest = out / MANIFEST_NAME
    lines = manifest.read_bytes().splitlines(keepends=True)
    done_first = lines[0]
    # The second item's line torn by a crash; foreign lines around it; its output gone with it.
    manifest.write_bytes(done_first + b"[1, 2]\n" + b'{"no": "item"}\n' + b"\xff\xfe not utf-8\n" + lines[1][:30])
    Path(json.loads(lines[1])["output"]).unlink()
    assert main(["batch", str(job), STYLE, "-o", str(out), *TINY, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("nst-ext: warning: ") == 4 and "Traceback" not in err, err
    assert "1 done, 1 skipped as already done, 0 failed" in err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JobWarning)
        assert sorted(done_counts(out).values()) == [1, 1]


# -- 8: batch's output folder --------------------------------------------------------------------------


def test_batch_output_that_is_a_file_or_cannot_be_made(tmp_path, capsys, monkeypatch):
    one_picture(tmp_path / "in" / "a.jpg")
    (tmp_path / "file").write_text("a file")
    assert main(["batch", str(tmp_path / "in"), STYLE, "-o", str(tmp_path / "file"), *TINY]) == 2
    assert "is a file; a batch writes into a folder" in single_error_line(capsys.readouterr().err)

    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", denied)
    assert main(["batch", str(tmp_path / "in"), STYLE, "-o", str(tmp_path / "ro" / "new"), *TINY]) == 2
    assert "cannot make the output folder" in single_error_line(capsys.readouterr().err)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_batch_into_a_read_only_folder_as_an_unprivileged_user(tmp_path):
    one_picture(tmp_path / "in" / "a.jpg")
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(locked, 0o555)
    for out in (locked, locked / "new"):
        result = main_as_unprivileged_user(
            ["batch", str(tmp_path / "in"), STYLE, "-o", str(out), "--size", "40", "--steps", "1", "--quiet"]
        )
        assert_one_line_error(result, r"(not writable|cannot make the output folder).*permission denied")


# -- 9: only regular files are read ----------------------------------------------------------------------


def test_fifos_are_refused_at_once(tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for arguments in (
        ["stylize", str(fifo), STYLE, "-o", str(tmp_path / "a.png")],
        ["stylize", CONTENT, str(fifo), "-o", str(tmp_path / "b.png")],
    ):
        result = nst_ext_cli(*arguments, *TINY)  # a hang would fail on the subprocess's timeout
        assert_one_line_error(result, r"pipe.png' is a FIFO \(named pipe\); only regular files are read")
    one_picture(tmp_path / "a.jpg")
    (tmp_path / "list.txt").write_text("a.jpg\npipe.png\n")
    assert main(["batch", str(tmp_path / "list.txt"), STYLE, "-o", str(tmp_path / "out"), *TINY, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "skipped pipe.png: " in err and "is a FIFO" in err and "1 done" in err
    assert main(["batch", str(fifo), STYLE, "-o", str(tmp_path / "out2"), *TINY]) == 2
    assert "is a FIFO" in single_error_line(capsys.readouterr().err)
    assert main(["stylize", CONTENT, STYLE, "-o", str(tmp_path / "c.png"), *TINY, "--weights", str(fifo)]) == 2
    assert "weights file" in single_error_line(capsys.readouterr().err)


# -- 10: memory limits -----------------------------------------------------------------------------------


def test_the_budget_honours_the_address_space_limit(monkeypatch):
    used = budget._status_bytes("VmSize")
    assert used > 0
    monkeypatch.setattr(budget.resource, "getrlimit", lambda which: (used + 300 * 2**20, budget.resource.RLIM_INFINITY))
    assert 0 < budget.address_space_headroom() <= 300 * 2**20
    assert budget.free_memory_bytes(torch.device("cpu")) <= 300 * 2**20
    with pytest.raises(OptionError, match=r"budget"):
        stylizer = Stylizer(size=1024, device="cpu")
        stylizer.plan((1024, 1024), [(512, 512)])


@pytest.mark.parametrize("version", [1, 2])
def test_the_budget_honours_the_cgroup_limit(tmp_path, version):
    membership = tmp_path / "cgroup"
    if version == 2:
        membership.write_text("0::/jobs/mine\n")
        group = tmp_path / "fs" / "jobs" / "mine"
        group.mkdir(parents=True)
        (tmp_path / "fs" / "jobs" / "memory.max").write_text(f"{3 * 2**30}\n")  # the parent's limit binds
        (tmp_path / "fs" / "jobs" / "memory.current").write_text(f"{2**30}\n")
        (group / "memory.max").write_text("max\n")
        (group / "memory.current").write_text(f"{2**30}\n")
        (tmp_path / "fs" / "jobs" / "memory.stat").write_text(f"anon 1\ninactive_file {2**29}\n")
        expected = 3 * 2**30 - (2**30 - 2**29)
    else:
        membership.write_text("4:memory:/docker/abc\n1:cpu:/\n")
        group = tmp_path / "fs" / "memory"  # a container sees its own group at the root
        group.mkdir(parents=True)
        (group / "memory.limit_in_bytes").write_text(f"{2**31}\n")
        (group / "memory.usage_in_bytes").write_text(f"{2**30}\n")
        (group / "memory.stat").write_text(f"total_inactive_file {2**28}\n")
        expected = 2**31 - (2**30 - 2**28)
    assert budget.cgroup_headroom(tmp_path / "fs", membership) == expected
    unlimited = tmp_path / "none"
    unlimited.write_text("0::/\n")
    assert budget.cgroup_headroom(tmp_path / "empty", unlimited) is None


def test_a_failed_allocation_is_one_line(tmp_path, monkeypatch, capsys):
    def exhausted(self, *args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 4503599627370496 bytes. Error code 12"
        )

    monkeypatch.setattr(Stylizer, "run", exhausted)
    assert main(["stylize", CONTENT, STYLE, "-o", str(tmp_path / "out.png"), *TINY, "--quiet"]) == 1
    line = single_error_line(capsys.readouterr().err)
    assert line.startswith("nst-ext: error: ran out of memory") and "--max-memory" in line


def test_a_tiny_memory_budget_names_its_size(tmp_path):
    result = nst_ext_cli("stylize", CONTENT, STYLE, "-o", tmp_path / "out.png", *TINY, "--max-memory", "1")
    assert_one_line_error(result, r"more than the 1 byte budget")
    assert budget.format_size(3 * 2**10) == "3 KiB" and budget.format_size(2) == "2 bytes"


# -- 11, 15: odd images ----------------------------------------------------------------------------------


def test_a_float_tiff_with_nan_is_refused_at_load(tmp_path):
    values = np.random.rand(48, 48).astype(np.float32)
    values[3, 5] = np.nan
    Image.fromarray(values).save(tmp_path / "nan.tif")
    result = nst_ext_cli("stylize", tmp_path / "nan.tif", STYLE, "-o", tmp_path / "out.png", *TINY)
    assert_one_line_error(result, r"content image '.*nan.tif' holds NaN or infinite pixel values")
    assert not (tmp_path / "out.png").exists()


def test_integer_and_float_tiffs_are_scaled_by_their_real_range(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 64), (8, 1))
    for name, values, mode in (
        ("int32.tif", (ramp * 4_000_000 - 1_000_000).astype(np.int32), "I"),
        ("sixteen.tif", (ramp * 65535).astype(np.int32), "I"),
        ("float.tif", (ramp * 1000).astype(np.float32), "F"),
    ):
        Image.fromarray(values).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode == mode
        image = nst_ext.load_image(tmp_path / name)
        assert image.shape == (3, 8, 64)
        assert image.min() == 0 and abs(float(image.max()) - 1) < 1e-6, name
        assert abs(float(image[0, 0, 32]) - 32 / 63) < 1e-3, name  # the ramp kept, not clipped white
    half = np.full((4, 4), 32768, dtype=np.int32)  # 16-bit data stored as mode I keeps its level
    Image.fromarray(half).save(tmp_path / "half.tif")
    Image.fromarray(half.astype(np.uint16)).save(tmp_path / "half.png")
    for name in ("half.tif", "half.png"):
        assert abs(float(nst_ext.load_image(tmp_path / name).mean()) - 32768 / 65535) < 1e-6, name


# -- 12, 19: the video's work folder ----------------------------------------------------------------------


@needs_opencv
def test_a_video_work_folder_that_is_a_file_or_has_corrupt_settings(tmp_path, clip, capsys):
    work = tmp_path / ".out.mp4.frames"
    work.write_text("not a folder")
    assert main(["video", str(clip), STYLE, "-o", str(tmp_path / "out.mp4"), *VIDEO_TINY]) == 2
    assert "is a file, where this video keeps its finished frames; move or remove it" in single_error_line(
        capsys.readouterr().err
    )
    work.unlink()
    work.mkdir()
    (work / "settings.json").write_text("{torn")
    (work / "frame000000.png").write_bytes(b"")
    assert main(["video", str(clip), STYLE, "-o", str(tmp_path / "out.mp4"), *VIDEO_TINY]) == 2
    assert "settings.json cannot be read" in single_error_line(capsys.readouterr().err)
    assert (
        main(["video", str(clip), STYLE, "-o", str(tmp_path / "out.mp4"), *VIDEO_TINY, "--quiet", "--overwrite"]) == 0
    )
    assert (tmp_path / "out.mp4").exists() and not work.exists()


@needs_opencv
def test_a_video_refused_by_the_stylizer_leaves_no_work_folder(tmp_path, clip, capsys):
    # A style shrunk to 2 pixels at every stage is too small for relu5_1: refused once the frames start.
    assert main(["video", str(clip), STYLE, "-o", str(tmp_path / "out.mp4"), *VIDEO_TINY, "--style-scale", "0.05"]) == 2
    assert "too small for layer" in single_error_line(capsys.readouterr().err)
    assert os.listdir(tmp_path) == []


# -- 14: linked subfolders ---------------------------------------------------------------------------------


def test_a_linked_subfolder_is_followed_and_a_loop_ends(tmp_path):
    one_picture(tmp_path / "in" / "a.jpg")
    one_picture(tmp_path / "elsewhere" / "b.jpg")
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere" / "loop").symlink_to(tmp_path / "in", target_is_directory=True)
    summary = nst_ext.jobs.run_batch(
        tmp_path / "in", [STYLE], tmp_path / "out", nst_ext.StyleOptions(size=40, steps=2, device="cpu")
    )
    assert (summary.done, summary.failed) == (2, [])
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "a.png",
        "linked/b.png",
    ]


# -- 16: one job per output ------------------------------------------------------------------------------


def hold_lock(path: Path):
    """Another process holding the job lock at `path` (as a running job does), until killed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, str(os.getpid()).encode(), 0); print('held', flush=True); "
        "time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@needs_opencv
def test_a_second_job_on_the_same_output_is_refused(tmp_path, clip, capsys):
    one_picture(tmp_path / "in" / "a.jpg")
    holder = hold_lock(tmp_path / "out" / LOCK_NAME)
    try:
        assert main(["batch", str(tmp_path / "in"), STYLE, "-o", str(tmp_path / "out"), *TINY]) == 2
        line = single_error_line(capsys.readouterr().err)
        assert f"another nst-ext job (process {holder.pid}) is writing to" in line
        assert not (tmp_path / "out" / MANIFEST_NAME).exists()
    finally:
        holder.kill()
        holder.wait()
    video_holder = hold_lock(tmp_path / ".v.mp4.frames" / LOCK_NAME)
    try:
        assert main(["video", str(clip), STYLE, "-o", str(tmp_path / "v.mp4"), *VIDEO_TINY]) == 2
        assert "is writing the video" in single_error_line(capsys.readouterr().err)
    finally:
        video_holder.kill()
        video_holder.wait()
    # Once the holder is gone the lock is free: the job runs.
    assert main(["batch", str(tmp_path / "in"), STYLE, "-o", str(tmp_path / "out"), *TINY, "--quiet"]) == 0
    with open(tmp_path / "out" / LOCK_NAME) as lock:  # and released when the job ended
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


# -- 17: the Python API's types ------------------------------------------------------------------------


def test_api_strings_are_lists_and_bad_types_are_named():
    options = nst_ext.StyleOptions(
        content_layers="relu4_2", style_layers="relu1_1, relu2_1", scales="64,128", steps="3"
    )
    assert options.content_layers == ("relu4_2",) and options.style_layers == ("relu1_1", "relu2_1")
    assert options.scales == [64, 128] and options.steps == 3
    options.validate()
    with pytest.raises(OptionError, match=r"scales must be a list of whole numbers .*got 'big'"):
        nst_ext.StyleOptions(scales="big")
    with pytest.raises(OptionError, match=r"seed must be None or a whole number from .* got 1180591620717411303424"):
        nst_ext.StyleOptions(seed=2**70).validate()
    with pytest.raises(OptionError, match=r"seed"):
        nst_ext.StyleOptions(seed=1.5).validate()
    with pytest.raises(OptionError, match=r"content_layers must be a list of VGG19 layer names"):
        nst_ext.StyleOptions(content_layers=[4]).validate()


def test_a_float_tensor_in_0_to_255_is_refused():
    picture = torch.rand(3, 40, 40) * 255
    with pytest.raises(ImageError, match=r"must hold values in \[0, 1\], this one spans .* divide 0…255 values by 255"):
        nst_ext.load_image(picture)
    assert nst_ext.load_image(picture.to(torch.uint8)).max() <= 1
    assert nst_ext.load_image(torch.full((3, 4, 4), 1.01)).max() == 1  # a resize's overshoot is clamped
    result = nst_ext.stylize(picture / 255, STYLE, content_layers="relu4_2", size=40, steps=2, device="cpu")
    assert result.shape == (3, 40, 40)


# -- 20: a run that changed nothing says so ----------------------------------------------------------------


def test_one_step_that_improves_nothing_is_warned_about(tmp_path):
    result = nst_ext_cli(
        "stylize", CONTENT, STYLE, "-o", tmp_path / "out.png", "--size", "40", "--steps", "1", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    assert "nst-ext: warning: no step improved the picture" in result.stderr
    improved = nst_ext_cli("stylize", CONTENT, STYLE, "-o", tmp_path / "b.png", *TINY, "--quiet")
    assert improved.returncode == 0 and "warning" not in improved.stderr, improved.stderr


# -- the demo ------------------------------------------------------------------------------------------


def test_a_leftover_demo_plot_does_not_stop_the_demo(tmp_path):
    (tmp_path / "nst-ext-demo-loss.png").write_bytes(b"an earlier plot")
    result = nst_ext_cli("demo", *TINY, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "nst-ext-demo-1.png").exists() and (tmp_path / "nst-ext-demo-1-loss.png").exists()
    assert (tmp_path / "nst-ext-demo-loss.png").read_bytes() == b"an earlier plot"


# -- the help agrees with the options and the README ---------------------------------------------------


def test_help_states_todays_defaults():
    flat = " ".join(nst_ext_cli("stylize", "--help").stdout.split())
    defaults = nst_ext.StyleOptions()
    assert f"default {','.join(map(str, defaults.stage_steps()))} at {defaults.output_size} px" in flat
    assert f"e.g. {','.join(map(str, defaults.stage_sizes()))} for {defaults.output_size}" in flat
    large = nst_ext.StyleOptions(size=1024)
    assert f"{','.join(map(str, large.stage_steps()))} at 1024" in flat
    assert f"{','.join(map(str, large.stage_sizes()))} for 1024" in flat
    guide = (Path(__file__).parents[1] / "docs" / "large-pictures.md").read_text(encoding="utf-8")
    slowdown = re.search(r"the same picture, (\d\.\d)× the time per step", guide).group(1)
    assert f"{slowdown}x the time per step" in flat and "a third more time" not in flat


def test_help_numbers_are_the_constants_they_state():
    """Each default a help text states is read from the constant that sets it (they had drifted)."""
    from nst_ext.jobs.batch import AUTO_BATCH_LIMIT
    from nst_ext.jobs.coherence import TEMPORAL_WEIGHT
    from nst_ext.jobs.video import FRAME_STEPS
    from nst_ext.plan.memory import DEFAULT_BUDGET_SHARE, LBFGS_HISTORY, MIN_LBFGS_HISTORY

    stylize = " ".join(nst_ext_cli("stylize", "--help").stdout.split())
    assert f"(default: {DEFAULT_BUDGET_SHARE * 100:.0f}% of the memory free" in stylize
    assert f"(down to {MIN_LBFGS_HISTORY}: slower convergence)" in stylize
    assert f"(default: up to {LBFGS_HISTORY}, no more than" in stylize
    batch = " ".join(nst_ext_cli("batch", "--help").stdout.split())
    assert f"as many as fit, up to {AUTO_BATCH_LIMIT}; on a CPU 1" in batch
    video = " ".join(nst_ext_cli("video", "--help").stdout.split())
    assert f"after the first (default {FRAME_STEPS})" in video and f"default {TEMPORAL_WEIGHT:g}; 0:" in video
