"""One hop between two processes on this machine, as the agent <-> worker hop could be
built: a Unix socketpair (what agents/channel.py uses) against pyzmq DEALER/ROUTER over
ipc and over tcp loopback (what it used before). Sequential round trips of a 40-byte
message: latency and CPU per round trip on each side (the sides' CPU includes libzmq's
I/O threads).

Usage: python bench/hop.py [--round-trips N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shutil
import socket
import statistics
import sys
import tempfile
import time

import zmq

MESSAGE = b"x" * 40


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _measure(child, ping, n: int) -> dict:
    """Fork ``child`` as the echo side, run ``ping`` n times here."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(0)
    ping()  # the first round trip connects and warms up
    lat = []
    cpu = _cpu(resource.RUSAGE_SELF)
    for _ in range(n):
        t = time.perf_counter()
        ping()
        lat.append(time.perf_counter() - t)
    cpu = _cpu(resource.RUSAGE_SELF) - cpu
    return {"lat": lat, "cpu": cpu, "pid": pid}


def socketpair(n: int) -> dict:
    a, b = socket.socketpair()

    def child():
        a.close()
        poller = select.poll()
        poller.register(b, select.POLLIN)
        while True:
            poller.poll()
            data = b.recv(65536)
            if not data:
                return
            b.send(data)

    poller = select.poll()
    poller.register(a, select.POLLIN)

    def ping():
        a.send(MESSAGE)
        poller.poll()
        a.recv(65536)

    r = _measure(child, ping, n)
    b.close()
    a.close()
    return r


def zeromq(address: str, n: int) -> dict:
    def child():
        ctx = zmq.Context()
        s = ctx.socket(zmq.ROUTER)
        s.bind(address)
        poller = zmq.Poller()
        poller.register(s, zmq.POLLIN)
        while True:
            poller.poll()
            frames = s.recv_multipart()
            if frames[-1] == b"quit":
                s.close(0)
                ctx.term()
                return
            s.send_multipart(frames)

    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(address)
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)

    def ping():
        s.send(MESSAGE)
        poller.poll()
        s.recv()

    r = _measure(child, ping, n)
    s.send(b"quit")
    s.close(linger=1000)
    ctx.term()
    return r


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--round-trips", type=int, default=5000)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="clusterd-hop-")
    rows = {}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, run in (("socketpair", lambda: socketpair(args.round_trips)),
                      ("zmq ipc", lambda: zeromq(f"ipc://{tmp}/hop", args.round_trips)),
                      ("zmq tcp", lambda: zeromq(f"tcp://127.0.0.1:{port}", args.round_trips))):
        child_before = _cpu(resource.RUSAGE_CHILDREN)
        r = run()
        os.waitpid(r["pid"], 0)
        n = args.round_trips
        rows[name] = {"p50_us": statistics.median(r["lat"]) * 1e6,
                      "p99_us": sorted(r["lat"])[int(0.99 * (n - 1))] * 1e6,
                      "cpu_us_here": r["cpu"] / n * 1e6,
                      "cpu_us_echo": (_cpu(resource.RUSAGE_CHILDREN) - child_before) / n * 1e6}
    shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"one hop, {args.round_trips:,} sequential round trips of {len(MESSAGE)} bytes "
          f"(load average {os.getloadavg()[0]:.2f})")
    print(f"{'transport':12} {'p50 us':>8} {'p99 us':>8} {'CPU us here':>12} {'CPU us echo':>12}")
    for name, row in rows.items():
        print(f"{name:12} {row['p50_us']:8.1f} {row['p99_us']:8.1f} {row['cpu_us_here']:12.1f} "
              f"{row['cpu_us_echo']:12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
