"""What one agent's connection costs the coordinator in libzmq alone, before any Python.

A bare ROUTER (as the coordinator's agent socket) takes N DEALER peers in another
process; every peer sends a heartbeat-sized message each round and the ROUTER answers
each one, as the coordinator does. The resident memory the ROUTER's process gained,
per peer, is the floor under `coordinator_kib_per_agent` in bench/scale.py: with one
ZeroMQ connection per agent, the coordinator cannot go below it.

Measured twice: after a few heartbeats (what bench/scale.py sees minutes after start),
and after enough for libzmq's pipes to stop growing. Each direction of a connection is a
queue of 16 KiB chunks (256 message slots); a message fills the next slot and pages are
touched as slots are, and a queue keeps its current chunk and one spare, so a connection
grows until about 512 messages have crossed it each way, however few are ever queued.
That second figure is what a long-running coordinator holds per agent.

Usage: python -m bench.zmq_floor [--peers 2000] [--rounds 5] [--steady-rounds 600] [--json]
"""

from __future__ import annotations

import argparse
import json
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


def _round(socks: list) -> None:
    for s in socks:
        s.send(BEAT)
    for s in socks:
        s.recv()


def peers(endpoint: str, n: int, rounds: int, steady_rounds: int) -> None:
    _raise_fd_limit(n + 100)
    ctx = zmq.Context()
    ctx.max_sockets = n + 100
    socks = [ctx.socket(zmq.DEALER) for _ in range(n)]
    for s in socks:
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
    for _ in range(rounds):
        _round(socks)
    sys.stdin.readline()  # the parent has measured the first figure
    for _ in range(steady_rounds - rounds):
        _round(socks)
    sys.stdin.read()  # hold the connections until the parent has measured


def _answer(router: zmq.Socket, want: int, got: int, label: str) -> int:
    deadline = time.monotonic() + 120 + want / 20_000
    while got < want and time.monotonic() < deadline:
        if router.poll(1000):
            for _ in range(1000):
                try:
                    identity, body = router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                router.send_multipart([identity, body])
                got += 1
        if sys.stderr.isatty():
            print(f"\r{label}: {got:,}/{want:,} heartbeats", end="", file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return got


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5, help="heartbeats each way before the first figure")
    p.add_argument(
        "--steady-rounds",
        type=int,
        default=600,
        help="heartbeats each way before the second figure (libzmq's pipes stop growing at ~512)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--peer-process", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.steady_rounds = max(a.steady_rounds, a.rounds)
    if a.peer_process:
        peers(a.peer_process, a.peers, a.rounds, a.steady_rounds)
        return 0
    _raise_fd_limit(a.peers + 100)
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    me = psutil.Process()
    before = me.memory_info().rss
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--peers",
            str(a.peers),
            "--rounds",
            str(a.rounds),
            "--steady-rounds",
            str(a.steady_rounds),
            "--peer-process",
            f"tcp://127.0.0.1:{port}",
        ],
        stdin=subprocess.PIPE,
        text=True,
    )
    try:
        got = _answer(router, a.peers * a.rounds, 0, "first")
        first = (me.memory_info().rss - before) / a.peers / 1024
        child.stdin.write("go\n")
        child.stdin.flush()
        got = _answer(router, a.peers * a.steady_rounds, got, "steady")
        steady = (me.memory_info().rss - before) / a.peers / 1024
    finally:
        child.stdin.close()
        child.wait(10)
    ok = got == a.peers * a.steady_rounds
    if a.json:
        print(
            json.dumps(
                {
                    "peers": a.peers,
                    "heartbeats_answered": got,
                    "all_answered": ok,
                    "first": {"rounds": a.rounds, "kib_per_peer": round(first, 1)},
                    "steady": {"rounds": a.steady_rounds, "kib_per_peer": round(steady, 1)},
                },
                indent=2,
            )
        )
    else:
        print(
            f"libzmq ROUTER, {a.peers:,} peers, {got:,} heartbeats answered; RSS per peer: "
            f"{first:.1f} KiB after {a.rounds} heartbeats each way, {steady:.1f} KiB after {a.steady_rounds} "
            f"(the coordinator's target is < 20 KiB per agent, everything included)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
