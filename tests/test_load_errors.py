"""A function a node cannot load is the job's error on that node, not each task's: the node
refuses the job, its tasks run elsewhere, and a job that no node can load stops at once."""

from __future__ import annotations

import collections
import json
import os
import pickle

import pytest
from helpers import ROOT, wait_for

import cluster
from cluster.contract import payload, wire
from cluster.coordinator.scheduler import Scheduler

# ------------------------------------------------------------------ the pieces


def test_a_worker_says_its_function_does_not_load_only_to_an_agent_that_asks():
    from agents import worker

    def item(**options) -> worker.Item:
        blob = payload.pack_reference("math", "nosuch")
        return worker.Item("j", 0, 1, 0, payload.digest(blob), options, blob, payload.pack_args((3,), {}))

    status, body = worker.run_task(collections.OrderedDict(), item(**{wire.LOAD_FAILURES: True}))
    assert status == wire.LOAD_FAILED
    error = payload.load_error(body)
    assert (error["type"], error["message"]) == ("AttributeError", "module 'math' has no function 'nosuch'")
    status, _ = worker.run_task(collections.OrderedDict(), item())  # an agent of an earlier release
    assert status == wire.ERROR


def test_a_refusing_node_gets_no_more_of_the_job_and_what_it_held_runs_elsewhere():
    s = Scheduler(max_batch=100)
    job = s.add_job("j", b"client", b"fn", "d", {}, 0.0)
    s.add_tasks(job, list(range(6)), tuple(b"a" for _ in range(6)))
    s.agent_up("a", 2, 3, [])
    (batch,) = s.plan()
    assert batch.node_id == "a" and len(batch.tasks) == 3
    assert s.refuse("a", "j", ["a", "ImportError", "no", ""]) is True
    assert s.refuse("a", "j", ["a", "ImportError", "no", ""]) is False  # said once
    assert s.queued == 6 and not s.agents["a"].in_flight
    assert [t.node for t in job.tasks.values()] == [None] * 6
    assert s.plan() == []  # nothing more for it
    s.agent_up("b", 2, 6, [])
    (batch,) = s.plan()
    assert batch.node_id == "b" and sorted(i for i, _, _ in batch.tasks) == list(range(6))
    assert all(attempt == (2 if i < 3 else 1) for i, attempt, _ in batch.tasks)  # a new attempt, no retry spent
    assert job.done == 0 and not s.outcomes


def test_a_load_error_pickles_and_names_every_node():
    error = cluster.LoadError.from_rows(
        [
            ["b", "ModuleNotFoundError", "No module named 'x'", ""],
            ["a", "ModuleNotFoundError", "No module named 'x'", ""],
        ]
    )
    assert str(error) == "ModuleNotFoundError: No module named 'x' (on a, b)"
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, cluster.LoadError) and again.errors == error.errors and again.node == "b"


# ------------------------------------------------------------ on a real cluster


def delivered(cluster_) -> tuple[int, dict]:
    state = cluster_.status()
    return state["delivered"], state["outcomes"]


def test_a_mistyped_function_stops_its_job_at_once_with_one_line_and_runs_nothing(running_cluster):
    before = delivered(running_cluster)
    res = running_cluster.clusterctl("submit", "math:nosuch", "--range", "0", "100000")
    assert res.returncode == 2, res.stderr
    assert res.stdout == ""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert sum("cannot start" in line for line in lines) == 1
    job = lines[0].split()[2].rstrip(":")  # "clusterctl: job N: 100000 tasks"
    assert lines[-1] == (
        f"clusterctl: job {job} cannot start: math:nosuch — "
        "AttributeError: module 'math' has no function 'nosuch' (on a1, a2)"
    )
    state = running_cluster.status()
    assert (state["delivered"], state["outcomes"]) == before  # no task counted as run, nor failed
    assert state["counters"]["jobs_unloadable"] == 1 and state["jobs"] == 0
    record = json.loads(running_cluster.clusterctl("job", "status", job, "--json").stdout)
    assert (record["state"], record["done"]) == ("failed", 0) and "AttributeError" in record["error"]


def test_a_detached_job_no_node_can_load_ends_at_once_and_wait_says_why(running_cluster, tmp_path):
    before = delivered(running_cluster)
    res = running_cluster.clusterctl(
        "submit", "math:nosuch", "--range", "0", "100000", "--detach", "--spool", str(tmp_path)
    )
    assert res.returncode == 0, res.stderr
    number = res.stdout.strip()
    waited = running_cluster.clusterctl("job", "wait", number, "--json")
    assert waited.returncode == 2, waited.stderr  # as submit's
    record = json.loads(waited.stdout)
    assert (record["state"], record["done"], record["failed"]) == ("failed", 0, 0)
    assert record["error"].startswith("cannot start: AttributeError: module 'math' has no function 'nosuch'")
    assert delivered(running_cluster) == before


