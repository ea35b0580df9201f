"""cluster.Executor keeps the promises concurrent.futures makes.

CPython's own tests of them (Lib/test/test_concurrent_futures: executor.py, test_shutdown,
test_wait, test_as_completed, test_future, Python 3.14's map(buffersize=...)), adapted
to a remote executor and run against one real cluster for the module: a coordinator and
an agent of WORKERS workers. Each test keeps CPython's name where it has one. Where a
remote executor must differ, README ("The Executor and concurrent.futures") says how and
why, and the tests here check what it does instead.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import weakref
from pathlib import Path

import pytest
from helpers import PY, LocalCluster, wait_for

from cluster import Executor, TaskStopped, WorkerLost

WORKERS = 2


# ------------------------------------------------------------ what the calls run


def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


def sleep_and_raise(t):
    time.sleep(t)
    raise Exception("this is an exception")


def sleep_and_write(t, path, text):
    time.sleep(t)
    Path(path).write_text(text)


def wait_for_file(path, result=None):
    """Blocks until the test creates ``path``: a call the test lets finish when it wants."""
    while not os.path.exists(path):
        time.sleep(0.01)
    return result


def pid_then_wait_then_write(pid_file, gate, end_file):
    Path(pid_file).write_text(str(os.getpid()))
    wait_for_file(gate)
    Path(end_file).write_text("ran to its end")


def interval(t):
    start = time.time()
    time.sleep(t)
    return start, time.time()


class MyObject:
    def my_method(self):
        pass


def make_dummy_object(_):
    return MyObject()


def write_number(directory, i):
    Path(directory, f"{i}.out").write_text(str(i))


def cancelled_future() -> cf.Future:
    """CPython's CANCELLED_FUTURE: cancelled, its executor not told yet (wait() counts it as not done)."""
    future: cf.Future = cf.Future()
    future.cancel()
    return future


def finished_future(result=None, exception=None, cancelled=False) -> cf.Future:
    """The other states CPython's tests build with create_future, through the public API:
    CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE."""
    future: cf.Future = cf.Future()
    if cancelled:
        future.cancel()
        future.set_running_or_notify_cancel()
    elif exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
    return future


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cluster(zk_server, tmp_path_factory):
    local = LocalCluster(zk_server.connect_string, f"t-futures-{uuid.uuid4().hex[:8]}", tmp_path_factory.mktemp("c"))
    coordinator = local.coordinator()
    local.agent("f1", WORKERS)
    local.wait_ready(coordinator, ["f1"])
    yield local
    local.stop()


@pytest.fixture
def executor(cluster):
    ex = Executor(zk=cluster.zk, cluster=cluster.name)
    yield ex
    # The cluster is shared by the module's tests: stop what a test left running.
    for future in list(ex._futures.values()):
        future.stop()
    ex.shutdown(wait=True)


SCRIPT_PRELUDE = """\
import time
from pathlib import Path
from cluster import Executor

def sleep_and_write(t, path, text):
    time.sleep(t)
    Path(path).write_text(text)

if __name__ == "__main__":
"""


def run_main(cluster: LocalCluster, main: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """A script whose main block is ``main``, with sleep_and_write defined in it."""
    return run_script(cluster, SCRIPT_PRELUDE + textwrap.indent(textwrap.dedent(main), "    "), tmp_path)


def run_script(cluster: LocalCluster, source: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=cluster.env)


# ------------------------------------------------------------------- executor.py


def test_submit(executor):
    assert executor.submit(pow, 2, 8).result(timeout=30) == 256


def test_submit_keyword(executor):
    assert executor.submit(mul, 2, y=8).result(timeout=30) == 16
    assert executor.submit(capture, 1, self=2, fn=3).result(timeout=30) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=capture, arg=1)
    with pytest.raises(TypeError):
        executor.submit(arg=1)


def test_map(executor):
    assert list(executor.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10), chunksize=3)) == list(map(pow, range(10), range(10)))


def test_map_exception(executor):
    i = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(i) == (0, 1)
    assert next(i) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(i)


def test_map_timeout(executor):
    results = []
    with pytest.raises(cf.TimeoutError):
        for r in executor.map(time.sleep, [0, 0, 4], timeout=1):
            results.append(r)
    assert results == [None, None]


