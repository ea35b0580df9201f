"""A job's durable spool: its function, inputs, results and tasks' output in one SQLite
file (WAL).

A detached job (``clusterctl submit --detach``) lives here, not in a terminal: the inputs
are written, and made durable, before the command returns; the process that runs the job
(holder.py) records each result once, by index, as it arrives. After that process is
killed, or the host restarts, the job resumes from the spool: only the inputs without a
result are sent again. ``clusterctl job results`` reads the results from here.

The file is checked when opened: one that is not SQLite, not a spool, or a spool of
another format version is refused with SpoolError, never half-read.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cluster.client.bundle import Bundle

FORMAT = 1
BATCH = 1000  # inputs per insert while spooling

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE inputs (idx INTEGER PRIMARY KEY, args BLOB NOT NULL);
CREATE TABLE results (idx INTEGER PRIMARY KEY, status INTEGER NOT NULL, body BLOB NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX results_seq ON results (seq);
CREATE TABLE output (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, idx INTEGER NOT NULL, stream TEXT NOT NULL, data BLOB NOT NULL
);
CREATE INDEX output_idx ON output (idx);
CREATE TABLE bundles (digest TEXT PRIMARY KEY, source TEXT NOT NULL, files INTEGER NOT NULL, data BLOB NOT NULL);
"""


class SpoolError(ValueError):
    """A spool that cannot be used: missing, corrupted, foreign, or the disk is full."""


