"""Detached jobs (`clusterctl submit --detach`): a holder process runs them from a spool,
with no terminal, and resumes them after it is killed. Real cluster, real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from helpers import PY, ROOT, LocalCluster, wait_for

import cluster
from cluster.runtime.zkserver import ZooKeeperServer

# Each run of a task leaves a file (index-pid-time): a test counts how often each index ran.
GATED = """
import os, pathlib, time

def gated(x):
    here = pathlib.Path({here!r})
    (here / "runs" / f"{{x}}-{{os.getpid()}}-{{time.monotonic_ns()}}").touch()
    while x >= 10 and not (here / "gate").exists():
        time.sleep(0.01)
    return x * x
"""


@pytest.fixture(autouse=True)
def no_holder_left(tmp_path):
    """A test that fails midway must not leave its holders running: they are found by
    their spool, which is in this test's directory."""
    yield
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "cluster.client.holder" in cmdline and any(arg.startswith(str(tmp_path)) for arg in cmdline):
            proc.kill()


def detach(cluster, tmp_path, tasks: int) -> int:
    (tmp_path / "runs").mkdir()
    (tmp_path / "gated.py").write_text(GATED.format(here=str(tmp_path)))
    res = cluster.clusterctl(
        "submit", f"{tmp_path / 'gated.py'}:gated", "--range", "0", str(tasks), "--detach", "--spool", str(tmp_path)
    )
    assert res.returncode == 0, res.stderr
    return int(res.stdout.strip())