def test_map_timeout_is_one_deadline_from_the_call(executor, tmp_path):
    # The first call may end 0.5 s after the map, the second 0.8 s after the first: each
    # within 1 s of the one before, so a timeout per result would not raise, but the
    # second is past 1 s from the call.
    gates = [tmp_path / f"gate{i}" for i in range(2)]
    timers = [threading.Timer(at, gate.touch) for at, gate in zip((0.5, 1.3), gates)]
    results = []
    try:
        with pytest.raises(cf.TimeoutError):
            for timer in timers:
                timer.start()
            for r in executor.map(wait_for_file, map(str, gates), range(2), timeout=1.0):
                results.append(r)
    finally:
        for timer in timers:
            timer.cancel()
    assert results == [0]


def test_shutdown_race_issue12456(executor):
    executor.map(str, [2] * (WORKERS + 1))
    executor.shutdown()


def test_no_stale_references(executor):
    my_object = MyObject()
    collected = threading.Event()
    ref = weakref.ref(my_object, lambda obj: collected.set())  # noqa: F841 - kept for its callback
    executor.submit(my_object.my_method)  # the future is discarded on purpose
    del my_object
    for _ in range(300):  # CPython waits SHORT_TIMEOUT (30 s)
        gc.collect()
        if collected.wait(0.1):
            break
    assert collected.is_set(), "the executor keeps the object of a submitted bound method alive"


def test_max_workers_negative():
    for number in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            Executor(max_workers=number)


def test_free_reference(executor):
    for obj in executor.map(make_dummy_object, range(10)):
        wr = weakref.ref(obj)
        del obj
        gc.collect()
        assert wr() is None


def test_max_workers_bounds_the_calls_that_run_at_once(cluster):
    with Executor(zk=cluster.zk, cluster=cluster.name, max_workers=1) as ex:
        spans = sorted(ex.map(interval, [0.2] * 4))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.01, spans  # one after the other, though the cluster has two workers


# -------------------------------------------------- Python 3.14: map(buffersize=...)


def test_map_buffersize_type_validation(executor):
    for buffersize in ("foo", 2.0):
        with pytest.raises(TypeError, match="buffersize must be an integer or None"):
            executor.map(str, range(4), buffersize=buffersize)


def test_map_buffersize_value_validation(executor):
    for buffersize in (0, -1):
        with pytest.raises(ValueError, match=r"buffersize must be None or > 0"):
            executor.map(str, range(4), buffersize=buffersize)


def test_map_buffersize(executor):
    ints = range(4)
    for buffersize in (1, 2, len(ints), len(ints) * 2):
        assert list(executor.map(str, ints, buffersize=buffersize)) == ["0", "1", "2", "3"]


def test_map_buffersize_on_multiple_iterables(executor):
    ints = range(4)
    for buffersize in (1, 2, len(ints), len(ints) * 2):
        assert list(executor.map(mul, ints, ints, buffersize=buffersize)) == [0, 1, 4, 9]


def test_map_buffersize_on_infinite_iterable(executor):
    res = executor.map(str, itertools.count(), buffersize=2)
    assert [next(res), next(res), next(res)] == ["0", "1", "2"]


def test_map_buffersize_on_multiple_infinite_iterables(executor):
    res = executor.map(mul, itertools.count(), itertools.count(), buffersize=2)
    assert [next(res), next(res), next(res)] == [0, 1, 4]


def test_map_buffersize_on_empty_iterable(executor):
    assert list(executor.map(str, [], buffersize=2)) == []


def test_map_buffersize_without_iterable(executor):
    assert list(executor.map(str, buffersize=2)) == []


def test_map_buffersize_when_buffer_is_full(executor):
    consumed = []

    def inputs():
        for i in range(100):
            consumed.append(i)
            yield i

    res = executor.map(str, inputs(), buffersize=3)
    assert len(consumed) == 3  # submitted before anything is consumed
    assert next(res) == "0"
    assert len(consumed) == 4  # one more for each result taken


def test_map_without_buffersize_submits_every_call_at_once(executor, tmp_path):
    consumed = []

    def inputs():
        for i in range(30):
            consumed.append(i)
            yield i

    executor.map(write_number, itertools.repeat(str(tmp_path)), inputs())  # never iterated
    assert len(consumed) == 30
    executor.shutdown(wait=True)
    assert sorted(int(p.read_text()) for p in tmp_path.glob("*.out")) == list(range(30))


# ------------------------------------------------------------------ test_shutdown.py


def test_run_after_shutdown(executor):
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(pow, 2, 5)


