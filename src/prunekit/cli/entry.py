"""The console-script entry point: signal handlers first, then the (heavier) CLI import.

A Ctrl-C or SIGTERM that arrives while Python is still importing prunekit's CLI then ends like
one in any later phase: one line, exit 130/143, nothing written.
"""

from __future__ import annotations

import signal
import sys


_EARLY = {signal.SIGTERM: ("terminated (SIGTERM)", 143), signal.SIGINT: ("interrupted (SIGINT)", 130)}
if hasattr(signal, "SIGHUP"):
    _EARLY[signal.SIGHUP] = ("hung up (SIGHUP: the terminal closed)", 129)


def _early(signum, frame) -> None:
    what, code = _EARLY.get(signum, _EARLY[signal.SIGTERM])
    sys.stderr.write(f"prunekit: {what}; nothing was written\n")
    sys.stderr.flush()
    import os

    os._exit(code)


def entry() -> None:
    old = {s: signal.signal(s, _early) for s in _EARLY}
    from .main import entry as run  # main() installs its own handlers at once
    from ..export import hf  # noqa: F401  (main imports it before installing them: do it here, covered)

    for s, h in old.items():
        signal.signal(s, h)
    run()
