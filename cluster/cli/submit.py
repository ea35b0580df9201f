"""Run a function (or a shell command) over many inputs on the cluster; stream results as JSON lines.

Inputs: --range A B (integers A..B-1), or --inputs FILE / --inputs - (stdin), one JSON
value per line. Output: one line per task on stdout (or --output FILE):

  {"index": 0, "ok": true, "result": 42}
  {"index": 1, "ok": false, "error": "ZeroDivisionError: division by zero", "traceback": "..."}

A result JSON cannot carry comes as {"index": 2, "ok": true, "repr": "Decimal('1.5')"}.
What a task wrote to its stdout or stderr comes in "stdout" and "stderr" fields (the
first 64 KiB of each); --show-output also prints it live on stderr, prefixed [task N].
Exit status: 0 all tasks succeeded, 1 some failed, 2 usage error, cluster unreachable or
a function no node can load, 130 cancelled.

A node that cannot load the function (its module is not installed there, the name is
mistyped) runs none of its tasks: it is said once on stderr, and the other nodes run
them. When no node can, the job stops at once with one line naming the nodes and the
error (exit 2); no task counts as run.

Ctrl-C cancels the tasks not started and feeds no more inputs; the running ones finish
and their results are written (as the Executor's shutdown(cancel_futures=True)). A
second Ctrl-C, or SIGTERM, stops the running ones too. The summary on stderr says how
many tasks were not run.

Examples:

  clusterctl submit math:sqrt --range 0 1000

  clusterctl submit ./work.py:score --inputs items.jsonl --ordered --output scores.jsonl

  seq 1 100 | clusterctl submit mypkg.stats:pair --star --inputs -

  ls *.csv | clusterctl submit --shell --inputs - -- 'gzip -9 {}'

  clusterctl submit model:predict --ship ./model --inputs rows.jsonl
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import json
import math
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Optional

import typer

from cluster.cli import common, options
from cluster.cli.task_output import TaskOutputs
from cluster.client import bundle, code, holder, records
from cluster.client.load_error import LoadError
from cluster.client.session import ClusterClient, JobHandle
from cluster.client.spool import Spool, SpoolError
from cluster.contract import config, payload, wire


@dataclasses.dataclass
class Inputs:
    count: int
    items: Iterator[tuple[int, wire.Buffer]]


@options.with_settings(config.Common, only=("zk", "cluster", "keys", "zk_auth"))
def submit(
    target: list[str] = typer.Argument(..., help="MODULE:FUNC, path/to/file.py:FUNC, or with --shell the command."),
    *,
    config_file: Optional[str] = common.CONFIG,
    settings: options.Settings,
    range_: Optional[tuple[int, int]] = typer.Option(None, "--range", help="Integers A..B-1 as inputs."),
    inputs: Optional[str] = typer.Option(None, "--inputs", help="File of JSON values, one per line; '-' for stdin."),
    star: bool = typer.Option(False, "--star", help="Spread each JSON array input as positional arguments."),
    shell: bool = typer.Option(False, "--shell", help="Run a shell command per input line; {} is the quoted line."),
    ordered: bool = typer.Option(False, "--ordered", help="Print results in input order (default: completion order)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write results here instead of stdout."),
    retries: int = typer.Option(2, "--retries", min=0, max=100, help="Retries of a task whose worker died."),
    window: int = typer.Option(10_000, "--window", min=1, help="Most tasks in flight; bounds memory."),
    connect_timeout: float = typer.Option(
        10.0, "--connect-timeout", help="Seconds to reach ZooKeeper and the coordinator."
    ),
    wait_workers: float = typer.Option(
        60.0, "--wait-workers", help="Seconds to wait for a first agent when the cluster has none (then exit 2)."
    ),
    timeout: Optional[float] = typer.Option(
        None,
        "--timeout",
        help="Seconds a task may run, counted from its start on a worker (not from the submit); then its worker is killed and it fails with TaskTimeout.",
    ),
    max_memory: Optional[str] = typer.Option(
        None, "--max-memory", help="Memory a worker may use for a task, e.g. 512M or 2G; over it the worker is killed."
    ),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress", help="Progress bar (default: when stderr is a terminal)."
    ),
    ship: Optional[list[Path]] = typer.Option(
        None,
        "--ship",
        help="Send this directory's files (less what its .gitignore files ignore) to the nodes: first on the tasks' sys.path, and in their working directory; repeatable.",
    ),
    detach: bool = typer.Option(
        False,
        "--detach",
        help="Return once the job and its inputs are held on disk, printing its id; a holder process runs it with no terminal (see `clusterctl job results ID`).",
    ),
    spool: Optional[Path] = typer.Option(
        None,
        "--spool",
        help="With --detach: the directory for the job's spool (default ~/.local/state/clusterd/CLUSTER/jobs).",
    ),
    show_output: bool = typer.Option(
        False, "--show-output", help="Print what tasks write to stdout and stderr live on stderr, as [task N] lines."
    ),
) -> None:
    with common.clear_errors():
        common_cfg = config.load(config.Common, config_file, settings)
    if (range_ is None) == (inputs is None):
        raise common.fail("give exactly one of --range A B or --inputs FILE")
    function = _function_blob(target, shell)
    bundles = _bundles(ship or [])
    with common.clear_errors():
        if range_ is not None:
            source = _range_inputs(*range_, star)
        elif inputs is not None:
            source = _file_inputs(inputs, star, shell)
    limits = {"timeout": timeout, "max_memory": _size(max_memory) if max_memory else None}
    if detach:
        options = {"retries": retries, "window": window, "result_format": payload.RESULT_JSON, **limits}
        _detach(common_cfg, function, " ".join(target), source, options, spool, connect_timeout, bundles)
        return
    out: IO[str] = open(output, "w") if output else sys.stdout
    try:
        code = _run(
            common_cfg,
            function,
            " ".join(target),
            source,
            out,
            ordered=ordered,
            retries=retries,
            window=window,
            limits=limits,
            wait_workers=wait_workers,
            connect_timeout=connect_timeout,
            shell=shell,
            progress=sys.stderr.isatty() if progress is None else progress,
            bundles=bundles,
            outputs=TaskOutputs(show_output),
        )
    finally:
        if output:
            out.close()
    raise typer.Exit(code)


# ----------------------------------------------------------------- function


def _size(text: str) -> int:
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    number, unit = text.strip().upper().rstrip("IB"), ""
    if number and number[-1] in units:
        number, unit = number[:-1], number[-1]
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        value = 0
    if value <= 0:
        raise common.fail(f"--max-memory {text!r} is not a size like 512M or 2G")
    return value


def _function_blob(target: list[str], shell: bool) -> bytes:
    if shell:
        return payload.pack_shell(" ".join(target))
    if len(target) != 1:
        raise common.fail(f"expected one MODULE:FUNC, got {' '.join(target)!r} (use --shell for commands)")
    module, sep, func = target[0].rpartition(":")
    if not sep or not module or not func.isidentifier():
        raise common.fail(f"{target[0]!r} is not MODULE:FUNC (e.g. mypkg.mod:func or ./file.py:func)")
    if module.endswith(".py") or os.sep in module:
        path = Path(module)
        try:
            source = path.read_text()
            tree = ast.parse(source, str(path))
        except OSError as exc:
            raise common.fail(f"cannot read {path}: {exc.strerror}") from None
        except SyntaxError as exc:
            raise common.fail(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
        if not any(_defines(node, func) for node in tree.body):
            raise common.fail(f"{path} defines no top-level function {func!r}")
        with _unshippable_is_usage():
            return code.pack_file(path.resolve(), func)
    with _unshippable_is_usage():
        return code.pack_reference(module, func)


@contextlib.contextmanager
def _unshippable_is_usage() -> Iterator[None]:
    try:
        yield
    except code.Unshippable as exc:
        raise common.fail(str(exc)) from None


def _bundles(directories: list[Path]) -> list[bundle.Bundle]:
    """Built before anything is sent: a directory over the limit is a usage error naming its largest files."""
    try:
        return [bundle.build(directory) for directory in directories]
    except (OSError, bundle.BundleTooLarge) as exc:
        raise common.fail(str(exc)) from None


def _defines(node: ast.stmt, name: str) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return any((a.asname or a.name.split(".")[0]) == name for a in node.names)
    return False


# ------------------------------------------------------------------- inputs


def _range_inputs(start: int, stop: int, star: bool) -> Inputs:
    if stop < start:
        raise ValueError(f"--range {start} {stop}: B must not be less than A (the inputs are A..B-1)")

    def items() -> Iterator[tuple[int, wire.Buffer]]:
        for index, value in enumerate(range(start, stop)):
            yield index, payload.pack_args((value,))

    return Inputs(max(0, stop - start), items())


def _file_inputs(name: str, star: bool, shell: bool) -> Inputs:
    """Check every line before anything runs; stdin is spooled to a temporary
    file on the way, so even a million lines cost disk, not memory. Bytes that are not
    UTF-8 are read as surrogates (surrogateescape), so the line that has them is named."""
    if name == "-":
        spool = tempfile.TemporaryFile("w+", encoding="utf-8")
        source: IO[str] = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
    else:
        try:
            source = spool = open(name, encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise ValueError(f"cannot read --inputs {name}: {exc.strerror}") from None
    count = 0
    for lineno, line in enumerate(source, 1):
        _check_utf8(line, lineno)
        if source is not spool:
            spool.write(line)
        if not line.strip():
            continue
        if not shell:
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--inputs line {lineno}: not valid JSON ({exc.msg}): {line.strip()[:80]!r}") from None
            if star and not isinstance(value, list):
                raise ValueError(f"--inputs line {lineno}: --star needs a JSON array, got {line.strip()[:80]!r}")
        count += 1
    spool.seek(0)

    def items() -> Iterator[tuple[int, wire.Buffer]]:
        index = 0
        with spool:
            for line in spool:
                if not line.strip():
                    continue
                if shell:
                    args = (line.rstrip("\n"),)
                else:
                    value = json.loads(line)
                    args = tuple(value) if star else (value,)
                yield index, payload.pack_args(args)
                index += 1

    return Inputs(count, items())


def _check_utf8(line: str, lineno: int) -> None:
    """A line read with surrogateescape holds a lone surrogate for each byte that is not UTF-8."""
    if line.isascii():
        return
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as exc:
        byte = ord(line[exc.start]) - 0xDC00
        raise ValueError(
            f"--inputs line {lineno}: not UTF-8 text (byte {byte:#04x} at character {exc.start + 1})"
        ) from None


# ----------------------------------------------------------------- detach


def _detach(
    cfg: config.Common,
    function: bytes,
    label: str,
    source: Inputs,
    options: dict,
    spool_dir: Path | None,
    timeout: float,
    bundles: list[bundle.Bundle],
) -> None:
    """Spool the job (its inputs and shipped directories), start its holder, and return
    once the holder has taken it."""
    folder = (spool_dir or holder.spool_dir(cfg.cluster)).resolve()
    path = folder / f"{uuid.uuid4().hex}.db"
    with common.zookeeper(cfg, timeout) as zk:
        with common.clear_errors():
            entry = records.open_job(zk, cfg.cluster, label, source.count, spool=str(path), keys_dir=cfg.keys)
        meta = {
            "job": entry.id,
            "zk": cfg.zk,
            "cluster": cfg.cluster,
            "keys": cfg.keys,
            "zk_auth": cfg.zk_auth,
            "options": options,
            "label": label,
        }
        try:
            Spool.create(path, meta, function, (args for _, args in source.items), bundles).close()
        except SpoolError as exc:
            records.remove(zk, cfg.cluster, entry.id)
            raise common.fail(str(exc)) from None
        proc = holder.start(path)
        deadline = time.monotonic() + max(timeout, 15.0)
        while True:
            job = records.find(zk, cfg.cluster, entry.id)
            if job is not None and (job.attached or job.state != "running"):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise common.fail(f"job {entry.id}: its holder did not start; see {path.with_suffix('.log')}")
            time.sleep(0.05)
    typer.echo(f"clusterctl: job {entry.id} detached: {source.count} tasks, spooled in {path}", err=True)
    typer.echo(str(entry.id))


# -------------------------------------------------------------------- run


def _run(
    cfg: config.Common,
    function: bytes,
    label: str,
    source: Inputs,
    out: IO[str],
    *,
    ordered: bool,
    retries: int,
    window: int,
    limits: dict,
    wait_workers: float,
    connect_timeout: float,
    shell: bool,
    progress: bool,
    bundles: list[bundle.Bundle],
    outputs: TaskOutputs,
) -> int:
    results: queue.SimpleQueue = queue.SimpleQueue()
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _terminate)
    with common.clear_errors():
        client = ClusterClient(cfg.zk, cfg.cluster, connect_timeout=connect_timeout, keys=cfg.keys, zk_auth=cfg.zk_auth)
    writer = Writer(out, ordered, outputs)
    outcome = "cancelled"  # how the job ended, for its record: until it is known otherwise
    why = ""  # why it failed as a whole
    try:
        with common.clear_errors():
            entry = records.open_job(client.zk, cfg.cluster, label, source.count, keys_dir=cfg.keys)
    except BaseException:
        client.close()
        raise
    typer.echo(f"clusterctl: job {entry.id}: {source.count} tasks", err=True)
    refusals = Refusals(label)
    # `clusterctl job cancel` from anywhere: as SIGTERM, everything stops now.
    entry.on_cancel(lambda: os.kill(os.getpid(), signal.SIGTERM))
    try:
        with common.clear_errors():
            job = client.open_job(
                function,
                {
                    "retries": retries,
                    "window": window,
                    "result_format": payload.RESULT_JSON,
                    "record": entry.id,
                    **limits,
                },
                lambda i, s, b: results.put((i, s, b)),
                bundles,
                on_output=outputs.add,
                on_refused=refusals.add,
                on_failed=lambda _, error: results.put(error),
            )
        if job.workers == 0 and source.count:
            typer.echo(
                f"clusterctl: no workers in cluster {cfg.cluster!r} yet; tasks wait until an agent joins", err=True
            )
        feeding = threading.Event()
        feeding.set()
        feeder = threading.Thread(target=_feed, args=(job, source, results, feeding), daemon=True)
        feeder.start()
        bar = _Progress(source.count) if progress else None

        def summary(cancelled: bool = False) -> None:
            """The last thing drawn: the bar is closed first, so it is not drawn again after."""
            if bar:
                bar.close(writer.done, writer.failed, 0)
            refusals.say(math.inf, bar)  # those still waiting: the job went on without those nodes
            _summary(writer, source.count, started, cancelled)

        def collect(until: Callable[[], bool]) -> bool:
            """Write results as they come until ``until()``; False when no agent joined in time.
            Raises LoadError when no node can load the function."""
            while not until():
                refusals.say(time.monotonic(), bar)
                try:
                    item = results.get(timeout=0.2)
                except queue.Empty:
                    if bar:
                        bar.update(writer.done, writer.failed, len(job.running))
                    if writer.done == 0 and client.agents == 0 and time.monotonic() - started > wait_workers:
                        return False
                    continue
                if isinstance(item, LoadError):
                    raise item
                writer.add(*item)
                if bar and writer.done % 64 == 0:
                    bar.update(writer.done, writer.failed, len(job.running))
            return True

        try:
            try:
                if not collect(lambda: writer.done >= source.count):
                    typer.echo(
                        f"clusterctl: no agent joined cluster {cfg.cluster!r} within {wait_workers:g} s; "
                        "start one with `clusterctl agent`",
                        err=True,
                    )
                    return common.EXIT_USAGE
            except LoadError as error:
                if bar:
                    bar.close(writer.done, writer.failed, 0)
                typer.echo(f"clusterctl: job {entry.id} cannot start: {label} — {error}", err=True)
                outcome, why = "failed", f"cannot start: {error}"
                return common.EXIT_USAGE
            except _Terminated:
                raise
            except KeyboardInterrupt:
                # As shutdown(cancel_futures=True): what has not started is cancelled, what
                # runs finishes and is written; a second Ctrl-C stops it.
                feeding.clear()
                feeder.join()
                job.cancel(None, stop=False)
                if job.running:
                    typer.echo(
                        f"\nclusterctl: cancelling; waiting for {len(job.running)} running tasks "
                        "(Ctrl-C again to stop them)",
                        err=True,
                    )
                collect(lambda: job.idle and results.empty())
                summary(cancelled=True)
                return 130
        except (KeyboardInterrupt, LoadError):  # a second Ctrl-C, or SIGTERM: stop everything now
            summary(cancelled=True)
            return 130
        finally:
            job.close()
            if bar:
                bar.close(writer.done, writer.failed, 0)
        summary()
        outcome = "failed" if writer.failed else "done"
        return common.EXIT_FAILED if writer.failed else common.EXIT_OK
    finally:
        entry.finish(outcome, total=source.count, done=writer.done, failed=writer.failed, error=why)
        client.close()


class _Terminated(KeyboardInterrupt):
    """SIGTERM: the job stops at once, running tasks and all (a service manager waits
    for no task)."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def _feed(job: JobHandle, source: Inputs, results: queue.SimpleQueue, feeding: threading.Event) -> None:
    for index, args in source.items:
        try:
            while not job.submit(index, args, timeout=0.2):
                if job.closed or not feeding.is_set():
                    return
        except LoadError:
            return  # the job is over: the main thread says why
        except payload.PayloadTooLarge as exc:  # refused here, before sending: report it as this task's failure
            results.put((index, wire.ERROR, payload.failure("PayloadTooLarge", str(exc))))
        if not feeding.is_set():
            return


