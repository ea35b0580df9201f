"""`make bench`: this project side by side with multiprocessing.Pool,
concurrent.futures.ProcessPoolExecutor, Dask distributed, IPython Parallel and
Ray, one worker process per core each, in one run on the same machine; plus
the raw ZeroMQ ceiling. Prints a table per workload (figures, ratios to
clusterd and to mp.Pool) and the targets of issue 6, MET / NOT MET.

Workloads (bench/workloads.py has the exact definitions; docs/benchmarks.md
what each figure means):
  W1  20,000 no-op tasks submitted one by one: tasks/s, CPU-µs per task;
      also through `clusterctl submit --range 0 20000` (tasks/s from its wall time)
  W2  the classic CPU-bound example, 8 x sum([random.randint(1, 100) for i in
      range(1000000)]): speedup over serial, CPU utilisation of the cores,
      clusterd's coordinator + agent CPU as % of one core
  W3  500 sequential single-task round trips: p50 / p99
  W4  2,000 tasks echoing 1 MiB bytes (32 in flight): MiB/s, both directions counted
  ZMQ raw pyzmq DEALER/ROUTER over tcp loopback: round trips/s (sequential and
      pipelined, 16-byte messages) and MiB/s with 1 MiB messages

Every system runs in its own subprocess (python -m bench.peers SYSTEM), one
after the other. A peer that is not installed (the `bench` extra) or fails to
start is reported as "skipped: <reason>" and the run goes on.

With --before REF, clusterd of that git commit runs too, right before this tree's, and a
table sets W1-W3 of both side by side (`make bench` passes BENCH_BEFORE, the commit before
job isolation).

Usage: python -m bench.run [--quick | --scale S] [--workers N] [--systems a,b] [--json FILE] [--before REF]
Env:   BENCH_SCALE=S  shrinks every workload (counts and the CPU-bound task size);
       --quick is BENCH_SCALE=0.1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil

from agents.resources import usable_cpus
from bench.workloads import Sizes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ORDER = ["serial", "zmq", "mp.Pool", "ProcessPoolExecutor", "clusterd", "dask", "ipyparallel", "ray"]
DISTRIBUTED = ("dask", "ipyparallel", "ray")
SHORT = {
    "clusterd": "clusterd",
    "clusterd-cli": "clusterd (clusterctl submit)",
    "clusterd-tuned": "clusterd, tune_malloc() in the client",
    "mp.Pool": "mp.Pool apply_async",
    "ProcessPoolExecutor": "ProcessPoolExecutor",
    "dask": "Dask distributed",
    "ipyparallel": "IPython Parallel",
    "ray": "Ray",
    "serial": "serial (1 process)",
    "zmq": "raw ZeroMQ",
}
QUICK_SCALE = 0.1


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ running


def run_system(name: str, workers: int, sizes: Sizes, logdir: str, timeout: float, root: str = ROOT) -> dict:
    """One system in its own process (and session); whatever it leaves behind
    (processes it started that outlive it) is killed by pid afterwards. ``root``: the
    source tree it runs from (another commit's, for --before)."""
    stem = name if root == ROOT else f"{name}-before"
    out = os.path.join(logdir, f"{stem}.json")
    log = os.path.join(logdir, f"{stem}.log")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
        PYTHONUNBUFFERED="1",
    )
    argv = [
        sys.executable,
        "-m",
        "bench.peers",
        name,
        "--workers",
        str(workers),
        "--scale",
        str(sizes.scale),
        "--out",
        out,
    ]
    started = time.monotonic()
    with open(log, "w") as logf:
        child = subprocess.Popen(
            argv,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    seen: dict[int, float] = {}  # every descendant ever seen: pid -> create time
    me = psutil.Process(child.pid)
    timed_out = False
    while child.poll() is None:
        try:
            for p in me.children(recursive=True):
                seen.setdefault(p.pid, p.create_time())
        except psutil.Error:
            pass
        if time.monotonic() - started > timeout:
            timed_out = True
            child.kill()
            child.wait()
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    leftovers = 0
    for pid, created in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created:
                p.kill()
                leftovers += 1
        except psutil.Error:
            pass
    try:
        with open(out) as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = {"system": name}
    record["elapsed_s"] = elapsed
    if leftovers:
        record["leftover_processes_killed"] = leftovers
    if timed_out:
        record.update(status="failed", reason=f"timed out after {timeout:.0f} s (figures up to then kept)")
    elif child.returncode != 0 and record.get("status") != "skipped":
        record.update(status="failed", reason=f"exit status {child.returncode}: {tail(log)}")
    elif record.get("status") not in ("ok", "skipped"):
        record.update(status="failed", reason=f"ended without finishing: {tail(log)}")
    if record.get("status") == "failed":
        record["log"] = log
    return record


def export_commit(ref: str, into: str) -> str:
    """REF's tree written into ``into`` (git archive: no worktree left registered in the
    repository); returns the short commit id. Raises RuntimeError saying why it cannot."""
    try:
        sha = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", f"{ref}^{{commit}}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        archive = subprocess.Popen(["git", "-C", ROOT, "archive", sha], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", into], stdin=archive.stdout, check=True, capture_output=True)
        if archive.wait() != 0:
            raise RuntimeError(f"git archive {sha} failed")
    except FileNotFoundError as exc:
        raise RuntimeError(f"{exc.filename} is not installed") from None
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{ref!r} is no commit of this checkout ({(exc.stderr or '').strip()[:160]})") from None
    return sha


def tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip() and not line.startswith("---")]
        return lines[-1][:200] if lines else "(no output)"
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- reporting


def get(results: dict, name: str, *keys):
    """A figure, or None when the system or workload did not produce it."""
    value = results.get(name)
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def status_text(results: dict, name: str, workload: str, brief: bool = False) -> str | None:
    """Why a row has no figures: skipped / failed / the workload's error
    (``brief``: the reason is already in the W1 table)."""
    rec = results.get(name)
    if rec is None:
        return "not run"
    if rec.get("status") == "skipped":
        return "skipped (see W1)" if brief else f"skipped: {rec.get('reason', '?')}"
    w = rec.get(workload)
    if isinstance(w, dict) and "error" in w:
        return f"error: {w['error']}"
    if w is None:
        return f"{rec.get('status', 'failed')}: {rec.get('reason', 'no figures')}"
    return None


def num(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def ratio(a, b) -> str:
    return "—" if a is None or not b else f"{a / b:.2f}x"


def table(title: str, headers: list[str], rows: list[list[str]], note: str = "", left: int = 1) -> str:
    """Columns before ``left`` are left-aligned, the rest right-aligned; a row
    of two cells (a system with no figures) spans the figure columns."""
    width = [
        max([len(h), *(len(r[i]) for r in rows if len(r) == len(headers) or i == 0)]) for i, h in enumerate(headers)
    ]

    def cells(row: list[str]) -> str:
        return "  ".join(c.ljust(width[i]) if i < left else c.rjust(width[i]) for i, c in enumerate(row)).rstrip()

    out = [title, cells(headers)]
    out.append("-" * len(out[-1]))
    for r in rows:
        out.append(f"{r[0].ljust(width[0])}  {r[1]}" if len(r) == 2 and len(headers) > 2 else cells(r))
    for paragraph in note.split("\n") if note else ():
        out.extend(textwrap.wrap(paragraph, 100))
    return "\n".join(out)


def label(results: dict, name: str) -> str:
    """The system's short name and, for the peers and this project, its version
    (the standard library's is the Python version in the header)."""
    version = get(results, name, "version")
    if name in ("clusterd", *DISTRIBUTED) and version:
        return f"{SHORT[name]} {version}"
    return SHORT.get(name, name)


def pct(value) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


DISPLAY = ["clusterd", "mp.Pool", "ProcessPoolExecutor", "dask", "ipyparallel", "ray"]  # clusterd, the reference, first


def systems_in(results: dict) -> list[str]:
    return [n for n in DISPLAY if n in results]


def compared_rows(
    results: dict,
    workload: str,
    figure: str,
    second: str,
    fmts: tuple[str, str],
    zmq: tuple[str, str, str, str | None],
    *,
    brief: bool = True,
    extra: tuple[str, str] | None = None,
    per: float = 1,
) -> list[list[str]]:
    """The rows [system, figure, second figure, ÷ clusterd, ÷ mp.Pool] of W1, W3
    and W4: every system that ran, then the raw ZeroMQ row ``zmq`` (its label,
    its part of the zmq figures, and the keys of its two figures there).
    ``extra``: (key, shown name) of figures of clusterd run another way, a row under clusterd's;
    ``per`` divides the second figure; ``brief``: a skipped system's reason is in
    another table (W1's), which is also the one that says why ZeroMQ has no row."""
    ref, pool = get(results, "clusterd", workload, figure), get(results, "mp.Pool", workload, figure)

    def row(text: str, v, s) -> list[str]:
        return [text, num(v, fmts[0]), num(s and s / per, fmts[1]), ratio(v, ref), ratio(v, pool)]

    rows = []
    for name in systems_in(results):
        keys = [(workload, name), extra] if extra and name == "clusterd" else [(workload, name)]
        for key, shown in keys:
            why = status_text(results, name, key, brief)
            if why:
                rows.append([label(results, shown), why])
                break  # no extra row under a clusterd without figures
            rows.append(row(label(results, shown), get(results, name, key, figure), get(results, name, key, second)))
    text, part, zfigure, zsecond = zmq
    why = status_text(results, "zmq", "zmq")
    if not why:
        rows.append(
            row(text, get(results, "zmq", "zmq", part, zfigure), zsecond and get(results, "zmq", "zmq", part, zsecond))
        )
    elif not brief and "zmq" in results:
        rows.append(["raw ZeroMQ ceiling", why])
    return rows


def report(results: dict, meta: dict) -> tuple[str, list[dict]]:
    cores = meta["workers"]
    lines = []
    quick = f" — QUICK RUN (scale {meta['scale']:g}): not the figures to quote" if meta["scale"] != 1 else ""
    lines.append(f"clusterd benchmark, {meta['date']}{quick}")
    lines.append(
        f"{meta['cpu_model']}; {meta['cpus']} CPUs, {cores} worker processes per system (one per core); "
        f"Python {meta['python']}; load average at start {meta['loadavg_start']:.2f}, "
        f"at end {meta['loadavg_end']:.2f}"
    )
    if max(meta["loadavg_start"], meta["loadavg_end"]) > 0.5:
        lines.append(
            "warning: the machine was not quiet (load average above 0.5): other work skews every figure, W2 most of all"
        )
    sizes = meta["sizes"]
    lines.append("")

    # W1
    rows = compared_rows(
        results,
        "w1",
        "tasks_per_s",
        "cpu_us_per_task",
        (",.0f", ",.0f"),
        ("raw ZeroMQ round trips, pipelined", "pipelined", "round_trips_per_s", "cpu_us_per_round_trip"),
        brief=False,
        extra=("w1_cli", "clusterd-cli"),
    )
    note = (
        "CPU-µs/task: CPU time of the client and of every process of the system (clusterd: coordinator,"
        " agent, workers; clusterctl: its own process too) / tasks. Higher tasks/s is better."
    )
    own = get(results, "clusterd", "w1_cli", "reported_tasks_per_s")
    if own:
        note += (
            f"\nclusterctl submit: tasks/s from the wall time of the whole command (interpreter start and "
            f"ZooKeeper look-up included); its own summary line says {own:,.0f} tasks/s."
        )
    lines.append(
        table(
            f"W1 throughput: {sizes['w1_tasks']:,} no-op tasks submitted one by one",
            ["system", "tasks/s", "CPU-µs/task", "÷ clusterd", "÷ mp.Pool"],
            rows,
            note,
        )
    )
    lines.append("")

    # W2
    serial = get(results, "serial", "w2", "wall_s")
    walls = {n: get(results, n, "w2", "wall_s") for n in systems_in(results)}
    speed = {n: serial / w if serial and w else None for n, w in walls.items()}
    rows = []
    if serial is None:
        rows.append(["serial (1 process)", status_text(results, "serial", "w2") or "no figure"])
    else:
        rows.append(["serial (1 process)", num(serial, ".2f"), "1.00", "—", "—", "—", "—"])
    for name in systems_in(results):
        why = status_text(results, name, "w2", brief=True)
        if why:
            rows.append([label(results, name), why])
            continue
        util = get(results, name, "w2", "cpu_util_of_cores")
        mutil = get(results, name, "w2", "machine_util")
        rows.append(
            [
                label(results, name),
                num(walls[name], ".2f"),
                num(speed[name], ".2f"),
                pct(util),
                pct(mutil),
                ratio(speed[name], speed.get("clusterd")),
                ratio(speed[name], speed.get("mp.Pool")),
            ]
        )
    daemons = get(results, "clusterd", "w2", "daemons_pct_of_one_core") or {}
    total = get(results, "clusterd", "w2", "daemons_pct_of_one_core_total")
    note = (
        "CPU util: CPU time of the system's processes / (wall x cores); machine: every process on the machine "
        "(other load shows there)."
    )
    if total is not None:
        note += (
            f"\nclusterd coordinator + agent during W2: {total:.2f}% of one core (coordinator "
            f"{daemons.get('coordinator', 0):.2f}%, agent {daemons.get('agent', 0):.2f}%)."
        )
    lines.append(
        table(
            f"W2 classic CPU-bound: {sizes['w2_tasks']} x sum(randint) over {sizes['w2_items']:,} items",
            ["system", "wall s", "speedup", "CPU util", "machine", "÷ clusterd", "÷ mp.Pool"],
            rows,
            note,
        )
    )
    lines.append("")

    # W3
    rows = compared_rows(
        results, "w3", "p50_ms", "p99_ms", (".3f", ".3f"), ("raw ZeroMQ round trip", "sequential", "p50_ms", "p99_ms")
    )
    lines.append(
        table(
            f"W3 latency: {sizes['w3_round_trips']:,} sequential single-task round trips",
            ["system", "p50 ms", "p99 ms", "p50 ÷ clusterd", "p50 ÷ mp.Pool"],
            rows,
            "Lower is better: a ratio above 1 is slower than the reference.",
        )
    )
    lines.append("")

    # Job switch: clusterd only (the peers share worker processes between jobs)
    switch = get(results, "clusterd", "switch", "p50_ms")
    if switch is not None:
        s = results["clusterd"]["switch"]
        rows = [
            ["new job, new workers", f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}"],
            ["new job, same workers", f"{s['same_domain_p50_ms']:.2f}", f"{s['same_domain_p99_ms']:.2f}"],
        ]
        lines.append(
            table(
                f"Job switch: the first task of each of {sizes['switch_jobs']} new jobs, one after another (clusterd)",
                ["case", "p50 ms", "p99 ms"],
                rows,
                "A job never runs in a process another job touched: each new job's workers are forked clean\n"
                "from the agent's template. 'Same workers': every job in one isolation domain, as an\n"
                "Executor's functions are; the difference is the cost of switching. The task is a builtin\n"
                "(abs): a fresh worker also imports the user's module at its first task, which is not counted.",
                left=1,
            )
        )
        lines.append("")

    before = meta.get("before")
    if before:
        lines.append(before_and_after(results, before))
        lines.append("")

    # W4: CPU-µs per task (1 MiB each way) / 2,000 = CPU-ms per MiB moved
    rows = compared_rows(
        results,
        "w4",
        "mib_per_s",
        "cpu_us_per_task",
        (",.0f", ".1f"),
        ("raw ZeroMQ 1 MiB echo", "payload", "mib_per_s", None),
        per=2000,
        extra=("w4_tuned", "clusterd-tuned"),
    )
    lines.append(
        table(
            f"W4 payload: {sizes['w4_tasks']:,} tasks echoing 1 MiB bytes, {sizes['w4_window']} in flight",
            ["system", "MiB/s", "CPU-ms/MiB", "÷ clusterd", "÷ mp.Pool"],
            rows,
            "MiB/s counts both directions (2 x tasks x 1 MiB / wall), the same for every system.\n"
            "tune_malloc(): the benchmark's process calls cluster.tune_malloc() first, as an application\n"
            "moving large payloads may (cluster/runtime/malloc.py); the daemons and workers always do.",
        )
    )
    lines.append("")

    # Targets
    targets = []

    def target(text: str, measured: str, met: bool | None) -> None:
        targets.append({"target": text, "measured": measured, "met": met})

    w1, p1 = get(results, "clusterd", "w1", "tasks_per_s"), get(results, "mp.Pool", "w1", "tasks_per_s")
    peers = {n: get(results, n, "w1", "tasks_per_s") for n in DISTRIBUTED}
    peers = {n: v for n, v in peers.items() if v}
    if w1 and peers:
        best = max(peers, key=peers.get)
        target(
            "W1 >= 3x the fastest distributed peer",
            f"{w1:,.0f} vs {SHORT[best]} {peers[best]:,.0f} = {w1 / peers[best]:.2f}x",
            w1 >= 3 * peers[best],
        )
    else:
        target("W1 >= 3x the fastest distributed peer", "no figure (clusterd or every distributed peer missing)", None)
    if w1 and p1:
        target("W1 >= 0.5x mp.Pool apply_async", f"{w1:,.0f} vs {p1:,.0f} = {w1 / p1:.2f}x", w1 >= 0.5 * p1)
    else:
        target("W1 >= 0.5x mp.Pool apply_async", "no figure", None)
    s = speed.get("clusterd")
    target(f"W2 speedup >= 0.95 x cores ({0.95 * cores:.2f})", num(s, ".2f"), None if s is None else s >= 0.95 * cores)
    target(
        "W2 coordinator + agent < 3% of one core",
        "—" if total is None else f"{total:.2f}%",
        None if total is None else total < 3,
    )
    p50, p99 = get(results, "clusterd", "w3", "p50_ms"), get(results, "clusterd", "w3", "p99_ms")
    target("W3 p50 <= 0.5 ms", "—" if p50 is None else f"{p50:.3f} ms", None if p50 is None else p50 <= 0.5)
    target("W3 p99 <= 2 ms", "—" if p99 is None else f"{p99:.3f} ms", None if p99 is None else p99 <= 2)
    w4, p4 = get(results, "clusterd", "w4", "mib_per_s"), get(results, "mp.Pool", "w4", "mib_per_s")
    tuned = get(results, "clusterd", "w4_tuned", "mib_per_s")
    target(
        "W4 >= mp.Pool MiB/s",
        "—"
        if not (w4 and p4)
        else f"{w4:,.0f} vs {p4:,.0f} MiB/s = {w4 / p4:.2f}x"
        + (f" (tune_malloc(): {tuned / p4:.2f}x)" if tuned else ""),
        None if not (w4 and p4) else w4 >= p4,
    )
    rows = [[t["target"], t["measured"], {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]] for t in targets]
    lines.append(
        table(
            "Targets (issue 6), for clusterd",
            ["target", "measured", "result"],
            rows,
            "" if not quick else "Quick run: the counts are too small for the targets to mean much.",
            left=3,
        )
    )
    return "\n".join(lines), targets


def before_and_after(results: dict, before: dict) -> str:
    """clusterd of this tree against clusterd of an earlier commit, run one after the other."""
    named = before["commit"] if before["ref"].startswith(before["commit"]) else f"{before['commit']} ({before['ref']})"
    title = f"Before and after: clusterd of commit {named} and of this tree"
    record = before.get("record") or {}
    if record.get("status") != "ok":
        return table(title, ["", ""], [["not measured", record.get("reason") or before.get("reason", "")]])
    serial = get(results, "serial", "w2", "wall_s")
    rows = []
    for figure, keys, fmt, better in (
        ("W1 tasks/s", ("w1", "tasks_per_s"), ",.0f", "higher"),
        ("W1 CPU-µs/task", ("w1", "cpu_us_per_task"), ",.0f", "lower"),
        ("W2 wall s", ("w2", "wall_s"), ".2f", "lower"),
        ("W3 p50 ms", ("w3", "p50_ms"), ".3f", "lower"),
        ("W3 p99 ms", ("w3", "p99_ms"), ".3f", "lower"),
    ):
        then, now = get({"b": record}, "b", *keys), get(results, "clusterd", *keys)
        rows.append([figure, num(then, fmt), num(now, fmt), ratio(now, then), better])
    if serial:
        then, now = get({"b": record}, "b", "w2", "wall_s"), get(results, "clusterd", "w2", "wall_s")
        rows.append(
            ["W2 speedup over serial", num(serial / then, ".2f"), num(serial / now, ".2f"), ratio(then, now), "higher"]
        )
    return table(
        title,
        ["figure", "before", "after", "after ÷ before", "better"],
        rows,
        "One run of each, back to back. On a quiet 2-core machine W1 varies about ±8% from run to run and\n"
        "W2 a few percent: a ratio within that is noise; run again before reading more into it.",
        left=1,
    )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------- main


def run_before(ref: str, workers: int, sizes: Sizes, logdir: str, timeout: float) -> dict:
    """clusterd of commit ``ref``, from its own exported tree, with this run's sizes."""
    tree = tempfile.mkdtemp(prefix="clusterd-before-")
    try:
        try:
            commit = export_commit(ref, tree)
        except RuntimeError as exc:
            say(f"--before {ref}: {exc}; not measured")
            return {"ref": ref, "commit": "?", "reason": str(exc)}
        say(f"clusterd of commit {commit} ({ref}) ...")
        record = run_system("clusterd", workers, sizes, logdir, timeout, root=tree)
        say(f"clusterd of commit {commit}: {record.get('status')} in {record['elapsed_s']:.1f} s")
        return {"ref": ref, "commit": commit, "record": record}
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def main() -> int:
    cpus = usable_cpus()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--workers", type=int, default=cpus, help="worker processes for every system (default: usable cores)"
    )
    parser.add_argument("--quick", action="store_true", help=f"every workload at scale {QUICK_SCALE}")
    parser.add_argument("--scale", type=float, default=None, help="shrink (or grow) every workload; env BENCH_SCALE")
    parser.add_argument(
        "--systems", default=",".join(ORDER), help=f"comma-separated subset of {','.join(ORDER)} (default: all)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON to FILE ('-': stdout)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds one system may take before it is killed (default: 900 x scale, at least 180)",
    )
    parser.add_argument("--logs", metavar="DIR", help="keep each system's log and figures in DIR")
    parser.add_argument(
        "--before",
        metavar="REF",
        help="also run clusterd of this git commit (W1-W4, right before this tree's) and print both side by side",
    )
    args = parser.parse_args()

    if args.scale is not None:
        scale = args.scale
    elif os.environ.get("BENCH_SCALE"):
        scale = float(os.environ["BENCH_SCALE"])
    else:
        scale = QUICK_SCALE if args.quick else 1.0
    if scale <= 0:
        parser.error("the scale must be positive")
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    names = [n for n in ORDER if n in names]
    timeout = args.timeout or max(180.0, 900.0 * scale)
    sizes = Sizes(scale)
    logdir = args.logs or tempfile.mkdtemp(prefix="clusterd-bench-")
    os.makedirs(logdir, exist_ok=True)

    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "usable_cpus": cpus,
        "workers": args.workers,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "scale": scale,
        "sizes": sizes.as_dict(),
        "loadavg_start": os.getloadavg()[0],
    }
    say(f"benchmark: {len(names)} systems, {args.workers} workers each, scale {scale:g}; logs in {logdir}")
    results: dict[str, dict] = {}
    started = time.monotonic()
    for i, name in enumerate(names, 1):
        if name == "clusterd" and args.before:
            meta["before"] = run_before(args.before, args.workers, sizes, logdir, timeout)
        say(f"[{i}/{len(names)}] {name} ...")
        rec = run_system(name, args.workers, sizes, logdir, timeout)
        results[name] = rec
        state = rec.get("status")
        detail = f": {rec.get('reason')}" if state != "ok" else ""
        say(f"[{i}/{len(names)}] {name} {state} in {rec['elapsed_s']:.1f} s{detail}")
    meta["loadavg_end"] = os.getloadavg()[0]
    meta["wall_s"] = time.monotonic() - started

    text, targets = report(results, meta)
    print(text)
    if args.json:
        doc = json.dumps({"meta": meta, "systems": results, "targets": targets}, indent=2, default=str)
        if args.json == "-":
            print(doc)
        else:
            with open(args.json, "w") as f:
                f.write(doc + "\n")
            say(f"figures written to {args.json}")
    failed = [n for n, r in results.items() if r.get("status") == "failed"]
    if not args.logs:
        if failed:
            say(f"logs of the failed systems kept in {logdir}")
        else:
            shutil.rmtree(logdir, ignore_errors=True)
    # The project itself failing is an error; a peer failing or skipped is a reported fact.
    return 1 if "clusterd" in names and results["clusterd"].get("status") != "ok" else 0


if __name__ == "__main__":
    sys.exit(main())
