"""The deployed cluster under what operators and failures do to it. Each scenario checks what
a user can see (``clusterctl nodes --json``, ``status --json``, ``systemctl show``, the job's
results: each exactly once) and records its figures (figures.py). The scenarios share one
deployment and run in this order; each leaves every node running and every agent ready."""

from __future__ import annotations

import re
import time

import pytest
import software
from container import wait_until
from deployment import AGENTS, COORDINATORS, UNIT, role_of
from figures import record
from job import Job

from cluster.cli.localstack import LocalStack

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(300)]


def all_ready(deployment) -> None:
    for agent in AGENTS:
        deployment.wait_member(agent)


def still_running(job: Job) -> None:
    assert job.proc.poll() is None, "the job ended before the disruption: make it longer"


def new_leader(deployment, epoch: int, timeout: float = 60.0) -> dict:
    return wait_until(
        lambda: (s := deployment.status()) is not None and s["epoch"] > epoch and s,
        timeout,
        f"a leader of an epoch after {epoch}",
        interval=0.2,
    )


def test_a_job_runs_across_all_nodes_every_result_once(deployment, tmp_path):
    assert set(deployment.members()) == set(AGENTS)
    state = deployment.status()
    assert state is not None and state["standbys"] == len(COORDINATORS) - 1
    for name in deployment.nodes:
        assert deployment.unit(name)["ActiveState"] == "active"
    job = Job(deployment.client_env, tmp_path, 600)
    ran_on = job.finish()
    assert set(ran_on) == set(AGENTS), f"every agent serves: {ran_on}"
    record("job across all nodes", "600 tasks of 50 ms", job.seconds)
    noop = Job(deployment.client_env, tmp_path, 3000, seconds=0, name="noop")
    noop.finish()
    record("job across all nodes", "3000 no-op tasks", noop.seconds)
    # The same jobs on this host's `clusterctl up` stack: one agent, as many workers as the three have.
    workers = sum(row["workers"] for row in deployment.members().values())
    with LocalStack(workers=str(workers), cluster="local") as stack:
        local = Job(stack.env, tmp_path, 600, name="local")
        local.finish()
        local_noop = Job(stack.env, tmp_path, 3000, seconds=0, name="local-noop")
        local_noop.finish()
    record("job across all nodes", "600 tasks of 50 ms on the host's LocalStack", local.seconds)
    record("job across all nodes", "3000 no-op tasks on the host's LocalStack", local_noop.seconds)


def test_an_agent_stopped_drains_and_killed_or_hung_ones_are_restarted(deployment, tmp_path):
    scenario = "agent stop, kill, SIGSTOP"
    job = Job(deployment.client_env, tmp_path, 2400)
    job.wait_fraction(0.1)
    # systemctl stop: SIGTERM to the agent alone; it drains and exits 0, leaving membership.
    first = deployment.nodes["agent1"]
    started = time.monotonic()
    first.systemctl("stop", UNIT["agent"])
    record(scenario, "stop (drain) took", time.monotonic() - started)
    assert deployment.unit("agent1")["ActiveState"] == "inactive"
    assert deployment.unit("agent1")["Result"] == "success", "a drained agent exits 0"
    assert "agent1" not in deployment.members()
    first.systemctl("start", UNIT["agent"])
    record(scenario, "start to active", deployment.time_to_active("agent1"))
    deployment.wait_member("agent1")
    still_running(job)
    # SIGKILL to all of agent2's processes, and SIGSTOP to agent3's agent, at once.
    killed_pid = deployment.members()["agent2"]["pid"]
    hung_pid = deployment.members()["agent3"]["pid"]
    restarts = {a: int(deployment.unit(a)["NRestarts"]) for a in ("agent2", "agent3")}
    started = time.monotonic()
    deployment.nodes["agent2"].systemctl("kill", "-s", "KILL", UNIT["agent"])
    deployment.nodes["agent3"].systemctl("kill", "-s", "STOP", "--kill-who=main", UNIT["agent"])
    deployment.wait_member("agent2", other_than=killed_pid)
    record(scenario, "killed agent back in membership", time.monotonic() - started)
    deployment.wait_member("agent3", other_than=hung_pid, timeout=90)
    record(scenario, "SIGSTOPped agent back (watchdog 10 s)", time.monotonic() - started)
    for agent in ("agent2", "agent3"):
        unit = deployment.unit(agent)
        assert unit["ActiveState"] == "active"
        assert int(unit["NRestarts"]) == restarts[agent] + 1, f"{agent} was restarted by systemd once"
    assert "watchdog" in deployment.nodes["agent3"].journal(UNIT["agent"]).lower()
    ran_on = job.finish()
    assert set(ran_on) == set(AGENTS)
    record(scenario, "2400 tasks of 50 ms", job.seconds)


