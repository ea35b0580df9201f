"""User payloads: functions, arguments, results and error records as bytes.

Only clients and workers call the ``load_*`` functions; the coordinator and the
agent forward these bytes untouched. A function blob starts with one byte that
says what it is:

- ``P``: a cloudpickled callable (the Python Executor; lambdas and functions
  from ``__main__`` travel by value),
- ``R``: a reference ``MODULE:FUNC`` (``clusterctl submit``; clients of earlier
  releases may add the module's source, which runs as that module),
- ``S``: a shell command template (``clusterctl submit --shell``),
- ``C``: a ``P`` or ``R`` blob with the client's code around it: the sources of the local
  modules it needs and the versions of the installed distributions it reaches by
  reference (``cluster/client/code.py`` collects them, ``shipped.py`` serves them).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import pickle
import shlex
import subprocess
import sys
import traceback
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import cloudpickle
import msgpack

from cluster.contract import shipped
from cluster.contract.wire import Buffer

# Bound here, in the template, before any user code runs: a job that patches json.dumps
# changes what its own code sees, not how its results are encoded.
_json_dumps, _json_loads = json.dumps, json.loads

RESULT_PICKLE = "pickle"  # results as pickles, for the Python Executor
RESULT_JSON = "json"  # results as JSON text, for the CLI (no unpickling on the client)

SHELL_OUTPUT_LIMIT = 64 * 1024


class CommandFailed(Exception):
    """A shell task exited non-zero."""


class RemoteTraceback(Exception):
    """Carries a task's remote traceback as the ``__cause__`` of its exception."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class TaskError(Exception):
    """A remote exception that could not be re-created with its own type."""


class WorkerLost(Exception):
    """The worker running the task died (crash, signal, memory) and retries ran out."""


class PayloadTooLarge(ValueError):
    """A task's arguments exceed the cluster's per-task limit; nothing was sent."""


class TaskTimeout(TimeoutError):
    """The task ran past its --timeout; its worker was killed."""


# Failures the cluster itself reports (no remote exception object exists for them).
CLUSTER_FAILURES = {"WorkerLost": WorkerLost, "TaskTimeout": TaskTimeout}


def digest(blob: Buffer) -> str:
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


# ------------------------------------------------------------------ functions


def pack_callable(fn: Callable) -> bytes:
    return b"P" + cloudpickle.dumps(fn)


def pack_reference(module: str, func: str) -> bytes:
    return b"R" + msgpack.packb({"module": module, "func": func})


def pack_shell(template: str) -> bytes:
    return b"S" + template.encode()


def pack_with_code(function: bytes, modules: Iterable[shipped.Module], requires: Mapping[str, str]) -> bytes:
    """``function`` (a P or R blob) with the modules to serve and the versions to check
    first; itself when there are none. Sorted, so the same code gives the same digest."""
    records = [m.record() for m in sorted(modules, key=lambda m: m.name)]
    if not records and not requires:
        return function
    return b"C" + msgpack.packb({"function": function, "modules": records, "requires": dict(sorted(requires.items()))})


def load_function(blob: Buffer) -> Callable:
    """Worker side: turn a function blob back into a callable (may raise)."""
    kind, body = blob[:1], blob[1:]
    if kind == b"P":
        return cloudpickle.loads(body)
    if kind == b"R":
        ref = msgpack.unpackb(body)
        module = _load_module(ref["module"], ref.get("source"), ref.get("filename"))
        try:
            return getattr(module, ref["func"])
        except AttributeError:
            raise AttributeError(f"module {ref['module']!r} has no function {ref['func']!r}") from None
    if kind == b"S":
        return _shell_runner(bytes(body).decode())
    if kind == b"C":
        code = msgpack.unpackb(body)
        shipped.check(code["requires"])
        shipped.serve(shipped.Module.from_record(record) for record in code["modules"])
        return load_function(code["function"])
    raise ValueError(f"unknown function blob kind {kind!r}")


def _load_module(name: str, source: str | None, filename: str | None) -> types.ModuleType:
    if source is None:
        return importlib.import_module(name)
    # Shipped source runs as a fresh module, registered so pickle can find its classes.
    module = types.ModuleType(name)
    module.__file__ = filename or f"<{name}>"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec", dont_inherit=True), module.__dict__)
    return module


def _shell_runner(template: str) -> Callable[[Any], dict]:
    def run(value: Any) -> dict:
        text = value if isinstance(value, str) else _json_dumps(value)
        command = template.replace("{}", shlex.quote(text)) if "{}" in template else f"{template} {shlex.quote(text)}"
        proc = subprocess.run(["/bin/sh", "-c", command], capture_output=True, stdin=subprocess.DEVNULL)
        out = {"exit": proc.returncode, "stdout": _clip(proc.stdout), "stderr": _clip(proc.stderr)}
        if proc.returncode != 0:
            raise CommandFailed(f"exit status {proc.returncode}", out)
        return out

    return run


