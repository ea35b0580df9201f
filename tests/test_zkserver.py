"""The ZooKeeper launcher against a real ZooKeeper: standalone via the session
fixture and a throwaway server, and a 3-node ensemble surviving its leader's death."""

from __future__ import annotations

import socket
import time

import psutil
import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError

from cluster.runtime.zkserver import (
    ZooKeeperEnsemble,
    ZooKeeperNotInstalled,
    ZooKeeperServer,
    classpath,
    find_java,
    srvr,
)


def missing_zookeeper() -> str | None:
    try:
        find_java(), classpath()
    except ZooKeeperNotInstalled as exc:
        return str(exc)
    return None


# Also covers the tests that start their own servers rather than use zk_server.
MISSING = missing_zookeeper()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"needs ZooKeeper: {MISSING}")


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_session_server_is_standalone_on_loopback(zk_server):
    info = srvr("127.0.0.1", zk_server.port)
    assert info is not None and info["Mode"] == "standalone"
    assert zk_server.connect_string == f"127.0.0.1:{zk_server.port}"
    # Java binds a dual-stack socket, so 127.0.0.1 shows up as ::ffff:127.0.0.1.
    listeners = {
        (c.laddr.ip.removeprefix("::ffff:"), c.laddr.port)
        for c in psutil.Process(zk_server.pid).net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert listeners == {("127.0.0.1", zk_server.port)}, "every listener on loopback, admin server off"


def test_kazoo_creates_and_reads_a_znode(kazoo_client, cluster_name):
    path = f"/{cluster_name}/probe"
    kazoo_client.create(path, b"hello", makepath=True)
    assert kazoo_client.get(path)[0] == b"hello"
    assert kazoo_client.get_children(f"/{cluster_name}") == ["probe"]
    kazoo_client.delete(f"/{cluster_name}", recursive=True)


@pytest.mark.parametrize("case", ["a/b c"])
def test_cluster_name_names_the_test_and_is_znode_safe(cluster_name, case):
    assert cluster_name.startswith("t-test-cluster-name-names-the-test-and-is-znode-safe-a-b-c-")
    assert "/" not in cluster_name and " " not in cluster_name and "[" not in cluster_name


def test_stop_refuses_connections_and_is_idempotent(tmp_path):
    server = ZooKeeperServer(tick_time=500, log_path=str(tmp_path / "zk.log"))
    try:
        with server:
            port, pid = server.port, server.pid
            assert srvr("127.0.0.1", port)["Mode"] == "standalone"
            assert server.log_tail(5).strip(), "log4j must be wired up so failures can be diagnosed"
        assert refuses(port)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert not server.dir.exists(), "a data dir the server created itself is removed on stop"
        server.stop()  # idempotent
    finally:
        server.stop()


def test_fixed_port_taken_fails_fast_with_the_log(zk_server):
    # The port is busy (the session server holds it): the JVM exits on the bind
    # error and start() must say so, not report the other server as ours.
    server = ZooKeeperServer(port=zk_server.port)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with code") as exc:
        server.start(timeout=15)
    server.stop()
    assert time.monotonic() - t0 < 14
    assert "Address already in use" in str(exc.value)
    assert srvr("127.0.0.1", zk_server.port)["Mode"] == "standalone"  # the session server is unharmed


def test_ensemble_elects_one_leader_and_survives_its_death():
    ensemble = ZooKeeperEnsemble(size=3, tick_time=500).start(timeout=30)
    client = KazooClient(hosts=ensemble.connect_string, timeout=4)
    try:
        modes = sorted(srvr("127.0.0.1", s.port)["Mode"] for s in ensemble.servers)
        assert modes == ["follower", "follower", "leader"]
        leader = ensemble.leader_index()
        assert leader is not None

        client.start(timeout=10)
        client.create("/before", b"1")
        ensemble.kill(leader)
        assert not ensemble.servers[leader].running

        # The surviving two still form a quorum; a write must go through once
        # they have elected a new leader (measured 0.3-0.8 s).
        t_kill, last = time.monotonic(), None
        while time.monotonic() < t_kill + 10:
            try:
                client.create("/after", b"2")
                break
            except NodeExistsError:  # an earlier try went through but its reply was lost
                break
            except KazooException as exc:  # connection loss, session moved...: not yet
                last = exc
                time.sleep(0.1)
        else:
            pytest.fail(f"no write within 10 s of killing the leader: {last!r}")
        print(f"write resumed {time.monotonic() - t_kill:.2f} s after killing the leader")
        assert client.get("/before")[0] == b"1" and client.get("/after")[0] == b"2"
        new_leader = ensemble.leader_index()
        assert new_leader is not None and new_leader != leader

        ensemble.restart(leader)  # same ports and data: it rejoins as a follower
        assert srvr("127.0.0.1", ensemble.servers[leader].port)["Mode"] == "follower"
        assert ensemble.leader_index() == new_leader
    except BaseException:
        print("\n\n".join(f"--- zk{i + 1} ---\n{s.log_tail(30)}" for i, s in enumerate(ensemble.servers)))
        raise
    finally:
        client.stop()
        client.close()
        ensemble.stop()
    assert not any(s.running for s in ensemble.servers)
    assert not ensemble.dir.exists()
