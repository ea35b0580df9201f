"""Failure figures from real processes (a benchmark, not a test):

  - detection time of a killed agent (kill -9 -> the coordinator writes it off: its
    connection closes at once) and of a SIGSTOPped one (it closes nothing: heartbeats),
  - coordinator failover time (leader kill -9 -> first dispatch by the new leader),
    with a 2 s and with the default 10 s ZooKeeper session timeout,
  - the job-time overhead of each fault against a fault-free run of the same job
    (4,000 tasks of 4 ms on 2 agents x 2 workers),
  - the same behind a relay (`clusterctl relay`): what the relay costs a fault-free job,
    and a relay kill -9 (detection: the coordinator writes it off).

Usage: python -m bench.faults [--json]
Times come from the coordinators' log timestamps (one clock: this machine's).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster.runtime.zk import connect, read_leader
from cluster.runtime.zkserver import ZooKeeperServer

ROOT = Path(__file__).resolve().parent.parent

PY = sys.executable
TASKS = "import os, time\n\ndef square(x):\n    time.sleep(0.004)\n    return x * x\n"
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*")


def log_time(path: Path, needle: str | tuple[str, ...], after: float = 0.0) -> float | None:
    """The time of the first line from ``after`` on with ``needle`` (or any of several) in it."""
    needles = (needle,) if isinstance(needle, str) else needle
    for line in path.read_text(errors="replace").splitlines():
        m = STAMP.match(line)
        if m and any(n in line for n in needles):
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if t >= after - 0.001:  # the log's stamps are whole milliseconds
                return t
    return None


class Cluster:
    def __init__(self, zk: str, tmp: Path, name: str, session: str, coordinators: int = 1, relay: bool = False):
        self.tmp, self.env = (
            tmp,
            dict(os.environ, CLUSTER_ZK=zk, CLUSTER_NAME=name, PYTHONPATH=str(ROOT), CLUSTER_INSECURE="1"),
        )
        self.procs: dict[str, subprocess.Popen] = {}
        fast = ["--zk-session-timeout", session]
        for i in range(coordinators):
            self._start(f"c{i + 1}", ["-m", "cluster.cli.main", "coordinator", "--bind", "tcp://127.0.0.1:0", *fast])
        behind = []
        if relay:
            self._start("r1", ["-m", "agents.relay_cli", "--id", "r1", "--bind", "tcp://127.0.0.1:0", *fast])
            behind = ["--relay", "r1"]
        for i in (1, 2):
            self._start(
                f"a{i}",
                ["-m", "agents", "--node-id", f"a{i}", "--workers", "2", "--bind", "tcp://127.0.0.1:0", *fast, *behind],
            )
        self.zk = connect(zk)
        self.name = name
        deadline = time.time() + 30
        while time.time() < deadline:
            leader = read_leader(self.zk, name)
            if leader and all(f"agent a{i} connected" in self.log(self.leader_name()).read_text() for i in (1, 2)):
                return
            time.sleep(0.05)
        raise RuntimeError("cluster not ready")

    def _start(self, name: str, argv: list[str]) -> None:
        out = open(self.tmp / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen([PY, *argv], stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def leader_name(self) -> str:
        pid = read_leader(self.zk, self.name).pid
        return next(n for n, p in self.procs.items() if p.pid == pid)

    def job(self, n: int) -> subprocess.Popen:
        module = self.tmp / "tasks.py"
        module.write_text(TASKS)
        self.out = self.tmp / f"out-{time.time()}.jsonl"
        return subprocess.Popen(
            [
                PY,
                "-m",
                "cluster.cli.main",
                "submit",
                f"{module}:square",
                "--range",
                "0",
                str(n),
                "--output",
                str(self.out),
            ],
            env=self.env,
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )

    def done(self) -> int:
        return sum(1 for _ in open(self.out)) if self.out.exists() else 0

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.wait()
        self.zk.stop()


def run_job(cluster: Cluster, n: int, fault=None) -> tuple[float, float]:
    """The job's wall time, and the wall-clock time the fault was injected (halfway)."""
    started = time.monotonic()
    proc = cluster.job(n)
    fault_at = time.time()
    if fault:
        while cluster.done() < n // 2:
            time.sleep(0.01)
        fault_at = time.time()
        fault(cluster)
    assert proc.wait(300) == 0
    assert cluster.done() == n
    return time.monotonic() - started, fault_at


