"""A simulated fleet: many agents in one process, for scale tests of the real
coordinator and ZooKeeper.

Each simulated agent is what a coordinator sees of a real one (agents/agent.py):
an ephemeral znode with a real ``AgentRecord`` under the cluster's agents folder,
a drain-request watch, and its own bound ROUTER socket whose routing id is its
node id, speaking the real protocol through the real agent's session
(agents/session.py, one ``CoordinatorSession`` each): epoch fencing, Hello ->
Welcome (with what it holds), heartbeats both ways at the leader's interval with
the leader-liveness check, Results batched as the real agent batches them, and
Draining. JobSpec, Dispatch, EndJob and DropTasks feed the simulated workers:
each agent has ``--workers`` slots that finish a task at once or after
``--delay`` seconds, and a task's result is its arguments frame (so a Python
client reads ``(args, kwargs)`` back, and a test can check that each result
belongs to its task). Simulated agents keep a fixed capacity and give nothing
back (the real agent's local queue policy, agents/local_queue.py, is not run).

All agents of a process share ONE ZooKeeper session (ephemeral znodes need not
have a session each); ZooKeeper then sees a handful of sessions instead of N,
which is lighter than a real fleet on the ensemble (session pings), but the
same for the coordinator, which only watches znodes. Killing the process
(SIGKILL) therefore makes all of its agents vanish together when that one
session expires: a rack losing power. When the session is lost while the
process lives on, its agents register again once ZooKeeper is back, as real
agents do.

Control is JSON lines on stdin, answers and events are JSON lines on stdout:

  {"op": "register"}                      register every agent (pipelined creates)
  {"op": "delay", "seconds": 0.02}        how long a simulated task runs
  {"op": "leave", "n": 5, "how": "crash"} crash: the socket closes at once and the
                                          znode goes session_timeout later (as a
                                          kill -9 looks); drain: finish held tasks,
                                          Draining, then deregister (as SIGTERM);
                                          deregister: delete the znodes now
  {"op": "join", "n": 5}                  new agents with fresh node ids
  {"op": "stats", "id": 1}                counters; answered with the same id
  {"op": "expire_session"}                end the shared ZooKeeper session from
                                          outside (every znode goes; the agents
                                          register again on the next session)
  {"op": "stop"}                          close the session and exit

  python -m bench.scale.simfleet --zk 127.0.0.1:2181 --cluster c --prefix sim0- --count 1000
"""

from __future__ import annotations

import argparse
import collections
import functools
import heapq
import itertools
import json
import logging
import os
import random
import select
import socket
import sys
import threading
import time

import psutil
import zmq
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NodeExistsError
from kazoo.protocol.states import EventType, WatchedEvent

from agents.session import CoordinatorSession
from bench.scale.fleet import raise_fd_limit
from cluster.contract import layout, wire
from cluster.contract.layout import AgentRecord
from cluster.contract.version import PROTOCOL_VERSION, __version__
from cluster.runtime import loop
from cluster.runtime.zk import close as zk_close
from cluster.runtime.zk import connect as zk_connect

log = logging.getLogger("bench.scale.simfleet")

TICK = 0.05
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: enum arithmetic costs more than the call


class SimAgent:
    __slots__ = (
        "node_id",
        "sock",
        "fd",
        "endpoint",
        "record",
        "session",
        "jobs",
        "queue",
        "running",
        "alive",
        "registered",
    )

    def __init__(self, node_id: str, sock: zmq.Socket, endpoint: str, session: CoordinatorSession):
        self.node_id = node_id
        self.sock = sock
        self.fd = sock.getsockopt(zmq.FD)
        self.endpoint = endpoint
        self.record: AgentRecord | None = None
        self.session = session  # the leader, fencing, heartbeats and the results not sent yet
        self.jobs: dict[str, dict] = {}
        self.queue: collections.deque[tuple[str, int, int, bytes]] = collections.deque()
        self.running: dict[tuple[str, int, int], bytes] = {}
        self.alive = True
        self.registered = False

    def held(self) -> list[list]:
        """Tasks queued and running (the session adds its held results)."""
        keys = [[j, i, a] for j, i, a, _ in self.queue]
        keys += [list(k) for k in self.running]
        return keys


