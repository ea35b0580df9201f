"""A private ZooKeeper server (or ensemble) as child processes, on loopback.

Used by ``clusterctl up``, the demo, the benchmarks and the test suite; it runs
the distribution's ZooKeeper (Debian package ``zookeeper``) with a config that
binds every listener to 127.0.0.1 and turns the admin server off. Readiness is
the 4-letter ``srvr`` command reporting a ``Mode:``, not an open port: a client
that connects before that stalls for seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

JARS = ["/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-log4j12.jar", "/usr/share/java/log4j-1.2.jar"]

LOG4J = """log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} [myid:%X{myid}] %-5p [%t:%C{1}@%L] - %m%n
"""


class ZooKeeperNotInstalled(RuntimeError):
    pass


def find_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ZooKeeperNotInstalled("java is not installed; ZooKeeper needs it (apt-get install default-jre-headless)")
    return java


def classpath() -> str:
    if not os.path.exists(JARS[0]):
        raise ZooKeeperNotInstalled(
            f"ZooKeeper is not installed ({JARS[0]} is missing); install it with "
            "`apt-get update && apt-get install -y zookeeper` (or run `make zookeeper`)"
        )
    return ":".join(j for j in JARS if os.path.exists(j))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srvr(host: str, port: int, timeout: float = 1.0) -> dict[str, str] | None:
    """The server's ``srvr`` answer as a dict (``Mode`` etc.), or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"srvr")
            chunks = []
            while data := s.recv(4096):
                chunks.append(data)
    except OSError:
        return None
    out = {}
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out if "Mode" in out else None


class ZooKeeperServer:
    """One server. Alone it is standalone; ``peers`` makes it an ensemble member."""

    def __init__(self, data_dir: str | None = None, port: int | None = None, tick_time: int = 2000,
                 log_path: str | None = None, *, myid: int | None = None, peers: list[str] | None = None):
        self._own_dir = data_dir is None
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="clusterd-zk-"))
        self.port = port
        self.tick_time = tick_time
        self.log_path = Path(log_path) if log_path else self.dir / "zk.log"
        self.myid, self.peers = myid, peers
        self.proc: subprocess.Popen | None = None

    @property
    def connect_string(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _write_config(self) -> Path:
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [f"tickTime={self.tick_time}", f"dataDir={data}", f"clientPort={self.port}",
                 "clientPortAddress=127.0.0.1", "admin.enableServer=false", "4lw.commands.whitelist=*",
                 f"maxSessionTimeout={self.tick_time * 40}", "initLimit=10", "syncLimit=5"]
        if self.peers:
            (data / "myid").write_text(f"{self.myid}\n")
            lines += self.peers
        cfg = self.dir / "zoo.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        (self.dir / "log4j.properties").write_text(LOG4J)
        return cfg

    def launch(self) -> None:
        """Start the process without waiting (ensemble members start together)."""
        java, cp = find_java(), classpath()
        if self.port is None:
            self.port = free_port()
        cfg = self._write_config()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [java, "-Xmx256m", f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}", "-cp", cp,
             "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(cfg)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()

    def ready(self) -> bool:
        return self.port is not None and srvr("127.0.0.1", self.port, 0.5) is not None

    def start(self, timeout: float = 20.0) -> ZooKeeperServer:
        fixed_port = self.port is not None
        for _ in range(1 if fixed_port else 3):  # a free port can be taken before java binds it
            self.launch()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self.ready():
                    return self
                time.sleep(0.05)
            self.stop(remove=False)
            if not fixed_port:
                self.port = None
        raise RuntimeError(f"ZooKeeper did not start; last log lines:\n{self.log_tail(30)}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, remove: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if remove and self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, n: int = 50) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> ZooKeeperServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ZooKeeperEnsemble:
    """``size`` servers on loopback forming one quorum."""

    def __init__(self, size: int = 3, tick_time: int = 2000):
        self.dir = Path(tempfile.mkdtemp(prefix="clusterd-zkens-"))
        ports = [(free_port(), free_port(), free_port()) for _ in range(size)]
        peers = [f"server.{i + 1}=127.0.0.1:{q}:{e}" for i, (_, q, e) in enumerate(ports)]
        self.servers = [ZooKeeperServer(str(self.dir / f"zk{i + 1}"), client, tick_time, myid=i + 1, peers=peers)
                        for i, (client, _, _) in enumerate(ports)]

    @property
    def connect_string(self) -> str:
        return ",".join(s.connect_string for s in self.servers)

    def start(self, timeout: float = 30.0) -> ZooKeeperEnsemble:
        for server in self.servers:
            server.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.ready() for s in self.servers):
                return self
            time.sleep(0.05)
        tails = "\n".join(s.log_tail(10) for s in self.servers)
        self.stop()
        raise RuntimeError(f"ZooKeeper ensemble did not form a quorum:\n{tails}")

    def leader_index(self) -> int | None:
        for i, server in enumerate(self.servers):
            info = srvr("127.0.0.1", server.port) if server.port else None
            if info and info.get("Mode") == "leader":
                return i
        return None

    def kill(self, i: int) -> None:
        self.servers[i].kill()

    def restart(self, i: int, timeout: float = 30.0) -> None:
        server = self.servers[i]
        server.launch()
        deadline = time.monotonic() + timeout
        while not server.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"member {i} did not rejoin:\n{server.log_tail(20)}")
            time.sleep(0.05)

    def stop(self) -> None:
        for server in self.servers:
            server.stop(remove=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ZooKeeperEnsemble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
