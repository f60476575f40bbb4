"""The errors nst_ext raises for a user's bad input: each is stated in one line that says what
is wrong and how to fix it, and the CLI prints it as such (exit status 2), never as a traceback.
Torch-free, so the CLI can name them before torch is imported.

A message names an option as the library takes it, in backticks: ```max_memory``` or
```device=cpu``` (a value to give). ``str(error)`` shows it as the API's name (``max_memory``,
``device=cpu``); the command line shows the option's flag instead (:meth:`InputError.worded`:
``--max-memory``, ``--device cpu``), so one message serves both.
"""

import re
from typing import Callable, Optional

# An option named in a message: `name` or `name=value`.
OPTION_NAME = re.compile(r"`([a-z][a-z0-9_]*)(?:=([^`]*))?`")


def _as_keyword(name: str, value: Optional[str]) -> str:
    return name if value is None else f"{name}={value}"


class InputError(ValueError):
    """Base of every one-line error about a user's input, option or output."""

    def __str__(self) -> str:
        return self.worded(_as_keyword)

    def worded(self, option: Callable[[str, Optional[str]], str]) -> str:
        """The message with each option it names (`name` or `name=value`) written by
        ``option(name, value)`` (value None where none is given)."""
        message = super().__str__()
        return OPTION_NAME.sub(lambda match: option(match.group(1), match.group(2)), message)


class OptionError(InputError):
    """An option with a value that cannot work."""


class ImageError(InputError):
    """A problem with an input or output image."""


class OutputError(InputError):
    """An output that cannot be written, or must not be: found before any work is done."""


class WeightsError(InputError):
    """VGG19 weights that cannot be found or read."""


class UnknownLayerError(InputError):
    """A layer name that VGG19 does not have."""


class JobWarning(UserWarning):
    """Something a job skipped or noticed and went on (the CLI prints it as one line)."""


class BackendWarning(RuntimeWarning):
    """The ops run on the slow pure-PyTorch reference because the compiled kernels are unavailable
    (the CLI prints it as one line)."""
