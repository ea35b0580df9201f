"""How a message becomes frames and frames become a message: the only code that builds frames.

A message (wire.py) is ``[header, *payload]``. The header is msgpack ``[version, kind,
field, field, ...]`` with the fields of a frozen dataclass in declaration order; the
payload frames are opaque bytes (pickled functions, arguments, results) that only workers
and clients ever deserialize. ``decode`` checks the version, the kind, the field count
and every field's type, and each message's own invariants (its ``validate``), and raises
``ProtocolError`` on anything else, so a hostile or confused peer can never crash a loop.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import threading
import typing
from collections.abc import Callable
from typing import Any, ClassVar

import msgpack

from cluster.contract.version import PROTOCOL_VERSION


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol version."""


class ProtocolVersionMismatch(ProtocolError):
    def __init__(self, theirs: object):
        super().__init__(f"peer speaks protocol version {theirs!r}, this side speaks {PROTOCOL_VERSION}")
        self.theirs = theirs


MAX_HEADER_BYTES = 8 * 1024 * 1024
# Frames this large travel by reference (pyzmq's own copy threshold); smaller ones are
# cheaper to copy than to track.
ZERO_COPY_MIN = 64 * 1024

# A payload frame: bytes, or a view of a received message that large payloads are passed on as.
Buffer = bytes | bytearray | memoryview

REFUSED_KIND = 2  # wire.Refused's kind, the same in every protocol version

_REGISTRY: dict[int, type[Message]] = {}


@dataclasses.dataclass(frozen=True)
class Message:
    """Base of all messages. ``frames`` holds the opaque payload frames."""

    KIND: ClassVar[int] = -1
    frames: tuple[Buffer, ...] = dataclasses.field(default=(), kw_only=True)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.KIND in _REGISTRY:
            raise TypeError(f"message kind {cls.KIND} registered twice")
        _REGISTRY[cls.KIND] = cls

    def encode(self) -> list[Buffer]:
        header = _packer().pack([PROTOCOL_VERSION, self.KIND, *_values(type(self))(self)])
        return [header, *self.frames]


_local = threading.local()


def _packer() -> msgpack.Packer:
    """A Packer per thread: msgpack.packb builds one per call (a third of a small
    message's encoding), and a Packer must not be shared between threads."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer


def _values_of(cls: type) -> Callable[[Message], tuple[Any, ...]]:
    """The header field values of a message, in declaration order, as one call."""
    names = [f.name for f in _header_fields(cls)]
    if len(names) > 1:
        return operator.attrgetter(*names)
    return (lambda msg: (getattr(msg, names[0]),)) if names else (lambda msg: ())


# Each of these is computed once per message class. Typed as plain callables: functools.cache's
# wrapper asks for Hashable arguments, and mypy does not take a dataclass's class object for one.
_values: Callable[[type], Callable[[Message], tuple[Any, ...]]] = functools.cache(_values_of)


def decode(frames: list[bytes] | list[Any]) -> Message:
    """Turn received frames into a message, or raise ProtocolError."""
    if not frames:
        raise ProtocolError("empty message")
    raw = frames[0]
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError("header too large")
    if not isinstance(raw, _BUFFERS):
        raw = raw.bytes
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"header is not msgpack: {exc.__class__.__name__}") from None
    if not isinstance(header, list) or len(header) < 2:
        raise ProtocolError("header is not a [version, kind, ...] list")
    version, kind, *values = header
    if version != PROTOCOL_VERSION and kind != REFUSED_KIND:
        raise ProtocolVersionMismatch(version)  # a refusal alone reads the same in every version (wire.Refused)
    cls = _REGISTRY.get(kind) if isinstance(kind, int) else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    fields = _header_fields(cls)
    # Compatible evolution within a protocol version: a newer peer may append fields
    # (older peers ignore them), and a field added later has a default, so messages
    # from older peers that lack it still decode. See docs/operations.md, upgrades.
    if len(values) < _required(cls):
        raise ProtocolError(f"{cls.__name__}: expected {len(fields)} fields, got {len(values)}")
    values = values[: len(fields)]
    for field, value, ok in zip(fields, values, _checks(cls)):
        if not ok(value):
            raise ProtocolError(f"{cls.__name__}.{field.name}: bad value of type {type(value).__name__}")
    payload = tuple(_payload(f) for f in frames[1:])
    msg = cls(*values, frames=payload)
    check = getattr(msg, "validate", None)
    if check is not None:
        check()
    return msg


# What is not one of these is a zmq.Frame. Never hasattr(frame, "bytes"): that reads the
# property, which copies the whole frame (a megabyte per payload per hop).
_BUFFERS = (bytes, bytearray, memoryview)


def _payload(frame: Any) -> Buffer:
    """A received payload frame as bytes, or, when large, as a view of the received
    message (``view.obj`` is the zmq.Frame): daemons forward large payloads without
    copying them (loop.send_frames)."""
    if isinstance(frame, _BUFFERS):
        return frame
    view: Buffer = frame.buffer if len(frame) >= ZERO_COPY_MIN else frame.bytes
    return view


def _header_fields_of(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    return tuple(f for f in dataclasses.fields(cls) if f.name != "frames")


_header_fields: Callable[[type], tuple[dataclasses.Field[Any], ...]] = functools.cache(_header_fields_of)


def _required_of(cls: type) -> int:
    """How many leading header fields a sender must include: those without a default."""
    return sum(
        1 for f in _header_fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


_required: Callable[[type], int] = functools.cache(_required_of)


def _checks_of(cls: type) -> tuple[Callable[[Any], bool], ...]:
    """One type check per header field, chosen once per message class: decoding runs
    for every message on every hop (a heartbeat from each of 5,000 agents a second)."""
    hints = typing.get_type_hints(cls)
    return tuple(_check(hints[f.name]) for f in _header_fields(cls))


_checks: Callable[[type], tuple[Callable[[Any], bool], ...]] = functools.cache(_checks_of)


def _check(hint: Any) -> Callable[[Any], bool]:
    # msgpack yields exact types, so ``type(v) is`` is enough, and keeps bool out of int.
    if hint is float:
        return lambda v: type(v) is float or type(v) is int
    origin = typing.get_origin(hint) or hint
    if origin in (int, str, bytes, bool, list, dict):
        return lambda v: type(v) is origin
    return lambda v: False  # a field type this module does not know is a bug here, not the peer's


def check_rows(value: list[Any], arity: int, what: str) -> None:
    """Items lists are lists of fixed-arity rows; check them once, here."""
    for row in value:
        if not isinstance(row, list) or len(row) != arity:
            raise ProtocolError(f"{what}: each item must be a list of {arity}")


def check_result_items(items: list[Any], frames: tuple[Buffer, ...], what: str) -> None:
    """[[job, index, attempt, status], ...] with one payload frame each."""
    for row in items:  # unrolled: this runs for every result on every hop
        if type(row) is not list or len(row) != 4:
            raise ProtocolError(f"{what}.items: each item must be a list of 4")
        job, index, attempt, status = row
        if type(job) is not str:
            raise ProtocolError(f"{what}.items: job id must be a string")
        if type(index) is not int or type(attempt) is not int or type(status) is not int:
            raise ProtocolError(f"{what}.items: expected integers")
    if len(items) != len(frames):
        raise ProtocolError(f"{what}: one frame per item")


def check_ints(row: list[Any], what: str) -> None:
    for v in row:
        if type(v) is not int:  # msgpack gives exact types; this also keeps bool out
            raise ProtocolError(f"{what}: expected integers")
