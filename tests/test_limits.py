"""Task limits and cancellation: timeouts, memory limits, Future.cancel, job
cancellation with Ctrl-C, and `clusterctl drain`."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import subprocess
import time

import pytest
from helpers import PY, ROOT, LineReader, wait_for

from cluster import Executor
from cluster.contract.payload import TaskTimeout

HOGS = """
import time

def hang(x):
    time.sleep(3600)

def eat(mib):
    block = bytearray(mib * 2**20)
    time.sleep(5)
    return len(block)

def nap(x):
    time.sleep(0.3)
    return x
"""


def _rows(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_task_past_its_timeout_fails_with_task_timeout_and_frees_its_worker(running_cluster, tmp_path):
    mod = tmp_path / "hogs.py"
    mod.write_text(HOGS)
    res = running_cluster.clusterctl("submit", f"{mod}:hang", "--range", "0", "2", "--timeout", "1")
    assert res.returncode == 1, res.stderr
    rows = _rows(res.stdout)
    assert len(rows) == 2 and all(r["error"].startswith("TaskTimeout: task ran longer than its 1 s") for r in rows)
    # The workers were replaced and take work again.
    res = running_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "8")
    assert res.returncode == 0, res.stderr


def test_a_worker_over_its_memory_limit_is_killed_with_a_clear_cause(running_cluster, tmp_path):
    mod = tmp_path / "hogs.py"
    mod.write_text(HOGS)
    res = running_cluster.clusterctl(
        "submit", f"{mod}:eat", "--inputs", "-", "--max-memory", "200M", "--retries", "1", input="400\n10\n"
    )
    assert res.returncode == 1, res.stderr
    big, small = sorted(_rows(res.stdout), key=lambda r: r["index"])
    assert big["error"].startswith("WorkerLost: worker exceeded the task memory limit (")
    assert "> 200 MiB" in big["error"]
    assert small == {"index": 1, "ok": True, "result": 10 * 2**20}


def test_executor_timeout_and_cancel(running_cluster):
    with Executor(zk=running_cluster.zk, cluster=running_cluster.name, timeout=1) as ex:
        with pytest.raises(TaskTimeout):
            ex.submit(time.sleep, 60).result(timeout=60)
    with Executor(zk=running_cluster.zk, cluster=running_cluster.name) as ex:
        futures = [ex.submit(time.sleep, 0.3) for _ in range(12)]
        assert all(f.cancel() for f in futures[6:])
        done, _ = cf.wait(futures[:6], timeout=60)
        assert len(done) == 6 and all(f.cancelled() for f in futures[6:])
        assert ex.submit(abs, -3).result(timeout=30) == 3  # the window slots came back


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_cancels_the_job_on_the_cluster_and_summarises(running_cluster, tmp_path, sig):
    mod = tmp_path / "hogs.py"
    mod.write_text(HOGS)
    proc = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "submit", f"{mod}:nap", "--range", "0", "400"],
        env=running_cluster.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = LineReader(proc.stdout)
    lines.next(60)  # work is flowing
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "cancelled after" in err and "Traceback" not in err
    # The cluster dropped the job: no job, nothing queued, no worker busy (its 400 tasks
    # of 0.3 s would keep the four workers busy for 30 s), and new work runs.
    running_cluster.wait_status(
        lambda s: s["jobs"] == 0 and s["queued"] == 0 and s["workers"]["busy"] == 0, 10, what="the job to be dropped"
    )
    res = running_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "4")
    assert res.returncode == 0, res.stderr


def test_clusterctl_drain_waits_for_the_agent_to_leave(running_cluster):
    res = running_cluster.clusterctl("drain", "nope")
    assert res.returncode == 2 and "no agent 'nope'" in res.stderr
    res = running_cluster.clusterctl("drain", "a1", "--wait", "--timeout", "60")
    assert res.returncode == 0, res.stderr
    assert "a1" not in running_cluster.agents()
    a1 = next(p for p in running_cluster.procs if p.name == "a1")
    assert a1.popen.wait(30) == 0
    # A restarted agent with the same id rejoins (the old request is gone) and gets work.
    running_cluster.agent("a1", 2, name="a1-again")
    wait_for(lambda: "a1" in running_cluster.agents(), 20, what="a1 to rejoin")
    time.sleep(1.0)
    assert "a1" in running_cluster.agents()  # it did not drain again straight away


def test_oversized_arguments_and_results_get_clear_errors(local_cluster):
    limit = 1 << 20
    local_cluster.extra_env.update(CLUSTER_COORDINATOR_MAX_PAYLOAD=str(limit), CLUSTER_AGENT_MAX_PAYLOAD=str(limit))
    coordinator = local_cluster.coordinator()
    local_cluster.agent("a1", 1)
    local_cluster.wait_ready(coordinator, ["a1"])
    from cluster.contract.payload import PayloadTooLarge, TaskError

    with Executor(zk=local_cluster.zk, cluster=local_cluster.name) as ex:
        with pytest.raises(PayloadTooLarge, match="at most 1.0 MiB"):
            ex.submit(len, b"x" * (2 << 20))
        with pytest.raises(TaskError, match="ResultTooLarge: the result is 3.0 MiB"):
            ex.submit(bytes, 3 << 20).result(timeout=60)
        assert ex.submit(len, b"x" * 1000).result(timeout=60) == 1000  # the connection survived
    big = json.dumps("y" * (2 << 20))
    res = local_cluster.clusterctl("submit", "builtins:len", "--inputs", "-", "--ordered", input=f'"ok"\n{big}\n')
    assert res.returncode == 1, res.stderr
    ok, refused = _rows(res.stdout)
    assert ok == {"index": 0, "ok": True, "result": 2}
    assert refused["error"].startswith("PayloadTooLarge: task 1: arguments are 2.0 MiB")
