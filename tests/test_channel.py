"""The agent <-> worker channel (agents/channel.py) over real socketpairs: records
survive any split into reads and writes, large frames arrive as views of one buffer,
and a corrupt stream is reported without losing the records before it."""

from __future__ import annotations

import os
import select
import socket
import struct
import threading

import pytest

from agents import channel


@pytest.fixture
def pair():
    a, b = channel.pair()
    yield a, b
    a.close()
    b.close()


def _read_all(reader: channel.Reader, sock: socket.socket, want: int) -> list:
    out: list = []
    while len(out) < want and reader.corrupt is None:
        assert select.select([sock], [], [], 10)[0], "nothing to read within 10 s"
        out += reader.read(sock)
    return out


def test_many_small_records_in_one_read_each_come_out_whole(pair):
    a, b = pair
    sent = [[b"h%d" % i, os.urandom(i % 50), b""] for i in range(500)]
    writer = threading.Thread(target=lambda: [channel.send_blocking(a, frames) for frames in sent])
    writer.start()
    got = _read_all(channel.Reader(), b, len(sent))
    writer.join(10)
    assert [[bytes(f) for f in r] for r in got] == sent


def test_a_record_larger_than_the_socket_buffer_goes_through_a_nonblocking_end(pair):
    a, b = pair
    big = os.urandom(5 << 20)
    ch = channel.Channel(a, 0)
    assert ch.send([b"head", big, b"tail"])
    assert ch.pending, "5 MiB cannot fit a socket buffer: the rest must wait, not block"
    got: list = []
    reader = channel.Reader()
    while not got:
        select.select([b], [ch] if ch.pending else [], [], 10)
        ch.flush()
        got += reader.read(b)
    head, body, tail = got[0]
    assert (bytes(head), bytes(tail)) == (b"head", b"tail") and body == big
    assert isinstance(body, memoryview), "a large frame is handed on as a view, not copied again"
    assert not ch.pending


def test_a_record_split_byte_by_byte_is_reassembled(pair):
    a, b = pair
    raw = b"".join(bytes(x) for x in channel.record([b"abc", b"", b"defgh"]))
    reader = channel.Reader()
    got: list = []
    for i in range(len(raw)):
        a.send(raw[i : i + 1])
        select.select([b], [], [], 10)
        got += reader.read(b)
    assert [[bytes(f) for f in r] for r in got] == [[b"abc", b"", b"defgh"]]


@pytest.mark.parametrize(
    "garbage, why",
    [
        (b"\xff" * 16, "frames in"),  # absurd frame count
        (struct.pack("<QI", 8, 1) + struct.pack("<Q", 5), "do not add up"),  # lengths disagree with the size
        (struct.pack("<QI", 8 + 100, 1) + struct.pack("<Q", 100) + b"x" * 100, "limit"),  # over max_frame
    ],
)
def test_a_corrupt_record_is_reported_after_the_good_ones_before_it(pair, garbage, why):
    a, b = pair
    channel.send_blocking(a, [b"good"])
    a.sendall(garbage)
    reader = channel.Reader(max_frame=50)
    got = _read_all(reader, b, 2)
    assert [[bytes(f) for f in r] for r in got] == [[b"good"]]
    assert reader.corrupt is not None and why in str(reader.corrupt)
    assert reader.read(b) == []  # nothing after it is trusted


def test_the_end_of_the_stream_is_closed(pair):
    a, b = pair
    a.close()
    with pytest.raises(channel.Closed):
        channel.Reader().read(b)


def test_records_before_the_end_of_the_stream_come_out_before_it_is_reported(pair):
    """A worker that sends its last (large) results and exits: the results are not lost."""
    a, b = pair
    big = os.urandom(1 << 20)
    writer = threading.Thread(target=lambda: (channel.send_blocking(a, [b"last", big]), a.close()))
    writer.start()
    reader, got = channel.Reader(), []
    with pytest.raises(channel.Closed):
        while True:
            select.select([b], [], [], 10)
            got += reader.read(b)
    writer.join(10)
    assert len(got) == 1 and got[0][1] == big


def test_a_write_to_a_dead_peer_marks_the_channel_closed_instead_of_raising(pair):
    a, b = pair
    ch = channel.Channel(a, 0)
    b.close()
    for _ in range(3):  # the first write may still be accepted; EPIPE follows
        ch.send([b"x" * 1000])
    assert ch.closed and not ch.pending


def test_both_directions_at_once_do_not_deadlock(pair):
    """A worker blocks on a full socket only while the agent, which never blocks, reads."""
    a, b = pair
    blob = os.urandom(1 << 20)
    received: list = []

    def worker():
        for _ in range(8):
            channel.send_blocking(b, [blob])
        received.extend(_read_all(channel.Reader(), b, 8))

    thread = threading.Thread(target=worker)
    thread.start()
    ch = channel.Channel(a, 0)
    for _ in range(8):
        ch.send([blob])
    got: list = []
    while len(got) < 8 or ch.pending:
        r, w, _ = select.select([ch], [ch] if ch.pending else [], [], 10)
        assert r or w, "both ends stuck"
        ch.flush()
        if r:
            got += ch.receive()
    thread.join(10)
    assert len(got) == 8 and all(f[0] == blob for f in got)
    assert len(received) == 8 and all(f[0] == blob for f in received)
