"""Job records: every job gets a short id, and every host can list the jobs that ran.

A job's owner (``clusterctl submit``, an ``Executor``) creates its record when the job
starts, as a persistent sequential znode (layout.JobRecord: the number ZooKeeper gives
it is the job's id), with an ephemeral ``attached`` child that lives as long as the
owner's session; it writes the record again once, when the job ends. A record still
"running" without ``attached`` belongs to an owner that went away: the job is "lost".
A ``cancel`` child is a request to cancel the job, which its owner watches for.
Nothing is written while a job runs; its live counts come from the leader
(``clusterctl jobs`` asks it).

Who may read and cancel a job is checked where this client acts, and by the holder of a
detached job against the CURVE key of whoever reads its spool from another host; the
ZooKeeper credentials are the cluster's, not a user's, so a client that writes the
``cancel`` znode itself is not stopped by them (docs/jobs.md, "Owners").

ZooKeeper may be slow or gone when a job ends: the final write is best effort, bounded in
time, and never fails the user's job.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError

from cluster.client.session import ClusterUnavailable
from cluster.contract import layout, security
from cluster.contract.layout import JobRecord
from cluster.contract.version import __version__
from cluster.runtime.zk import ask, tidy

log = logging.getLogger("cluster.records")

ENDED = ("done", "failed", "cancelled")  # states a record says once its owner wrote the end
FINAL = (*ENDED, "lost")  # states a job does not leave by itself (a lost detached job resumes)
ATTACHED = "attached"
CANCEL = "cancel"  # a request to cancel the job, which its owner watches for


def owner(keys_dir: str = "") -> str:
    """Who a job belongs to: the name of the client key that submits it (security.py),
    or the OS user on a cluster without keys."""
    if keys_dir:
        return security.key_name(security.client_secret(Path(keys_dir)))
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return f"uid{os.getuid()}"


def check_entitled(job: Listed, keys_dir: str) -> None:
    """NotYours unless this client owns the job or its key is listed as an admin."""
    me = owner(keys_dir)
    if job.record.owner != me and not (keys_dir and me in security.admins(keys_dir)):
        raise NotYours(f"job {job.id} belongs to {job.record.owner}, not {me}")


class NotYours(PermissionError):
    """The job belongs to another owner, and this client's key is not an admin's."""


class JobEntry:
    """The record of a job this process owns."""

    def __init__(self, zk: KazooClient, path: str, record: JobRecord, timeout: float) -> None:
        self._zk, self.path, self.record, self._timeout = zk, path, record, timeout
        self.id = layout.job_id_of(path.rsplit("/", 1)[1])

    def on_cancel(self, cancel: Callable[[], None]) -> None:
        """Call ``cancel`` (once, on ZooKeeper's thread) when someone asks for this job to
        be cancelled (``clusterctl job cancel``, ``cluster.jobs.cancel``)."""
        called = threading.Event()

        def seen(data: bytes | None, stat: object) -> bool | None:
            if stat is None or called.is_set():
                return None
            called.set()
            cancel()
            return False  # stop watching

        self._zk.DataWatch(f"{self.path}/{CANCEL}", seen)

    def finish(self, state: str, *, total: int, done: int, failed: int, error: str = "") -> bool:
        """Write how the job ended (``error``: why it failed as a whole), and let go of
        ``attached``. False when ZooKeeper did not take it (the job then shows "lost")."""
        self.record = dataclasses.replace(
            self.record, state=state, total=total, done=done, failed=failed, ended=time.time(), error=error[:2000]
        )
        written = tidy(self._zk, self._zk.set_async, self.path, self.record.to_bytes(), timeout=self._timeout)
        for child in (ATTACHED, CANCEL):
            tidy(self._zk, self._zk.delete_async, f"{self.path}/{child}", timeout=self._timeout)
        if not written:
            log.warning("job %d: could not record its end in ZooKeeper", self.id)
        return written


def open_job(
    zk: KazooClient,
    cluster: str,
    function: str,
    total: int,
    timeout: float = 10.0,
    *,
    spool: str = "",
    keys_dir: str = "",
) -> JobEntry:
    """Create the record of a new job owned by this process (for a detached job with its
    ``spool``, owned by the holder that ``adopt``s it); raises ClusterUnavailable when
    ZooKeeper does not take it."""
    record = JobRecord(
        owner=owner(keys_dir),
        host=socket.gethostname(),
        pid=os.getpid(),
        function=function[:500],
        state="running",
        total=total,
        started=time.time(),
        version=__version__,
        spool=spool,
    )
    folder = layout.jobs_path(cluster)
    try:
        try:
            ask(zk.create_async, folder, makepath=True, timeout=timeout)
        except NodeExistsError:
            pass
        path = ask(zk.create_async, f"{folder}/{layout.JOB_PREFIX}", record.to_bytes(), sequence=True, timeout=timeout)
        if not spool:
            ask(zk.create_async, f"{path}/{ATTACHED}", ephemeral=True, timeout=timeout)
    except (KazooException, KazooTimeoutError) as exc:
        raise ClusterUnavailable(f"cannot record the job in ZooKeeper: {str(exc) or type(exc).__name__}") from None
    return JobEntry(zk, path, record, timeout)


def adopt(
    zk: KazooClient, cluster: str, job_id: int, timeout: float = 10.0, *, endpoint: str = "", curve_key: str = ""
) -> JobEntry | None:
    """Become the owner of a detached job: its ``attached`` node is this session's, and
    its record names this process (and where it serves the spool). None when another
    process holds it already."""
    path = f"{layout.jobs_path(cluster)}/{layout.job_node(job_id)}"
    try:
        data, _ = ask(zk.get_async, path, timeout=timeout)
        record = dataclasses.replace(
            JobRecord.from_bytes(data),
            host=socket.gethostname(),
            pid=os.getpid(),
            endpoint=endpoint,
            curve_key=curve_key,
        )
        ask(zk.create_async, f"{path}/{ATTACHED}", ephemeral=True, timeout=timeout)
    except NodeExistsError:
        return None
    except (KazooException, KazooTimeoutError, layout.BadRecord) as exc:
        raise ClusterUnavailable(f"cannot take job {job_id} over: {str(exc) or type(exc).__name__}") from None
    tidy(zk, zk.set_async, path, record.to_bytes(), timeout=timeout)
    return JobEntry(zk, path, record, timeout)


@dataclasses.dataclass(frozen=True)
class Listed:
    id: int
    record: JobRecord
    attached: bool

    @property
    def state(self) -> str:
        return "lost" if self.record.state == "running" and not self.attached else self.record.state

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        """What ``clusterctl jobs --json`` and ``cluster.jobs`` show of it."""
        end = self.record.ended or (time.time() if now is None else now)
        elapsed = round(max(0.0, end - self.record.started), 1)
        return {"id": self.id, **dataclasses.asdict(self.record), "state": self.state, "elapsed": elapsed}


def list_jobs(zk: KazooClient, cluster: str, timeout: float = 10.0) -> tuple[list[Listed], int]:
    """Every job's record, oldest first, and how many znodes were not readable records
    (garbage, another version's, removed while read): those are skipped."""
    folder = layout.jobs_path(cluster)
    try:
        names = ask(zk.get_children_async, folder, timeout=timeout)
    except NoNodeError:
        return [], 0
    ids = {}
    for name in names:
        try:
            ids[name] = layout.job_id_of(name)
        except ValueError:
            continue  # not a job's znode
    reads = {name: (zk.get_async(f"{folder}/{name}"), zk.exists_async(f"{folder}/{name}/{ATTACHED}")) for name in ids}
    listed, skipped = [], len(names) - len(ids)
    for name, (data_request, attached_request) in reads.items():
        try:
            data, _ = data_request.get(timeout=timeout)
            attached = attached_request.get(timeout=timeout) is not None
            listed.append(Listed(ids[name], JobRecord.from_bytes(data), attached))
        except (KazooException, KazooTimeoutError, layout.BadRecord) as exc:
            log.debug("job znode %s skipped: %s", name, exc)
            skipped += 1
    listed.sort(key=lambda job: job.id)
    return listed, skipped


def find(zk: KazooClient, cluster: str, job_id: int, timeout: float = 10.0) -> Listed | None:
    """One job's record; None when there is no such job. BadRecord for one not readable."""
    path = f"{layout.jobs_path(cluster)}/{layout.job_node(job_id)}"
    try:
        data, _ = ask(zk.get_async, path, timeout=timeout)
    except NoNodeError:
        return None
    attached = ask(zk.exists_async, f"{path}/{ATTACHED}", timeout=timeout) is not None
    return Listed(job_id, JobRecord.from_bytes(data), attached)


def request_cancel(zk: KazooClient, cluster: str, job: Listed, timeout: float = 10.0, keys_dir: str = "") -> None:
    """Ask a running job's owner to cancel it. A lost job has no owner to ask: its
    record is marked cancelled here (the leader drops its tasks once it has not heard
    from its client for its client timeout)."""
    path = f"{layout.jobs_path(cluster)}/{layout.job_node(job.id)}"
    if job.state == "lost":
        ended = dataclasses.replace(job.record, state="cancelled", ended=time.time())
        ask(zk.set_async, path, ended.to_bytes(), timeout=timeout)
        return
    try:
        ask(zk.create_async, f"{path}/{CANCEL}", owner(keys_dir).encode(), timeout=timeout)
    except NodeExistsError:
        pass  # asked already


def remove(zk: KazooClient, cluster: str, job_id: int, timeout: float = 10.0) -> bool:
    """Delete a job's record; False when there was none. NotEmptyError while its owner
    is attached: a running job's record goes when it has ended."""
    try:
        ask(zk.delete_async, f"{layout.jobs_path(cluster)}/{layout.job_node(job_id)}", timeout=timeout)
    except NoNodeError:
        return False
    return True


def expired(jobs: list[Listed], keep: float, now: float) -> Iterator[Listed]:
    """Finished jobs that ended more than ``keep`` seconds ago."""
    for job in jobs:
        if job.state in ENDED and job.record.ended and now - job.record.ended > keep:
            yield job
