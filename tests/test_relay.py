"""Relays (`clusterctl relay`): the coordinator reaches the agents that name a relay
through it, over one connection, and reaches them directly while it is gone."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import zmq
from helpers import PY, ROOT, agent_record, agent_state, scrape, wait_for, written_off

from cluster.runtime.zkserver import free_ports

TASKS = """
import time

def square(x):
    return x * x

def slow_square(x):
    time.sleep(0.05)
    return x * x
"""


def _endpoint(cluster, folder: str, node_id: str) -> int:
    data, _ = cluster.kazoo.get(f"/clusterd/{cluster.name}/{folder}/{node_id}")
    return int(json.loads(data)["endpoint"].rsplit(":", 1)[1])


def _peer_ports(proc) -> set[int]:
    """The remote ports of the process's established TCP connections."""
    conns = psutil.Process(proc.pid).net_connections(kind="tcp")
    return {c.raddr.port for c in conns if c.raddr and c.status == psutil.CONN_ESTABLISHED}


def _status(cluster) -> dict:
    res = cluster.clusterctl("status", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _square_all(cluster, tmp_path, n: int, func: str = "square") -> list[dict]:
    mod = tmp_path / "relaytasks.py"
    mod.write_text(TASKS)
    res = cluster.clusterctl("submit", f"{mod}:{func}", "--range", "0", str(n), timeout=180)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert sorted(r["index"] for r in rows) == list(range(n))
    assert all(r["ok"] and r["result"] == r["index"] ** 2 for r in rows)
    return rows


def _slow_job_under_way(cluster, tmp_path, n: int = 300) -> tuple[subprocess.Popen, Path]:
    """`clusterctl submit` of n tasks of 50 ms, once 30 results are in."""
    mod = tmp_path / "relaytasks.py"
    mod.write_text(TASKS)
    out = tmp_path / "out.jsonl"
    job = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "submit", f"{mod}:slow_square", "--range", "0", str(n), "--output", str(out)],
        env=cluster.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 30, 60, what="the job to get going")
    return job, out


@pytest.fixture
def slow_job(local_cluster, tmp_path):
    """Starts `_slow_job_under_way`; a job still running when the test ends (it failed) is killed."""
    jobs: list[subprocess.Popen] = []

    def start() -> tuple[subprocess.Popen, Path]:
        job, out = _slow_job_under_way(local_cluster, tmp_path)
        jobs.append(job)
        return job, out

    yield start
    for job in jobs:
        if job.poll() is None:
            job.kill()
            job.wait()


def _every_result_once(job: subprocess.Popen, out: Path, timeout: float, n: int = 300) -> None:
    _, stderr = job.communicate(timeout=timeout)
    assert job.returncode == 0, stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == list(range(n))
    assert all(r["ok"] and r["result"] == r["index"] ** 2 for r in rows)


def test_agents_behind_a_relay_are_reached_through_it_on_one_connection(local_cluster, tmp_path):
    coordinator = local_cluster.coordinator()
    (metrics_port,) = free_ports(1)
    local_cluster.relay("rack1", "--metrics-port", str(metrics_port))
    local_cluster.agent("r1", 1, "--relay", "rack1")
    local_cluster.agent("r2", 1, "--relay", "rack1")
    local_cluster.agent("d1", 1)
    local_cluster.wait_ready(coordinator, ["r1", "r2", "d1"])

    _square_all(local_cluster, tmp_path, 2000)

    status = _status(local_cluster)
    assert {n: a.get("via") for n, a in status["agents"].items()} == {"r1": "rack1", "r2": "rack1", "d1": None}
    assert list(status["relays"]) == ["rack1"]
    ports = _peer_ports(coordinator)
    assert _endpoint(local_cluster, "relays", "rack1") in ports
    assert _endpoint(local_cluster, "agents", "d1") in ports
    assert not {_endpoint(local_cluster, "agents", n) for n in ("r1", "r2")} & ports
    # Both agents behind the relay ran tasks: their workers report through the relay only.
    assert all(status["agents"][n]["workers"] == 1 for n in ("r1", "r2"))
    metrics = scrape(metrics_port)
    assert metrics["clusterd_relay_agents"] == 2
    assert metrics['clusterd_relay_messages_total{direction="to_agents"}'] > 0
    assert metrics['clusterd_relay_messages_total{direction="to_coordinator"}'] > 0
    text = local_cluster.clusterctl("status")
    assert f"relays: rack1 at tcp://127.0.0.1:{_endpoint(local_cluster, 'relays', 'rack1')}" in text.stdout
    assert "via rack1" in text.stdout


