"""The status document and the metrics, read from the directory, the front and the
scheduler: every key `clusterctl status --json` readers use, and every metric name."""

from __future__ import annotations

import collections
import types

from helpers import agent_record

from cluster.contract import wire
from cluster.contract.config import CoordinatorConfig
from cluster.contract.layout import RelayRecord
from cluster.coordinator import report
from cluster.coordinator.directory import AgentDirectory
from cluster.coordinator.front import ClientFront
from cluster.coordinator.scheduler import Scheduler
from cluster.runtime.membership import MemberEvent


def agent(node_id, endpoint, relay=""):
    return agent_record(node_id, endpoint=endpoint, workers=2, cores=2, relay=relay)


def coordinator():
    """A leader with a1 (ready, 1 of 2 workers busy), a2 (written off once, as silent),
    r1 (behind rack1, not answering yet), and rack2 (registered, silent: bypassed)."""
    cfg = CoordinatorConfig()
    scheduler = Scheduler()
    directory = AgentDirectory(cfg, scheduler, "c1")
    front = ClientFront(cfg, scheduler, directory, "c1", lambda identity, why: None)
    rack = RelayRecord(
        node_id="rack1", host="h", endpoint="tcp://10.0.0.9:1", version="0", protocol=1, pid=1, started=0
    )
    quiet = RelayRecord(
        node_id="rack2", host="h", endpoint="tcp://10.0.0.8:1", version="0", protocol=1, pid=1, started=0
    )
    records = {
        "a1": agent("a1", "tcp://10.0.0.1:1"),
        "a2": agent("a2", "tcp://10.0.0.2:1"),
        "r1": agent("r1", "tcp://10.0.0.3:1", relay="rack1"),
    }
    directory.elected(5, {"rack1": rack}, records, now=0.0)
    directory.on_relay(MemberEvent("joined", "rack2", quiet), now=-10.0)
    for node_id in ("a1", "a2"):
        directory.peers[node_id].up = True
        scheduler.agent_up(node_id, 2, 4, [])
        directory.liveness.beat(node_id, 9.0)
    directory.peers["a1"].load, directory.peers["a1"].memory = 0.75, 0.4  # its last heartbeat said so
    directory.write_off("a2", "silent for 2.0 s", "silent")
    job = scheduler.add_job("j", b"client", b"fn", "d", {"record": 7}, now=0.0)
    scheduler.add_tasks(job, [0, 1], (b"0", b"1"))
    scheduler.plan()  # both to a1 (idle workers first)
    scheduler.on_result("a1", "j", 0, 1, wire.OK, b"r")
    front.counters["clients_timed_out"] += 1
    directory.relays.heard(b"relay/rack1", 9.5)
    directory.relays.turned(10.0, 2.0)
    return types.SimpleNamespace(
        id="c1",
        epoch=5,
        leading=True,
        endpoint="tcp://10.0.0.100:5555",
        scheduler=scheduler,
        directory=directory,
        front=front,
        counters=collections.Counter(dropped_messages=2),
        rejected_keys=lambda: 4,
        zookeeper_connected=lambda: True,
    )


def test_the_status_document_keeps_every_key_its_readers_use():
    doc = report.status(coordinator(), now=10.0)
    assert doc == {
        "coordinator": "c1",
        "epoch": 5,
        "leading": True,
        "endpoint": "tcp://10.0.0.100:5555",
        "nodes": {"ready": 1, "unreachable": 2},
        "workers": {"total": 2, "busy": 1, "idle": 1},
        "agents": {
            "a1": {
                "state": "ready",
                "workers": 2,
                "busy": 1,
                "in_flight": 1,
                "capacity": 4,
                "heartbeat_age": 1.0,
                "written_off": {},
                "host_load": 0.75,
                "memory_used": 0.4,
            },
            "a2": {
                "state": "unreachable",
                "workers": 0,
                "busy": 0,
                "in_flight": 0,
                "heartbeat_age": None,
                "written_off": {"silent": 1},
                "host_load": None,
                "memory_used": None,
            },
            "r1": {
                "state": "unreachable",
                "workers": 0,
                "busy": 0,
                "in_flight": 0,
                "heartbeat_age": None,
                "via": "rack1",
                "written_off": {},
                "host_load": None,
                "memory_used": None,
            },
        },
        "jobs": 1,
        "queued": 0,
        "running": 1,
        "delivered": 1,
        "outcomes": {"ok": 1},
        "failed": 0,
        "tasks_per_second": 0.0,
        "heartbeat_interval": 0.5,
        "relays": {"rack1": "tcp://10.0.0.9:1", "rack2": "tcp://10.0.0.8:1"},
        "relays_bypassed": ["rack2"],
        "counters": {"dropped_messages": 2, "clients_timed_out": 1, "delivered": 1, "rejected_keys": 4},
        "written_off": {"silent": 1},
        "job_progress": {"7": {"done": 1, "failed": 0, "outstanding": 1}},
    }


class Metrics:
    def __init__(self):
        self.seen = {}

    def gauge(self, name, help_text, value, **labels):
        self.seen[(name, tuple(labels.items()))] = value

    def total(self, name, help_text, value):
        self.seen[(name, ())] = value

    def counters(self, name, help_text, values, label):
        self.seen[(name, label)] = dict(values)

    def observe(self, name, help_text, values):
        self.seen[(name, "observed")] = list(values)


def test_the_metrics_keep_their_names_and_labels():
    c = coordinator()
    c.scheduler.latencies = [(0.1, 0.2)]
    m = Metrics()
    report.export(m, c, now=10.0)
    assert m.seen == {
        ("leader", ()): 1.0,
        ("epoch", ()): 5,
        ("zookeeper_connected", ()): 1.0,
        ("agents", ()): 1,
        ("workers", ()): 2,
        ("queue_depth", ()): 0,
        ("tasks_running", ()): 1,
        ("jobs", ()): 1,
        ("heartbeat_interval_seconds", ()): 0.5,
        ("agent_heartbeat_age_seconds", (("node", "a1"),)): 1.0,
        ("tasks_total", "outcome"): {"ok": 1},
        ("dropped_messages_total", ()): 2,
        ("agents_written_off_total", "cause"): {"silent": 1},
        ("dispatch_latency_seconds", "observed"): [0.1],
        ("task_round_trip_seconds", "observed"): [0.2],
        ("scheduler_events_total", "event"): {},
    }
    assert c.scheduler.latencies == []  # drained
