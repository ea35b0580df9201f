"""`clusterctl dashboard` against a real cluster: its pages in a real headless browser
(Debian's Chromium, driven by Playwright), and its HTTP side against bad input."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from helpers import PY, ROOT, LineReader, agent_record, wait_for

from cluster.contract import config, layout, security
from cluster.dashboard.model import State
from cluster.dashboard.server import QUEUE, Hub
from cluster.dashboard.settings import DashboardConfig

CHROMIUM = "/usr/bin/chromium"
# DASHBOARD_SCREENSHOTS=1 saves the pages' screenshots over docs/dashboard/*.png (the README shows them).
SHOTS = ROOT / "docs" / "dashboard" if os.environ.get("DASHBOARD_SCREENSHOTS") else Path(tempfile.gettempdir())


class Dashboard:
    def __init__(self, cluster, *extra: str, name: str = "dashboard"):
        self.proc = cluster._start(name, [PY, "-m", "cluster.cli.main", "dashboard", "--port", "0", "--json", *extra])

        def started() -> dict | None:
            for line in self.proc.text().splitlines():
                if line.startswith("{"):
                    return json.loads(line)
            assert self.proc.popen.poll() is None, self.proc.text()
            return None

        self.info = wait_for(started, 20, what="the dashboard's startup line")
        self.url, self.port, self.token = self.info["url"], self.info["port"], self.info["token"]

    def base(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is not installed (make test installs Debian's chromium)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield chromium
        chromium.close()


class Page:
    """A page and the console errors and uncaught exceptions it logged."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.goto(url)

    def show(self, page: str) -> None:
        self.page.evaluate(f"location.hash = {json.dumps(page)}")

    def shot(self, name: str) -> Path:
        path = SHOTS / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path


# ------------------------------------------------------------------ the browser


def test_the_fleet_page_lists_the_nodes_and_shows_a_killed_agent_gone_within_two_seconds(running_cluster, browser):
    dashboard = Dashboard(running_cluster)
    page = Page(browser, dashboard.url)
    p = page.page
    p.wait_for_selector('[data-node="a1"][data-state="ready"]', timeout=15000)
    p.wait_for_selector('[data-node="a2"][data-state="ready"]', timeout=15000)
    assert p.inner_text("#node-count") == "2"
    assert p.inner_text("#workers").endswith("/ 4")
    assert "joined" in p.inner_text("#timeline")
    p.fill("#filter", "a2")
    p.wait_for_function("() => document.querySelectorAll('[data-node]').length === 1")
    p.fill("#filter", "")
    p.wait_for_function("() => document.querySelectorAll('[data-node]').length === 2")
    page.shot("fleet")

    agent = next(proc for proc in running_cluster.procs if proc.name == "a2")
    agent.signal(signal.SIGKILL)
    # Gone: the leader wrote it off (unreachable) or ZooKeeper dropped it; within 2 s either way.
    p.wait_for_function(
        """() => { const row = document.querySelector('[data-node="a2"]');
                   return !row || row.dataset.state === 'unreachable'; }""",
        timeout=2000,
    )
    p.wait_for_function("() => document.querySelector('#timeline').innerText.match(/a2 (written off|left)/)")

    page.show("coordinator")
    p.wait_for_function("() => document.querySelector('#coordinator').innerText.includes('epoch')")
    leader = running_cluster.leader()
    assert leader.coordinator_id in p.inner_text("#coordinator")
    page.shot("coordinator")
    assert page.errors == []


WORK = """
import time
def work(x):
    print(f"working on {x}", flush=True)
    if x % 10 == 3:
        raise ValueError(f"bad input {x}")
    time.sleep(0.1)
    return x
"""


@pytest.fixture
def no_holder_left(tmp_path):
    """The detached job's holder (its spool is in this test's directory) goes with the test."""
    yield
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "cluster.client.holder" in cmdline and any(arg.startswith(str(tmp_path)) for arg in cmdline):
            proc.kill()


