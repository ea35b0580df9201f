"""Version skew is refused, never executed: agents publish their Python, code serialized by
value (the Executor's, bytecode) goes only to agents on its client's Python minor version, a
job no agent can run fails at once, and a worker never loads bytecode of another Python.
The acceptance test runs an agent on a second interpreter (pyenv's 3.12) beside one on ours."""

from __future__ import annotations

import collections
import hashlib
import json
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import ROOT, agent_record, scrape, wait_for

from agents import worker
from cluster import Executor
from cluster.client.session import ClusterUnavailable
from cluster.contract import payload, wire
from cluster.contract.config import CoordinatorConfig
from cluster.contract.layout import AgentRecord, BadRecord
from cluster.coordinator.agent_messages import AgentMessages
from cluster.coordinator.directory import AgentDirectory
from cluster.coordinator.front import ClientFront
from cluster.coordinator.scheduler import Scheduler
from cluster.runtime.membership import MemberEvent
from cluster.runtime.zkserver import free_ports

OURS = f"{sys.version_info.major}.{sys.version_info.minor}"  # what the Executor pins its jobs to
OTHER_PYTHON = Path("/root/.pyenv/versions/3.12.1/bin/python3.12")


# ------------------------------------------------------------------ records


def test_agent_records_say_their_python_and_older_ones_still_parse():
    record = agent_record("a1", python="3.12.1", platform="linux-x86_64")
    assert AgentRecord.from_bytes(record.to_bytes()) == record
    older = json.loads(agent_record("a1").to_bytes())
    del older["python"], older["platform"]
    parsed = AgentRecord.from_bytes(json.dumps(older).encode())
    assert (parsed.python, parsed.platform) == ("", "")  # a release that did not say: it runs anything, as before
    with pytest.raises(BadRecord):
        AgentRecord.from_bytes(json.dumps(dict(older, python=3.12)).encode())


# ---------------------------------------------------------------- scheduler


def fleet(*agents: tuple[str, str], workers: int = 2) -> Scheduler:
    """A scheduler with connected agents (node id, Python version) of ``workers`` workers, capacity 2x."""
    s = Scheduler(max_batch=256)
    for node, python in agents:
        s.agent_up(node, workers, 2 * workers, [], python)
    return s


def job(s: Scheduler, job_id: str, n: int, python: str | None = None):
    options = {} if python is None else {"python": python}
    j = s.add_job(job_id, b"client", b"fn", "d", options, now=0.0)
    s.add_tasks(j, list(range(n)), tuple(b"%d" % i for i in range(n)))
    return j


def ran(batches) -> dict[str, collections.Counter]:
    """Tasks dispatched, by agent and job."""
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for b in batches:
        out[b.node_id][b.job.job_id] += len(b.tasks)
    return out


def test_pinned_code_goes_only_to_agents_on_its_python_and_other_code_anywhere():
    s = fleet(("old", "3.11.7"), ("new", "3.12.1"), ("unsaid", ""))
    job(s, "bytecode", 100, "3.11")
    job(s, "reference", 100)
    got = ran(s.plan())
    assert got["new"] == {"reference": 4}  # all its credit, none of it bytecode
    assert got["old"]["bytecode"] > 0 and got["unsaid"]["bytecode"] > 0  # an agent that does not say runs it
    assert sum(sum(c.values()) for c in got.values()) == 12  # every credit of every agent used


def test_an_agent_that_cannot_run_the_queue_takes_no_budget_from_one_that_can():
    """Idle workers are filled first across agents with a budget of what is queued: the
    3.12 agent, first in line, must not take the budget of the 3.11 agent and leave it idle."""
    s = fleet(("new", "3.12.1"), ("old", "3.11.7"))
    job(s, "bytecode", 2, "3.11")
    assert ran(s.plan()) == {"old": {"bytecode": 2}}
    assert s.queued == 0


def test_a_pinned_job_waits_while_only_agents_of_another_python_are_connected():
    s = fleet(("new", "3.12.1"))
    j = job(s, "bytecode", 3, "3.11")
    assert s.plan() == [] and s.queued == 3
    s.agent_up("old", 2, 4, [], "3.11.2")
    assert ran(s.plan()) == {"old": {"bytecode": 3}}
    assert all(t.node == "old" for t in j.tasks.values())


def test_a_uniform_fleet_is_not_checked_and_a_mixed_one_is_while_it_lasts():
    s = fleet(("a", "3.11.7"), ("b", "3.11.1"), ("c", ""))
    job(s, "bytecode", 10, "3.11")
    job(s, "reference", 10)
    assert not s.pythons.mixed  # every agent loads every job's code: planning looks at nothing more than before
    s.agent_up("d", 2, 4, [], "3.12.1")
    assert s.pythons.mixed
    s.agent_down("d")
    assert not s.pythons.mixed
    job(s, "other", 1, "3.13")
    assert s.pythons.mixed
    s.end_job("other")
    assert not s.pythons.mixed
    assert s.pythons.agents == {"3.11": 2, "": 1}


