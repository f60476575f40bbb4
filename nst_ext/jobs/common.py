"""What the batch and video jobs share: the hash of the settings that decide a job's pictures, the
check of its style paths, the lock that keeps one job per output, and the split of the work over
the processes of a ``torchrun`` launch (torch.distributed)."""

import dataclasses
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, List, Sequence

from nst_ext.errors import InputError, OutputError
from nst_ext.plan.options import StyleOptions
from nst_ext.io.outputs import check_regular_file, describe_os_error

# Held (flock) by the one job writing to an output folder; a second job there is refused.
LOCK_NAME = ".nst-ext.lock"
# Options that change how a picture is computed, not what it is: they do not make a new job.
SAME_PICTURE_OPTIONS = ("device", "devices", "device_split", "cuda_graph", "max_memory", "checkpointing", "tile")


def settings_hash(options: StyleOptions, styles: Sequence[Path], extra: str) -> str:
    """A hash of everything that decides the pictures: the options (less SAME_PICTURE_OPTIONS),
    the style images' bytes and `extra`, the job's own settings (a batch's output format, a video's
    temporal settings)."""
    fields = {k: v for k, v in dataclasses.asdict(options).items() if k not in SAME_PICTURE_OPTIONS}
    fields["size"] = options.output_size  # given as size or as the last of scales: the same picture
    digest = hashlib.sha256(json.dumps([fields, extra], sort_keys=True, default=str).encode())
    for style in styles:
        with open(style, "rb") as data:
            for block in iter(lambda: data.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


class JobLock:
    """An exclusive lock (flock) on `path`, taken at once or refused (OutputError) when another
    process holds it: two jobs writing the same outputs would each do every item. The kernel
    releases it when the process ends, however it ends."""

    def __init__(self, path: Path, what: str):
        try:
            self.handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputError(f"cannot write {str(path)!r}: {describe_os_error(error)}") from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.handle, 32, 0).decode(errors="replace").strip()
            os.close(self.handle)
            raise OutputError(
                f"another nst-ext job{f' (process {holder})' if holder else ''} is writing {what}; "
                "wait for it to finish, or give another output"
            ) from None
        try:  # who holds it, for the refusal's message; on a full disk the lock holds without it
            os.ftruncate(self.handle, 0)
            os.pwrite(self.handle, str(os.getpid()).encode(), 0)
        except OSError:
            pass

    def release(self) -> None:
        if self.handle is not None:
            os.close(self.handle)
            self.handle = None


def existing_styles(styles: Sequence[os.PathLike]) -> List[Path]:
    """The style image paths of a job, each checked to be a readable file before any work."""
    paths = [Path(style) for style in styles]
    for style in paths:
        check_regular_file(style, "style image")
    return paths


class Distributed:
    """This process's place in a torchrun launch (``WORLD_SIZE`` > 1 in the environment): rank,
    world size, and the device of its local rank (GPU ``local_rank % count``, or the CPU); one
    process alone otherwise."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world_size > 1:
            import torch.distributed as dist

            # Only small Python objects cross processes (barriers, the summary), never tensors: gloo
            # carries them on every machine, and several processes may share one GPU (NCCL refuses).
            dist.init_process_group("gloo")

    def device(self, requested: str) -> str:
        if requested == "auto" and self.world_size > 1:
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            return f"cuda:{self.local_rank % count}" if count else "cpu"
        return requested

    def on_first(self, work: Callable):
        """Runs `work` on rank 0 alone and shares its outcome: where it raised an InputError, every
        rank raises it (no rank is left waiting for one that stopped). Returns work's result on
        rank 0, None on the others."""
        result = error = None
        if self.rank == 0:
            try:
                result = work()
            except InputError as problem:
                error = problem
        first = self.gather(None if error is None else (type(error), str(error)))[0]
        if error is not None:
            raise error
        if first is not None:
            kind, message = first
            raise kind(message)
        return result

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value) -> List:
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def close(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