def test_a_relay_killed_mid_job_its_agents_go_direct_and_every_result_arrives_once(local_cluster, slow_job):
    # Heartbeats every 5 s: the relay's silence would take 20 s to notice, far past its
    # session's end (4 s). Bypassed while still registered, it was its connection closing that told.
    coordinator = local_cluster.coordinator("--heartbeat-interval", "5")
    relay = local_cluster.relay("rack1", "--zk-session-timeout", "4")
    local_cluster.agent("r1", 2, "--relay", "rack1")
    local_cluster.agent("r2", 2, "--relay", "rack1")
    local_cluster.wait_ready(coordinator, ["r1", "r2"])
    job, out = slow_job()
    relay.signal(signal.SIGKILL)
    local_cluster.wait_status(
        lambda s: "rack1" in s["relays_bypassed"], 10, what="the relay to be bypassed while registered"
    )
    _every_result_once(job, out, timeout=180)
    # Then it leaves.
    local_cluster.wait_status(lambda s: "rack1" not in s["relays"], 20, what="the relay's znode to expire")
    ports = _peer_ports(coordinator)
    assert {_endpoint(local_cluster, "agents", n) for n in ("r1", "r2")} <= ports
    assert all(a.get("via") is None for a in _status(local_cluster)["agents"].values())


def test_a_killed_agent_is_written_off_when_its_connection_closes_not_a_deadline_later(local_cluster, slow_job):
    """kill -9 closes a process's sockets: the coordinator (for a direct agent) and the relay
    (for one behind it) see the connection close and the agent's tasks go elsewhere at
    once. Heartbeats (a 20 s deadline here) and ZooKeeper (a 60 s session) would take far
    longer than the wait below."""
    (metrics_port,) = free_ports(1)
    coordinator = local_cluster.coordinator("--heartbeat-interval", "5", "--metrics-port", str(metrics_port))
    local_cluster.relay("rack1")
    victims = {
        "r1": local_cluster.agent("r1", 2, "--relay", "rack1", "--zk-session-timeout", "60"),
        "d1": local_cluster.agent("d1", 2, "--zk-session-timeout", "60"),
    }
    local_cluster.agent("d2", 2)
    local_cluster.wait_ready(coordinator, ["r1", "d1", "d2"])
    job, out = slow_job()
    for victim in victims.values():
        victim.signal(signal.SIGKILL)
    local_cluster.wait_written_off("d1", "closed", timeout=10)  # the coordinator saw its connection close
    local_cluster.wait_written_off("r1", "closed", timeout=10)  # the relay reported it
    _every_result_once(job, out, timeout=180)
    status = local_cluster.status()
    assert status["written_off"] == {"closed": 2}, status  # none for silence
    assert set(local_cluster.agents()) == {"r1", "d1", "d2"}  # the znodes still stand: ZooKeeper did not tell
    metrics = scrape(metrics_port)
    assert metrics['clusterd_agents_written_off_total{cause="closed"}'] == 2
    assert 'clusterd_agents_written_off_total{cause="silent"}' not in metrics


def test_a_relay_that_starts_after_its_agents_takes_them_over(local_cluster, tmp_path):
    coordinator = local_cluster.coordinator()
    local_cluster.agent("r1", 1, "--relay", "rack1")
    local_cluster.wait_ready(coordinator, ["r1"])  # no relay yet: reached directly
    assert _endpoint(local_cluster, "agents", "r1") in _peer_ports(coordinator)
    local_cluster.relay("rack1")
    wait_for(lambda: _status(local_cluster)["agents"]["r1"].get("via") == "rack1", 20, what="r1 to move behind rack1")
    wait_for(lambda: _status(local_cluster)["agents"]["r1"]["state"] == "ready", 20, what="r1 to answer via rack1")
    _square_all(local_cluster, tmp_path, 200)
    assert _endpoint(local_cluster, "agents", "r1") not in _peer_ports(coordinator)


