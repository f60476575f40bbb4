"""Everything about writing a run's outputs safely, in one place: the formats, the checks made
before any work starts, and the deferral of Ctrl-C / SIGTERM while a file is being written.
Torch-free, so the CLI can check its outputs before torch is imported.

The guarantees: an output is refused before the work when its folder is missing or not
writable (tested with a real write), when it is a folder, when it would replace one of the
run's inputs (even with ``overwrite``), when two outputs of the run are the same file, or when
it exists and ``overwrite`` is not given.
"""

import contextlib
import errno
import os
import re
import signal
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Type

from nst_ext.errors import InputError, OutputError

SAVE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
# The signals that stop a run: Ctrl-C, and what `kill`, `timeout`, schedulers and container stops send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class WriteError(OutputError):
    """The system refused a write the checks before the work could not foresee (a full disk, a
    quota, an I/O error): `path` is what could not be written."""

    def __init__(self, path: os.PathLike, error: OSError, rescued: Optional[Path] = None, advice: str = ""):
        self.path, self.error, self.rescued = Path(path), error, rescued
        saved = f"; the picture was saved to {str(rescued)!r} instead" if rescued else ""
        super().__init__(
            f"cannot write {str(path)!r}: {describe_os_error(error)}{saved}{'; ' + advice if advice else ''}"
        )

    def with_advice(self, advice: str) -> "WriteError":
        """The same error, its line ending with what the user can do about it."""
        return WriteError(self.path, self.error, self.rescued, advice)


def describe_os_error(error: OSError) -> str:
    """An OSError in words a user can act on."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full (no space left on device); free some space"
    if error.errno == errno.EROFS:
        return "the file system is read-only"
    return error.strerror or str(error)


def check_regular_file(path: Path, what: str, error: Type[InputError] = InputError) -> None:
    """Raises `error` unless `path` is a regular file (or a link to one): a FIFO or a device
    would block the read or never end, a folder is no file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} does not exist") from None
    except OSError as problem:
        raise error(f"{what} {str(path)!r} cannot be read ({describe_os_error(problem)})") from None
    if stat.S_ISDIR(mode):
        raise error(f"{what} {str(path)!r} is a directory, not a file")
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise error(f"{what} {str(path)!r} is {kind}; only regular files are read")


def write_or_rescue(write: Callable[[Path], object], path: Path) -> None:
    """Runs ``write(path)``. Where the system refuses it (WriteError: a full disk, a quota), a
    finished result held in memory is not lost: ``write`` is tried on a free name in the temporary
    folder, then the home folder, and the WriteError raised names where it went (``rescued``)."""
    try:
        write(path)
    except WriteError as refused:
        for folder in dict.fromkeys([Path(tempfile.gettempdir()), Path.home()]):
            rescue = folder / f"nst-ext-rescued-{os.getpid()}-{path.name}"
            if not folder.is_dir() or same_file(folder, path.parent):
                continue
            try:
                write(rescue)
            except (OutputError, OSError):
                continue
            raise WriteError(path, refused.error, rescued=rescue) from None
        raise


class FileSet:
    """Paths compared as files: by real path, and by device and inode where they exist (hard links)."""

    def __init__(self, paths: Iterable[Path]):
        self.real, self.inodes = set(), set()
        for path in paths:
            self.real.add(os.path.realpath(path))
            try:
                info = os.stat(path)
                self.inodes.add((info.st_dev, info.st_ino))
            except OSError:
                pass

    def __contains__(self, path: Path) -> bool:
        if os.path.realpath(path) in self.real:
            return True
        try:
            info = os.stat(path)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) in self.inodes


def same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are one file (by real path, or as hard links); a path that does not
    exist yet is only the same as itself."""
    return Path(a) in FileSet([Path(b)])


def check_folder_writable(folder: Path, for_path: str) -> None:
    """Raises OutputError unless `folder` exists and a file can really be created in it (root
    passes os.access checks that a real write would fail, e.g. on a read-only mount)."""
    shown = str(folder) if str(folder) else "."
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise OutputError(f"cannot write {for_path!r}: the folder {shown!r} {what}")
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".nst-ext-write-test-")
    except OSError as error:
        reason = "permission denied" if isinstance(error, PermissionError) else error.strerror or str(error)
        raise OutputError(f"cannot write {for_path!r}: the folder {shown!r} is not writable ({reason})") from None
    os.close(handle)
    os.unlink(probe)


def make_output_folder(folder: Path, what: str) -> None:
    """Makes `folder` (and its parents) where missing and checks that a file can be created in it;
    one OutputError line where it is a file, or cannot be made or written. `what`: who writes into
    it, for the message (e.g. "a batch")."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"the output {str(folder)!r} is a file; {what} writes into a folder: give a folder name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot make the output folder {str(folder)!r}: {describe_os_error(error)}") from None
    check_folder_writable(folder, str(folder))


