"""Tasks' stdout and stderr reach their client: captured per task on the worker (file
descriptors, so subprocesses' too), bounded, live, and all of it before the result."""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers import PY, ROOT, wait_for

from cluster import Executor
from cluster.client.executor import TaskFuture

KEEP = 64 * 1024


@pytest.fixture
def one_worker(local_cluster):
    """One agent with one worker: every task runs in the same process, one after another."""
    coordinator = local_cluster.coordinator()
    local_cluster.agent("a1", 1)
    local_cluster.wait_ready(coordinator, ["a1"])
    return local_cluster


@pytest.fixture
def executor(one_worker):
    ex = Executor(zk=one_worker.zk, cluster=one_worker.name)
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


def test_print_and_a_subprocess_are_captured_per_task_and_stderr_apart(executor):
    def chatty(i):
        import os
        import subprocess
        import sys

        print(f"print {i}")
        sys.stdout.flush()
        subprocess.run(["sh", "-c", f"echo sub {i}; echo sub-err {i} >&2"], check=True)
        print(f"warn {i}", file=sys.stderr)
        os.write(1, f"fd {i}\n".encode())  # as a C extension writes
        return os.getpid()

    first = executor.submit(chatty, 1)
    pid = first.result(timeout=60)
    second = executor.submit(chatty, 2)
    assert second.result(timeout=60) == pid  # the same worker ran both
    assert first.output() == {"stdout": "print 1\nsub 1\nfd 1\n", "stderr": "sub-err 1\nwarn 1\n"}
    assert second.output() == {"stdout": "print 2\nsub 2\nfd 2\n", "stderr": "sub-err 2\nwarn 2\n"}


def test_a_task_that_prints_nothing_has_empty_output_and_a_failing_one_keeps_its_own(executor):
    def fails():
        print("about to fail")
        raise ValueError("no")

    quiet = executor.submit(pow, 2, 3)
    assert quiet.result(timeout=60) == 8
    assert quiet.output() == {"stdout": "", "stderr": ""}
    loud = executor.submit(fails)
    with pytest.raises(ValueError):
        loud.result(timeout=60)
    assert loud.output()["stdout"] == "about to fail\n"


def test_a_task_printing_100_mb_is_cut_to_its_head_and_the_worker_carries_on(executor):
    def flood():
        import os
        import sys

        block = b"y" * (1 << 20)
        for _ in range(100):
            os.write(1, block)
        print("z" * (1 << 20), file=sys.stderr)  # no newline until the end
        return os.getpid()

    def pid():
        import os

        print("after")
        return os.getpid()

    big = executor.submit(flood)
    worker = big.result(timeout=120)
    out = big.output()
    assert out["stdout"] == "y" * KEEP + f"\n[clusterd: {100 * (1 << 20) - KEEP} more bytes not kept]\n"
    assert out["stderr"] == "z" * KEEP + f"\n[clusterd: {(1 << 20) + 1 - KEEP} more bytes not kept]\n"
    after = executor.submit(pid)
    assert after.result(timeout=60) == worker  # no restart
    assert after.output() == {"stdout": "after\n", "stderr": ""}


def test_output_is_live_while_the_task_runs(executor, tmp_path):
    gate = tmp_path / "gate"

    def waits(path):
        import os
        import time

        print("waiting for the gate", flush=True)
        while not os.path.exists(path):
            time.sleep(0.02)
        print("through")
        return 1

    future: TaskFuture = executor.submit(waits, str(gate))
    wait_for(lambda: future.output()["stdout"] == "waiting for the gate\n", 30, what="the first line, live")
    assert not future.done()
    gate.write_text("open")
    assert future.result(timeout=60) == 1
    assert future.output()["stdout"] == "waiting for the gate\nthrough\n"


def test_submit_adds_output_fields_and_show_output_prints_prefixed_lines(running_cluster, tmp_path):
    script = tmp_path / "talk.py"
    script.write_text(
        "import sys\n"
        "def f(x):\n"
        "    print(f'out {x}')\n"
        "    print(f'err {x}', file=sys.stderr)\n"
        "    if x == 2:\n"
        "        sys.stdout.write('no newline')\n"
        "    return x\n"
        "def quiet(x):\n"
        "    return x\n"
    )
    res = running_cluster.clusterctl("submit", f"{script}:f", "--range", "0", "3", "--ordered", "--show-output")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert rows[0] == {"index": 0, "ok": True, "result": 0, "stdout": "out 0\n", "stderr": "err 0\n"}
    assert rows[2]["stdout"] == "out 2\nno newline"
    lines = res.stderr.splitlines()
    for x in range(3):
        assert f"[task {x}] out {x}" in lines and f"[task {x}] err {x}" in lines
    assert "[task 2] no newline" in lines
    res = running_cluster.clusterctl("submit", f"{script}:quiet", "--range", "0", "2", "--ordered")
    assert res.returncode == 0, res.stderr
    assert [json.loads(line) for line in res.stdout.splitlines()] == [
        {"index": 0, "ok": True, "result": 0},
        {"index": 1, "ok": True, "result": 1},
    ]
    assert "[task" not in res.stderr


def test_show_output_prints_a_running_tasks_lines_before_it_ends(one_worker, tmp_path):
    gate, log = tmp_path / "gate", tmp_path / "stderr"
    script = tmp_path / "gated.py"
    script.write_text(
        "import os, time\n"
        "def f(path):\n"
        "    print('started', flush=True)\n"
        "    while not os.path.exists(path):\n"
        "        time.sleep(0.02)\n"
        "    return 1\n"
    )
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(json.dumps(str(gate)) + "\n")
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [PY, "-m", "cluster.cli.main", "submit", f"{script}:f", "--inputs", str(inputs), "--show-output"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
            env=one_worker.env,
        )
        try:
            wait_for(lambda: "[task 0] started\n" in log.read_text(), 30, what="the task's line on stderr")
            assert proc.poll() is None
            gate.write_text("open")
            stdout, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log.read_text()
    assert json.loads(stdout) == {"index": 0, "ok": True, "result": 1, "stdout": "started\n"}
