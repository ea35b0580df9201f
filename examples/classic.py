"""The classic CPU-bound example on the cluster, against the same work run serially.

Run it with `make demo`, or against any cluster:
    CLUSTER_ZK=127.0.0.1:2181 python examples/classic.py
"""

import random
import time

from cluster import Executor

TASKS = 8


def classic(_: int) -> int:
    return sum([random.randint(1, 100) for i in range(1000000)])


def main() -> None:
    with Executor() as ex:
        # Warm the workers up (imports, function cache) so the timing is of the work.
        list(ex.map(abs, range(4)))
        started = time.perf_counter()
        results = list(ex.map(classic, range(TASKS)))
        wall = time.perf_counter() - started
    for i, value in enumerate(results):
        print(f"task {i}: {value}")
    started = time.perf_counter()
    for i in range(TASKS):
        classic(i)
    serial = time.perf_counter() - started
    print(f"cluster wall time: {wall:.2f} s")
    print(f"serial time:       {serial:.2f} s")
    print(f"speedup:           {serial / wall:.2f}x")


if __name__ == "__main__":
    main()
