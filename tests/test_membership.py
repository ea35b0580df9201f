"""Agents in ZooKeeper: registration, duplicates, `clusterctl nodes`, discovery
by the coordinator, garbage znodes, and leader election between coordinators."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import time

from helpers import PY, ROOT, LineReader, agent_record, wait_for

from cluster.contract import layout
from cluster.contract.layout import AgentRecord
from cluster.runtime.zkserver import free_ports


def test_agent_registers_an_ephemeral_znode_with_its_metadata(local_cluster):
    agent = local_cluster.agent("n1", 2, "--label", "rack=r7", "--label", "gpu=no")
    wait_for(lambda: local_cluster.agents() == ["n1"], what="registration")
    data, stat = local_cluster.kazoo.get(layout.agent_path(local_cluster.name, "n1"))
    record = AgentRecord.from_bytes(data)
    assert stat.ephemeralOwner != 0
    assert record.workers == 2 and record.pid == agent.pid and record.state == "ready"
    assert record.labels == {"rack": "r7", "gpu": "no"}
    assert record.endpoint.startswith("tcp://127.0.0.1:") and not record.endpoint.endswith(":0")
    assert record.cores >= 1 and record.memory > 0 and record.version
    wait_for(lambda: len(agent.workers()) == 2, what="one worker per requested core")


def test_second_agent_with_the_same_node_id_is_refused(local_cluster):
    local_cluster.agent("dup", 1)
    wait_for(lambda: local_cluster.agents() == ["dup"], what="registration")
    second = local_cluster.agent("dup", 1, name="dup-2")
    assert second.popen.wait(30) == 2
    text = second.text()
    assert "already registered by a live agent" in text and "Traceback" not in text
    # The refused agent left no workers behind.
    assert second.children() == []


def test_nodes_lists_members_without_a_coordinator(local_cluster):
    local_cluster.agent("n1", 1)
    local_cluster.agent("n2", 2)
    wait_for(lambda: local_cluster.agents() == ["n1", "n2"], what="registration")
    res = local_cluster.clusterctl("nodes", "--json")
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    assert [n["node_id"] for n in listed] == ["n1", "n2"]
    assert [n["workers"] for n in listed] == [1, 2]
    assert all(n["uptime"] >= 0 and n["state"] == "ready" for n in listed)
    table = local_cluster.clusterctl("nodes")
    assert table.returncode == 0
    header, *lines = table.stdout.splitlines()
    assert header.split() == [
        "NODE",
        "HOST",
        "ENDPOINT",
        "STATE",
        "WORKERS",
        "CORES",
        "MEMORY",
        "VERSION",
        "PYTHON",
        "PLATFORM",
        "UPTIME",
        "RELAY",
    ]
    assert [line.split()[0] for line in lines] == ["n1", "n2"]
    assert [line.split()[-1] for line in lines] == ["-", "-"]
    assert table.stderr.strip().endswith("2 nodes, 3 workers")


@contextlib.contextmanager
def _nodes_watch(local_cluster, *args: str):
    """`clusterctl nodes --watch ARGS` piped: its lines; it must stop cleanly on Ctrl-C. Members already
    registered when its watches are armed come as joins too, so the lines are the same however late it starts."""
    watch = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "nodes", "--watch", *args],
        env=local_cluster.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield LineReader(watch.stdout)
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(10)
    assert watch.returncode == 0


def test_nodes_lists_relays_and_watch_follows_them(local_cluster):
    """Relays are members too: listed with the agents that name them, and followed live."""
    with _nodes_watch(local_cluster, "--json") as lines:
        relay = local_cluster.relay("rack1")
        joined = json.loads(lines.next())
        assert (joined["event"], joined["role"], joined["node_id"]) == ("joined", "relay", "rack1")
        assert joined["record"]["endpoint"].startswith("tcp://127.0.0.1:") and joined["record"]["uptime"] >= 0
        local_cluster.agent("r1", 1, "--relay", "rack1")
        local_cluster.agent("r2", 2, "--relay", "rack1")
        local_cluster.agent("d1", 1)
        wait_for(lambda: local_cluster.agents() == ["d1", "r1", "r2"], what="registration")
        agent_events = [json.loads(lines.next()) for _ in range(3)]
        assert sorted((e["role"], e["node_id"], e["record"]["relay"]) for e in agent_events) == [
            ("agent", "d1", ""),
            ("agent", "r1", "rack1"),
            ("agent", "r2", "rack1"),
        ]

        listed = json.loads(local_cluster.clusterctl("nodes", "--relays", "--json").stdout)
        assert [(r["node_id"], r["agents"]) for r in listed] == [("rack1", 2)]
        table = local_cluster.clusterctl("nodes")
        agents_part, relays_part = table.stdout.split("\n\n")
        assert {line.split()[0]: line.split()[-1] for line in agents_part.splitlines()[1:]} == {
            "d1": "-",
            "r1": "rack1",
            "r2": "rack1",
        }
        header, row = relays_part.splitlines()
        assert header.split() == ["RELAY", "HOST", "ENDPOINT", "AGENTS", "VERSION", "UPTIME"]
        assert row.split()[0] == "rack1" and row.split()[3] == "2"
        assert table.stderr.strip().endswith("3 nodes, 4 workers, 1 relays")

        relay.signal(signal.SIGTERM)
        left = json.loads(lines.next())
        assert (left["event"], left["role"], left["node_id"], left["record"]) == ("left", "relay", "rack1", None)


def _busy_agent(local_cluster, node_id: str, seconds: int) -> tuple:
    """An agent whose only worker runs a task for `seconds`, so its drain lasts that long."""
    coordinator = local_cluster.coordinator()
    agent = local_cluster.agent(node_id, 1)
    local_cluster.wait_ready(coordinator, [node_id])
    job = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "submit", "time:sleep", "--inputs", "-"],
        env=local_cluster.env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job.stdin.write(f"{seconds}\n")
    job.stdin.close()
    local_cluster.wait_status(lambda s: s["workers"]["busy"] == 1, what="the task to start")
    return agent, job


def test_nodes_watch_piped_prints_a_join_a_drain_and_a_leave_in_order(local_cluster):
    with _nodes_watch(local_cluster) as lines:
        agent, job = _busy_agent(local_cluster, "w1", 3)
        assert lines.next().split()[1:4] == ["joined", "w1", "ready"]
        agent.signal(signal.SIGTERM)  # drains for the 3 s its task still runs
        assert lines.next().split()[1:4] == ["changed", "w1", "draining"]
        assert lines.next().split()[1:3] == ["left", "w1"]
        assert agent.popen.wait(20) == 0 and job.wait(20) == 0  # the drained task's result was delivered


def test_nodes_watch_json_events(local_cluster):
    with _nodes_watch(local_cluster, "--json") as lines:
        agent = local_cluster.agent("w2", 1)
        first = json.loads(lines.next())
        assert (first["event"], first["role"], first["node_id"], first["record"]["state"]) == (
            "joined",
            "agent",
            "w2",
            "ready",
        )
        assert first["record"]["workers"] == 1 and first["record"]["uptime"] >= 0
        agent.signal(signal.SIGTERM)
        events = [json.loads(lines.next())]
        while events[-1]["event"] != "left":
            events.append(json.loads(lines.next()))
        # An idle agent is draining for only milliseconds: a ZooKeeper watch may see
        # the state change or only the removal that follows it, never anything else.
        seen = [(e["event"], e["record"] and e["record"]["state"]) for e in events]
        assert seen in ([("changed", "draining"), ("left", None)], [("left", None)])


def test_nodes_watch_on_a_terminal_is_a_live_table(local_cluster):
    master, slave = pty.openpty()
    watch = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "nodes", "--watch"],
        env=dict(local_cluster.env, COLUMNS="250"),
        cwd=ROOT,
        stdout=slave,
        stderr=slave,
        stdin=slave,
    )
    os.close(slave)
    screen = bytearray()

    def shows(text: str) -> bool:
        while True:
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                return text.encode() in screen
            try:
                screen.extend(os.read(master, 65536))
            except OSError:
                return text.encode() in screen

    try:
        wait_for(lambda: shows("0 nodes, 0 workers"), 20, what="the empty table")
        agent = local_cluster.agent("t1", 2)
        wait_for(lambda: shows("1 nodes, 2 workers"), 20, what="the table to show the join")
        assert b"NODE" in screen and b"t1" in screen and b"joined" in screen
        assert b"\x1b[" in screen  # redrawn in place with terminal escapes, not appended lines
        agent.signal(signal.SIGTERM)
        wait_for(lambda: shows("left     t1"), 20, what="the leave in the event list")
        wait_for(
            lambda: screen.rfind(b"0 nodes, 0 workers") > screen.find(b"1 nodes, 2 workers"),
            5,
            what="the table to drop the node",
        )
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(10)
        os.close(master)
    assert watch.returncode == 0


def test_coordinator_discovers_joins_and_leaves(local_cluster):
    local_cluster.coordinator()
    wait_for(lambda: local_cluster.leader() is not None, what="a leader")
    agent = local_cluster.agent("late", 1)
    local_cluster.wait_agent("late", "ready")
    agent.signal(signal.SIGTERM)
    agent.popen.wait(20)
    local_cluster.wait_agent("late", None)


def test_garbage_agent_znodes_are_ignored(running_cluster):
    path = layout.agents_path(running_cluster.name)
    for name, data in [("junk1", b"\xff\x00not json"), ("junk2", b'{"node_id": "junk2"}'), ("junk3", b"[]")]:
        running_cluster.kazoo.create(f"{path}/{name}", data, ephemeral=True)
    res = running_cluster.clusterctl("nodes", "--json")
    assert [n["node_id"] for n in json.loads(res.stdout)] == ["a1", "a2"]
    res = running_cluster.clusterctl("submit", "math:factorial", "--range", "0", "20")
    assert res.returncode == 0, res.stderr
    assert running_cluster.coordinator_proc.popen.poll() is None


def test_one_coordinator_leads_and_a_standby_takes_over(local_cluster):
    ports = free_ports(2)
    first = local_cluster.coordinator(name="c1", port=ports[0])
    wait_for(lambda: local_cluster.leader() is not None, what="a leader")
    leader = local_cluster.leader()
    assert str(first.pid) in leader.coordinator_id or leader.pid == first.pid
    second = local_cluster.coordinator(name="c2", port=ports[1])
    local_cluster.agent("a1", 2)
    local_cluster.wait_agent("a1", "ready", endpoint=first.endpoint)
    time.sleep(0.5)  # time enough for a standby to connect too, were it to dispatch
    standby = local_cluster.status(second.endpoint)
    assert standby["leading"] is False and standby["agents"] == {}, standby  # standbys do not dispatch
    first.signal(signal.SIGKILL)
    wait_for(
        lambda: (rec := local_cluster.leader()) is not None and rec.pid == second.pid, 30, what="the standby to lead"
    )
    assert local_cluster.leader().epoch > leader.epoch
    res = local_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "100")
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.splitlines()) == 100


def test_status_reports_the_leaders_view(running_cluster):
    res = running_cluster.clusterctl("status", "--json")
    assert res.returncode == 0, res.stderr
    state = json.loads(res.stdout)
    assert state["leading"] is True and state["epoch"] >= 1 and state["standbys"] == 0
    assert sorted(state["agents"]) == ["a1", "a2"]
    assert all(a["workers"] == 2 and a["heartbeat_age"] < 5 for a in state["agents"].values())
    text = running_cluster.clusterctl("status")
    assert text.returncode == 0 and "2 ready; workers 0 busy, 4 idle of 4" in text.stdout, text.stdout


def test_prometheus_metrics_from_agent_and_coordinator(local_cluster):
    import urllib.request

    free_port, agent_port = free_ports(2)
    coordinator = local_cluster.coordinator("--metrics-port", str(free_port))
    local_cluster.agent("m1", 2, "--metrics-port", str(agent_port))
    local_cluster.wait_ready(coordinator, ["m1"])
    res = local_cluster.clusterctl("submit", "math:sqrt", "--inputs", "-", input='4\n"x"\n9\n')
    assert res.returncode == 1

    def scrape(port: int) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    wait_for(lambda: 'clusterd_tasks_total{outcome="ok"} 2.0' in scrape(free_port), 10, what="coordinator metrics")
    text = scrape(free_port)
    assert 'clusterd_tasks_total{outcome="error"} 1.0' in text
    assert "clusterd_leader 1.0" in text and "clusterd_agents 1.0" in text and "clusterd_workers 2.0" in text
    assert 'clusterd_agent_heartbeat_age_seconds{node="m1"}' in text
    wait_for(lambda: 'clusterd_tasks_total{outcome="ok"} 2.0' in scrape(agent_port), 10, what="agent metrics")
    # The job's workers end with it, and fresh ones start: "starting" until they say ready.
    wait_for(lambda: 'clusterd_workers{state="idle"} 2.0' in scrape(agent_port), 10, what="both workers idle again")
    assert "clusterd_zookeeper_connected 1.0" in scrape(agent_port)


def test_json_logs_are_one_object_per_line(local_cluster):
    agent = local_cluster.agent("j1", 1, "--log-format", "json")
    wait_for(lambda: local_cluster.agents() == ["j1"], 20, what="the agent to register")
    agent.stop()
    events = [json.loads(line) for line in agent.text().splitlines() if line.startswith("{")]
    assert any(e["logger"] == "agents.agent" and "registered" in e["message"] for e in events)
    assert all({"time", "level", "logger", "message"} <= set(e) for e in events)


def test_a_second_start_replaces_the_children_watch(kazoo_client, cluster_name):
    """A coordinator elected again calls start() again; the agents must not then be listed
    twice for every join and leave (the first watch ends at its next event)."""
    from cluster.runtime.membership import Membership

    listings, events = [], []

    class Counting(Membership):
        def _on_children(self, children, *generation):
            result = super()._on_children(children, *generation)
            if result is None:  # a watch that did the work, as opposed to one that ended
                listings.append(sorted(children))
            return result

    membership = Counting(kazoo_client, cluster_name, events.append)
    membership.start()
    membership.start()  # as after a re-election
    wait_for(lambda: listings, what="the first listing")
    listings.clear()
    record = agent_record("x1", labels={}, state="ready")
    kazoo_client.create(layout.agent_path(cluster_name, "x1"), record.to_bytes(), ephemeral=True)
    wait_for(lambda: [e.kind for e in events] == ["joined"], what="the join")
    assert listings == [["x1"]]
    membership.stop()


def test_a_rejoin_zookeeper_refuses_is_tried_again_until_it_is_taken(cluster_name, own_zk):
    from kazoo.security import OPEN_ACL_UNSAFE, make_acl

    from agents.registration import Registration
    from cluster.runtime.zk import close, connect

    server = own_zk
    admin = agent = None
    try:
        admin, agent = connect(server.connect_string), connect(server.connect_string)
        record = agent_record("r1")
        registration = Registration(agent, cluster_name, record)
        registration.register()
        registration.keep()
        path = registration.path
        # When the agent reconnects, its znode is gone and ZooKeeper refuses to create it.
        admin.delete(path)
        admin.set_acls(path.rsplit("/", 1)[0], [make_acl("world", "anyone", read=True, admin=True)])
        server.stop(remove=False)
        server.start()  # same data and port: both sessions survive, the agent reconnects
        wait_for(lambda: registration.failed_rejoins > 0, 20, what="the refused rejoin")
        wait_for(lambda: admin.connected, 20, what="the admin client to reconnect")
        assert admin.exists(path) is None
        admin.set_acls(path.rsplit("/", 1)[0], OPEN_ACL_UNSAFE)
        wait_for(lambda: admin.exists(path), 15, what="the rejoin to be tried again and taken")
        assert admin.get(path)[1].ephemeralOwner == agent.client_id[0]
        registration.deregister()
        assert admin.exists(path) is None
    finally:
        close(agent)
        close(admin)