def test_a_running_jobs_progress_moves_and_its_page_shows_failures_and_output(
    running_cluster, browser, tmp_path, no_holder_left
):
    dashboard = Dashboard(running_cluster)
    page = Page(browser, dashboard.url)
    p = page.page
    page.show("jobs")
    (tmp_path / "work.py").write_text(WORK)
    res = running_cluster.clusterctl(
        "submit", f"{tmp_path / 'work.py'}:work", "--range", "0", "100", "--detach", "--spool", str(tmp_path)
    )
    assert res.returncode == 0, res.stderr
    job_id = int(res.stdout.strip())
    row = f'[data-job="{job_id}"][data-state="running"]'
    done = f"+document.querySelector('{row}')?.dataset.done"
    p.wait_for_function(f"() => {done} > 0")
    first = int(p.get_attribute(row, "data-done"))
    p.wait_for_function(f"() => {done} > {first}")  # it moves
    page.shot("jobs")
    page.show(f"jobs/{job_id}")
    p.wait_for_function("() => document.querySelector('#job-summary').innerText.includes('work.py:work')")
    p.wait_for_function("() => document.querySelector('#job-output').innerText.includes('working on')")
    assert "ValueError: bad input 3" in p.inner_text("#job-failures")
    page.shot("job")
    page.show("jobs")
    p.wait_for_selector(f'[data-job="{job_id}"][data-state="failed"][data-done="100"]', timeout=60000)
    page.show("work")
    for chart in ("tps", "queued", "running", "failed", "wait"):
        p.wait_for_selector(f"#chart-{chart} .uplot")
    page.shot("work")
    assert page.errors == []


# ------------------------------------------------------------------ over HTTP


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_off_loopback_the_token_is_required_and_bad_requests_get_clear_answers(local_cluster, browser, tmp_path):
    local_cluster.coordinator()
    dashboard = Dashboard(local_cluster, "--host", "0.0.0.0")
    base = dashboard.base()
    status, _, body = get(f"{base}/")
    assert status == 401 and b"token" in body
    assert get(f"{base}/?token=not-the-token")[0] == 403
    assert get(f"{base}/api/events", {"Authorization": "Bearer wrong"})[0] == 403
    status, headers, _ = get(f"{base}/?token={dashboard.token}")
    assert status == 302 and headers["Location"] == "./" and "clusterd_dashboard_" in headers["Set-Cookie"]
    cookie = headers["Set-Cookie"].split(";")[0]
    status, headers, _ = get(f"{base}/", {"Cookie": cookie})
    assert status == 200 and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert get(f"{base}/", {"Authorization": f"Bearer {dashboard.token}"})[0] == 200
    assert get(f"{base}/no/such/page", {"Cookie": cookie})[0] == 404
    assert get(f"{base}/api/jobs/999999", {"Cookie": cookie})[0] == 404
    assert get(f"{base}/api/jobs/x", {"Cookie": cookie})[0] == 404
    # Garbage in ZooKeeper where a job's and an agent's records go: skipped, never a crash.
    local_cluster.kazoo.create(
        f"{layout.jobs_path(local_cluster.name)}/{layout.job_node(777)}", b"\xff{", makepath=True
    )
    local_cluster.kazoo.create(layout.agent_path(local_cluster.name, "junk"), b"[1, 2]", makepath=True)
    assert get(f"{base}/api/jobs/777", {"Cookie": cookie})[0] == 404
    assert get(f"{base}/", {"Cookie": cookie})[0] == 200
    assert get(f"{base}/healthz")[0] == 200  # for health checks: no token, nothing to see
    # A browser given the URL goes on with the cookie, the token gone from its address bar.
    assert dashboard.url == f"http://{socket.gethostname()}:{dashboard.port}/?token={dashboard.token}"
    page = Page(browser, f"{base}/?token={dashboard.token}")
    page.page.wait_for_selector("#link.up")
    assert "token" not in page.page.url and page.errors == []
    # A token given in a file is required on loopback too, and never printed.
    (tmp_path / "token").write_text("s3cret-token\n")
    given = Dashboard(local_cluster, "--token-file", str(tmp_path / "token"), name="dashboard-given")
    assert given.token == "" and "s3cret" not in given.proc.text()
    assert get(f"{given.base()}/")[0] == 401
    assert get(f"{given.base()}/", {"Authorization": "Bearer s3cret-token"})[0] == 200
    # On loopback (the default), no token.
    loopback = Dashboard(local_cluster, name="dashboard-lo")
    assert loopback.token == "" and get(f"{loopback.base()}/")[0] == 200