class Fleet:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.workers = args.workers
        self.capacity = args.workers * (1 + args.prefetch)
        self.delay = args.delay
        self.host = socket.gethostname()
        self.memory = psutil.virtual_memory().total
        self.me = psutil.Process()
        self.ctx = zmq.Context(io_threads=1)
        self.ctx.set(zmq.MAX_SOCKETS, 1_000_000)
        self.epoll = select.epoll()
        self.by_fd: dict[int, SimAgent] = {}
        self.agents: dict[str, SimAgent] = {}
        self.names = (f"{args.prefix}{i:05d}" for i in itertools.count(args.first))
        self.beats: collections.deque[SimAgent] = collections.deque()  # in next_beat order
        self.finishing: list = []  # heap of (due, seq, agent, key)
        self.seq = itertools.count()
        self.later: list = []  # heap of (due, seq, fn): znode deletions after a simulated crash
        self.check: set[SimAgent] = set()  # sockets to drain (a send may swallow the fd's edge)
        self.dirty: set[SimAgent] = set()  # agents with queued tasks or results to send
        self.flush_at: float | None = None  # when the first results held back for a batch must go
        self.counters: collections.Counter = collections.Counter()
        self.waker = loop.Waker()
        self.epoll.register(self.waker.fd, select.EPOLLIN)
        self.stopping = False
        self.zk = None
        self.path = layout.agents_path(args.cluster)
        self.rejoin: list[SimAgent] = []  # registered when the session was lost: register again
        self.handlers = {
            wire.Hello: self._on_hello,
            wire.Heartbeat: self._on_heartbeat,
            wire.JobSpec: self._on_job_spec,
            wire.Dispatch: self._on_dispatch,
            wire.EndJob: self._on_end_job,
            wire.DropTasks: self._on_drop_tasks,
        }

    # ------------------------------------------------------------ lifecycle

    def out(self, **event) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    def start(self) -> None:
        for _ in range(self.args.count):
            self._new_agent()
        self.zk = zk_connect(self.args.zk, timeout=15.0, session_timeout=self.args.session_timeout)
        self.zk.add_listener(lambda state: self.waker.post(("zk", state)))
        self.zk.ensure_path(self.path)
        self.zk.ensure_path(layout.cluster_root(self.args.cluster) + "/drain")
        threading.Thread(target=self._read_stdin, name="control", daemon=True).start()
        self.out(ev="ready", n=len(self.agents), pid=os.getpid())
        if self.args.register:
            self.waker.post(("cmd", {"op": "register"}))

    def _new_agent(self) -> SimAgent:
        node_id = next(self.names)
        sock = self.ctx.socket(zmq.ROUTER)
        loop.configure(sock, hwm=10_000)
        sock.setsockopt(zmq.ROUTING_ID, node_id.encode())
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # As the real agent: an ephemeral port the kernel picks, advertised as others reach it.
        endpoint = loop.advertised(loop.bind(sock, f"tcp://{self.args.bind}:0"), "", self.args.zk)
        session = CoordinatorSession(
            node_id,
            self.workers,
            interval=self.args.heartbeat_interval,
            misses=self.args.heartbeat_misses,
            counters=self.counters,
        )
        agent = SimAgent(node_id, sock, endpoint, session)
        agent.record = AgentRecord(
            node_id=node_id,
            host=self.host,
            endpoint=endpoint,
            workers=self.workers,
            cores=self.workers,
            memory=self.memory,
            version=__version__,
            protocol=PROTOCOL_VERSION,
            pid=os.getpid(),
            started=time.time(),
            labels={"simulated": "1"},
            state="ready",
            relay=self.args.relay,
        )
        self.agents[node_id] = agent
        self.by_fd[agent.fd] = agent
        self.epoll.register(agent.fd, select.EPOLLIN)
        session.next_beat = time.monotonic() + self.args.heartbeat_interval  # ``beats`` stays in due order
        self.beats.append(agent)
        return agent

    def register(self, agents: list[SimAgent]) -> float:
        """Create the znodes pipelined (one round trip for all) and arm each drain watch."""
        started = time.monotonic()
        pending = [
            (a, self.zk.create_async(f"{self.path}/{a.node_id}", a.record.to_bytes(), ephemeral=True)) for a in agents
        ]
        for agent, result in pending:
            try:
                result.get(timeout=60)
            except NodeExistsError:
                self.counters["register_conflicts"] += 1
                continue
            agent.registered = True
        for agent in agents:
            path = layout.drain_path(self.args.cluster, agent.node_id)
            self.zk.exists_async(path, watch=lambda ev, a=agent: self._on_drain_watch(ev, a))
        return time.monotonic() - started

    def _on_drain_watch(self, event: WatchedEvent, agent: SimAgent) -> None:
        # A lost session fires every watch with type NONE: that is no drain request.
        if event.type == EventType.CREATED:
            self.waker.post(("drain_request", agent))

    def run(self) -> int:
        self.start()
        try:
            self._loop()
        finally:
            zk_close(self.zk)  # closing the session removes every ephemeral znode at once
            for agent in list(self.agents.values()):
                agent.sock.close(0)
            self.ctx.term()
        return 0

    def _read_stdin(self) -> None:
        for line in sys.stdin:
            line = line.strip()
            if line:
                try:
                    self.waker.post(("cmd", json.loads(line)))
                except ValueError:
                    self.out(ev="error", error=f"bad command {line[:80]!r}")
        self.waker.post(("cmd", {"op": "stop"}))  # the bench went away

    # ----------------------------------------------------------------- loop

    def _loop(self) -> None:
        next_tick = 0.0
        while not self.stopping:
            now = time.monotonic()
            wake = min(next_tick, self.finishing[0][0]) if self.finishing else next_tick
            if self.flush_at is not None:
                wake = min(wake, self.flush_at)
            timeout = max(0.0, wake - now)
            for fd, _ in self.epoll.poll(timeout):
                if fd == self.waker.fd:
                    for kind, value in self.waker.drain():
                        self._on_event(kind, value)
                else:
                    agent = self.by_fd.get(fd)
                    if agent is not None:
                        self.check.add(agent)
            self._read_all()
            now = time.monotonic()
            self._finish(now)
            if now >= next_tick:
                next_tick = now + TICK
                self._beat(now)
                while self.later and self.later[0][0] <= now:
                    heapq.heappop(self.later)[2]()
            self._flush(time.monotonic())

    def _read_all(self) -> None:
        while self.check:
            agent = self.check.pop()
            if not agent.alive:
                continue
            loop.read_router(agent.sock, functools.partial(self._on_message, agent), self._bad)
            if agent.sock.getsockopt(_EVENTS) & _POLLIN:
                self.check.add(agent)  # more waiting: come back after the others

    def _bad(self, identity: bytes, why: str) -> None:
        self.counters["dropped_messages"] += 1

    def _send(self, agent: SimAgent, msg: wire.Message, identity: bytes) -> bool:
        ok = loop.send(agent.sock, msg, identity)
        self.check.add(agent)  # sending processes the socket's commands and may eat the fd's signal
        return ok

    # ----------------------------------------------------------- protocol

    def _on_message(self, agent: SimAgent, identity: bytes, msg: wire.Message) -> None:
        handler = self.handlers.get(type(msg))
        if handler is None:
            self.counters["dropped_messages"] += 1
            return
        now = time.monotonic()
        act, answer = agent.session.admit(identity, msg, now)
        if answer is not None:
            self._send(agent, answer, identity)
        if act:
            handler(agent, identity, msg, now)

    def _on_hello(self, agent: SimAgent, identity: bytes, msg: wire.Hello, now: float) -> None:
        self._send(agent, agent.session.hello(identity, msg, now, self.capacity, agent.held()), identity)
        self.counters["hellos"] += 1

    def _on_heartbeat(self, agent: SimAgent, identity: bytes, msg: wire.Heartbeat, now: float) -> None:
        self.counters["heartbeats_received"] += 1
        agent.session.on_heartbeat(identity, msg, now)

    def _on_job_spec(self, agent: SimAgent, identity: bytes, msg: wire.JobSpec, now: float) -> None:
        agent.jobs[msg.job_id] = msg.options

    def _on_dispatch(self, agent: SimAgent, identity: bytes, msg: wire.Dispatch, now: float) -> None:
        if msg.job_id not in agent.jobs:
            agent.session.no_function(msg)
        else:
            for (index, attempt), args in zip(msg.tasks, msg.frames):
                agent.queue.append((msg.job_id, index, attempt, args))
            self.counters["tasks_received"] += len(msg.tasks)
            self.counters["dispatch_messages"] += 1
        self._run(agent, now)
        self.dirty.add(agent)

    def _on_end_job(self, agent: SimAgent, identity: bytes, msg: wire.EndJob, now: float) -> None:
        if agent.jobs.pop(msg.job_id, None) is not None:
            self._drop(agent, lambda j, i: j == msg.job_id)

    def _on_drop_tasks(self, agent: SimAgent, identity: bytes, msg: wire.DropTasks, now: float) -> None:
        doomed = set(msg.indices)
        self._drop(agent, lambda j, i: j == msg.job_id and i in doomed)

    def _drop(self, agent: SimAgent, doomed) -> None:
        agent.queue = collections.deque(t for t in agent.queue if not doomed(t[0], t[1]))
        agent.session.drop(doomed)
        for key in [k for k in agent.running if doomed(k[0], k[1])]:
            del agent.running[key]  # its worker is "killed"; the heap entry is skipped
            self.counters["tasks_stopped"] += 1

    def _run(self, agent: SimAgent, now: float) -> None:
        """Start queued tasks on free simulated workers."""
        while agent.queue and len(agent.running) < self.workers:
            job_id, index, attempt, args = agent.queue.popleft()
            key = (job_id, index, attempt)
            if self.delay <= 0:
                agent.session.outbox.append((key, wire.OK, args))
                self.counters["tasks_executed"] += 1
                continue
            agent.running[key] = args
            heapq.heappush(self.finishing, (now + self.delay, next(self.seq), agent, key))

    def _finish(self, now: float) -> None:
        while self.finishing and self.finishing[0][0] <= now:
            _, _, agent, key = heapq.heappop(self.finishing)
            args = agent.running.pop(key, None)
            if args is None or not agent.alive:
                continue
            agent.session.outbox.append((key, wire.OK, args))
            self.counters["tasks_executed"] += 1
            self._run(agent, now)
            self.dirty.add(agent)

    def _flush(self, now: float) -> None:
        """Send the results each agent's session says are due; an agent whose results are
        held (for a batch, or until a coordinator is reachable) is looked at again."""
        dirty, self.dirty = self.dirty, set()
        flush_at = None
        for agent in dirty:
            if not agent.alive:
                continue
            session = agent.session
            if session.results_due(now, len(agent.queue)):
                while (msg := session.results(self.capacity)) is not None:
                    if not self._send(agent, msg, session.leader):
                        break
                    session.sent(msg)
                    self.counters["results_sent"] += len(msg.items)
                    self.counters["results_messages"] += 1
            if session.outbox:
                self.dirty.add(agent)
                if session.flush_at is not None and (flush_at is None or session.flush_at < flush_at):
                    flush_at = session.flush_at
            elif session.draining and not agent.queue and not agent.running:
                self._leave_drained(agent)
        self.flush_at = flush_at

    def _beat(self, now: float) -> None:
        """Heartbeats of the agents due now (``beats`` is in due order: a due time the leader
        pulled in waits at most for its old place, never past its old due time)."""
        while self.beats and self.beats[0].session.next_beat <= now:
            agent = self.beats.popleft()
            if not agent.alive:
                continue
            self.beats.append(agent)
            session = agent.session
            had_leader = session.leader is not None
            beat = session.heartbeat(now, max(0, self.capacity - len(agent.queue) - len(agent.running)))
            if beat is not None:
                self._send(agent, beat, session.leader)
                self.counters["heartbeats_sent"] += 1
            elif had_leader and session.leader is None:
                self.counters["leader_lost"] += 1

    # ---------------------------------------------------------- churn

    def _on_event(self, kind: str, value) -> None:
        if kind == "drain_request":
            if value.alive and not value.session.draining:
                self._start_drain(value)
        elif kind == "cmd":
            self._command(value)
        elif kind == "zk" and value == KazooState.LOST:
            # Every ephemeral znode went with the session; the ZooKeeper client makes a new one.
            self.rejoin += [a for a in self.agents.values() if a.registered]
            for agent in self.rejoin:
                agent.registered = False
            self.counters["sessions_lost"] += 1
        elif kind == "zk" and value == KazooState.CONNECTED and self.rejoin:
            todo, self.rejoin = [a for a in self.rejoin if a.alive], []
            try:
                self.register(todo)
                self.counters["registered_again"] += len(todo)
            except Exception as exc:  # lost again meanwhile: the next LOST lists them again
                self.out(ev="error", error=f"registering again failed: {exc}")

    def _command(self, cmd: dict) -> None:
        op = cmd.get("op")
        if op == "register":
            todo = [a for a in self.agents.values() if a.alive and not a.registered]
            seconds = self.register(todo)
            self.out(ev="registered", n=len(todo), seconds=round(seconds, 3), id=cmd.get("id"))
        elif op == "delay":
            self.delay = float(cmd["seconds"])
            self.out(ev="ok", op=op, id=cmd.get("id"))
        elif op == "join":
            fresh = [self._new_agent() for _ in range(int(cmd.get("n", 1)))]
            self.register(fresh)
            self.counters["joined"] += len(fresh)
            self.out(ev="ok", op=op, n=len(fresh), id=cmd.get("id"))
        elif op == "leave":
            how = cmd.get("how", "crash")
            candidates = [a for a in self.agents.values() if a.alive and not a.session.draining and a.registered]
            chosen = random.sample(candidates, min(int(cmd.get("n", 1)), len(candidates)))
            for agent in chosen:
                {"crash": self._crash, "drain": self._start_drain, "deregister": self._deregister}[how](agent)
            self.out(ev="ok", op=op, n=len(chosen), id=cmd.get("id"))
        elif op == "stats":
            alive = [a for a in self.agents.values() if a.alive]
            self.out(
                ev="stats",
                id=cmd.get("id"),
                alive=len(alive),
                connected=sum(1 for a in alive if a.session.leader),
                held=sum(len(a.held()) for a in alive),
                cpu=round(sum(self.me.cpu_times()[:2]), 3),
                rss=self.me.memory_info().rss,
                **self.counters,
            )
        elif op == "expire_session":
            # A second client on the same session closes it: the server ends the session
            # for both, as it would after a partition longer than the session timeout.
            clone = KazooClient(hosts=self.args.zk, client_id=self.zk.client_id)
            clone.start(timeout=15)
            clone.stop()
            clone.close()
            self.out(ev="ok", op=op, id=cmd.get("id"))
        elif op == "stop":
            self.stopping = True
        else:
            self.out(ev="error", error=f"unknown op {op!r}", id=cmd.get("id"))

    def _detach(self, agent: SimAgent) -> None:
        """Out of the fleet and the poller; the socket is the caller's to close."""
        agent.alive = False
        self.agents.pop(agent.node_id, None)
        self.by_fd.pop(agent.fd, None)
        try:
            self.epoll.unregister(agent.fd)
        except OSError:
            pass

    def _close(self, agent: SimAgent) -> None:
        self._detach(agent)
        agent.sock.close(0)

    def _delete_znode(self, agent: SimAgent) -> None:
        if agent.registered:
            agent.registered = False
            self.zk.delete_async(f"{self.path}/{agent.node_id}")

    def _crash(self, agent: SimAgent) -> None:
        """As a kill -9 looks from outside: the connection drops now, the znode
        when the (simulated) session expires."""
        self._close(agent)
        self.counters["crashed"] += 1
        heapq.heappush(
            self.later,
            (time.monotonic() + self.args.session_timeout, next(self.seq), lambda: self._delete_znode(agent)),
        )

    def _deregister(self, agent: SimAgent) -> None:
        self._delete_znode(agent)
        self._close(agent)
        self.counters["deregistered"] += 1

    def _start_drain(self, agent: SimAgent) -> None:
        """As SIGTERM on a real agent: state draining, tell the leader, finish what is held, leave."""
        agent.record = agent.record.with_state("draining")
        self.zk.set_async(f"{self.path}/{agent.node_id}", agent.record.to_bytes())
        notice = agent.session.drain()
        if notice is not None:
            self._send(agent, notice, agent.session.leader)
        self.dirty.add(agent)

    def _leave_drained(self, agent: SimAgent) -> None:
        self._delete_znode(agent)
        # When there is no drain request, the NoNodeError stays in the async result, unread.
        self.zk.delete_async(layout.drain_path(self.args.cluster, agent.node_id))
        self.counters["drained"] += 1
        # Results just handed to ZeroMQ still have to reach the wire: close a moment later.
        self._detach(agent)
        heapq.heappush(self.later, (time.monotonic() + 1.0, next(self.seq), lambda: agent.sock.close(0)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.scale.simfleet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--zk", default=os.environ.get("CLUSTER_ZK", "127.0.0.1:2181"))
    p.add_argument("--cluster", default=os.environ.get("CLUSTER_NAME", "default"))
    p.add_argument("--prefix", default=f"sim{os.getpid()}-", help="node ids are PREFIX00000, PREFIX00001, ...")
    p.add_argument("--first", type=int, default=0, help="number of the first node id")
    p.add_argument("--count", type=int, default=100, help="agents to start with")
    p.add_argument("--workers", type=int, default=8, help="simulated workers per agent")
    p.add_argument("--prefetch", type=int, default=2, help="tasks queued per worker beyond the one it runs")
    p.add_argument("--delay", type=float, default=0.0, help="seconds a simulated task runs (0: answer at once)")
    p.add_argument("--heartbeat-interval", type=float, default=0.5)
    p.add_argument("--heartbeat-misses", type=int, default=4)
    p.add_argument("--session-timeout", type=float, default=10.0, help="the shared ZooKeeper session's timeout")
    p.add_argument("--bind", default="127.0.0.1", help="address each agent's socket binds (a free port each)")
    p.add_argument("--relay", default="", help="the relay every agent names (clusterctl relay --id)")
    p.add_argument("--register", action="store_true", help="register at once instead of waiting for the command")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    limit = raise_fd_limit()
    need = args.count * 4 + 100  # a listening socket, a connection and ZeroMQ's own descriptors per agent
    if need > limit:
        print(
            f"simfleet: {args.count} agents need about {need} file descriptors; the limit is {limit}", file=sys.stderr
        )
        return 2
    return Fleet(args).run()


if __name__ == "__main__":
    sys.exit(main())