def _clip(data: bytes) -> str:
    text = data[:SHELL_OUTPUT_LIMIT].decode(errors="replace")
    if len(data) > SHELL_OUTPUT_LIMIT:
        text += f"\n[... {len(data) - SHELL_OUTPUT_LIMIT} more bytes truncated]"
    return text


# ------------------------------------------------------------------ arguments


_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})
_SIZED = (str, bytes)
LARGE = 64 * 1024  # pickled through a file from this many bytes of str and bytes on


def _plain_size(value: Any, depth: int = 0) -> int:
    """Bytes of str and bytes in builtin data that pickle writes exactly as cloudpickle
    would (no code, no classes); -1 for anything else. Plain loops, no generators: this
    runs for every task's arguments and result."""
    kind = type(value)
    if kind in _SCALARS:
        return len(value) if kind in _SIZED else 0
    if depth >= 2 or kind not in (tuple, list, dict) or len(value) > 64:
        return -1
    size = 0
    for members in (value,) if kind is not dict else (value.keys(), value.values()):
        for member in members:
            of = type(member)
            n = (len(member) if of in _SIZED else 0) if of in _SCALARS else _plain_size(member, depth + 1)
            if n < 0:
                return -1
            size += n
    return size


def dumps(value: Any) -> bytes | memoryview:
    # cloudpickle is needed for code (lambdas, __main__ functions and classes, which pickle
    # would write by a reference workers cannot resolve), but costs ~10x more per call than
    # pickle; most task arguments and results are plain data, which both write the same.
    size = _plain_size(value)
    if size < 0:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    if size < LARGE:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    # pickle.dumps copies a large string into a buffer it grows to twice the size and
    # then shrinks: a fresh mmap, and a page fault per 4 KiB, per call. Through a file the
    # string is written once, into a buffer of about its size, and the view of it is sent
    # without a further copy (docs/performance.md, "Figures behind the code").
    out = io.BytesIO()
    pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return out.getbuffer()


def pack_args(args: tuple, kwargs: dict | None = None) -> bytes | memoryview:
    return dumps((args, kwargs or {}))


def load_args(blob: Buffer) -> tuple[tuple, dict]:
    args, kwargs = pickle.loads(blob)
    return tuple(args), dict(kwargs)


# -------------------------------------------------------------------- results


def pack_result(value: Any, fmt: str) -> bytes | memoryview:
    if fmt == RESULT_JSON:
        try:
            return _json_dumps({"result": value}, allow_nan=False).encode()
        except (TypeError, ValueError):
            # JSON cannot carry it: say so plainly instead of guessing a conversion.
            return _json_dumps({"repr": repr(value)[:SHELL_OUTPUT_LIMIT]}).encode()
    return dumps(value)


def load_result(blob: Buffer, fmt: str) -> Any:
    if fmt == RESULT_JSON:
        return _json_loads(bytes(blob))  # json takes no memoryview (large frames arrive as one)
    return pickle.loads(blob)


# -------------------------------------------------------------- error records


def pack_error(exc: BaseException, fmt: str) -> bytes:
    """An exception as msgpack: type, message, remote traceback, and for
    Python clients the pickled exception so it can be raised with its own type."""
    record: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc.args[0]) if isinstance(exc, CommandFailed) else str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "detail": exc.args[1] if isinstance(exc, CommandFailed) and len(exc.args) > 1 else None,
        "exc": None,
    }
    if fmt == RESULT_PICKLE:
        try:
            record["exc"] = cloudpickle.dumps(exc)
            pickle.loads(record["exc"])  # some exceptions pickle but cannot be rebuilt
        except Exception:
            record["exc"] = None
    return msgpack.packb(record, use_bin_type=True)


def failure(kind: str, message: str) -> bytes:
    """An error record for a failure the cluster observed (a lost worker, a timeout)."""
    return msgpack.packb(
        {"type": kind, "message": message, "traceback": "", "detail": None, "exc": None}, use_bin_type=True
    )


def lost_error(reason: str) -> bytes:
    return failure("WorkerLost", reason)


def load_error(blob: Buffer) -> dict:
    try:
        record = msgpack.unpackb(blob, raw=False)
        if isinstance(record, dict) and isinstance(record.get("type"), str):
            return record
    except Exception:
        pass
    return {"type": "TaskError", "message": "unreadable error record", "traceback": "", "detail": None, "exc": None}


def error_to_exception(record: dict) -> BaseException:
    """Re-create the remote exception, with the remote traceback as its cause."""
    exc: BaseException | None = None
    if record.get("exc"):
        try:
            exc = pickle.loads(record["exc"])
        except Exception:
            exc = None
    if exc is None:
        cls = CLUSTER_FAILURES.get(record["type"])
        exc = cls(record["message"]) if cls else TaskError(f"{record['type']}: {record['message']}")
    if record.get("traceback"):
        exc.__cause__ = RemoteTraceback(record["traceback"])
    return exc
