"""Ctrl-C and SIGTERM in the command line: the run stops as for Ctrl-C and keeps its best picture;
the exit status and the verb of the closing line say which signal it was."""

import signal
import sys

EXIT_FOR_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the stylizer stops as for Ctrl-C and keeps its best image."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received = []  # the stop signals received, in order


def on_stop_signal(signum, frame):
    _received.append(signum)
    raise Stopped(signum)


def stop_exit_status() -> int:
    return EXIT_FOR_SIGNAL.get(_received[0] if _received else signal.SIGINT, 130)


def stop_verb() -> str:
    return "terminated" if _received and _received[0] == signal.SIGTERM else "interrupted"


def nothing_made() -> int:
    """Stopped before any picture was made: the closing line, and the exit status."""
    print(f"nst-ext: {stop_verb()} before an image was made; nothing written", file=sys.stderr)
    return stop_exit_status()


def job_stopped(kept: str) -> int:
    """A batch or video job stopped by Ctrl-C or SIGTERM: what it kept, and the exit status."""
    print(f"nst-ext: {stop_verb()}; {kept} are kept, run the same command again to continue", file=sys.stderr)
    return stop_exit_status()


def install_stop_handlers() -> dict:
    """Ctrl-C and SIGTERM raise :class:`Stopped` (in the main thread); the handlers replaced, to
    give back to :func:`restore_handlers`."""
    previous = {}
    try:
        for signum in EXIT_FOR_SIGNAL:
            previous[signum] = signal.signal(signum, on_stop_signal)
    except ValueError:  # not the main thread: leave the signals alone
        pass
    _received.clear()
    return previous


def restore_handlers(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
