"""The errors nst_ext raises for a user's bad input: each is stated in one line that says what
is wrong and how to fix it, and the CLI prints it as such (exit status 2), never as a traceback.
Torch-free, so the CLI can name them before torch is imported."""


class InputError(ValueError):
    """Base of every one-line error about a user's input, option or output."""


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
