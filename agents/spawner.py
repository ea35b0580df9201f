"""The agent's side of its template (agents/template.py): starting it, asking it for
workers, and following their exits.

A worker the template forked is not the agent's child: the template reaps it and reports
its exit (``WorkerExited``), which ``ForkedWorker.poll`` then returns, as
``subprocess.Popen.poll`` would. If the template dies, its workers die with it (their
parent-death signal, SIGKILL); the next spawn starts a new template.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time

from cluster.contract import wire

log = logging.getLogger("agents.agent")

ANSWER_TIMEOUT = 10.0  # seconds for the template to answer a spawn (its imports, the first time)
MAX_DATAGRAM = 4096


class ForkedWorker:
    """A worker process forked by the template, as the pool sees a process (pool.Process).
    Signals go to its process group: whatever the job started goes with it."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:  # gone already, or a kernel without pidfds: wait() polls instead
            self._pidfd = -1

    def poll(self) -> int | None:
        return self.returncode

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.returncode is not None:
            return  # its pid and group may be another's by now
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        """Until the process has exited (its code, once the template reported it, else 0).
        ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None and not self._exited(0.05):
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
        return self.returncode if self.returncode is not None else 0

    def _exited(self, seconds: float) -> bool:
        if self._pidfd >= 0:
            return bool(select.select([self._pidfd], [], [], seconds)[0])
        time.sleep(seconds)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        return False

    def exited(self, code: int) -> None:
        self.returncode = code
        self.close()

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


class Template:
    def __init__(self, workdir: str, node_id: str):
        self.workdir = workdir  # the template's (and an unbound worker's) working directory
        # Inherited by every worker: a task can tell which node runs it.
        self.env = dict(os.environ, CLUSTERD_NODE_ID=node_id)
        self.proc: subprocess.Popen[bytes] | None = None
        self.control: socket.socket | None = None
        self.workers: dict[int, ForkedWorker] = {}

    def fileno(self) -> int:
        """The descriptor to poll for the template's reports (-1 while none runs)."""
        return self.control.fileno() if self.control is not None else -1

    def spawn(self, slot: int, fds: tuple[int, int]) -> ForkedWorker:
        """A fresh worker for ``slot`` with these descriptors (its channel end, its marker).
        OSError when no template answers: the pool backs off and tries again."""
        control = self.control or self._start()
        try:
            socket.send_fds(control, [wire.SpawnWorker(slot).encode()[0]], list(fds))
            deadline = time.monotonic() + ANSWER_TIMEOUT
            while True:
                for msg in self._receive(max(0.0, deadline - time.monotonic())):
                    if isinstance(msg, wire.WorkerSpawned) and msg.slot == slot:
                        worker = self.workers[msg.pid] = ForkedWorker(msg.pid)
                        return worker
                if time.monotonic() >= deadline:
                    raise OSError(f"the template did not fork a worker within {ANSWER_TIMEOUT:g} s")
        except OSError:
            self.stop()  # a template that fails us is replaced at the next spawn
            raise

    def read(self) -> bool:
        """Take the reports waiting; False when the template is gone (its workers with it)."""
        try:
            self._receive(0.0)
        except OSError:
            self.stop()
            return False
        return self.control is not None

    def _receive(self, timeout: float) -> list[wire.Message]:
        """What the template said within ``timeout`` seconds; exits are noted on their workers."""
        assert self.control is not None
        out = []
        while select.select([self.control], [], [], timeout)[0]:
            timeout = 0.0
            data = self.control.recv(MAX_DATAGRAM)
            if not data:
                raise ConnectionError("the template exited")
            try:
                msg = wire.decode([data])
            except wire.ProtocolError as exc:
                log.warning("dropping a malformed message from the template: %s", exc)
                continue
            if isinstance(msg, wire.WorkerExited) and msg.pid in self.workers:
                self.workers.pop(msg.pid).exited(msg.code)
            out.append(msg)
        return out

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv = [sys.executable, "-P", "-m", "agents.template", f"fd:{theirs.fileno()}", str(os.getpid())]
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), cwd=self.workdir, env=self.env
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.control = ours
        log.info("worker template started (pid %d)", self.proc.pid)
        return ours

    def stop(self) -> None:
        """Stop the template; the workers it forked die with it (SIGKILL)."""
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None
        for worker in self.workers.values():
            worker.exited(-signal.SIGKILL)
        self.workers.clear()
