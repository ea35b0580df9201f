"""An agent (or relay) restarted after a crash registers at once when its predecessor is
provably dead (same host, kernel boot and pid namespace; its pid gone or now another
process's), and never removes the record of a live process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import pytest
from helpers import PY, agent_record, wait_for

from agents import registration
from agents.registration import Holder, judge_holder
from cluster.contract import layout
from cluster.contract.layout import AgentRecord, RelayRecord

# The old session outlives every wait below (ZooKeeper caps it at 20 ticks: 10 s in the tests'
# server), so an agent that waited for it to expire would not be back in time.
LONG_SESSION = ("--zk-session-timeout", "30")
BACK = 8.0


def listed(cluster, node_id: str) -> dict | None:
    """The agent as `clusterctl nodes --json` shows it, or None."""
    res = cluster.clusterctl("nodes", "--json", timeout=30)
    assert res.returncode == 0, res.stderr
    return next((n for n in json.loads(res.stdout) if n["node_id"] == node_id), None)


def owner(cluster, path: str) -> int:
    return cluster.kazoo.get(path)[1].ephemeralOwner


def test_an_agent_killed_and_started_again_is_back_while_the_old_session_lives(local_cluster):
    path = layout.agent_path(local_cluster.name, "fr")
    first = local_cluster.agent("fr", 1, *LONG_SESSION)
    wait_for(lambda: (n := listed(local_cluster, "fr")) and n["pid"] == first.pid, what="the first agent")
    old_owner = owner(local_cluster, path)
    first.signal(signal.SIGKILL)
    first.popen.wait(5)
    second = local_cluster.agent("fr", 1, name="fr-2")
    wait_for(lambda: (n := listed(local_cluster, "fr")) and n["pid"] == second.pid, BACK, what="the agent back")
    assert owner(local_cluster, path) not in (0, old_owner)  # its own session's znode, not the dead one's
    text = second.text()
    assert "held by a dead process" in text and "replacing its record" in text
    assert "waiting for its session to expire" not in text


def test_an_agent_whose_predecessor_is_an_unreaped_zombie_is_back_too(local_cluster):
    first = local_cluster.agent("zo", 1, *LONG_SESSION)
    wait_for(lambda: (n := listed(local_cluster, "zo")) and n["pid"] == first.pid, what="the first agent")
    first.signal(signal.SIGKILL)  # not waited for: a zombie until the test's teardown reaps it
    wait_for(lambda: _state(first.pid) == "Z", what="the killed agent to be a zombie")
    second = local_cluster.agent("zo", 1, name="zo-2")
    wait_for(lambda: (n := listed(local_cluster, "zo")) and n["pid"] == second.pid, BACK, what="the agent back")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return fh.read().rsplit(b")", 1)[1].split()[0].decode()


def test_a_relay_killed_and_started_again_is_back_while_the_old_session_lives(local_cluster):
    path = layout.relay_path(local_cluster.name, "rk")

    def relay_pid() -> int | None:
        data = local_cluster.kazoo.exists(path) and local_cluster.kazoo.get(path)[0]
        return RelayRecord.from_bytes(data).pid if data else None

    first = local_cluster.relay("rk", *LONG_SESSION)
    wait_for(lambda: relay_pid() == first.pid, what="the first relay")
    old_owner = owner(local_cluster, path)
    first.signal(signal.SIGKILL)
    first.popen.wait(5)
    second = local_cluster.relay("rk", name="relay-rk-2")
    wait_for(lambda: relay_pid() == second.pid, BACK, what="the relay back")
    assert owner(local_cluster, path) not in (0, old_owner)
    assert "replacing its record" in second.text()


def test_a_live_agents_record_is_never_removed(local_cluster):
    path = layout.agent_path(local_cluster.name, "live")
    first = local_cluster.agent("live", 1)
    wait_for(lambda: (n := listed(local_cluster, "live")) and n["pid"] == first.pid, what="the first agent")
    before = local_cluster.kazoo.get(path)
    second = local_cluster.agent("live", 1, name="live-2")
    assert second.popen.wait(30) == 2
    assert "already registered by a live agent" in second.text() and "Traceback" not in second.text()
    data, stat = local_cluster.kazoo.get(path)
    assert (data, stat.ephemeralOwner, stat.czxid) == (before[0], before[1].ephemeralOwner, before[1].czxid)
    assert first.popen.poll() is None and listed(local_cluster, "live")["pid"] == first.pid


@pytest.fixture
def bystander():
    """A live process that is no agent: its pid stands in a record the test writes."""
    proc = subprocess.Popen([PY, "-c", "import time; time.sleep(120)"], stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _held_by(cluster, node_id: str, **fields) -> str:
    """An agent's znode held by the test's own (live) session, with a record of ``fields``."""
    path = layout.agent_path(cluster.name, node_id)
    cluster.kazoo.ensure_path(layout.agents_path(cluster.name))
    cluster.kazoo.create(path, agent_record(node_id, **fields).to_bytes(), ephemeral=True)
    return path


def test_a_record_whose_pid_is_now_another_process_is_replaced(local_cluster, bystander):
    namespace = registration.process_key().rpartition("/")[0]
    start = wait_for(lambda: registration._start_ticks(bystander.pid), what="the bystander to start")
    wrong = f"{namespace}/{int(start) + 1}"
    path = _held_by(local_cluster, "reused", host=socket.gethostname(), pid=bystander.pid, process_key=wrong)
    agent = local_cluster.agent("reused", 1)
    wait_for(lambda: (n := listed(local_cluster, "reused")) and n["pid"] == agent.pid, BACK, what="the agent")
    assert owner(local_cluster, path) != local_cluster.kazoo.client_id[0]
    assert bystander.poll() is None  # only its record went


def test_a_record_whose_pid_lives_with_the_same_start_is_kept(local_cluster, bystander):
    namespace = registration.process_key().rpartition("/")[0]
    start = wait_for(lambda: registration._start_ticks(bystander.pid), what="the bystander to start")
    key = f"{namespace}/{start}"
    path = _held_by(local_cluster, "kept", host=socket.gethostname(), pid=bystander.pid, process_key=key)
    before = local_cluster.kazoo.get(path)
    agent = local_cluster.agent("kept", 1)
    assert agent.popen.wait(30) == 2
    assert "already registered by a live agent" in agent.text()
    assert local_cluster.kazoo.get(path) == before


def test_a_record_from_another_host_is_refused(local_cluster):
    dead = subprocess.run([PY, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    key = f"{registration.process_key().rpartition('/')[0]}/1"
    path = _held_by(local_cluster, "far", host="elsewhere.example", pid=int(dead.stdout), process_key=key)
    before = local_cluster.kazoo.get(path)
    agent = local_cluster.agent("far", 1)
    assert agent.popen.wait(30) == 2
    assert "already registered by a live agent (host elsewhere.example" in agent.text()
    assert local_cluster.kazoo.get(path) == before


# ------------------------------------------------------------------ the judgement alone


def _dead_pid() -> int:
    done = subprocess.run([PY, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_only_a_record_of_this_boot_and_pid_namespace_is_proven_dead():
    here = registration.process_key().rpartition("/")[0]
    pid, host = _dead_pid(), socket.gethostname()

    def judged(**fields) -> Holder:
        return judge_holder(agent_record("x", host=host, pid=pid, **fields).to_bytes(), AgentRecord)

    assert judged(process_key=f"{here}/1") is Holder.DEAD
    # Another container with our host name, another machine with it: its pid means nothing here.
    other_boot = "00000000-0000-0000-0000-000000000000/" + here.split("/", 1)[1]
    assert judged(process_key=f"{other_boot}/1") is Holder.EXPIRING
    assert judged(process_key=f"{here.split('/', 1)[0]}/pid:[1]/1") is Holder.EXPIRING
    assert judged() is Holder.EXPIRING  # an older release's record: waited out, as before
    absurd = agent_record("x", host=host, pid=2**40, process_key=f"{here}/1")
    assert judge_holder(absurd.to_bytes(), AgentRecord) is Holder.DEAD  # no process can have that pid
    assert judge_holder(b"{garbage", AgentRecord) is Holder.LIVE
    assert judge_holder(agent_record("x", host="elsewhere", pid=pid).to_bytes(), AgentRecord) is Holder.LIVE


def test_a_record_of_this_very_process_is_waited_out_as_before():
    # Another client of this process, or an earlier session of it: not a predecessor.
    mine = agent_record("x", host=socket.gethostname(), pid=os.getpid(), process_key=registration.process_key())
    assert judge_holder(mine.to_bytes(), AgentRecord) is Holder.EXPIRING
