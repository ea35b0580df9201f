"""Shared fixtures: one real ZooKeeper for the whole test session (never a mock),
a fresh cluster name per test (so each test lives in its own subtree), and the
server's log attached to the report of any failing test that used it.

Cluster-process fixtures live in ``tests/helpers.py``."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import uuid
from collections.abc import Iterator

import psutil
import pytest
from kazoo.client import KazooClient

from cluster.runtime.zkserver import ZooKeeperNotInstalled, ZooKeeperServer, free_ports

ZK_LOG_LINES = 50

# tests/chaos/ imports tests/helpers.py like the tests beside it do; its cluster
# fixtures (local_cluster, running_cluster) are available to every test.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
pytest_plugins = ["helpers"]

# Several tests send SIGINT to a command (Ctrl-C) and expect it to stop. A shell that
# starts the suite in the background without job control (`(make test &)`, nohup) makes
# SIGINT ignored, and an ignored signal stays ignored in every process started from here.
# A handler, unlike SIG_IGN, is reset to the default on exec, so the commands get Ctrl-C back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    # Fixtures read these in their teardown (item.rep_setup / rep_call / rep_teardown)
    # to decide whether to print their logs.
    setattr(item, f"rep_{report.when}", report)
    # A section on the failing report itself shows up in the failure summary
    # for any phase, including a fixture failing during setup.
    server = getattr(item, "funcargs", {}).get("zk_server")
    if report.failed and isinstance(server, ZooKeeperServer):
        report.sections.append(
            (f"ZooKeeper log (last {ZK_LOG_LINES} lines, {server.log_path})", server.log_tail(ZK_LOG_LINES))
        )


@pytest.fixture(scope="session")
def zk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """A standalone ZooKeeper on a free loopback port for the whole session.
    tickTime 500 ms lets a KazooClient(timeout=1) session expire in about a
    second (the minimum session timeout is 2 ticks), so fault tests stay fast.
    Its data dir and log stay under pytest's basetemp for post-mortems."""
    server = ZooKeeperServer(data_dir=str(tmp_path_factory.mktemp("zk")), tick_time=500)
    try:
        server.start()
    except ZooKeeperNotInstalled as exc:
        server.stop()
        pytest.skip(f"needs ZooKeeper: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_zk(zk_server: ZooKeeperServer, tmp_path) -> Iterator[ZooKeeperServer]:
    """A ZooKeeper of the test's own, to stop, kill or restart (same data dir and port)
    without touching the session's. (Asks for zk_server only to skip when it is missing.)"""
    server = ZooKeeperServer(data_dir=str(tmp_path / "zk"), tick_time=500).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def zk_connect(zk_server: ZooKeeperServer) -> str:
    """The session server's connect string, "127.0.0.1:PORT"."""
    return zk_server.connect_string


@pytest.fixture
def cluster_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A name no other test (or earlier run against the same server) uses. A detached job
    that ended leaves its owner's spool service running (cluster/client/spool_service.py),
    and one of a test that failed midway its holder: the test's own are stopped with it
    (their command lines name the cluster, or a spool in its default directory)."""
    base = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:60].rstrip("-")
    name = f"t-{base}-{uuid.uuid4().hex[:8]}"
    yield name
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        ours = any(name in arg for arg in cmdline)
        if ours and ("cluster.client.spool_service" in cmdline or "cluster.client.holder" in cmdline):
            with contextlib.suppress(psutil.Error):
                proc.kill()


@pytest.fixture
def kazoo_client(zk_connect: str) -> Iterator[KazooClient]:
    """A connected client, stopped and closed at teardown."""
    client = KazooClient(hosts=zk_connect)
    client.start(timeout=10)
    try:
        yield client
    finally:
        client.stop()
        client.close()


@pytest.fixture
def free_port() -> int:
    """A loopback port that was free a moment ago (nothing listens on it)."""
    return free_ports(1)[0]
