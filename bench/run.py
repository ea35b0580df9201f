"""`make bench`: this project against multiprocessing.Pool, same machine, same run.

Workloads (see ../shared/PEERS.md for the peers' figures on this kind of machine):
  W1  20,000 no-op tasks submitted one by one (tasks/s)
  W3  500 sequential single-task round trips (p50 / p99 latency)
  W2  the classic CPU-bound example, 8 tasks (speedup over serial)

Usage: python bench/run.py [--workers N] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster import Executor  # noqa: E402
from cluster.localstack import LocalStack  # noqa: E402

N_NOOP = 20_000
N_LATENCY = 500
N_CLASSIC = 8


def noop(x):
    return x


def classic(_):
    return sum([random.randint(1, 100) for i in range(1000000)])


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def progress(text):
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{text:<60}")
        sys.stderr.flush()
    else:
        print(text, file=sys.stderr)


def measure(submit_one, run_map, label):
    progress(f"{label}: W1 no-op throughput")
    started = time.perf_counter()
    futures = [submit_one(noop, i) for i in range(N_NOOP)]
    for f in futures:
        f.result() if hasattr(f, "result") else f.get()
    w1 = N_NOOP / (time.perf_counter() - started)
    progress(f"{label}: W3 round-trip latency")
    lat = []
    for i in range(N_LATENCY):
        t = time.perf_counter()
        f = submit_one(noop, i)
        f.result() if hasattr(f, "result") else f.get()
        lat.append(time.perf_counter() - t)
    progress(f"{label}: W2 classic example")
    started = time.perf_counter()
    run_map(classic, range(N_CLASSIC))
    w2_wall = time.perf_counter() - started
    return {"w1_tasks_per_s": w1, "w3_p50_ms": percentile(lat, 0.5) * 1e3, "w3_p99_ms": percentile(lat, 0.99) * 1e3,
            "w2_wall_s": w2_wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    progress("serial: classic example")
    started = time.perf_counter()
    for i in range(N_CLASSIC):
        classic(i)
    serial = time.perf_counter() - started

    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        pool.map(noop, range(100))
        mp = measure(lambda fn, x: pool.apply_async(fn, (x,)),
                     lambda fn, xs: pool.map(fn, xs, chunksize=1), "multiprocessing.Pool")

    with LocalStack(workers=str(args.workers), cluster="bench") as stack:
        with Executor(zk=stack.zk, cluster="bench") as ex:
            list(ex.map(noop, range(100)))  # warm-up: workers connected, function cached
            ours = measure(ex.submit, lambda fn, xs: list(ex.map(fn, xs)), "clusterd")
    progress("done")
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    for r in (mp, ours):
        r["w2_speedup"] = serial / r["w2_wall_s"]
    report = {"workers": args.workers, "serial_classic_s": serial, "clusterd": ours, "multiprocessing.Pool": mp}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    rows = [
        ("W1 no-op tasks/s (20,000 submits)", "w1_tasks_per_s", "{:,.0f}", True),
        ("W3 round trip p50 (ms)", "w3_p50_ms", "{:.2f}", False),
        ("W3 round trip p99 (ms)", "w3_p99_ms", "{:.2f}", False),
        ("W2 classic speedup (8 tasks)", "w2_speedup", "{:.2f}", True),
    ]
    print(f"{args.workers} workers, serial classic example {serial:.2f} s")
    print(f"{'workload':<36}{'clusterd':>12}{'mp.Pool':>12}{'clusterd/Pool':>15}")
    for label, key, fmt, higher_better in rows:
        ratio = ours[key] / mp[key] if mp[key] else float("nan")
        print(f"{label:<36}{fmt.format(ours[key]):>12}{fmt.format(mp[key]):>12}{ratio:>14.2f}x")
    print("Peers on this kind of machine (../shared/PEERS.md): Ray 1,590 tasks/s, Parsl HTEX 1,220, "
          "Dask 600, IPython Parallel 390; p50 latency Ray 1.95 ms, Parsl 1.71 ms.")


if __name__ == "__main__":
    main()
