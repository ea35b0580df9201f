"""CURVE between every peer, key files handled safely, ZooKeeper digest ACLs."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import zmq.auth
from helpers import scrape, wait_for
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from cluster.contract import layout, security
from cluster.runtime.zkserver import free_ports


@pytest.fixture
def keys(tmp_path):
    directory = tmp_path / "keys"
    security.generate(directory)
    return directory


def secure(cluster, keys_dir):
    cluster.extra_env.update(CLUSTER_INSECURE="", CLUSTER_KEYS=str(keys_dir))


def test_generate_writes_loadable_pairs_with_private_secrets(keys, local_cluster):
    for role in security.ROLES:
        public, secret = zmq.auth.load_certificate(keys / f"{role}.key_secret")
        assert public and secret
        assert (keys / f"{role}.key_secret").stat().st_mode & 0o077 == 0
    assert keys.stat().st_mode & 0o077 == 0
    res = local_cluster.clusterctl("keys", "generate", "--out", str(keys))
    assert res.returncode == 2 and "--force" in res.stderr  # never overwrites by accident


def test_only_a_client_with_an_allowed_key_gets_results(local_cluster, keys, tmp_path):
    secure(local_cluster, keys)
    coordinator = local_cluster.coordinator()
    local_cluster.agent("a1", 2)
    local_cluster.wait_ready(coordinator, ["a1"])
    assert local_cluster.leader().curve_key == zmq.auth.load_certificate(keys / "coordinator.key")[0].decode()

    ok = local_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "5")
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == 5

    no_key = local_cluster.clusterctl(
        "submit", "math:sqrt", "--range", "0", "5", env=dict(local_cluster.env, CLUSTER_KEYS="")
    )
    assert no_key.returncode == 2 and "requires CURVE keys" in no_key.stderr and no_key.stdout == ""

    # A client key the coordinator does not list, with the right coordinator key.
    other = tmp_path / "other"
    security.generate(other)
    stranger = tmp_path / "stranger"
    stranger.mkdir(mode=0o700)
    for name in ("client.key", "client.key_secret"):
        shutil.copy2(other / name, stranger / name)
    shutil.copy2(keys / "coordinator.key", stranger / "coordinator.key")
    wrong = local_cluster.clusterctl(
        "submit",
        "math:sqrt",
        "--range",
        "0",
        "5",
        "--connect-timeout",
        "3",
        env=dict(local_cluster.env, CLUSTER_KEYS=str(stranger)),
    )
    assert wrong.returncode == 2 and wrong.stdout == "" and "did not answer" in wrong.stderr
    local_cluster.wait_status(lambda s: s["counters"]["rejected_keys"] >= 1, 10, what="the rejection to be counted")
    assert local_cluster.status()["counters"]["rejected_keys"] == 1  # the stranger's connection, and nothing else


def test_an_agent_with_an_unknown_key_cannot_join_the_work(local_cluster, keys, tmp_path):
    secure(local_cluster, keys)
    coordinator = local_cluster.coordinator()
    local_cluster.agent("good", 2)
    rogue_keys = tmp_path / "rogue"
    security.generate(rogue_keys)
    shutil.copy2(keys / "coordinator.key", rogue_keys / "coordinator.key")
    local_cluster.agent("rogue", 2, "--keys", str(rogue_keys))
    local_cluster.wait_ready(coordinator, ["good"])
    wait_for(lambda: "rogue" in local_cluster.agents(), 20, what="the rogue to register")
    module = tmp_path / "where.py"
    module.write_text("import os\n\ndef node(x):\n    return os.environ['CLUSTERD_NODE_ID']\n")
    res = local_cluster.clusterctl("submit", f"{module}:node", "--range", "0", "40")
    assert res.returncode == 0, res.stderr
    assert {json.loads(line)["result"] for line in res.stdout.splitlines()} == {"good"}
    rogue = local_cluster.status()["agents"]["rogue"]
    assert rogue["state"] == "unreachable" and rogue["heartbeat_age"] is None, rogue  # registered, never heard


def test_daemons_refuse_open_secret_files_and_missing_keys(local_cluster, keys):
    os.chmod(keys / "agent.key_secret", 0o644)
    secure(local_cluster, keys)
    agent = local_cluster.agent("loose", 1)
    assert agent.popen.wait(30) == 2
    assert f"chmod 600 {keys / 'agent.key_secret'}" in agent.text() and "Traceback" not in agent.text()
    local_cluster.extra_env.update(CLUSTER_KEYS="")
    coordinator = local_cluster.coordinator()
    assert coordinator.popen.wait(30) == 2
    assert "--insecure" in coordinator.text() and "Traceback" not in coordinator.text()


def test_zookeeper_acls_keep_out_clients_without_credentials(local_cluster, tmp_path, free_port):
    creds = tmp_path / "zk.auth"
    creds.write_text("clusterd:s3cret\n")
    creds.chmod(0o600)
    local_cluster.extra_env.update(CLUSTER_ZK_AUTH=str(creds))
    coordinator = local_cluster.coordinator(port=free_port)
    local_cluster.agent("a1", 1)
    # (the test's own ZooKeeper client has no credentials: it asks the coordinator it started)
    local_cluster.wait_agent("a1", "ready", endpoint=coordinator.endpoint)
    res = local_cluster.clusterctl("nodes", "--json")
    assert res.returncode == 0 and [n["node_id"] for n in json.loads(res.stdout)] == ["a1"]

    outsider = KazooClient(hosts=local_cluster.zk)
    outsider.start(timeout=10)
    try:
        name = local_cluster.name
        with pytest.raises(NoAuthError):
            outsider.get_children(layout.agents_path(name))
        with pytest.raises(NoAuthError):
            outsider.get(layout.leader_path(name))
        with pytest.raises(NoAuthError):
            outsider.create(layout.agent_path(name, "fake"), b"{}", ephemeral=True)
        with pytest.raises(NoAuthError):
            outsider.delete(layout.agent_path(name, "a1"))
    finally:
        outsider.stop()
        outsider.close()
    assert local_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "3").returncode == 0


def test_a_relay_with_the_coordinators_keys_carries_a_secured_cluster_and_a_stranger_gets_nothing(
    local_cluster, keys, tmp_path
):
    secure(local_cluster, keys)
    coordinator = local_cluster.coordinator()
    relay_keys = tmp_path / "relay-keys"  # what docs/security.md lists for a relay host, no more
    relay_keys.mkdir(mode=0o700)
    for name in ("agent.key", "agent.key_secret", "coordinator.key", "coordinator.key_secret"):
        shutil.copy2(keys / name, relay_keys / name)
    (metrics_port,) = free_ports(1)
    local_cluster.relay("rack1", "--keys", str(relay_keys), "--metrics-port", str(metrics_port))
    local_cluster.agent("a1", 2, "--relay", "rack1")
    local_cluster.wait_ready(coordinator, ["a1"])
    assert local_cluster.status()["agents"]["a1"].get("via") == "rack1"
    ok = local_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "50")
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == 50
    # Without keys, the relay's port takes nothing in.
    data, _ = local_cluster.kazoo.get(layout.relay_path(local_cluster.name, "rack1"))
    drops = scrape(metrics_port)["clusterd_dropped_messages_total"]
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(json.loads(data)["endpoint"])
        s.send_multipart([b"a1", b"\x93\x01\x01\xc0"])
        s.send_multipart([b"", b"\x93\x01\x01\xc0"])
        assert not s.poll(1000)
    finally:
        ctx.destroy(0)
    # Once the relay has exported its figures again (a heartbeat from a1 gathered since), none was dropped.
    gathered = scrape(metrics_port)["clusterd_relay_heartbeats_gathered_total"]
    wait_for(
        lambda: scrape(metrics_port)["clusterd_relay_heartbeats_gathered_total"] > gathered,
        10,
        what="the relay's next export",
    )
    assert scrape(metrics_port)["clusterd_dropped_messages_total"] == drops  # nothing reached it to drop
    ok = local_cluster.clusterctl("submit", "math:sqrt", "--range", "0", "5")
    assert ok.returncode == 0, ok.stderr
