"""Reading a detached job's spool from anywhere: straight from the file when this host
can open it (the submitting host, or shared storage given with ``--spool``), else from
its holder over ZeroMQ, a page at a time (``ReadSpool`` / ``SpoolRows``).

The holder serves its spool on the address this host uses to reach ZooKeeper (the
address other hosts of the cluster reach it by), on a port of the kernel's choosing,
and names the endpoint in the job's record. With CURVE keys, the holder is a CURVE
server with the client key pair, and accepts the cluster's client keys only (those in
its keys directory): reading a job takes what submitting one takes.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from cluster.client import records
from cluster.client.spool import Spool, SpoolError
from cluster.contract import security, wire
from cluster.runtime import loop

log = logging.getLogger("cluster.spool_reader")

PAGE = 1000  # rows per answer


Source = Callable[[int], "tuple[Path, str] | str"]  # a job's spool and state now, or why it is not served here
OPEN_SPOOLS = 8  # spool connections a server keeps open


class SpoolServer:
    """Answers ReadSpool on a thread: for the job a holder runs, or for the finished jobs
    of a user's spool service. ``source(job)`` says where the job's spool is and its state
    (read before the rows: a reader that sees the end has every row), or why it is not
    served here. Only the owner's key and those in ``admins`` are answered."""

    def __init__(self, source: Source, zk_hosts: str, keys_dir: str) -> None:
        self.source = source
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.curve_key = ""
        self.owner = records.owner()  # without keys: whoever can reach the port reads (as with no keys anywhere)
        self._auth: _ClientKeys | None = None
        self.keys_dir = keys_dir
        if keys_dir:
            keys = security.load(keys_dir, "client")
            self._auth = _ClientKeys(self.ctx, Path(keys_dir))
            self._auth.start()
            self._auth.configure_curve_callback("spool", credentials_provider=self._auth)
            security.serve(self.sock, keys, "spool")
            self.curve_key = keys.public.decode()
            self.owner = keys.name
        address = loop.route_address(zk_hosts)
        port = self.sock.bind_to_random_port(f"tcp://{address}")
        self.endpoint = f"tcp://{address}:{port}"
        self.last_read = 0.0  # when a reader last asked (time.monotonic)
        self._spools: dict[Path, Spool] = {}  # this thread's own connections, oldest first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="spool-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if self.sock.poll(200):
                    self._read()
        finally:
            for spool in self._spools.values():
                spool.close()

    def _read(self) -> None:
        """One request; the reader's key name is what ZAP made its User-Id."""
        frames = loop.recv_frames(self.sock)
        who = frames[0].bytes
        try:
            msg = wire.decode(frames[1:])
        except wire.ProtocolError as exc:
            log.warning("dropping a malformed request: %s", exc)
            return
        if not isinstance(msg, wire.ReadSpool):
            return
        self.last_read = time.monotonic()
        reader = str(frames[-1].get("User-Id")) if self._auth is not None else self.owner
        try:
            loop.send(self.sock, self._answer(reader, msg), who)
        except SpoolError as exc:
            loop.send(self.sock, wire.SpoolRows(msg.job, [], "", str(exc)), who)

    def _answer(self, reader: str, msg: wire.ReadSpool) -> wire.SpoolRows:
        if reader != self.owner and reader not in security.admins(self.keys_dir):
            raise SpoolError(f"job {msg.job} belongs to {self.owner}, not {reader}")
        found = self.source(msg.job)
        if isinstance(found, str):
            raise SpoolError(found)
        path, state = found
        spool = self._spool(path)
        task = None if msg.task < 0 else msg.task
        rows = page(spool.results(msg.after) if msg.what == "results" else spool.output(msg.after, task))
        return wire.SpoolRows(msg.job, [[r[0], r[1], r[2]] for r in rows], state, frames=tuple(r[3] for r in rows))

    def _spool(self, path: Path) -> Spool:
        spool = self._spools.pop(path, None) or Spool.open(path)
        self._spools[path] = spool  # the most recent last
        if len(self._spools) > OPEN_SPOOLS:
            self._spools.pop(next(iter(self._spools))).close()
        return spool

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close(0)
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()


class _ClientKeys(ThreadAuthenticator):
    """ZAP for the holder: the client keys in its keys directory, and no other role's;
    a reader's User-Id is its key's name, which the holder checks against the job's owner."""

    def __init__(self, ctx: zmq.Context, keys_dir: Path) -> None:
        super().__init__(ctx)
        self.names = security.client_names(keys_dir)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.names

    def curve_user_id(self, client_public_key: bytes) -> str:
        # Called for refused keys too, and with the raw key where ``callback`` gets it in Z85.
        return self.names.get(z85.encode(client_public_key), "")