class Writer:
    """Result lines, in the order they come or (``ordered``) in input order; with
    ``outputs``, each carries what its task wrote."""

    def __init__(self, out: IO[str], ordered: bool, outputs: TaskOutputs | None = None):
        self.out, self.ordered, self.outputs = out, ordered, outputs
        self.done = self.failed = 0
        self._next = 0
        self._held: dict[int, str] = {}  # --ordered: at most the window's worth

    def add(self, index: int, status: int, body: bytes) -> None:
        self.done += 1
        if status != wire.OK:
            self.failed += 1
        line = format_result(index, status, body)
        self._write(index, line if self.outputs is None else self.outputs.annotate(line, index))

    def skip(self, index: int) -> None:
        """A result not to print (``job results --failed``): in input order, the next go on."""
        self._write(index, "")

    def _write(self, index: int, line: str) -> None:
        if not self.ordered:
            self.out.write(line)
            return
        self._held[index] = line
        while self._next in self._held:
            self.out.write(self._held.pop(self._next))
            self._next += 1


def format_result(index: int, status: int, body: bytes) -> str:
    if status == wire.OK:
        # The worker encoded {"result": ...} or {"repr": ...}. It is checked before it is
        # printed (a task's code can break a worker's JSON), then spliced, not re-encoded.
        if _valid_result(body):
            return f'{{"index": {index}, "ok": true, {bytes(body).decode()[1:]}\n'
        return (
            json.dumps(
                {
                    "index": index,
                    "ok": False,
                    "error": "ResultUndecodable: the worker's result is not "
                    f"the JSON it should be: {bytes(body)[:80]!r}",
                    "traceback": "",
                }
            )
            + "\n"
        )
    err = payload.load_error(body)
    line = {"index": index, "ok": False, "error": f"{err['type']}: {err['message']}", "traceback": err["traceback"]}
    if err.get("detail") is not None:
        line["result"] = err["detail"]
    return json.dumps(line) + "\n"