def test_garbage_sent_to_a_relay_is_dropped_and_it_keeps_forwarding(local_cluster, tmp_path):
    coordinator = local_cluster.coordinator()
    (metrics_port,) = free_ports(1)
    relay = local_cluster.relay("rack1", "--metrics-port", str(metrics_port))
    local_cluster.agent("r1", 1, "--relay", "rack1")
    local_cluster.wait_ready(coordinator, ["r1"])
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"tcp://127.0.0.1:{_endpoint(local_cluster, 'relays', 'rack1')}")
        for frames in (
            [b""],
            [b"\xff" * 40],
            [b"r1", b"garbage"],
            [b"nobody", b"\x95\x01", b"x"],
            [b"r1", b"\x93\x01\x63\xc0"],
        ):
            s.send_multipart(frames)
        wait_for(
            lambda: scrape(metrics_port).get("clusterd_dropped_messages_total", 0) > 0,
            10,
            what="the relay to drop garbage",
        )
    finally:
        ctx.destroy(0)
    _square_all(local_cluster, tmp_path, 200)
    assert relay.popen.poll() is None


def test_a_hung_relay_is_bypassed_while_registered_and_used_again_once_it_answers(local_cluster, tmp_path, slow_job):
    """SIGSTOP: the relay's ZooKeeper session (60 s) outlives the job, so only its silence
    to the coordinator's heartbeats can send its agents' work elsewhere."""
    coordinator = local_cluster.coordinator()
    relay = local_cluster.relay("rack1", "--zk-session-timeout", "60")
    local_cluster.agent("r1", 2, "--relay", "rack1")
    local_cluster.agent("r2", 2, "--relay", "rack1")
    local_cluster.wait_ready(coordinator, ["r1", "r2"])
    job, out = slow_job()
    relay.signal(signal.SIGSTOP)
    try:
        _every_result_once(job, out, timeout=50)  # well inside the relay's 60 s session
        assert _status(local_cluster)["relays_bypassed"] == ["rack1"]
        assert "rack1" in local_cluster.kazoo.get_children(f"/clusterd/{local_cluster.name}/relays")
    finally:
        relay.signal(signal.SIGCONT)
    local_cluster.wait_status(
        lambda s: s["relays_bypassed"] == [] and "rack1" in s["relays"], what="the relay to be used again"
    )
    wait_for(
        lambda: all(
            a.get("via") == "rack1" and a["state"] == "ready" for a in _status(local_cluster)["agents"].values()
        ),
        20,
        what="r1 and r2 behind rack1",
    )
    _square_all(local_cluster, tmp_path, 200)


def test_relay_table_bypasses_a_silent_relay_until_it_is_heard_again():
    from cluster.contract.layout import RelayRecord
    from cluster.coordinator.relays import RelayTable, relay_identity

    table = RelayTable()
    agent = agent_record("a1", endpoint="tcp://10.0.0.1:1", relay="rack1")
    assert table.via(agent) == ""  # not registered: directly
    table.add(
        RelayRecord(
            node_id="rack1", host="h", endpoint="tcp://10.0.0.2:2", version="0", protocol=1, pid=2, started=0.0
        ),
        now=0.0,
    )
    assert table.via(agent) == "rack1" and table.ids == {relay_identity("rack1"): "rack1"}
    assert table.turned(now=1.9, deadline=2.0) == []
    assert table.turned(now=2.1, deadline=2.0) == ["rack1"] and table.via(agent) == ""
    assert table.turned(now=3.0, deadline=2.0) == []  # told once
    assert table.heard(relay_identity("rack1"), now=3.5) == "rack1" and table.heard(b"relay/other", 3.5) == "?"
    assert table.turned(now=3.6, deadline=2.0) == ["rack1"] and table.via(agent) == "rack1"
    # Its connection closed: bypassed at once, however recently heard, until heard again.
    assert table.at("tcp://10.0.0.2:2") == "rack1" and table.at("tcp://10.0.0.1:1") == ""
    table.closed("rack1")
    assert table.via(agent) == "" and table.turned(now=3.7, deadline=2.0) == []
    table.heard(relay_identity("rack1"), now=4.0)
    assert table.turned(now=4.1, deadline=2.0) == ["rack1"] and table.via(agent) == "rack1"
    table.remove("rack1")
    assert table.via(agent) == "" and table.ids == {}