def test_the_leader_stopped_then_killed_mid_job_a_standby_takes_over(deployment, tmp_path):
    scenario = "coordinator failover"
    job = Job(deployment.client_env, tmp_path, 3000)
    job.wait_fraction(0.1)
    for how, done in (("stop", "stopped"), ("kill", "killed")):
        leader = deployment.leader()
        epoch = deployment.status()["epoch"]
        still_running(job)
        started = time.monotonic()
        if how == "stop":
            deployment.nodes[leader].systemctl("stop", UNIT["coordinator"])
        else:
            deployment.nodes[leader].systemctl("kill", "-s", "KILL", UNIT["coordinator"])
        state = new_leader(deployment, epoch)
        record(scenario, f"leader {done}: a standby leads after", time.monotonic() - started)
        assert deployment.leader() != leader
        if how == "stop":
            deployment.nodes[leader].systemctl("start", UNIT["coordinator"])
        # Back as the standby: started again, or restarted by systemd after the kill.
        wait_until(
            lambda: (
                deployment.unit(leader)["ActiveState"] == "active"
                and (s := deployment.status()) is not None
                and s["standbys"] == 1
            ),
            60,
            f"{leader} to stand by again",
            interval=0.2,
        )
        assert state["epoch"] > epoch
    assert int(deployment.unit(leader)["NRestarts"]) >= 1
    ran_on = job.finish()
    assert set(ran_on) == set(AGENTS)
    record(scenario, "3000 tasks of 50 ms", job.seconds)


def test_a_node_cut_off_mid_job_is_written_off_then_rejoins(deployment, tmp_path):
    scenario = "link cut and healed"
    job = Job(deployment.client_env, tmp_path, 2400)
    job.wait_fraction(0.1)
    pid = deployment.members()["agent1"]["pid"]
    started = time.monotonic()
    deployment.network.cut("agent1")
    wait_until(
        lambda: (s := deployment.status()) is not None and s["agents"].get("agent1", {}).get("state") != "ready",
        60,
        "the leader to write agent1 off",
        interval=0.2,
    )
    record(scenario, "written off after", time.monotonic() - started)
    wait_until(lambda: "agent1" not in deployment.members(), 60, "agent1's ZooKeeper session to expire", interval=0.2)
    record(scenario, "out of membership after", time.monotonic() - started)
    still_running(job)
    deployment.network.heal("agent1")
    record(scenario, "back after the heal", deployment.wait_member("agent1"))
    assert deployment.members()["agent1"]["pid"] == pid, "the same agent process rejoins: systemd had no cause to act"
    assert deployment.unit("agent1")["ActiveState"] == "active"
    ran_on = job.finish()
    assert ran_on.get("agent2") and ran_on.get("agent3")
    record(scenario, "2400 tasks of 50 ms", job.seconds)


def test_a_rebooted_node_comes_back_by_its_enabled_unit(deployment, tmp_path):
    scenario = "node reboot"
    node = deployment.nodes["agent3"]
    job = Job(deployment.client_env, tmp_path, 1800)
    job.wait_fraction(0.1)
    started = time.monotonic()
    node.poweroff()
    record(scenario, "power-off (agent drained) took", time.monotonic() - started)
    assert "agent3" not in deployment.members()
    still_running(job)
    booted = node.boot()
    record(scenario, "boot", booted)
    record(scenario, "back in membership after power-on", deployment.wait_member("agent3") + booted)
    assert node.boots == 2
    assert deployment.unit("agent3")["ActiveState"] == "active"
    assert node.systemctl("is-enabled", UNIT["agent"]).stdout.strip() == "enabled"
    ran_on = job.finish()
    assert set(ran_on) >= {"agent1", "agent2"}
    record(scenario, "1800 tasks of 50 ms", job.seconds)


def installed_version(deployment, name: str) -> str:
    out = deployment.nodes[name].run(f"{software.VENV}/bin/pip", "show", "clusterd-zk").stdout
    return re.search(r"^Version: (.+)$", out, re.M)[1]


def test_a_rolling_upgrade_under_a_running_job(deployment, tmp_path):
    scenario = "rolling upgrade"
    new = software.wheel_version(deployment.next_wheel)
    assert {row["version"] for row in deployment.members().values()} == {software.wheel_version(deployment.wheel)}
    job = Job(deployment.client_env, tmp_path, 3000)
    job.wait_fraction(0.05)
    started = time.monotonic()
    leader = deployment.leader()
    standby = next(c for c in COORDINATORS if c != leader)
    for name in (*AGENTS, standby, leader):  # operations.md, section 8: agents, standbys, the leader last
        still_running(job)
        epoch = deployment.status()["epoch"]
        deployment.install_wheel(name, deployment.next_wheel)
        deployment.nodes[name].systemctl("restart", UNIT[role_of(name)])
        assert installed_version(deployment, name) == new
        if role_of(name) == "agent":
            deployment.wait_member(name, version=new)
        elif name == leader:
            new_leader(deployment, epoch)
    record(scenario, "five nodes upgraded in", time.monotonic() - started)
    ran_on = job.finish()
    assert set(ran_on) == set(AGENTS)
    assert {row["version"] for row in deployment.members().values()} == {new}
    record(scenario, "3000 tasks of 50 ms", job.seconds)


def test_the_units_are_hardened_inside_the_nodes(deployment):
    """`systemd-analyze security` of each running unit. 2.0: the units score 1.3-1.4 in the "OK"
    band (1.0-4.9); one protection group lost (the syscall filter, the private /tmp, the
    capability set) costs more than 0.6, so a regression fails here."""
    for name, node in deployment.nodes.items():
        unit = UNIT[role_of(name)]
        out = node.run("systemd-analyze", "security", "--no-pager", unit).stdout
        score, band = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", out).groups()
        record("systemd-analyze security", f"{name} {unit}", f"{score} {band}")
        assert float(score) < 2.0, f"{name}: {unit} exposure {score} {band}:\n{out}"