def results(cluster, number: int, *args: str) -> list[dict]:
    res = cluster.clusterctl("job", "results", str(number), *args)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def status(cluster, number: int) -> dict:
    res = cluster.clusterctl("job", "status", str(number), "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def runs(tmp_path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for run in (tmp_path / "runs").iterdir():
        index = int(run.name.split("-")[0])
        counts[index] = counts.get(index, 0) + 1
    return counts


def test_a_detached_job_outlives_the_shell_that_submitted_it(running_cluster, tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "gated.py").write_text(GATED.format(here=str(tmp_path)))
    # A shell that submits, then stays: its whole process group is killed, as a closed
    # terminal or a lost SSH session would.
    shell = subprocess.Popen(
        [
            "bash",
            "-c",
            f"{PY} -m cluster.cli.main submit {tmp_path / 'gated.py'}:gated "
            f"--range 0 40 --detach --spool {tmp_path}; exec sleep 600",
        ],
        env=running_cluster.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    number = int(shell.stdout.readline())
    os.killpg(shell.pid, signal.SIGKILL)
    shell.wait(10)
    wait_for(lambda: len(results(running_cluster, number)) == 10, 30, what="the ten ungated tasks' results")
    assert status(running_cluster, number)["state"] == "running"
    (tmp_path / "gate").touch()
    res = running_cluster.clusterctl("job", "wait", str(number), "--timeout", "60")
    assert res.returncode == 0, res.stderr
    got = results(running_cluster, number, "--ordered")
    assert [r["index"] for r in got] == list(range(40)) and all(r["result"] == r["index"] ** 2 for r in got)
    final = status(running_cluster, number)
    assert final["state"] == "done" and (final["done"], final["failed"], final["total"]) == (40, 0, 40)


def test_a_killed_holder_resumes_and_only_tasks_without_a_result_run_again(running_cluster, tmp_path):
    number = detach(running_cluster, tmp_path, 30)
    wait_for(lambda: len(results(running_cluster, number)) == 10, 30, what="the ten ungated tasks' results")
    holder = psutil.Process(status(running_cluster, number)["pid"])
    holder.kill()  # SIGKILL: no chance to say anything
    holder.wait(10)
    # Its ZooKeeper session ends within 10 s: the job is lost, and any `job` command on
    # this host starts a holder for it again.
    wait_for(lambda: status(running_cluster, number)["pid"] != holder.pid, 30, what="a new holder")
    (tmp_path / "gate").touch()
    res = running_cluster.clusterctl("job", "wait", str(number), "--timeout", "90")
    assert res.returncode == 0, res.stderr
    got = results(running_cluster, number)
    assert sorted(r["index"] for r in got) == list(range(30))  # every result exactly once
    counts = runs(tmp_path)
    assert all(counts[i] == 1 for i in range(10))  # those with a result never ran again
    assert status(running_cluster, number)["state"] == "done"


def test_detached_results_follow_and_bad_spools_are_clear_errors(running_cluster, tmp_path):
    number = detach(running_cluster, tmp_path, 20)
    follow = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "job", "results", str(number), "--follow", "--failed"],
        env=running_cluster.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    (tmp_path / "gate").touch()
    out, err = follow.communicate(timeout=60)
    assert follow.returncode == 0 and out == "", err  # no task failed; --follow ended with the job
    res = running_cluster.clusterctl("job", "results", str(number), "--ordered")
    assert [json.loads(line)["index"] for line in res.stdout.splitlines()] == list(range(20))
    from_python = cluster.jobs.results(number, zk=running_cluster.zk, cluster=running_cluster.name)
    assert sorted((r["index"], r["ok"], r["result"]) for r in from_python) == [(i, True, i * i) for i in range(20)]
    # A spool that is not one: one clear line, exit 2.
    spool = next(tmp_path.glob("*.db"))
    spool.write_bytes(b"not a database" * 100)
    res = running_cluster.clusterctl("job", "results", str(number))
    assert res.returncode == 2 and "is not a job spool" in res.stderr and "Traceback" not in res.stderr
    res = running_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "3", "--detach", "--spool", "/proc/nope")
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_a_leader_failover_during_a_detached_job_loses_and_duplicates_nothing(local_cluster, tmp_path):
    fast = ("--zk-session-timeout", "2")  # the dead leader is replaced in seconds
    coordinators = [local_cluster.coordinator(*fast, name=f"c{i}") for i in range(2)]
    local_cluster.agent("a1", 2, *fast)
    local_cluster.agent("a2", 2, *fast)
    wait_for(lambda: local_cluster.leader() is not None, 20, what="a leader")
    leader = next(c for c in coordinators if c.pid == local_cluster.leader().pid)
    local_cluster.wait_ready(leader, ["a1", "a2"])
    (tmp_path / "work.py").write_text("import time\n\ndef square(x):\n    time.sleep(0.002)\n    return x * x\n")
    res = local_cluster.clusterctl(
        "submit", f"{tmp_path / 'work.py'}:square", "--range", "0", "3000", "--detach", "--spool", str(tmp_path)
    )
    assert res.returncode == 0, res.stderr
    number = int(res.stdout)
    wait_for(lambda: len(results(local_cluster, number)) >= 600, 60, what="a fifth of the results")
    leader.signal(signal.SIGKILL)
    wait_for(
        lambda: (rec := local_cluster.leader()) is not None and rec.pid != leader.pid, 30, what="the standby to lead"
    )
    res = local_cluster.clusterctl("job", "wait", str(number), "--timeout", "120")
    assert res.returncode == 0, res.stderr
    got = results(local_cluster, number, "--ordered")
    assert [r["index"] for r in got] == list(range(3000)) and all(r["result"] == r["index"] ** 2 for r in got)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs as a full disk needs root")
