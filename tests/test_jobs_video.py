"""`nst-ext video`: frame count, rate, size and audio kept; coherence better than stylizing each frame
on its own; a stopped run continues; bad input is one line; two processes under torchrun."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nst_ext
from nst_ext.cli import main

pytest.importorskip("av", reason="video needs PyAV (requirements.txt pins it; the GPU machine may lack it)")

from nst_ext.jobs import flicker, run_video
from nst_ext.stylizer import Stylizer
from nst_ext.video import probe, read_frames, write_video

from clips import synthetic_clip

STYLE = Path(nst_ext.__file__).parent / "data" / "swirls.jpg"
FAST = ["--size", "48", "--steps", "6", "--frame-steps", "4", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return synthetic_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=10, size=(54, 72), fps=10)


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".gif"])
def test_video_keeps_frames_rate_size_and_audio(tmp_path, clip, capsys, suffix):
    output = tmp_path / f"out{suffix}"
    assert main(["video", str(clip), str(STYLE), "-o", str(output), *FAST]) == 0
    assert "nst-ext: wrote" in capsys.readouterr().err
    info, source = probe(output), probe(clip)
    assert info.frames == source.frames == 10
    assert (info.height, info.width) == ((36, 48) if suffix != ".gif" else (36, 48))
    if suffix == ".gif":  # GIF frame times are whole hundredths of a second: 10 fps stays 10
        assert info.fps == source.fps and not info.has_audio
    else:
        assert info.fps == source.fps and info.has_audio
    assert not list(tmp_path.glob(".out*"))  # no work folder or temporary left


def test_even_sides_for_420_video(tmp_path, clip):
    output = tmp_path / "odd.mp4"
    run_video(clip, [STYLE], output, nst_ext.StyleOptions(size=47, steps=2, device="cpu"), frame_steps=1)
    info = probe(output)
    assert info.width % 2 == 0 and info.height % 2 == 0 and max(info.width, info.height) == 46


def test_temporal_coherence_flickers_less_than_frame_by_frame(tmp_path, clip):
    options = nst_ext.StyleOptions(size=48, steps=20, device="cpu")
    ours = tmp_path / "ours.mp4"
    run_video(clip, [STYLE], ours, options, frame_steps=10)
    inputs = list(read_frames(clip, (36, 48)))
    stylizer = Stylizer(options)
    alone = [stylizer.run(frame, str(STYLE)).tensor for frame in inputs]
    independent = tmp_path / "independent.mp4"
    write_video(alone, independent, probe(clip).fps)
    ours_flicker = flicker(list(read_frames(ours)), inputs)
    independent_flicker = flicker(list(read_frames(independent)), inputs)
    assert ours_flicker < 0.7 * independent_flicker, (ours_flicker, independent_flicker)


def test_a_stopped_video_continues_where_it_stopped(tmp_path):
    clip = synthetic_clip(tmp_path / "long.mp4", frames=16, size=(54, 72), fps=8)
    output = tmp_path / "out.mp4"
    command = [sys.executable, "-m", "nst_ext", "video", str(clip), str(STYLE), "-o", str(output),
               "--size", "64", "--steps", "10", "--frame-steps", "10", "--device", "cpu", "--quiet"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    work = tmp_path / ".out.mp4.frames"
    deadline = time.monotonic() + 120
    while len(list(work.glob("frame*.png"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    kept = len(list(work.glob("frame*.png")))
    assert 3 <= kept < 16 and not output.exists() and "run the same command again" in err
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert f"{16 - kept} stylized now ({kept} kept from a stopped run)" in finished.stderr
    assert probe(output).frames == 16 and not work.exists()


def test_video_bad_input_is_one_line(tmp_path, clip, capsys):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    cases = [
        ([str(text), str(STYLE), "-o", str(tmp_path / "a.mp4")], "is not a video FFmpeg can read"),
        ([str(tmp_path / "missing.mp4"), str(STYLE), "-o", str(tmp_path / "a.mp4")], "does not exist"),
        ([str(clip), str(STYLE), "-o", str(tmp_path / "a.avi")], "unknown video extension"),
        ([str(clip), str(STYLE), "-o", str(clip), "--overwrite"], "is one of this run's inputs"),
        ([str(clip), str(STYLE), "-o", str(tmp_path / "a.mp4"), "--frame-steps", "0"], "frame steps must be"),
    ]
    (tmp_path / "exists.mp4").write_bytes(b"")
    cases.insert(0, ([str(clip), str(STYLE), "-o", str(tmp_path / "exists.mp4")], "already exists"))
    for arguments, message in cases:
        assert main(["video", *arguments, *FAST[:-5]]) == 2, arguments
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_torchrun_two_processes_make_one_video(tmp_path, clip):
    output = tmp_path / "out.webm"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "nst_ext", "video", str(clip), str(STYLE), "-o", str(output), *FAST]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("nst-ext: wrote") == 1 and "10 stylized now" in result.stderr
    assert probe(output).frames == 10
