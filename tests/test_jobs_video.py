"""`nst-ext video`: frame count, rate, size and audio kept; the style moves with a panning camera; a
stopped run continues (with the flow, from its saved frames); bad input is one line; two processes
under torchrun."""

import dataclasses
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
pytest.importorskip("cv2", reason="the video job's optical flow needs OpenCV (requirements.txt pins it)")

from nst_ext.jobs import TEMPORAL_WEIGHT, run_video
from nst_ext.io.video import probe, read_frames

from clips import motion_clip, synthetic_clip, warping_error, write_clip
from test_jobs_coherence import StandIn

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
    if suffix != ".gif":  # the container keeps the record of how it was made (GIF has no such field)
        import av

        with av.open(str(output)) as container:
            comment = {key.lower(): value for key, value in container.metadata.items()}.get("comment", "")
            assert '"command": "video"' in comment  # Matroska names the tag COMMENT


def test_audio_at_a_rate_the_webm_encoder_lacks_is_resampled(tmp_path):
    """A phone's 44.1 kHz AAC into .webm: Opus takes 48 kHz, not 44.1 (the whole video was made, then
    the write failed); the audio is resampled and lasts as long."""
    import av

    from nst_ext.io.video import write_video

    source = synthetic_clip(tmp_path / "phone.mp4", frames=6, size=(32, 48), fps=6, audio_rate=44100)
    output = write_video(read_frames(source), tmp_path / "out.webm", probe(source).fps, audio_from=source)
    with av.open(str(source)) as original, av.open(str(output)) as written:
        assert original.streams.audio[0].codec_context.sample_rate == 44100
        stream = written.streams.audio[0]
        assert stream.codec_context.name == "opus" and stream.codec_context.sample_rate == 48000
        heard = sum(frame.samples for frame in written.decode(stream)) / 48000
    assert abs(heard - 1.0) < 0.05, heard  # 6 frames at 6 fps


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_a_clip_with_a_display_rotation_is_read_upright(tmp_path, rotation):
    """A portrait phone clip is stored sideways with a display rotation: its frames are read as a
    player shows them (FFmpeg's display matrix: degrees counterclockwise), and its size too."""
    import numpy as np

    plain = synthetic_clip(tmp_path / "plain.mp4", frames=3, size=(32, 48), fps=6, audio=False)
    turned = synthetic_clip(
        tmp_path / "turned.mp4", frames=3, size=(32, 48), fps=6, audio=False, display_rotation=rotation
    )
    info = probe(turned)
    assert (info.height, info.width) == ((32, 48) if rotation == 180 else (48, 32))
    for stored, shown in zip(read_frames(plain), read_frames(turned)):
        expected = torch.from_numpy(np.ascontiguousarray(np.rot90(stored.permute(1, 2, 0).numpy(), rotation // 90)))
        assert torch.equal(shown, expected.permute(2, 0, 1))
    resized = next(read_frames(turned, shape=(24, 16) if rotation != 180 else (16, 24)))
    assert tuple(resized.shape) == ((3, 24, 16) if rotation != 180 else (3, 16, 24))


def test_even_sides_for_420_video(tmp_path, clip):
    output = tmp_path / "odd.mp4"
    run_video(clip, [STYLE], output, nst_ext.StyleOptions(size=47, steps=2, device="cpu"), frame_steps=1)
    info = probe(output)
    assert info.width % 2 == 0 and info.height % 2 == 0 and max(info.width, info.height) == 46


@pytest.mark.parametrize(
    "style_loss, parametrization, average",
    [
        ("gram", "pixels", False),
        ("gram", "pyramid", False),
        ("w2", "pixels", False),
        ("sliced", "pixels", False),
        ("gram", "pixels", True),
    ],
)
def test_the_style_moves_with_a_panning_camera(tmp_path, style_loss, parametrization, average):
    """The whole job on a lossless clip with known motion: with the flow (the default) the picture
    follows the scene by the true motion far better than the still-camera mask did: with each style
    loss, through the pyramid (whose frames start from the warped previous one alike) and with each
    frame the average of its iterates."""
    clip = motion_clip("pan", "chelsea", 8, (36, 48), pan=(2, 1))
    source = write_clip(clip, tmp_path / "pan.mov")
    errors = {}
    for coherence in ("flow", "still"):
        output = tmp_path / f"{coherence}.mp4"
        run_video(
            source,
            [STYLE],
            output,
            nst_ext.StyleOptions(
                size=48,
                steps=20,
                device="cpu",
                seed=0,
                style_loss=style_loss,
                parametrization=parametrization,
                average=average,
            ),
            frame_steps=10,
            coherence=coherence,
        )
        errors[coherence] = warping_error(clip, list(read_frames(output)))
    assert errors["flow"] < 0.5 * errors["still"], errors


def test_a_stopped_video_continues_where_it_stopped(tmp_path):
    clip = synthetic_clip(tmp_path / "long.mp4", frames=16, size=(54, 72), fps=8)
    output = tmp_path / "out.mp4"
    command = [
        sys.executable,
        "-m",
        "nst_ext",
        "video",
        str(clip),
        str(STYLE),
        "-o",
        str(output),
        "--size",
        "64",
        "--steps",
        "10",
        "--frame-steps",
        "10",
        "--device",
        "cpu",
        "--quiet",
    ]
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
        ([str(clip), str(STYLE), "-o", str(tmp_path / "a.mp4"), "--long-term", "2,4"], "one of them 1"),
    ]
    (tmp_path / "exists.mp4").write_bytes(b"")
    cases.insert(0, ([str(clip), str(STYLE), "-o", str(tmp_path / "exists.mp4")], "already exists"))
    for arguments, message in cases:
        assert main(["video", *arguments, *FAST[:-5]]) == 2, arguments
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    for flag, value, message in (
        ("--long-term", "1,x", "comma-separated ints"),
        ("--coherence", "optical", "invalid choice: 'optical'"),
    ):
        with pytest.raises(SystemExit) as stop:  # argparse: its usage line, then one error line
            main(["video", str(clip), str(STYLE), "-o", str(tmp_path / "a.mp4"), flag, value])
        assert stop.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_torchrun_two_processes_make_one_video(tmp_path, clip):
    output = tmp_path / "out.webm"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "nst_ext",
        "video",
        str(clip),
        str(STYLE),
        "-o",
        str(output),
        *FAST,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("nst-ext: wrote") == 1 and "10 stylized now" in result.stderr
    assert probe(output).frames == 10


def test_a_stopped_flow_video_continues_the_chain_from_its_saved_frames(tmp_path, monkeypatch):
    """Resumed, the flow picks up the last saved frames (the long-term ones too): the continued
    video follows the true motion as well as one made without a stop."""
    import nst_ext.stylizer

    monkeypatch.setattr(nst_ext.stylizer, "Stylizer", StandIn)
    clip = motion_clip("pan", "chelsea", 12, (48, 64), pan=(2, 1))
    source = write_clip(clip, tmp_path / "pan.mov")
    options = nst_ext.StyleOptions(size=64, device="cpu")
    errors = {}
    for name, stop_at in (("whole", None), ("resumed", 6)):
        StandIn.runs, StandIn.stop_at = 0, stop_at
        output = tmp_path / f"{name}.webm"
        summary = run_video(source, [STYLE], output, options)
        if stop_at:
            assert summary.interrupted and len(list(tmp_path.glob(f".{name}.webm.frames/frame*.png"))) == 5
            StandIn.stop_at = None
            summary = run_video(source, [STYLE], output, options)
            assert (summary.kept, summary.stylized) == (5, 7)
        errors[name] = warping_error(clip, list(read_frames(output)))
    assert errors["resumed"] < 1.3 * errors["whole"] + 0.002, errors


@pytest.mark.slow
def test_still_things_stay_still_at_any_style_strength():
    """A still camera with an object crossing, real stylization at a weak and a strong style: the
    still background flickers at most 0.3x as much as frames stylized one by one at both, and about
    as much relative to that at both (the temporal term follows the style weight; fixed, the strong
    style repainted still pixels every frame). benchmarks/video_style_strength.py is the full sweep."""
    from video_style_strength import background_flicker, frame_by_frame, with_flow

    from nst_ext.io.images import load_image
    from nst_ext.stylizer import Stylizer

    clip = motion_clip("beach", "coffee", 5, (42, 64), object_photo="brick", object_step=(-4, 0))
    ratios = []
    for style_weight in (5.0, 100.0):
        options = nst_ext.StyleOptions(size=64, seed=0, style_weight=style_weight, device="cpu")
        opening, following = Stylizer(options), Stylizer(dataclasses.replace(options, scales=[64], steps=8))
        styles = [load_image(STYLE)]
        alone = background_flicker(clip, frame_by_frame(clip, following, styles))
        chained = background_flicker(clip, with_flow(clip, opening, following, styles, TEMPORAL_WEIGHT))
        ratios.append(chained / alone)
    assert max(ratios) <= 0.3, ratios
    assert max(ratios) <= 1.6 * min(ratios), ratios


def test_more_passes_run_over_the_whole_clip_and_a_stop_continues_with_its_pass(tmp_path, monkeypatch):
    """--passes 3: after the first pass, two more over every frame but each pass's first; stopped in
    the third, a second run redoes only the third (the finished passes are recorded)."""
    import nst_ext.stylizer

    monkeypatch.setattr(nst_ext.stylizer, "Stylizer", StandIn)
    clip = motion_clip("pan", "chelsea", 6, (30, 40), pan=(1, 0))
    source = write_clip(clip, tmp_path / "pan.mov")
    options = nst_ext.StyleOptions(size=40, device="cpu")
    StandIn.runs, StandIn.stop_at = 0, None
    summary = run_video(source, [STYLE], tmp_path / "whole.webm", options, passes=3)
    assert not summary.interrupted and StandIn.runs == 6 + 2 * 5 and probe(tmp_path / "whole.webm").frames == 6
    assert not list(tmp_path.glob(".whole*"))
    StandIn.runs, StandIn.stop_at = 0, 6 + 5 + 2  # two frames into the third pass
    output = tmp_path / "stopped.webm"
    assert run_video(source, [STYLE], output, options, passes=3).interrupted
    assert (tmp_path / ".stopped.webm.frames" / "passes.json").read_text() == '{"done": 2}'
    assert len(list((tmp_path / ".stopped.webm.frames").glob("input*.png"))) == 6  # decoded once, kept on disk
    StandIn.runs, StandIn.stop_at = 0, None
    summary = run_video(source, [STYLE], output, options, passes=3)
    assert not summary.interrupted and (summary.kept, summary.stylized) == (6, 0) and StandIn.runs == 5
    assert probe(output).frames == 6


def test_passes_out_of_range_or_without_flow_are_one_line(tmp_path, clip, capsys):
    for extra, message in (
        (["--passes", "0"], "passes must be"),
        (["--passes", "2", "--coherence", "none"], "follow the optical flow"),
    ):
        assert main(["video", str(clip), str(STYLE), "-o", str(tmp_path / "a.mp4"), *FAST, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not list(tmp_path.iterdir())
