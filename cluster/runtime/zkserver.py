"""A private ZooKeeper server (or ensemble) as child processes, on loopback, for
``clusterctl up``, the demo, the benchmarks and the tests. Every listener binds
127.0.0.1 and the admin server is off. Readiness is the 4lw ``srvr`` reporting
``Mode:``, not an open port: a client that connects earlier stalls for ~10 s."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from cluster.runtime.lifeline import dies_with_parent

ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"
# zookeeper.jar's manifest Class-Path brings its runtime deps but no SLF4J
# binding; without these two the server logs nothing at all.
JARS = [ZOOKEEPER_JAR, "/usr/share/java/slf4j-log4j12.jar", "/usr/share/java/log4j-1.2.jar"]
BIND_ERROR = b"Address already in use"
LOG4J = (
    "log4j.rootLogger=INFO, C\nlog4j.appender.C=org.apache.log4j.ConsoleAppender\n"
    "log4j.appender.C.layout=org.apache.log4j.PatternLayout\n"
    "log4j.appender.C.layout.ConversionPattern=%d{ISO8601} [myid:%X{myid}] %-5p [%t:%C{1}@%L] - %m%n\n"
)


class ZooKeeperNotInstalled(RuntimeError):
    """java or the ZooKeeper jars are missing (the test fixtures skip on it)."""


def find_java() -> str:
    if java := shutil.which("java"):
        return java
    raise ZooKeeperNotInstalled("java is not on PATH; ZooKeeper needs it: apt-get install default-jre-headless")


def classpath() -> str:
    if not os.path.exists(ZOOKEEPER_JAR):
        raise ZooKeeperNotInstalled(
            f"ZooKeeper is not installed ({ZOOKEEPER_JAR} is missing); install it "
            "with `apt-get update && apt-get install zookeeper` (or `make zookeeper`)"
        )
    return ":".join(j for j in JARS if os.path.exists(j))


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports, all bound at once so none is handed out twice."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def four_letter(host: str, port: int, cmd: str, timeout: float = 1.0) -> dict[str, str]:
    """A 4-letter-word reply as a dict split at each line's first ``:`` or ``=``; {} if no answer."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(cmd.encode())
            reply = b"".join(iter(lambda: s.recv(4096), b"")).decode(errors="replace")
    except OSError:
        return {}
    return {m[1].strip(): m[2].strip() for m in re.finditer(r"^([^:=\n]+)[:=](.*)$", reply, re.M)}


def srvr(host: str, port: int, timeout: float = 1.0) -> dict[str, str] | None:
    """The ``srvr`` answer (``Mode``, ``Zxid``...), or None if unreachable or not serving (no ``Mode``)."""
    info = four_letter(host, port, "srvr", timeout)
    return info if "Mode" in info else None


def _start_all(servers: list[ZooKeeperServer], timeout: float, repick: Callable[[], None] | None) -> None:
    """Launch ``servers`` together (a quorum needs them all) and wait until each serves. A port picked
    by binding :0 can be taken before java binds it: only that is worth a retry, on ``repick``ed ports."""
    deadline = time.monotonic() + timeout
    for attempt in range(3 if repick else 1):
        if attempt and repick:
            repick()
        for server in servers:
            server.launch()
        if all(s.wait_ready(deadline) for s in servers):
            return
        lost_race = any(BIND_ERROR in s.log_path.read_bytes()[s._log_start :] for s in servers)
        why = (
            ", ".join(
                f"{s.connect_string} exited with code {s.proc.returncode}"
                for s in servers
                if s.proc and s.proc.poll() is not None
            )
            or f"not ready in {timeout:g} s"
        )
        tails = "\n".join(f"--- {s.log_path} ---\n{s.log_tail(30 // len(servers))}" for s in servers)
        for server in servers:
            server.stop(remove=False)  # keep the logs for the post-mortem; stop() removes them
        if not lost_race:
            break
    raise RuntimeError(f"ZooKeeper did not start ({why}); last log lines:\n{tails}")


# start_new_session shields the JVMs from Ctrl-C (we stop them in order); this stops them when
# the caller exits, and dies_with_parent when it is killed.
_LIVE: set[ZooKeeperServer] = set()


@atexit.register
def _stop_live() -> None:
    for server in list(_LIVE):
        server.stop()