def page(rows: Iterator[tuple[int, int, Any, bytes]]) -> list[tuple[int, int, Any, bytes]]:
    return list(itertools.islice(rows, PAGE))


class RemoteSpool:
    """The reader's side, for a job whose spool this host cannot open."""

    def __init__(self, job_id: int, endpoint: str, curve_key: str, keys_dir: str, timeout: float = 10.0) -> None:
        self.job_id, self.endpoint, self.timeout = job_id, endpoint, timeout
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve_key:
            if not keys_dir:
                raise ValueError("the job's holder requires CURVE keys: give --keys DIR (env CLUSTER_KEYS)")
            security.connect_to(self.sock, security.load(keys_dir, "client"), curve_key.encode())
        self.sock.connect(endpoint)
        self.state = "running"

    def rows(self, what: str, after: int, task: int | None = None) -> list[tuple[int, int, Any, bytes]]:
        """A page of rows after seq ``after``; ``state`` is the job's as of this answer."""
        loop.send(self.sock, wire.ReadSpool(self.job_id, what, after, -1 if task is None else task))
        if not self.sock.poll(int(self.timeout * 1000)):
            raise SpoolError(f"job {self.job_id}'s holder at {self.endpoint} did not answer within {self.timeout:g} s")
        reply = wire.decode(self.sock.recv_multipart())
        if not isinstance(reply, wire.SpoolRows) or reply.error:
            why = reply.error if isinstance(reply, wire.SpoolRows) else f"it answered {type(reply).__name__}"
            raise SpoolError(f"job {self.job_id}'s holder at {self.endpoint}: {why}")
        self.state = reply.state
        return [(seq, index, kind, bytes(body)) for (seq, index, kind), body in zip(reply.rows, reply.frames)]

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


class JobRows:
    """The rows of a detached job's spool (``what``: "results", as (seq, index, status,
    body), or "output", as (seq, index, stream, data)), read from the file when this host
    can open it, else from the job's holder while it runs, or once it has ended from its
    owner's spool service on its host (``service(host, owner)`` finds it: spool_service.py);
    with ``follow``, until the job has ended.
    ``state``: the job's, as of the last page. ``look(job_id)`` gives the job's record now
    (and may restart a lost job's holder)."""

    def __init__(
        self,
        job: records.Listed,
        look: Callable[[int], records.Listed],
        what: str,
        *,
        task: int | None = None,
        follow: bool = False,
        keys_dir: str = "",
        service: Callable[[str, str], dict | None] = lambda host, owner: None,
    ) -> None:
        self.job, self.look, self.what, self.task, self.follow, self.keys_dir = job, look, what, task, follow, keys_dir
        self.service = service
        self.state = job.state
        records.check_entitled(job, keys_dir)
        if not job.record.spool:
            raise ValueError(f"job {job.id} was not detached: its results went to the terminal that submitted it")

    def __iter__(self) -> Iterator[tuple[int, int, Any, bytes]]:
        source = self._open()
        seen = 0
        try:
            while True:
                if isinstance(source, Spool):
                    self.state = self.look(self.job.id).state  # before the rows: none is missed
                    rows = page(source.results(seen) if self.what == "results" else source.output(seen, self.task))
                else:
                    rows = source.rows(self.what, seen, self.task)
                    self.state = source.state
                yield from rows
                if rows:
                    seen = rows[-1][0]
                if len(rows) == PAGE:
                    continue
                if not self.follow or self.state in records.FINAL:
                    return
                time.sleep(0.2)
        finally:
            source.close()

    def _open(self) -> Spool | RemoteSpool:
        record = self.job.record
        try:
            here = Path(record.spool).is_file()
        except OSError:  # a directory this user cannot search
            here = False
        if here:
            return Spool.open(Path(record.spool))
        if record.endpoint and self.job.state == "running":
            return RemoteSpool(self.job.id, record.endpoint, record.curve_key, self.keys_dir)
        found = self.service(record.host, record.owner) if self.job.state in records.ENDED else None
        if found:
            return RemoteSpool(self.job.id, found["endpoint"], found.get("curve_key", ""), self.keys_dir)
        raise ValueError(
            f"job {self.job.id}'s spool is on host {record.host}, where neither its holder nor its owner's "
            "spool service runs: run `clusterctl jobs` there to start them again "
            "(or submit with --spool on storage every host shares)"
        )
