"""A user's spool service: serves the spools of that user's finished detached jobs on this
host to readers on other hosts, once their holders have exited.

A holder serves its own job's spool while it runs; when it ends, the results are still
only in a file on the submitting host. So the holder of a job that ended makes sure this
service runs (``ensure``): one process per user, cluster and host (a lock in the user's
spool directory), with no terminal, announcing itself in an ephemeral znode
``/clusterd/<cluster>/spools/<host>/<owner>``. A reader of a finished job whose spool it
cannot open asks the service of the job's host and owner. The service answers for jobs
whose record names this host and this owner, with the same key checks as a holder, and
exits once no such job has its spool here any more (retention removed them). After the
host restarts, the next ``clusterctl jobs`` or ``job`` command on it starts it again, as
it resumes lost jobs.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError

from cluster.client import records
from cluster.client.spool_reader import SpoolServer
from cluster.contract import layout
from cluster.runtime.zk import ask, close, connect

log = logging.getLogger("cluster.spool_service")

CHECK_EVERY = 10.0  # seconds between checks that the service is announced (a new session loses its znode)
IDLE_CHECK = 6  # checks between looks for whether any finished spool is left to serve
GONE_AFTER = 600.0  # seconds without an answer from ZooKeeper after which the service exits


def node(cluster: str, host: str, owner: str) -> str:
    return (
        f"{layout.cluster_root(cluster)}/spools/{layout.check_name(host, 'host')}/{layout.check_name(owner, 'owner')}"
    )


def lock_file(spools: Path) -> Path:
    return spools / "spool-service.lock"


def ensure(spools: Path, zk: str, cluster: str, keys: str, zk_auth: str) -> bool:
    """Start this user's service unless it runs; True if one was started."""
    spools.mkdir(parents=True, exist_ok=True)
    with open(lock_file(spools), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # it runs
        fcntl.flock(lock, fcntl.LOCK_UN)
    argv = [
        sys.executable,
        "-m",
        "cluster.client.spool_service",
        "--zk",
        zk,
        "--cluster",
        cluster,
        "--spools",
        str(spools),
    ]
    if keys:
        argv += ["--keys", str(Path(keys).resolve())]
    if zk_auth:
        argv += ["--zk-auth", str(Path(zk_auth).resolve())]
    log_file = open(spools / "spool-service.log", "ab")
    try:
        subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True, close_fds=True
        )
    finally:
        log_file.close()
    return True


def find(zk: KazooClient, cluster: str, host: str, owner: str, timeout: float = 10.0) -> dict | None:
    """The endpoint and CURVE key of the service of ``owner`` on ``host``; None if it is not running."""
    try:
        data, _ = ask(zk.get_async, node(cluster, host, owner), timeout=timeout)
        found = json.loads(data)
        return found if isinstance(found, dict) and isinstance(found.get("endpoint"), str) else None
    except (NoNodeError, ValueError):
        return None


class Service:
    def __init__(self, zk: KazooClient, cluster: str, keys: str, zk_hosts: str) -> None:
        self.zk, self.cluster = zk, cluster
        self.host, self.owner = socket.gethostname(), records.owner(keys)
        self.server = SpoolServer(self.source, zk_hosts, keys)
        self.unanswered_since = 0.0  # when ZooKeeper stopped answering (time.monotonic); 0: it answers

    def source(self, job_id: int) -> tuple[Path, str] | str:
        try:
            job = records.find(self.zk, self.cluster, job_id)
        except (KazooException, layout.BadRecord) as exc:
            return f"job {job_id}'s record is not readable ({exc})"
        if job is None:
            return f"no job {job_id}"
        if job.record.host != self.host or job.record.owner != self.owner:
            return f"job {job_id} was not submitted by {self.owner} on {self.host}"
        if job.state not in records.ENDED or not job.record.spool:
            return f"job {job_id} is {job.state}: its holder serves it, not the spool service"
        return Path(job.record.spool), job.state

    def serving(self) -> bool:
        """Whether any finished job of this owner has its spool on this host. While
        ZooKeeper does not answer, yes, for ``GONE_AFTER`` seconds: a cluster that is gone
        for good (a test's, a benchmark's) must not keep the service forever; the next
        `clusterctl jobs` on this host starts it again."""
        try:
            listed, _ = records.list_jobs(self.zk, self.cluster)
        except (KazooException, KazooTimeoutError):
            self.unanswered_since = self.unanswered_since or time.monotonic()
            return time.monotonic() - self.unanswered_since < GONE_AFTER
        self.unanswered_since = 0.0
        return any(
            job.state in records.ENDED
            and job.record.spool
            and (job.record.host, job.record.owner) == (self.host, self.owner)
            and Path(job.record.spool).is_file()
            for job in listed
        )

    def announce(self) -> None:
        """Name this service's endpoint in its znode, unless it does already."""
        path = node(self.cluster, self.host, self.owner)
        data = json.dumps({"endpoint": self.server.endpoint, "curve_key": self.server.curve_key}).encode()
        try:
            try:
                ask(self.zk.create_async, path, data, ephemeral=True, makepath=True)
            except NodeExistsError:  # ours already, or a predecessor's until its session expires
                if ask(self.zk.get_async, path)[0] != data:
                    ask(self.zk.set_async, path, data)
        except (KazooException, KazooTimeoutError) as exc:
            log.warning("cannot announce the service in ZooKeeper (%s); trying again", exc)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m cluster.client.spool_service", description=__doc__)
    for option in ("--zk", "--cluster", "--spools"):
        parser.add_argument(option, required=True)
    parser.add_argument("--keys", default="")
    parser.add_argument("--zk-auth", default="")
    args = parser.parse_args()
    lock = open(lock_file(Path(args.spools)), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(3)  # another one runs
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    zk = connect(args.zk, auth_file=args.zk_auth)
    service = Service(zk, args.cluster, args.keys, args.zk)
    try:
        service.announce()
        log.info(
            "serving %s's finished spools of cluster %s at %s", service.owner, args.cluster, service.server.endpoint
        )
        checks = 0
        while not stop.wait(CHECK_EVERY):
            checks += 1
            if checks % IDLE_CHECK == 0 and not service.serving():
                break
            service.announce()
    finally:
        service.server.close()
        close(zk)


if __name__ == "__main__":
    main()
