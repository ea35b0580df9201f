"""Short tasks travel to workers several per message (agents/local_queue.py, LocalQueue.assign). These
tests make sure that costs nothing in correctness: a death, a timeout or a slow task in
the middle of a pipeline is charged to the one task that caused it, and the tasks queued
behind it neither fail nor wait for it.

Each test warms a job up with 2 ms tasks (so the agent knows them as short), then submits
a burst of them with the culprit third: the agent's first worker gets task 0, the culprit
and the tasks right behind it in one message, the second worker task 1 and the ones after.
When the culprit starts, task 0 has run and its result still waits in the worker (results
of close tasks go back together), so blaming the oldest task instead of the one running
would fail task 0."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
from helpers import PY, ROOT
from test_observability import scrape

from cluster.runtime.zkserver import free_ports

BURST = 40


def _run(cluster, tmp_path, culprit: str, options: str) -> list:
    """Outcomes in completion order: [index, "ok" | error type, seconds after the burst
    was submitted] per task of the burst."""
    burst = [0, 1, "culprit", *range(2, BURST)]
    script = tmp_path / "burst.py"
    script.write_text(
        textwrap.dedent(f"""
        import concurrent.futures, json, os, time
        from cluster import Executor

        def step(i):
            if i == "culprit":
                {culprit}
            time.sleep(0.002)
            return i

        BURST = {burst!r}

        if __name__ == "__main__":
            with Executor(zk={cluster.zk!r}, cluster={cluster.name!r}, {options}) as ex:
                for _ in range(3):
                    assert [f.result() for f in [ex.submit(step, i) for i in range(50)]] == list(range(50))
                start = time.monotonic()
                futures = {{ex.submit(step, i): i for i in BURST}}
                done = []
                for f in concurrent.futures.as_completed(futures):
                    error = f.exception()
                    done.append([futures[f], "ok" if error is None else type(error).__name__,
                                 time.monotonic() - start])
                print(json.dumps(done))
    """)
    )
    res = subprocess.run(
        [PY, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=dict(cluster.env, PYTHONPATH=str(ROOT)),
    )
    assert res.returncode == 0, res.stderr
    done = json.loads(res.stdout)
    assert sorted(map(str, (d[0] for d in done))) == sorted(map(str, burst))  # each result once
    return done


@pytest.fixture
def one_agent(local_cluster):
    """One agent with two workers: the tasks behind a culprit share its worker or the other one."""
    port = free_ports(1)[0]
    coordinator = local_cluster.coordinator()
    local_cluster.agent("p1", 2, "--metrics-port", str(port))
    local_cluster.wait_ready(coordinator, ["p1"])
    local_cluster.metrics_port = port
    return local_cluster


def _pipelined(cluster) -> dict[str, float]:
    metrics = scrape(cluster.metrics_port)
    tasks = sum(v for k, v in metrics.items() if k.startswith("clusterd_tasks_total{"))
    # The premise of these tests: most messages to the workers carried several tasks.
    assert metrics["clusterd_worker_messages_total"] < tasks / 2, metrics
    return metrics


def test_a_death_in_a_pipeline_fails_only_the_task_that_ran(one_agent, tmp_path):
    done = _run(one_agent, tmp_path, "os._exit(3)", "retries=0")
    # retries=0: a task wrongly charged with the death would fail too.
    assert [d[:2] for d in done if d[1] != "ok"] == [["culprit", "WorkerLost"]]
    _pipelined(one_agent)


def test_a_timeout_in_a_pipeline_fails_only_the_task_that_hung(one_agent, tmp_path):
    done = _run(one_agent, tmp_path, "time.sleep(30)", "retries=0, timeout=1")
    assert [d[:2] for d in done if d[1] != "ok"] == [["culprit", "TaskTimeout"]]
    _pipelined(one_agent)


def test_tasks_queued_behind_a_slow_task_move_to_the_idle_worker(one_agent, tmp_path):
    done = _run(one_agent, tmp_path, "time.sleep(3)", "retries=0")
    assert all(outcome == "ok" for _, outcome, _ in done)
    # Everything else finishes while the slow task runs its 3 s, task 0 included: it ran
    # just before the slow task on the same worker, and its result must not wait for it.
    assert done[-1][0] == "culprit", done
    assert max(seconds for index, _, seconds in done[:-1]) < 1.5 <= done[-1][2], done
    assert _pipelined(one_agent)["clusterd_tasks_moved_total"] >= 1


def test_garbage_written_into_the_channel_fails_only_the_task_that_wrote_it(one_agent, tmp_path):
    # User code can write to any descriptor its worker has, the agent's channel included
    # (its one socket). The agent must neither crash nor lose the tasks queued behind.
    culprit = (
        "links = {fd: os.path.realpath(f'/proc/self/fd/{fd}') for fd in os.listdir('/proc/self/fd')}; "
        "[os.write(int(fd), b'\\xff' * 64) for fd, target in links.items() if 'socket:' in target]; "
        "time.sleep(5)"
    )
    done = _run(one_agent, tmp_path, culprit, "retries=0")
    assert [d[:2] for d in done if d[1] != "ok"] == [["culprit", "WorkerLost"]]
    assert max(seconds for _, _, seconds in done) < 4, "the culprit's worker was killed, not waited for"


def test_large_arguments_go_a_few_per_message_and_small_ones_together():
    """A worker starts on a message only once all of it has arrived: a pipeline of 1 MiB
    arguments in one RunTasks would make it wait for sixteen of them."""
    from agents.local_queue import MESSAGE_BYTES, QueuedTask, worker_messages

    small = [QueuedTask("a", i, 1, b"x" * 100) for i in range(10)]
    large = [QueuedTask("b", i, 1, b"x" * (1 << 20)) for i in range(3)]
    mixed = [QueuedTask("c", i, 1, b"x" * (MESSAGE_BYTES // 3)) for i in range(7)]
    runs = [(job, [t.index for t in tasks]) for job, tasks in worker_messages(small + large + mixed)]
    assert runs == [
        ("a", list(range(10))),
        ("b", [0]),
        ("b", [1]),
        ("b", [2]),
        ("c", [0, 1, 2]),
        ("c", [3, 4, 5]),
        ("c", [6]),
    ]


def test_a_long_job_after_short_ones_spreads_over_the_agents(local_cluster, tmp_path):
    """Agents that ran short tasks hold deep queues (prefetch_short), and the credit they
    announced says so. A job of long tasks sent on that credit must still spread: the
    agent that got too many gives back what it cannot start soon, at once, whether the
    job is new or was idle and comes back."""
    coordinator = local_cluster.coordinator()
    for node in ("s1", "s2"):
        local_cluster.agent(node, 1)
    local_cluster.wait_ready(coordinator, ["s1", "s2"])
    script = tmp_path / "spread.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, os, time
        from cluster import Executor

        def quick(i):
            return i

        def slow(i, first_takes):
            time.sleep(first_takes if i == 0 else 0.3)
            return os.environ["CLUSTERD_NODE_ID"]  # the agent that ran it

        if __name__ == "__main__":
            with Executor(zk={local_cluster.zk!r}, cluster={local_cluster.name!r}) as ex:
                runs = []
                for first_takes in (0.3, 4.0):  # a new job of long tasks; the same job, idle meanwhile
                    for _ in range(3):  # both agents learn the quick job's tasks are short: deep queues
                        assert list(ex.map(quick, range(300))) == list(range(300))
                    time.sleep(1.2)  # the long job is no longer new: the agents go deep again
                    runs.append(list(ex.map(slow, range(12), [first_takes] * 12)))
                print(json.dumps(runs))
    """)
    )
    res = subprocess.run(
        [PY, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=dict(local_cluster.env, PYTHONPATH=str(ROOT)),
    )
    assert res.returncode == 0, res.stderr
    new, again = json.loads(res.stdout)
    # 12 tasks of 0.3 s on two agents of one worker each: 6 and 6 when spread, 11 and 1 when
    # the first agent keeps what the deep credit brought it.
    assert len(set(new)) == 2 and min(new.count(node) for node in set(new)) >= 4, new
    # Task 0 takes 4 s: its agent gives the others back before it finishes, not after, and
    # the other agent runs them meanwhile (2.7 s of work). Task 0's agent keeps what its
    # shallow queue holds, 2 tasks; given back only after task 0, it ran 6 of the 12.
    assert again.count(again[0]) <= 4, again
