"""The processes of a scale benchmark and how it reads them: simulated-agent
processes, relays, a probe of the leader's status, ZooKeeper's four-letter words."""

from __future__ import annotations

import json
import queue
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import zmq

from cluster.contract import payload, wire
from cluster.runtime.zkserver import srvr

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]  # the source tree, so `python -m bench.scale.simfleet` resolves there
FUNCTION = payload.pack_reference("builtins", "tuple")  # never run: simulated workers echo their arguments


def progress(msg: str) -> None:
    print(f"[scale] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (1-99) as the stdlib computes it, as bench/run.py does; nan for none."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------------ ZooKeeper


def _first_server(connect: str) -> tuple[str, int]:
    host, port = connect.split(",")[0].rsplit(":", 1)
    return host, int(port)


def zk_mntr(connect: str) -> dict[str, str]:
    """``mntr``: tab separated, which ``zkserver.four_letter`` (``:`` or ``=``) does not split."""
    try:
        with socket.create_connection(_first_server(connect), timeout=2.0) as s:
            s.sendall(b"mntr")
            text = b"".join(iter(lambda: s.recv(65536), b"")).decode(errors="replace")
    except OSError:
        return {}
    return {
        key.strip(): value.strip() for key, _, value in (line.partition("\t") for line in text.splitlines()) if value
    }


def zxid(connect: str) -> int | None:
    value = (srvr(*_first_server(connect), timeout=2.0) or {}).get("Zxid")
    return int(value, 16) if value else None


# ----------------------------------------------------------------- processes


class Sim:
    """One `python -m bench.scale.simfleet` process and its JSON-lines control channel."""

    def __init__(self, name: str, argv: list[str], env: dict, log: Path):
        self.name = name
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            cwd=ROOT,
            text=True,
            bufsize=1,
        )
        self.events: queue.Queue = queue.Queue()
        self._ids = iter(range(1, 1 << 62))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                pass
        self.events.put({"ev": "exit"})

    def wait_event(self, ev: str, timeout: float, id: int | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"simulator {self.name}: no {ev!r} within {timeout:g} s") from None
            if event.get("ev") == "exit":
                raise RuntimeError(f"simulator {self.name} exited (code {self.proc.poll()}); see {self.log.name}")
            if id is not None and event.get("id") != id:
                continue
            if event.get("ev") in (ev, "error"):
                if event.get("ev") == "error":
                    raise RuntimeError(f"simulator {self.name}: {event.get('error')}")
                return event

    def send(self, **cmd: Any) -> int:
        cmd["id"] = next(self._ids)
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return cmd["id"]

    def ask(self, ev: str = "ok", timeout: float = 60.0, **cmd: Any) -> dict:
        return self.wait_event(ev, timeout, self.send(**cmd))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(op="stop")
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def terminate(procs: list[subprocess.Popen], timeout: float) -> None:
    """SIGTERM to each (a daemon's clean stop, all at once), then SIGKILL to any not gone
    within ``timeout``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Relays:
    """K `clusterctl relay` processes (ids relay0 ... relayK-1); the simulators' agents name
    them in turn, so the coordinator holds K connections instead of N."""

    def __init__(self, k: int, zk: str, cluster: str, env: dict, workdir: Path, session_timeout: float):
        self.ids = [f"relay{i}" for i in range(k)]
        self.procs = []
        for rid in self.ids:
            argv = [
                PY,
                "-m",
                "agents.relay_cli",
                "--zk",
                zk,
                "--cluster",
                cluster,
                "--id",
                rid,
                "--insecure",
                "--bind",
                "tcp://127.0.0.1:0",
                "--zk-session-timeout",
                str(session_timeout),
            ]
            self.procs.append(
                subprocess.Popen(
                    argv,
                    stdout=subprocess.DEVNULL,
                    stderr=open(workdir / f"{rid}.log", "wb"),
                    env=env,
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                )
            )
        self.ps = [psutil.Process(p.pid) for p in self.procs]

    def of(self, i: int) -> str:
        return self.ids[i % len(self.ids)] if self.ids else ""

    def sample(self) -> dict:
        """Their CPU seconds and resident memory, summed."""
        cpu = rss = 0.0
        for p in self.ps:
            with p.oneshot():
                t = p.cpu_times()
                cpu += t.user + t.system
                rss += p.memory_info().rss
        return {"cpu": cpu, "rss": rss}

    def stop(self) -> None:
        terminate(self.procs, 30)


class StatusProbe:
    """Asks the leader for its status over the wire (what `clusterctl status --json` prints)."""

    def __init__(self, endpoint: str):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, -1)
        self.sock.connect(endpoint)

    def ask(self, timeout: float = 10.0) -> dict | None:
        while self.sock.poll(0):
            self.sock.recv_multipart()  # a late answer to an earlier question
        self.sock.send_multipart(wire.StatusRequest().encode())
        if not self.sock.poll(timeout * 1000):
            return None
        reply = wire.decode(self.sock.recv_multipart())
        return reply.status if isinstance(reply, wire.StatusReply) else None

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def ready(status: dict | None) -> int:
    return (status or {}).get("nodes", {}).get("ready", 0)
