"""Job ids and records: `clusterctl jobs`, `clusterctl job status|rm`, `Executor.job_id`,
against a real cluster and ZooKeeper."""

from __future__ import annotations

import getpass
import json
import re
import signal
import socket
import subprocess
import time

import pytest
from helpers import PY, ROOT, wait_for
from kazoo.client import KazooClient

from cluster import Executor, TaskStopped
from cluster.contract import layout

GATED = """
import pathlib, time

def gated(x):
    while x >= 10 and not pathlib.Path({gate!r}).exists():
        time.sleep(0.01)
    return x
"""


def job_id(stderr: str) -> int:
    found = re.search(r"clusterctl: job (\d+): ", stderr)
    assert found, stderr
    return int(found.group(1))


def submit_gated(cluster, tmp_path) -> tuple[subprocess.Popen, int]:
    """`clusterctl submit` of 30 tasks, the last 20 waiting for tmp_path/gate; and its job's id."""
    (tmp_path / "gated.py").write_text(GATED.format(gate=str(tmp_path / "gate")))
    proc = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "submit", f"{tmp_path / 'gated.py'}:gated", "--range", "0", "30"],
        env=cluster.env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, job_id(next(line for line in proc.stderr if line.startswith("clusterctl: job ")))


def jobs(cluster, *args: str) -> list[dict]:
    res = cluster.clusterctl("jobs", "--json", *args)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def job(cluster, number: int) -> dict:
    res = cluster.clusterctl("job", "status", str(number), "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_a_submitted_job_has_an_id_and_its_record_says_who_ran_what_and_how_it_ended(running_cluster):
    first = running_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "50")
    assert first.returncode == 0, first.stderr
    second = running_cluster.clusterctl("submit", "math:sqrt", "--inputs", "-", input='4\n"x"\n')
    assert second.returncode == 1
    a, b = job_id(first.stderr), job_id(second.stderr)
    assert b > a  # ids sort in the order jobs started
    record = job(running_cluster, a)
    assert record["state"] == "done" and (record["done"], record["failed"], record["total"]) == (50, 0, 50)
    assert record["owner"] == getpass.getuser() and record["host"] == socket.gethostname()
    assert record["function"] == "math:sqrt" and record["ended"] >= record["started"] > 0
    failed = job(running_cluster, b)
    assert failed["state"] == "failed" and (failed["done"], failed["failed"], failed["total"]) == (2, 1, 2)
    listed = {j["id"]: j for j in jobs(running_cluster, "--all")}
    assert listed[a] == record and listed[b] == failed
    assert a not in {j["id"] for j in jobs(running_cluster)}  # without --all: running jobs only


def test_a_running_job_shows_live_counts_and_is_lost_when_its_owner_is_killed(running_cluster, tmp_path):
    gate = tmp_path / "gate"
    proc, number = submit_gated(running_cluster, tmp_path)
    try:
        # Ten tasks end at once, the others wait for the gate: the leader's live counts show it.
        wait_for(
            lambda: [(j["id"], j["state"], j["done"]) for j in jobs(running_cluster)] == [(number, "running", 10)],
            30,
            what="the running job listed with 10 done",
        )
        assert job(running_cluster, number)["total"] == 30
        res = running_cluster.clusterctl("job", "rm", str(number))
        assert res.returncode == 2 and "is running" in res.stderr
        proc.send_signal(signal.SIGKILL)  # no chance to write how it ended
        proc.wait(10)
        # Its ZooKeeper session ends with it (10 s at most): the job is lost, not running for ever.
        wait_for(lambda: job(running_cluster, number)["state"] == "lost", 30, what="the job shown lost")
        assert [j["state"] for j in jobs(running_cluster) if j["id"] == number] == ["lost"]
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
    res = running_cluster.clusterctl("job", "rm", str(number))
    assert res.returncode == 0, res.stderr
    assert number not in {j["id"] for j in jobs(running_cluster, "--all")}


def test_an_executor_is_one_job_whose_record_counts_its_calls(running_cluster):
    with Executor(zk=running_cluster.zk, cluster=running_cluster.name) as ex:
        number = ex.job_id
        assert job(running_cluster, number)["state"] == "running"
        assert sum(ex.map(abs, range(-20, 0))) == 210
        with pytest.raises(ZeroDivisionError):
            ex.submit(divmod, 1, 0).result(timeout=30)
    record = job(running_cluster, number)
    assert record["state"] == "failed" and (record["done"], record["failed"], record["total"]) == (21, 1, 21)
    assert record["function"].startswith("Executor")
    with Executor(zk=running_cluster.zk, cluster=running_cluster.name) as ex:
        assert ex.job_id > number
        ex.submit(abs, 1).result(timeout=30)
    assert job(running_cluster, ex.job_id)["state"] == "done"