@contextlib.contextmanager
def atomic_write(path: Path, overwrite: bool) -> Iterator[str]:
    """Yields the name of a new, empty temporary file beside `path` for the block to write. When
    the block ends without an error the file gets the permissions a plain open() would give and
    takes `path`'s place in one step: replacing it with `overwrite`, else only while no file of
    that name exists (one that appeared meanwhile is an OutputError: never clobbered). A refusal
    by the system (a full disk, a quota, an I/O error) is a WriteError; the temporary file never
    outlives the block."""
    path = Path(path)
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise WriteError(path, error) from None
    os.close(handle)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp made it private (0600)
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise OutputError(
                    f"{str(path)!r} already exists; choose another name or pass `overwrite=True`"
                ) from None
    except OSError as error:
        raise WriteError(path, error) from None
    finally:
        with contextlib.suppress(OSError):  # already gone once os.replace has moved it
            os.unlink(temporary)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def check_outputs(
    outputs: Sequence[Tuple[Optional[os.PathLike], str]],
    inputs: Iterable[os.PathLike],
    overwrite: bool,
    patterns: Sequence[Tuple[os.PathLike, str, str]] = (),
) -> None:
    """Checks every output of a run before any work: raises OutputError with one line for the first problem.

    outputs: (path or None, what it is, e.g. "-o") pairs; None entries are skipped.
    inputs: the run's input files (content, styles, init image, weights), never to be replaced.
    patterns: (folder, regular expression, what) for outputs whose names are made during the run
    (e.g. ``--save-every``'s); existing files matching one are refused without `overwrite`, and
    an input matching one is always refused.
    """
    input_paths = [Path(p) for p in inputs if p is not None]
    seen: List[Tuple[Path, str]] = []
    for path, what in outputs:
        if path is None:
            continue
        path = Path(path)
        shown = str(path)
        if path.suffix.lower() not in SAVE_FORMATS:
            raise OutputError(
                f"cannot write {shown!r} ({what}): unknown extension; use one of {', '.join(sorted(SAVE_FORMATS))}"
            )
        if path.is_dir():
            raise OutputError(f"cannot write {shown!r} ({what}): it is a folder; give a file name inside it")
        for source in input_paths:
            if same_file(path, source):
                raise OutputError(
                    f"{what} {shown!r} is one of this run's inputs; it is never replaced, even with "
                    "`overwrite`: choose another output name"
                )
        for earlier, earlier_what in seen:
            if same_file(path, earlier):
                raise OutputError(f"{what} and {earlier_what} are the same file {shown!r}; give them different names")
        if path.exists() and not overwrite:
            raise OutputError(f"{shown!r} ({what}) already exists; choose another name or pass `overwrite=True`")
        check_folder_writable(path.parent, shown)
        seen.append((path, what))
    for folder, pattern, what in patterns:
        matcher = re.compile(pattern)
        for source in input_paths:
            if same_file(Path(folder), source.parent) and matcher.fullmatch(source.name):
                raise OutputError(f"{what} would be named like the input {str(source)!r}; choose another output name")
        if not overwrite:
            folder = Path(folder)
            clashes = sorted(name for name in os.listdir(folder) if matcher.fullmatch(name)) if folder.is_dir() else []
            if clashes:
                raise OutputError(
                    f"{what} like {str(folder / clashes[0])!r} already exist; remove them or pass `overwrite=True`"
                )


@contextlib.contextmanager
def deferred_signals(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[Set[int]]:
    """Within this block Ctrl-C and SIGTERM wait: a file being written is finished (or its
    temporary removed) before the process stops. Yields a set that holds the signals that
    arrived during the block; after it, each is raised again for the handler that was in place
    (so a KeyboardInterrupt, or the default termination, happens there).

    Handlers are swapped rather than the signals masked: a process-directed signal masked in
    the main thread is still taken by torch's worker threads, and Python runs its handlers in
    the main thread whichever thread took it. Outside the main thread it defers nothing."""
    arrived: Set[int] = set()
    order: list = []

    def record(signum: int, frame: object) -> None:
        if signum not in arrived:
            order.append(signum)
        arrived.add(signum)

    previous = {}
    try:
        for signum in signals:
            previous[signum] = signal.signal(signum, record)
    except ValueError:  # not the main thread
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        yield arrived
        return
    try:
        yield arrived
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in order:
            signal.raise_signal(signum)
