"""Chaos: each scenario runs a job of thousands of short tasks, injects one fault
mid-job, and checks that every result arrives, correct, exactly once, that the
job finishes, and that no orphan process is left. Real ZooKeeper, real processes."""

from __future__ import annotations

import random
import signal
import time

import pytest
from chaoslib import Job, ran_on
from helpers import LocalCluster, agent_state, assert_gone, scrape, wait_for, written_off

from cluster.contract import layout
from cluster.runtime.zkserver import free_ports

FAST = ("--zk-session-timeout", "2")  # a dead leader is replaced in seconds, not ten


def start(cluster: LocalCluster, coordinators: int = 1, agents: int = 2):
    coords = [cluster.coordinator(*FAST, name=f"c{i + 1}") for i in range(coordinators)]
    nodes = [cluster.agent(f"a{i + 1}", 2, *FAST) for i in range(agents)]
    wait_for(lambda: cluster.leader() is not None, 20, what="a leader")
    leader = next(c for c in coords if c.pid == cluster.leader().pid)
    cluster.wait_ready(leader, [f"a{i + 1}" for i in range(agents)])
    return coords, nodes


def proc_named(cluster: LocalCluster, name: str):
    return next(p for p in cluster.procs if p.name == name)


@pytest.mark.parametrize("when,seed", [(0.1, 1), (0.5, 2), (0.8, 3)])
def test_kill9_an_agent(local_cluster, tmp_path, when, seed):
    _, agents = start(local_cluster)
    victim = random.Random(seed).choice(agents)
    workers = [c.pid for c in victim.children()]
    job = Job(local_cluster, tmp_path, 4000)
    job.wait_fraction(when)
    victim.signal(signal.SIGKILL)
    job.finish()
    assert_gone(workers)


def test_kill9_the_leader_twice_in_one_job(local_cluster, tmp_path):
    coords, agents = start(local_cluster, coordinators=3)
    job = Job(local_cluster, tmp_path, 5000)
    epochs = [local_cluster.leader().epoch]
    for fraction in (0.2, 0.6):
        job.wait_fraction(fraction)
        leader = next(c for c in coords if c.pid == local_cluster.leader().pid)
        leader.signal(signal.SIGKILL)
        wait_for(
            lambda: (rec := local_cluster.leader()) is not None and rec.pid != leader.pid,
            30,
            what="a standby to take over",
        )
        epochs.append(local_cluster.leader().epoch)
    job.finish()
    assert epochs == sorted(epochs) and len(set(epochs)) == 3
    for agent in agents:
        assert agent.popen.poll() is None  # agents rode through both failovers


def test_sigstop_an_agent_for_5s_then_sigcont(local_cluster, tmp_path):
    _, agents = start(local_cluster)
    job = Job(local_cluster, tmp_path, 5000)
    job.wait_fraction(0.2)
    agents[0].signal(signal.SIGSTOP)
    for worker in agents[0].workers():
        worker.suspend()  # a hung node: its workers stop too
    hung_until = time.monotonic() + 5
    # Written off by whichever signal comes first: silence, or its ZooKeeper session expiring.
    local_cluster.wait_status(
        lambda s: written_off(s, "a1", "silent") or agent_state(s, "a1") is None, 20, what="a1 to be written off"
    )
    time.sleep(max(0.0, hung_until - time.monotonic()))  # hung for 5 s in all
    for worker in agents[0].workers():
        worker.resume()
    agents[0].signal(signal.SIGCONT)
    rows = job.finish()
    local_cluster.wait_agent("a1", "ready")  # it came back and was taken back
    assert set(ran_on(rows)) == {a.name for a in agents}


def test_drain_mid_job_then_a_restarted_agent_gets_work(local_cluster, tmp_path):
    coords, agents = start(local_cluster)
    job = Job(local_cluster, tmp_path, 5000)
    job.wait_fraction(0.25)
    agents[1].signal(signal.SIGTERM)
    assert agents[1].popen.wait(30) == 0
    (port,) = free_ports(1)
    local_cluster.agent("a2", 2, *FAST, "--metrics-port", str(port), name="a2-again")
    rows = job.finish()
    counts = ran_on(rows)
    assert counts.get("a2", 0) > 0, counts
    assert scrape(port).get('clusterd_tasks_total{outcome="ok"}', 0) > 0  # the rejoined agent received work