def test_browsers_that_leave_mid_stream_and_a_thousand_idle_connections_leave_it_serving(local_cluster):
    local_cluster.coordinator()
    local_cluster.agent("a1", 1)
    dashboard = Dashboard(local_cluster)
    proc = psutil.Process(dashboard.proc.pid)
    wait_for(lambda: get(f"{dashboard.base()}/healthz")[0] == 200, what="the dashboard to answer")
    baseline = proc.num_fds()

    for _ in range(20):  # read the snapshot's first bytes and vanish
        with socket.create_connection(("127.0.0.1", dashboard.port), timeout=10) as s:
            s.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN

    async def idle_crowd() -> None:
        conns = [await asyncio.open_connection("127.0.0.1", dashboard.port) for _ in range(1000)]
        wait_for(lambda: proc.num_fds() >= baseline + 900, what="the dashboard to accept 1000 connections")
        # With a thousand idle connections open, a normal request still gets its answer.
        loop = asyncio.get_running_loop()
        status, _, body = await loop.run_in_executor(None, get, f"{dashboard.base()}/")
        assert status == 200 and b"clusterd" in body
        for _, writer in conns:
            writer.close()

    asyncio.run(idle_crowd())
    wait_for(lambda: proc.num_fds() <= baseline + 5, what="the dashboard's descriptors to come back down")
    assert get(f"{dashboard.base()}/")[0] == 200
    assert dashboard.proc.popen.poll() is None


def test_the_whole_page_is_under_300_kib():
    static = ROOT / "cluster" / "dashboard" / "static"
    size = sum(f.stat().st_size for f in static.rglob("*") if f.is_file())
    assert size < 300 * 1024, size


