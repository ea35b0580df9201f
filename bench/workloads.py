"""The benchmark's workloads, its CPU accounting and the raw ZeroMQ ceiling.

Every system (this project and each peer) is driven through the same small
interface (``bench.peers.System``: submit / result / results / cpu_groups), so
each workload below is written once and measured the same way everywhere:

  W1  N_NOOP no-op tasks ``noop(i)`` submitted one by one, then every result
      collected: tasks/s and CPU-µs per task (CPU of the client and of every
      process of the system: daemons, schedulers, workers).
  W2  the classic CPU-bound example: N_CLASSIC x ``classic()``
      (``sum([random.randint(1, 100) for i in range(1000000)])``), all
      submitted at once: wall time, speedup over the serial run, CPU
      utilisation of the cores.
  W3  N_LATENCY sequential single-task round trips ``noop(i)``: p50 / p99.
  W4  N_ECHO tasks ``echo(blob)`` with a 1 MiB bytes argument, at most
      ECHO_WINDOW in flight: MiB/s counting BOTH directions
      (2 x N_ECHO x 1 MiB / wall).

The functions live in this importable module (``bench.workloads``) rather than
in ``__main__``, so every system ships them the same way: by reference, with
the repository root on PYTHONPATH of every worker (bench/run.py sets it).

``scale`` (``--quick`` / BENCH_SCALE) shrinks every count and the size of the
CPU-bound task; 1.0 is the definition above.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import random
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

MiB = 1 << 20
N_NOOP = 20_000
N_LATENCY = 500
N_CLASSIC = 8
CLASSIC_ITEMS = 1_000_000
N_ECHO = 2_000
N_SWITCH = 200  # new jobs one after another: the first task of each (clusterd only)
ECHO_SIZE = MiB
ECHO_WINDOW = 32
WARMUP = 100


# ------------------------------------------------------------------ the tasks


def noop(x):
    return x


def classic(n=CLASSIC_ITEMS):
    return sum([random.randint(1, 100) for i in range(n)])


def echo(blob):
    return blob


# ------------------------------------------------------------------- the sizes


@dataclass
class Sizes:
    scale: float = 1.0

    def _n(self, full: int, floor: int) -> int:
        return max(floor, int(round(full * self.scale)))

    @property
    def noop(self) -> int:
        return self._n(N_NOOP, 200)

    @property
    def latency(self) -> int:
        return self._n(N_LATENCY, 50)

    @property
    def classic_items(self) -> int:
        return self._n(CLASSIC_ITEMS, 20_000)

    @property
    def echo(self) -> int:
        return self._n(N_ECHO, 40)

    @property
    def switches(self) -> int:
        return self._n(N_SWITCH, 20)

    def as_dict(self) -> dict:
        return {
            "scale": self.scale,
            "w1_tasks": self.noop,
            "w2_tasks": N_CLASSIC,
            "w2_items": self.classic_items,
            "w3_round_trips": self.latency,
            "w4_tasks": self.echo,
            "switch_jobs": self.switches,
            "w4_bytes": ECHO_SIZE,
            "w4_window": ECHO_WINDOW,
        }


# ------------------------------------------------------------- CPU accounting

Group = Callable[[], list]  # returns the psutil.Process objects of one group, now


def descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


TICK_SLACK = 0.03  # seconds: how far the clock-tick figure may stray from the nanosecond one


def _threads_ns(pid: int) -> int | None:
    """Nanoseconds on CPU of the live threads of a process (/proc/PID/task/*/schedstat)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        return None
    return total


def _cpu(proc: psutil.Process) -> tuple[tuple[int, float], tuple[float, int | None]] | None:
    try:
        with proc.oneshot():
            t = proc.cpu_times()
            key = (proc.pid, proc.create_time())
    except psutil.Error:
        return None
    return key, (t.user + t.system, _threads_ns(proc.pid))


def _delta(before: tuple[float, int | None] | None, after: tuple[float, int | None]) -> float:
    """CPU seconds a process used in between. /proc/PID/stat counts in clock
    ticks (10 ms): too coarse for a daemon's few milliseconds, so the threads'
    nanosecond counters are used when both agree within TICK_SLACK; they miss
    a thread that exited in between, and then the tick figure is used."""
    ticks = after[0] - (before[0] if before else 0.0)
    if after[1] is None or (before is not None and before[1] is None):
        return ticks
    precise = (after[1] - (before[1] if before else 0)) / 1e9
    return precise if abs(precise - ticks) <= TICK_SLACK else ticks


class CpuMeter:
    """User + system CPU seconds used by named groups of processes between
    start() and stop(). A process that appeared in between counts from zero;
    one that exited in between is lost (its last CPU is not readable) unless
    it is a reaped child of this process, which ``children_rusage`` catches."""

    def __init__(self, groups: dict[str, Group], *, children_rusage: str | None = None):
        self.groups = groups
        self.children_rusage = children_rusage  # a group name that gets RUSAGE_CHILDREN's delta

    def _snapshot(self) -> dict[str, dict]:
        snap = {}
        for name, group in self.groups.items():
            seen = {}
            for proc in group():
                got = _cpu(proc)
                if got:
                    seen[got[0]] = got[1]
            snap[name] = seen
        return snap

    @staticmethod
    def _rusage() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def start(self) -> CpuMeter:
        self._machine0 = psutil.cpu_times()
        self._rusage0 = self._rusage()
        self._before = self._snapshot()
        return self

    def stop(self) -> dict[str, float]:
        after = self._snapshot()
        machine1 = psutil.cpu_times()
        out = {}
        for name, procs in after.items():
            before = self._before.get(name, {})
            out[name] = sum(_delta(before.get(key), cpu) for key, cpu in procs.items())
        if self.children_rusage:
            out[self.children_rusage] = out.get(self.children_rusage, 0.0) + self._rusage() - self._rusage0
        busy0 = sum(self._machine0) - self._machine0.idle - getattr(self._machine0, "iowait", 0.0)
        busy1 = sum(machine1) - machine1.idle - getattr(machine1, "iowait", 0.0)
        self.machine_busy_s = busy1 - busy0
        return out


# ---------------------------------------------------------------- the workloads


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (1-99) as the stdlib computes it, as bench/scale.py does."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def warm_up(system, sizes: Sizes) -> None:
    """Start-up is not measured: workers running, functions shipped and cached."""
    system.results([system.submit(noop, i) for i in range(WARMUP)])
    system.results([system.submit(classic, 1000) for _ in range(2 * system.workers)])
    system.results([system.submit(echo, b"x" * 1024) for _ in range(2 * system.workers)])


def _cpu_fields(cpu: dict[str, float], n: int | None, wall: float, cores: int) -> dict:
    total = sum(cpu.values())
    out = {
        "cpu_s": round(total, 4),
        "cpu_s_by_group": {k: round(v, 4) for k, v in cpu.items()},
        "cpu_util_of_cores": total / (wall * cores),
    }
    if n:
        out["cpu_us_per_task"] = total / n * 1e6
    return out


def w1_throughput(system, sizes: Sizes) -> dict:
    n = sizes.noop
    meter = CpuMeter(system.cpu_groups()).start()
    started = time.perf_counter()
    handles = [system.submit(noop, i) for i in range(n)]
    submitted = time.perf_counter() - started
    results = system.results(handles)
    wall = time.perf_counter() - started
    cpu = meter.stop()
    assert results[-1] == n - 1 and len(results) == n, "W1: wrong results"
    return {
        "tasks": n,
        "wall_s": wall,
        "submit_s": submitted,
        "tasks_per_s": n / wall,
        **_cpu_fields(cpu, n, wall, system.workers),
    }


def w2_classic(system, sizes: Sizes) -> dict:
    items = sizes.classic_items
    meter = CpuMeter(system.cpu_groups()).start()
    started = time.perf_counter()
    handles = [system.submit(classic, items) for _ in range(N_CLASSIC)]
    results = system.results(handles)
    wall = time.perf_counter() - started
    cpu = meter.stop()
    assert len(results) == N_CLASSIC and all(items <= r <= 100 * items for r in results), "W2: wrong results"
    out = {
        "tasks": N_CLASSIC,
        "items": items,
        "wall_s": wall,
        **_cpu_fields(cpu, None, wall, system.workers),
        "machine_util": meter.machine_busy_s / (wall * (psutil.cpu_count() or 1)),
    }
    # The system's own overhead (daemons, not workers, not the client) as % of one core.
    daemons = [k for k in getattr(system, "daemon_groups", ()) if k in cpu]
    if daemons:
        out["daemons_pct_of_one_core"] = {k: cpu[k] / wall * 100 for k in daemons}
        out["daemons_pct_of_one_core_total"] = sum(cpu[k] for k in daemons) / wall * 100
    return out


def w3_latency(system, sizes: Sizes) -> dict:
    lat = []
    for i in range(sizes.latency):
        t = time.perf_counter()
        r = system.result(system.submit(noop, i))
        lat.append(time.perf_counter() - t)
        assert r == i, "W3: wrong result"
    return {
        "round_trips": len(lat),
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "mean_ms": statistics.fmean(lat) * 1e3,
        "max_ms": max(lat) * 1e3,
    }


def w4_payload(system, sizes: Sizes) -> dict:
    n = sizes.echo
    blob = os.urandom(ECHO_SIZE)  # random: a system that compresses gains nothing
    meter = CpuMeter(system.cpu_groups()).start()
    started = time.perf_counter()
    pending: collections.deque = collections.deque()
    sent = received = 0
    while received < n:
        while sent < n and len(pending) < ECHO_WINDOW:
            pending.append(system.submit(echo, blob))
            sent += 1
        r = system.result(pending.popleft())
        assert len(r) == ECHO_SIZE, "W4: wrong result"
        received += 1
    wall = time.perf_counter() - started
    cpu = meter.stop()
    moved = 2 * n * ECHO_SIZE
    return {
        "tasks": n,
        "bytes_each": ECHO_SIZE,
        "window": ECHO_WINDOW,
        "wall_s": wall,
        "mib_per_s": moved / MiB / wall,
        "counted": "both directions: 2 x tasks x 1 MiB",
        **_cpu_fields(cpu, n, wall, system.workers),
    }


def serial_classic(sizes: Sizes) -> dict:
    items = sizes.classic_items
    classic(1000)
    started = time.perf_counter()
    for _ in range(N_CLASSIC):
        classic(items)
    wall = time.perf_counter() - started
    return {"tasks": N_CLASSIC, "items": items, "wall_s": wall, "per_task_s": wall / N_CLASSIC}


# ---------------------------------------------------------- raw ZeroMQ ceiling


def _zmq_echo_server(port_pipe) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    port_pipe.send(port)
    while True:
        frames = sock.recv_multipart(copy=False)
        if len(frames[-1]) == 4 and frames[-1].bytes == b"stop":
            sock.send_multipart(frames)
            break
        sock.send_multipart(frames, copy=False)
    sock.close()
    ctx.term()


def zmq_ceiling(sizes: Sizes) -> dict:
    """DEALER (here) -> ROUTER echo server (another process) over tcp loopback,
    both sides in Python with pyzmq: what a Python program can move through
    ZeroMQ on this machine, one message per task and nothing else done."""
    import zmq

    ctx_mp = multiprocessing.get_context("fork")
    parent, child = ctx_mp.Pipe()
    server = ctx_mp.Process(target=_zmq_echo_server, args=(child,), daemon=True)
    server.start()
    port = parent.recv()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    me = psutil.Process()
    groups = {"client": lambda: [me], "server": lambda: [psutil.Process(server.pid)]}
    tiny = b"x" * 16
    try:
        for _ in range(200):  # connected and warm
            sock.send(tiny)
            sock.recv()
        out: dict[str, Any] = {"pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}

        # Sequential round trips (one in flight): the floor under W3.
        n = max(sizes.latency * 10, 1000)
        lat = []
        started = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            sock.send(tiny)
            sock.recv()
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - started
        out["sequential"] = {
            "round_trips": n,
            "round_trips_per_s": n / wall,
            "p50_ms": percentile(lat, 50) * 1e3,
            "p99_ms": percentile(lat, 99) * 1e3,
        }

        # Pipelined round trips (up to 1,000 in flight): the ceiling over W1.
        n = sizes.noop * 10
        window = 1000
        meter = CpuMeter(groups).start()
        started = time.perf_counter()
        sent = received = 0
        while received < n:
            while sent < n and sent - received < window:
                sock.send(tiny)
                sent += 1
            sock.recv()
            received += 1
        wall = time.perf_counter() - started
        cpu = meter.stop()
        out["pipelined"] = {
            "round_trips": n,
            "window": window,
            "round_trips_per_s": n / wall,
            "cpu_us_per_round_trip": sum(cpu.values()) / n * 1e6,
        }

        # 1 MiB echo, same window and counting as W4: the ceiling over W4.
        n = sizes.echo
        blob = os.urandom(ECHO_SIZE)
        started = time.perf_counter()
        sent = received = 0
        while received < n:
            while sent < n and sent - received < ECHO_WINDOW:
                sock.send(blob, copy=False)
                sent += 1
            assert len(sock.recv(copy=False)) == ECHO_SIZE
            received += 1
        wall = time.perf_counter() - started
        out["payload"] = {
            "tasks": n,
            "window": ECHO_WINDOW,
            "mib_per_s": 2 * n * ECHO_SIZE / MiB / wall,
            "counted": "both directions: 2 x messages x 1 MiB",
        }
        sock.send(b"stop")
        sock.recv()
        return out
    finally:
        sock.close()
        ctx.term()
        server.join(5)
        if server.is_alive():
            server.kill()