def test_a_relay_connects_once_per_endpoint_and_disconnects_when_no_agent_is_left_there():
    """A replacement agent can stand at a dead one's endpoint before the dead one's znode
    goes: one connection serves both, and it is closed only when neither is named."""
    from agents.relay import Relay
    from cluster.contract import config, wire

    class Socket:
        def __init__(self):
            self.calls = []

        def connect(self, endpoint):
            self.calls.append(("connect", endpoint))

        def disconnect(self, endpoint):
            self.calls.append(("disconnect", endpoint))

    relay = Relay(config.load(config.RelayConfig, None, {"insecure": True, "relay_id": "rack1"}, environ={}))
    relay.down = Socket()
    e1, e2 = "tcp://10.0.0.1:7000", "tcp://10.0.0.2:7000"
    relay._on_relay_agents(wire.RelayAgents(1, [["old", e1], ["new", e1]], []))
    relay._on_relay_agents(wire.RelayAgents(1, [["old", e1]], []))  # repeated with a Hello: nothing new
    assert relay.down.calls == [("connect", e1)]
    relay._on_relay_agents(wire.RelayAgents(1, [], [["old", e1]]))
    assert relay.down.calls == [("connect", e1)]  # "new" is still there
    relay._on_relay_agents(wire.RelayAgents(1, [["new", e2]], []))  # moved: a new port
    assert relay.down.calls == [("connect", e1), ("disconnect", e1), ("connect", e2)]
    relay._on_relay_agents(wire.RelayAgents(1, [], [["new", e1]]))  # a stale endpoint: ignored
    assert relay.agents == {"new": e2}
    relay.waker.close()


def test_agents_heartbeats_stop_at_their_relay_and_a_hung_agent_behind_it_is_still_found(local_cluster):
    coordinator = local_cluster.coordinator()
    (metrics_port,) = free_ports(1)
    local_cluster.relay("rack1", "--metrics-port", str(metrics_port))
    agents = {n: local_cluster.agent(n, 1, "--relay", "rack1") for n in ("r1", "r2")}
    local_cluster.wait_ready(coordinator, ["r1", "r2"])
    gathered = "clusterd_relay_heartbeats_gathered_total"
    upward = 'clusterd_relay_messages_total{direction="to_coordinator"}'
    # The relay exports every 0.5 s: wait until its figures show both Welcomes.
    wait_for(lambda: scrape(metrics_port).get(upward, 0) >= 2, 10, what="the relay's metrics to catch up")
    before = scrape(metrics_port)
    time.sleep(3.0)  # idle: only heartbeats move
    after = scrape(metrics_port)
    assert after[gathered] - before[gathered] >= 8  # two agents, 0.5 s each, 3 s
    assert after.get(upward, 0) == before.get(upward, 0)  # none of them went on to the coordinator
    status = _status(local_cluster)
    assert all(a["state"] == "ready" and a["heartbeat_age"] < 1.5 for a in status["agents"].values())
    # RelayBeat carries each agent's liveness: a hung agent is written off, the other is not.
    agents["r1"].signal(signal.SIGSTOP)
    try:
        hung = local_cluster.wait_written_off("r1", "silent", timeout=10)
        assert written_off(hung, "r2", "silent") == 0 and agent_state(hung, "r2") == "ready", hung
    finally:
        agents["r1"].signal(signal.SIGCONT)
    wait_for(lambda: _status(local_cluster)["agents"]["r1"]["state"] == "ready", 20, what="r1 back")