class ZooKeeperServer:
    """One server: standalone, or an ensemble member given ``myid`` and ``peers`` (server.N lines)."""

    def __init__(
        self,
        data_dir: str | None = None,
        port: int | None = None,
        tick_time: int = 2000,
        log_path: str | None = None,
        *,
        myid: int | None = None,
        peers: list[str] | None = None,
        host: str = "127.0.0.1",
    ):
        # ``host``: the address clients use; tests of partitions bind a veth address
        # of a network namespace they created instead of loopback.
        self.host = host
        self._own_dir = data_dir is None
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="clusterd-zk-"))
        self.port, self.tick_time, self.myid, self.peers = port, tick_time, myid, peers
        self.log_path = Path(log_path) if log_path else self.dir / "zk.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # log offset of the current launch, to judge only its output

    @property
    def connect_string(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _write_config(self) -> Path:
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"tickTime={self.tick_time}",
            f"dataDir={data}",
            f"clientPort={self.port}",
            f"clientPortAddress={self.host}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
            # The default cap, 20 ticks, would cut a 30 s client session to 10 s at tickTime 500.
            f"maxSessionTimeout={max(60_000, 20 * self.tick_time)}",
            "initLimit=10",
            "syncLimit=5",
        ]
        if self.peers:
            (data / "myid").write_text(f"{self.myid}\n")
            lines += self.peers
        (self.dir / "zoo.cfg").write_text("\n".join(lines) + "\n")
        (self.dir / "log4j.properties").write_text(LOG4J)
        return self.dir / "zoo.cfg"

    def launch(self) -> None:
        """Start the JVM without waiting (ensemble members must start together)."""
        java, cp = find_java(), classpath()
        if self.port is None:
            self.port = free_ports(1)[0]
        cfg = self._write_config()
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()
            self.proc = subprocess.Popen(
                # C1-only JIT and serial GC start ~30% faster on 2 vCPUs; a coordination server needs no more.
                [
                    java,
                    "-Xmx256m",
                    "-XX:+UseSerialGC",
                    "-XX:TieredStopAtLevel=1",
                    f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
                    "-cp",
                    cp,
                    "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                    str(cfg),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=dies_with_parent(),
            )
        _LIVE.add(self)

    def wait_ready(self, deadline: float) -> bool:
        """Poll until serving (True), or until the JVM exits or the deadline passes. ``conf``
        names the dataDir: proof that our JVM answered, not a server that won the port race."""
        while time.monotonic() < deadline and self.running:
            if srvr(self.host, self.port or 0, 0.5) is not None:
                conf = four_letter(self.host, self.port or 0, "conf", 0.5)
                if conf.get("dataDir", "").startswith(str(self.dir / "data")):
                    return True
            time.sleep(0.05)
        return False

    def start(self, timeout: float = 20.0) -> ZooKeeperServer:
        """Launch and wait until serving. A failed start keeps the dir for the post-mortem; stop() clears it."""
        if not self.running:  # a second launch would orphan the first JVM
            _start_all([self], timeout, (lambda: setattr(self, "port", None)) if self.port is None else None)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean shutdown, sessions just stop."""
        self.stop(remove=False, grace=0)

    def stop(self, remove: bool = True, grace: float = 10.0) -> None:
        """Terminate, wait ``grace`` s, then SIGKILL. Idempotent. ``remove`` deletes
        the data dir if we created it (a caller-supplied one is the caller's)."""
        if self.proc is not None and self.proc.poll() is None:
            if grace > 0:
                self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _LIVE.discard(self)
        if remove and self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, n: int = 50) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return f"(no log at {self.log_path})"

    def __enter__(self) -> ZooKeeperServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ZooKeeperEnsemble:
    """``size`` ZooKeeperServers on loopback forming one quorum."""

    def __init__(self, size: int = 3, tick_time: int = 2000):
        self.size, self.tick_time = size, tick_time
        self.dir = Path(tempfile.mkdtemp(prefix="clusterd-zkens-"))
        self.servers: list[ZooKeeperServer] = []
        self._configure()

    def _configure(self) -> None:
        ports = free_ports(3 * self.size)  # client, quorum and election port per member
        peers = [f"server.{i + 1}=127.0.0.1:{ports[3 * i + 1]}:{ports[3 * i + 2]}" for i in range(self.size)]
        # In place: _start_all holds this very list while it retries on fresh ports.
        self.servers[:] = [
            ZooKeeperServer(str(self.dir / f"zk{i + 1}"), ports[3 * i], self.tick_time, myid=i + 1, peers=peers)
            for i in range(self.size)
        ]

    @property
    def connect_string(self) -> str:
        return ",".join(s.connect_string for s in self.servers)

    def start(self, timeout: float = 30.0) -> ZooKeeperEnsemble:
        _start_all(self.servers, timeout, self._configure)
        return self

    def leader_index(self) -> int | None:
        modes = [(srvr("127.0.0.1", s.port or 0) or {}).get("Mode") if s.running else None for s in self.servers]
        return modes.index("leader") if "leader" in modes else None

    def kill(self, i: int) -> None:
        self.servers[i].kill()

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Bring member ``i`` back on its old ports and wait until it serves again."""
        self.servers[i].stop(remove=False)
        self.servers[i].start(timeout)

    def stop(self) -> None:
        for server in self.servers:
            server.stop(remove=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ZooKeeperEnsemble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
