"""Sizes and the memory free to this process: parsing and printing sizes (``--max-memory``), the
memory a device has free now (a GPU's, or on the CPU the least of the RAM available, ``ulimit -v``
and the cgroup's limit), and making glibc hand freed memory back promptly. Torch-free (the CLI
parses sizes before torch is imported); the plans that spend it are nst_ext.plan.memory's.
"""

import ctypes
import ctypes.util
import math
import os
import re
import resource
from pathlib import Path
from typing import Optional, Union

from nst_ext.errors import OptionError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kib": 2**10,
    "kb": 10**3,
    "m": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "g": 2**30,
    "gib": 2**30,
    "gb": 10**9,
    "t": 2**40,
    "tib": 2**40,
    "tb": 10**12,
}


def parse_size(text: Union[int, str]) -> int:
    """Bytes from a size such as ``2.5GiB``, ``8G``, ``512MiB``, ``8GB`` or ``1000000``
    (K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB powers of 1000)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not match or match.group(2) not in _UNITS:
        raise OptionError(
            f"memory size must be a number with an optional unit such as 2.5GiB, 8G or 512MiB, got {text!r}"
        )
    size = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(size) or size < 1:
        raise OptionError(f"memory size must be positive, got {text!r}")
    return int(size)


def format_size(size: float) -> str:
    """A size in the largest binary unit it reaches: ``2.50 GiB``, ``300 MiB``, ``12 KiB``, ``1 byte``."""
    if size >= 2**30:
        return f"{size / 2**30:.2f} GiB"
    if size >= 2**20:
        return f"{size / 2**20:.0f} MiB"
    if size >= 2**10:
        return f"{size / 2**10:.0f} KiB"
    return f"{size:.0f} byte" + ("" if round(size) == 1 else "s")


# -- the memory free to this process -------------------------------------------------------------
CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 reports "no limit" as a huge number near 2**63.
CGROUP_V1_UNLIMITED = 2**62


def free_memory_bytes(device) -> int:
    """The memory this process may still take on `device` (a torch.device) now: a GPU's free
    memory (cudaMemGetInfo), or on the CPU the least of the RAM the kernel reports as available
    (MemAvailable: free plus reclaimable caches), the headroom under the process's address-space
    limit (``ulimit -v``) and under its cgroup's memory limit (a container's or a systemd unit's)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    limits = [available_ram_bytes(), address_space_headroom(), cgroup_headroom()]
    return min(limit for limit in limits if limit is not None)


def available_ram_bytes() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def address_space_headroom() -> Optional[int]:
    """RLIMIT_AS (``ulimit -v``) less the address space the process already has; None without a limit."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    return max(0, limit - _status_bytes("VmSize"))


def _status_bytes(field: str) -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cgroup_headroom(root: Path = CGROUP_ROOT, membership: Path = Path("/proc/self/cgroup")) -> Optional[int]:
    """The least, over the process's memory cgroup and its ancestors, of the limit less what the
    group uses (its reclaimable inactive file cache not counted); None without a limit. cgroup v2
    (``memory.max``) and v1 (``memory.limit_in_bytes``); a container sees its own group as `root`."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    headrooms = []
    for line in lines:
        number, controllers, group = (line.split(":", 2) + ["", ""])[:3]
        if number == "0" and controllers == "":  # v2: one hierarchy
            base, limit_file, usage_file, inactive = root, "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):  # v1: the memory controller's hierarchy
            base = root / "memory"
            limit_file, usage_file, inactive = "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"
        else:
            continue
        folder = base / group.strip("/")
        if not folder.is_dir():  # inside a container the group's own folder is the root
            folder = base
        while True:
            headroom = _group_headroom(folder, limit_file, usage_file, inactive)
            if headroom is not None:
                headrooms.append(headroom)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(headrooms) if headrooms else None


def _group_headroom(folder: Path, limit_file: str, usage_file: str, inactive: str) -> Optional[int]:
    try:
        limit_text = (folder / limit_file).read_text().strip()
        if limit_text == "max" or int(limit_text) >= CGROUP_V1_UNLIMITED:
            return None
        usage = int((folder / usage_file).read_text().strip())
    except (OSError, ValueError):
        return None
    reclaimable = 0
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive:
                reclaimable = int(value)
    except (OSError, ValueError):
        pass
    return max(0, int(limit_text) - max(0, usage - reclaimable))


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
PROMPT_RELEASE_BYTES = 2**20


def release_freed_memory_promptly() -> bool:
    """Makes glibc's malloc serve every allocation of 1 MiB or more with its own mapping, returned
    to the operating system as soon as it is freed. By default glibc keeps freed blocks of up to
    32 MiB for reuse, and the resident memory of a step then stays near the sum of everything it
    ever allocated: measured at 512 px with checkpointing, 465 MiB above the base where the live
    tensors peak at 170 MiB (BENCHMARKS.md, "Large pictures"). The price is fresh pages for each
    large tensor (page faults), so it is done only when a budget needs it. Process-wide; returns
    whether it took effect (False off glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, PROMPT_RELEASE_BYTES))
    except (OSError, AttributeError):
        return False
