"""The detached job's spool (cluster/client/spool.py): durable inputs, each result once."""

from __future__ import annotations

import sqlite3

import pytest

from cluster.client.spool import Spool, SpoolError


def test_inputs_and_results_survive_a_reopen_and_a_result_is_recorded_once(tmp_path):
    path = tmp_path / "j.db"
    spool = Spool.create(path, {"job": 7}, b"fn", (b"%d" % i for i in range(2500)))
    assert spool.record([(0, 0, b"a"), (2, 1, b"err")]) == (2, 1)
    spool.close()
    again = Spool.open(path)
    assert (again.meta, again.function, again.count) == ({"job": 7}, b"fn", 2500)
    assert again.record([(0, 0, b"again"), (1, 0, b"b")]) == (1, 0)  # index 0 has its result already
    pending = list(again.pending(page=100))  # paged: reads 100 at a time
    assert [i for i, _ in pending] == list(range(3, 2500)) and pending[0][1] == b"3"
    assert again.counts() == (3, 1)
    assert [(i, body) for _, i, _, body in again.results()] == [(0, b"a"), (2, b"err"), (1, b"b")]
    seq = list(again.results())[1][0]
    assert [i for _, i, _, _ in again.results(after=seq)] == [1]


def test_a_file_that_is_not_a_spool_of_this_format_is_refused(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00" * 4096)
    with pytest.raises(SpoolError, match="is not a job spool"):
        Spool.open(garbage)
    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(SpoolError, match="is not a job spool"):
        Spool.open(foreign)
    newer = tmp_path / "newer.db"
    Spool.create(newer, {}, b"", []).close()
    db = sqlite3.connect(newer)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    db.commit()
    db.close()
    with pytest.raises(SpoolError, match="format 99"):
        Spool.open(newer)
    with pytest.raises(SpoolError, match="no spool"):
        Spool.open(tmp_path / "missing.db")


def test_a_spool_that_cannot_be_written_leaves_nothing_behind(tmp_path):
    def inputs():
        yield b"x"
        raise OSError(28, "No space left on device")

    path = tmp_path / "full.db"
    with pytest.raises(SpoolError, match="No space left"):
        Spool.create(path, {}, b"", inputs())
    assert list(tmp_path.iterdir()) == []
    Spool.create(path, {}, b"", []).close()
    with pytest.raises(SpoolError, match="exists already"):
        Spool.create(path, {}, b"", [])
