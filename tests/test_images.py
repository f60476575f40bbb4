"""Reading every kind of image the way a user would hand it over, and writing safely."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from nst_ext.errors import OutputError
from nst_ext.io.images import ImageError, load_image, save_image


def rgb_pixels(width=6, height=4):
    rng = np.random.default_rng()
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_rgb_file_round_trip(tmp_path):
    pixels = rgb_pixels()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.shape == (3, 4, 6) and image.dtype == torch.float32
    assert torch.equal((image * 255).round().byte().permute(1, 2, 0), torch.from_numpy(pixels))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    base = Image.fromarray(rgb_pixels())
    converted = (
        base.convert(mode)
        if mode not in ("I;16",)
        else base.convert("L").convert("I").point(lambda v: v * 256).convert("I;16")
    )
    image = load_image(converted)
    assert image.shape == (3, 4, 6) and 0 <= image.min() and image.max() <= 1


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (3, 3), (10, 20, 30, 0))
    assert torch.allclose(load_image(rgba), torch.ones(3, 3, 3))


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    assert torch.allclose(load_image(tmp_path / "p.png"), torch.ones(3, 4, 4))


def test_cmyk_matches_pillows_conversion(tmp_path):
    cmyk = Image.fromarray(rgb_pixels()).convert("CMYK")
    cmyk.save(tmp_path / "c.jpg")
    expected = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"), dtype=np.float32) / 255
    assert torch.allclose(load_image(tmp_path / "c.jpg"), torch.from_numpy(expected).permute(2, 0, 1))


def test_sixteen_bit_keeps_its_range(tmp_path):
    array = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "g16.png")
    image = load_image(tmp_path / "g16.png")
    assert image[0, 0].tolist() == pytest.approx([0.0, 32768 / 65535, 1.0], abs=1e-6)


def test_exif_orientation_is_honoured(tmp_path):
    image = Image.fromarray(rgb_pixels(width=20, height=10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: display turned 90 degrees clockwise
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").shape == (3, 20, 10)


def test_tensor_inputs():
    assert load_image(torch.full((1, 3, 5, 5), 255, dtype=torch.uint8)).max() == 1
    assert load_image(torch.rand(1, 5, 5)).shape == (3, 5, 5)
    with pytest.raises(ImageError, match=r"must be \(3, H, W\)"):
        load_image(torch.rand(5, 5, 5))
    with pytest.raises(ImageError, match=r"NaN"):
        load_image(torch.full((3, 2, 2), float("nan")))


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: None, r"does not exist"),
        (lambda p: p.mkdir(), r"is a directory"),
        (lambda p: p.write_text("hello, not pixels"), r"is not a picture \(PNG, JPEG"),
        (lambda p: p.write_bytes(b""), r"is not a picture"),
    ],
    ids=["missing", "directory", "text", "empty"],
)
def test_unusable_files(tmp_path, make, message):
    path = tmp_path / "input.png"
    make(path)
    with pytest.raises(ImageError, match=message):
        load_image(path, "content image")


def test_truncated_file(tmp_path):
    Image.fromarray(np.random.default_rng().integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"truncated or corrupt"):
        load_image(tmp_path / "cut.png")


def test_pixel_limit_names_the_flag(tmp_path):
    Image.new("RGB", (100, 50)).save(tmp_path / "big.png")
    with pytest.raises(
        ImageError, match=r"100x50 = 5,000 pixels, over the limit of 4,999; raise it with max_input_pixels"
    ):
        load_image(tmp_path / "big.png", max_pixels=4999)


def test_save_never_overwrites_silently(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"precious")
    with pytest.raises(OutputError, match=r"already exists; choose another name or pass overwrite=True"):
        save_image(torch.rand(3, 4, 4), path)
    assert path.read_bytes() == b"precious"
    save_image(torch.zeros(3, 4, 4), path, overwrite=True)
    assert torch.equal(load_image(path), torch.zeros(3, 4, 4))
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # no temporary files left behind


def test_a_file_that_appears_after_the_check_is_not_replaced(tmp_path, monkeypatch):
    """Another process writes the output between save_image's check and its write: the same one line."""
    import nst_ext.io.images

    path = tmp_path / "out.png"

    def another_process_writes(*args, **kwargs):
        path.write_bytes(b"theirs")

    monkeypatch.setattr(nst_ext.io.images, "check_outputs", another_process_writes)
    with pytest.raises(OutputError, match=r"already exists; choose another name or pass overwrite=True"):
        save_image(torch.rand(3, 4, 4), path)
    assert path.read_bytes() == b"theirs" and sorted(os.listdir(tmp_path)) == ["out.png"]


def test_save_rejects_unknown_extensions_and_missing_folders(tmp_path):
    with pytest.raises(OutputError, match=r"unknown extension"):
        save_image(torch.rand(3, 4, 4), tmp_path / "out.xyz")
    with pytest.raises(OutputError, match=r"folder .* does not exist"):
        save_image(torch.rand(3, 4, 4), tmp_path / "missing" / "out.png")


def test_saved_files_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = save_image(torch.rand(3, 4, 4), tmp_path / "shared.png")
    finally:
        os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o644
