"""The holder of a detached job: a process of its own, with no terminal, that runs the
job from its spool (spool.py) and records each result there.

``clusterctl submit --detach`` writes the spool and the job's record, starts the holder
(``start``: ``python -m cluster.client.holder SPOOL``) in a session of its own, so that
closing the terminal, logging out or killing the submitting shell's process group leaves
it running, and returns once the holder has taken the job (its ``attached`` node). One
holder per job: a job's failure or a holder's crash touches no other job.

A holder that is killed, or whose host restarts, leaves the job "lost" with its spool on
disk; ``resume`` (run by every ``clusterctl jobs`` and ``job`` command on that host, for
the user's own jobs) starts a holder for it again, which sends only the inputs without a
result. A lock on the spool keeps a second holder of the same job from starting.
SIGTERM stops a holder without ending the job (a host shutting down): the job resumes.
``clusterctl job cancel`` ends it as cancelled.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from cluster.client import records, spool_service
from cluster.client.load_error import LoadError
from cluster.client.session import ClusterClient, JobHandle
from cluster.client.spool import Spool, SpoolError
from cluster.client.spool_reader import SpoolServer
from cluster.contract import config, layout

log = logging.getLogger("cluster.holder")

FLUSH_EVERY = 0.2  # seconds between writes of results to the spool (one transaction each)
FLUSH_ROWS = 512
READERS_GRACE = 2.0  # seconds a holder stays after its job ends while readers elsewhere still ask


def spool_dir(cluster: str) -> Path:
    """Where detached jobs' spools go by default: the user's own state directory."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "clusterd" / layout.check_name(cluster, "cluster name") / "jobs"