def test_worker_crash_memory_and_timeout_faults_in_a_big_job(local_cluster, tmp_path):
    start(local_cluster)
    module = tmp_path / "faulty.py"
    module.write_text(
        "import ctypes, os, time\n"
        "def f(x):\n"
        "    if x == 500: ctypes.string_at(0)\n"
        "    if x == 1000: block = bytearray(400 * 2**20); time.sleep(3)\n"
        "    if x == 1500: time.sleep(3600)\n"
        "    time.sleep(0.002)\n"
        "    return x * x\n"
    )
    res = local_cluster.clusterctl(
        "submit",
        f"{module}:f",
        "--range",
        "0",
        "3000",
        "--max-memory",
        "250M",
        "--timeout",
        "2",
        "--retries",
        "1",
        timeout=300,
    )
    assert res.returncode == 1, res.stderr
    import json

    rows = {r["index"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert sorted(rows) == list(range(3000))
    assert rows[500]["error"].startswith("WorkerLost: worker exited with signal 11")
    assert rows[1000]["error"].startswith("WorkerLost: worker exceeded the task memory limit")
    assert rows[1500]["error"].startswith("TaskTimeout")
    assert all(rows[i]["ok"] and rows[i]["result"] == i * i for i in rows if i not in (500, 1000, 1500))


def test_client_killed_then_a_new_job_runs_cleanly(local_cluster, tmp_path):
    coordinator = local_cluster.coordinator(*FAST, "--client-timeout", "3")
    agents = [local_cluster.agent(f"a{i}", 2, *FAST) for i in (1, 2)]
    local_cluster.wait_ready(coordinator, ["a1", "a2"])
    job = Job(local_cluster, tmp_path, 50_000, name="abandoned")
    job.wait_fraction(0.02)
    job.proc.kill()
    job.proc.wait()
    local_cluster.wait_status(
        lambda s: s["counters"].get("clients_timed_out") == 1 and s["jobs"] == 0,
        30,
        what="the coordinator to drop the job",
    )
    second = Job(local_cluster, tmp_path, 2000, name="second")
    rows = second.finish()
    assert len(rows) == second.n  # scaled by CHAOS_SCALE
    assert all(a.popen.poll() is None for a in agents)


@pytest.mark.parametrize("fault", ["leader-killed-mid-job", "member-down-whole-job"])
def test_zookeeper_ensemble_faults(tmp_path, cluster_name, fault):
    from cluster.runtime.zkserver import ZooKeeperEnsemble

    with ZooKeeperEnsemble(3, tick_time=500) as ensemble:
        if fault == "member-down-whole-job":
            ensemble.kill(next(i for i in range(3) if i != ensemble.leader_index()))
        cluster = LocalCluster(ensemble.connect_string, cluster_name, tmp_path)
        try:
            coordinator = cluster.coordinator()
            cluster.agent("a1", 2)
            cluster.agent("a2", 2)
            cluster.wait_ready(coordinator, ["a1", "a2"])
            before = cluster.status()
            job = Job(cluster, tmp_path, 4000)
            job.wait_fraction(0.3)
            if fault == "leader-killed-mid-job":
                ensemble.kill(ensemble.leader_index())
            job.finish()
            assert all(p.popen.poll() is None for p in cluster.procs)  # nobody noticed
            after = cluster.status()  # the same coordinator leads in the same epoch: it never lost the lead
            assert (after["coordinator"], after["epoch"], after["leading"]) == (
                before["coordinator"],
                before["epoch"],
                True,
            )
        finally:
            cluster.stop()


def test_a_deposed_leader_that_wakes_up_is_fenced(local_cluster, tmp_path):
    # Coordinators on ports the test knows (to ask the old one whether it still leads); agents with metrics.
    ports = free_ports(4)
    coords = [local_cluster.coordinator(*FAST, name=f"c{i + 1}", port=ports[i]) for i in range(2)]
    metrics = {"a1": ports[2], "a2": ports[3]}
    for node, port in metrics.items():
        local_cluster.agent(node, 2, *FAST, "--metrics-port", str(port))
    wait_for(lambda: local_cluster.leader() is not None, 20, what="a leader")
    old = next(c for c in coords if c.pid == local_cluster.leader().pid)
    local_cluster.wait_ready(old, list(metrics))
    job = Job(local_cluster, tmp_path, 5000)
    job.wait_fraction(0.2)
    old.signal(signal.SIGSTOP)  # hung, not dead: it still believes it leads
    wait_for(
        lambda: (rec := local_cluster.leader()) is not None and rec.pid != old.pid, 30, what="a standby to take over"
    )
    # The agents answered the new leader: they know its epoch, newer than the old leader's.
    new = next(c for c in coords if c.pid == local_cluster.leader().pid)
    local_cluster.wait_ready(new, list(metrics))
    old.signal(signal.SIGCONT)
    job.finish()
    local_cluster.wait_status(lambda s: not s["leading"], endpoint=old.endpoint, what="the old leader to step down")
    wait_for(
        lambda: any(scrape(port).get("clusterd_fenced_messages_total", 0) > 0 for port in metrics.values()),
        10,
        what="an agent to have dropped a message of the deposed coordinator",
    )


def test_zookeeper_down_for_3s_mid_job(tmp_path, cluster_name, own_zk):
    server = own_zk
    cluster = LocalCluster(server.connect_string, cluster_name, tmp_path)
    try:
        coordinator = cluster.coordinator()
        cluster.agent("a1", 2)
        cluster.agent("a2", 2)
        cluster.wait_ready(coordinator, ["a1", "a2"])
        job = Job(cluster, tmp_path, 5000)
        job.wait_fraction(0.2)
        server.stop(remove=False)
        time.sleep(3)  # work goes on; nobody can be elected meanwhile
        assert job.proc.poll() is None
        server.start()  # same data and port: sessions shorter-lived than the outage survive
        job.finish()
        wait_for(lambda: cluster.agents() == ["a1", "a2"], 30, what="both agents registered again")
        assert all(p.popen.poll() is None for p in cluster.procs if p.name != "job")
    finally:
        cluster.stop()


def test_daemons_stop_cleanly_while_zookeeper_is_gone(tmp_path, cluster_name, own_zk):
    # `clusterctl up` killed with SIGKILL: ZooKeeper, the coordinator and the agent all get
    # SIGTERM at once. kazoo holds a request made while disconnected until ZooKeeper answers
    # again; the agent's "draining" state and its deregistration must not wait for that.
    server = own_zk
    cluster = LocalCluster(server.connect_string, cluster_name, tmp_path)
    try:
        ports = free_ports(3)
        coordinator = cluster.coordinator("--metrics-port", str(ports[0]))
        daemons = [
            coordinator,
            cluster.agent("a1", 1, "--metrics-port", str(ports[1])),
            cluster.relay("r1", "--metrics-port", str(ports[2])),
        ]
        cluster.wait_ready(coordinator, ["a1"])
        relay_znode = layout.relay_path(cluster.name, "r1")
        wait_for(lambda: cluster.kazoo.exists(relay_znode), 20, what="the relay to register")
        server.stop(remove=False)
        wait_for(
            lambda: all(scrape(port).get("clusterd_zookeeper_connected") == 0 for port in ports),
            20,
            what="every daemon to lose ZooKeeper",
        )
        for daemon in daemons:
            daemon.signal(signal.SIGTERM)
        for daemon in daemons:
            wait_for(lambda: daemon.popen.poll() is not None, 30, what=f"{daemon.name} to exit")
            assert daemon.popen.returncode == 0 and "Traceback" not in daemon.text(), daemon.text()[-3000:]
    finally:
        cluster.stop()


def test_no_false_positives_while_workers_burn_every_core(local_cluster, tmp_path):
    start(local_cluster)
    module = tmp_path / "burn.py"
    module.write_text(
        "import time\ndef burn(s):\n    end = time.time() + s\n    n = 0\n"
        "    while time.time() < end:\n        n += 1\n    return s\n"
    )
    before = local_cluster.status()
    registered = local_cluster.kazoo.get(layout.agent_path(local_cluster.name, "a1"))[1].czxid
    res = local_cluster.clusterctl("submit", f"{module}:burn", "--inputs", "-", input="3\n" * 8)
    assert res.returncode == 0, res.stderr
    # 4 busy workers on 2 cores: no agent written off, a1 never lost (its znode is the one it made at
    # start), and the same coordinator leads in the same epoch.
    after = local_cluster.status()
    assert after["written_off"] == {} and all(a["state"] == "ready" for a in after["agents"].values()), after
    assert local_cluster.kazoo.get(layout.agent_path(local_cluster.name, "a1"))[1].czxid == registered
    assert (after["coordinator"], after["epoch"]) == (before["coordinator"], before["epoch"])
