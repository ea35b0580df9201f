"""A real worker process spoken to directly over its ipc socket, as its agent would:
batches, skips, the running marker, and the one-task messages of a 0.1.0 agent."""

from __future__ import annotations

import os
import subprocess

import pytest
import zmq

from agents.marker import IDLE, Marker
from cluster import payload, wire
from helpers import PY, ROOT, wait_for

def _recv(sock: zmq.Socket) -> wire.Message:
    assert sock.poll(10_000), "the worker did not answer within 10 s"
    _, *frames = sock.recv_multipart()
    return wire.decode(frames)


@pytest.fixture
def worker(tmp_path):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    endpoint = f"ipc://{tmp_path}/w"
    sock.bind(endpoint)
    marker_path = str(tmp_path / "marker")
    marker = Marker(marker_path, create=True)
    proc = subprocess.Popen([PY, "-m", "agents.worker", endpoint, "0", str(os.getpid()), marker_path], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    ready = _recv(sock)
    assert isinstance(ready, wire.WorkerReady) and ready.pid == proc.pid
    identity = f"0:{proc.pid}".encode()
    try:
        yield sock, identity, marker
    finally:
        proc.kill()
        proc.wait()
        marker.close()
        sock.close(0)
        ctx.term()


def _send(sock, identity, msg: wire.Message) -> None:
    sock.send_multipart([identity, *msg.encode()])


def test_a_batch_runs_in_order_and_comes_back_in_one_message(worker):
    sock, identity, marker = worker
    args = [payload.pack_args((i,)) for i in range(5)]
    _send(sock, identity, wire.RunTasks("j", "d1", {}, [[i, 1, 100 + i] for i in range(5)],
                                        frames=(payload.pack_callable(lambda x: x * 10), *args)))
    done = _recv(sock)
    assert isinstance(done, wire.TasksDone)
    assert done.items == [["j", i, 1, wire.OK] for i in range(5)]
    assert [payload.load_result(b, payload.RESULT_PICKLE) for b in done.frames] == [0, 10, 20, 30, 40]
    assert marker.get() == IDLE  # 0 between tasks: a death now is nobody's fault


def test_the_marker_names_the_running_task_and_skipped_tasks_never_run(worker, tmp_path):
    sock, identity, marker = worker
    gate = tmp_path / "gate"

    def wait_for_gate(i, gate=str(gate)):
        import os
        import time
        while i == 0 and not os.path.exists(gate):
            time.sleep(0.01)
        return i

    args = [payload.pack_args((i,)) for i in range(3)]
    _send(sock, identity, wire.RunTasks("j", "d2", {}, [[i, 1, 7 + i] for i in range(3)],
                                        frames=(payload.pack_callable(wait_for_gate), *args)))
    wait_for(lambda: marker.get() == 7, 10, what="the worker to mark task 0 (seq 7) as running")
    _send(sock, identity, wire.SkipTasks([8]))  # task 1 moves elsewhere before it starts
    gate.write_text("go")
    items = []
    while len(items) < 2:
        items += _recv(sock).items
    assert [row[1] for row in items] == [0, 2]


def test_a_one_task_message_of_a_0_1_0_agent_gets_a_one_task_answer(worker):
    sock, identity, _ = worker
    _send(sock, identity, wire.RunTask("j", 3, 2, "d3", {}, frames=(payload.pack_callable(lambda x: -x), payload.pack_args((4,)))))
    done = _recv(sock)
    assert isinstance(done, wire.TaskDone) and (done.job_id, done.index, done.attempt, done.status) == ("j", 3, 2,
                                                                                                         wire.OK)
    assert payload.load_result(done.frames[0], payload.RESULT_PICKLE) == -4


def test_a_function_it_does_not_have_is_asked_for_again(worker):
    sock, identity, _ = worker
    _send(sock, identity, wire.RunTasks("j", "never-sent", {}, [[0, 1, 1]], frames=(b"", payload.pack_args((1,)))))
    assert _recv(sock).items == [["j", 0, 1, wire.NEED_FUNCTION]]
