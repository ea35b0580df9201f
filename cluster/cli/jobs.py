"""List the cluster's jobs (`clusterctl jobs`), or show or remove one (`clusterctl job`).

Every job, from `clusterctl submit` or an `Executor`, has an id: a number, short,
sortable and unique in the cluster, shown on stderr when `submit` starts
(`clusterctl: job 42: 1000 tasks`) and as `Executor.job_id`. Its record in ZooKeeper says
who ran it from where, what it ran and how it ended; this works from any host, with or
without a coordinator. While a job runs, its done and failed counts come live from the
leader. A job whose submitting process went away before it ended is "lost".

Examples:

  clusterctl jobs                       (jobs running now, and lost ones)

  clusterctl jobs --all --json | jq '.[] | select(.state == "failed") | .id'

  clusterctl job status 42

  clusterctl job wait 42; clusterctl job cancel 42; clusterctl job rm 42

  clusterctl job results 42 --follow; clusterctl job logs 42 --task 7
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import sys
import time
from collections.abc import Generator, Iterator
from typing import Any, Optional

import typer
from kazoo.client import KazooClient
from kazoo.exceptions import NotEmptyError

from cluster.cli import common, options
from cluster.cli.submit import Writer
from cluster.client import holder, records, spool_service
from cluster.client import jobs as cluster_jobs
from cluster.client.leader_status import ask_leader
from cluster.client.spool_reader import JobRows
from cluster.contract import config, layout, wire
from cluster.runtime.zk import read_leader

KEEP = "7d"
EXIT_STATUS = {"done": 0, "failed": 1, "lost": 1, "cancelled": 130}
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
COLUMNS = ("ID", "OWNER", "HOST", "FUNCTION", "STATE", "DONE", "FAILED", "TOTAL", "STARTED", "ELAPSED")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help="Show or remove one job (see `jobs`).")


@options.with_settings(config.Common, only=("zk", "cluster", "keys", "zk_auth"))
def jobs(
    *,
    config_file: Optional[str] = common.CONFIG,
    settings: options.Settings,
    all_: bool = typer.Option(False, "--all", help="Finished jobs too (done, failed, cancelled)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output: a JSON list."),
    keep: str = typer.Option(
        KEEP,
        "--keep",
        help="Remove the records (and this host's spools) of jobs that ended longer ago than this (30m, 12h, 7d).",
    ),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to reach ZooKeeper and the leader."),
) -> None:
    with common.clear_errors():
        cfg = config.load(config.Common, config_file, settings)
        keep_seconds = parse_duration(keep, "--keep")
    with common.zookeeper(cfg, timeout) as zk:
        listed, skipped = records.list_jobs(zk, cfg.cluster, timeout)
        now = time.time()
        for old in list(records.expired(listed, keep_seconds, now)):
            try:
                records.remove(zk, cfg.cluster, old.id, timeout)
            except NotEmptyError:
                continue
            listed.remove(old)
            with contextlib.suppress(OSError):  # another host's, or shared storage this user cannot write
                holder.forget(old)
        with common.clear_errors():  # a keys directory whose client key is not clear
            resumed = set(holder.resume(listed, cfg))
        listed = [dataclasses.replace(job, attached=True) if job.id in resumed else job for job in listed]
        live = _live_counts(zk, cfg, timeout) if any(job.state == "running" for job in listed) else {}
    shown = [_row(job, live, now) for job in listed if all_ or job.state not in records.ENDED]
    if skipped:
        typer.echo(f"clusterctl: {skipped} job znodes are not readable records; skipped", err=True)
    if as_json:
        common.print_json(shown)
        return
    if not shown:
        typer.echo("no jobs" if all_ else "no running jobs (--all for finished ones)")
        return
    common.print_table(COLUMNS, [_cells(row) for row in shown])


@app.command("status")
@options.with_settings(config.Common, only=("zk", "cluster", "keys", "zk_auth"))
def status(
    job_id: str = typer.Argument(..., help="The job's id, as `clusterctl jobs` shows it."),
    *,
    config_file: Optional[str] = common.CONFIG,
    settings: options.Settings,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to reach ZooKeeper and the leader."),
) -> None:
    """One job: who ran it from where, what it runs, its state and counts (live while it runs).

    Examples:

      clusterctl job status 42

      clusterctl job status 42 --json | jq .state
    """
    cfg, number = _which(config_file, settings, job_id)
    with common.zookeeper(cfg, timeout) as zk:
        job = _found(zk, cfg, number)
        live = _live_counts(zk, cfg, timeout) if job.state == "running" else {}
    row = _row(job, live, time.time())
    if as_json:
        common.print_json(row)
        return
    for key in ("id", "state", "owner", "host", "pid", "function", "done", "failed", "total", "started", "elapsed"):
        typer.echo(f"{key:<9} {_text(key, row[key])}")


@app.command("wait")
@options.with_settings(config.Common, only=("zk", "cluster", "keys", "zk_auth"))
def wait(
    job_id: str = typer.Argument(..., help="The job's id, as `clusterctl jobs` shows it."),
    *,
    config_file: Optional[str] = common.CONFIG,
    settings: options.Settings,
    as_json: bool = typer.Option(False, "--json", help="Print the job as it ended, as JSON."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Give up after this many seconds (exit 124)."),
) -> None:
    """Wait for a job to end. Exit status as `clusterctl submit`'s: 0 done, 1 some tasks
    failed or the job was lost, 130 cancelled; 124 when --timeout passes first.

    Examples:

      clusterctl job wait 42 && echo all done

      clusterctl job wait 42 --timeout 600 --json | jq .failed
    """
    cfg, number = _which(config_file, settings, job_id)
    with common.zookeeper(cfg) as zk:
        _found(zk, cfg, number)  # a lost detached job of ours starts again
    bar = sys.stderr.isatty()
    try:
        with common.clear_errors(), _not_found():
            final = cluster_jobs.wait(
                number,
                timeout,
                zk=cfg.zk,
                cluster=cfg.cluster,
                zk_auth=cfg.zk_auth,
                on_poll=(lambda job: _progress(job)) if bar else None,
            )
    except TimeoutError as exc:
        typer.echo(f"clusterctl: {exc}", err=True)
        raise typer.Exit(124) from None
    finally:
        if bar:
            sys.stderr.write("\n")
    if as_json:
        common.print_json(final)
    elif final.get("error"):
        typer.echo(f"clusterctl: job {number} {final['state']}: {final['error']}", err=True)
    else:
        typer.echo(f"job {number} {final['state']}: {final['done']} of {final['total']} done, {final['failed']} failed")
    # As submit: a job that could not start at all is exit 2.
    raise typer.Exit(common.EXIT_USAGE if final.get("error") else EXIT_STATUS[final["state"]])


@app.command("cancel")
@options.with_settings(config.Common, only=("zk", "cluster", "keys", "zk_auth"))
def cancel(
    job_id: str = typer.Argument(..., help="The job's id, as `clusterctl jobs` shows it."),
    *,
    config_file: Optional[str] = common.CONFIG,
    settings: options.Settings,
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for the job to end (then exit 1)."),
) -> None:
    """Cancel a running job: its tasks are dropped, running ones stopped, and its owner
    (the `clusterctl submit` or the Executor) ends it as cancelled. Only its owner, or a
    key listed in the keys directory's `admins` file, may.

    Examples:

      clusterctl job cancel 42
    """
    cfg, number = _which(config_file, settings, job_id)
    with common.clear_errors(), _not_found():
        asked = cluster_jobs.cancel(number, zk=cfg.zk, cluster=cfg.cluster, zk_auth=cfg.zk_auth, keys=cfg.keys)
        if asked["state"] in records.ENDED:
            typer.echo(f"job {number} has ended already ({asked['state']})")
            return
        try:
            final = cluster_jobs.wait(number, timeout, zk=cfg.zk, cluster=cfg.cluster, zk_auth=cfg.zk_auth)
        except TimeoutError:
            raise common.fail(f"job {number}: asked to cancel, but it has not ended within {timeout:g} s", 1) from None
    typer.echo(f"job {number} {final['state']}")


@contextlib.contextmanager
def _not_found() -> Iterator[None]:
    try:
        yield
    except (cluster_jobs.NoSuchJob, cluster_jobs.NotYours) as exc:
        raise common.fail(str(exc)) from None


def _progress(job: dict) -> None:
    total = job["total"] or "?"
    sys.stderr.write(f"\rjob {job['id']} {job['state']}: {job['done']}/{total} done, {job['failed']} failed ")
    sys.stderr.flush()


@app.command("results")
@options.with_settings(config.Common, only=("zk", "cluster", "keys", "zk_auth"))
def results(
    job_id: str = typer.Argument(..., help="The job's id, as `clusterctl jobs` shows it."),
    *,
    config_file: Optional[str] = common.CONFIG,
    settings: options.Settings,
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Go on printing results as they come, until the job ends."
    ),
    ordered: bool = typer.Option(False, "--ordered", help="In input order (default: the order they came in)."),
    failed_only: bool = typer.Option(False, "--failed", help="Only the failed tasks."),
) -> None:
    """A detached job's results, as `clusterctl submit` would have printed them, from its
    spool: the file when this host can open it, else its holder, from any host while the
    job runs. Exit status: with --follow, as `clusterctl submit`'s
    once the job has ended; else 0.

    Examples:

      clusterctl job results 42 > results.jsonl

      clusterctl job results 42 --follow --ordered

      clusterctl job results 42 --failed | jq -r .error
    """
    cfg, number = _which(config_file, settings, job_id)
    writer = Writer(sys.stdout, ordered)
    rows = _rows(cfg, number, "results", None, follow)
    while True:
        try:
            _, index, status, body = next(rows)
        except StopIteration as end:
            state = end.value
            break
        if failed_only and status == wire.OK:
            writer.skip(index)
        else:
            writer.add(index, status, body)
    raise typer.Exit(EXIT_STATUS[state] if follow else 0)


@app.command("logs")
@options.with_settings(config.Common, only=("zk", "cluster", "keys", "zk_auth"))
def logs(
    job_id: str = typer.Argument(..., help="The job's id, as `clusterctl jobs` shows it."),
    *,
    config_file: Optional[str] = common.CONFIG,
    settings: options.Settings,
    task: Optional[int] = typer.Option(None, "--task", help="Only this task's output (its index)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Go on printing output as it comes, until the job ends."),
) -> None:
    """What a detached job's tasks wrote to stdout and stderr, each line prefixed with its
    task (`[task 7] ...`; `[task 7 err] ...` for stderr), from its spool (as `job results`
    reads it). Each task keeps the first 64 KiB of each stream.

    Examples:

      clusterctl job logs 42

      clusterctl job logs 42 --task 7

      clusterctl job logs 42 --follow | grep -i warning
    """
    cfg, number = _which(config_file, settings, job_id)
    for _, index, stream, data in _rows(cfg, number, "output", task, follow):
        tag = f"[task {index}]" if stream == "out" else f"[task {index} err]"
        text = data.decode(errors="replace")
        sys.stdout.write("".join(f"{tag} {line}\n" for line in text.rstrip("\n").split("\n")))


def _rows(
    cfg: config.Common, number: int, what: str, task: int | None, follow: bool
) -> Generator[tuple[int, int, Any, bytes], None, str]:
    """A detached job's spool rows (spool_reader.JobRows); the job's state at the end is
    the generator's return value."""
    with common.zookeeper(cfg) as zk:
        with common.clear_errors():
            rows = JobRows(
                _found(zk, cfg, number),
                lambda n: _found(zk, cfg, n),
                what,
                task=task,
                follow=follow,
                keys_dir=cfg.keys,
                service=lambda host, owner: spool_service.find(zk, cfg.cluster, host, owner),
            )
            for row in rows:
                yield row
                sys.stdout.flush()
        return rows.state


