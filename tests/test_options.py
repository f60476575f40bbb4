"""StyleOptions: the schedule and its one output size, validation, and what the options read."""

import pytest

from nst_ext.errors import OptionError
from nst_ext.jobs import settings_hash
from nst_ext.plan.options import DEFAULT_SIZE, StyleOptions
from nst_ext.plan.run import stage_shapes


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
    with pytest.raises(
        OptionError, match=r"size 512 and scales \[256, 1024\] disagree: the last of scales is the output"
    ):
        StyleOptions(size=512, scales=[256, 1024]).validate()
    # Given either way, the same picture is the same job.
    assert settings_hash(StyleOptions(scales=[64, 128]), [], "") == settings_hash(
        StyleOptions(size=128, scales=[64, 128]), [], ""
    )
    assert settings_hash(StyleOptions(), [], "") == settings_hash(StyleOptions(size=DEFAULT_SIZE), [], "")


def test_stages_pair_each_size_with_its_steps():
    assert StyleOptions().stages() == [(128, 60), (320, 25), (512, 42)]
    assert StyleOptions(scales=[32, 48], steps=[3, 4]).stages() == [(32, 3), (48, 4)]
    assert stage_shapes(StyleOptions(size=512), (300, 400)) == ((96, 128), (240, 320), (384, 512))


def test_the_command_line_defaults_are_the_options_defaults():
    """Every flag of `nst-ext stylize` named after a StyleOptions field carries that field's default
    (or None, for the option to decide), so --help, which prints the flag's default, states the
    option's; and style_options passes every such flag on by its name."""
    import dataclasses

    from nst_ext.cli import build_parser, style_options

    parser = build_parser()
    stylize = next(action for action in parser._subparsers._group_actions).choices["stylize"]
    defaults = StyleOptions()
    fields = {field.name for field in dataclasses.fields(StyleOptions)}
    flags = {action.dest: action for action in stylize._actions if action.dest in fields}
    assert len(flags) >= len(fields) - 2, sorted(fields - set(flags))  # all but a few Python-only fields
    for name, action in flags.items():
        if action.default is None:
            continue
        expected = getattr(defaults, name)
        given = list(action.default) if isinstance(action.default, (list, tuple)) else action.default
        assert given == (list(expected) if isinstance(expected, (list, tuple)) else expected), name
    options = style_options(
        parser.parse_args(["stylize", "c.jpg", "s.jpg", "-o", "o.png", "--style-weight", "7", "--pooling", "max"])
    )
    assert (
        options.style_weight == 7
        and options.pooling == "max"
        and options
        == dataclasses.replace(
            defaults,
            style_weight=7,
            pooling="max",
            content_layers=list(defaults.content_layers),
            style_layers=list(defaults.style_layers),
        )
    )


def test_the_options_table_states_every_default():
    """docs/usage.md's table: one row per StyleOptions field, its default as StyleOptions has it."""
    import dataclasses
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "usage.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)`", text, flags=re.M)
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)) and set(names) == {field.name for field in dataclasses.fields(StyleOptions)}
    defaults = StyleOptions()
    for name, stated in rows:
        assert stated == repr(getattr(defaults, name)), name
