"""The forward's per-shape algorithm choices (nst_ext.ops.dispatch, ``"auto"``) kept on disk between
processes, so that a command's first picture does not time both algorithms again for every shape
it meets: a cache keyed like cuDNN's own, by what decides which algorithm wins. That is the
package, torch and the compiled extension, the CPU model and its thread count, and the GPUs and
their driver. Another machine, build or thread count reads another file.

The folder is ``$NST_EXT_CACHE_DIR``, else ``$XDG_CACHE_HOME/nst_ext``, else ``~/.cache/nst_ext``;
``NST_EXT_CACHE_DIR=off`` turns the cache off. It is only a cache: a file that cannot be read is
ignored, and one that cannot be written is skipped without a word. Processes that save at once
take turns under a lock and merge, so no choice is lost; the file is replaced atomically."""

import contextlib
import hashlib
import json
import os
import platform
import stat
from pathlib import Path
from typing import Iterator, List, Optional

import torch

import nst_ext
from nst_ext.ops import dispatch
from nst_ext.errors import OutputError
from nst_ext.io.outputs import atomic_write

FOLDER_VARIABLE = "NST_EXT_CACHE_DIR"
OFF = ("off", "0", "none", "")
# The fields that name a choice's shape; the last of the op layer's, "algorithm", is the choice itself.
KEY_FIELDS = dispatch.CHOICE_FIELDS[:-1]

_loaded = False
_in_file = 0  # how many of this process's choices the file already holds (after a load or a save)


def cache_folder() -> Optional[Path]:
    """Where the cache lives, or None when it is turned off."""
    chosen = os.environ.get(FOLDER_VARIABLE)
    if chosen is not None:
        return None if chosen.strip().lower() in OFF else Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nst_ext"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> dict:
    """What decides which algorithm wins a shape here (see the module's docstring)."""
    package = Path(nst_ext.__file__).parent  # the compiled library nst_ext._C lies at the package's root
    built = sorted(
        str(path.stat().st_mtime_ns) + ":" + str(path.stat().st_size) for path in package.glob("_C*") if path.is_file()
    )
    key = {
        "nst_ext": nst_ext.__version__,
        "torch": torch.__version__,
        "extension": built,
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "gpus": [],
        "driver": None,
    }
    if torch.cuda.is_available():
        key["gpus"] = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
        key["driver"] = getattr(torch._C, "_cuda_getDriverVersion", lambda: None)()
    return key


def cache_path(key: Optional[dict] = None) -> Optional[Path]:
    """The file of choices of the machine `key` describes (default: this one's,
    :func:`machine_key`), or None when the cache is off."""
    folder = cache_folder()
    if folder is None:
        return None
    digest = hashlib.sha256(json.dumps(key or machine_key(), sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"gram-choices-{digest}.json"


def _open_regular(path: Path, flags: int) -> int:
    """A descriptor of `path` opened with `flags`, never waiting (a FIFO put there would hold the run
    forever); OSError unless it is a regular file."""
    descriptor = os.open(path, flags | getattr(os, "O_NONBLOCK", 0), 0o644)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise OSError(f"{path} is not a regular file")
    return descriptor


def _read(path: Path) -> List[dict]:
    """The choices of the file at `path` that are choices (:func:`nst_ext.ops.dispatch.is_algorithm_choice`);
    none where it is missing, not a regular file, or not a cache file."""
    try:
        with os.fdopen(_open_regular(path, os.O_RDONLY), encoding="utf-8") as stream:
            choices = json.loads(stream.read())["choices"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return []
    return [choice for choice in choices if dispatch.is_algorithm_choice(choice)] if isinstance(choices, list) else []


def _key(choice: dict) -> tuple:
    return tuple(choice[name] for name in KEY_FIELDS)


def load() -> int:
    """Adds this machine's cached choices for the shapes not chosen yet in this process (a
    picture's recorded choices, restored for ``--from``, are kept). Returns how many were added."""
    global _loaded, _in_file
    _loaded = True
    path = cache_path()
    if path is None or dispatch.get_gram_algorithm() != "auto":
        return 0
    known = {_key(choice) for choice in dispatch.gram_algorithm_choices()}
    new = [choice for choice in _read(path) if _key(choice) not in known]
    try:
        dispatch.restore_gram_algorithm_choices(new)
    except (ValueError, RuntimeError):  # a file from a version that names things otherwise
        return 0
    _in_file = len(known) + len(new)
    return len(new)


def load_once() -> None:
    """:func:`load`, the first time it is asked for in this process."""
    if not _loaded:
        load()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Holds an exclusive lock beside `path` (POSIX; elsewhere none is taken)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with os.fdopen(_open_regular(path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT | os.O_APPEND), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def save() -> None:
    """Merges this process's choices into the machine's file (a choice this process made wins);
    nothing to do when it made none since the last load or save."""
    global _in_file
    choices = dispatch.gram_algorithm_choices()
    if len(choices) <= _in_file:
        return
    key = machine_key()
    path = cache_path(key)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            merged = {_key(choice): choice for choice in _read(path)}
            merged.update((_key(choice), choice) for choice in choices)
            with atomic_write(path, overwrite=True) as temporary:
                with open(temporary, "w", encoding="utf-8") as out:
                    json.dump({"machine": key, "choices": list(merged.values())}, out, indent=0)
            _in_file = len(choices)
    except (OSError, OutputError):  # a read-only home, a full disk: the next process times again
        pass
