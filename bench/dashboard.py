"""The dashboard's cost, in one run (docs/operations.md, "Dashboard"):

1. W1 through the Executor (bench/workloads.py) on a local cluster with no browser
   watching, with two headless Chromium pages watching its dashboard, and with none again
   (the two runs without browsers bracket the noise of the machine).
2. At 5,000 simulated agents (bench/scale/simfleet.py, `make scale`'s fleet): the
   page's first paint and the time until all 5,000 rows are known (the Performance API
   of headless Chromium), the bytes the stream sends a browser per second and the
   dashboard's CPU while one browser watches.

  python -m bench.dashboard [--agents 5000] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench import peers, workloads
from bench.scale.fleet import Sim, StatusProbe, progress, raise_fd_limit, ready
from cluster.runtime.zk import close as zk_close
from cluster.runtime.zk import connect as zk_connect
from cluster.runtime.zk import read_leader

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
PER_PROCESS = 1000  # simulated agents per simulator process, as `make scale` runs them


class Dashboard:
    def __init__(self, zk: str, cluster: str, log: Path):
        self.log = open(log, "wb")
        env = dict(os.environ, CLUSTER_ZK=zk, CLUSTER_NAME=cluster, CLUSTER_INSECURE="1", PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [PY, "-m", "cluster.cli.main", "dashboard", "--port", "0", "--json"],
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            cwd=ROOT,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the dashboard did not start; see {log}")
        self.url = json.loads(line)["url"]
        self.ps = psutil.Process(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()


def browsers():
    from playwright.sync_api import sync_playwright

    p = sync_playwright().start()
    chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
    return p, chromium


def w1_with_watchers(sizes: workloads.Sizes, tmp: Path, rounds: int) -> dict:
    """W1 without and with two pages watching, alternated ``rounds`` times: on a shared
    machine one run of each is mostly noise. Without: the pages show about:blank (their
    streams closed, Chromium still running), so only the watching differs."""
    system = peers.Clusterd(workers=2)
    system.start()
    dashboard = Dashboard(system.stack.zk, "bench", tmp / "dashboard-w1.log")
    out: dict = {"none": [], "two": []}
    p, chromium = browsers()
    try:
        workloads.warm_up(system, sizes)
        pages = [chromium.new_page() for _ in range(2)]
        for _ in range(rounds):
            for page in pages:
                page.goto("about:blank")
            out["none"].append(workloads.w1_throughput(system, sizes)["tasks_per_s"])
            for page, where in zip(pages, ("#fleet", "#work")):
                page.goto(dashboard.url + where)
                page.wait_for_selector("#link.up")  # the stream is live
            out["two"].append(workloads.w1_throughput(system, sizes)["tasks_per_s"])
            progress(f"W1: no browser {out['none'][-1]:,.0f} tasks/s, two watching {out['two'][-1]:,.0f}")
    finally:
        chromium.close()
        p.stop()
        dashboard.stop()
        system.stop()
    return out


def cpu_of(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def cpu_share(proc: psutil.Process, seconds: float) -> float:
    """The share of a core ``proc`` used over the next ``seconds``."""
    before, t0 = cpu_of(proc), time.monotonic()
    time.sleep(seconds)
    return (cpu_of(proc) - before) / (time.monotonic() - t0)


def first_paint_at_scale(agents: int, zk: str, tmp: Path, shots: Path | None) -> dict:
    cluster = "dashscale"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    coordinator_log = open(tmp / "coordinator-scale.log", "wb")
    coordinator = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "coordinator", "--zk", zk, "--cluster", cluster, "--insecure"]
        + ["--bind", "tcp://127.0.0.1:0", "--log-level", "warning"],
        stdout=coordinator_log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    sims: list[Sim] = []
    dashboard = None
    try:
        kazoo = zk_connect(zk, timeout=15.0)
        deadline = time.monotonic() + 60
        while (leader := read_leader(kazoo, cluster)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        zk_close(kazoo)
        if leader is None:
            raise RuntimeError("the coordinator did not lead within 60 s")
        for i, first in enumerate(range(0, agents, PER_PROCESS)):
            count = min(PER_PROCESS, agents - first)
            argv = [PY, "-m", "bench.scale.simfleet", "--zk", zk, "--cluster", cluster, "--prefix", f"p{i}-"]
            argv += ["--count", str(count), "--workers", "8", "--register"]
            sims.append(Sim(f"p{i}", argv, env, tmp / f"sim-p{i}.log"))
        probe = StatusProbe(leader.endpoint)
        deadline = time.monotonic() + 300
        while ready(probe.ask()) < agents:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{agents} simulated agents were not ready within 300 s")
            time.sleep(1.0)
        probe.close()
        progress(f"{agents} simulated agents ready")
        dashboard = Dashboard(zk, cluster, tmp / "dashboard-scale.log")
        time.sleep(2.0)  # its watches have read every agent (it polls the status once a browser comes)
        leader_cpu_unwatched = cpu_share(psutil.Process(coordinator.pid), 10.0)
        p, chromium = browsers()
        try:
            page = chromium.new_page(viewport={"width": 1400, "height": 900})
            page.goto(dashboard.url)
            page.wait_for_function(
                f"() => document.querySelector('#node-count').textContent === '{agents}'", timeout=60000
            )
            rows_ms = page.evaluate("performance.now()")
            paint = page.evaluate(
                "Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]))"
            )
            page.wait_for_function(
                "() => document.querySelector('[data-node]')?.dataset.state === 'ready'", timeout=30000
            )
            rows_before = page.evaluate("document.querySelectorAll('[data-node]').length")
            cpu0, leader0, t0 = cpu_of(dashboard.ps), cpu_of(psutil.Process(coordinator.pid)), time.monotonic()
            time.sleep(10.0)
            elapsed = time.monotonic() - t0
            cpu = (cpu_of(dashboard.ps) - cpu0) / elapsed
            leader_cpu_watched = (cpu_of(psutil.Process(coordinator.pid)) - leader0) / elapsed
            heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : 0")
            if shots:
                page.screenshot(path=str(shots / f"fleet-{agents}.png"))
            # One agent crashes (its socket closes, as kill -9): until the page counts it.
            started = time.monotonic()
            sims[-1].ask(op="leave", n=1, how="crash")
            page.wait_for_function(
                f"() => !document.querySelector('#state-chips').innerText.includes('ready {agents}')", timeout=30000
            )
            crash_shown = time.monotonic() - started
        finally:
            chromium.close()
            p.stop()
        return {
            "agents": agents,
            "first_contentful_paint_ms": round(paint.get("first-contentful-paint", float("nan")), 1),
            "all_rows_known_ms": round(rows_ms, 1),
            "rows_in_dom": rows_before,
            "dashboard_cpu_while_watched": round(cpu, 3),
            "page_js_heap_mib": round(heap / 2**20, 1),
            "crashed_agent_shown_s": round(crash_shown, 2),
            "leader_cpu_unwatched": round(leader_cpu_unwatched, 3),
            "leader_cpu_watched": round(leader_cpu_watched, 3),
        }
    finally:
        if dashboard is not None:
            dashboard.stop()
        for sim in sims:
            sim.stop()
        coordinator.terminate()
        coordinator.wait(15)
        coordinator_log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=5000, help="simulated agents for the first-paint figure")
    ap.add_argument("--quick", action="store_true", help="W1 at a tenth of its size")
    ap.add_argument("--rounds", type=int, default=5, help="W1 without and with browsers, alternated this often")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--screenshot", type=Path, help="save the fleet page at scale here (e.g. docs/dashboard)")
    args = ap.parse_args()
    raise_fd_limit()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-dashboard-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    sizes = workloads.Sizes(0.1 if args.quick else 1.0)
    w1 = w1_with_watchers(sizes, tmp, args.rounds)

    from cluster.runtime.zkserver import ZooKeeperServer

    server = ZooKeeperServer(data_dir=str(tmp / "zk"))
    server.start()
    try:
        scale = first_paint_at_scale(args.agents, server.connect_string, tmp, args.screenshot)
    finally:
        server.stop()
        shutil.rmtree(tmp / "zk", ignore_errors=True)  # the logs stay, for a look after a failure
    none, two = statistics.median(w1["none"]), statistics.median(w1["two"])
    spread = (max(w1["none"]) - min(w1["none"])) / none
    print(f"\nW1 through the Executor ({sizes.noop:,} no-op tasks), {args.rounds} rounds alternated, same run:")
    print(f"  no browser            median {none:>9,.0f} tasks/s  (runs spread {spread:.0%} of it)")
    print(f"  two browsers watching median {two:>9,.0f} tasks/s  ({two / none:.2f}x)")
    print("  runs: " + ", ".join(f"{a:,.0f}/{b:,.0f}" for a, b in zip(w1["none"], w1["two"])) + " (none/two)")
    print(f"\nThe dashboard at {scale['agents']:,} simulated agents (headless Chromium):")
    print(f"  first contentful paint      {scale['first_contentful_paint_ms']:>8,.0f} ms")
    print(f"  all {scale['agents']:,} rows known        {scale['all_rows_known_ms']:>8,.0f} ms after navigation")
    print(f"  table rows in the DOM       {scale['rows_in_dom']:>8}")
    print(f"  dashboard CPU while watched {scale['dashboard_cpu_while_watched']:>8.1%} of a core")
    print(f"  page JS heap                {scale['page_js_heap_mib']:>8} MiB")
    print(f"  a crashed agent shown after {scale['crashed_agent_shown_s']:>8.2f} s")
    print(
        f"  the leader's CPU            {scale['leader_cpu_unwatched']:>8.1%} of a core unwatched, "
        f"{scale['leader_cpu_watched']:.1%} with the browser (its status once a second)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"w1": w1, "scale": scale}, indent=2) + "\n")


if __name__ == "__main__":
    main()
