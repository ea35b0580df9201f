"""Shipping a directory (``clusterctl submit --ship DIR``, ``Executor(ship=[...])``): the
bundle (cluster/client/bundle.py), what the coordinator keeps and sends each agent once,
and the agent's cache (agents/bundles.py). Unit tests first, then a real cluster."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import pytest
from helpers import PY, ROOT, scrape, wait_for

from agents.bundles import BundleCache, MissingBundle
from cluster.client import bundle
from cluster.contract import wire
from cluster.contract.config import CoordinatorConfig
from cluster.coordinator.actions import ToClient
from cluster.coordinator.directory import AgentDirectory
from cluster.coordinator.front import ClientFront
from cluster.coordinator.scheduler import Scheduler
from cluster.runtime.zkserver import free_ports

HELPER = """
import os


def look(x):
    with open("data/values.txt") as f:
        values = f.read().split()
    return {"value": values[x % len(values)], "cwd": os.getcwd(), "node": os.environ.get("CLUSTERD_NODE_ID"),
            "ignored_here": os.path.exists("secret.log"), "files": sorted(os.listdir("."))}


def scribble(x):
    import time

    with open("data/values.txt", "w") as f:
        f.write("scribbled")
    time.sleep(0.05)
    return {"node": os.environ.get("CLUSTERD_NODE_ID")}


def peek(x):
    with open("data/values.txt") as f:
        return {"text": f.read(), "node": os.environ.get("CLUSTERD_NODE_ID")}