def start(spool: Path) -> subprocess.Popen:
    """A holder for the job in ``spool``, detached from this process's session and terminal."""
    log_file = open(spool.with_suffix(".log"), "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "cluster.client.holder", str(spool)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        log_file.close()


def resume(listed: list[records.Listed], cfg: config.Common) -> list[int]:
    """Start holders again for this user's lost detached jobs whose spool is on this host,
    and the spool service when finished ones have theirs here; returns the resumed ids."""
    host, me, resumed, finished = socket.gethostname(), records.owner(cfg.keys), [], False
    for job in listed:
        spool = Path(job.record.spool) if job.record.spool else None
        if not (spool and job.record.host == host and job.record.owner == me and spool.is_file()):
            continue
        if job.state == "lost":
            start(spool)
            resumed.append(job.id)
        finished = finished or job.state in records.ENDED
    if finished:
        spool_service.ensure(spool_dir(cfg.cluster), cfg.zk, cfg.cluster, cfg.keys, cfg.zk_auth)
    return resumed


def forget(job: records.Listed) -> None:
    """Delete a detached job's spool and the files beside it, when this host has them
    (a job whose record is removed: ``job rm``, or past ``--keep``)."""
    if not job.record.spool:
        return
    spool = Path(job.record.spool)
    for path in (spool, *(spool.with_name(spool.name + end) for end in ("-wal", "-shm"))):
        path.unlink(missing_ok=True)
    for end in (".log", ".lock"):
        spool.with_suffix(end).unlink(missing_ok=True)


def hold(spool_path: Path) -> int:
    """Run the job in ``spool_path`` to its end; the exit status says how it went (0: it
    ended, whatever its tasks did; 3: another holder has it; 2: it cannot run)."""
    lock = open(spool_path.with_suffix(".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("another holder runs %s", spool_path)
        return 3
    try:
        spool = Spool.open(spool_path)
    except SpoolError as exc:
        log.error("%s", exc)
        return 2
    meta = spool.meta
    client = ClusterClient(
        meta["zk"], meta["cluster"], connect_timeout=10.0, keys=meta.get("keys", ""), zk_auth=meta.get("zk_auth", "")
    )
    state = ["running"]  # what readers on other hosts are told

    def source(job_id: int) -> tuple[Path, str] | str:
        return (spool_path, state[0]) if job_id == meta["job"] else f"this holder holds job {meta['job']}"

    server = SpoolServer(source, meta["zk"], meta.get("keys", ""))
    try:
        entry = records.adopt(
            client.zk, meta["cluster"], meta["job"], endpoint=server.endpoint, curve_key=server.curve_key
        )
        if entry is None:
            log.info("job %d is held elsewhere", meta["job"])
            return 3
        code = _run(client, spool, entry, meta)
        state[0] = entry.record.state
        # A reader on another host that followed the job gets its last rows and its end.
        while time.monotonic() - server.last_read < READERS_GRACE:
            time.sleep(0.1)
        return code
    finally:
        server.close()
        client.close()
        spool.close()


def _run(client: ClusterClient, spool: Spool, entry: records.JobEntry, meta: dict) -> int:
    results: queue.SimpleQueue = queue.SimpleQueue()
    cancelled, stopping = threading.Event(), threading.Event()
    entry.on_cancel(cancelled.set)
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    options = dict(meta["options"], record=entry.id)
    job = client.open_job(
        spool.function,
        options,
        lambda i, s, b: results.put((i, s, b)),
        bundles=spool.bundles(),
        on_output=lambda i, stream, data: results.put((i, stream, data)),
        on_failed=lambda _, error: results.put((-1, error, b"")),
    )
    total = spool.count
    done, failed = spool.counts()
    log.info("job %d: %d of %d tasks to run", entry.id, total - done, total)
    feeder = threading.Thread(target=_feed, args=(job, spool.pending(), stopping, cancelled), daemon=True)
    feeder.start()
    rows: list[tuple[int, int, bytes]] = []
    written: list[tuple[int, str, bytes]] = []  # tasks' output: it came before their results
    flushed = time.monotonic()
    error: LoadError | None = None  # no node can load the function: the job is over
    while done < total and not cancelled.is_set() and not stopping.is_set() and error is None:
        try:
            index, kind, body = results.get(timeout=FLUSH_EVERY)
            if isinstance(kind, LoadError):
                error = kind
            elif isinstance(kind, str):
                written.append((index, kind, bytes(body)))
            else:
                rows.append((index, kind, bytes(body)))
        except queue.Empty:
            pass
        if (rows or written) and (len(rows) >= FLUSH_ROWS or time.monotonic() - flushed >= FLUSH_EVERY):
            spool.record_output(written)
            new, new_failed = spool.record(rows)
            done, failed = done + new, failed + new_failed
            rows.clear()
            written.clear()
            flushed = time.monotonic()
    spool.record_output(written)
    if rows:
        spool.record(rows)
    done, failed = spool.counts()
    job.close()
    if stopping.is_set() and not cancelled.is_set() and error is None:
        log.info("job %d: stopped with %d of %d done; it resumes from its spool", entry.id, done, total)
        return 0  # the record stays "running"; without this process it shows lost, and resumes
    state = "cancelled" if cancelled.is_set() else ("failed" if failed or error else "done")
    why = f"cannot start: {error}" if error else ""
    if entry.finish(state, total=total, done=done, failed=failed, error=why):
        # Readers on other hosts find the finished spool there once this process is gone.
        spool_service.ensure(
            spool_dir(meta["cluster"]), meta["zk"], meta["cluster"], meta.get("keys", ""), meta.get("zk_auth", "")
        )
    log.info("job %d %s: %d of %d done, %d failed %s", entry.id, state, done, total, failed, why)
    return 0


def _feed(
    job: JobHandle, pending: Iterator[tuple[int, bytes]], stopping: threading.Event, cancelled: threading.Event
) -> None:
    for index, args in pending:
        while not job.submit(index, args, timeout=0.5):
            if stopping.is_set() or cancelled.is_set() or job.closed:
                return


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(sys.argv) != 2:
        sys.exit("usage: python -m cluster.client.holder SPOOL (started by clusterctl submit --detach)")
    sys.exit(hold(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