def kill_agent(c: Cluster) -> None:
    c.procs["a1"].kill()


def stop_agent(c: Cluster) -> None:
    c.procs["a1"].send_signal(signal.SIGSTOP)
    time.sleep(5)
    c.procs["a1"].send_signal(signal.SIGCONT)


def drain_agent(c: Cluster) -> None:
    c.procs["a1"].send_signal(signal.SIGTERM)


def kill_leader(c: Cluster) -> None:
    c.procs[c.leader_name()].kill()


def kill_relay(c: Cluster) -> None:
    c.procs["r1"].kill()


BEHIND = "fault-free, behind a relay"


def main() -> None:
    n = 4000
    report: dict[str, object] = {}
    with ZooKeeperServer(tick_time=500) as zk:
        for i, (label, fault, coordinators, relay) in enumerate(
            [
                ("fault-free", None, 1, False),
                ("agent kill -9", kill_agent, 1, False),
                ("agent SIGSTOP 5 s", stop_agent, 1, False),
                ("agent drain (SIGTERM)", drain_agent, 1, False),
                ("leader kill -9, standby", kill_leader, 2, False),
                (BEHIND, None, 1, True),
                ("relay kill -9", kill_relay, 1, True),
            ]
        ):
            print(f"running: {label}", file=sys.stderr)
            tmp = Path(tempfile.mkdtemp(prefix="clusterd-faults-"))
            cluster = Cluster(zk.connect_string, tmp, f"faults{i}", "2", coordinators, relay)
            try:
                wall, fault_at = run_job(cluster, n, fault)
                report[label] = {"job_s": round(wall, 2)}
                if fault in (kill_agent, stop_agent, kill_relay):
                    # Whichever comes first: the connection closing (a dead process), silence
                    # to heartbeats, the ZooKeeper session (both 2 s here).
                    who = "relay r1" if fault is kill_relay else "agent a1"
                    seen = log_time(
                        cluster.log("c1"),
                        (f"{who} connection closed", f"{who}: connection closed", f"{who} silent", f"{who} left"),
                        fault_at,
                    )
                    report[label]["detection_s"] = round(seen - fault_at, 3) if seen else None
                if fault is kill_leader:
                    new = cluster.leader_name()
                    first = log_time(cluster.log(new), "first dispatch as leader", fault_at)
                    report[label]["failover_s"] = round(first - fault_at, 2) if first else None
            finally:
                cluster.stop()
                shutil.rmtree(tmp, ignore_errors=True)  # its logs were read above
        print("running: leader kill -9 with the default 10 s session", file=sys.stderr)
        tmp = Path(tempfile.mkdtemp(prefix="clusterd-faults-"))
        cluster = Cluster(zk.connect_string, tmp, "faults-default", "10", 2)
        try:
            proc = cluster.job(n)
            while cluster.done() < n // 4:
                time.sleep(0.01)
            at = time.time()
            kill_leader(cluster)
            assert proc.wait(300) == 0
            first = log_time(cluster.log(cluster.leader_name()), "first dispatch as leader", at)
            report["failover_s_default_session"] = round(first - at, 2) if first else None
        finally:
            cluster.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    for label, row in report.items():
        if isinstance(row, dict):  # a relay's fault against the same job behind a relay
            base = report[BEHIND if label == "relay kill -9" else "fault-free"]["job_s"]
            row["overhead_s"] = round(row["job_s"] - base, 2)
    if "--json" in sys.argv:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{n} tasks x 4 ms on 2 agents x 2 workers; ZooKeeper session 2 s; heartbeat 0.5 s x 4; "
        f"overheads against the fault-free run (the relay's kill: against the run behind a relay)"
    )
    print(f"{'scenario':<28}{'job (s)':>9}{'overhead (s)':>14}  detail")
    for label, row in report.items():
        if not isinstance(row, dict):
            continue
        detail = ", ".join(f"{k} {v} s" for k, v in row.items() if k not in ("job_s", "overhead_s"))
        print(f"{label:<28}{row['job_s']:>9.2f}{row['overhead_s']:>14.2f}  {detail}")
    print(f"leader failover with the default 10 s session: {report['failover_s_default_session']} s")


if __name__ == "__main__":
    main()
