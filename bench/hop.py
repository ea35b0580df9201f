"""One hop between two processes on this machine, as the agent <-> worker hop could be
built: a Unix socketpair (what agents/channel.py uses) against pyzmq DEALER/ROUTER over
ipc and over tcp loopback (what it used before). Sequential round trips of a 40-byte
message: latency and CPU per round trip on each side (the sides' CPU includes libzmq's
I/O threads). Then the whole W3 path with bare relays in place of the daemons: what
the topology costs before any of our code runs; and the same path without the
coordinator, the floor of a design where clients send straight to agents.

Usage: python -m bench.hop [--round-trips N] [--json]
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


def _fork(fn) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(0)
    return pid


def _pings(ping, n: int) -> dict:
    """Latencies of n round trips, and this side's CPU for them."""
    ping()  # the first round trip connects and warms up
    lat = []
    cpu = _cpu(resource.RUSAGE_SELF)
    for _ in range(n):
        t = time.perf_counter()
        ping()
        lat.append(time.perf_counter() - t)
    return {"lat": lat, "cpu": _cpu(resource.RUSAGE_SELF) - cpu}


def _measure(child, ping, n: int) -> dict:
    """Fork ``child`` as the echo side, run ``ping`` n times here."""
    pid = _fork(child)
    return dict(_pings(ping, n), pid=pid)


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


def chain(port_front: int, port_agent: int, n: int, coordinator_on_path: bool = True) -> dict:
    """A task's whole round trip with no work and no bookkeeping: here (the client's
    DEALER) -> a relay (the coordinator: ROUTER in, DEALER on) -> a relay (the agent: ROUTER
    in, socketpair on) -> an echo (the worker), and back. Four processes, as in W3: the
    floor under W3 that this machine and this topology set. Without the coordinator on the
    path (a client sending straight to an agent, as a design with worker leases would):
    the floor of that design."""
    worker_end, agent_end = socket.socketpair()

    def worker():
        agent_end.close()
        while True:
            data = worker_end.recv(65536)
            if not data or data == b"quit":
                return
            worker_end.send(data)

    def relay(ctx, port: int, back, send_back, recv_back) -> None:
        """A daemon reduced to forwarding: a ROUTER in front, ``back`` behind it."""
        front = ctx.socket(zmq.ROUTER)
        front.bind(f"tcp://127.0.0.1:{port}")
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        peer = b""
        while True:
            for what, _ in poller.poll():
                if what is not front:
                    front.send_multipart([peer, recv_back()])
                    continue
                peer, data = front.recv_multipart()
                send_back(data)
                if data == b"quit":
                    front.close(0)
                    return

    def agent():
        worker_end.close()
        ctx = zmq.Context()
        relay(ctx, port_agent, agent_end, agent_end.send, lambda: agent_end.recv(65536))
        ctx.term()

    def coordinator():
        worker_end.close()
        agent_end.close()
        ctx = zmq.Context()
        agents = ctx.socket(zmq.DEALER)
        agents.connect(f"tcp://127.0.0.1:{port_agent}")
        relay(ctx, port_front, agents, agents.send, agents.recv)
        agents.close(linger=1000)
        ctx.term()

    pids = [_fork(fn) for fn in (worker, agent, coordinator)[: 3 if coordinator_on_path else 2]]
    worker_end.close()
    agent_end.close()
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(f"tcp://127.0.0.1:{port_front if coordinator_on_path else port_agent}")

    def ping():
        s.send(MESSAGE)
        s.recv()

    r = _pings(ping, n)
    s.send(b"quit")
    s.close(linger=1000)
    ctx.term()
    for pid in pids:
        os.waitpid(pid, 0)
    return dict(r, pid=None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--round-trips", type=int, default=5000)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="clusterd-hop-")
    rows = {}
    port, port2 = _free_port(), _free_port()
    for name, run in (
        ("socketpair", lambda: socketpair(args.round_trips)),
        ("zmq ipc", lambda: zeromq(f"ipc://{tmp}/hop", args.round_trips)),
        ("zmq tcp", lambda: zeromq(f"tcp://127.0.0.1:{port}", args.round_trips)),
        ("W3 path", lambda: chain(port, port2, args.round_trips)),
        ("W3 direct", lambda: chain(port, port2, args.round_trips, coordinator_on_path=False)),
    ):
        child_before = _cpu(resource.RUSAGE_CHILDREN)
        r = run()
        if r["pid"] is not None:
            os.waitpid(r["pid"], 0)
        n = args.round_trips
        cuts = statistics.quantiles(r["lat"], n=100, method="inclusive")  # as bench/run.py's percentiles
        rows[name] = {
            "p50_us": cuts[49] * 1e6,
            "p99_us": cuts[98] * 1e6,
            "cpu_us_here": r["cpu"] / n * 1e6,
            "cpu_us_echo": (_cpu(resource.RUSAGE_CHILDREN) - child_before) / n * 1e6,
        }
    shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"one hop, {args.round_trips:,} sequential round trips of {len(MESSAGE)} bytes "
        f"(load average {os.getloadavg()[0]:.2f})"
    )
    print(
        f"{'transport':12} {'p50 us':>8} {'p99 us':>8} {'CPU us here':>12} {'CPU us echo':>12}"
        "   (W3 path: client -> relay -> relay -> socketpair echo, 4 processes; echo CPU = the other 3;"
        " W3 direct: the same without the coordinator's relay)"
    )
    for name, row in rows.items():
        print(
            f"{name:12} {row['p50_us']:8.1f} {row['p99_us']:8.1f} {row['cpu_us_here']:12.1f} {row['cpu_us_echo']:12.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