class Spool:
    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path, self._db = path, db
        self._lock = threading.Lock()  # the holder's feeder reads while its main thread writes
        self._seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM results").fetchone()[0]

    @classmethod
    def create(
        cls,
        path: Path,
        meta: dict[str, Any],
        function: bytes,
        inputs: Iterable[bytes | bytearray | memoryview],
        bundles: Iterable[Bundle] = (),
    ) -> Spool:
        """Write a new spool, durably, with every input and the directories shipped with
        the job (``--ship``); nothing is left of it on failure."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                raise SpoolError(f"{path} exists already")
            db = _connect(path)
            with db:
                db.executescript(_SCHEMA)
                rows = {"format": FORMAT, "meta": meta, "function": function.hex()}
                db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in rows.items()])
                db.executemany(
                    "INSERT INTO bundles VALUES (?, ?, ?, ?)", [(b.digest, b.source, b.files, b.data) for b in bundles]
                )
                batch: list[tuple[int, bytes]] = []
                count = 0
                for count, args in enumerate(inputs, 1):
                    batch.append((count - 1, bytes(args)))
                    if len(batch) >= BATCH:
                        db.executemany("INSERT INTO inputs VALUES (?, ?)", batch)
                        batch.clear()
                db.executemany("INSERT INTO inputs VALUES (?, ?)", batch)
                db.execute("INSERT INTO meta VALUES ('count', ?)", (json.dumps(count),))
        except (sqlite3.Error, OSError) as exc:
            if not path.parent.is_dir():
                raise SpoolError(f"cannot create the spool directory {path.parent}: {exc}") from None
            for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                leftover.unlink(missing_ok=True)
            raise SpoolError(f"cannot write the spool {path}: {exc}") from None
        return cls(path, db)

    @classmethod
    def open(cls, path: Path) -> Spool:
        if not path.is_file():
            raise SpoolError(f"no spool at {path}")
        try:
            db = _connect(path)
            found = dict(db.execute("SELECT key, value FROM meta").fetchall())
            version = json.loads(found.get("format", "null"))
        except (sqlite3.Error, ValueError) as exc:
            raise SpoolError(f"{path} is not a job spool ({exc})") from None
        if version != FORMAT:
            raise SpoolError(f"{path} is a spool of format {version!r}; this release reads format {FORMAT}")
        return cls(path, db)

    # --------------------------------------------------------------- reading

    def _meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self._meta("meta") or {})

    @property
    def function(self) -> bytes:
        return bytes.fromhex(self._meta("function"))

    @property
    def count(self) -> int:
        return int(self._meta("count"))

    def pending(self, page: int = BATCH) -> Iterator[tuple[int, bytes]]:
        """The inputs without a result, in index order, read ``page`` at a time: no read
        stays open while results are written (a long one would keep the WAL from being
        checkpointed), and a million inputs are never in memory at once."""
        after = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    # NOT EXISTS: one primary-key lookup per input (NOT IN would build the whole
                    # set of results again for every page).
                    "SELECT idx, args FROM inputs WHERE idx > ? "
                    "AND NOT EXISTS (SELECT 1 FROM results WHERE results.idx = inputs.idx) ORDER BY idx LIMIT ?",
                    (after, page),
                ).fetchall()
            if not rows:
                return
            yield from rows
            after = rows[-1][0]

    def bundles(self) -> list[Bundle]:
        """The directories shipped with the job (none in a spool written before they were kept)."""
        try:
            rows = self._db.execute("SELECT source, digest, data, files FROM bundles").fetchall()
        except sqlite3.OperationalError:  # no such table
            return []
        return [Bundle(source, digest, bytes(data), files) for source, digest, data, files in rows]

    def counts(self) -> tuple[int, int]:
        """Results recorded, and how many of them are failures (status not OK, which is 0)."""
        done, failed = self._db.execute("SELECT COUNT(*), COALESCE(SUM(status != 0), 0) FROM results").fetchone()
        return done, failed

    def results(self, after: int = 0) -> Iterator[tuple[int, int, int, bytes]]:
        """(seq, index, status, body) of the results recorded after ``after``, in the
        order they were recorded."""
        yield from self._db.execute("SELECT seq, idx, status, body FROM results WHERE seq > ? ORDER BY seq", (after,))

    def output(self, after: int = 0, index: int | None = None) -> Iterator[tuple[int, int, str, bytes]]:
        """(seq, index, stream, data) of what tasks wrote to stdout ("out") and stderr
        ("err"), in the order it came, after ``after``; of task ``index`` only, if given."""
        query = "SELECT seq, idx, stream, data FROM output WHERE seq > ? AND (? IS NULL OR idx = ?) ORDER BY seq"
        with self._lock:
            rows = self._db.execute(query, (after, index, index)).fetchall()
        yield from rows

    # --------------------------------------------------------------- writing

    def record_output(self, rows: Iterable[tuple[int, str, bytes]]) -> None:
        """Keep what tasks wrote, (index, stream, data), in one transaction. Every run of a
        task is kept: one run again after a restart adds its output after the first's."""
        try:
            with self._lock, self._db:
                self._db.executemany("INSERT INTO output (idx, stream, data) VALUES (?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot record output in {self.path}: {exc}") from None

    def record(self, rows: Iterable[tuple[int, int, bytes]]) -> tuple[int, int]:
        """Record results (index, status, body) in one transaction; a result for an index
        that has one already is ignored (a task run again after a restart). Returns how
        many were new, and how many of those failed."""
        numbered = [(index, status, bytes(body), self._seq + n) for n, (index, status, body) in enumerate(rows, 1)]
        try:
            with self._lock, self._db:
                before = self._db.total_changes
                self._db.executemany("INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?)", numbered)
                new = self._db.total_changes - before
                if new == len(numbered):
                    failed = sum(1 for row in numbered if row[1] != 0)
                else:  # some were there already: count what this transaction added
                    failed = self._db.execute(
                        "SELECT COUNT(*) FROM results WHERE seq > ? AND status != 0", (self._seq,)
                    ).fetchone()[0]
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot record results in {self.path}: {exc}") from None
        self._seq += len(numbered)  # seqs of ignored rows are gaps: only their order matters
        return new, failed

    def close(self) -> None:
        self._db.close()


def _connect(path: Path) -> sqlite3.Connection:
    # autocommit off, explicit transactions (``with db``); WAL lets readers (job results)
    # read while the holder writes; synchronous=FULL: a result recorded survives a host crash.
    db = sqlite3.connect(path, timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db
