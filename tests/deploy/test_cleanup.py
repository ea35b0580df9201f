"""The harness leaves nothing on this host (namespaces, links, cgroups, mounts, processes)
when a run is interrupted: Ctrl-C or SIGTERM unwind through its cleanup, and what a
SIGKILLed run left is removed by the next run's sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from container import cannot_boot, wait_until
from leftovers import leftovers, sweep_dead_runs, tag_of
from software import ROOT

HERE = Path(__file__).resolve().parent

pytestmark = [pytest.mark.deploy, pytest.mark.skipif(bool(cannot_boot()), reason=cannot_boot())]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_an_interrupted_run_leaves_nothing_behind(sig, tmp_path):
    child = subprocess.Popen(
        [sys.executable, str(HERE / "one_node.py"), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join((str(ROOT), str(ROOT / "tests")))),  # helpers too
    )
    tag = tag_of(child.pid)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "booted", child.communicate(timeout=30)[0]
        kinds = {item.split()[0] for item in leftovers(tag)}
        assert {"netns", "link", "cgroup", "mount"} <= kinds  # the check sees what is there
        child.send_signal(sig)
        code = child.wait(60)
        if sig == signal.SIGKILL:
            assert tag in sweep_dead_runs()
        else:
            assert code == 0, child.communicate()[0]
        wait_until(lambda: not leftovers(tag), 30, f"nothing of {tag} to be left: {leftovers(tag)}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        sweep_dead_runs()
