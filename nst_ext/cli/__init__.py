"""The ``nst-ext`` command line: the arguments (nst_ext.cli.arguments, the style options' flags in
nst_ext.cli.style_flags) and the commands
(nst_ext.cli.commands); ``main`` is the console script's entry point.

The commands' modules are imported when ``main`` runs, inside its handling of Ctrl-C: on a busy
machine they take a second or more to load, and Ctrl-C then is the command's one line, not an
import's traceback. The other names load on first use (PEP 562)."""

import importlib
from typing import List, Optional

from nst_ext.cli.stopping import nothing_made

# Public name -> the module that defines it.
_EXPORTS = {
    "CommandError": "nst_ext.cli.style_flags",
    "build_parser": "nst_ext.cli.arguments",
    "style_options": "nst_ext.cli.style_flags",
}
__all__ = sorted([*_EXPORTS, "main"])


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command line `argv` (default: sys.argv's); returns the exit status."""
    try:
        from nst_ext.cli.commands import main as run_command
    except KeyboardInterrupt:
        return nothing_made()
    return run_command(argv)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