"""


def project(tmp_path, name="proj"):
    """A directory to ship: a module, a data file, and a file its .gitignore ignores."""
    root = tmp_path / name
    (root / "data").mkdir(parents=True)
    (root / "shipped_helper.py").write_text(HELPER)
    (root / "data" / "values.txt").write_text("alpha beta gamma")
    (root / ".gitignore").write_text("*.log\n")
    (root / "secret.log").write_text("not for the cluster")
    return root


def names(b: bundle.Bundle) -> list[str]:
    return tarfile.open(fileobj=io.BytesIO(b.data)).getnames()


def archive(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def digest_of(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ the bundle


def test_the_same_files_make_the_same_bundle_whatever_their_times_and_place(tmp_path):
    first = bundle.build(project(tmp_path))
    copy = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "proj", copy)
    os.utime(copy / "data" / "values.txt", (1, 1))
    assert bundle.build(copy).digest == first.digest
    assert bundle.build(copy).data == first.data
    (copy / "data" / "values.txt").write_text("alpha beta delta")
    assert bundle.build(copy).digest != first.digest


def test_a_bundle_honours_gitignore_files_as_git_does(tmp_path):
    root = project(tmp_path)
    (root / "build").mkdir()
    (root / "build" / "out.bin").write_bytes(b"x")
    (root / "sub").mkdir()
    (root / "sub" / "keep.log").write_text("kept: the deeper .gitignore says so")
    (root / "sub" / "drop.log").write_text("dropped")
    (root / "sub" / ".gitignore").write_text("!keep.log\n")
    (root / ".gitignore").write_text("*.log\nbuild/\n/top-only.txt\n")
    (root / "top-only.txt").write_text("ignored at the top")
    (root / "sub" / "top-only.txt").write_text("not ignored below")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    assert sorted(names(bundle.build(root))) == [
        ".gitignore",
        "data/values.txt",
        "shipped_helper.py",
        "sub/.gitignore",
        "sub/keep.log",
        "sub/top-only.txt",
    ]


def test_a_directory_over_the_limit_is_refused_naming_its_largest_files(tmp_path):
    root = project(tmp_path)
    (root / "data" / "huge.bin").write_bytes(os.urandom(300_000))
    (root / "data" / "large.bin").write_bytes(os.urandom(200_000))
    with pytest.raises(bundle.BundleTooLarge) as refused:
        bundle.build(root, limit=256 * 1024)
    message = str(refused.value)
    assert "data/huge.bin (293.0 KiB)" in message and "data/large.bin" in message
    assert message.index("huge.bin") < message.index("large.bin")
    assert bundle.build(root, limit=1 << 20).files == 5


# ------------------------------------------------------------------ the wire


def test_bundle_messages_carry_sha256_digests():
    good = "a" * 64
    wire.decode(wire.Bundle(good, 3, frames=(b"archive",)).encode())
    wire.decode(wire.ForgetBundles(3, [good]).encode())
    for bad in ("A" * 64, "a" * 63, "../" + "a" * 61):
        with pytest.raises(wire.ProtocolError):
            wire.decode(wire.Bundle(bad, frames=(b"archive",)).encode())
        with pytest.raises(wire.ProtocolError):
            wire.decode(wire.ForgetBundles(3, [bad]).encode())
    with pytest.raises(wire.ProtocolError):
        wire.decode(wire.Bundle(good).encode())  # no archive


# ------------------------------------------------------------ the coordinator


def front(**settings) -> tuple[ClientFront, list[str]]:
    cfg = CoordinatorConfig(**settings)
    scheduler = Scheduler()
    directory = AgentDirectory(cfg, scheduler, "c1")
    dropped: list[str] = []
    return ClientFront(cfg, scheduler, directory, "c1", lambda i, why: dropped.append(why)), dropped


def submit(f: ClientFront, job_id: str, digests: list[str], now: float = 0.0):
    (reply,) = f.on_submit_job(b"c", wire.SubmitJob(job_id, "d", {"bundles": digests}, frames=(b"fn",)), now)
    assert isinstance(reply, ToClient)
    return reply.message


def test_a_job_naming_a_bundle_the_coordinator_does_not_hold_fails_clearly():
    f, dropped = front(max_payload=1000, client_timeout=30)
    data = b"an archive"
    reply = submit(f, "j", [digest_of(data)])
    assert isinstance(reply, wire.JobFailed) and reply.code == wire.JobFailure.MISSING_BUNDLE
    assert digest_of(data)[:12] in reply.reason
    f.on_bundle(b"c", wire.Bundle(digest_of(b"other"), frames=(data,)), 0.0)  # not what its digest names
    f.on_bundle(b"c", wire.Bundle(digest_of(b"x" * 1001), frames=(b"x" * 1001,)), 0.0)  # over the limit
    assert len(dropped) == 2 and len(f.bundles) == 0
    f.on_bundle(b"c", wire.Bundle(digest_of(data), frames=(data,)), 0.0)
    assert isinstance(submit(f, "j", [digest_of(data)]), wire.JobAccepted)
    assert isinstance(submit(f, "k", ["nonsense"]), wire.JobFailed)


def test_the_coordinator_keeps_a_bundle_while_a_job_needs_it_and_a_while_after():
    f, _ = front(client_timeout=30)
    data = b"an archive"
    f.on_bundle(b"c", wire.Bundle(digest_of(data), frames=(data,)), 0.0)
    submit(f, "j", [digest_of(data)], now=0.0)
    f.tick(100.0)
    assert digest_of(data) in f.bundles  # its job is open (the client beats)
    f.end_job("j", 100.0)
    f.tick(129.0)
    assert digest_of(data) in f.bundles
    f.tick(131.0)
    assert digest_of(data) not in f.bundles
    f.on_bundle(b"c", wire.Bundle(digest_of(data), frames=(data,)), 200.0)  # sent, but no job came
    f.tick(231.0)
    assert len(f.bundles) == 0


def test_an_agent_is_sent_each_bundle_once_per_connection():
    from helpers import agent_record

    from cluster.runtime.membership import MemberEvent

    f, _ = front()
    d = f.directory
    d.on_member(MemberEvent("joined", "a1", agent_record("a1")))
    d.peers["a1"].up = True
    assert d.unsent_bundles("a1", ["x", "y"]) == ["x", "y"]
    assert d.unsent_bundles("a1", ["y", "z"]) == ["z"]
    d.forget_bundles("a1", ["x"])
    assert d.unsent_bundles("a1", ["x", "y"]) == ["x"]
    d.write_off("a1", "connection closed", "closed")  # it may come back as a new process, its cache lost
    d.peers["a1"].up = True
    assert d.unsent_bundles("a1", ["x", "y", "z"]) == ["x", "y", "z"]


# --------------------------------------------------------------- the agent's cache


def cache(tmp_path, **settings) -> BundleCache:
    return BundleCache(str(tmp_path / "bundles"), **{"max_bytes": 10**9, "max_age": 100.0, "now": 0.0, **settings})


def test_a_bundle_is_unpacked_once_read_only_and_each_job_gets_its_own_copy(tmp_path):
    b = bundle.build(project(tmp_path))
    c = cache(tmp_path)
    c.receive(b.digest, b.data, 0.0)
    c.receive(b.digest, b.data, 1.0)
    assert c.counters == {"bundles_received": 2, "bundles_unpacked": 1}
    work = tmp_path / "work"
    work.mkdir()
    (path,) = c.open("j", [b.digest], str(work), 2.0)
    assert cached_files(path).keys() == expected_cache(b)  # compiled once, here: no worker writes there
    assert not os.stat(os.path.join(path, "data", "values.txt")).st_mode & 0o222
    assert os.stat(work / "data").st_mode & 0o200 and os.stat(work / "data" / "values.txt").st_mode & 0o200
    (work / "data" / "values.txt").write_text("changed by a task")  # the job's copy is its own
    assert open(os.path.join(path, "data", "values.txt")).read() == "alpha beta gamma"
    # A restarted agent takes the cache over, and unpacks nothing again.
    again = BundleCache(c.root, max_bytes=10**9, max_age=100.0, now=3.0)
    again.receive(b.digest, b.data, 3.0)
    assert again.counters["bundles_unpacked"] == 0


@pytest.mark.parametrize(
    "bad, why",
    [
        (member("../escape.py"), "relative name"),
        (member("/etc/evil"), "relative name"),
        (member("ok/../../escape"), "relative name"),
        (member("link", tarfile.SYMTYPE, "/etc/passwd"), "not a regular file"),
        (member("hard", tarfile.LNKTYPE, "../outside"), "not a regular file"),
        (member("dev", tarfile.CHRTYPE), "not a regular file"),
        (member("fifo", tarfile.FIFOTYPE), "not a regular file"),
    ],
)
def test_an_unsafe_archive_is_refused_and_its_jobs_are_told_why(tmp_path, bad, why):
    data = archive((member("fine.py"), b"x = 1\n"), (bad, b""))
    c = cache(tmp_path)
    c.receive(digest_of(data), data, 0.0)
    assert c.counters["bundles_unpacked"] == 0 and os.listdir(c.root) == []
    assert not (tmp_path / "escape.py").exists()
    with pytest.raises(MissingBundle, match=why):
        c.open("j", [digest_of(data)], str(tmp_path), 0.0)


def test_an_archive_that_is_not_what_its_digest_names_or_unpacks_too_large_is_refused(tmp_path):
    data = archive((member("big.bin"), b"x" * 1000))
    c = cache(tmp_path, max_bytes=999)
    c.receive(digest_of(b"another"), data, 0.0)
    c.receive(digest_of(data), data, 0.0)
    with pytest.raises(MissingBundle, match="digest"):
        c.open("j", [digest_of(b"another")], str(tmp_path), 0.0)
    with pytest.raises(MissingBundle, match="bundle_cache_bytes"):
        c.open("j", [digest_of(data)], str(tmp_path), 0.0)
    with pytest.raises(MissingBundle, match="did not reach"):
        c.open("j", ["f" * 64], str(tmp_path), 0.0)


def test_unused_bundles_go_by_age_and_by_size_but_never_one_a_job_uses(tmp_path):
    datas = [archive((member(f"f{i}"), bytes([i]) * 1000)) for i in range(4)]
    c = cache(tmp_path, max_bytes=2500, max_age=100.0)
    for t, data in enumerate(datas[:2]):
        c.receive(digest_of(data), data, float(t))
    c.hello()  # a new connection: the leader counts on none of them (see the next test)
    c.open("j", [digest_of(datas[0])], str(tmp_path / "w"), 5.0)
    assert c.sweep(50.0) == [] and len(c.entries) == 2
    c.sweep(200.0)  # datas[1] is too old; datas[0] is in use
    assert set(c.entries) == {digest_of(datas[0])}
    c.close("j", 210.0)
    for t, data in enumerate(datas[1:], start=220):
        c.receive(digest_of(data), data, float(t))
    c.hello()
    c.sweep(230.0)  # 4000 bytes in a cache of 2500: the least recently used go first
    assert set(c.entries) == {digest_of(datas[2]), digest_of(datas[3])}
    assert sorted(os.listdir(c.root)) == sorted(c.entries)


def test_a_bundle_the_leader_counts_on_goes_only_once_it_has_forgotten_it(tmp_path):
    data = archive((member("f"), b"x"))
    digest = digest_of(data)
    c = cache(tmp_path, max_age=10.0)
    c.receive(digest, data, 0.0)
    assert c.sweep(20.0) == [digest]  # ask the leader first
    c.asking([digest])
    assert c.sweep(21.0) == [] and digest in c.entries  # asked once, still here
    c.open("late", [digest], str(tmp_path / "w"), 22.0)  # a JobSpec sent before the leader's answer
    c.forgotten([digest])
    assert c.sweep(23.0) == [] and digest in c.entries
    c.close("late", 24.0)
    c.sweep(40.0)
    assert digest not in c.entries
    c.receive(digest, data, 50.0)
    c.hello()  # a new connection: the leader counts on nothing it sent before
    c.sweep(70.0)
    assert digest not in c.entries


# ------------------------------------------------------------------- a real cluster


def submit_cli(cluster, target: str, n: int, *ship: str) -> list[dict]:
    args = [a for d in ship for a in ("--ship", d)]
    res = cluster.clusterctl("submit", target, "--range", "0", str(n), *args)
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.returncode == 0 and len(rows) == n and all(r["ok"] for r in rows), (res.stderr, rows)
    return [r["result"] for r in sorted(rows, key=lambda r: r["index"])]


def test_a_shipped_module_and_data_file_reach_the_task(local_cluster, tmp_path):
    coordinator = local_cluster.coordinator()
    local_cluster.agent("s1", 2)
    local_cluster.wait_ready(coordinator, ["s1"])
    results = submit_cli(local_cluster, "shipped_helper:look", 6, str(project(tmp_path)))
    assert [r["value"] for r in results] == ["alpha", "beta", "gamma"] * 2
    for r in results:
        assert not r["ignored_here"] and "secret.log" not in r["files"], r
        assert {"shipped_helper.py", "data"} <= set(r["files"]), r


def test_a_detached_job_keeps_its_shipped_directory_in_its_spool(local_cluster, tmp_path):
    coordinator = local_cluster.coordinator()
    local_cluster.agent("s1", 2)
    local_cluster.wait_ready(coordinator, ["s1"])
    root = project(tmp_path)
    res = local_cluster.clusterctl(
        "submit", "shipped_helper:look", "--range", "0", "6", "--ship", str(root), "--detach", "--spool", str(tmp_path)
    )
    assert res.returncode == 0, res.stderr
    number = res.stdout.strip()
    shutil.rmtree(root)  # held durably: the job needs nothing of the submitting side's files
    waited = local_cluster.clusterctl("job", "wait", number, "--json")
    assert waited.returncode == 0 and json.loads(waited.stdout)["state"] == "done", (waited.stdout, waited.stderr)
    res = local_cluster.clusterctl("job", "results", number, "--ordered")
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["result"]["value"] for r in rows] == ["alpha", "beta", "gamma"] * 2, res.stderr


def test_a_directory_over_the_limit_is_refused_before_anything_is_sent(tmp_path):
    """No cluster at all: the refusal comes before the client looks for one."""
    root = project(tmp_path)
    (root / "data" / "huge.bin").write_bytes(os.urandom(wire.MAX_PAYLOAD_DEFAULT + 1))
    import subprocess

    res = subprocess.run(
        [PY, "-m", "cluster.cli.main", "submit", "shipped_helper:look", "--range", "0", "1", "--ship", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT), CLUSTER_ZK="127.0.0.1:1", CLUSTER_INSECURE="1"),
        cwd=ROOT,
    )
    assert res.returncode == 2 and "over the limit" in res.stderr and "data/huge.bin (64.0 MiB)" in res.stderr, (
        res.stderr
    )
    assert res.stdout == ""


def cached_files(path: str) -> dict[str, bytes]:
    return {
        os.path.relpath(os.path.join(top, name), path): open(os.path.join(top, name), "rb").read()
        for top, _, names in os.walk(path)
        for name in names
    }


def expected_cache(b: bundle.Bundle) -> set[str]:
    """What the cache holds of a bundle: its files, and the bytecode the agent compiled."""
    import importlib.util

    names = tarfile.open(fileobj=io.BytesIO(b.data)).getnames()
    return set(names) | {importlib.util.cache_from_source(n) for n in names if n.endswith(".py")}


def test_bundles_are_sent_once_to_each_agent_and_a_task_cannot_change_them(local_cluster, tmp_path):
    cport, p1, p2 = free_ports(3)
    coordinator = local_cluster.coordinator("--metrics-port", str(cport))
    local_cluster.agent("b1", 1, "--metrics-port", str(p1), "--work-dir", str(tmp_path / "b1"))
    local_cluster.agent("b2", 1, "--metrics-port", str(p2), "--work-dir", str(tmp_path / "b2"))
    local_cluster.wait_ready(coordinator, ["b1", "b2"])
    root = str(project(tmp_path))
    scribbled = submit_cli(local_cluster, "shipped_helper:scribble", 12, root)
    assert {r["node"] for r in scribbled} == {"b1", "b2"}, scribbled  # both agents got the bundle
    # The next job on both agents: its tasks read the bundle's file, not what the first job
    # wrote into its own copy.
    peeked = submit_cli(local_cluster, "shipped_helper:peek", 12, root)
    assert {r["node"] for r in peeked} == {"b1", "b2"}, peeked
    assert {r["text"] for r in peeked} == {"alpha beta gamma"}, peeked
    b = bundle.build(root)
    for node in ("b1", "b2"):
        cached = cached_files(str(tmp_path / node / "bundles" / b.digest))
        assert cached.keys() == expected_cache(b) and cached["data/values.txt"] == b"alpha beta gamma"
    wait_for(lambda: sum(finished(p) for p in (p1, p2)) == 24, what="the agents' metrics of every task")
    for port in (p1, p2):
        metrics = scrape(port)
        assert metrics["clusterd_bundles_received_total"] == 1.0
        assert metrics["clusterd_bundles_unpacked_total"] == 1.0


def finished(port: int) -> float:
    """Tasks an agent finished, as its metrics say: its bundles' counts are exported with them."""
    return scrape(port).get('clusterd_tasks_total{outcome="ok"}', 0.0)


