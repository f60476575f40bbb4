"""The app's jobs (``nst-ext serve``): one picture to make each (:class:`Job`), run one at a time
in the order they came on a worker thread (:class:`JobQueue`), each shown live while it runs
(nst_ext.web.preview) and stoppable, keeping its best picture as Ctrl-C does."""

import dataclasses
import itertools
import logging
import threading
from pathlib import Path
from typing import Callable, Dict, List, Optional

from nst_ext.errors import InputError
from nst_ext.plan.options import StyleOptions
from nst_ext.web.preview import Preview

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Job:
    """One picture to make: its inputs (files in the output folder), its options, where the
    result goes, and how far it got."""

    number: int
    content: Path
    styles: List[Path]
    options: StyleOptions
    output: Path
    settings: Dict[str, str]  # what the page lists: the inputs' names and the options chosen
    state: str = "waiting"  # waiting, running, done, stopped, failed
    message: str = ""
    preview: Optional[Preview] = None
    stop_requested: threading.Event = dataclasses.field(default_factory=threading.Event)

    def shown(self, place: Optional[int]) -> dict:
        finished = self.state in ("done", "stopped") and self.output.is_file()
        return {
            "number": self.number,
            "state": self.state,
            "message": self.message,
            "place": place,
            "settings": self.settings,
            "result": f"/results/{self.output.name}" if finished else None,
        }


def stylize_job(job: Job, on_progress: Callable) -> None:
    """Makes `job`'s picture and writes it (with its provenance record) to ``job.output``."""
    from nst_ext.jobs.finish import finish_picture
    from nst_ext.stylizer import Stylizer

    stylizer = Stylizer(job.options)
    styles = [str(path) for path in job.styles]
    result = stylizer.run(str(job.content), styles, callback=on_progress)
    if result.interrupted and not result.history:  # as on the command line: no step, no picture
        job.state, job.message = "stopped", "stopped before the first step finished; nothing written"
        job.preview.finish(None, "stopped", job.message)
        return
    # A full disk: the picture goes to a fallback folder, named in the error the page shows.
    finish_picture(stylizer, result, str(job.content), styles, job.output, "serve")
    job.preview.finish(result.tensor, "stopped" if result.interrupted else "done")
    job.state = "stopped" if result.interrupted else "done"


class JobQueue:
    """Jobs run one at a time, in the order they came, on a worker thread; `run` makes one
    (:func:`stylize_job`, or a stand-in in tests)."""

    def __init__(self, run: Callable[[Job, Callable], None] = stylize_job):
        self.run = run
        self.jobs: List[Job] = []
        self.current: Optional[Job] = None
        self._numbers = itertools.count(1)
        self._wake = threading.Condition()
        self._closing = False
        self.worker = threading.Thread(target=self._work, name="nst-ext jobs", daemon=True)
        self.worker.start()

    def next_number(self) -> int:
        return next(self._numbers)

    def submit(self, job: Job) -> None:
        with self._wake:
            self.jobs.append(job)
            self._wake.notify_all()

    def stop(self, number: int) -> bool:
        """Stops a running job (it keeps its best picture) or drops a waiting one."""
        with self._wake:
            for job in self.jobs:
                if job.number == number and job.state in ("waiting", "running"):
                    job.stop_requested.set()
                    if job.state == "waiting":
                        job.state, job.message = "stopped", "removed from the queue before it started"
                    return True
        return False

    def waiting(self) -> int:
        """How many jobs wait for their turn."""
        with self._wake:
            return sum(job.state == "waiting" for job in self.jobs)

    def shown(self) -> List[dict]:
        with self._wake:
            waiting = [job for job in self.jobs if job.state == "waiting"]
            return [job.shown(waiting.index(job) + 1 if job in waiting else None) for job in self.jobs]

    def preview(self) -> Optional[Preview]:
        current = self.current
        return current.preview if current is not None else None

    def close(self, timeout: float = 60.0) -> None:
        """Stops the running job (its best picture is saved) and drops the waiting ones."""
        with self._wake:
            self._closing = True
            for job in self.jobs:
                job.stop_requested.set()
            self._wake.notify_all()
        self.worker.join(timeout)

    def _work(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closing or any(job.state == "waiting" for job in self.jobs))
                if self._closing:
                    return
                job = next(job for job in self.jobs if job.state == "waiting")
                job.state, job.preview = "running", Preview(f"picture {job.number}")
                self.current = job
            self._run_one(job)

    def _run_one(self, job: Job) -> None:
        def on_progress(progress):
            if job.stop_requested.is_set():
                raise KeyboardInterrupt  # the stylizer keeps its best picture, as for Ctrl-C
            job.preview.observe(progress)

        try:
            self.run(job, on_progress)
        except KeyboardInterrupt:  # a stop outside the optimiser's loop (while the network loads)
            job.state, job.message = "stopped", "stopped before the first step finished; nothing written"
            job.preview.finish(None, "stopped", job.message)
        except InputError as error:
            job.state, job.message = "failed", str(error)
            job.preview.finish(None, "failed", job.message)
        except Exception:  # a bug: the app goes on with the next job; its text (paths) stays in the log
            LOG.exception("nst-ext: job %d failed", job.number)
            job.state, job.message = "failed", "internal error (the server's log has the details)"
            job.preview.finish(None, "failed", job.message)
