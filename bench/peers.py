"""The systems under test, each behind one small interface, and the entry point
that measures ONE of them in its own process (bench/run.py starts one such
process per system, so no system's imports, threads or leftovers disturb the
next):

    python -m bench.peers SYSTEM --workers N --scale S --out FILE

SYSTEM is one of: serial, zmq, clusterd, mp.Pool, ProcessPoolExecutor, dask,
ipyparallel, ray. FILE receives the figures as JSON, rewritten after every
workload, so a run that is killed still leaves what it measured. A system
that is not installed or fails to start is written as
{"status": "skipped", "reason": ...}.

Every system runs one worker process per core (``--workers``):
  clusterd             LocalStack (private ZooKeeper, coordinator, agent with
                       --workers N) and cluster.Executor; Executor.submit
  mp.Pool              multiprocessing.get_context("fork").Pool(N); apply_async
  ProcessPoolExecutor  concurrent.futures.ProcessPoolExecutor(N, fork); submit
  dask                 distributed.LocalCluster(n_workers=N, threads_per_worker=1,
                       processes=True); Client.submit(pure=False)
  ipyparallel          ipp.Cluster(n=N) started from Python; load_balanced_view().apply_async
  ray                  ray.init(num_cpus=N); ray.remote(fn).remote
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable

import psutil

from bench import workloads
from bench.workloads import Sizes, descendants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Skipped(Exception):
    """The system cannot run here: not installed, or failed to start."""


class System:
    label = ""
    kind = ""  # "project", "stdlib" or "distributed"
    api = ""  # how one task is submitted
    daemon_groups: tuple[str, ...] = ()

    def __init__(self, workers: int):
        self.workers = workers

    def version(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def submit(self, fn, *args):
        raise NotImplementedError

    def result(self, handle):
        raise NotImplementedError

    def results(self, handles) -> list:
        return [self.result(h) for h in handles]

    def cpu_groups(self) -> dict:
        """The client (this process: submitting threads, result threads and,
        for Dask, its scheduler) and every process under it: the system's
        daemons and workers."""
        me = psutil.Process()
        return {"client": lambda: [me], "processes": lambda: descendants(me)}

    def extras(self) -> dict:
        """System-specific figures, measured after the four workloads: {key: function(sizes)}."""
        return {}


# ----------------------------------------------------------------- this project


class Clusterd(System):
    label = "clusterd (Executor.submit)"
    kind = "project"
    api = "Executor.submit"
    daemon_groups = ("coordinator", "agent")

    def version(self) -> str:
        from cluster.contract.version import __version__

        return __version__

    def start(self) -> None:
        from cluster import Executor
        from cluster.cli.localstack import LocalStack

        self.stack = LocalStack(workers=str(self.workers), cluster="bench").start()
        self.ex = Executor(zk=self.stack.zk, cluster="bench")
        self.coordinator = psutil.Process(self.stack.children[0].pid)
        self.agent = psutil.Process(self.stack.children[1].pid)

    def stop(self) -> None:
        ex, stack = getattr(self, "ex", None), getattr(self, "stack", None)
        try:
            if ex is not None:
                ex.shutdown(wait=False, cancel_futures=True)
        finally:
            if stack is not None:
                stack.stop()

    def submit(self, fn, *args):
        return self.ex.submit(fn, *args)

    def result(self, handle):
        return handle.result()

    def cpu_groups(self) -> dict:
        # The ZooKeeper server (a child of LocalStack) is not counted: it is idle during a job.
        me, coordinator, agent = psutil.Process(), self.coordinator, self.agent
        return {
            "client": lambda: [me],
            "coordinator": lambda: [coordinator],
            "agent": lambda: [agent],
            "workers": lambda: descendants(agent),
        }

    def extras(self) -> dict:
        return {"switch": self.job_switch, "w1_cli": self.w1_cli, "w4_tuned": self.w4_tuned}

    def job_switch(self, sizes: Sizes) -> dict:
        """The first task of each of N new jobs, one after another: a job never runs in a
        process another job touched, so each new job's workers are retired and forked clean
        from the agent's template. Beside it, the same with every job in one isolation
        domain (as an Executor's functions share one): what is left is opening a job."""
        from cluster.client.session import ClusterClient
        from cluster.contract import payload

        # A builtin: the first task of a job on a fresh worker would otherwise also import the
        # function's module, which is the user's cost, not the switch's.
        function = payload.pack_callable(abs)

        def first_tasks(domain: Callable[[int], str]) -> list[float]:
            out = []
            with ClusterClient(self.stack.zk, "bench") as client:
                for i in range(sizes.switches):
                    done = threading.Event()
                    started = time.perf_counter()
                    options = {"isolation": domain(i), "result_format": payload.RESULT_PICKLE}
                    job = client.open_job(function, options, lambda *result, done=done: done.set())
                    job.submit(0, payload.pack_args((-i,)))
                    if not done.wait(60):
                        raise RuntimeError(f"job {i}'s first task did not finish within 60 s")
                    out.append(time.perf_counter() - started)
                    job.close()
            return out

        switched = first_tasks(lambda i: f"bench-switch-{i}")
        with ClusterClient(self.stack.zk, "bench") as client:
            # A job of the shared domain open throughout, which has run a task on the agent: the
            # domain, and its workers, stay while the others come and go.
            ran = threading.Event()
            anchor = client.open_job(function, {"isolation": "bench-switch-shared"}, lambda *result: ran.set())
            anchor.submit(0, payload.pack_args((1,)))
            ran.wait(60)
            same = first_tasks(lambda i: "bench-switch-shared")
            anchor.close()
        return {
            "jobs": sizes.switches,
            "p50_ms": workloads.percentile(switched, 50) * 1e3,
            "p99_ms": workloads.percentile(switched, 99) * 1e3,
            "same_domain_p50_ms": workloads.percentile(same, 50) * 1e3,
            "same_domain_p99_ms": workloads.percentile(same, 99) * 1e3,
        }

    def w4_tuned(self, sizes: Sizes) -> dict:
        """W4 again, after this (the client's) process tuned its allocator as cluster/runtime/malloc.py
        suggests for applications that move large payloads. Last: nothing after it is affected."""
        import cluster

        cluster.tune_malloc()
        return workloads.w4_payload(self, sizes)

    def w1_cli(self, sizes: Sizes) -> dict:
        """W1 through `clusterctl submit FILE:noop --range 0 N` as a subprocess:
        tasks/s from its wall time (interpreter start, ZooKeeper look-up and all)."""
        n = sizes.noop
        with tempfile.TemporaryDirectory(prefix="clusterd-bench-") as tmp:
            module = os.path.join(tmp, "noop_task.py")
            with open(module, "w") as f:
                f.write("def noop(x):\n    return x\n")

            def argv(count: int) -> list[str]:
                return [
                    sys.executable,
                    "-m",
                    "cluster.cli.main",
                    "submit",
                    f"{module}:noop",
                    "--range",
                    "0",
                    str(count),
                    "--output",
                    os.devnull,
                    "--no-progress",
                ]

            subprocess.run(
                argv(100), env=self.stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120
            )  # warm-up: the OS caches, not the job (each run is a new job)
            # The client is the clusterctl subprocess: RUSAGE_CHILDREN has its CPU once it is reaped.
            groups = {"clusterctl": lambda: [], **self.cpu_groups()}
            del groups["client"]
            meter = workloads.CpuMeter(groups, children_rusage="clusterctl").start()
            started = time.perf_counter()
            proc = subprocess.run(
                argv(n),
                env=self.stack.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=max(120, n / 100),
            )
            wall = time.perf_counter() - started
            cpu = meter.stop()
        summary = proc.stderr.decode(errors="replace").strip().splitlines()
        summary = summary[-1] if summary else ""
        if proc.returncode != 0:
            raise RuntimeError(f"clusterctl submit exited {proc.returncode}: {summary}")
        m = re.search(r"([\d.]+) s wall, (\d+) tasks/s", summary)
        total = sum(cpu.values())
        return {
            "tasks": n,
            "wall_s": wall,
            "tasks_per_s": n / wall,
            "summary": summary,
            "reported_tasks_per_s": float(m.group(2)) if m else None,
            "cpu_s": total,
            "cpu_s_by_group": cpu,
            "cpu_us_per_task": total / n * 1e6,
        }


# ----------------------------------------------------------- the standard library


class MpPool(System):
    label = "multiprocessing.Pool (apply_async)"
    kind = "stdlib"
    api = "Pool.apply_async"

    def version(self) -> str:
        return f"Python {platform.python_version()}"

    def start(self) -> None:
        import multiprocessing

        self.pool = multiprocessing.get_context("fork").Pool(self.workers)

    def stop(self) -> None:
        if hasattr(self, "pool"):
            self.pool.terminate()
            self.pool.join()

    def submit(self, fn, *args):
        return self.pool.apply_async(fn, args)

    def result(self, handle):
        return handle.get()


class ProcessPool(System):
    label = "concurrent.futures.ProcessPoolExecutor"
    kind = "stdlib"
    api = "ProcessPoolExecutor.submit"

    def version(self) -> str:
        return f"Python {platform.python_version()}"

    def start(self) -> None:
        import concurrent.futures as cf
        import multiprocessing

        self.ex = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))

    def stop(self) -> None:
        if hasattr(self, "ex"):
            self.ex.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn, *args):
        return self.ex.submit(fn, *args)

    def result(self, handle):
        return handle.result()


