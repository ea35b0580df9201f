"""cluster/runtime/malloc.py: after tune(), payload-sized blocks freed in bursts are reused rather
than handed back to the kernel and faulted in again page by page. In a child process:
the setting is process-wide."""

from __future__ import annotations

import json
import platform
import subprocess
import textwrap

import pytest
from helpers import PY, ROOT

PROBE = textwrap.dedent("""
    import collections, json, resource
    from cluster.runtime import malloc

    def faults_per_mib(n=300, window=32):
        # 1 MiB blocks, 32 alive at a time, all freed at the end of each burst of 64: W4's shape.
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        live = collections.deque()
        for i in range(n):
            live.append(bytes(1 << 20))
            if len(live) > window:
                live.popleft()
            if i % 64 == 63:
                live.clear()
        live.clear()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

    faults_per_mib()  # the heap's first growth faults either way: measure after it
    untuned = faults_per_mib()
    tuned = malloc.tune()
    faults_per_mib()
    print(json.dumps({"untuned": untuned, "tuned": tuned, "after": faults_per_mib()}))
""")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's parameters are glibc's")
def test_tuned_allocator_reuses_freed_payload_memory_instead_of_faulting_it_in_again():
    res = subprocess.run([PY, "-c", PROBE], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["tuned"] is True
    assert out["untuned"] > 20  # glibc's own policy: most of a MiB's 256 pages faulted in again
    assert out["after"] < 2
