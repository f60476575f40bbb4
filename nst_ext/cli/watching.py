"""``--web`` in the command line: the run's live view (nst_ext.web.live), opened once the inputs
and outputs have been checked and closed with the run's final picture. The web extra is optional:
without it ``--web`` is refused in one line."""

import sys
from nst_ext.cli.arguments import CommandError


def open_live_view(args, label: str, shown_here: bool = True):
    """The LiveView of this command's run, or None without ``--web`` (or where another process
    shows it: `shown_here` False, torchrun's other ranks). Prints the page's address."""
    if getattr(args, "web", None) is None or not shown_here:
        return None
    live = web_module("live").LiveView(args.web, label)
    print(f"nst-ext: watch the run at {live.url}", file=sys.stderr, flush=True)
    return live


def web_module(name: str):
    """nst_ext.web.`name`; one line naming the extra where its libraries are not installed."""
    import importlib

    try:
        return importlib.import_module(f"nst_ext.web.{name}")
    except ImportError as error:
        if (error.name or "").startswith("nst_ext"):
            raise
        raise CommandError(f"the browser views need the web extra ({error.name} is not installed): "
                           "pip install 'nst_ext[web]'") from None


def close_live_view(live, image=None, status: str = "done", message: str = "") -> None:
    """Shows the run's end in the page (`image`: its final picture, ``(3, H, W)`` in [0, 1])."""
    if live is not None:
        live.close(image, status, message)