def _found(zk: KazooClient, cfg: config.Common, number: int) -> records.Listed:
    try:
        job = records.find(zk, cfg.cluster, number)
    except layout.BadRecord as exc:
        raise common.fail(f"job {number}: its record is not readable ({exc})") from None
    if job is None:
        raise common.fail(f"no job {number} in cluster {cfg.cluster!r} (`clusterctl jobs --all` lists them)")
    with common.clear_errors():
        if holder.resume([job], cfg):
            job = dataclasses.replace(job, attached=True)  # its holder starts again
    return job


@app.command("rm")
@options.with_settings(config.Common, only=("zk", "cluster", "keys", "zk_auth"))
def rm(
    job_id: str = typer.Argument(..., help="The job's id, as `clusterctl jobs` shows it."),
    *,
    config_file: Optional[str] = common.CONFIG,
    settings: options.Settings,
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to reach ZooKeeper."),
) -> None:
    """Remove the record of a job that has ended (or was lost), and a detached job's spool.
    Only its owner, or an admin key, may.

    Examples:

      clusterctl job rm 42
    """
    cfg, number = _which(config_file, settings, job_id)
    with common.zookeeper(cfg, timeout) as zk:
        try:
            job = records.find(zk, cfg.cluster, number, timeout)
        except layout.BadRecord:
            job = None  # a record no release wrote: it goes all the same
        if job is not None:
            with common.clear_errors():
                records.check_entitled(job, cfg.keys)
        try:
            removed = records.remove(zk, cfg.cluster, number, timeout)
        except NotEmptyError:
            raise common.fail(f"job {number} is running: its record goes once it has ended") from None
    if not removed:
        raise common.fail(f"no job {number} in cluster {cfg.cluster!r}")
    if job is not None:
        with contextlib.suppress(OSError):
            holder.forget(job)
    typer.echo(f"job {number} removed")


