"""The client's per-job window (cluster/client/session.py, Window): a submitter blocks while no
room is free, is woken once a batch of room is free rather than at every result, and is
never left behind however the room comes back."""

from __future__ import annotations

import threading
import time

from cluster.client.session import BATCH, Window


def _blocked_taker(window: Window) -> tuple[threading.Thread, list]:
    got: list = []
    thread = threading.Thread(target=lambda: got.append(window.take(10)))
    thread.start()
    for _ in range(200):  # until it waits
        if window._waiting:
            break
        time.sleep(0.005)
    assert window._waiting
    return thread, got


def test_take_fails_after_its_timeout_when_nothing_comes_back():
    window = Window(1)
    assert window.take(0)
    assert not window.take(0.05)


def test_a_blocked_submitter_is_woken_by_a_batch_of_room_not_by_each_result():
    window = Window(10_000)
    assert window.wake_at == BATCH
    for _ in range(10_000):
        assert window.take(0)
    thread, got = _blocked_taker(window)
    window.give(BATCH - 1)
    thread.join(0.2)
    assert thread.is_alive() and not got, "woken before a batch of room was free"
    window.give(1)
    thread.join(10)
    assert got == [True] and window.free == BATCH - 1


def test_a_small_window_wakes_at_every_result():
    window = Window(4)
    assert window.wake_at == 1
    for _ in range(4):
        window.take(0)
    thread, got = _blocked_taker(window)
    window.give(1)
    thread.join(10)
    assert got == [True]


def test_results_coming_back_one_by_one_always_reach_the_waiter():
    window = Window(1_000)
    for _ in range(1_000):
        window.take(0)
    thread, got = _blocked_taker(window)
    for _ in range(1_000):  # every outstanding task answered, singly
        window.give(1)
    thread.join(10)
    assert got == [True]
