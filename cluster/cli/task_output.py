"""What ``clusterctl submit``'s tasks wrote to their stdout and stderr.

Kept per task until its result line is written, which then carries it as ``"stdout"``
and ``"stderr"`` fields; with ``--show-output`` also printed live on stderr, each whole
line prefixed ``[task N] ``, in one write so that lines never mix.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import IO

from cluster.contract import wire

FIELDS = {"out": "stdout", "err": "stderr"}


class TaskOutputs:
    def __init__(self, show: bool, err: IO[str] | None = None) -> None:
        self.show = show
        self.err = err
        self._lock = threading.Lock()
        self._kept: dict[int, dict[str, bytearray]] = {}  # tasks without a result line yet
        self._partial: dict[tuple[int, str], bytes] = {}  # --show-output: a line's start, not printed yet

    def add(self, index: int, stream: str, data: wire.Buffer) -> None:
        """On the client's IO thread, before the task's result."""
        with self._lock:
            self._kept.setdefault(index, {}).setdefault(stream, bytearray()).extend(data)
            if not self.show:
                return
            *lines, rest = (self._partial.pop((index, stream), b"") + bytes(data)).split(b"\n")
            if rest:
                self._partial[(index, stream)] = rest
            self._print(index, lines)

    def annotate(self, line: str, index: int) -> str:
        """A task's result line (JSON ending in ``}\\n``) with its output fields, when it has any."""
        with self._lock:
            kept = self._kept.pop(index, {})
            for stream in FIELDS:
                rest = self._partial.pop((index, stream), None)
                if rest is not None:
                    self._print(index, [rest])
        fields = {name: bytes(kept[s]).decode(errors="replace") for s, name in FIELDS.items() if kept.get(s)}
        if not fields:
            return line
        return f"{line[:-2]}, {json.dumps(fields)[1:]}\n"

    def _print(self, index: int, lines: list[bytes]) -> None:
        if lines:
            err = self.err or sys.stderr
            err.write("".join(f"[task {index}] {line.decode(errors='replace')}\n" for line in lines))
            err.flush()