@pytest.mark.parametrize("relayed", [False, True], ids=["direct", "through-a-relay"])
def test_an_agent_removes_unused_bundles_and_the_leader_sends_them_again(local_cluster, tmp_path, relayed):
    port = free_ports(1)[0]
    work = tmp_path / "agent-work"
    coordinator = local_cluster.coordinator()
    via = ["--relay", "rack1"] if relayed else []
    if relayed:
        local_cluster.relay("rack1")
    local_cluster.agent("r1", 1, "--metrics-port", str(port), "--work-dir", str(work), "--bundle-max-age", "0", *via)
    local_cluster.wait_ready(coordinator, ["r1"])
    root = str(project(tmp_path))
    assert {r["text"] for r in submit_cli(local_cluster, "shipped_helper:peek", 2, root)} == {"alpha beta gamma"}
    # Its job over, the bundle is due at once: the agent asks the leader to forget it, then removes it.
    wait_for(lambda: os.listdir(work / "bundles") == [], what="the agent to remove the bundle")
    assert {r["text"] for r in submit_cli(local_cluster, "shipped_helper:peek", 2, root)} == {"alpha beta gamma"}
    wait_for(lambda: finished(port) == 4, what="the agent's metrics of every task")
    metrics = scrape(port)
    assert metrics["clusterd_bundles_received_total"] == 2.0
    assert metrics["clusterd_bundles_unpacked_total"] == 2.0