# ------------------------------------------------------------ distributed peers


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Skipped(f"not installed ({exc}); `pip install -e '.[bench]'`") from exc


class Dask(System):
    label = "Dask distributed (LocalCluster)"
    kind = "distributed"
    api = "Client.submit"

    def version(self) -> str:
        return _need("distributed").__version__

    def start(self) -> None:
        distributed = _need("distributed")
        self.cluster = distributed.LocalCluster(
            n_workers=self.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self.client = distributed.Client(self.cluster)
        self.client.wait_for_workers(self.workers, timeout=60)

    def stop(self) -> None:
        if hasattr(self, "client"):
            self.client.close()
        if hasattr(self, "cluster"):
            self.cluster.close()

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def result(self, handle):
        return handle.result()

    def results(self, handles) -> list:
        return self.client.gather(handles)


class IPyParallel(System):
    label = "IPython Parallel (load-balanced view)"
    kind = "distributed"
    api = "LoadBalancedView.apply_async"

    def version(self) -> str:
        return _need("ipyparallel").__version__

    def start(self) -> None:
        ipp = _need("ipyparallel")
        self.cluster = ipp.Cluster(n=self.workers, log_level=logging.ERROR)
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(self.workers, timeout=120)
        self.view = self.rc.load_balanced_view()

    def stop(self) -> None:
        if hasattr(self, "rc"):
            self.rc.close()
        if hasattr(self, "cluster"):
            self.cluster.stop_cluster_sync()

    def submit(self, fn, *args):
        return self.view.apply_async(fn, *args)

    def result(self, handle):
        return handle.get()


class Ray(System):
    label = "Ray (ray.remote)"
    kind = "distributed"
    api = "remote_fn.remote"

    def version(self) -> str:
        return _need("ray").__version__

    def start(self) -> None:
        self.ray = _need("ray")
        self.ray.init(
            num_cpus=self.workers,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            configure_logging=True,
        )
        self.remote: dict = {}

    def stop(self) -> None:
        if hasattr(self, "ray") and self.ray.is_initialized():
            self.ray.shutdown()

    def submit(self, fn, *args):
        remote = self.remote.get(fn)
        if remote is None:
            remote = self.remote[fn] = self.ray.remote(fn)
        return remote.remote(*args)

    def result(self, handle):
        return self.ray.get(handle)

    def results(self, handles) -> list:
        return self.ray.get(handles)


SYSTEMS: dict[str, type[System]] = {
    "clusterd": Clusterd,
    "mp.Pool": MpPool,
    "ProcessPoolExecutor": ProcessPool,
    "dask": Dask,
    "ipyparallel": IPyParallel,
    "ray": Ray,
}
SPECIAL = ("serial", "zmq")


# ------------------------------------------------------------------ entry point


def measure(name: str, workers: int, sizes: Sizes, out_path: str) -> None:
    record_: dict = {"system": name, "status": "running", "workers": workers}

    def write() -> None:
        tmp = out_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record_, f, indent=1, default=str)
        os.replace(tmp, out_path)

    def record(key: str, value) -> None:
        record_[key] = value
        write()

    def step(key: str, fn, *args) -> None:
        print(f"--- {name}: {key}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            record(key, fn(*args))
        except Exception as exc:  # one workload failing does not lose the others
            traceback.print_exc()
            record(key, {"error": f"{type(exc).__name__}: {exc}"[:300]})
        print(f"--- {name}: {key} took {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)

    write()
    if name == "serial":
        record_.update(label="serial (one process)", kind="baseline", version=f"Python {platform.python_version()}")
        step("w2", workloads.serial_classic, sizes)
        record("status", "ok")
        return
    if name == "zmq":
        record_.update(label="raw pyzmq DEALER/ROUTER (ceiling)", kind="ceiling")
        step("zmq", workloads.zmq_ceiling, sizes)
        record_["version"] = f"pyzmq {record_['zmq'].get('pyzmq', '?')}, libzmq {record_['zmq'].get('libzmq', '?')}"
        record("status", "ok")
        return

    system = SYSTEMS[name](workers)
    record_.update(label=system.label, kind=system.kind, api=system.api)
    try:
        record_["version"] = system.version()
        write()
        started = time.perf_counter()
        try:
            system.start()
            workloads.warm_up(system, sizes)
        except Skipped:
            raise
        except Exception as exc:
            traceback.print_exc()
            raise Skipped(f"failed to start: {type(exc).__name__}: {exc}"[:300]) from exc
        record("start_s", time.perf_counter() - started)
        step("w1", workloads.w1_throughput, system, sizes)
        step("w3", workloads.w3_latency, system, sizes)
        step("w2", workloads.w2_classic, system, sizes)
        step("w4", workloads.w4_payload, system, sizes)
        for key, fn in system.extras().items():
            step(key, fn, sizes)  # a failure is recorded under its own key, shown in its own row
        record("status", "ok")
    except Skipped as exc:
        record_.update(status="skipped", reason=str(exc))
        write()
    finally:
        try:
            system.stop()
        except Exception:
            traceback.print_exc()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system", choices=[*SPECIAL, *SYSTEMS])
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # peers warn about large graphs, forks with threads, ...
    measure(args.system, args.workers, Sizes(args.scale), args.out)


if __name__ == "__main__":
    main()