def test_a_full_disk_fails_the_detach_clearly_and_leaves_no_job(running_cluster, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    try:
        inputs = "".join(f'"{"x" * 1000}{i}"\n' for i in range(2000))  # 2 MB of inputs for 256 KiB
        res = running_cluster.clusterctl(
            "submit", "builtins:len", "--inputs", "-", "--detach", "--spool", str(disk), input=inputs
        )
        assert res.returncode == 2 and "cannot write the spool" in res.stderr and "Traceback" not in res.stderr
        assert list(disk.iterdir()) == []  # no partial spool
        listed = running_cluster.clusterctl("jobs", "--all", "--json")
        assert json.loads(listed.stdout) == []  # and no job
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_detached_jobs_task_output_is_kept_in_its_spool_and_shown_by_job_logs(running_cluster, tmp_path):
    (tmp_path / "talk.py").write_text(
        "import subprocess, sys\n\n"
        "def talk(x):\n"
        "    print(f'hello {x}')\n"
        "    print(f'oops {x}', file=sys.stderr)\n"
        "    subprocess.run(['echo', f'child {x}'], check=True)\n"
        "    return x\n"
    )
    res = running_cluster.clusterctl(
        "submit", f"{tmp_path / 'talk.py'}:talk", "--range", "0", "5", "--detach", "--spool", str(tmp_path)
    )
    number = int(res.stdout)
    assert running_cluster.clusterctl("job", "wait", str(number), "--timeout", "60").returncode == 0
    res = running_cluster.clusterctl("job", "logs", str(number))
    assert res.returncode == 0, res.stderr
    lines = set(res.stdout.splitlines())
    for x in range(5):
        assert {f"[task {x}] hello {x}", f"[task {x}] child {x}", f"[task {x} err] oops {x}"} <= lines
    res = running_cluster.clusterctl("job", "logs", str(number), "--task", "3")
    assert sorted(res.stdout.splitlines()) == ["[task 3 err] oops 3", "[task 3] child 3", "[task 3] hello 3"]
    # Removing the job removes its spool and the files beside it.
    spool = Path(status(running_cluster, number)["spool"])
    beside = [spool.with_suffix(".log"), spool.with_suffix(".lock")]
    assert spool.is_file() and all(path.exists() for path in beside)
    assert running_cluster.clusterctl("job", "rm", str(number)).returncode == 0
    assert not any(path.exists() for path in [spool, *beside])


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"),
    reason="a second host is a network namespace (root, iproute2) that cannot see the spool (unshare)",
)
def test_from_a_second_host_jobs_lists_the_job_and_results_stream_from_its_holder(netns, tmp_path, cluster_name):
    name, host = netns["name"], netns["host"]
    with ZooKeeperServer(host=host, tick_time=500) as zk:
        cluster = LocalCluster(zk.connect_string, cluster_name, tmp_path)
        try:
            coordinator = cluster._start(
                "coordinator", [PY, "-m", "cluster.cli.main", "coordinator", "--bind", f"tcp://{host}:0"]
            )
            cluster.agent("a1", 2)
            cluster.wait_ready(coordinator, ["a1"])
            spool = tmp_path / "spool"
            (tmp_path / "gated.py").write_text(GATED.format(here=str(tmp_path)))
            (tmp_path / "runs").mkdir()
            res = cluster.clusterctl(
                "submit", f"{tmp_path / 'gated.py'}:gated", "--range", "0", "30", "--detach", "--spool", str(spool)
            )
            assert res.returncode == 0, res.stderr
            number = int(res.stdout)

            def elsewhere(*args: str, **kwargs) -> subprocess.Popen:
                # The other host: its own network, and the spool's folder hidden under an empty tmpfs.
                script = f"mount -t tmpfs none {spool} && exec {PY} -m cluster.cli.main {' '.join(args)}"
                return subprocess.Popen(
                    ["ip", "netns", "exec", name, "unshare", "--mount", "sh", "-c", script],
                    env=cluster.env,
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    **kwargs,
                )

            listing = elsewhere("jobs", "--json")
            out, err = listing.communicate(timeout=60)
            assert listing.returncode == 0, err
            assert [(j["id"], j["state"]) for j in json.loads(out)] == [(number, "running")]
            follow = elsewhere("job", "results", str(number), "--follow", "--ordered")
            wait_for(lambda: len(results(cluster, number)) == 10, 30, what="the ungated results")
            (tmp_path / "gate").touch()
            out, err = follow.communicate(timeout=60)
            assert follow.returncode == 0, err
            got = [json.loads(line) for line in out.splitlines()]
            assert [r["index"] for r in got] == list(range(30)) and all(r["result"] == r["index"] ** 2 for r in got)

            # Once the job has ended and its holder is gone, its owner's spool service serves it.
            ended = status(cluster, number)
            assert ended["state"] == "done"
            wait_for(lambda: not psutil.pid_exists(ended["pid"]), 30, what="the holder to exit")
            later = elsewhere("job", "results", str(number), "--ordered")
            out, err = later.communicate(timeout=60)
            assert later.returncode == 0, err
            assert [json.loads(line)["result"] for line in out.splitlines()] == [i * i for i in range(30)]
        finally:
            cluster.stop()
