"""The agent's template: a process that has imported the workers' runtime and nothing of
any user's, from which every worker is forked (as multiprocessing's forkserver does).

A worker serves one job and is thrown away with it, so a job never runs in a process
another job has touched (agents/worker.py, ``bind``). Forking from here makes that cheap:
a fresh worker costs a fork of a warm process, not an interpreter start and its imports.

Started by the agent as ``python -P -m agents.template fd:CONTROL AGENT_PID`` (``-P``:
nothing from the agent's working directory is importable). CONTROL is a SOCK_SEQPACKET
socket: each datagram is one wire message. The agent sends ``SpawnWorker`` with the
worker's descriptors; the template forks, puts the child in a process group of its own
(so a job's processes are killed together), and answers ``WorkerSpawned``. It reaps every
child, and the orphans a job's processes leave (it is their subreaper), and reports each
worker's exit in ``WorkerExited``. It dies with the agent; its workers die with it.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import traceback

from cluster.contract import wire
from cluster.runtime import lifeline

from . import worker
from .marker import Marker
from .worker import PairLink

MAX_DATAGRAM = 4096
FDS_PER_WORKER = 2  # its end of its channel, and its slot's running marker


def main(argv: list[str]) -> int:
    control = socket.socket(fileno=int(argv[0][3:]))
    agent_pid = int(argv[1])
    lifeline.die_with(agent_pid, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the agent's to handle
    lifeline.adopt_orphans()
    lifeline.name_process("clusterd-tmpl")
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the poll below
    poller = select.poll()
    poller.register(control, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    workers: set[int] = set()
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                _drain(wake_r)
                continue
            try:
                data, fds, _, _ = socket.recv_fds(control, MAX_DATAGRAM, FDS_PER_WORKER)
            except ConnectionResetError:
                data, fds = b"", []
            if not data:
                return 0  # the agent is gone; our workers go with us
            try:
                pid = _spawn(wire.decode([data]), fds, control, (wake_r, wake_w))
            finally:
                for received in fds:
                    os.close(received)
            if pid is not None:
                workers.add(pid)
        for pid, code in _reap():
            if pid in workers:
                workers.discard(pid)
                control.send(wire.WorkerExited(pid, code).encode()[0])


def _spawn(msg: wire.Message, fds: list[int], control: socket.socket, pipe: tuple[int, int]) -> int | None:
    """Fork a worker; its pid, or None for a message that is not a request to."""
    if not isinstance(msg, wire.SpawnWorker) or len(fds) != FDS_PER_WORKER:
        return None  # only our agent writes here: not worth an answer
    sys.stdout.flush()  # or the child would write what we buffered again
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        control.send(wire.WorkerSpawned(msg.slot, pid).encode()[0])
        return pid
    code = 70  # EX_SOFTWARE: the worker failed to start
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        control.close()
        for fd in pipe:
            os.close(fd)
        os.setpgid(0, 0)
        lifeline.name_process("clusterd-worker")
        sys.argv = sys.argv[:1]  # the template's arguments are no task's business
        link_fd, marker_fd = fds  # the worker owns them now
        code = worker.serve(PairLink(link_fd), Marker(marker_fd, keep_fd=False), msg.slot, os.getppid())
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap() -> list[tuple[int, int]]:
    """Every child that exited: (pid, its code as subprocess gives it)."""
    out: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return out
        if pid == 0:
            return out
        out.append((pid, os.waitstatus_to_exitcode(status)))


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
