"""The command line's help restates no fact of its own: every number in a flag's help is the flag's
default or one of its choices, a value of a constant of nst_ext (the one home of that fact), a
schedule the options compute, or an example listed here. A number typed into a help string, and
left behind when its constant changes, fails."""

import argparse
import re
from typing import Dict, Iterator, Optional, Set, Tuple

import pytest

from nst_ext.cli.arguments import build_parser, flag_for, in_flags
from nst_ext.errors import OptionError, OutputError
from nst_ext.plan.options import StyleOptions

NUMBER = re.compile(r"(?<![\w.:-])\d+(?:\.\d+)?(?![\w])")
# Numbers that are examples or formats, not facts with a home: per flag (or a command's description).
EXAMPLES: Dict[str, Set[str]] = {
    "--max-memory": {"2.5", "8", "500"},  # "e.g. 2.5GiB, 8G, 500MiB"
    "--scales": {"256", "512", "1024"},  # "e.g. 256,512,1024"
    "--steps": {"1024"},  # "at 1024": the example size whose schedule follows
    "--no-clamp-in-loss": {"0", "1"},  # "clamped to [0, 1]"
    "--long-term": {"1"},  # "must hold 1": one frame back
    "--temporal-weight": {"0"},  # "0: only the start carries over"
    "--port": {"0"},  # "0: a free port"
    "--max-upload": {"10"},  # "e.g. 10MB"
    "--self-test": {"1"},  # "exit status 1"
    "batch": {"0", "1", "2", "130", "143"},  # exit statuses
    "video": {"2016"},  # Ruder et al. 2016
}
# Example sizes whose schedules a help may quote (each computed from the options).
SCHEDULE_SIZES = (128, 512, 1024)


def _numbers_of(value: object) -> Iterator[str]:
    """Every way a constant's value may be written in a help: as it is, as %g, as a percentage
    (shares), and the values inside tuples, lists, dicts and strings."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield from {str(value), f"{value:g}", f"{value * 100:.0f}"}
    elif isinstance(value, str):
        yield from NUMBER.findall(value)
    elif isinstance(value, (tuple, list, frozenset, set)):
        for item in value:
            yield from _numbers_of(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers_of(key)
            yield from _numbers_of(item)


def constant_numbers() -> Set[str]:
    """The numbers of every UPPER_CASE constant the command line's argument modules read (each
    imported from its one home), of the schedules the options compute, and of the pooling grid
    of the default layers (the tile help quotes it)."""
    import nst_ext.cli.arguments as arguments
    import nst_ext.cli.style_flags as style_flags
    from nst_ext.plan.options import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
    from nst_ext.plan.tiles import alignment

    numbers: Set[str] = set()
    for module in (arguments, style_flags):
        for name, value in vars(module).items():
            if name.isupper() and not name.endswith("_HELP"):  # a help text is what is checked
                numbers.update(_numbers_of(value))
    for size in SCHEDULE_SIZES:
        for stage_size, steps in StyleOptions(size=size).stages():
            numbers.update({str(stage_size), str(steps)})
    numbers.add(str(alignment([*DEFAULT_CONTENT_LAYERS, *DEFAULT_STYLE_LAYERS])))
    return numbers


def help_texts() -> Iterator[Tuple[str, str, str, Optional[argparse.Action]]]:
    """(command, flag, action) of every flag of every command, with its help expanded as --help
    prints it; and (command, command, None) for each command's description."""
    parser = build_parser()
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for command, sub in action.choices.items():
            formatter = sub._get_formatter()
            if sub.description:
                yield command, command, sub.description, None
            for flag in sub._actions:
                if flag.help and flag.help != argparse.SUPPRESS:
                    name = flag.option_strings[-1] if flag.option_strings else flag.dest
                    yield command, name, formatter._expand_help(flag), flag


def own_numbers(action) -> Set[str]:
    """The numbers a flag's help may show of the flag itself: its default, const and choices."""
    if action is None:
        return set()
    numbers = set(_numbers_of(action.default)) | set(_numbers_of(action.const))
    for choice in action.choices or ():
        numbers |= set(_numbers_of(choice))
    return numbers


def test_every_number_in_a_help_has_a_home():
    facts = constant_numbers()
    strays = []
    for command, name, text, action in help_texts():
        allowed = facts | own_numbers(action) | EXAMPLES.get(name, set())
        strays += [f"{command} {name}: {number}" for number in NUMBER.findall(text) if number not in allowed]
    assert not strays, "numbers typed into help strings (read them from their constants): " + "; ".join(strays)


