"""One scale benchmark: a private ZooKeeper, a real coordinator and N simulated
agents; convergence, idle cost per agent, throughput, churn and mass leaving
(see docs/performance.md). `python -m bench.scale` (`make scale`) runs it."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from bench.scale.fleet import (
    FUNCTION,
    PY,
    ROOT,
    Relays,
    Sim,
    StatusProbe,
    percentile,
    progress,
    raise_fd_limit,
    ready,
    terminate,
    zk_mntr,
    zxid,
)
from cluster.client.session import ClusterClient
from cluster.contract import layout, payload, wire
from cluster.runtime.zk import close as zk_close
from cluster.runtime.zk import connect as zk_connect
from cluster.runtime.zk import read_leader
from cluster.runtime.zkserver import ZooKeeperServer

# ---------------------------------------------------------------- one fleet


class ScaleRun:
    def __init__(self, n: int, zk: str, opts: dict, workdir: Path):
        self.n, self.zk, self.o = n, zk, opts
        self.cluster = f"scale{n}-{uuid.uuid4().hex[:6]}"
        self.dir = workdir / self.cluster
        self.dir.mkdir(parents=True)
        self.env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            PYTHONUNBUFFERED="1",
            CLUSTER_COORDINATOR_JOB_WINDOW=str(max(10_000, opts["window"])),
        )
        self.sims: list[Sim] = []
        self.relays: Relays | None = None
        self.coordinator: subprocess.Popen | None = None
        self.kazoo = None
        self.probe: StatusProbe | None = None
        self.report: dict[str, Any] = {"agents": n, "workers_per_agent": opts["workers"]}

    def log(self, msg: str) -> None:
        progress(f"N={self.n}: {msg}")

    # --- set-up

    def start_coordinator(self) -> None:
        argv = [
            PY,
            "-m",
            "cluster.cli.main",
            "coordinator",
            "--zk",
            self.zk,
            "--cluster",
            self.cluster,
            "--insecure",
            "--bind",
            "tcp://127.0.0.1:0",
            "--log-level",
            "info",
            "--heartbeat-interval",
            str(self.o["heartbeat_interval"]),
            "--heartbeat-budget",
            str(self.o["heartbeat_budget"]),
        ]
        if self.o["profile"]:
            Path(self.o["profile"]).mkdir(parents=True, exist_ok=True)
            argv[1:1] = ["-m", "cProfile", "-o", str(Path(self.o["profile"]) / f"coordinator-{self.n}.prof")]
        self.coordinator_log = self.dir / "coordinator.log"
        self.coordinator = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=open(self.coordinator_log, "wb"),
            env=self.env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        self.cproc = psutil.Process(self.coordinator.pid)
        self.kazoo = zk_connect(self.zk, timeout=15.0)
        deadline = time.monotonic() + 60
        while (leader := read_leader(self.kazoo, self.cluster)) is None:
            if self.coordinator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the coordinator did not lead; see {self.coordinator_log}")
            time.sleep(0.05)
        self.leader = leader
        self.probe = StatusProbe(leader.endpoint)
        time.sleep(1.0)  # let it settle before the baseline
        self.base = self.sample()

    def start_relays(self) -> None:
        k = self.o["relays"]
        if not k:
            return
        self.relays = Relays(k, self.zk, self.cluster, self.env, self.dir, self.o["session_timeout"])
        deadline = time.monotonic() + 60
        while len((self.probe.ask() or {}).get("relays", {})) < k:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the coordinator did not see {k} relays within 60 s; see {self.dir}")
            time.sleep(0.1)
        self.report["relays"] = k
        self.log(f"{k} relays registered")

    def start_sims(self) -> None:
        n, per = self.n, self.o["per_process"]
        self.leaver_n = max(1, round(n * 0.10)) if n >= 2 else 0
        rest = n - self.leaver_n
        parts = max(1, math.ceil(rest / per))
        sizes = [rest // parts + (1 if i < rest % parts else 0) for i in range(parts)]
        if self.leaver_n:
            sizes.insert(0, self.leaver_n)
        for i, count in enumerate(sizes):
            argv = [
                PY,
                "-m",
                "bench.scale.simfleet",
                "--zk",
                self.zk,
                "--cluster",
                self.cluster,
                "--prefix",
                f"p{i}-",
                "--count",
                str(count),
                "--workers",
                str(self.o["workers"]),
                "--heartbeat-interval",
                str(self.o["heartbeat_interval"]),
                "--session-timeout",
                str(self.o["session_timeout"]),
            ]
            if self.relays is not None:
                argv += ["--relay", self.relays.of(i)]
            self.sims.append(Sim(f"p{i}", argv, self.env, self.dir / f"sim-p{i}.log"))
        for sim in self.sims:
            sim.wait_event("ready", 120)
        self.leaver = self.sims[0] if self.leaver_n else None
        self.others = self.sims[1:] if self.leaver_n else self.sims
        self.report["simulator_processes"] = len(self.sims)
        self.log(f"{len(self.sims)} simulator processes ready ({sizes} agents)")

    def sample(self) -> dict:
        p = self.cproc
        with p.oneshot():
            cpu = p.cpu_times()
            mem = p.memory_info()
            return {
                "t": time.monotonic(),
                "cpu": cpu.user + cpu.system,
                "rss": mem.rss,
                "fds": p.num_fds(),
                "threads": p.num_threads(),
            }

    def zk_count(self) -> int:
        try:
            return len(self.kazoo.get_children(layout.agents_path(self.cluster)))
        except Exception:
            return 0

    def sim_stats(self) -> list[dict]:
        return [s.ask("stats", op="stats") for s in self.sims if s.proc.poll() is None]

    # --- phases

    def converge(self) -> None:
        self.log("registering")
        t0 = time.monotonic()
        ids = [(s, s.send(op="register")) for s in self.sims]
        t_zk = t_known = t_ready = None
        last = 0.0
        while time.monotonic() - t0 < self.o["converge_timeout"]:
            now = time.monotonic() - t0
            zk_n = self.zk_count()
            if t_zk is None and zk_n >= self.n:
                t_zk = now
            st = self.probe.ask()
            known = len((st or {}).get("agents", {}))
            if t_known is None and known >= self.n:
                t_known = time.monotonic() - t0
            if ready(st) >= self.n:
                t_ready = time.monotonic() - t0
            if now - last >= 1.0:
                last = now
                self.log(
                    f"converging: {zk_n} in ZooKeeper, coordinator knows {known}, {ready(st)} connected ({now:.1f} s)"
                )
            if t_ready is not None and t_zk is not None:
                break
            time.sleep(0.2)  # each status answer costs the coordinator ~1 ms per 300 agents
        registered = [s.wait_event("registered", 60, i) for s, i in ids]
        self.report["converge"] = {
            "register_s": max(r["seconds"] for r in registered),
            "zookeeper_all_s": _r(t_zk),
            "coordinator_knows_all_s": _r(t_known),
            "coordinator_connected_all_s": _r(t_ready),
        }
        if t_ready is None:
            raise RuntimeError(
                f"the coordinator did not connect all {self.n} agents within "
                f"{self.o['converge_timeout']:g} s; see {self.coordinator_log}"
            )
        self.log(f"converged: ZooKeeper {_r(t_zk)} s, coordinator {_r(t_ready)} s")
        start = time.monotonic()
        cli = [PY, "-m", "cluster.cli.main"]
        where = ["--zk", self.zk, "--cluster", self.cluster]
        res = subprocess.run(
            [*cli, "nodes", "--json", *where], capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=300
        )
        listed = len(json.loads(res.stdout)) if res.returncode == 0 else None
        self.report["converge"]["clusterctl_nodes"] = {"listed": listed, "wall_s": _r(time.monotonic() - start)}
        start = time.monotonic()
        res = subprocess.run(
            [*cli, "status", "--json", *where], capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=300
        )
        listed = ready(json.loads(res.stdout)) if res.returncode == 0 else None
        self.report["converge"]["clusterctl_status"] = {"ready": listed, "wall_s": _r(time.monotonic() - start)}

    def steady(self) -> None:
        secs = self.o["steady_seconds"]
        self.log(f"steady state: measuring for {secs:g} s with every agent idle")
        time.sleep(2.0)
        a, z0, sims0 = self.sample(), zxid(self.zk), self.sim_stats()
        r0 = self.relays.sample() if self.relays else None
        time.sleep(secs)
        b, z1, sims1 = self.sample(), zxid(self.zk), self.sim_stats()
        r1 = self.relays.sample() if self.relays else None
        mntr = zk_mntr(self.zk)
        st = self.probe.ask()
        cpu = (b["cpu"] - a["cpu"]) / (b["t"] - a["t"])
        writes = (z1 - z0) if z0 is not None and z1 is not None else None
        beats = _delta(sims0, sims1, "heartbeats_received")
        sent = _delta(sims0, sims1, "heartbeats_sent")
        sim_cpu = sum(s["cpu"] for s in sims1) - sum(s["cpu"] for s in sims0)
        self.report["steady"] = {
            "seconds": round(b["t"] - a["t"], 1),
            "coordinator_cpu_core_fraction": round(cpu, 4),
            "coordinator_cpu_us_per_agent_per_s": round(cpu * 1e6 / self.n, 1),
            "coordinator_rss_mib": round(b["rss"] / 2**20, 1),
            "coordinator_rss_baseline_mib": round(self.base["rss"] / 2**20, 1),
            "coordinator_kib_per_agent": round((b["rss"] - self.base["rss"]) / 1024 / self.n, 2),
            "coordinator_fds": b["fds"],
            "coordinator_fds_baseline": self.base["fds"],
            "coordinator_threads": b["threads"],
            "heartbeats_to_agents_per_s": round(beats / (b["t"] - a["t"]), 1),
            "heartbeats_from_agents_per_s": round(sent / (b["t"] - a["t"]), 1),
            "simulators_cpu_core_fraction": round(sim_cpu / (b["t"] - a["t"]), 3),
            "zookeeper_writes": writes,
            "zookeeper_writes_per_agent_per_min": None
            if writes is None
            else round(writes / self.n / ((b["t"] - a["t"]) / 60), 4),
            "zookeeper_watches": _int(mntr.get("zk_watch_count")),
            "zookeeper_znodes": _int(mntr.get("zk_znode_count")),
            "zookeeper_ephemerals": _int(mntr.get("zk_ephemerals_count")),
            "zookeeper_connections": _int(mntr.get("zk_num_alive_connections")),
            "agents_connected_at_end": ready(st),
            "agents_lost_leader": _delta(sims0, sims1, "leader_lost"),
            # At rest nothing should be written off, silent or with its connection closed.
            "agents_written_off_in_log": sum(map(self._log_text().count, ("silent for", " closed: "))),
        }
        if r0 and r1:  # what the relays cost in place of the coordinator, whole processes included
            self.report["steady"].update(
                relays_rss_mib=round(r1["rss"] / 2**20, 1),
                relays_kib_per_agent=round(r1["rss"] / 1024 / self.n, 2),
                relays_cpu_core_fraction=round((r1["cpu"] - r0["cpu"]) / (b["t"] - a["t"]), 4),
            )
        s = self.report["steady"]
        self.log(
            f"steady: coordinator {s['coordinator_cpu_core_fraction'] * 100:.1f}% of a core, "
            f"{s['coordinator_kib_per_agent']} KiB/agent, {s['coordinator_fds']} fds, "
            f"{s['zookeeper_writes_per_agent_per_min']} ZooKeeper writes/agent/min"
        )

    def throughput(self) -> None:
        m = self.o["tasks"]
        self.log(f"throughput: {m} instant tasks")
        for sim in self.sims:
            sim.ask(op="delay", seconds=0)
        client = ClusterClient(self.zk, self.cluster, connect_timeout=30)
        try:
            args = [payload.pack_args((i,)) for i in range(m)]
            sent = [0.0] * m
            got = [0.0] * m
            counts = [0] * m
            wrong = []
            done = threading.Event()
            left = [m]

            def on_result(index: int, status: int, body: bytes) -> None:
                got[index] = time.perf_counter()
                counts[index] += 1
                if status != wire.OK or body != args[index]:
                    wrong.append(index)
                left[0] -= 1
                if left[0] == 0:
                    done.set()

            job = client.open_job(
                FUNCTION, {"retries": 2, "result_format": payload.RESULT_PICKLE, "window": self.o["window"]}, on_result
            )
            sims0 = self.sim_stats()
            me = psutil.Process()
            me0 = sum(me.cpu_times()[:2])
            c0 = self.sample()
            start = time.perf_counter()
            for i in range(m):
                sent[i] = time.perf_counter()
                job.submit(i, args[i])
            if not done.wait(self.o["job_timeout"]):
                raise RuntimeError(f"throughput job: {left[0]} of {m} results missing after {self.o['job_timeout']} s")
            wall = max(got) - start
            c1 = self.sample()
            me1 = sum(me.cpu_times()[:2])
            sims1 = self.sim_stats()
            job.close()
            lat = [(g - s) * 1000 for g, s in zip(got, sent)]
            # One task at a time: the round trip with every agent connected but idle.
            rtt = []
            sent2 = {}
            one = threading.Event()

            def on_single(index: int, status: int, body: bytes) -> None:
                rtt.append((time.perf_counter() - sent2[index]) * 1000)
                one.set()

            job2 = client.open_job(FUNCTION, {"retries": 2, "result_format": payload.RESULT_PICKLE}, on_single)
            for i in range(self.o["round_trips"]):
                one.clear()
                sent2[i] = time.perf_counter()
                job2.submit(i, args[i])
                if not one.wait(10):
                    raise RuntimeError("a single task did not come back within 10 s")
            job2.close()
        finally:
            client.close()
        st = self.probe.ask()
        self.report["throughput"] = {
            "tasks": m,
            "wall_s": round(wall, 3),
            "tasks_per_s": round(m / wall, 1),
            "latency_ms_p50": round(percentile(lat, 50), 2),
            "latency_ms_p99": round(percentile(lat, 99), 2),
            "coordinator_cpu_us_per_task": round((c1["cpu"] - c0["cpu"]) * 1e6 / m, 1),
            "coordinator_busy_fraction": round((c1["cpu"] - c0["cpu"]) / (c1["t"] - c0["t"]), 3),
            "simulators_busy_cores": round(
                (sum(x["cpu"] for x in sims1) - sum(x["cpu"] for x in sims0)) / (c1["t"] - c0["t"]), 3
            ),
            "simulators_busy_cores_each": [
                round((b["cpu"] - a["cpu"]) / (c1["t"] - c0["t"]), 2) for a, b in zip(sims0, sims1)
            ],
            "client_busy_cores": round((me1 - me0) / (c1["t"] - c0["t"]), 3),
            "tasks_per_dispatch_message": _ratio(sims0, sims1, "tasks_received", "dispatch_messages"),
            "results_per_results_message": _ratio(sims0, sims1, "results_sent", "results_messages"),
            "coordinator_rss_after_mib": round(c1["rss"] / 2**20, 1),
            "exactly_once": all(c == 1 for c in counts) and not wrong,
            "single_task_round_trip_ms_p50": round(percentile(rtt, 50), 2),
            "single_task_round_trip_ms_p99": round(percentile(rtt, 99), 2),
            "agents_connected_at_end": ready(st),
        }
        t = self.report["throughput"]
        if not t["exactly_once"]:
            raise AssertionError(f"throughput job: results not exactly once ({len(wrong)} wrong)")
        self.log(
            f"throughput: {t['tasks_per_s']:.0f} tasks/s, p99 {t['latency_ms_p99']} ms under load; "
            f"single task p50 {t['single_task_round_trip_ms_p50']} ms"
        )

    def churn(self) -> None:
        secs, rate = self.o["churn_seconds"], self.o["churn_rate"]
        if secs <= 0 or not self.others:
            return
        per_s = self.n * rate / 60
        self.log(
            f"churn: {rate:.0%} of the fleet per minute ({per_s:.2f} agents/s leave and as many join) "
            f"for {secs:g} s while a job of {self.o['churn_task_seconds']:g} s tasks runs"
        )
        for sim in self.sims:
            sim.ask(op="delay", seconds=self.o["churn_task_seconds"])
        before = self.sim_stats()
        client = ClusterClient(self.zk, self.cluster, connect_timeout=30)
        counts: dict[int, int] = {}
        wrong: list[int] = []
        lock = threading.Lock()
        args_of = lambda i: i.to_bytes(8, "little")  # noqa: E731

        def on_result(index: int, status: int, body: bytes) -> None:
            with lock:
                counts[index] = counts.get(index, 0) + 1
                if status != wire.OK or body != args_of(index):
                    wrong.append(index)

        # A window of about two tasks per worker: the job keeps every agent busy without a
        # backlog that would take minutes to drain on a small fleet.
        window = max(100, min(10_000, 2 * self.n * self.o["workers"]))
        job = client.open_job(
            FUNCTION, {"retries": 2, "result_format": payload.RESULT_PICKLE, "window": window}, on_result
        )
        stop = threading.Event()
        submitted = [0]
        pace = self.o["churn_submit_rate"]

        def submitter() -> None:
            start = time.monotonic()
            i = 0
            while not stop.is_set():
                ahead = i - (time.monotonic() - start) * pace
                if ahead > 0:
                    time.sleep(min(0.05, ahead / pace))
                    continue
                if job.submit(i, args_of(i), timeout=0.2):
                    i += 1
                    submitted[0] = i

        thread = threading.Thread(target=submitter, daemon=True)
        t0 = time.monotonic()
        thread.start()
        left = joined = 0
        kinds = ["crash", "drain"]
        k = 0
        min_ready = self.n
        while time.monotonic() - t0 < secs:
            time.sleep(1.0)
            due = int(per_s * min(secs, time.monotonic() - t0) + 1e-6)  # by the clock: asking takes time too
            while left < due:
                sim = self.others[k % len(self.others)]
                sim.ask(op="leave", n=1, how=kinds[k % 2])
                sim.ask(op="join", n=1)
                k += 1
                left += 1
                joined += 1
            st = self.probe.ask()
            min_ready = min(min_ready, ready(st))
            if int(time.monotonic() - t0) % 10 == 0:
                self.log(
                    f"churn: {int(time.monotonic() - t0)} s, {left} left, {joined} joined, "
                    f"{ready(st)} connected, {len(counts)} results"
                )
        stop.set()
        thread.join()
        total = submitted[0]
        deadline = time.monotonic() + self.o["job_timeout"]
        while len(counts) < total and time.monotonic() < deadline:
            time.sleep(0.1)
        wall = time.monotonic() - t0
        job.close()
        client.close()
        after = self.sim_stats()
        st = self.probe.ask() or {}
        executed = _delta(before, after, "tasks_executed")
        received = _delta(before, after, "tasks_received")
        dup = sum(1 for c in counts.values() if c > 1)
        missing = total - len(counts)
        counters = st.get("counters", {})
        log = self._log_text()
        self.report["churn"] = {
            "seconds": secs,
            "rate_per_min": rate,
            "left": left,
            "joined": joined,
            "left_by": {"crash": (k + 1) // 2, "drain": k // 2},
            "tasks": total,
            "results": sum(counts.values()),
            "missing": missing,
            "duplicates": dup,
            "wrong": len(wrong),
            "exactly_once": missing == 0 and dup == 0 and not wrong,
            "task_seconds": self.o["churn_task_seconds"],
            "tasks_per_s": round(total / wall, 1),
            "executions": executed,
            "re_executed": executed - total,
            "dispatched_again": received - total,
            "requeued_in_log": sum(int(m) for m in re.findall(r"(\d+) tasks requeued", log)),
            "min_connected": min_ready,
            "lost_leader_events_on_agents": sum(s.get("leader_lost", 0) for s in after),
            "coordinator_counters": counters,
            "agents_silent_in_log": log.count("silent for"),
            "agents_closed_in_log": log.count(" closed: "),  # written off as their connection closed
        }
        c = self.report["churn"]
        self.log(
            f"churn: {c['tasks']} tasks, exactly once: {c['exactly_once']}, {c['re_executed']} re-executed, "
            f"{left} left / {joined} joined"
        )
        if not c["exactly_once"]:
            raise AssertionError(
                f"churn: results not exactly once: {missing} missing, {dup} duplicated, {len(wrong)} wrong"
            )

    def _log_text(self) -> str:
        try:
            return self.coordinator_log.read_text(errors="replace")
        except OSError:
            return ""

    def settle(self, timeout: float = 60.0) -> int:
        """Wait until ZooKeeper and the coordinator agree with the simulators on who is alive."""
        deadline = time.monotonic() + timeout
        alive = sum(s["alive"] for s in self.sim_stats())
        while time.monotonic() < deadline:
            st = self.probe.ask() or {}
            seen = (self.zk_count(), ready(st), len(st.get("agents", {})))
            if seen == (alive, alive, alive):
                return alive
            time.sleep(0.25)
        raise RuntimeError(
            f"the fleet did not settle at {alive} agents within {timeout:g} s: ZooKeeper lists "
            f"{seen[0]}, the coordinator has {seen[1]} connected of {seen[2]} known"
        )

    def leave(self) -> None:
        if not self.leaver_n:
            return
        alive = self.settle(self.o["session_timeout"] * 3 + 30)
        out: dict[str, Any] = {}
        # 10% deregister at once (clean leave: znodes deleted).
        count = max(1, round(alive * 0.10))
        shares = [
            count // len(self.others) + (1 if i < count % len(self.others) else 0) for i in range(len(self.others))
        ]
        t0 = time.monotonic()
        for sim, share in zip(self.others, shares):
            if share:
                sim.send(op="leave", n=share, how="deregister")
        out["deregister"] = self._watch_drop(t0, alive - count, count)
        alive = self.settle()
        # 10% crash at once: SIGKILL the process holding them (its ZooKeeper session expires).
        count = self.leaver_n
        t0 = time.monotonic()
        self.leaver.kill()
        out["kill"] = self._watch_drop(t0, alive - count, count)
        out["kill"]["zookeeper_session_timeout_s"] = self.o["session_timeout"]
        self.report["leave_10pct"] = out
        self.log(
            f"10% deregister noticed by the coordinator in {out['deregister']['coordinator_s']} s; "
            f"10% killed: coordinator {out['kill']['coordinator_s']} s, "
            f"ZooKeeper {out['kill']['zookeeper_s']} s"
        )

    def _watch_drop(self, t0: float, target: int, count: int) -> dict:
        t_coord = t_zk = t_gone = None
        while time.monotonic() - t0 < self.o["session_timeout"] * 3 + 30:
            now = time.monotonic() - t0
            st = self.probe.ask() or {}
            if t_coord is None and ready(st) <= target:
                t_coord = now
            if t_gone is None and len(st.get("agents", {})) <= target:
                t_gone = now
            if t_zk is None and self.zk_count() <= target:
                t_zk = now
            if None not in (t_coord, t_zk, t_gone):
                break
            time.sleep(0.05)
        return {
            "agents": count,
            "coordinator_s": _r(t_coord),
            "coordinator_forgot_s": _r(t_gone),
            "zookeeper_s": _r(t_zk),
        }

    # --- all of it

    def run(self) -> dict:
        try:
            self.start_coordinator()
            self.start_relays()
            self.start_sims()
            self.converge()
            self.steady()
            self.throughput()
            self.churn()
            self.leave()
        finally:
            self.stop()
        return self.report

    def stop(self) -> None:
        for sim in self.sims:
            sim.stop()
        if self.relays is not None:
            self.relays.stop()
        if self.probe is not None:
            self.probe.close()
        if self.coordinator is not None:
            terminate([self.coordinator], 60)
        zk_close(self.kazoo)


def _delta(before: list[dict], after: list[dict], key: str) -> int:
    return sum(s.get(key, 0) for s in after) - sum(s.get(key, 0) for s in before)


def _ratio(before: list[dict], after: list[dict], num: str, den: str) -> float | None:
    d = _delta(before, after, den)
    return round(_delta(before, after, num) / d, 1) if d else None


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------- the command


def run_scale(
    sizes: list[int],
    *,
    zk: str = "",
    workers: int = 8,
    baseline: int = 10,
    per_process: int = 1000,
    tasks: int = 100_000,
    round_trips: int = 200,
    steady_seconds: float = 20.0,
    churn_seconds: float = 60.0,
    churn_rate: float = 0.10,
    churn_task_seconds: float = 1.0,
    churn_submit_rate: float = 5000.0,
    heartbeat_interval: float = 0.5,
    heartbeat_budget: float = 4000.0,
    session_timeout: float = 10.0,
    converge_timeout: float = 120.0,
    job_timeout: float = 300.0,
    profile: str = "",
    keep: bool = False,
    window: int = 10_000,
    relays: int = 0,
) -> dict:
    """Run every size (and the baseline size for the throughput ratio); returns the figures."""
    opts = dict(
        workers=workers,
        per_process=per_process,
        tasks=tasks,
        round_trips=round_trips,
        steady_seconds=steady_seconds,
        churn_seconds=churn_seconds,
        churn_rate=churn_rate,
        churn_task_seconds=churn_task_seconds,
        churn_submit_rate=churn_submit_rate,
        heartbeat_interval=heartbeat_interval,
        heartbeat_budget=heartbeat_budget,
        session_timeout=session_timeout,
        converge_timeout=converge_timeout,
        job_timeout=job_timeout,
        profile=profile,
        window=window,
        relays=relays,
    )
    limit = raise_fd_limit()
    sizes = sorted(set(sizes) | ({baseline} if baseline else set()))
    need = max(sizes) + 200
    if need > limit:
        raise ValueError(
            f"{max(sizes)} agents need about {need} file descriptors in the coordinator; the limit "
            f"is {limit} (raise it with ulimit -n or LimitNOFILE=)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="clusterd-scale-"))
    progress(f"sizes {sizes}, {workers} workers per agent, work dir {workdir}")
    server = None
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "fd_limit": limit}, "runs": []}
    try:
        if not zk:
            server = ZooKeeperServer(data_dir=str(workdir / "zk")).start()
            zk = server.connect_string
            progress(f"private ZooKeeper at {zk}")
        for n in sizes:
            results["runs"].append(ScaleRun(n, zk, opts, workdir).run())
    finally:
        if server is not None:
            server.stop(remove=False)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    runs = {r["agents"]: r for r in results["runs"]}
    if baseline in runs:
        base = runs[baseline]["throughput"]["tasks_per_s"]
        for r in results["runs"]:
            r["throughput"]["vs_baseline"] = round(r["throughput"]["tasks_per_s"] / base, 3)
    results["targets"] = targets(results["runs"], baseline)
    return results


def targets(runs: list[dict], baseline: int) -> dict:
    out = {}
    for r in runs:
        n = r["agents"]
        t = {
            "converge_under_10s": (r["converge"]["coordinator_connected_all_s"] or 1e9) < 10
            and (r["converge"]["zookeeper_all_s"] or 1e9) < 10,
            "memory_under_20kib_per_agent": r["steady"]["coordinator_kib_per_agent"] < 20,
            "no_zookeeper_writes_at_steady_state": r["steady"]["zookeeper_writes"] == 0,
        }
        if "vs_baseline" in r["throughput"]:
            t["throughput_within_20pct_of_baseline"] = r["throughput"]["vs_baseline"] >= 0.8
        if "churn" in r:
            t["churn_exactly_once"] = r["churn"]["exactly_once"]
        out[str(n)] = t
    return out


def render(results: dict) -> str:
    runs = results["runs"]
    rows = [
        ("agents", lambda r: r["agents"]),
        ("converge: ZooKeeper sees all (s)", lambda r: r["converge"]["zookeeper_all_s"]),
        ("converge: coordinator connected all (s)", lambda r: r["converge"]["coordinator_connected_all_s"]),
        (
            "clusterctl nodes: listed / wall (s)",
            lambda r: f"{r['converge']['clusterctl_nodes']['listed']} / {r['converge']['clusterctl_nodes']['wall_s']}",
        ),
        ("idle coordinator CPU (% of a core)", lambda r: round(r["steady"]["coordinator_cpu_core_fraction"] * 100, 1)),
        ("coordinator memory per agent (KiB)", lambda r: r["steady"]["coordinator_kib_per_agent"]),
        ("coordinator fds", lambda r: r["steady"]["coordinator_fds"]),
        (
            "relays: count / memory per agent (KiB)",
            lambda r: f"{r['relays']} / {r['steady']['relays_kib_per_agent']}" if r.get("relays") else "-",
        ),
        ("ZooKeeper writes / agent / min", lambda r: r["steady"]["zookeeper_writes_per_agent_per_min"]),
        ("ZooKeeper watches", lambda r: r["steady"]["zookeeper_watches"]),
        ("throughput (tasks/s)", lambda r: r["throughput"]["tasks_per_s"]),
        ("  vs baseline", lambda r: r["throughput"].get("vs_baseline", "-")),
        (
            "latency under load p50 / p99 (ms)",
            lambda r: f"{r['throughput']['latency_ms_p50']} / {r['throughput']['latency_ms_p99']}",
        ),
        (
            "single task round trip p50 / p99 (ms)",
            lambda r: (
                f"{r['throughput']['single_task_round_trip_ms_p50']} / "
                f"{r['throughput']['single_task_round_trip_ms_p99']}"
            ),
        ),
        ("coordinator CPU per task (us)", lambda r: r["throughput"]["coordinator_cpu_us_per_task"]),
        ("churn: left / joined", lambda r: f"{r['churn']['left']} / {r['churn']['joined']}" if "churn" in r else "-"),
        (
            "churn: tasks, exactly once",
            lambda r: f"{r['churn']['tasks']}, {r['churn']['exactly_once']}" if "churn" in r else "-",
        ),
        ("churn: tasks dispatched again", lambda r: r["churn"]["dispatched_again"] if "churn" in r else "-"),
        (
            "10% deregister noticed (s)",
            lambda r: r.get("leave_10pct", {}).get("deregister", {}).get("coordinator_s", "-"),
        ),
        (
            "10% kill -9: coordinator / ZooKeeper (s)",
            lambda r: (
                f"{r['leave_10pct']['kill']['coordinator_s']} / {r['leave_10pct']['kill']['zookeeper_s']}"
                if "leave_10pct" in r
                else "-"
            ),
        ),
    ]
    width = max(len(label) for label, _ in rows) + 2
    lines = []
    for label, get in rows:
        cells = []
        for r in runs:
            try:
                cells.append(str(get(r)))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(label.ljust(width) + "".join(c.rjust(18) for c in cells))
    lines.append("")
    for n, t in results["targets"].items():
        lines.append(f"targets at {n} agents: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in t.items()))
    return "\n".join(lines)