def test_old_records_are_removed_and_bad_input_is_one_clear_line(running_cluster):
    res = running_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "3")
    number = job_id(res.stderr)
    zk = KazooClient(hosts=running_cluster.zk)
    zk.start()
    try:
        folder = layout.jobs_path(running_cluster.name)
        zk.create(f"{folder}/{layout.job_node(999_999)}", b"\x00garbage")  # a record no version wrote
        zk.create(f"{folder}/stray", b"{}")
    finally:
        zk.stop()
        zk.close()
    res = running_cluster.clusterctl("jobs", "--all", "--json")
    assert res.returncode == 0 and number in {j["id"] for j in json.loads(res.stdout)}
    assert "2 job znodes are not readable records; skipped" in res.stderr
    for args, message in [
        (("job", "status", "123456"), "no job 123456"),
        (("job", "status", "abc"), "'abc' is not a job id"),
        (("job", "status", "999999"), "job 999999: its record is not readable"),
        (("job", "rm", "123456"), "no job 123456"),
        (("jobs", "--keep", "soon"), "--keep 'soon' is not a duration"),
    ]:
        res = running_cluster.clusterctl(*args)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    # Finished jobs are kept for --keep; a listing removes those past it.
    assert number in {j["id"] for j in jobs(running_cluster, "--all", "--keep", "1h")}
    assert number not in {j["id"] for j in jobs(running_cluster, "--all", "--keep", "0s")}
    assert running_cluster.clusterctl("job", "status", str(number)).returncode == 2


def test_job_cancel_from_anywhere_stops_a_submit_and_job_wait_says_how_it_ended(running_cluster, tmp_path):
    gate = tmp_path / "gate"
    proc, number = submit_gated(running_cluster, tmp_path)
    try:
        wait_for(lambda: [j["done"] for j in jobs(running_cluster)] == [10], 30, what="ten tasks done")
        res = running_cluster.clusterctl("job", "cancel", str(number))
        assert res.returncode == 0 and f"job {number} cancelled" in res.stdout, res.stderr
        assert proc.wait(30) == 130
        # Its tasks waited for a gate that never opened: they were stopped, not left running.
        running_cluster.wait_status(
            lambda s: s["jobs"] == 0 and s["workers"]["busy"] == 0, 30, what="the job's tasks stopped"
        )
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
    res = running_cluster.clusterctl("job", "wait", str(number), "--json")
    assert res.returncode == 130 and json.loads(res.stdout)["state"] == "cancelled"
    res = running_cluster.clusterctl("job", "cancel", str(number))
    assert res.returncode == 0 and "has ended already (cancelled)" in res.stdout


def test_cluster_jobs_from_python_cancel_an_executor_and_wait_for_it(running_cluster, monkeypatch):
    import cluster

    monkeypatch.setenv("CLUSTER_ZK", running_cluster.zk)
    monkeypatch.setenv("CLUSTER_NAME", running_cluster.name)
    ex = Executor()
    try:
        future = ex.submit(time.sleep, 600)
        wait_for(future.running, 30, what="the call to run")
        assert [j["id"] for j in cluster.jobs.list()] == [ex.job_id]
        assert cluster.jobs.cancel(ex.job_id)["state"] == "running"
        with pytest.raises(TaskStopped):
            future.result(timeout=30)
        with pytest.raises(RuntimeError):
            ex.submit(abs, 1)
    finally:
        ex.shutdown()
    final = cluster.jobs.wait(ex.job_id, timeout=30)
    assert final["state"] == "cancelled" and (final["done"], final["total"]) == (0, 1)
    with pytest.raises(cluster.jobs.NoSuchJob):
        cluster.jobs.status(123456)


def test_only_its_owner_may_cancel_a_job(running_cluster):
    zk = KazooClient(hosts=running_cluster.zk)
    zk.start()
    try:
        folder = layout.jobs_path(running_cluster.name)
        zk.create(folder, makepath=True)
        record = layout.JobRecord(
            owner="somebody-else", host="h", pid=1, function="f", state="running", total=1, started=1.0, version="0"
        )
        path = zk.create(f"{folder}/{layout.JOB_PREFIX}", record.to_bytes(), sequence=True)
    finally:
        zk.stop()
        zk.close()
    number = layout.job_id_of(path.rsplit("/", 1)[1])
    res = running_cluster.clusterctl("job", "cancel", str(number))
    assert res.returncode == 2 and f"job {number} belongs to somebody-else" in res.stderr
    res = running_cluster.clusterctl("job", "results", str(number))
    assert res.returncode == 2 and f"job {number} belongs to somebody-else" in res.stderr
    res = running_cluster.clusterctl("job", "wait", str(number), "--json")  # no owner attached: lost
    assert res.returncode == 1 and json.loads(res.stdout)["state"] == "lost"
