"""The jobs over many pictures: a folder or list of images (:mod:`nst_ext.jobs.batch`, ``nst-ext
batch``) and a video (:mod:`nst_ext.jobs.video`, ``nst-ext video``), each resumable and split over
the processes of a ``torchrun`` launch (:mod:`nst_ext.jobs.common`)."""

from nst_ext.jobs.batch import (
    MANIFEST_NAME,
    BatchItem,
    BatchSummary,
    append_record,
    list_items,
    pending_items,
    read_manifest,
    run_batch,
)
from nst_ext.jobs.common import LOCK_NAME, Distributed, JobLock, settings_hash
from nst_ext.jobs.coherence import COHERENCE_MODES, LONG_TERM, TEMPORAL_WEIGHT, FrameChain
from nst_ext.jobs.video import FRAME_STEPS, VideoSummary, run_video

__all__ = [
    "BatchItem",
    "BatchSummary",
    "COHERENCE_MODES",
    "Distributed",
    "FRAME_STEPS",
    "FrameChain",
    "JobLock",
    "LOCK_NAME",
    "LONG_TERM",
    "MANIFEST_NAME",
    "TEMPORAL_WEIGHT",
    "VideoSummary",
    "append_record",
    "list_items",
    "pending_items",
    "read_manifest",
    "run_batch",
    "run_video",
    "settings_hash",
]
