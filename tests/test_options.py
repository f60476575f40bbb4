"""StyleOptions: the schedule and its one output size, validation, and what the options read."""

import pytest

from nst_ext.errors import OptionError
from nst_ext.jobs import settings_hash
from nst_ext.options import DEFAULT_SIZE, StyleOptions


def test_default_schedule():
    assert StyleOptions(size=512).stage_sizes() == [128, 320, 512]
    assert StyleOptions(size=512).stage_steps() == [60, 25, 42]
    assert StyleOptions(size=1024).stage_sizes() == [128, 256, 640, 1024]
    assert StyleOptions(size=1024).stage_steps() == [60, 35, 25, 42]
    assert StyleOptions(size=600).stage_sizes() == [150, 375, 600]
    assert StyleOptions(size=256).stage_sizes() == [128, 256] and StyleOptions(size=256).stage_steps() == [60, 42]
    assert StyleOptions(size=200).stage_sizes() == [200] and StyleOptions(size=200).stage_steps() == [100]




def test_the_output_size_has_one_source():
    assert StyleOptions().output_size == DEFAULT_SIZE and StyleOptions().size is None
    assert StyleOptions(size=300).output_size == 300
    assert StyleOptions(scales=[64, 128]).output_size == 128  # the last of scales, with size left alone
    assert StyleOptions(size=128, scales=[64, 128]).output_size == 128
    with pytest.raises(OptionError, match=r"size 512 and scales \[256, 1024\] disagree: the last of scales is the output"):
        StyleOptions(size=512, scales=[256, 1024]).validate()
    # Given either way, the same picture is the same job.
    assert settings_hash(StyleOptions(scales=[64, 128]), [], "") == settings_hash(
        StyleOptions(size=128, scales=[64, 128]), [], "")
    assert settings_hash(StyleOptions(), [], "") == settings_hash(StyleOptions(size=DEFAULT_SIZE), [], "")


def test_stages_pair_each_size_with_its_steps():
    assert StyleOptions().stages() == [(128, 60), (320, 25), (512, 42)]
    assert StyleOptions(scales=[32, 48], steps=[3, 4]).stages() == [(32, 3), (48, 4)]
    assert StyleOptions(size=512).stage_shapes((300, 400)) == ((96, 128), (240, 320), (384, 512))
