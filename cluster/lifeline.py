"""Children that die with the process that started them, even when it is SIGKILLed.

PR_SET_PDEATHSIG asks the kernel to signal a child when the thread that forked it
exits. It is set between fork and exec, so it works for any program (the ZooKeeper
JVM too). Start such children from a thread that lives as long as they should.
"""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Callable

PR_SET_PDEATHSIG = 1

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork
except (OSError, AttributeError):  # not Linux: children outlive a killed parent there
    _prctl = None


def dies_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for subprocess.Popen, or None where the kernel cannot do it."""
    if _prctl is None:
        return None
    parent = os.getpid()

    def arm() -> None:
        _prctl(PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return arm
