"""What nst_ext may change beyond its own objects, for the whole process: the per-machine file of
algorithm choices (:mod:`nst_ext.io.algorithm_cache`, read and written under ``~/.cache``), glibc's
allocator handing freed memory back at once (:func:`nst_ext.plan.budget.release_freed_memory_promptly`,
which a memory budget relies on) and cuDNN's autotuner (``torch.backends.cudnn.benchmark``).

A program that imports nst_ext gets none of them until it asks, with :func:`allow_process_effects`
(docs/usage.md, "The Python API and the process it runs in"); the ``nst-ext`` command asks for all three while it runs."""

import contextlib
import warnings
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class ProcessEffects:
    """Which process-wide effects nst_ext may have (each off unless allowed)."""

    algorithm_cache: bool = False  # read and write the machine's file of per-shape algorithm choices
    prompt_memory_release: bool = False  # glibc's mallopt, when a plan's memory estimate relies on it
    cudnn_autotune: bool = False  # torch.backends.cudnn.benchmark = True when a network is placed on a GPU


_allowed = ProcessEffects()
_warned_about_memory = False


def allowed_process_effects() -> ProcessEffects:
    """The effects allowed now."""
    return _allowed


def allow_process_effects(
    algorithm_cache: bool = True, prompt_memory_release: bool = True, cudnn_autotune: bool = True
) -> ProcessEffects:
    """Allows the process-wide effects named True and forbids those named False; returns the settings
    before the call (to restore them with ``allow_process_effects(**dataclasses.asdict(before))``).
    What an effect has done stays done: glibc's allocator keeps the setting it was given."""
    global _allowed
    before = _allowed
    _allowed = ProcessEffects(algorithm_cache, prompt_memory_release, cudnn_autotune)
    return before


@contextlib.contextmanager
def process_effects_allowed() -> Iterator[None]:
    """Every effect allowed inside the block, the settings of before restored after it (the command line's
    run)."""
    before = allow_process_effects()
    try:
        yield
    finally:
        allow_process_effects(before.algorithm_cache, before.prompt_memory_release, before.cudnn_autotune)


def warn_memory_release_not_allowed() -> None:
    """Says once per process that a plan counted on freed memory going back at once and may now peak above
    its estimate."""
    global _warned_about_memory
    if _warned_about_memory:
        return
    _warned_about_memory = True
    warnings.warn(
        "this run's memory plan (checkpointing, tiles or a budget) counts on freed memory going back to the "
        "system at once, which changes glibc's allocator for the whole process; it is not allowed, so the run "
        "may use more memory than planned: call nst_ext.allow_process_effects(prompt_memory_release=True)",
        RuntimeWarning,
        stacklevel=4,  # the caller of Stylizer.run or run_many
    )
