"""`clusterctl up` end to end, and daemons facing an unreachable ZooKeeper."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import tempfile
import time

import psutil
from helpers import PY, ROOT, LineReader, agent_record, wait_for

from cluster.cli.localstack import PREFIX
from cluster.runtime.scratch import OWNER, clear_stale


def test_up_runs_a_command_against_its_cluster_and_cleans_up(tmp_path):
    script = tmp_path / "job.sh"
    script.write_text(
        f"{PY} -m cluster.cli.main nodes --json && "
        f"{PY} -m cluster.cli.main submit math:factorial --range 0 30 --ordered\n"
    )
    res = subprocess.run(
        [PY, "-m", "cluster.cli.main", "up", "--workers", "2", "--run", f"bash {script}"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    nodes = json.loads(lines[0])
    assert len(nodes) == 1 and nodes[0]["workers"] == 2
    results = [json.loads(line) for line in lines[1:]]
    import math

    assert [r["result"] for r in results] == [math.factorial(i) for i in range(30)]
    assert "WITHOUT CURVE keys" in res.stderr and "CLUSTER_ZK=127.0.0.1:" in res.stderr


def test_up_stops_everything_on_sigterm():
    proc = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "up", "--workers", "1"],
        cwd=ROOT,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    lines = LineReader(proc.stderr)
    try:
        while "is up" not in lines.next(60):
            pass
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 4  # ZooKeeper, coordinator, agent, worker
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        wait_for(
            lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family),
            20,
            what="every process of `up` to exit",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _owner(workdir: str) -> int | None:
    try:
        with open(os.path.join(workdir, OWNER)) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _alive(family: list[psutil.Process]) -> list[str]:
    alive = []
    for p in family:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(" ".join(p.cmdline()[:4]))
        except psutil.Error:  # gone
            pass
    return alive


def test_up_killed_with_sigkill_leaves_nothing_behind():
    proc = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "up", "--workers", "1"],
        cwd=ROOT,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    lines = LineReader(proc.stderr)
    family: list[psutil.Process] = []
    try:
        while "is up" not in lines.next(60):
            pass
        family = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in family)
        assert "QuorumPeerMain" in names and "coordinator" in names and "agents" in names
        proc.kill()  # no chance to clean up: the kernel tells its children
        proc.wait(10)
        try:
            wait_for(
                lambda: not _alive(family), 45, what="ZooKeeper, the coordinator, the agent and its worker to exit"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; still running: {_alive(family)}") from None
        # Its work dir (ZooKeeper's data and logs) had to stay; the next local cluster clears it.
        left = [d for d in glob.glob(os.path.join(tempfile.gettempdir(), "clusterd-up-*")) if _owner(d) == proc.pid]
        assert len(left) == 1
        assert left[0] in clear_stale(PREFIX) and not os.path.exists(left[0])
    finally:
        for p in [psutil.Process(proc.pid), *family] if proc.poll() is None else family:
            try:
                p.kill()  # only what this test started, by pid
            except psutil.Error:
                pass


def test_daemons_and_commands_report_an_unreachable_zookeeper(free_port):
    env = dict(os.environ, PYTHONPATH=str(ROOT), CLUSTER_ZK=f"127.0.0.1:{free_port}", CLUSTER_INSECURE="1")
    commands = {
        "agent": [PY, "-m", "agents", "--node-id", "x"],
        "coordinator": [PY, "-m", "cluster.cli.main", "coordinator"],
        "nodes": [PY, "-m", "cluster.cli.main", "nodes", "--timeout", "2"],
    }
    started = time.monotonic()
    procs = {
        name: subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, argv in commands.items()
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (name, err)
        assert "cannot reach ZooKeeper" in err and "Traceback" not in err, (name, err)
        if name == "nodes":  # a user command says it in one line; daemons also log their attempts
            assert err.count("\n") == 1 and err.startswith("clusterctl: "), err
    assert time.monotonic() - started < 60


def test_a_command_whose_zookeeper_goes_away_midway_says_so(cluster_name, own_zk):
    # kazoo holds a request made while disconnected until ZooKeeper answers again, which
    # may be never: `drain --wait` in a script used to wait forever.
    from cluster.contract import layout
    from cluster.runtime.zk import close, connect

    server = own_zk
    admin = proc = None
    try:
        admin = connect(server.connect_string)
        record = agent_record("d1")
        admin.create(layout.agent_path(cluster_name, "d1"), record.to_bytes(), ephemeral=True, makepath=True)
        proc = subprocess.Popen(
            [PY, "-m", "cluster.cli.main", "drain", "d1", "--wait", "--timeout", "600"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT), CLUSTER_ZK=server.connect_string, CLUSTER_NAME=cluster_name),
        )
        assert proc.stderr.readline() == "clusterctl: asked d1 to drain\n"
        server.kill()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err
        # The request in flight is lost, or one made while disconnected goes unanswered.
        assert err.startswith(f"clusterctl: lost ZooKeeper at {server.connect_string} midway ("), err
        assert "Traceback" not in err and err.count("\n") == 1, err
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        close(admin)
