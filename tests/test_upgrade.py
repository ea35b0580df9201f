"""A rolling upgrade across a protocol-compatible change, under a running job:
agents one by one (drain, restart on the new release), then the standby
coordinator, then the leader. The new release (tests/next_release) appends a
header field to every message; every result must still arrive exactly once."""

from __future__ import annotations

import json
import signal
import subprocess

from helpers import PY, ROOT, wait_for

from cluster.contract import layout
from cluster.contract.version import __version__

NEXT = __version__ + "+next"
TASKS = 2500

SQUARE = """
import time

def f(x):
    time.sleep(0.04)
    return x * x
"""


def test_rolling_upgrade_keeps_every_result_exactly_once(local_cluster, tmp_path):
    c1 = local_cluster.coordinator(name="c1-old")
    wait_for(lambda: local_cluster.leader() is not None, 20, what="a leader")
    c2 = local_cluster.coordinator(name="c2-old")
    agents = {n: local_cluster.agent(n, 2, name=f"{n}-old") for n in ("u1", "u2")}
    local_cluster.wait_ready(c1, ["u1", "u2"])
    (tmp_path / "square.py").write_text(SQUARE)
    job = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "submit", f"{tmp_path / 'square.py'}:f", "--range", "0", str(TASKS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=local_cluster.env,
        cwd=ROOT,
    )

    def version_of(node: str) -> str | None:
        data, _ = local_cluster.kazoo.get(layout.agent_path(local_cluster.name, node))
        return layout.AgentRecord.from_bytes(data).version

    try:
        local_cluster.extra_env["PYTHONPATH"] = f"{ROOT / 'tests' / 'next_release'}:{ROOT}"
        for node, old in agents.items():
            old.signal(signal.SIGTERM)  # drain: held tasks finish, then it deregisters
            assert old.popen.wait(60) == 0, old.text()[-3000:]
            local_cluster.agent(node, 2, name=f"{node}-next")
            wait_for(
                lambda: node in local_cluster.agents() and version_of(node) == NEXT,
                20,
                what=f"{node} back on the new release",
            )
        first_leader = local_cluster.leader()
        c2.signal(signal.SIGTERM)
        assert c2.popen.wait(30) == 0
        local_cluster.coordinator(name="c2-next")
        c1.signal(signal.SIGTERM)
        assert c1.popen.wait(30) == 0
        wait_for(
            lambda: (rec := local_cluster.leader()) is not None and rec.version == NEXT,
            30,
            what="a coordinator of the new release to lead",
        )
        assert local_cluster.leader().epoch > first_leader.epoch
        local_cluster.coordinator(name="c1-next")
        assert job.poll() is None, "the job ended before the upgrade did; it proves nothing"

        try:  # within pytest's own timeout, so a hung job's log is in the report
            out, err = job.communicate(timeout=75)
        except subprocess.TimeoutExpired:
            job.kill()
            raise AssertionError(f"the job did not finish; its log:\n{job.communicate()[1][-3000:]}") from None
        assert job.returncode == 0, err[-3000:]
        results = [json.loads(line) for line in out.splitlines()]
        assert sorted(r["index"] for r in results) == list(range(TASKS))  # each exactly once
        assert all(r["ok"] and r["result"] == r["index"] ** 2 for r in results)
    finally:  # a test that failed must not leave its job running
        if job.poll() is None:
            job.kill()
            job.wait()
    nodes = json.loads(local_cluster.clusterctl("nodes", "--json").stdout)
    assert sorted((n["node_id"], n["version"]) for n in nodes) == [("u1", NEXT), ("u2", NEXT)]
