"""Where one task's round trip (W3) spends its time, process by process.

Starts a one-machine cluster whose processes note, in the system-wide monotonic clock,
when each message is encoded and decoded (a ``sitecustomize`` hook on ``cluster.wire``,
put on their PYTHONPATH in a temporary folder), runs sequential single-task round trips
through the Executor, and prints the median timeline of the most common sequence: what
each hop between processes costs, and what each process spends between receiving a
message and sending the next. bench/hop.py gives the same topology with bare relays.

Usage: python -m bench.timeline [--round-trips 1000] [--json]
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HOOK = """
import atexit, importlib.abc, importlib.machinery, os, sys, threading, time
_out = os.environ["CLUSTERD_TIMELINE"]
_events = []

def _dump():
    global _events
    taken, _events = _events, []
    with open(os.path.join(_out, str(os.getpid())), "a") as f:
        f.writelines(f"{t} {os.getpid()} {k} {c}\\n" for t, k, c in taken)

def _writer():  # a worker may be killed rather than exit: write what it noted every second
    while True:
        time.sleep(1.0)
        _dump()

def _note(kind, name):
    _events.append((time.monotonic_ns(), kind, name))

class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "cluster.contract.wire":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            decode, encode = module.decode, module.Message.encode

            def traced_decode(frames):
                msg = decode(frames)
                _note("received", type(msg).__name__)
                return msg

            def traced_encode(self):
                _note("sent", type(self).__name__)
                return encode(self)

            module.decode, module.Message.encode = traced_decode, traced_encode

        spec.loader.exec_module = exec_module
        return spec

def _forked():  # a worker forked from the agent's template: a writer of its own, nothing of the template's
    global _events
    _events = []
    threading.Thread(target=_writer, daemon=True).start()

sys.meta_path.insert(0, _Finder())
atexit.register(_dump)
os.register_at_fork(after_in_child=_forked)
threading.Thread(target=_writer, daemon=True).start()
"""

ROLES = {"SubmitTasks": "coordinator", "Dispatch": "agent", "RunTasks": "worker"}  # who receives it


def run(round_trips: int, out: Path) -> list[tuple[int, int, int]]:
    from bench.workloads import noop
    from cluster import Executor
    from cluster.cli.localstack import LocalStack

    (out / "hook").mkdir()
    (out / "hook" / "sitecustomize.py").write_text(HOOK)
    (out / "events").mkdir()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join([root, str(out / "hook")])
    os.environ["CLUSTERD_TIMELINE"] = str(out / "events")
    marks = []
    with LocalStack(workers="2") as stack:
        with Executor(zk=stack.zk, cluster=stack.cluster) as ex:
            for i in range(200):  # warm up: workers started, the function cached
                ex.submit(noop, i).result()
            for i in range(round_trips):
                if i % 100 == 0 and sys.stderr.isatty():
                    print(f"\r{i:,}/{round_trips:,} round trips", end="", file=sys.stderr, flush=True)
                t0 = time.monotonic_ns()
                future = ex.submit(noop, i)
                t1 = time.monotonic_ns()
                future.result()
                marks.append((t0, t1, time.monotonic_ns()))
            time.sleep(1.5)  # every process writes what it noted
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return marks


def analyse(marks: list[tuple[int, int, int]], events_dir: Path) -> dict:
    events = []
    for f in events_dir.iterdir():
        for line in f.read_text().splitlines():
            t, pid, kind, name = line.split()
            events.append((int(t), pid, kind, name))
    events.sort()
    role = {pid: ROLES[name] for _, pid, kind, name in events if kind == "received" and name in ROLES}
    times = [e[0] for e in events]
    sequences = collections.defaultdict(list)
    for t0, t1, t2 in marks:
        steps = [
            e for e in events[bisect.bisect_left(times, t0) : bisect.bisect_right(times, t2)] if e[3] != "Heartbeat"
        ]
        key = tuple((role.get(pid, "?"), kind, name) for _, pid, kind, name in steps)
        sequences[key].append([t - t0 for t, *_ in steps] + [t1 - t0, t2 - t0])
    key, rows = max(sequences.items(), key=lambda kv: len(kv[1]))
    medians = [statistics.median(column) / 1000 for column in zip(*rows)]
    steps = [("client", "submit() returned", medians[-2])]
    steps += [(r, f"{kind} {name}", at) for (r, kind, name), at in zip(key, medians)]
    steps.append(("client", "result() returned", medians[-1]))
    return {"round_trips": len(marks), "in_sequence": len(rows), "steps": steps}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--round-trips", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    out = Path(tempfile.mkdtemp(prefix="clusterd-timeline-"))
    try:
        result = analyse(run(a.round_trips, out), out / "events")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if a.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"one task's round trip, median of {result['in_sequence']:,} of {result['round_trips']:,} sequential "
        f"round trips (load average {os.getloadavg()[0]:.2f}); µs from submit()"
    )
    prev, prev_role = 0.0, "client"
    for who, what, at in result["steps"]:
        gap = f"hop {prev_role} -> {who}" if who != prev_role else f"in the {who}"
        print(f"{at:8.1f}  {who:12} {what:22} +{at - prev:6.1f}  ({gap})")
        prev, prev_role = at, who
    return 0


if __name__ == "__main__":
    sys.exit(main())
