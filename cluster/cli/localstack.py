"""A whole cluster on this machine: private ZooKeeper, a coordinator, an agent.

Used by ``clusterctl up``, the demo and the benchmarks. Everything binds to
127.0.0.1 and lives in a temporary directory that is removed on stop.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from cluster.contract import config, layout
from cluster.runtime import scratch
from cluster.runtime.lifeline import dies_with_parent
from cluster.runtime.zk import close as zk_close
from cluster.runtime.zk import connect as zk_connect
from cluster.runtime.zk import read_leader

if TYPE_CHECKING:
    from cluster.runtime.zkserver import ZooKeeperServer

READY_TIMEOUT = 60.0
PREFIX = "clusterd-up-"  # its work dirs (runtime/scratch.py): one SIGKILL left is cleared by the next


class StackFailed(RuntimeError):
    pass


class LocalStack:
    def __init__(
        self,
        *,
        workers: str = config.AgentConfig.workers,
        cluster: str = config.Common.cluster,
        log_level: str = "warning",
    ):
        self.workers, self.cluster, self.log_level = workers, cluster, log_level
        self.children: list[subprocess.Popen] = []
        self.workdir = ""
        self.server: ZooKeeperServer | None = None
        self.zk = ""

    def start(self) -> LocalStack:
        from cluster.runtime.zkserver import ZooKeeperServer

        self.workdir = scratch.make(PREFIX)
        self.server = server = ZooKeeperServer(data_dir=os.path.join(self.workdir, "zk"))
        try:
            server.start()
            self.zk = server.connect_string
            base = [
                "--zk",
                self.zk,
                "--cluster",
                self.cluster,
                "--log-level",
                self.log_level,
                "--bind",
                "tcp://127.0.0.1:0",
                "--insecure",
            ]
            # SIGTERM if we are killed: the agent drains and the coordinator stops, as on Ctrl-C.
            self.children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cluster.cli.main", "coordinator", *base], preexec_fn=dies_with_parent()
                )
            )
            self.children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cluster.cli.main", "agent", *base, "--workers", self.workers],
                    preexec_fn=dies_with_parent(),
                )
            )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, CLUSTER_ZK=self.zk, CLUSTER_NAME=self.cluster)

    def failed(self) -> list[int]:
        return [c.returncode for c in self.children if c.poll() is not None]

    def _wait_ready(self) -> None:
        client = zk_connect(self.zk, timeout=10.0)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            path = layout.agents_path(self.cluster)
            while time.monotonic() < deadline:
                if self.failed():
                    raise StackFailed("the coordinator or the agent failed to start (see its log above)")
                if client.exists(path) and client.get_children(path) and read_leader(client, self.cluster):
                    return
                time.sleep(0.05)
            raise StackFailed(f"the local cluster was not ready within {READY_TIMEOUT:.0f} s")
        finally:
            zk_close(client)

    def stop(self) -> None:
        for proc in reversed(self.children):  # the agent drains first, then the coordinator stops
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.children = []
        if self.server is not None:
            self.server.stop()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
