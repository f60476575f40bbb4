"""What a browser page shows of one run: the latest picture as a JPEG, the stage and step, the loss
curves and the time per step (:class:`Preview`), fed by the stylizer's per-step callback.

The optimiser's thread only takes a copy of the picture, at most every ``PREVIEW_SECONDS``
(reading the losses then too: on a GPU that read waits for the device); a thread of its own
scales it down and encodes the JPEG, so the run pays for one small copy per half second
(BENCHMARKS.md, "The live view's cost")."""

import io
import os
import threading
import time
from typing import Callable, Optional

import numpy as np
from PIL import Image

# The page gets a new picture at most this often (and only when there is a new one).
PREVIEW_SECONDS = 0.5
# The preview's long side at most: a print-sized picture is shown scaled down.
PREVIEW_MAX_SIDE = 1024
JPEG_QUALITY = 88


def lower_this_threads_priority() -> None:
    """Makes the calling thread the last to get a core (Linux: its own nice value, 19): the
    optimiser's compute threads keep both cores, and the page waits instead of the run."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed: the thread runs at the usual priority
        pass


def encode_jpeg(image, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """JPEG bytes of `image`: a float ``(3, H, W)`` array or CPU tensor in [0, 1], scaled down so
    that its long side is at most `max_side`. Numpy only, so it does not take torch's threads
    from the optimiser."""
    pixels = np.asarray(image, dtype=np.float32)
    picture = Image.fromarray((np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0))
    if max(picture.size) > max_side:
        scale = max_side / max(picture.size)
        picture = picture.resize(
            (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.BILINEAR
        )
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


class Preview:
    """The shown state of one run, safe to read from the server's threads while the optimiser
    writes it. ``version`` grows with every change a page should see; :meth:`state` gives it as
    a dict for the page (JSON-ready), :meth:`wait` blocks until it changes."""

    def __init__(self, label: str = "", interval: float = PREVIEW_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.interval = interval
        self.clock = clock
        self.version = 0
        self.status = "starting"  # starting, running, then done, stopped or failed
        self.message = ""
        self.jpeg: Optional[bytes] = None
        self.frame = 0  # pictures encoded so far
        self.position = {}  # stage, stages, step, steps, width, height
        self.losses = []  # [steps done, content, style, total] at each copy
        self.seconds_per_step = None
        self.steps_done = 0
        self.run = 0  # the pictures begun before this one (a batch's items, a video's frames)
        self._changed = threading.Condition()
        self._pending = None  # the latest copy not yet encoded
        self._taken_at = None
        self._steps_at_take = 0
        self._closed = False
        self._encoder = threading.Thread(target=self._encode_copies, name="nst-ext preview", daemon=True)
        self._encoder.start()

    def observe(self, progress) -> None:
        """One evaluation done (`progress`: nst_ext.stylizer.Progress), on the optimiser's thread."""
        if progress.stage == 0 and progress.step == 1 and self.steps_done:  # a batch's or video's next picture
            with self._changed:
                self.losses, self.steps_done, self._taken_at, self.run = [], 0, None, self.run + 1
        self.steps_done += 1
        now = self.clock()
        last_of_stage = progress.step == progress.steps
        if self._taken_at is not None and now - self._taken_at < self.interval and not last_of_stage:
            return
        image = progress.image().numpy()  # a copy, (3, H, W) in [0, 1]
        point = [self.steps_done, progress.content_loss, progress.style_loss, progress.total_loss]
        with self._changed:
            if self._taken_at is not None and self.steps_done > self._steps_at_take:
                self.seconds_per_step = (now - self._taken_at) / (self.steps_done - self._steps_at_take)
            self._taken_at, self._steps_at_take = now, self.steps_done
            self.status = "running"
            self.position = {
                "stage": progress.stage + 1,
                "stages": progress.stages,
                "step": progress.step,
                "steps": progress.steps,
                "width": progress.size[1],
                "height": progress.size[0],
            }
            self.losses.append(point)
            self._pending = image
            self._changed.notify_all()  # the encoder; pages hear of it with the picture

    def finish(self, image=None, status: str = "done", message: str = "") -> None:
        """The run ended: its final picture (a ``(3, H, W)`` array or tensor in [0, 1], or None),
        encoded here so that it is the last thing every page sees."""
        jpeg = encode_jpeg(image) if image is not None else None
        with self._changed:
            self._pending = None
            if jpeg is not None:
                self.jpeg, self.frame = jpeg, self.frame + 1
            self.status, self.message = status, message
            self._closed = True
            self._bump()

    def _bump(self) -> None:
        self.version += 1
        self._changed.notify_all()

    def _encode_copies(self) -> None:
        lower_this_threads_priority()
        while True:
            with self._changed:
                while self._pending is None and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                image, self._pending = self._pending, None
            jpeg = encode_jpeg(image)
            with self._changed:
                if self._closed:  # the final picture was shown meanwhile: this copy is older
                    return
                self.jpeg, self.frame = jpeg, self.frame + 1
                self._bump()

    def wait(self, seen_version: int, timeout: float) -> int:
        """Blocks until ``version`` passes `seen_version` or `timeout` seconds pass; the version."""
        with self._changed:
            self._changed.wait_for(lambda: self.version > seen_version, timeout)
            return self.version

    @property
    def finished(self) -> bool:
        return self._closed

    def state(self, shown: Optional[dict] = None):
        """What a page should get next, given the last state it was sent (`shown`, or None for a
        new page): a JSON-ready dict with the loss points it lacks (all of them, with
        ``losses_from`` 0, after a new picture began; ``finished``: whether this is the run's
        final state, read with the rest), and the JPEG bytes when a newer picture than it has
        exists, else None."""
        with self._changed:
            same_run = shown is not None and shown["run"] == self.run
            losses_from = shown["losses_from"] + len(shown["losses"]) if same_run else 0
            state = {
                "version": self.version,
                "run": self.run,
                "label": self.label,
                "status": self.status,
                "finished": self._closed,
                "message": self.message,
                "frame": self.frame,
                **self.position,
                "seconds_per_step": self.seconds_per_step,
                "steps_done": self.steps_done,
                "losses_from": losses_from,
                "losses": [list(point) for point in self.losses[losses_from:]],
            }
            newer = shown is None or self.frame > shown["frame"]
            return state, (self.jpeg if newer else None)