def test_an_executor_ships_directories(local_cluster, tmp_path):
    from cluster import Executor

    coordinator = local_cluster.coordinator()
    local_cluster.agent("e1", 2)
    local_cluster.wait_ready(coordinator, ["e1"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "shipped_helper.py").write_text("def look(x):\n    return 'the second bundle'\n")
    with Executor(zk=local_cluster.zk, cluster=local_cluster.name, ship=[project(tmp_path), other]) as ex:

        def use(x):
            import shipped_helper  # the first bundle's, as on sys.path

            return shipped_helper.look(x)["value"], open("data/values.txt").read()

        assert ex.submit(use, 1).result(timeout=60) == ("beta", "alpha beta gamma")
        assert ex.submit(lambda x: __import__("shipped_helper").look(x)["value"], 2).result(timeout=60) == "gamma"


def test_a_new_leader_gets_the_bundles_with_the_jobs_resubmitted_to_it(local_cluster, tmp_path):
    import signal

    from cluster import Executor

    port = free_ports(1)[0]
    first = local_cluster.coordinator("--zk-session-timeout", "2", name="c1")
    local_cluster.agent("f1", 1, "--metrics-port", str(port))
    local_cluster.wait_ready(first, ["f1"])
    local_cluster.coordinator("--zk-session-timeout", "2", name="c2")
    with Executor(zk=local_cluster.zk, cluster=local_cluster.name, ship=[project(tmp_path)]) as ex:

        def use(x):
            import shipped_helper

            return shipped_helper.look(x)["value"]

        assert ex.submit(use, 0).result(timeout=60) == "alpha"
        old = local_cluster.leader()
        first.signal(signal.SIGKILL)
        wait_for(lambda: (leader := local_cluster.leader()) is not None and leader.epoch > old.epoch, 30)
        assert ex.submit(use, 1).result(timeout=60) == "beta"  # its job, resubmitted to the new leader
        assert ex.submit(lambda x: use(x).upper(), 2).result(timeout=60) == "GAMMA"  # a new job
    wait_for(lambda: finished(port) == 3, what="the agent's metrics of every task")
    metrics = scrape(port)
    # Each leader sent it once; the agent unpacked it once.
    assert metrics["clusterd_bundles_received_total"] == 2.0
    assert metrics["clusterd_bundles_unpacked_total"] == 1.0