def test_a_connected_agent_whose_record_names_another_python_is_planned_for_as_that():
    s = fleet(("a", "3.11.7"))
    job(s, "bytecode", 4, "3.11")
    s.agent_python("a", "3.12.0")  # replaced by an agent on 3.12; its record came after its Welcome
    assert s.plan() == [] and not s.pythons.runs("3.11")
    s.agent_python("a", "3.11.9")
    assert ran(s.plan()) == {"a": {"bytecode": 4}}


# -------------------------------------------------------------------- front


class World:
    """A leading coordinator's directory, agent messages and front, with no agent yet."""

    def __init__(self):
        cfg = CoordinatorConfig()
        self.scheduler = Scheduler(max_batch=cfg.max_batch)
        self.directory = AgentDirectory(cfg, self.scheduler, "c1")
        self.directory.elected(3, {}, {}, now=0.0)
        self.messages = AgentMessages(self.directory, lambda identity, why: None)
        self.front = ClientFront(cfg, self.scheduler, self.directory, "c1", lambda identity, why: None)
        self.ports = iter(range(7000, 8000))

    def register(self, node_id: str, python: str) -> None:
        record = agent_record(node_id, endpoint=f"tcp://10.0.0.1:{next(self.ports)}", workers=2, python=python)
        self.directory.on_member(MemberEvent("joined", node_id, record))

    def connect(self, node_id: str) -> None:
        """The agent answers the Hello."""
        peer = self.directory.peers[node_id]
        self.messages.on_welcome(peer, wire.Welcome(node_id, 3, 2, 4, [], False), now=0.0)

    def submit(self, job_id: str = "j", **options) -> wire.Message:
        (reply,) = self.front.on_submit_job(b"client", wire.SubmitJob(job_id, "d", options, frames=(b"P",)), 0.0)
        return reply.message


def test_an_agent_is_planned_for_with_the_python_of_its_record():
    w = World()
    w.register("a1", "3.12.1")
    w.connect("a1")
    assert w.scheduler.agents["a1"].python == "3.12" and w.scheduler.pythons.runs("3.12")


def test_a_job_no_registered_agent_can_run_fails_at_once_naming_the_versions_on_both_sides():
    w = World()
    for node, python in (("n1", "3.12.1"), ("n2", "3.12.1"), ("n3", "3.13.0")):
        w.register(node, python)
        w.connect(node)
    failed = w.submit(python="3.11")
    assert isinstance(failed, wire.JobFailed) and failed.code == wire.JobFailure.PYTHON_VERSION
    assert "Python 3.11 (the client's)" in failed.reason
    assert "3.12.1 (2 agents), 3.13.0 (1 agent)" in failed.reason
    assert w.scheduler.jobs == {}
    assert isinstance(w.submit(), wire.JobAccepted)  # code that travels as a reference or source runs anywhere
    assert isinstance(w.submit("k", python="3.12"), wire.JobAccepted)


def test_a_pinned_job_waits_for_a_registered_agent_of_its_python_or_for_any_agent():
    w = World()
    assert isinstance(w.submit("alone", python="3.11"), wire.JobAccepted)  # no agent at all: it waits, as before
    w.register("new", "3.12.1")
    w.connect("new")
    assert isinstance(w.submit("alone", python="3.11"), wire.JobAccepted)  # its client takes it back: it waits on
    assert isinstance(w.submit("fresh", python="3.11"), wire.JobFailed)
    w.register("old", "3.11.7")  # registered, not connected yet (a coordinator just elected, say)
    assert isinstance(w.submit("j", python="3.11"), wire.JobAccepted)
    w.directory.on_member(MemberEvent("left", "old", None))
    w.register("unsaid", "")  # of a release that does not say: it may run anything
    assert isinstance(w.submit("k", python="3.11"), wire.JobAccepted)


# ------------------------------------------------------------------- worker


def item(function: bytes, **options) -> worker.Item:
    return worker.Item("j", 0, 1, 0, payload.digest(function), options, function, payload.pack_args((3,), {}))


def test_a_worker_refuses_bytecode_of_another_python_and_runs_its_own():
    blob = payload.pack_callable(lambda x: x * 2)
    status, body = worker.run_task(collections.OrderedDict(), item(blob, python="2.7"))
    assert status == wire.ERROR
    error = payload.load_error(body)
    assert error["type"] == "RuntimeError"
    assert "Python 2.7" in error["message"] and platform.python_version() in error["message"]
    functions: collections.OrderedDict = collections.OrderedDict()
    status, body = worker.run_task(functions, item(blob, python=OURS))
    assert (status, payload.load_result(body, payload.RESULT_PICKLE)) == (wire.OK, 6)
    status, body = worker.run_task(functions, item(blob))  # an older client that does not say: as before
    assert status == wire.OK
    reference = payload.pack_reference("math", "sqrt")
    status, body = worker.run_task(collections.OrderedDict(), item(reference, python="2.7"))
    assert (status, payload.load_result(body, payload.RESULT_PICKLE)) == (wire.OK, 3**0.5)  # not bytecode