def test_it_serves_https_with_a_certificate(local_cluster, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    dashboard = Dashboard(local_cluster, "--certfile", str(cert), "--keyfile", str(key))
    assert dashboard.url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(dashboard.url, context=context, timeout=10) as answer:
        assert answer.status == 200 and b"clusterd" in answer.read()
    with pytest.raises(OSError):  # plain HTTP on the TLS port: the connection is closed
        urllib.request.urlopen(f"http://127.0.0.1:{dashboard.port}/", timeout=10).read()


def test_clusterctl_up_starts_a_dashboard_prints_its_url_and_stops_it():
    up = subprocess.Popen(
        [PY, "-m", "cluster.cli.main", "up", "--workers", "1", "--dashboard-port", "0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        lines = LineReader(up.stderr)
        while "dashboard at" not in (line := lines.next(60)):
            pass
        url = line.split("dashboard at ", 1)[1].strip()
        status, _, body = get(url)
        assert status == 200 and b"clusterd" in body
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        with pytest.raises(urllib.error.URLError):
            get(url)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_a_browser_too_slow_to_read_is_dropped_and_the_others_keep_their_stream():

    async def run() -> None:
        state = State()
        hub = Hub(state, asyncio.get_running_loop())
        slow, _ = hub.subscribe()
        fast, snapshot = hub.subscribe()
        assert snapshot.startswith(b"event: snapshot\n")
        for i in range(QUEUE + 5):
            hub.apply(state.member_joined, agent_record(f"n{i}"), float(i))
            hub.flush()
            while not fast.empty():
                assert (await fast.get()).startswith(b"event: patch\n")
        assert slow not in hub.streams and fast in hub.streams
        left = [slow.get_nowait() for _ in range(slow.qsize())]
        assert left[-1] is None  # its stream ends; EventSource reconnects to a fresh snapshot
        hub.unsubscribe(fast)
        assert not hub.watched.is_set()

    asyncio.run(run())


def streamed(url: str, done, timeout: float = 30.0) -> dict:
    """What the page would know from the event stream of ``url`` (the last head, the rows by
    id), once ``done(known)`` says so; AssertionError after ``timeout`` seconds."""
    known: dict = {"head": {}, "nodes": {}}
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(url, timeout=20) as stream:
        for raw in stream:  # a keep-alive comment every 15 s at least: the deadline is looked at
            line = raw.decode()
            if line.startswith("data: "):
                message = json.loads(line[6:])
                known["head"] = message.get("head") or known["head"]
                nodes = message.get("nodes", {})
                known["nodes"].update((row["id"], row) for row in nodes.get("set", []))
                for gone in nodes.get("del", []):
                    known["nodes"].pop(gone, None)
                if done(known):
                    return known
            assert time.monotonic() < deadline, f"the stream never showed it; it showed {known}"
    raise AssertionError("the stream ended")


def test_on_a_secured_cluster_it_asks_the_leader_with_the_client_keys(local_cluster, tmp_path):
    keys = tmp_path / "keys"
    security.generate(keys)
    local_cluster.extra_env.update(CLUSTER_INSECURE="", CLUSTER_KEYS=str(keys))
    local_cluster.coordinator()
    local_cluster.agent("a1", 1)
    dashboard = Dashboard(local_cluster)
    # The leader answered over CURVE with the client keys: its status (the agent ready) is streamed.
    known = streamed(
        f"{dashboard.base()}/api/events",
        lambda k: k["head"].get("status_error") == "" and k["nodes"].get("a1", {}).get("hb") is not None,
    )
    assert known["head"]["leader"]["curve_key"] and known["head"]["totals"]["queued"] == 0
    # Without the keys it cannot ask, and says why instead of failing.
    blind = Dashboard(local_cluster, "--keys", "", name="dashboard-no-keys")
    streamed(f"{blind.base()}/api/events", lambda k: "requires CURVE keys" in k["head"].get("status_error", ""))


def test_dashboard_install_writes_a_unit_like_the_daemons_and_a_config_it_reads(tmp_path):
    argv = [PY, "-m", "cluster.cli.main", "dashboard", "install", "--root", str(tmp_path), "--json"]
    argv += ["--exec", "/opt/clusterd/venv/bin/clusterctl", "--zk", "zk1:2181", "--cluster", "prod", "--insecure"]
    argv += ["--host", "0.0.0.0", "--token-file", "/etc/clusterd/dashboard.token"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["role"] == "dashboard" and all(c["status"] == "skipped" for c in report["commands"])
    unit = (tmp_path / "etc/systemd/system/cluster-dashboard.service").read_text()
    assert unit == (ROOT / "systemd" / "cluster-dashboard.service").read_text()
    assert "ExecStart=/opt/clusterd/venv/bin/clusterctl dashboard --config /etc/clusterd/dashboard.toml" in unit
    cfg = config.load(DashboardConfig, tmp_path / "etc/clusterd/dashboard.toml", environ={})
    assert (cfg.zk, cfg.cluster, cfg.host, cfg.token_file) == (
        "zk1:2181",
        "prod",
        "0.0.0.0",
        "/etc/clusterd/dashboard.token",
    )
    res = subprocess.run(argv[:4] + ["uninstall", "--root", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and not (tmp_path / "etc/clusterd/dashboard.toml").exists()


def test_a_failover_shows_the_new_leader_its_epoch_and_the_standbys(local_cluster):
    first = local_cluster.coordinator("--zk-session-timeout", "2", name="c1")
    wait_for(lambda: local_cluster.leader() is not None, what="a leader")
    local_cluster.coordinator("--zk-session-timeout", "2", name="c2")
    dashboard = Dashboard(local_cluster)
    events = f"{dashboard.base()}/api/events"
    before = streamed(events, lambda k: k["head"].get("standbys") == 1 and k["head"].get("leader"))["head"]
    first.signal(signal.SIGKILL)
    after = streamed(events, lambda k: len(k["head"].get("failovers", [])) == 2)["head"]
    old, new = before["leader"], after["leader"]
    assert new["coordinator_id"] != old["coordinator_id"] and new["epoch"] > old["epoch"]
    assert after["failovers"][-1]["from"] == old["coordinator_id"] and after["standbys"] == 0
