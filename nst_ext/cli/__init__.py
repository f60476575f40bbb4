"""The ``nst-ext`` command line: the arguments (nst_ext.cli.arguments) and the commands
(nst_ext.cli.commands); ``main`` is the console script's entry point."""

from nst_ext.cli.arguments import CommandError, build_parser, style_options
from nst_ext.cli.commands import main

__all__ = ["CommandError", "build_parser", "main", "style_options"]
