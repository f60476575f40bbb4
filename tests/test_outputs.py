"""nst_ext.io.outputs.atomic_write: the one way every output (pictures, videos, the algorithm cache)
reaches its name."""

import errno
import os

import pytest

from nst_ext.io import outputs
from nst_ext.errors import OutputError
from nst_ext.io.outputs import WriteError, atomic_write


def _leftovers(folder):
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


def test_the_file_appears_whole_with_the_permissions_of_a_plain_open(tmp_path):
    path = tmp_path / "out.bin"
    umask = os.umask(0o027)
    try:
        with atomic_write(path, overwrite=False) as temporary:
            with open(temporary, "wb") as stream:
                stream.write(b"first")
            assert not path.exists()  # nothing under the name until the block ends
    finally:
        os.umask(umask)
    assert path.read_bytes() == b"first"
    assert path.stat().st_mode & 0o777 == 0o666 & ~0o027
    assert not _leftovers(tmp_path)


def test_a_file_that_appeared_meanwhile_is_kept_unless_overwrite(tmp_path):
    path = tmp_path / "out.bin"
    with pytest.raises(OutputError, match="already exists"):
        with atomic_write(path, overwrite=False) as temporary:
            with open(temporary, "wb") as stream:
                stream.write(b"ours")
            path.write_bytes(b"theirs")  # another process took the name during the write
    assert path.read_bytes() == b"theirs"
    assert not _leftovers(tmp_path)
    with atomic_write(path, overwrite=True) as temporary:
        with open(temporary, "wb") as stream:
            stream.write(b"ours")
    assert path.read_bytes() == b"ours"
    assert not _leftovers(tmp_path)


def test_an_error_in_the_block_leaves_nothing(tmp_path):
    path = tmp_path / "out.bin"
    with pytest.raises(ZeroDivisionError):
        with atomic_write(path, overwrite=True) as temporary:
            with open(temporary, "wb") as stream:
                stream.write(b"half")
            raise ZeroDivisionError("the block fails after writing")
    assert not path.exists() and not _leftovers(tmp_path)


def test_a_refused_move_is_one_write_error_naming_the_output(tmp_path, monkeypatch):
    path = tmp_path / "out.bin"
    path.write_bytes(b"earlier")

    def full_disk(source, target):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "replace", full_disk)
    with pytest.raises(WriteError, match="disk is full") as refused:
        with atomic_write(path, overwrite=True) as temporary:
            with open(temporary, "wb") as stream:
                stream.write(b"new")
    assert refused.value.path == path
    assert path.read_bytes() == b"earlier" and not _leftovers(tmp_path)


def test_a_folder_that_refuses_the_temporary_is_a_write_error(tmp_path):
    missing = tmp_path / "gone" / "out.bin"
    with pytest.raises(WriteError, match="out.bin"):
        with atomic_write(missing, overwrite=True):
            pytest.fail("the block must not run without a temporary file")
