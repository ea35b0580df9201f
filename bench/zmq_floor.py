"""What one agent's connection costs the coordinator in libzmq alone, before any Python.

A bare ROUTER (as the coordinator's agent socket) takes N DEALER peers in another
process; every peer sends a heartbeat-sized message each round and the ROUTER answers
each one, as the coordinator does. The resident memory the ROUTER's process gained,
per peer, is the floor under `coordinator_kib_per_agent` in bench/scale.py: with one
ZeroMQ connection per agent, the coordinator cannot go below it.

Usage: python bench/zmq_floor.py [--peers 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import psutil
import zmq

BEAT = b"\x95\x01\x01\xa8agent-01\x01\x00"  # the size of an encoded Heartbeat


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))


def peers(endpoint: str, n: int, rounds: int) -> None:
    _raise_fd_limit(n + 100)
    ctx = zmq.Context()
    ctx.max_sockets = n + 100
    socks = [ctx.socket(zmq.DEALER) for _ in range(n)]
    for s in socks:
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
    for _ in range(rounds):
        for s in socks:
            s.send(BEAT)
        time.sleep(0.5)
        for s in socks:
            while s.poll(0):
                s.recv()
    sys.stdin.read()  # hold the connections until the parent has measured


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--peer-process", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.peer_process:
        peers(a.peer_process, a.peers, a.rounds)
        return 0
    _raise_fd_limit(a.peers + 100)
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    me = psutil.Process()
    before = me.memory_info().rss
    child = subprocess.Popen([sys.executable, __file__, "--peers", str(a.peers), "--rounds", str(a.rounds),
                              "--peer-process", f"tcp://127.0.0.1:{port}"], stdin=subprocess.PIPE)
    try:
        want, got = a.peers * a.rounds, 0
        deadline = time.monotonic() + 60 + a.rounds
        while got < want and time.monotonic() < deadline:
            if router.poll(1000):
                identity, body = router.recv_multipart()
                router.send_multipart([identity, body])
                got += 1
            print(f"\r{got:,}/{want:,} heartbeats", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        per_peer = (me.memory_info().rss - before) / a.peers / 1024
    finally:
        child.stdin.close()
        child.wait(10)
    print(f"libzmq ROUTER, {a.peers:,} peers, {got:,} heartbeats answered: {per_peer:.1f} KiB of RSS per peer "
          f"(the coordinator's target is < 20 KiB per agent, everything included)")
    return 0 if got == want else 1


if __name__ == "__main__":
    sys.exit(main())
