"""Task limits and cancellation: timeouts, memory limits, Future.cancel, job
cancellation with Ctrl-C, and `clusterctl drain`."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import subprocess
import time

import pytest
from helpers import PY, ROOT, wait_for

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


GATED = """
import pathlib, time

def gated(x):
    here = pathlib.Path({here!r})
    (here / f"started-{{x}}").touch()
    while not (here / "gate").exists():
        time.sleep(0.01)
    return x
"""


class StderrText:
    """All a child wrote to stderr so far: the progress bar redraws with \r, not lines."""

    def __init__(self, stream):
        import threading

        self.text = ""

        def pump():
            for chunk in iter(lambda: stream.read(1), ""):
                self.text += chunk

        self._thread = threading.Thread(target=pump, daemon=True)
        self._thread.start()

    def all(self, timeout: float) -> str:
        """Everything, once the child has closed its stderr."""
        self._thread.join(timeout)
        return self.text


def test_ctrl_c_cancels_what_has_not_started_and_writes_what_runs_to_its_end(running_cluster, tmp_path):
    (tmp_path / "gated.py").write_text(GATED.format(here=str(tmp_path)))
    proc = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "submit", f"{tmp_path / 'gated.py'}:gated", "--range", "0", "400", "--progress"],
        env=running_cluster.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = StderrText(proc.stderr)
    # Each of the four workers runs one task, and the bar shows the client knows it.
    wait_for(lambda: " 4 running " in err.text, 60, what="four tasks reported running")
    running = {int(p.name.split("-")[1]) for p in tmp_path.glob("started-*")}
    assert len(running) == 4
    proc.send_signal(signal.SIGINT)
    # What had not started is gone from the cluster, and the command waits for the rest.
    running_cluster.wait_status(lambda s: s["queued"] == 0 and s["running"] == 4, 30, what="the queued tasks cancelled")
    assert proc.poll() is None
    (tmp_path / "gate").touch()
    assert proc.wait(60) == 130
    rows = _rows(proc.stdout.read())
    assert {r["index"] for r in rows} == running and all(r["ok"] and r["result"] == r["index"] for r in rows)
    text = err.all(10)
    assert "cancelled after 4 of 400 tasks, 0 failed, 396 not run" in text and "Traceback" not in text
    assert {int(p.name.split("-")[1]) for p in tmp_path.glob("started-*")} == running  # nothing else ever ran
    running_cluster.wait_status(lambda s: s["jobs"] == 0 and s["workers"]["busy"] == 0, 10, what="the job to end")


@pytest.mark.parametrize("second", ["sigint", "sigterm"])
def test_a_second_ctrl_c_or_sigterm_stops_the_running_tasks_too(running_cluster, tmp_path, second):
    mod = tmp_path / "hogs.py"
    mod.write_text(HOGS)
    proc = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "submit", f"{mod}:hang", "--range", "0", "400"],
        env=running_cluster.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running_cluster.wait_status(lambda s: s["workers"]["busy"] == 4, 60, what="every worker busy")
    if second == "sigint":
        proc.send_signal(signal.SIGINT)
        running_cluster.wait_status(lambda s: s["queued"] == 0, 30, what="the queued tasks cancelled")
        assert proc.poll() is None  # waiting for the four that run (an hour each)
    proc.send_signal(signal.SIGINT if second == "sigint" else signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "cancelled after 0 of 400 tasks, 0 failed, 400 not run" in err and "Traceback" not in err
    # The cluster dropped the job and killed its workers (their tasks would run an hour),
    # and new work runs.
    running_cluster.wait_status(
        lambda s: s["jobs"] == 0 and s["queued"] == 0 and s["workers"]["busy"] == 0, 30, what="the job to be dropped"
    )
    res = running_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "4")
    assert res.returncode == 0, res.stderr


def test_submit_timeout_counts_from_the_start_of_each_task(local_cluster):
    coordinator = local_cluster.coordinator()
    local_cluster.agent("one", 1)
    local_cluster.wait_ready(coordinator, ["one"])
    # One worker runs both, one after the other: the second starts a second after both
    # were sent. Counted from the submit, it would be killed half a second before its end.
    res = local_cluster.clusterctl("submit", "time:sleep", "--inputs", "-", "--timeout", "1.5", input="1\n1\n")
    assert res.returncode == 0, res.stderr
    assert [r["ok"] for r in _rows(res.stdout)] == [True, True]
    res = local_cluster.clusterctl("submit", "time:sleep", "--inputs", "-", "--timeout", "0.5", input="1\n")
    assert res.returncode == 1 and "TaskTimeout" in _rows(res.stdout)[0]["error"]


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
