"""Children that die with the process that started them, even when it is SIGKILLed.

PR_SET_PDEATHSIG asks the kernel to signal a process when the thread that forked it
exits. A child can ask for itself (``die_with``, the agent's workers do), or the
parent can ask for it between fork and exec (``dies_with_parent``, for programs that
are not ours, such as the ZooKeeper JVM). Start such children from a thread that
lives as long as they should.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NAME = 15

_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork
except (OSError, AttributeError):  # not Linux: children outlive a killed parent there
    _prctl = None


def die_with(parent: int, sig: int) -> None:
    """In the child: get ``sig`` when ``parent`` dies; exit now if it already has."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(0)


def dies_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for subprocess.Popen, or None where the kernel cannot do it."""
    return functools.partial(die_with, os.getpid(), sig) if _prctl is not None else None


def adopt_orphans() -> None:
    """Become the reaper of this process's orphaned descendants (PR_SET_CHILD_SUBREAPER):
    a process whose parent dies is handed to us, not to init, and we must reap it."""
    if _prctl is not None:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)


def name_process(name: str) -> None:
    """What ``ps`` and ``top`` show for this process (at most 15 bytes): forked workers
    would otherwise look like their template."""
    if _prctl is not None:
        _prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]))
