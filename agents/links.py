"""The agent's side of its worker processes: their state machine (pool.py), the template
they are forked from (spawner.py), and the channels to them.

Each worker starts with its end of a fresh channel (channel.py) and its running marker
(marker.py); the agent reads and writes its own end without blocking, on the agent's
poller, which waits for room to write exactly while a channel has bytes its worker has
not taken yet. A slot's link is the channel of its current process: once a slot's
worker is replaced, nothing its previous process still says counts.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq

from cluster.contract import wire

from .channel import Channel, Closed, pair
from .local_queue import JobInfo, QueuedTask, worker_messages
from .marker import Marker
from .pool import Slot, WorkerPool
from .session import Doomed
from .spawner import ForkedWorker, Template

log = logging.getLogger("agents.agent")


class WorkerLinks:
    def __init__(
        self,
        poller: zmq.Poller,
        markers: list[Marker],
        *,
        workdir: str,
        node_id: str,
        max_frame: int,
        backoff_max: float,
        counters: collections.Counter[str],
    ) -> None:
        self.poller = poller
        self.markers = markers
        self.max_frame = max_frame
        self.counters = counters  # the agent's: worker_messages is counted there
        self.channels: dict[int, Channel] = {}  # fd -> a worker's channel
        self.by_slot: dict[int, Channel] = {}  # slot index -> the channel of its current process
        self.template = Template(workdir, node_id)
        self.template_fd = -1
        self.pool = WorkerPool(len(markers), self.spawn, backoff_max=backoff_max, markers=markers)
        self._seq = itertools.count(1)  # a task's number on its worker, which its running marker shows

    def spawn(self, index: int) -> ForkedWorker:
        """Start slot ``index``'s worker, forked clean from the template (the pool calls this)."""
        old = self.by_slot.pop(index, None)
        if old is not None and old.fileno() in self.channels:
            self.close(old.fileno())
        ours, theirs = pair()
        try:
            proc = self.template.spawn(index, (theirs.fileno(), self.markers[index].fd))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._watch_template()
        ch = Channel(ours, index, max_frame=self.max_frame)
        self.channels[ch.fileno()] = self.by_slot[index] = ch
        self.poller.register(ch.fileno(), zmq.POLLIN)
        return proc

    def template_reports(self) -> None:
        """The template said something: workers' exits (the pool reaps them), or it is gone."""
        self.template.read()
        self._watch_template()

    def _watch_template(self) -> None:
        """Poll the descriptor of the template running now (a new one after a restart)."""
        fd = self.template.fileno()
        if fd != self.template_fd:
            if self.template_fd >= 0:
                self.poller.unregister(self.template_fd)
            if fd >= 0:
                self.poller.register(fd, zmq.POLLIN)
            self.template_fd = fd

    def close(self, fd: int) -> None:
        ch = self.channels.pop(fd)
        if self.by_slot.get(ch.slot) is ch:
            del self.by_slot[ch.slot]
        self.poller.unregister(fd)
        ch.close()

    def close_all(self) -> None:
        for fd in list(self.channels):
            self.close(fd)
        if self.template_fd >= 0:
            self.poller.unregister(self.template_fd)
            self.template_fd = -1
        self.template.stop()

    # ------------------------------------------------------------------ reading

    def read(self, fd: int, handle: Callable[[Slot, wire.Message], None], bad: Callable[[bytes, str], None]) -> bool:
        """Hand what the worker on ``fd`` said to ``handle``, undecodable messages to
        ``bad``. True when the worker is gone or was killed: reap it now."""
        ch = self.channels[fd]
        slot = self.pool.slots[ch.slot]
        gone = False
        try:
            messages = ch.receive()
        except Closed:
            messages, gone = [], True
        for frames in messages:
            try:
                msg = wire.decode(frames)
            except wire.ProtocolError as exc:
                bad(b"worker %d" % ch.slot, str(exc))
                continue
            handle(slot, msg)
        if ch.reader.corrupt is not None and slot.proc is not None and slot.proc.poll() is None:
            # The stream cannot be resynchronised. Killing the process without marking it
            # killed by us charges its death to the task it was running, as any crash is.
            log.warning("worker %d wrote a corrupt message (%s); killing it", ch.slot, ch.reader.corrupt)
            slot.proc.kill()
            ch.closed = gone = True
        if ch.closed:
            self.close(fd)
        return gone

    # ------------------------------------------------------------------ writing

    def run(self, slot: Slot, tasks: list[QueuedTask], jobs: Mapping[str, JobInfo], now: float) -> Sequence[QueuedTask]:
        """Send a worker its tasks: one RunTasks per run of tasks of one job (see
        worker_messages), with the job's function unless the worker has it cached.
        Returns the tasks that could not go (the worker is gone) for another worker."""
        messages = list(worker_messages(tasks))
        for n, (job_id, group) in enumerate(messages):
            job = jobs[job_id]
            seqs = [next(self._seq) for _ in group]
            fn = b"" if job.digest in slot.digests else job.function
            msg = wire.RunTasks(
                job_id,
                job.digest,
                job.options,
                [[t.index, t.attempt, seq] for t, seq in zip(group, seqs)],
                frames=(fn, *(t.args for t in group)),
            )
            if not self.send(slot, msg):
                return [t for _, rest in messages[n:] for t in rest]
            slot.domain = job.domain
            slot.digests.add(job.digest)
            self.counters["worker_messages"] += 1
            for seq, task in zip(seqs, group):
                self.pool.assign(slot, seq, task, now)
        return ()

    def withdraw(self, slot: Slot, seqs: list[int]) -> list[Any]:
        """Take back tasks a worker holds and has not started: it is told to skip them."""
        if not seqs:
            return []
        self.send(slot, wire.SkipTasks(seqs))
        tasks = [slot.tasks[seq] for seq in seqs]
        for seq in seqs:
            self.pool.forget(slot, seq)
        return tasks

    def cancel(self, doomed: Doomed, *, stop: bool = True) -> None:
        """Take back the cancelled tasks workers hold: one not started is withdrawn; one
        running loses its worker now with ``stop`` (the others that worker held run again
        on another), else it runs on to its end."""
        for slot in self.pool.busy():
            running = self.pool.running_seq(slot)
            doomed_seqs = [seq for seq, task in slot.tasks.items() if doomed(task.job_id, task.index)]
            if not stop and running in doomed_seqs and not slot.killed:
                doomed_seqs.remove(running)  # its result reaches the leader, which drops it
                self.withdraw(slot, doomed_seqs)
            elif running in doomed_seqs or slot.killed:
                for seq in doomed_seqs:
                    self.pool.forget(slot, seq)
                self.pool.kill(slot)
            else:
                self.withdraw(slot, doomed_seqs)  # should one still start, its result is ignored

    def send(self, slot: Slot, msg: wire.Message) -> bool:
        """False when the slot's worker is gone."""
        ch = self.by_slot.get(slot.index)
        if ch is None or not ch.send(msg.encode()):
            return False
        self._poll_for_room(ch)
        return True

    def writable(self, ch: Channel) -> None:
        """The poller found room in ``ch``: write what waits."""
        ch.flush()
        self._poll_for_room(ch)

    def _poll_for_room(self, ch: Channel) -> None:
        if bool(ch.pending) != ch.polled_for_room:
            ch.polled_for_room = bool(ch.pending)
            self.poller.register(ch.fileno(), zmq.POLLIN | zmq.POLLOUT if ch.pending else zmq.POLLIN)
