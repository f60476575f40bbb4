"""nst_ext.jobs.finish: the one way every command finishes a picture writes its record and its
content's colour profile, makes a missing folder when asked, keeps an existing file unless told,
and rescues the picture to a fallback folder when its place refuses it."""

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageCms

from nst_ext.io.images import read_record
from nst_ext.io.outputs import WriteError
from nst_ext.jobs.finish import finish_picture
from nst_ext.plan.options import StyleOptions


@pytest.fixture
def made(tmp_path):
    """A stand-in for a stylizer and its result (what finish_picture reads), and a content picture
    with an sRGB profile."""
    content = tmp_path / "content.png"
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (12, 9), (200, 30, 60)).save(content, icc_profile=profile)
    stylizer = SimpleNamespace(
        options=StyleOptions(size=12, seed=5), weights=SimpleNamespace(source="test weights"), device="cpu"
    )
    result = SimpleNamespace(tensor=torch.rand(3, 9, 12), seed=5)
    return stylizer, result, content, profile


def test_the_picture_carries_its_record_and_its_contents_profile(made, tmp_path):
    stylizer, result, content, profile = made
    output = tmp_path / "new" / "folder" / "out.png"
    finish_picture(stylizer, result, str(content), [str(content)], output, "batch", make_folder=True)
    record = json.loads(read_record(output))
    assert record["command"] == "batch" and record["seed"] == 5 and record["weights"] == "test weights"
    assert [entry["role"] for entry in record["inputs"]] == ["content", "style 1"]
    with Image.open(output) as written:
        assert written.info.get("icc_profile") == profile and written.size == (12, 9)


def test_an_existing_file_is_kept_unless_told(made, tmp_path):
    stylizer, result, content, _ = made
    output = tmp_path / "out.png"
    output.write_bytes(b"someone's file")
    with pytest.raises(Exception, match="exists"):
        finish_picture(stylizer, result, str(content), [], output, "stylize")
    assert output.read_bytes() == b"someone's file"
    finish_picture(stylizer, result, str(content), [], output, "stylize", overwrite=True)
    assert json.loads(read_record(output))["command"] == "stylize"


def test_a_refused_place_rescues_the_picture_and_says_where(made, tmp_path, monkeypatch):
    stylizer, result, content, _ = made
    rescue = tmp_path / "rescue"
    rescue.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(rescue))
    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    with pytest.raises(WriteError) as raised:
        finish_picture(stylizer, result, str(content), [], blocked / "out.png", "serve", make_folder=True)
    rescued = list(rescue.glob("nst-ext-rescued-*-out.png"))
    assert len(rescued) == 1 and raised.value.rescued == rescued[0]
    assert json.loads(read_record(rescued[0]))["command"] == "serve"
