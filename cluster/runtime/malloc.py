"""Keep freed payload memory for the next payload instead of handing it back to the kernel.

glibc's allocator gives a freed block of a megabyte or so back to the kernel (or trims
the heap under it), and the next payload of that size takes it back a page at a time:
a page fault and a zeroed page per 4 KiB. For processes that move one large payload
after another, that costs more than copying the payload.

``tune()`` serves allocations under 4 MiB from the heap and lets up to 64 MiB of free
heap stay before trimming it (16 MiB spare each time it grows). The daemons, their
workers and ``clusterctl`` call it at start. An application may call
``cluster.tune_malloc()`` for its own process; the library never does it unasked, since
it changes the allocator for the whole process. What it saves is measured in
docs/benchmarks.md, "W4: two copies".
"""

from __future__ import annotations

import ctypes

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 64 << 20
TOP_PAD = 16 << 20


def tune() -> bool:
    """Set the thresholds; False where the C library is not glibc (musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # other C libraries take other parameters, or none
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_TOP_PAD, TOP_PAD),
        )
    )