def _valid_result(body: bytes) -> bool:
    try:
        value = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(value, dict) and len(value) == 1 and ("result" in value or "repr" in value)


def _summary(writer: Writer, total: int, started: float, cancelled: bool = False) -> None:
    wall = time.monotonic() - started
    rate = writer.done / wall if wall > 0 else 0.0
    state = f"cancelled after {writer.done} of {total}" if cancelled else f"{writer.done}"
    not_run = f", {total - writer.done} not run" if cancelled else ""
    typer.echo(
        f"clusterctl: {state} tasks, {writer.failed} failed{not_run}, {wall:.2f} s wall, {rate:.0f} tasks/s", err=True
    )


class Refusals:
    """Nodes that cannot load the function, said on stderr once each, after a moment: when
    no node can, the one line that says so names them all, and nothing is said before it.
    ``add`` runs on the client's IO thread, ``say`` on the main thread."""

    WAIT = 1.0  # seconds a refusal waits to be said (the job's failure comes sooner)

    def __init__(self, label: str):
        self.label = label
        self._waiting: queue.SimpleQueue[tuple[float, LoadError]] = queue.SimpleQueue()
        self._due: list[tuple[float, LoadError]] = []

    def add(self, error: LoadError) -> None:
        self._waiting.put((time.monotonic(), error))

    def say(self, now: float, bar: _Progress | None) -> None:
        while not self._waiting.empty():
            self._due.append(self._waiting.get())
        while self._due and now - self._due[0][0] >= self.WAIT:
            _, error = self._due.pop(0)
            line = (
                f"clusterctl: node {error.node} cannot load {self.label}: {error.error}; the other nodes run its tasks"
            )
            typer.echo(("\n" if bar and not bar.closed else "") + line, err=True)


class _Progress:
    """A one-line bar on stderr, redrawn in place."""

    def __init__(self, total: int):
        self.total, self.started, self._last = total, time.monotonic(), 0.0
        self.closed = False

    def update(self, done: int, failed: int, running: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.closed or not force and now - self._last < 0.1:
            return
        self._last = now
        frac = done / self.total if self.total else 1.0
        width = 30
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        eta_text = f"{eta:.0f}s" if eta != float("inf") else "?"
        sys.stderr.write(
            f"\r[{bar}] {done}/{self.total} {frac:6.1%}  {running} running  {failed} failed  {rate:.0f}/s  eta {eta_text} "
        )
        sys.stderr.flush()

    def close(self, done: int, failed: int, running: int) -> None:
        """Drawn a last time, and never again (the summary goes after it)."""
        if self.closed:
            return
        self.update(done, failed, running, force=True)
        self.closed = True
        sys.stderr.write("\n")