def test_interpreter_shutdown(cluster, tmp_path):
    # An interpreter that exits without shutdown() still runs what was submitted.
    out = tmp_path / "apple"
    res = run_main(
        cluster,
        f"""
        t = Executor()
        t.submit(sleep_and_write, 1.0, {str(out)!r}, "apple")
        """,
        tmp_path,
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert out.read_text() == "apple"


def test_submit_after_interpreter_shutdown(cluster, tmp_path):
    res = run_script(
        cluster,
        """
        import atexit

        @atexit.register
        def run_last():
            try:
                t.submit(id, None)
            except RuntimeError:
                print("runtime-error")
                raise

        from cluster import Executor

        if __name__ == "__main__":
            t = Executor()
            t.submit(id, 42).result()
        """,
        tmp_path,
    )
    assert "RuntimeError: cannot schedule new futures after interpreter shutdown" in res.stderr
    assert res.stdout.strip() == "runtime-error"


def test_hang_issue12364(executor):
    fs = [executor.submit(time.sleep, 0.05) for _ in range(20)]
    executor.shutdown()
    for f in fs:
        assert f.result(timeout=0) is None  # every one finished before shutdown returned


def test_cancel_futures(executor):
    fs = [executor.submit(time.sleep, 0.1) for _ in range(50)]
    # CPython's pool starts calls within microseconds of the submit; here a start is
    # known once its report arrives (README: "The Executor and concurrent.futures").
    wait_for(lambda: any(f.running() for f in fs), 30, what="a call to be reported running")
    executor.shutdown(cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    assert len(cancelled) > 20
    others = [f for f in fs if not f.cancelled()]
    for f in others:  # the calls that had started ran to the end
        assert f.done() and f.exception() is None
    assert len(others) > 0


def test_hang_gh83386(cluster, tmp_path):
    # shutdown(wait=False) still runs what was submitted, and the interpreter exits after it.
    out = tmp_path / "apple"
    res = run_main(
        cluster,
        f"""
        t = Executor(max_workers=3)
        t.submit(sleep_and_write, 1.0, {str(out)!r}, "apple")
        t.shutdown(wait=False)
        """,
        tmp_path,
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert out.read_text() == "apple"


def test_hang_gh94440(cluster):
    # shutdown(wait=True) does not hang for a call cancelled right before it.
    executor = Executor(zk=cluster.zk, cluster=cluster.name, max_workers=1)
    executor.submit(int).result(timeout=30)
    executor.submit(int).cancel()
    done = threading.Event()
    threading.Thread(target=lambda: (executor.shutdown(wait=True), done.set()), daemon=True).start()
    assert done.wait(30), "shutdown(wait=True) hangs on a cancelled call"


def test_context_manager_shutdown(cluster):
    with Executor(zk=cluster.zk, cluster=cluster.name) as e:
        assert list(e.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        io_thread = e._client._thread
    io_thread.join(10)
    assert not io_thread.is_alive()  # the connection is closed


def test_del_shutdown(cluster):
    executor = Executor(zk=cluster.zk, cluster=cluster.name)
    res = executor.map(abs, range(-5, 5))
    del executor
    gc.collect()
    assert [r for r in res] == [abs(v) for v in range(-5, 5)]


def test_shutdown_no_wait(cluster):
    executor = Executor(zk=cluster.zk, cluster=cluster.name)
    res = executor.map(abs, range(-5, 5))
    io_thread = executor._client._thread
    executor.shutdown(wait=False)
    # Every call submitted before shutdown runs, then the connection closes.
    assert [r for r in res] == [abs(v) for v in range(-5, 5)]
    io_thread.join(30)
    assert not io_thread.is_alive()


def test_shutdown_no_wait_completes_calls_behind_the_window(cluster):
    executor = Executor(zk=cluster.zk, cluster=cluster.name, window=2)
    fs = [executor.submit(abs, -i) for i in range(40)]  # 38 wait in the client
    executor.shutdown(wait=False)
    assert [f.result(timeout=60) for f in fs] == list(range(40))


def test_cancel_futures_wait_false(cluster, tmp_path):
    out = tmp_path / "apple"
    res = run_main(
        cluster,
        f"""
        t = Executor()
        t.submit(sleep_and_write, 0.1, {str(out)!r}, "apple")
        t.shutdown(wait=False, cancel_futures=True)
        """,
        tmp_path,
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr
    # The call may have been cancelled before a worker started it, or have run to the end.
    assert not out.exists() or out.read_text() == "apple"


# ------------------------------------------------------------------ test_wait.py


def test_20369(executor):
    future = executor.submit(time.sleep, 1.5)
    done, not_done = cf.wait([future, future], return_when=cf.ALL_COMPLETED)
    assert (done, not_done) == ({future}, set())


def test_first_completed(executor):
    cancelled = cancelled_future()
    future1 = executor.submit(mul, 21, 2)
    future2 = executor.submit(time.sleep, 1.5)
    done, not_done = cf.wait([cancelled, future1, future2], return_when=cf.FIRST_COMPLETED)
    assert (done, not_done) == ({future1}, {cancelled, future2})


def test_first_completed_some_already_completed(executor):
    cancelled, successful = finished_future(cancelled=True), finished_future(42)
    future1 = executor.submit(time.sleep, 1.5)
    finished, pending = cf.wait([cancelled, successful, future1], return_when=cf.FIRST_COMPLETED)
    assert (finished, pending) == ({cancelled, successful}, {future1})


def test_first_exception(executor):
    future1 = executor.submit(mul, 2, 21)
    future2 = executor.submit(sleep_and_raise, 1.5)
    future3 = executor.submit(time.sleep, 3)
    finished, pending = cf.wait([future1, future2, future3], return_when=cf.FIRST_EXCEPTION)
    assert (finished, pending) == ({future1, future2}, {future3})


def test_first_exception_some_already_complete(executor):
    successful, cancelled, notified = finished_future(42), cancelled_future(), finished_future(cancelled=True)
    future1 = executor.submit(divmod, 21, 0)
    future2 = executor.submit(time.sleep, 1.5)
    finished, pending = cf.wait([successful, cancelled, notified, future1, future2], return_when=cf.FIRST_EXCEPTION)
    assert (finished, pending) == ({successful, notified, future1}, {cancelled, future2})


def test_first_exception_one_already_failed(executor):
    failed = finished_future(exception=OSError())
    future1 = executor.submit(time.sleep, 2)
    finished, pending = cf.wait([failed, future1], return_when=cf.FIRST_EXCEPTION)
    assert (finished, pending) == ({failed}, {future1})


def test_all_completed(executor):
    done = [finished_future(42), finished_future(cancelled=True), finished_future(exception=OSError())]
    future1 = executor.submit(divmod, 2, 0)
    future2 = executor.submit(mul, 2, 21)
    finished, pending = cf.wait([*done, future1, future2], return_when=cf.ALL_COMPLETED)
    assert (finished, pending) == ({*done, future1, future2}, set())


def test_timeout(executor):
    done = [finished_future(42), finished_future(cancelled=True), finished_future(exception=OSError())]
    future = executor.submit(time.sleep, 0.5)
    finished, pending = cf.wait([*done, future], timeout=0.05, return_when=cf.ALL_COMPLETED)
    assert (finished, pending) == (set(done), {future})


def test_pending_calls_race(executor, tmp_path):
    gate = tmp_path / "gate"
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        fs = {executor.submit(wait_for_file, str(gate)) for _ in range(100)}
        gate.touch()
        cf.wait(fs, return_when=cf.ALL_COMPLETED)
    finally:
        sys.setswitchinterval(old)
    assert all(f.done() for f in fs)


# ------------------------------------------------------------ test_as_completed.py


def test_no_timeout(executor):
    done = [finished_future(42), finished_future(cancelled=True), finished_future(exception=OSError())]
    future1 = executor.submit(mul, 2, 21)
    future2 = executor.submit(mul, 7, 6)
    assert set(cf.as_completed([*done, future1, future2])) == {*done, future1, future2}


def test_zero_timeout(executor):
    done = [finished_future(42), finished_future(cancelled=True), finished_future(exception=OSError())]
    future1 = executor.submit(time.sleep, 2)
    completed = set()
    with pytest.raises(cf.TimeoutError):
        for future in cf.as_completed([*done, future1], timeout=0):
            completed.add(future)
    assert completed == set(done)


def test_duplicate_futures(executor):
    future1 = executor.submit(time.sleep, 0.5)
    assert len(list(cf.as_completed(itertools.repeat(future1, 3)))) == 1


def test_correct_timeout_exception_msg(executor, tmp_path):
    gate = tmp_path / "gate"
    pending, running = executor.submit(wait_for_file, str(gate)), executor.submit(wait_for_file, str(gate))
    with pytest.raises(cf.TimeoutError) as info:
        list(cf.as_completed([finished_future(cancelled=True), pending, running, finished_future(42)], timeout=0))
    assert str(info.value) == "2 (of 4) futures unfinished"
    gate.touch()


# ------------------------------------------------- test_future.py: RUNNING, cancel, stop


def test_a_started_call_is_running_and_cannot_be_cancelled(executor, tmp_path):
    gate = tmp_path / "gate"
    future = executor.submit(wait_for_file, str(gate), "done")
    wait_for(future.running, 30, what="the call to be reported running")
    assert not future.cancel()  # as CPython: a running call cannot be cancelled
    assert future.running() and not future.cancelled() and not future.done()
    gate.touch()
    assert future.result(timeout=30) == "done"


def test_a_call_not_started_is_cancelled(executor, tmp_path):
    gate = tmp_path / "gate"
    blockers = [executor.submit(wait_for_file, str(gate)) for _ in range(WORKERS)]
    wait_for(lambda: all(f.running() for f in blockers), 30, what="every worker to be busy")
    queued = executor.submit(abs, -1)
    assert not queued.running()
    assert queued.cancel() and queued.cancelled() and queued.done()
    with pytest.raises(cf.CancelledError):
        queued.result()
    gate.touch()
    assert [f.result(timeout=30) for f in blockers] == [None] * WORKERS


def test_stop_stops_a_running_call_and_the_executor_goes_on(executor, tmp_path):
    future = executor.submit(time.sleep, 600)
    wait_for(future.running, 30, what="the call to be reported running")
    assert future.stop()
    with pytest.raises(TaskStopped):
        future.result(timeout=0)
    # Its worker was killed and replaced: every worker serves the next calls.
    assert list(executor.map(abs, range(-20, 0))) == list(range(20, 0, -1))
    assert not future.stop()  # a finished call cannot be stopped again


def test_a_cancel_that_reaches_a_started_call_lets_it_run_to_its_end(executor, tmp_path):
    # cancel() succeeds for a call that started after its RUNNING could be known (the
    # report takes up to ~5 ms): the cluster is then told what it is told here, and the
    # call must run on in its worker, its result dropped, as CPython never kills a call.
    pid_file, gate, end_file = tmp_path / "pid", tmp_path / "gate", tmp_path / "end"
    future = executor.submit(pid_then_wait_then_write, str(pid_file), str(gate), str(end_file))
    wait_for(pid_file.exists, 30, what="the call to start")
    executor._futures.pop(future._index)  # what cancel() does before it tells the cluster
    future._job.cancel([future._index], stop=False)
    # Later calls of the same job come after the cancel on every hop: once one is back,
    # the agent has dropped the first.
    assert executor.submit(pid_then_wait_then_write, str(tmp_path / "p2"), str(gate), str(tmp_path / "e2"))
    wait_for((tmp_path / "p2").exists, 30, what="the next call to start")
    gate.touch()
    wait_for(end_file.exists, 30, what="the cancelled call to end")  # its worker was not killed
    assert not future.done()  # its result was dropped on the way


def test_stop_cancels_a_call_not_started_and_leaves_a_finished_one(executor):
    done = executor.submit(abs, -3)
    assert done.result(timeout=30) == 3
    assert not done.stop() and done.result() == 3
    gate_futures = [executor.submit(time.sleep, 600) for _ in range(WORKERS)]
    wait_for(lambda: all(f.running() for f in gate_futures), 30, what="every worker to be busy")
    queued = executor.submit(abs, -1)
    assert queued.stop() and queued.cancelled()
    for f in gate_futures:
        f.stop()


def test_done_callbacks_run_once_in_order_for_remote_calls(executor):
    seen = []
    future = executor.submit(mul, 6, 7)
    future.add_done_callback(lambda f: seen.append(("first", f.result())))
    future.add_done_callback(lambda f: seen.append(("second", f.result())))
    wait_for(lambda: len(seen) == 2, 30, what="both callbacks")
    future.add_done_callback(lambda f: seen.append(("late", f.result())))  # a done future calls at once
    assert seen == [("first", 42), ("second", 42), ("late", 42)]


# ------------------------------------------------------------ test_deadlock.py


def test_a_call_that_kills_its_worker_fails_alone_and_the_executor_goes_on(executor):
    # CPython's pool breaks (BrokenProcessPool fails every call); here the call is retried
    # on a fresh worker, fails with WorkerLost, and the others are untouched.
    lost = executor.submit(os._exit, 1)
    fine = [executor.submit(abs, -i) for i in range(10)]
    with pytest.raises(WorkerLost):
        lost.result(timeout=60)
    assert [f.result(timeout=30) for f in fine] == list(range(10))


# --------------------------------------------------------- submit never blocks


def test_submit_never_blocks_beyond_the_window(cluster, tmp_path):
    gate = tmp_path / "gate"
    with Executor(zk=cluster.zk, cluster=cluster.name, window=2) as ex:
        # Were submit to block on the window, this would never return: the calls wait for
        # the gate, which opens only after the submits.
        fs = [ex.submit(wait_for_file, str(gate), i) for i in range(20)]
        assert sum(f.running() for f in fs) <= 2
        gate.touch()
        assert [f.result(timeout=60) for f in fs] == list(range(20))
