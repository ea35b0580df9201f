"""cluster.Executor against a real cluster: a concurrent.futures.Executor."""

from __future__ import annotations

import concurrent.futures as cf
import subprocess
import textwrap

import pytest
from helpers import PY, ROOT

from cluster import Executor
from cluster.contract.payload import WorkerLost


@pytest.fixture
def executor(running_cluster):
    ex = Executor(zk=running_cluster.zk, cluster=running_cluster.name)
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


def test_submit_returns_futures_that_work_with_as_completed_and_wait(executor):
    futures = {executor.submit(pow, i, 2): i for i in range(200)}
    seen = {}
    for fut in cf.as_completed(futures, timeout=60):
        seen[futures[fut]] = fut.result()
    assert seen == {i: i * i for i in range(200)}
    done, not_done = cf.wait([executor.submit(sum, [1, 2, 3], start=4)], timeout=30)
    assert not not_done and done.pop().result() == 10


def test_map_is_ordered_lazy_and_bounded(executor):
    consumed = []

    def inputs():
        for i in range(5000):
            consumed.append(i)
            yield i

    results = executor.map(lambda x: -x, inputs(), buffersize=100)
    assert len(consumed) == 100  # only one buffer's worth submitted before iterating
    assert list(results) == [-i for i in range(5000)]


def test_remote_exception_keeps_its_type_and_traceback(executor):
    def boom(x):
        raise KeyError(f"missing {x}")

    fut = executor.submit(boom, 7)
    with pytest.raises(KeyError, match="missing 7") as info:
        fut.result(timeout=30)
    assert "boom" in str(info.value.__cause__)  # the remote traceback names the function


def test_worker_crash_surfaces_as_worker_lost(executor):
    import os

    fut = executor.submit(os._exit, 1)
    with pytest.raises(WorkerLost, match="status 1"):
        fut.result(timeout=60)


def test_functions_defined_in_main_travel_by_value(running_cluster, tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(
        textwrap.dedent(f"""
        from cluster import Executor

        OFFSET = 1000

        def shifted(x):
            return x + OFFSET

        class Point:
            def __init__(self, x):
                self.x = x

        if __name__ == "__main__":
            with Executor(zk={running_cluster.zk!r}, cluster={running_cluster.name!r}) as ex:
                print(sum(ex.map(shifted, range(10))))
                print(ex.submit(lambda p: p.x * 3, Point(5)).result())
    """)
    )
    res = subprocess.run(
        [PY, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=dict(running_cluster.env, PYTHONPATH=str(ROOT)),
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(sum(range(10)) + 10_000), "15"]


def test_shutdown_and_context_manager(running_cluster):
    with Executor(zk=running_cluster.zk, cluster=running_cluster.name) as ex:
        futures = [ex.submit(abs, -i) for i in range(50)]
    assert [f.result() for f in futures] == list(range(50))  # shutdown(wait=True) waited
    with pytest.raises(RuntimeError):
        ex.submit(abs, 1)


def test_cancelled_future_is_not_resolved(executor):
    import time

    futures = [executor.submit(time.sleep, 0.5) for _ in range(12)]
    last = futures[-1]
    assert last.cancel()
    cf.wait(futures[:-1], timeout=60)
    assert last.cancelled()


def test_a_new_lambda_per_call_does_not_grow_the_clusters_jobs_without_bound(local_cluster):
    """Each distinct function is a job; an executor that lives long and sees a new closure
    per call must close the idle ones, on the coordinator and on the agents alike."""
    from helpers import scrape, wait_for

    from cluster.client import executor as executor_module
    from cluster.runtime.zkserver import free_ports

    cport, aport = free_ports(2)
    coordinator = local_cluster.coordinator("--metrics-port", str(cport))
    local_cluster.agent("j1", 2, "--metrics-port", str(aport))
    local_cluster.wait_ready(coordinator, ["j1"])
    limit = executor_module.MAX_IDLE_JOBS
    with Executor(zk=local_cluster.zk, cluster=local_cluster.name) as ex:
        for k in range(3 * limit):
            assert ex.submit(lambda x, k=k: x + k, 1).result(timeout=30) == 1 + k
        wait_for(lambda: scrape(cport)["clusterd_jobs"] <= limit + 1, 10, what="the coordinator to end idle jobs")
        wait_for(lambda: scrape(aport)["clusterd_jobs"] <= limit + 1, 10, what="the agent to drop idle jobs")
