"""The agent's template (agents/template.py) and its side of it (agents/spawner.py), with
real processes: workers forked clean, in process groups of their own, their exits reported."""

from __future__ import annotations

import os
import select
import signal

import psutil
import pytest
from helpers import assert_gone, wait_for

from agents.channel import Channel, pair
from agents.marker import Marker
from agents.spawner import Template
from cluster.contract import wire


@pytest.fixture
def template(tmp_path):
    t = Template(str(tmp_path), "node-t")
    yield t
    t.stop()


def _receive(ch: Channel) -> wire.Message:
    assert select.select([ch.fileno()], [], [], 20)[0], "the worker said nothing"
    (frames,) = ch.receive()
    return wire.decode(frames)


def _spawn(template: Template, slot: int):
    ours, theirs = pair()
    marker = Marker.create()
    try:
        proc = template.spawn(slot, (theirs.fileno(), marker.fd))
    finally:
        theirs.close()
    return proc, Channel(ours, slot), marker


def test_a_worker_is_forked_ready_in_its_own_group_and_its_exit_reported(template):
    proc, ch, marker = _spawn(template, 3)
    ready = _receive(ch)
    assert ready == wire.WorkerReady(3, proc.pid)
    worker = psutil.Process(proc.pid)
    assert worker.name() == "clusterd-worker" and worker.ppid() == template.proc.pid
    assert os.getpgid(proc.pid) == proc.pid  # a group of its own: a job's processes go together
    assert worker.environ()["CLUSTERD_NODE_ID"] == "node-t"
    proc.kill()
    wait_for(lambda: template.read() and proc.poll() is not None, what="the exit to be reported")
    assert proc.poll() == -signal.SIGKILL
    ch.close()
    marker.close()


def test_workers_die_with_their_template_and_a_new_one_takes_its_place(template):
    first, ch, marker = _spawn(template, 0)
    _receive(ch)
    old = template.proc.pid
    os.kill(old, signal.SIGKILL)
    assert_gone([old, first.pid])  # the worker dies with it (its parent-death signal)
    wait_for(lambda: not template.read(), what="the template's end to be noticed")
    assert first.poll() == -signal.SIGKILL
    second, ch2, marker2 = _spawn(template, 0)  # a new template, at the next spawn
    assert template.proc.pid != old and _receive(ch2) == wire.WorkerReady(0, second.pid)
    for c, m in ((ch, marker), (ch2, marker2)):
        c.close()
        m.close()