# ---------------------------------------------------- against a real cluster


@pytest.fixture(scope="session")
def other_python(request) -> str:
    """Python 3.12 with the project installed, in a virtualenv kept in pytest's cache and made
    again when pyproject.toml changes (pip reaches PyPI the first time: about a minute)."""
    if not OTHER_PYTHON.exists():
        pytest.skip(f"needs a second Python minor version: {OTHER_PYTHON} (pyenv install 3.12.1) is missing")
    if sys.version_info[:2] == (3, 12):
        pytest.skip(f"the tests run on Python 3.12 themselves; {OTHER_PYTHON} is no other minor version")
    venv = request.config.cache.mkdir("venv-python3.12")
    python = venv / "bin" / "python"
    stamp = venv / "installed-from"
    wanted = hashlib.sha256(str(ROOT).encode() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not (python.exists() and stamp.exists() and stamp.read_text() == wanted):
        subprocess.run([OTHER_PYTHON, "-m", "venv", "--clear", venv], check=True, capture_output=True, timeout=120)
        pip = subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", ROOT],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if pip.returncode != 0:
            pytest.skip(f"could not install the project for {OTHER_PYTHON}: {pip.stderr.strip()[-500:]}")
        stamp.write_text(wanted)
    return str(python)


def test_by_value_code_never_reaches_an_agent_on_another_python(local_cluster, other_python, tmp_path):
    """An agent on 3.12 beside one on ours: the Executor's tasks all run on ours, the 3.12
    agent's workers never crash; alone, the 3.12 agent makes an Executor job fail at once
    and runs `clusterctl submit` jobs, which travel as references or source."""
    ours_port, other_port = free_ports(2)
    coordinator = local_cluster.coordinator()
    ours = local_cluster.agent("ours", 2, "--metrics-port", str(ours_port))
    local_cluster.agent("other", 2, "--metrics-port", str(other_port), python=other_python)
    local_cluster.wait_ready(coordinator, ["ours", "other"])

    listed = {n["node_id"]: n for n in json.loads(local_cluster.clusterctl("nodes", "--json").stdout)}
    assert listed["ours"]["python"] == platform.python_version()
    assert listed["other"]["python"].startswith("3.12.")
    assert {n["platform"] for n in listed.values()} == {sysconfig.get_platform()}
    table = local_cluster.clusterctl("nodes").stdout
    assert "PYTHON" in table.splitlines()[0] and listed["other"]["python"] in table

    tasks = 200
    with Executor(zk=local_cluster.zk, cluster=local_cluster.name) as ex:
        ran_on = collections.Counter(
            ex.map(lambda _: f"{sys.version_info.major}.{sys.version_info.minor}", range(tasks))
        )
    assert ran_on == {OURS: tasks}
    ok = 'clusterd_tasks_total{outcome="ok"}'
    wait_for(lambda: scrape(ours_port).get(ok) == tasks, what="our agent to count every task")
    assert scrape(other_port).get(ok, 0) == 0

    ours.stop()
    local_cluster.wait_agent("ours", None)  # gone from ZooKeeper, and so from the coordinator's agents
    with Executor(zk=local_cluster.zk, cluster=local_cluster.name) as ex:
        with pytest.raises(ClusterUnavailable) as refused:
            ex.submit(lambda: 1)
    reason = str(refused.value)
    assert f"Python {OURS} (the client's)" in reason and f"{listed['other']['python']} (1 agent)" in reason

    res = local_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "20", "--ordered")
    assert res.returncode == 0, res.stderr
    assert [json.loads(line)["result"] for line in res.stdout.splitlines()] == [i**0.5 for i in range(20)]
    source = tmp_path / "where.py"
    source.write_text("import platform\n\ndef version(_):\n    return platform.python_version()\n")
    res = local_cluster.clusterctl("submit", f"{source}:version", "--range", "0", "10")
    assert res.returncode == 0, res.stderr
    assert {json.loads(line)["result"] for line in res.stdout.splitlines()} == {listed["other"]["python"]}

    wait_for(lambda: scrape(other_port).get(ok) == 30, what="the 3.12 agent to count its tasks")
    metrics = scrape(other_port)
    assert metrics["clusterd_worker_restarts_total"] == 0
    assert metrics.get('clusterd_tasks_total{outcome="lost"}', 0) == 0
    assert metrics.get('clusterd_tasks_total{outcome="error"}', 0) == 0
