"""A real ZooKeeper for the whole test session (never a mock), a fresh cluster
name (its own chroot) per test, and the server's log printed when a test fails."""

from __future__ import annotations

import re
import socket
import uuid

import pytest

from cluster.zkserver import ZooKeeperNotInstalled, ZooKeeperServer


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def zk_server(tmp_path_factory):
    # tickTime 500 ms lets sessions expire in about a second in fault tests.
    server = ZooKeeperServer(data_dir=str(tmp_path_factory.mktemp("zk")), tick_time=500)
    try:
        server.start()
    except ZooKeeperNotInstalled as exc:
        pytest.skip(f"needs ZooKeeper: {exc}")
    yield server
    server.stop()


@pytest.fixture
def zk_connect(zk_server, request):
    yield zk_server.connect_string
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"----- ZooKeeper log (last 50 lines) -----\n{zk_server.log_tail(50)}")


@pytest.fixture
def cluster_name(request):
    base = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:60].strip("-")
    return f"t-{base}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def kazoo_client(zk_connect):
    from kazoo.client import KazooClient

    client = KazooClient(hosts=zk_connect)
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
