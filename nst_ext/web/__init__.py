"""The browser views, an optional extra (``pip install 'nst_ext[web]'``: Starlette and uvicorn;
docs/web.md says why these): the live view of any command's run (``--web``, :mod:`.live`) and a
small local app (``nst-ext serve``, :mod:`.app`, with its queue :mod:`.queue` and its form's checks
:mod:`.uploads`). What both pages show of a run: :mod:`.preview`; what their servers share:
:mod:`.server`; the pages themselves: ``static/``."""

# The local app's defaults, read by `nst-ext serve`'s flags and nst_ext.web.app.serve (imported by
# the command line without Starlette, so that --help stays instant).
LOCAL_HOST = "127.0.0.1"  # this machine only
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD = "25MiB"
