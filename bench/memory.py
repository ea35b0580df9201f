"""Bounded memory while streaming: pipe N inputs into `clusterctl submit --inputs -`
and sample the resident memory of the client and the coordinator as the job runs.

Usage: python -m bench.memory [N]      (default 1,000,000)
Prints RSS early in the job and at its end; flat figures mean memory does not grow
with the input size (the client window bounds what is in flight).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import psutil

from cluster.cli.localstack import LocalStack


def feed(pipe, n: int) -> None:
    chunk = 10_000
    for start in range(0, n, chunk):
        pipe.write("".join(f"{i}\n" for i in range(start, min(n, start + chunk))).encode())
    pipe.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with LocalStack(workers="2", cluster="membench") as stack:
        coord = psutil.Process(stack.children[0].pid)
        started = time.monotonic()
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cluster.cli.main",
                "submit",
                "builtins:abs",
                "--inputs",
                "-",
                "--output",
                os.devnull,
            ],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=stack.env,
        )
        threading.Thread(target=feed, args=(client.stdin, n), daemon=True).start()
        proc = psutil.Process(client.pid)
        samples = []
        while client.poll() is None:
            try:
                samples.append((time.monotonic() - started, proc.memory_info().rss, coord.memory_info().rss))
            except psutil.NoSuchProcess:
                break
            time.sleep(1.0)
        err = client.stderr.read()
        client.wait()
        wall = time.monotonic() - started
    print(err.decode().strip().splitlines()[-1])
    print(f"{n:,} inputs via stdin in {wall:.1f} s, exit status {client.returncode}")
    print(f"{'t (s)':>8}{'client RSS (MiB)':>20}{'coordinator RSS (MiB)':>24}")
    step = max(1, len(samples) // 10)
    for t, c, k in samples[::step] + samples[-1:]:
        print(f"{t:8.1f}{c / 2**20:20.1f}{k / 2**20:24.1f}")
    late = samples[len(samples) // 2 :]
    print(
        f"peak client RSS {max(s[1] for s in samples) / 2**20:.1f} MiB, "
        f"peak coordinator RSS {max(s[2] for s in samples) / 2**20:.1f} MiB; "
        f"second half of the job: client {min(s[1] for s in late) / 2**20:.1f}-"
        f"{max(s[1] for s in late) / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