def test_the_executor_fails_every_pending_call_with_the_load_error(running_cluster, tmp_path):
    # A module of the client's whose import fails anywhere but in this process: it travels
    # as source, and raises while the nodes import it.
    (tmp_path / "clientonly.py").write_text(
        f"import os\nif os.getpid() != {os.getpid()}:\n    raise ImportError('only on the client')\n"
        "def f(x):\n    return x\n"
    )
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        import clientonly
    finally:
        sys.path.remove(str(tmp_path))
    before = delivered(running_cluster)
    with cluster.Executor(zk=running_cluster.zk, cluster=running_cluster.name) as ex:
        futures = [ex.submit(clientonly.f, i) for i in range(2000)]
        for future in futures:
            with pytest.raises(cluster.LoadError) as info:
                future.result(timeout=60)
            assert info.value.error == "ImportError: only on the client"
            assert sorted(info.value.nodes) == ["a1", "a2"]
        assert ex.submit(pow, 2, 5).result(timeout=60) == 32  # its other functions run on
    assert delivered(running_cluster)[0] == before[0] + 1  # pow's call alone ran


def test_a_function_one_node_has_runs_there_exactly_once_and_the_other_refuses_once(local_cluster, tmp_path):
    only_here = tmp_path / "only-here"
    only_here.mkdir()
    (only_here / "onlyhere_mod.py").write_text("import time\n\ndef f(x):\n    time.sleep(0.02)\n    return x * 2\n")
    coordinator = local_cluster.coordinator()
    local_cluster.agent("has", 2, env={"PYTHONPATH": f"{ROOT}{os.pathsep}{only_here}"})
    local_cluster.agent("lacks", 2)
    local_cluster.wait_ready(coordinator, ["has", "lacks"])
    with local_cluster.clusterctl_running("submit", "onlyhere_mod:f", "--range", "0", "300") as submit:
        # While it runs, status says which node refused it and why.
        state = local_cluster.wait_status(
            lambda s: any("refused" in p for p in s["job_progress"].values()), what="a job refused by a node"
        )
        (progress,) = state["job_progress"].values()
        assert progress["refused"] == {"lacks": "ModuleNotFoundError: No module named 'onlyhere_mod'"}
        out, err = submit.communicate(timeout=120)
    assert submit.returncode == 0, err
    results = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["index"] for r in results) == list(range(300))  # each once
    assert all(r["ok"] and r["result"] == 2 * r["index"] for r in results)
    refusals = [line for line in err.splitlines() if "cannot load" in line]
    assert refusals == [
        "clusterctl: node lacks cannot load onlyhere_mod:f: ModuleNotFoundError: No module named "
        "'onlyhere_mod'; the other nodes run its tasks"
    ]
    assert local_cluster.status()["delivered"] == 300


def test_a_job_whose_last_capable_node_leaves_fails_then(local_cluster, tmp_path):
    only_here = tmp_path / "only-here"
    only_here.mkdir()
    (only_here / "slow_mod.py").write_text("import time\n\ndef f(x):\n    time.sleep(0.2)\n    return x\n")
    coordinator = local_cluster.coordinator()
    has = local_cluster.agent("has", 1, env={"PYTHONPATH": f"{ROOT}{os.pathsep}{only_here}"})
    local_cluster.agent("lacks", 1)
    local_cluster.wait_ready(coordinator, ["has", "lacks"])
    with local_cluster.clusterctl_running("submit", "slow_mod:f", "--range", "0", "1000") as submit:
        local_cluster.wait_status(lambda s: any("refused" in p for p in s["job_progress"].values()))
        has.stop()
        out, err = submit.communicate(timeout=120)
    assert submit.returncode == 2, err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert "cannot start: slow_mod:f — ModuleNotFoundError: No module named 'slow_mod' (on lacks)" in last
    wait_for(lambda: local_cluster.status()["jobs"] == 0, what="the job to end")


def test_the_executor_runs_a_function_on_the_nodes_that_load_it_and_logs_the_other_once(
    local_cluster, tmp_path, caplog
):
    # A module of the client's (it travels as source) whose import raises on one node only.
    (tmp_path / "picky.py").write_text(
        "import os\nif os.environ.get('PICKY_REFUSE'):\n    raise ImportError('not on this node')\n"
        "def f(x):\n    return x + 1\n"
    )
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        import picky
    finally:
        sys.path.remove(str(tmp_path))
    coordinator = local_cluster.coordinator()
    local_cluster.agent("loads", 2)
    local_cluster.agent("refuses", 2, env={"PICKY_REFUSE": "1"})
    local_cluster.wait_ready(coordinator, ["loads", "refuses"])
    with caplog.at_level("WARNING", logger="cluster.client"):
        with cluster.Executor(zk=local_cluster.zk, cluster=local_cluster.name) as ex:
            assert list(ex.map(picky.f, range(500))) == list(range(1, 501))
    said = [r.getMessage() for r in caplog.records if r.name == "cluster.client" and "does not load" in r.getMessage()]
    assert said == [
        "cluster.Executor: a function does not load on refuses: ImportError: not on this node; "
        "its calls run on the other nodes"
    ]
    assert local_cluster.status()["delivered"] == 500