def _which(config_file: Optional[str], settings: options.Settings, job_id: str) -> tuple[config.Common, int]:
    """The settings, and the job the user named: a bad id is one clear line, exit 2."""
    with common.clear_errors():
        return config.load(config.Common, config_file, settings), layout.job_id_of(job_id)


def parse_duration(text: str, what: str) -> float:
    """Seconds in ``30m``, ``12h``, ``7d`` or a plain number of seconds."""
    value, unit = (text[:-1], text[-1]) if text and text[-1] in UNITS else (text, "s")
    try:
        seconds = float(value) * UNITS[unit]
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(f"{what} {text!r} is not a duration like 30m, 12h or 7d")
    return seconds


def _live_counts(zk: KazooClient, cfg: config.Common, timeout: float) -> dict[str, dict[str, int]]:
    """The leader's counts of the running jobs, by id; none when it cannot be asked (the
    records' own counts are shown then)."""
    try:
        leader = read_leader(zk, cfg.cluster, timeout)
        if leader is None:
            return {}
        return ask_leader(leader.endpoint, leader.curve_key, cfg.keys, min(timeout, 2.0)).get("job_progress", {})
    except (ValueError, OSError):
        return {}


def _row(job: records.Listed, live: dict[str, dict[str, int]], now: float) -> dict:
    row = job.as_dict(now)
    counts = live.get(str(job.id)) if job.state == "running" else None
    if counts is not None:
        row["done"], row["failed"] = counts.get("done", 0), counts.get("failed", 0)
    return row


def _text(key: str, value: object) -> str:
    if key in ("started", "ended") and isinstance(value, (int, float)) and value:
        return datetime.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    if key == "elapsed" and isinstance(value, (int, float)):
        return common.format_duration(value)
    if key == "total" and value == 0:
        return "-"
    return str(value)


def _cells(row: dict) -> tuple[str, ...]:
    return tuple(_text(key.lower(), row[key.lower()])[:40] for key in COLUMNS)
