"""Jobs run in processes no other job has touched (agents/template.py, agents/worker.py
``bind``): what one job does to its workers, its environment, its directories and the
processes it starts ends with it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from helpers import PY, ROOT, assert_gone, wait_for

DIRTY = """
import json, os, subprocess, tempfile, time

json.dumps = lambda *args, **kwargs: "PATCHED"  # at import, as a careless library might


def dirty(x):
    os.environ["LEAK"] = "from the first job"
    with open(os.path.join(tempfile.gettempdir(), "leftover"), "w") as f:
        f.write("x")
    child = subprocess.Popen(["sleep", "600"], start_new_session=False)
    os.chdir("/")
    time.sleep(0.2)  # so that both workers take tasks
    return {"pid": os.getpid(), "child": child.pid, "tmp": tempfile.gettempdir()}
"""

PROBE = """
import json, os, tempfile


def look(x):
    tmp = tempfile.gettempdir()
    return {"pid": os.getpid(), "dumps": json.dumps([1]), "leak": os.environ.get("LEAK"), "cwd": os.getcwd(),
            "tmp": tmp, "tmp_files": os.listdir(tmp)}
"""


@pytest.fixture
def one_node(local_cluster):
    coordinator = local_cluster.coordinator()
    local_cluster.agent("iso", 2)
    local_cluster.wait_ready(coordinator, ["iso"])
    return local_cluster


def _submit(cluster, path, func: str, n: int) -> list[dict]:
    res = subprocess.run(
        [PY, "-m", "cluster.cli.main", "submit", f"{path}:{func}", "--range", "0", str(n)],
        capture_output=True,
        text=True,
        timeout=120,
        env=cluster.env,
        cwd=ROOT,
    )
    rows = [json.loads(line) for line in res.stdout.splitlines()]  # every line it prints is JSON
    assert res.returncode == 0 and all(r["ok"] for r in rows), (res.stderr, rows)
    return [r["result"] for r in rows]


def test_what_a_job_does_to_its_workers_ends_with_it(one_node, tmp_path):
    (tmp_path / "dirty.py").write_text(DIRTY)
    (tmp_path / "probe.py").write_text(PROBE)
    first = _submit(one_node, tmp_path / "dirty.py", "dirty", 8)
    workers = {r["pid"] for r in first}
    assert len(workers) == 2  # both workers ran it
    # The job is over: the processes its tasks started, and its directories, went with it.
    assert_gone([r["child"] for r in first])
    job_dirs = {os.path.dirname(r["tmp"]) for r in first}  # its temporary and working directories' home
    wait_for(lambda: not any(os.path.exists(path) for path in job_dirs), what="the job's directories to go")

    second = _submit(one_node, tmp_path / "probe.py", "look", 8)
    assert not workers & {r["pid"] for r in second}  # fresh processes, not the first job's
    for r in second:
        # Not "== []": tempfile.gettempdir() probes the directory with a short-lived file of a
        # random name, which the job's other worker may be listing at that moment.
        assert r["dumps"] == "[1]" and r["leak"] is None and "leftover" not in r["tmp_files"], r
        assert r["cwd"] != "/" and r["tmp"] not in {f["tmp"] for f in first}, r


def test_an_executor_keeps_its_workers_across_its_functions(one_node):
    """An Executor's functions are one job to its user: they share warm workers."""
    from cluster import Executor

    with Executor(zk=one_node.zk, cluster=one_node.name) as ex:
        first = set(ex.map(lambda x: os.getpid(), range(20)))
        second = set(ex.map(lambda x: (x, os.getpid())[1], range(20)))  # another function: another job
    assert first & second  # the same processes served both functions


def test_a_job_never_runs_on_the_workers_of_a_job_still_open(one_node, tmp_path):
    from cluster import Executor

    (tmp_path / "probe.py").write_text(PROBE)
    with Executor(zk=one_node.zk, cluster=one_node.name) as ex:
        mine = set(ex.map(lambda x: (os.environ.__setitem__("LEAK", "executor"), os.getpid())[1], range(20)))
        # The Executor's job stays open, its workers warm: another job must not use them.
        theirs = _submit(one_node, tmp_path / "probe.py", "look", 8)
        assert not mine & {r["pid"] for r in theirs}
        assert all(r["leak"] is None for r in theirs), theirs
        assert ex.submit(abs, -1).result(timeout=30) == 1  # and the Executor still gets workers
