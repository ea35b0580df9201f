"""The scale simulator against the real thing: 50 simulated agents (real znodes,
sockets, protocol and heartbeats) in one process, a real coordinator and the
session's real ZooKeeper; a job completes with every result exactly once, also
when simulated agents crash or drain in the middle of it. Plus the lost-wake-up
race the scale benchmark found in the loop's Waker."""

from __future__ import annotations

import select
import threading

from helpers import PY, wait_for

from bench.scale.fleet import Sim, StatusProbe, ready
from cluster.client.executor import Executor
from cluster.client.session import ClusterClient
from cluster.contract import layout, payload, wire
from cluster.contract.layout import AgentRecord
from cluster.runtime import loop

AGENTS = 50


def start_fleet(cluster, count: int, *extra: str) -> Sim:
    """The simulator under the benchmark's own control channel (JSON lines)."""
    return Sim(
        "sim",
        [
            PY,
            "-m",
            "bench.scale.simfleet",
            "--zk",
            cluster.zk,
            "--cluster",
            cluster.name,
            "--prefix",
            "sim-",
            "--count",
            str(count),
            "--workers",
            "2",
            "--register",
            *extra,
        ],
        cluster.env,
        cluster.tmp / "simfleet.log",
    )


def test_fifty_simulated_agents_run_a_job_exactly_once_through_churn(local_cluster):
    coordinator = local_cluster.coordinator("--log-level", "info")
    fleet = start_fleet(local_cluster, AGENTS, "--session-timeout", "3")
    probe = None
    try:
        assert fleet.wait_event("ready", 30)["n"] == AGENTS
        assert fleet.wait_event("registered", 30)["n"] == AGENTS
        wait_for(lambda: len(local_cluster.agents()) == AGENTS, what="50 znodes")
        data, stat = local_cluster.kazoo.get(layout.agent_path(local_cluster.name, "sim-00007"))
        record = AgentRecord.from_bytes(data)
        assert stat.ephemeralOwner != 0 and record.workers == 2 and record.endpoint.startswith("tcp://127.0.0.1:")
        leader = wait_for(local_cluster.leader, what="a leader")
        probe = StatusProbe(leader.endpoint)
        wait_for(lambda: ready(probe.ask()) == AGENTS, timeout=30, what="the coordinator to connect all 50")

        # The Python API end to end: a simulated worker returns its arguments frame.
        with Executor(zk=local_cluster.zk, cluster=local_cluster.name) as ex:
            assert list(ex.map(abs, range(300))) == [((i,), {}) for i in range(300)]

        # A job of 20 ms tasks while 5 agents crash (socket gone at once, znode a
        # simulated session later) and 5 drain, and 10 new ones join.
        fleet.ask(op="delay", seconds=0.02)
        tasks = 3000
        counts = [0] * tasks
        wrong = []
        done = threading.Event()
        left = [tasks]

        def on_result(index: int, status: int, body: bytes) -> None:
            counts[index] += 1
            if status != wire.OK or body != payload.pack_args((index,)):
                wrong.append(index)
            left[0] -= 1
            if left[0] == 0:
                done.set()

        with ClusterClient(local_cluster.zk, local_cluster.name) as client:
            job = client.open_job(payload.pack_reference("builtins", "tuple"), {"retries": 2}, on_result)
            for i in range(tasks):
                job.submit(i, payload.pack_args((i,)))
                if i == tasks // 3:
                    assert fleet.ask(op="leave", n=5, how="crash")["n"] == 5
                    assert fleet.ask(op="leave", n=5, how="drain")["n"] == 5
                    assert fleet.ask(op="join", n=10)["n"] == 10
            assert done.wait(60), f"{left[0]} results missing"
            job.close()
        assert wrong == [] and all(c == 1 for c in counts)

        stats = fleet.ask("stats", op="stats")
        assert stats["crashed"] == 5 and stats["drained"] == 5 and stats["joined"] == 10
        assert stats["tasks_executed"] >= tasks + 300
        # The crashed agents' znodes go when their (simulated) sessions expire; then all agree.
        wait_for(lambda: len(local_cluster.agents()) == AGENTS, timeout=30, what="ZooKeeper to settle at 50")
        wait_for(
            lambda: ready(probe.ask()) == AGENTS and len(probe.ask()["agents"]) == AGENTS,
            timeout=30,
            what="the coordinator to settle at 50",
        )
        assert "Traceback" not in coordinator.text()
    finally:
        if probe is not None:
            probe.close()
        fleet.stop()
    assert fleet.proc.returncode == 0
    # Stopping closes the one shared session: every znode of the process goes at once.
    wait_for(lambda: local_cluster.agents() == [], timeout=15, what="the znodes to go with the session")


