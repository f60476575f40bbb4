"""``--web`` in the command line: the run's live view (nst_ext.web.live), opened at the run's
first step and closed with the run's final picture. The web extra is optional: without it
``--web`` is refused in one line."""

import sys

from nst_ext.cli.style_flags import CommandError


class LiveViewOnDemand:
    """A command's page with ``--web``: opened (its address printed) at the first step the
    stylizer reports, so a run refused before any work has none; nothing without ``--web``
    or where another process shows the run (`shown_here` False: torchrun's other ranks)."""

    def __init__(self, args, label: str, shown_here: bool = True):
        self.port = getattr(args, "web", None) if shown_here else None
        self.label = label
        self.live = None

    def observe(self, progress) -> None:
        """The stylizer's per-step callback's share (nst_ext.stylizer.Progress)."""
        if self.port is None:
            return
        if self.live is None:
            self.live = web_module("live").LiveView(self.port, self.label)
            print(f"nst-ext: watch the run at {self.live.url}", file=sys.stderr, flush=True)
        self.live.observe(progress)

    def close(self, image=None, status: str = "done", message: str = "") -> None:
        """Shows the run's end in the page (`image`: its final picture, ``(3, H, W)`` in [0, 1])."""
        if self.live is not None:
            self.live.close(image, status, message)


def web_module(name: str):
    """nst_ext.web.`name`; one line naming the extra where its libraries are not installed."""
    import importlib

    try:
        return importlib.import_module(f"nst_ext.web.{name}")
    except ImportError as error:
        if (error.name or "").startswith("nst_ext"):
            raise
        raise CommandError(
            f"the browser views need the web extra ({error.name} is not installed): pip install 'nst_ext[web]'"
        ) from None
