"""What users are promised when things die: retries with causes, re-dispatch of
a killed agent's tasks, every result exactly once, no orphan processes."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from helpers import PY, ROOT, agent_state, assert_gone, scrape, wait_for, written_off

from cluster.runtime.zkserver import free_ports

CRASHERS = """
import ctypes, os, signal, time

def exit_hard(x):
    os._exit(3)

def sigkill_self(x):
    os.kill(os.getpid(), signal.SIGKILL)

def segfault(x):
    ctypes.string_at(0)

def flaky(path):
    # Dies the first time it runs anywhere, succeeds on the retry.
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return "second try"
    os.close(fd)
    os._exit(9)

def slow_square(x):
    time.sleep(0.002)
    return x * x
"""


def _rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_worker_death_is_retried_then_reported_with_its_cause(running_cluster, tmp_path):
    mod = tmp_path / "crashers.py"
    mod.write_text(CRASHERS)
    for func, cause in [
        ("exit_hard", "worker exited with status 3"),
        ("sigkill_self", "worker exited with signal 9 (SIGKILL)"),
        ("segfault", "worker exited with signal 11 (SIGSEGV)"),
    ]:
        res = running_cluster.clusterctl("submit", f"{mod}:{func}", "--range", "0", "1", "--retries", "1")
        assert res.returncode == 1, res.stderr
        (row,) = _rows(res.stdout)
        assert row["ok"] is False
        assert row["error"].startswith(f"WorkerLost: {cause}"), row
    # Each task's worker died twice: --retries 1 retried it once, then it was delivered as lost.
    status = running_cluster.status()
    assert status["counters"].get("retries") == 3 and status["outcomes"] == {"lost": 3}, status
    # Workers were restarted each time: the agents still have two workers each.
    for node in ("a1", "a2"):
        proc = next(p for p in running_cluster.procs if p.name == node)
        wait_for(lambda: len(proc.workers()) == 2, 15, what=f"{node} to be back to 2 workers")


def test_a_task_whose_first_worker_dies_succeeds_on_retry(running_cluster, tmp_path):
    mod = tmp_path / "crashers.py"
    mod.write_text(CRASHERS)
    marker = tmp_path / "marker"
    res = running_cluster.clusterctl("submit", f"{mod}:flaky", "--inputs", "-", input=json.dumps(str(marker)) + "\n")
    assert res.returncode == 0, res.stderr
    assert _rows(res.stdout) == [{"index": 0, "ok": True, "result": "second try"}]


def test_agent_killed_mid_job_loses_and_duplicates_nothing(running_cluster, tmp_path):
    """10,000 tasks; one agent is SIGKILLed midway; every result arrives exactly once."""
    mod = tmp_path / "crashers.py"
    mod.write_text(CRASHERS)
    victim = next(p for p in running_cluster.procs if p.name == "a1")
    victim_workers = [c.pid for c in victim.children()]
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "submit", f"{mod}:slow_square", "--range", "0", "10000", "--output", str(out)],
        env=running_cluster.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: out.exists() and out.stat().st_size > 50_000, 60, what="the job to get going")
    victim.signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    results = _rows(out.read_text())
    assert len(results) == 10_000
    assert sorted(r["index"] for r in results) == list(range(10_000))
    assert all(r["result"] == r["index"] ** 2 for r in results)
    assert_gone(victim_workers)  # the dead agent's workers noticed and exited by themselves


def test_workers_exit_when_their_agent_is_sigkilled(local_cluster):
    local_cluster.coordinator()
    agent = local_cluster.agent("lonely", 2)
    wait_for(lambda: len(agent.workers()) == 2, 15, what="two workers")
    workers = [c.pid for c in agent.workers()]
    agent.signal(signal.SIGKILL)
    agent.popen.wait(5)

    assert_gone(workers)


def test_agent_sigterm_drains_deregisters_and_exits_0(running_cluster, tmp_path):
    mod = tmp_path / "crashers.py"
    mod.write_text(CRASHERS)
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "submit", f"{mod}:slow_square", "--range", "0", "3000", "--output", str(out)],
        env=running_cluster.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: out.exists() and out.stat().st_size > 5_000, 60, what="the job to get going")
    a2 = next(p for p in running_cluster.procs if p.name == "a2")
    a2.signal(signal.SIGTERM)
    assert a2.popen.wait(30) == 0
    assert "a2" not in running_cluster.agents()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    results = _rows(out.read_text())
    assert sorted(r["index"] for r in results) == list(range(3000))


def test_an_agent_on_a_dead_agents_address_stays_connected_when_the_dead_ones_znode_goes(local_cluster, tmp_path):
    """A node replaced within the ZooKeeper session timeout (a rebooted machine, a pod
    given the old pod's address) can bring a new agent up on the old agent's endpoint
    while the dead agent's znode still stands. When that znode finally goes, the
    coordinator must not cut the new agent's connection with it."""
    port = free_ports(1)[0]
    coordinator = local_cluster.coordinator()
    old = local_cluster.agent("old", 1, "--bind", f"tcp://127.0.0.1:{port}", "--zk-session-timeout", "4")
    local_cluster.wait_ready(coordinator, ["old"])
    old.signal(signal.SIGKILL)
    old.popen.wait(5)
    local_cluster.agent("new", 1, "--bind", f"tcp://127.0.0.1:{port}")
    local_cluster.wait_ready(coordinator, ["new"])
    wait_for(lambda: local_cluster.agents() == ["new"], 20, what="the dead agent's session to expire")
    time.sleep(3)  # past the 2 s heartbeat deadline
    (tmp_path / "crashers.py").write_text(CRASHERS)
    res = local_cluster.clusterctl("submit", f"{tmp_path / 'crashers.py'}:slow_square", "--range", "0", "4", timeout=30)
    assert res.returncode == 0, res.stderr
    assert sorted(r["result"] for r in _rows(res.stdout)) == [0, 1, 4, 9]
    status = local_cluster.status()
    assert agent_state(status, "new") == "ready" and written_off(status, "new", "silent") == 0, status


def test_a_draining_agent_gives_back_the_tasks_no_worker_has_started(local_cluster, tmp_path):
    """Drained with a running task and two queued behind it (2 s each), an agent hands the
    queued ones back at once: another agent runs them, and the drain takes one task, not
    three."""
    coordinator = local_cluster.coordinator()
    (metrics_port,) = free_ports(1)
    agents = {
        "d1": local_cluster.agent("d1", 1, "--metrics-port", str(metrics_port)),
        "d2": local_cluster.agent("d2", 1),
    }
    local_cluster.wait_ready(coordinator, ["d1", "d2"])
    (tmp_path / "slow.py").write_text(
        "import os, time\n\ndef f(x):\n    time.sleep(2)\n    return os.environ['CLUSTERD_NODE_ID']\n"
    )
    job = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "submit", f"{tmp_path / 'slow.py'}:f", "--range", "0", "6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=local_cluster.env,
        cwd=ROOT,
    )

    # A new job's tasks are untimed: each agent holds one running and two queued (prefetch 2).
    local_cluster.wait_status(lambda s: s["agents"]["d1"]["in_flight"] == 3, what="d1 to hold three tasks")
    wait_for(
        lambda: scrape(metrics_port).get('clusterd_workers{state="busy"}') == 1,
        10,
        what="d1's worker to start the first",
    )
    agents["d1"].signal(signal.SIGTERM)
    assert agents["d1"].popen.wait(30) == 0
    out, err = job.communicate(timeout=60)
    assert job.returncode == 0, err
    ran_on = [r["result"] for r in _rows(out)]
    assert len(ran_on) == 6
    # Its running task only: the drain gave the queued two back (to d2) instead of running
    # them first, so it lasted one task, not three.
    assert ran_on.count("d1") == 1, ran_on
