"""ZooKeeper as operations.md sets it up (three servers, port 2181, quorum ports 2888/3888),
each server a JVM in a node's network namespace at that node's address.

Namespaces, not systemd containers: ZooKeeper is not what this tier tests (the project's
units are), Debian's package ships no unit to run, and three more booted systems would
cost CPU the two cores need for the scenarios. Each server still has its own address on
the private network, so the cluster reaches it as it would a remote ensemble."""

from __future__ import annotations

import subprocess
from pathlib import Path

from container import wait_until
from network import Link

from cluster.runtime.zkserver import LOG4J, classpath, find_java, srvr

PORT = 2181


class Ensemble:
    def __init__(self, links: list[Link], base: Path):
        self.links, self.base = links, base
        self.procs: list[subprocess.Popen] = []

    @property
    def connect_string(self) -> str:
        return ",".join(f"{link.address}:{PORT}" for link in self.links)

    def start(self, timeout: float = 60.0) -> None:
        peers = [f"server.{i + 1}={link.address}:2888:3888" for i, link in enumerate(self.links)]
        for i, link in enumerate(self.links):
            home = self.base / f"zk{i + 1}"
            (home / "data").mkdir(parents=True)
            (home / "data" / "myid").write_text(f"{i + 1}\n")
            (home / "log4j.properties").write_text(LOG4J)
            settings = [
                "tickTime=2000",
                "initLimit=10",
                "syncLimit=5",
                f"dataDir={home / 'data'}",
                f"clientPort={PORT}",
                f"clientPortAddress={link.address}",
                "admin.enableServer=false",
                "4lw.commands.whitelist=srvr,ruok,mntr",
                *peers,
            ]
            (home / "zoo.cfg").write_text("\n".join(settings) + "\n")
            with open(home / "zk.log", "ab") as log:
                self.procs.append(
                    subprocess.Popen(
                        ["ip", "netns", "exec", link.netns, find_java(), "-Xmx128m", "-XX:+UseSerialGC"]
                        + ["-XX:TieredStopAtLevel=1", f"-Dlog4j.configuration=file:{home / 'log4j.properties'}"]
                        + [
                            "-cp",
                            classpath(),
                            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                            str(home / "zoo.cfg"),
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        wait_until(
            lambda: all(srvr(link.address, PORT) for link in self.links), timeout, "the ZooKeeper ensemble's quorum"
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- zk{i + 1} ---\n" + "\n".join((self.base / f"zk{i + 1}" / "zk.log").read_text().splitlines()[-20:])
            for i in range(len(self.links))
        )