@pytest.mark.parametrize("planted", ["(default 31)", "up to 9 pictures", "about 12%% faster"])
def test_a_number_typed_into_a_help_is_found(monkeypatch, planted):
    """The check above fails on a help that states a number no constant holds."""
    import nst_ext.cli.arguments as arguments

    monkeypatch.setattr(arguments, "WEB_HELP", arguments.WEB_HELP + " " + planted)
    facts = constant_numbers()
    found = [
        number
        for command, name, text, action in help_texts()
        if name == "--web"
        for number in NUMBER.findall(text)
        if number not in facts | own_numbers(action) | EXAMPLES.get(name, set())
    ]
    assert found and set(found) <= set(NUMBER.findall(planted))


def test_the_defaults_in_the_help_are_the_constants():
    """The numbers the help gives as defaults come from the code's constants, so a change there
    shows in --help: the video, batch and memory figures the help quotes."""
    from nst_ext.jobs.batch import AUTO_BATCH_LIMIT
    from nst_ext.jobs.video import FRAME_STEPS, TEMPORAL_WEIGHT
    from nst_ext.plan.memory import DEFAULT_BUDGET_SHARE, LBFGS_HISTORY

    texts = {(command, name): text for command, name, text, _ in help_texts()}
    assert f"default {FRAME_STEPS})" in texts["video", "--frame-steps"]
    assert f"default {TEMPORAL_WEIGHT:g}" in texts["video", "--temporal-weight"]
    assert f"up to {AUTO_BATCH_LIMIT};" in texts["batch", "--batch-size"]
    assert f"{DEFAULT_BUDGET_SHARE * 100:.0f}%" in texts["stylize", "--max-memory"]
    assert f"up to {LBFGS_HISTORY}," in texts["stylize", "--lbfgs-history"]


@pytest.mark.parametrize(
    "name, value, flag",
    [
        ("max_memory", None, "--max-memory"),
        ("device", "cpu", "--device cpu"),
        ("overwrite", "True", "--overwrite"),
        ("mixed_precision", "False", "--no-mixed-precision"),
        ("tile", None, "--tile"),
        ("output_format", None, "--format"),
        ("out_dir", None, "-o"),
        ("weights", "PATH", "--weights PATH"),
    ],
)
def test_the_command_line_names_each_option_by_its_flag(name, value, flag):
    assert flag_for(name, value) == flag


def test_one_message_names_options_by_api_name_in_the_library_and_by_flag_on_the_command_line():
    """A core error names the option as the library takes it; the command line shows the flag."""
    error = OptionError("use a smaller `size`, a larger `max_memory` or `device=cpu`; pass `overwrite=True`")
    assert str(error) == "use a smaller size, a larger max_memory or device=cpu; pass overwrite=True"
    assert in_flags(error) == "use a smaller --size, a larger --max-memory or --device cpu; pass --overwrite"
    assert in_flags(OutputError("`nst-ext layers` lists them")) == "`nst-ext layers` lists them"
    assert in_flags(RuntimeError("no `size` here")) == "no `size` here"  # not ours: as it is


def _message_texts(tree) -> Iterator[str]:
    """The string pieces of every error or warning raised in a module (calls of a name ending in
    Error or Warning) and of its UPPER_CASE string constants (advice joined into messages)."""
    import ast

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name.endswith(("Error", "Warning")):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                        yield inner.value
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                yield node.value.value


def test_every_option_a_core_message_names_is_a_flag():
    """Each `name` an error of nst_ext names is an option of the command line (or an alias): a
    renamed option cannot leave a message naming what does not exist."""
    import ast
    from pathlib import Path

    from nst_ext.cli.arguments import FLAG_ALIASES, _long_flags
    from nst_ext.errors import OPTION_NAME

    package = Path(__file__).resolve().parents[1] / "nst_ext"
    named = set()
    for path in package.rglob("*.py"):
        for text in _message_texts(ast.parse(path.read_text(encoding="utf-8"))):
            named |= {match.group(1) for match in OPTION_NAME.finditer(text)}
    assert {"size", "max_memory", "overwrite", "max_input_pixels"} <= named  # the scan sees them
    unknown = named - set(_long_flags()) - set(FLAG_ALIASES)
    assert not unknown, f"messages name options the command line does not have: {sorted(unknown)}"