def test_simulated_agents_register_again_when_their_session_is_lost(local_cluster):
    """As real agents do: the session ends (here from outside, as a partition longer than
    the session timeout would end it), every znode goes, and once the ZooKeeper client
    has a new session the agents register again and the coordinator takes them back."""
    local_cluster.coordinator()
    fleet = start_fleet(local_cluster, 20)
    probe = None
    try:
        assert fleet.wait_event("registered", 30)["n"] == 20
        probe = StatusProbe(wait_for(local_cluster.leader, what="a leader").endpoint)
        wait_for(lambda: ready(probe.ask()) == 20, timeout=30, what="the coordinator to connect all 20")
        fleet.ask(op="expire_session")
        wait_for(
            lambda: fleet.ask("stats", op="stats").get("registered_again") == 20,
            timeout=30,
            what="the 20 agents to register again",
        )
        stats = fleet.ask("stats", op="stats")
        # A lost session fires every watch; the agents' drain watches must not take it for a request.
        assert stats["sessions_lost"] == 1 and stats.get("drained", 0) == 0 and stats["alive"] == 20
        wait_for(lambda: len(local_cluster.agents()) == 20, what="20 znodes again")
        wait_for(lambda: ready(probe.ask()) == 20, timeout=30, what="the coordinator to take all 20 back")
        with Executor(zk=local_cluster.zk, cluster=local_cluster.name) as ex:
            assert list(ex.map(abs, range(100))) == [((i,), {}) for i in range(100)]
    finally:
        if probe is not None:
            probe.close()
        fleet.stop()


def test_simulated_agents_behind_relays_run_a_job_through_crashes_on_few_connections(local_cluster):
    """What `python -m bench.scale --relays` measures, small: 40 simulated agents name two relays;
    the coordinator holds a connection per relay, not per agent, and a job still gets
    every result exactly once while agents crash behind a relay."""
    coordinator = local_cluster.coordinator("--log-level", "info")
    for rid in ("relayA", "relayB"):
        local_cluster.relay(rid)
    wait_for(
        lambda: (
            len(local_cluster.kazoo.get_children(layout.relays_path(local_cluster.name))) == 2
            if local_cluster.kazoo.exists(layout.relays_path(local_cluster.name))
            else False
        ),
        what="two relays",
    )
    fleets = [
        Sim(
            f"sim{i}",
            [
                PY,
                "-m",
                "bench.scale.simfleet",
                "--zk",
                local_cluster.zk,
                "--cluster",
                local_cluster.name,
                "--prefix",
                f"s{i}-",
                "--count",
                "20",
                "--workers",
                "2",
                "--register",
                "--session-timeout",
                "3",
                "--relay",
                rid,
            ],
            local_cluster.env,
            local_cluster.tmp / f"sim{i}.log",
        )
        for i, rid in enumerate(("relayA", "relayB"))
    ]
    probe = None
    try:
        for fleet in fleets:
            assert fleet.wait_event("registered", 30)["n"] == 20
        probe = StatusProbe(wait_for(local_cluster.leader, what="a leader").endpoint)
        wait_for(lambda: ready(probe.ask()) == 40, timeout=30, what="the coordinator to reach all 40")
        assert {a.get("via") for a in probe.ask()["agents"].values()} == {"relayA", "relayB"}
        import psutil

        fds = psutil.Process(coordinator.pid).num_fds()
        assert fds < 40, f"{fds} descriptors: the coordinator connected to agents, not relays"
        fleets[0].ask(op="delay", seconds=0.01)
        fleets[1].ask(op="delay", seconds=0.01)
        with Executor(zk=local_cluster.zk, cluster=local_cluster.name) as ex:
            futures = [ex.submit(abs, i) for i in range(2000)]
            assert fleets[0].ask(op="leave", n=5, how="crash")["n"] == 5
            assert [f.result(timeout=60) for f in futures] == [((i,), {}) for i in range(2000)]
    finally:
        if probe is not None:
            probe.close()
        for fleet in fleets:
            fleet.stop()


def test_waker_never_loses_a_wake_up():
    """Threads posting while the loop drains: every burst must wake the loop. The
    first coalescing version cleared its flag before consuming the eventfd and lost
    a wake-up within ~1,000 rounds; the coordinator then sat on joined agents."""
    waker = loop.Waker()
    rounds, threads, per = 3000, 3, 5
    go = [threading.Event() for _ in range(rounds)]

    def poster() -> None:
        for r in range(rounds):
            go[r].wait()
            for i in range(per):
                waker.post(i)

    for _ in range(threads):
        threading.Thread(target=poster, daemon=True).start()
    try:
        for r in range(rounds):
            go[r].set()
            got = 0
            while got < threads * per:
                assert select.select([waker.fd], [], [], 2.0)[0], f"lost wake-up in round {r}"
                got += len(waker.drain())
    finally:
        for event in go:
            event.set()
        waker.close()
