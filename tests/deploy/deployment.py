"""The deployed cluster: a ZooKeeper ensemble, two coordinators and three agents, each node on
its own address, installed as docs/operations.md says; a client on this host reaches them
over the private network with the client keys.

Node names are host names, so they are the agents' node ids too."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import software
from container import Container, wait_until
from leftovers import leftovers
from network import Network
from zookeeper import Ensemble

CLUSTER = "deploy"
ZOOKEEPERS = ("zk1", "zk2", "zk3")
COORDINATORS = ("coord1", "coord2")
AGENTS = ("agent1", "agent2", "agent3")
UNIT = {"coordinator": "cluster-coordinator", "agent": "cluster-agent"}
KEYS = "/etc/clusterd/keys"
ZK_AUTH = "/etc/clusterd/zk.auth"
# operations.md's table: which keys each role's host holds.
ROLE_KEYS = {
    "coordinator": ("coordinator.key", "coordinator.key_secret", "agent.key", "client.key"),
    "agent": ("agent.key", "agent.key_secret", "coordinator.key"),
}
CLIENT_KEYS = ("client.key", "client.key_secret", "coordinator.key")
SYSUSER = 'u clusterd - "clusterd daemons" /var/lib/clusterd'


def role_of(node: str) -> str:
    return "coordinator" if node in COORDINATORS else "agent"


class Deployment:
    def __init__(self, base: Path, tag: str):
        self.base, self.tag = base, tag
        self.network: Network | None = None
        self.ensemble: Ensemble | None = None
        self.nodes: dict[str, Container] = {}
        self.disks = base / "disks"
        self.wheels = base / "wheels"
        self.client_keys = base / "client-keys"
        self.zk_auth = base / "zk.auth"  # operations.md's optional ACLs: every node and the client share it
        self.active_after: dict[str, float] = {}  # node: seconds from start to active, by systemd's clock
        self._stopped = False
        self.started_in = 0.0

    # ------------------------------------------------------------ bring-up
    def start(self) -> None:
        began = time.monotonic()
        venv = software.cached_venv()
        self.wheels.mkdir()
        self.wheel = software.build_wheel(self.wheels)
        self.next_wheel = software.build_wheel(self.wheels, ".post1")
        self._keys()
        self.prepare()
        assert self.network is not None
        self.ensemble = Ensemble([self.network.add(z) for z in ZOOKEEPERS], self.base / "zookeeper")
        self.ensemble.start()
        for name in COORDINATORS + AGENTS:
            self.add_node(name, venv)
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(self._bring_up, COORDINATORS + AGENTS))
        self.started_in = time.monotonic() - began

    def prepare(self) -> None:
        """The network, and the tmpfs that holds the nodes' disks."""
        self.network = Network(self.tag)
        self.disks.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=700", f"{self.tag}-disks", str(self.disks)], check=True)

    def add_node(self, name: str, venv: Path | None = None) -> Container:
        """A node on the network, not booted; with ``venv``, that venv at /opt/clusterd/venv on its disk."""
        assert self.network is not None
        disk = self.disks / name
        disk.mkdir()
        if venv is not None:
            # The cached /opt/clusterd/venv, as the node's own: made by the same command on the same root.
            (disk / "upper/opt/clusterd").mkdir(parents=True)
            subprocess.run(["cp", "-a", str(venv), str(disk / "upper" / software.VENV.lstrip("/"))], check=True)
        self.nodes[name] = Container(name, self.network.add(name), disk, f"{self.tag}-{name}")
        return self.nodes[name]

    def _keys(self) -> None:
        everything = self.base / "keys"
        host_clusterctl("keys", "generate", "--out", str(everything))
        self.all_keys = everything
        self.client_keys.mkdir(mode=0o700)
        for key in CLIENT_KEYS:
            shutil.copy2(everything / key, self.client_keys / key)
        self.zk_auth.touch(mode=0o600)
        self.zk_auth.write_text(f"clusterd:{secrets.token_hex(16)}\n")

    def _bring_up(self, name: str) -> None:
        node = self.nodes[name]
        node.boot()
        self.install_wheel(name, self.wheel)
        role = role_of(name)
        node.run("systemd-sysusers", "--inline", SYSUSER)
        node.run("install", "-d", "-o", "clusterd", "-g", "clusterd", "-m", "0700", KEYS)
        for key in ROLE_KEYS[role]:
            node.copy_in(self.all_keys / key, f"{KEYS}/{key}")
        node.copy_in(self.zk_auth, ZK_AUTH)
        node.run("sh", "-c", f"chown clusterd:clusterd {KEYS}/* {ZK_AUTH} && chmod 0600 {KEYS}/*_secret {ZK_AUTH}")
        flags = ["--zk", self.zk, "--cluster", CLUSTER, "--keys", KEYS, "--zk-auth", ZK_AUTH]
        if role == "agent":
            flags += ["--label", f"node={name}", "--metrics-port", "9464"]
        else:
            flags += ["--bind", "tcp://0.0.0.0:5555", "--metrics-port", "9465"]
        installed = node.run(f"{software.VENV}/bin/clusterctl", role, "install", *flags, check=False)
        if installed.returncode != 0:
            journal = node.journal(UNIT[role])[-3000:]
            raise AssertionError(f"{name}: install failed:\n{installed.stdout}{installed.stderr}\n{journal}")
        self.active_after[name] = self.time_to_active(name)

    def install_wheel(self, name: str, wheel: Path) -> None:
        """``pip install`` the wheel into the node's venv (its dependencies are there already)."""
        node = self.nodes[name]
        node.copy_in(wheel, f"/var/tmp/{wheel.name}")
        node.run(
            f"{software.VENV}/bin/pip", "install", "-q", "--no-deps", "--force-reinstall", f"/var/tmp/{wheel.name}"
        )

    # ------------------------------------------------------------ looking
    @property
    def zk(self) -> str:
        assert self.ensemble is not None
        return self.ensemble.connect_string

    @property
    def client_env(self) -> dict[str, str]:
        return dict(
            os.environ,
            CLUSTER_ZK=self.zk,
            CLUSTER_NAME=CLUSTER,
            CLUSTER_KEYS=str(self.client_keys),
            CLUSTER_ZK_AUTH=str(self.zk_auth),
        )

    def clusterctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return host_clusterctl(*args, env=self.client_env, timeout=timeout, check=False)

    def members(self) -> dict[str, dict]:
        """``clusterctl nodes --json``: the agents registered in ZooKeeper, by node id."""
        res = self.clusterctl("nodes", "--json")
        assert res.returncode == 0, res.stderr
        return {row["node_id"]: row for row in json.loads(res.stdout)}

    def status(self) -> dict | None:
        """``clusterctl status --json``, or None while no leader answers."""
        res = self.clusterctl("status", "--json", "--timeout", "3")
        return json.loads(res.stdout) if res.returncode == 0 else None

    def unit(self, name: str) -> dict[str, str]:
        return self.nodes[name].show(UNIT[role_of(name)], "ActiveState", "NRestarts", "MainPID", "Result")

    def time_to_active(self, name: str) -> float:
        """From the unit's start to ``active`` (READY=1), by systemd's monotonic clock."""
        props = self.nodes[name].show(
            UNIT[role_of(name)], "InactiveExitTimestampMonotonic", "ActiveEnterTimestampMonotonic"
        )
        return (int(props["ActiveEnterTimestampMonotonic"]) - int(props["InactiveExitTimestampMonotonic"])) / 1e6

    def wait_member(self, name: str, timeout: float = 60.0, other_than: int | None = None, version: str = "") -> float:
        """Until agent ``name`` is in ``nodes --json`` (with a pid other than ``other_than``, of
        ``version``) and ready in the leader's status; the seconds it took."""
        start = time.monotonic()

        def back() -> bool:
            row = self.members().get(name)
            if row is None or row["pid"] == other_than or (version and row["version"] != version):
                return False
            state = self.status()
            return state is not None and state["agents"].get(name, {}).get("state") == "ready"

        wait_until(back, timeout, f"agent {name} back in membership and ready", interval=0.5)
        return time.monotonic() - start

    def leader(self) -> str:
        """The node whose coordinator leads (its address is the leader's endpoint's host)."""
        state = wait_until(self.status, 60, "a leader to answer")
        host = state["endpoint"].split("//")[1].rsplit(":", 1)[0]
        return next(n for n in COORDINATORS if self.nodes[n].address == host)

    def logs(self) -> str:
        out = []
        for name, node in self.nodes.items():
            if node.launcher is not None and node.launcher.poll() is None:
                out.append(f"===== {name}: journal =====\n{node.journal(UNIT[role_of(name)])}")
        if self.ensemble:
            out.append(self.ensemble.logs())
        return "\n".join(out)

    # ------------------------------------------------------------ teardown
    def stop(self) -> list[str]:
        """Everything down and removed (idempotent, also after a failed start); what is left."""
        if self._stopped:
            return leftovers(self.tag)
        self._stopped = True
        with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            list(pool.map(lambda n: n.poweroff(timeout=30), self.nodes.values()))
        for node in self.nodes.values():
            node.kill()
            node.remove_cgroups()
        if self.ensemble:
            self.ensemble.stop()
        if self.network:
            self.network.remove()
        if self.disks.exists():
            subprocess.run(["umount", str(self.disks)], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
        return leftovers(self.tag)


def host_clusterctl(
    *args: str, env: dict | None = None, timeout: float = 60.0, check: bool = True
) -> subprocess.CompletedProcess:
    """This host's clusterctl: the tree under test, with the suite's interpreter."""
    res = subprocess.run(
        [sys.executable, "-m", "cluster.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=software.ROOT,
    )
    if check and res.returncode != 0:
        raise AssertionError(f"clusterctl {' '.join(args)} exited {res.returncode}: {res.stderr}")
    return res
