"""Real cluster processes for integration tests: coordinators and agents run as
child processes against the real ZooKeeper from conftest, each test in its own
cluster name (its own chroot), logs kept in tmp_path and printed on failure."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
from kazoo.client import KazooClient
from kazoo.retry import KazooRetry

from cluster.client.leader_status import ask_leader as ask_status
from cluster.contract import layout
from cluster.contract.layout import AgentRecord
from cluster.runtime.zk import read_leader

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def assert_gone(pids: list[int], timeout: float = 15.0) -> None:
    """Every pid has exited (a zombie counts: it is only waiting for its reaper)."""

    def gone() -> bool:
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                pass
        return True

    wait_for(gone, timeout, what=f"processes {pids} to exit")


class LineReader:
    """Lines from a child's pipe with a timeout, instead of a hang."""

    def __init__(self, stream):
        import queue
        import threading

        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self._lines.put(line) for line in stream], daemon=True).start()

    def next(self, timeout: float = 20.0) -> str:
        import queue

        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout:g} s") from None


def agent_record(node_id: str, **fields) -> AgentRecord:
    """An agent's record for tests: the fields given, placeholders for the rest."""
    placeholders = dict(
        host="h",
        endpoint="tcp://127.0.0.1:1",
        workers=1,
        cores=1,
        memory=1,
        version="0",
        protocol=1,
        pid=1,
        started=0.0,
    )
    return AgentRecord(node_id=node_id, **{**placeholders, **fields})


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def scrape(port: int) -> dict[str, float]:
    """A daemon's Prometheus metrics (``--metrics-port PORT``): {'name{labels}': value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


class Unanswered(AssertionError):
    """No coordinator leads, or the one asked did not answer its status request."""


def agent_state(status: dict, node: str) -> str | None:
    """The agent's state in a coordinator's status: ready, draining or unreachable; None if it is not listed."""
    agent = status["agents"].get(node)
    return None if agent is None else agent["state"]


def written_off(status: dict, node: str, cause: str) -> int:
    """Times the coordinator wrote the agent off (assumed it lost while it was registered) for ``cause``:
    "closed", "silent" or "unreachable". 0 for an agent it does not list."""
    return status["agents"].get(node, {}).get("written_off", {}).get(cause, 0)


class Proc:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict, cwd: Path = ROOT):
        self.name, self.argv, self.log = name, argv, log
        self.endpoint: str | None = None  # a coordinator's client endpoint, when the test chose its port
        self._fh = open(log, "ab")
        self.popen = subprocess.Popen(
            argv, stdout=self._fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, stdin=subprocess.DEVNULL
        )
        self.pid = self.popen.pid
        self._descendants: set[int] = set()

    def children(self) -> list[psutil.Process]:
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self._descendants.update(k.pid for k in kids)
        return kids

    def workers(self) -> list[psutil.Process]:
        """Its descendants that are worker processes (agents/template.py names them)."""
        out = []
        for child in self.children():
            try:
                if child.name() == "clusterd-worker":
                    out.append(child)
            except psutil.NoSuchProcess:
                continue
        return out

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        self.children()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reap_descendants()
        self._fh.close()
        return self.popen.returncode

    def _reap_descendants(self) -> None:
        # Only processes this test started (the agent's workers), by pid.
        for pid in self._descendants:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass

    def text(self) -> str:
        return self.log.read_text(errors="replace")


class LocalCluster:
    def __init__(self, zk: str, name: str, tmp: Path):
        self.zk, self.name, self.tmp = zk, name, tmp
        self.procs: list[Proc] = []
        self.extra_env: dict[str, str] = {}
        # The observer's own session may expire while a chaos test stops ZooKeeper; its reads retry
        # for a while rather than fail the test for something the test did to it.
        self.kazoo = KazooClient(hosts=zk, command_retry=KazooRetry(max_tries=40, delay=0.1, max_delay=1.0))
        self.kazoo.start(timeout=10)

    @property
    def env(self) -> dict:
        # Unauthenticated on loopback; tests/test_security.py runs secured clusters.
        env = dict(
            os.environ,
            CLUSTER_ZK=self.zk,
            CLUSTER_NAME=self.name,
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
            CLUSTER_INSECURE="1",
        )
        env.update(self.extra_env)
        return env

    def _start(self, name: str, argv: list[str], env: dict | None = None, cwd: Path = ROOT) -> Proc:
        """``env``: variables of this process's own, over ``self.env``."""
        proc = Proc(name, argv, self.tmp / f"{name}.log", {**self.env, **(env or {})}, cwd)
        self.procs.append(proc)
        return proc

    def coordinator(self, *extra: str, name: str = "coordinator", port: int = 0) -> Proc:
        """With a port (a free one), the test knows its client endpoint and can ask it for its
        status whether it leads or not (``status(proc.endpoint)``)."""
        bind = f"tcp://127.0.0.1:{port}"
        proc = self._start(
            name,
            [PY, "-m", "cluster.cli.main", "coordinator", "--bind", bind, "--log-level", "debug", *extra],
        )
        proc.endpoint = bind if port else None
        return proc

    def agent(
        self,
        node_id: str,
        workers: int = 2,
        *extra: str,
        name: str | None = None,
        python: str = PY,
        env: dict | None = None,
        cwd: Path = ROOT,
    ) -> Proc:
        """``python``: the interpreter it (and so its workers) runs, one with the project installed."""
        return self._start(
            name or node_id,
            [
                python,
                "-m",
                "agents",
                "--node-id",
                node_id,
                "--workers",
                str(workers),
                "--bind",
                "tcp://127.0.0.1:0",
                "--log-level",
                "debug",
                *extra,
            ],
            env,
            cwd,
        )

    def relay(self, relay_id: str, *extra: str, name: str | None = None) -> Proc:
        return self._start(
            name or f"relay-{relay_id}",
            [
                PY,
                "-m",
                "agents.relay_cli",
                "--id",
                relay_id,
                "--bind",
                "tcp://127.0.0.1:0",
                "--log-level",
                "debug",
                *extra,
            ],
        )

    def agents(self) -> list[str]:
        path = layout.agents_path(self.name)
        return self.kazoo.retry(lambda: sorted(self.kazoo.get_children(path)) if self.kazoo.exists(path) else [])

    def leader(self):
        return read_leader(self.kazoo, self.name)

    def status(self, endpoint: str | None = None, timeout: float = 5.0) -> dict:
        """What `clusterctl status --json` shows (but the standby count): the leader's, or that of
        the coordinator at ``endpoint``, leading or not. Unanswered if there is none to ask."""
        if endpoint is None:
            leader = self.leader()
            if leader is None:
                raise Unanswered(f"no coordinator leads cluster {self.name}")
            endpoint = leader.endpoint
        keys = "" if self.env.get("CLUSTER_INSECURE") else self.env.get("CLUSTER_KEYS", "")
        try:  # given a curve key, ask_leader secures the socket with the coordinator's key from the keys folder
            return ask_status(endpoint, "curve" if keys else "", keys, timeout)
        except ValueError as exc:
            raise Unanswered(str(exc)) from None

    def wait_status(self, predicate, timeout: float = 20.0, endpoint: str | None = None, what: str = "a status"):
        """The first status (see ``status``) that ``predicate`` accepts. No leader yet, or a
        coordinator that does not answer, is waited out like a status that does not match."""

        def matching() -> dict | None:
            try:
                state = self.status(endpoint)
            except Unanswered:
                return None
            return state if predicate(state) else None

        return wait_for(matching, timeout, what=what)

    def wait_agent(
        self, node: str, state: str | None = "ready", timeout: float = 20.0, endpoint: str | None = None
    ) -> dict:
        """Until the coordinator lists the agent in ``state`` (None: until it no longer lists it)."""
        return self.wait_status(
            lambda s: agent_state(s, node) == state,
            timeout,
            endpoint,
            what=f"agent {node} to be {state or 'gone'} in the coordinator's status",
        )

    def wait_written_off(
        self, node: str, cause: str, count: int = 1, timeout: float = 20.0, endpoint: str | None = None
    ) -> dict:
        """Until the coordinator has written the agent off ``count`` times for ``cause`` (see ``written_off``)."""
        return self.wait_status(
            lambda s: written_off(s, node, cause) >= count,
            timeout,
            endpoint,
            what=f"agent {node} to be written off ({cause})",
        )

    def wait_ready(self, coordinator: Proc, nodes: list[str], timeout: float = 20.0) -> None:
        """Registered in ZooKeeper and "ready" in the status of the coordinator (of the leader, when
        the test does not know the coordinator's endpoint): connected, it takes work."""
        wait_for(lambda: set(nodes) <= set(self.agents()), timeout, what=f"agents {nodes} to register")
        self.wait_status(
            lambda s: all(agent_state(s, n) == "ready" for n in nodes),
            timeout,
            coordinator.endpoint,
            what=f"agents {nodes} to be ready in the coordinator's status",
        )

    def clusterctl(
        self, *args: str, input: str | None = None, timeout: float = 120.0, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PY, "-m", "cluster.cli.main", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env or self.env,
            cwd=ROOT,
        )

    @contextlib.contextmanager
    def clusterctl_running(self, *args: str) -> Iterator[subprocess.Popen]:
        """``clusterctl ARGS`` started and not waited for (stdout and stderr piped, as text);
        killed at the end if it still runs."""
        proc = subprocess.Popen(
            [PY, "-m", "cluster.cli.main", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=ROOT,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.kazoo.stop()
        self.kazoo.close()

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.text()[-6000:]}" for p in self.procs)


# ------------------------------------------------------------------ fixtures
import pytest  # noqa: E402


@pytest.fixture
def local_cluster(zk_connect, cluster_name, tmp_path, request):
    cluster = LocalCluster(zk_connect, cluster_name, tmp_path)
    yield cluster
    cluster.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(cluster.logs())


@pytest.fixture
def running_cluster(local_cluster):
    """A coordinator and two agents with two workers each, connected."""
    coordinator = local_cluster.coordinator()
    local_cluster.agent("a1", 2)
    local_cluster.agent("a2", 2)
    local_cluster.wait_ready(coordinator, ["a1", "a2"])
    local_cluster.coordinator_proc = coordinator
    return local_cluster


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns():
    """A namespace with one veth link to this host: 10.231.N.1 here, 10.231.N.2 there."""
    tag = f"{os.getpid() % 1000}{random.randrange(100)}"
    net = random.randrange(1, 250)
    name, here, there = f"cz{tag}", f"czh{tag}", f"czn{tag}"
    ip("netns", "add", name)
    try:
        ip("link", "add", here, "type", "veth", "peer", "name", there)
        ip("link", "set", there, "netns", name)
        ip("addr", "add", f"10.231.{net}.1/24", "dev", here)
        ip("link", "set", here, "up")
        ip("-n", name, "addr", "add", f"10.231.{net}.2/24", "dev", there)
        ip("-n", name, "link", "set", there, "up")
        ip("-n", name, "link", "set", "lo", "up")
        yield {"name": name, "link": here, "host": f"10.231.{net}.1", "peer": f"10.231.{net}.2"}
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
