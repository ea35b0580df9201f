"""A network partition: one agent lives in its own network namespace (its own
address, a veth pair to this host); the link is cut mid-job, then healed."""

from __future__ import annotations

import os
import shutil

import pytest
from chaoslib import Job, ran_on
from helpers import PY, LocalCluster, agent_state, ip, wait_for, written_off

from cluster.runtime.zkserver import ZooKeeperServer

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and iproute2"
)


def test_partitioned_agent_is_written_off_then_rejoins_without_duplicates(netns, tmp_path, cluster_name):
    with ZooKeeperServer(host=netns["host"], tick_time=500) as zk:
        cluster = LocalCluster(zk.connect_string, cluster_name, tmp_path)
        try:
            fast = ("--zk-session-timeout", "2")
            coordinator = cluster._start(
                "coordinator",
                [PY, "-m", "cluster.cli.main", "coordinator", "--bind", f"tcp://{netns['host']}:0", *fast],
            )
            near = cluster.agent("near", 2, *fast)
            far = cluster._start(
                "far",
                [
                    "ip",
                    "netns",
                    "exec",
                    netns["name"],
                    PY,
                    "-m",
                    "agents",
                    "--node-id",
                    "far",
                    "--workers",
                    "2",
                    "--bind",
                    f"tcp://{netns['peer']}:0",
                    *fast,
                ],
            )
            cluster.wait_ready(coordinator, ["near", "far"])
            job = Job(cluster, tmp_path, 5000)
            job.wait_fraction(0.2)
            ip("link", "set", netns["link"], "down")  # the far node is cut off from everything
            # Written off by whichever signal comes first: silence, or its ZooKeeper session expiring.
            cluster.wait_status(
                lambda s: written_off(s, "far", "silent") or agent_state(s, "far") is None,
                20,
                what="the coordinator to write off the far agent",
            )
            wait_for(lambda: "far" not in cluster.agents(), 20, what="its ZooKeeper session to expire too")
            ip("link", "set", netns["link"], "up")
            rows = job.finish()
            assert ran_on(rows).get(near.name, 0) > 0
            # Healed: the far agent registers again and is taken back.
            wait_for(lambda: "far" in cluster.agents(), 30, what="the far agent to re-register")
            cluster.wait_agent("far", "ready", timeout=30)
            assert far.popen.poll() is None
        finally:
            cluster.stop()
