"""The console-script entry point: signal handlers first, then the (heavier) CLI import.

A Ctrl-C or SIGTERM that arrives while Python is still importing prunekit's CLI then ends like
one in any later phase: one line, exit 130/143, nothing written.
"""

from __future__ import annotations

import signal
import sys


def _early(signum, frame) -> None:
    sys.stderr.write(f"prunekit: {'terminated (SIGTERM)' if signum == signal.SIGTERM else 'interrupted (SIGINT)'}; nothing was written\n")
    sys.stderr.flush()
    import os

    os._exit(143 if signum == signal.SIGTERM else 130)


def entry() -> None:
    old = signal.signal(signal.SIGTERM, _early), signal.signal(signal.SIGINT, _early)
    from .main import entry as run  # main() installs its own handlers at once
    from ..export import hf  # noqa: F401  (main imports it before installing them: do it here, covered)

    signal.signal(signal.SIGTERM, old[0])
    signal.signal(signal.SIGINT, old[1])
    run()
