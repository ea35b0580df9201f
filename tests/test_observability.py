"""`clusterctl status --json` and the Prometheus endpoints against a job whose
real state the test knows: which workers are busy, how many tasks ran, failed,
and how long each one took."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

from helpers import PY, ROOT, agent_state, scrape, wait_for, written_off

from cluster.runtime.zkserver import free_ports

TASKS, SLEEP = 40, 0.3
FAILING = {i for i in range(TASKS) if i % 10 == 3}

SLOW = f"""
import time

def f(x):
    time.sleep({SLEEP})
    if x in {sorted(FAILING)!r}:
        raise ValueError(x)
    return x * 2
"""


def test_status_and_metrics_match_a_running_job(local_cluster, tmp_path):
    ports = dict(zip(("coordinator", "o1", "o2"), free_ports(3)))
    coordinator = local_cluster.coordinator("--metrics-port", str(ports["coordinator"]))
    for node in ("o1", "o2"):
        local_cluster.agent(node, 2, "--metrics-port", str(ports[node]))
    local_cluster.wait_ready(coordinator, ["o1", "o2"])
    (tmp_path / "slow.py").write_text(SLOW)
    job = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "submit", f"{tmp_path / 'slow.py'}:f", "--range", "0", str(TASKS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=local_cluster.env,
        cwd=ROOT,
    )

    def status() -> dict:
        res = local_cluster.clusterctl("status", "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    # Mid-job: 40 tasks of 0.3 s on 4 workers take 3 s, so all four stay busy for a while.
    mid = wait_for(
        lambda: (s := status())["workers"]["busy"] == 4 and s["queued"] > 0 and s,
        20,
        what="all workers busy with tasks still queued",
    )
    assert mid["nodes"] == {"ready": 2} and mid["workers"] == {"total": 4, "busy": 4, "idle": 0}
    assert mid["jobs"] == 1
    # Every submitted task is in exactly one place: queued, held by an agent, or done.
    assert mid["queued"] + mid["running"] + mid["delivered"] == TASKS
    assert mid["running"] == sum(a["in_flight"] for a in mid["agents"].values())
    assert all(a["state"] == "ready" and a["busy"] == 2 and a["heartbeat_age"] < 2 for a in mid["agents"].values())
    for node in ("o1", "o2"):
        wait_for(
            lambda: scrape(ports[node]).get('clusterd_workers{state="busy"}') == 2.0,
            10,
            what=f"{node} to report two busy workers",
        )
    assert scrape(ports["coordinator"])["clusterd_queue_depth"] >= 0

    out, err = job.communicate(timeout=60)
    assert job.returncode == 1, err  # some tasks raised
    lines = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["index"] for r in lines) == list(range(TASKS))
    assert {r["index"] for r in lines if not r["ok"]} == FAILING

    end = status()
    assert end["delivered"] == TASKS and end["failed"] == len(FAILING)
    assert end["outcomes"] == {"ok": TASKS - len(FAILING), "error": len(FAILING)}
    assert end["queued"] == 0 and end["running"] == 0 and end["workers"]["busy"] == 0
    assert end["tasks_per_second"] > 0

    coord = wait_for(
        lambda: (
            (m := scrape(ports["coordinator"])).get('clusterd_tasks_total{outcome="ok"}') == TASKS - len(FAILING) and m
        ),
        10,
        what="coordinator counters",
    )
    assert coord['clusterd_tasks_total{outcome="error"}'] == len(FAILING)
    assert coord["clusterd_task_round_trip_seconds_count"] == TASKS
    assert coord["clusterd_dispatch_latency_seconds_count"] == TASKS
    # Each round trip includes the task's own sleep, so their sum is at least all the sleeping.
    assert coord["clusterd_task_round_trip_seconds_sum"] >= TASKS * SLEEP
    assert coord['clusterd_task_round_trip_seconds_bucket{le="0.25"}'] == 0
    per_agent = [scrape(ports[n]) for n in ("o1", "o2")]
    ok = sum(m.get('clusterd_tasks_total{outcome="ok"}', 0) for m in per_agent)
    failed = sum(m.get('clusterd_tasks_total{outcome="error"}', 0) for m in per_agent)
    assert (ok, failed) == (TASKS - len(FAILING), len(FAILING))
    assert all(m['clusterd_workers{state="idle"}'] == 2 for m in per_agent)


def test_status_text_names_every_figure(running_cluster):
    res = running_cluster.clusterctl("status")
    assert res.returncode == 0, res.stderr
    assert re.search(r"2 ready; workers 0 busy, 4 idle of 4", res.stdout)
    assert re.search(r"0 done \(0 failed\), 0 tasks/s over the last minute", res.stdout)
    assert re.search(r"a1\s+ready\s+workers 0/2\s+busy", res.stdout)


def test_a_coordinator_stretches_heartbeats_agents_follow_and_a_hung_agent_is_still_found(local_cluster):
    """With a budget of 2 heartbeats a second, 2 agents beat every 1 s instead of every
    0.2 s: the agents follow the leader, the leader gives them 3 misses of 1 s instead of
    0.6 s, and an agent that stops answering is still written off for silence, well
    before its ZooKeeper session (10 s) expires."""
    ports = dict(zip(("coordinator", "b1", "b2"), free_ports(3)))
    coordinator = local_cluster.coordinator(
        "--heartbeat-interval",
        "0.2",
        "--heartbeat-misses",
        "3",
        "--heartbeat-budget",
        "2",
        "--metrics-port",
        str(ports["coordinator"]),
    )
    agents = {node: local_cluster.agent(node, 1, "--metrics-port", str(ports[node])) for node in ("b1", "b2")}
    local_cluster.wait_ready(coordinator, ["b1", "b2"])
    for node in ("b1", "b2"):
        wait_for(
            lambda: scrape(ports[node]).get("clusterd_heartbeat_interval_seconds") == 1.0,
            15,
            what=f"{node} to beat every second, as the leader asks",
        )
    wait_for(
        lambda: scrape(ports["coordinator"]).get("clusterd_heartbeat_interval_seconds") == 1.0,
        10,
        what="the coordinator to export its interval",
    )
    res = local_cluster.clusterctl("status", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["heartbeat_interval"] == 1.0, res.stderr
    time.sleep(3)  # five of the old deadlines: agents beating once a second would have been written off
    idle = local_cluster.status()
    assert idle["written_off"] == {} and all(a["state"] == "ready" for a in idle["agents"].values()), idle

    agents["b2"].signal(signal.SIGSTOP)
    try:
        # Written off while still registered, for its silence: its session's end (10 s) would
        # have removed it from the status instead.
        hung = local_cluster.wait_written_off("b2", "silent", timeout=15)
        assert agent_state(hung, "b2") == "unreachable"
        assert written_off(hung, "b1", "silent") == 0 and agent_state(hung, "b1") == "ready"
    finally:
        agents["b2"].signal(signal.SIGCONT)


def test_status_shows_each_agents_host_load_and_memory_from_its_heartbeats(running_cluster):
    state = running_cluster.wait_status(
        lambda s: all(a["host_load"] is not None for a in s["agents"].values()), what="the agents' host figures"
    )
    for agent in state["agents"].values():
        assert agent["host_load"] >= 0 and 0 < agent["memory_used"] <= 1, agent
