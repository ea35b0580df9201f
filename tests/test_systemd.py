"""systemd integration without systemd as PID 1: the notify protocol over a real
datagram socket, and the unit files through `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT


def read_notifications(sock: socket.socket, until: str, timeout: float = 30.0) -> list[str]:
    sock.settimeout(timeout)
    seen = []
    while not any(until in msg for msg in seen):
        seen.append(sock.recv(4096).decode())
    return seen


def test_agent_says_ready_only_once_registered_and_pets_the_watchdog(local_cluster, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    env = dict(local_cluster.env, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
    proc = subprocess.Popen([sys.executable, "-m", "agents", "--node-id", "sd1", "--workers", "1", "--bind",
                             "tcp://127.0.0.1:0"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        msgs = read_notifications(sock, "READY=1")
        assert local_cluster.agents() == ["sd1"]  # registered before READY
        assert "STATUS=registered as sd1" in msgs[-1]
        msgs = read_notifications(sock, "WATCHDOG=1", timeout=5)
        msgs += read_notifications(sock, "WATCHDOG=1", timeout=5)
        proc.terminate()
        msgs = read_notifications(sock, "STOPPING=1", timeout=10)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", ["cluster-agent.service", "cluster-coordinator.service"])
def test_units_verify_cleanly(unit, tmp_path):
    # verify insists that ExecStart exists: point it at this interpreter's clusterctl.
    text = (ROOT / "systemd" / unit).read_text()
    clusterctl = Path(sys.executable).with_name("clusterctl")
    if not clusterctl.exists():
        pytest.skip("clusterctl is not installed in this environment")
    copy = tmp_path / unit
    copy.write_text(text.replace("/opt/clusterd/venv/bin/clusterctl", str(clusterctl))
                    .replace("User=clusterd", "User=root").replace("Group=clusterd", "Group=root"))
    res = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    # Unknown keys and typos only warn and still exit 0, so any output is a failure.
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
