"""The README's commands and Python example, run as a reader runs them: every `nst-ext` and
`torchrun` line of the shell blocks of the README and then the guides in docs/, in order, in one
folder holding the files they name, with the progress bars on (no --quiet). Only the size is made
small (``--size``/``--steps`` appended, the last value of a flag being the one argparse keeps; not to a
``--from`` re-run, whose settings are the small ones of the picture it names);
lines that need GPUs or several machines are skipped here and named in the skip reason."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import nst_ext

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
# The README's commands, then the guides' (docs/jobs.md's batch, video and torchrun lines among them).
DOCUMENTED = "\n".join(
    path.read_text(encoding="utf-8") for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
)
SMALL = ["--size", "40", "--steps", "2"]
# At most this many processes of one torchrun line run here (2 cores): larger launches are for GPU machines.
MOST_PROCESSES_HERE = 4


def shell_commands(markdown: str):
    """The `nst-ext` and `torchrun` commands of the ```sh blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in ("nst-ext", "torchrun"):
                commands.append(words)
    return commands


def without_schedule(words):
    """`words` less their --size, --scales and --steps (each with its value)."""
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in ("--size", "--scales", "--steps"):
            skip = True
        else:
            kept.append(word)
    return kept


def why_not_here(words) -> str:
    """Why a README command cannot run on this machine ('' when it can)."""
    gpus = {device for word in words for device in word.split(",") if re.fullmatch(r"cuda:\d+", device)}
    if len(gpus) > torch.cuda.device_count():
        return f"needs {len(gpus)} GPUs"
    if "--nnodes" in words:
        return "needs several machines"
    if len(words) > 1 and words[1] == "serve":
        return "a server, running until stopped (tests/test_web_browser.py drives it)"
    if "--nproc-per-node" in words and int(words[words.index("--nproc-per-node") + 1]) > MOST_PROCESSES_HERE:
        return f"{words[words.index('--nproc-per-node') + 1]} processes"
    return ""


def executable(name: str):
    """The installed console script beside this interpreter, else its module."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", {"nst-ext": "nst_ext", "torchrun": "torch.distributed.run"}[name]]


@pytest.fixture
def readers_folder(tmp_path):
    """The files the README's commands name: photo.jpg, painting.jpg, a.jpg, b.jpg, photos/, list.txt,
    the masks sky.png and ground.png, clip.mp4 and the p1-p3 of the Python example, all small."""
    folder = tmp_path
    data = Path(nst_ext.__file__).parent / "data"
    photo = Image.open(data / "astronaut.jpg").convert("RGB")
    painting = Image.open(data / "swirls.jpg").convert("RGB")
    photo.resize((60, 52)).save(folder / "photo.jpg")
    painting.resize((64, 64)).save(folder / "painting.jpg")
    painting.resize((64, 64)).save(folder / "a.jpg")
    painting.rotate(90).resize((64, 64)).save(folder / "b.jpg")
    (folder / "photos").mkdir()
    for index in range(3):
        crop = photo.crop((index * 30, 0, index * 30 + 300, 260)).resize((60, 52))
        crop.save(folder / "photos" / f"photo{index}.jpg")
        crop.save(folder / f"p{index + 1}.jpg")
    (folder / "list.txt").write_text("photos/photo0.jpg\nphotos/photo2.jpg\n")
    sky = Image.new("L", (60, 52), 0)
    sky.paste(255, (0, 0, 60, 26))
    sky.save(folder / "sky.png")
    Image.eval(sky, lambda value: 255 - value).save(folder / "ground.png")
    pytest.importorskip("av", reason="the README's video commands need PyAV")
    pytest.importorskip("cv2", reason="the README's video commands need OpenCV (optical flow)")
    from clips import synthetic_clip

    synthetic_clip(folder / "clip.mp4", frames=3, size=(36, 48), fps=6)
    return folder


def test_the_readme_names_the_commands_it_shows():
    commands = shell_commands(DOCUMENTED)
    subcommands = {words[words.index("nst_ext") + 1] if "nst_ext" in words else words[1] for words in commands}
    assert {"stylize", "batch", "video", "demo", "layers", "info"} <= subcommands
    assert any(words[0] == "torchrun" for words in commands)


def test_every_readme_command_runs_as_written(readers_folder):
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    skipped = []
    for words in shell_commands(DOCUMENTED):
        reason = why_not_here(words)
        if reason:
            skipped.append(f"{' '.join(words)} ({reason})")
            continue
        subcommand = words[words.index("nst_ext") + 1] if "nst_ext" in words else words[1]
        if subcommand in ("stylize", "batch", "video", "demo") and "--from" not in words:
            # The command's own sizes and steps give way to small ones (a print-sized schedule would take hours).
            words = without_schedule(words) + SMALL + (["--frame-steps", "1"] if subcommand == "video" else [])
        command = executable(words[0]) + words[1:]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=600, cwd=readers_folder, env=environment
        )
        assert result.returncode == 0 and "Traceback" not in result.stderr, (words, result.stderr)
    for picture in (
        "out.png",
        "mix.png",
        "big.png",
        "print.png",
        "poster.png",
        "print8k.png",
        "print8k-6gib.png",
        "tiled.png",
        "keep.png",
        "regions.png",
        "again.png",
        "watched.png",
        "live.png",
        "painted.png",
        "loss.png",
        "exact.png",
        "nst-ext-demo.png",
        "nst-ext-demo-loss.png",
        "styled/photo0.png",
        "watched/photo0.png",
        "listed/photos/photo2.jpg",
    ):
        assert (readers_folder / picture).is_file(), picture
    for video in ("styled.mp4", "small.webm", "parts.mp4"):
        assert (readers_folder / video).is_file(), video
    if skipped:
        print("skipped here:", *skipped, sep="\n  ")


def test_the_python_example_runs(readers_folder, monkeypatch):
    """The README's Python block as written, its picture sizes made small."""
    code = re.search(r"```python\n(.*?)```", README, flags=re.S).group(1)
    small = code.replace("size=512", "size=40, steps=2").replace("size=768", "size=40, steps=2")
    small = small.replace("nst_ext.Stylizer()", "nst_ext.Stylizer(size=40, steps=2)")
    assert small.count("steps=2") == 3, "the example's sizes changed: update this test's substitutions"
    monkeypatch.chdir(readers_folder)
    namespace = {}
    exec(compile(small, "README.md", "exec"), namespace)
    assert (readers_folder / "out.png").exists() and (readers_folder / "mix.png").exists()
    assert len(namespace["results"]) == 3 and namespace["loss"].ndim == 0
    assert namespace["features"].grad is not None and namespace["region"].shape == (1, 64, 64)
