"""`clusterctl agent|coordinator install|uninstall`: files only, always under --root
(or --dry-run), so nothing here touches this machine's systemd or /etc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from cluster.cli import install, service_files
from cluster.contract import config

CLUSTERCTL = Path(sys.executable).with_name("clusterctl")
UNIT = {r: Path("etc/systemd/system") / f"cluster-{r}.service" for r in install.ROLES}
CONF = {r: Path("etc/clusterd") / f"{r}.toml" for r in install.ROLES}
SYSUSERS = Path("etc/sysusers.d/clusterd.conf")

pytestmark = pytest.mark.skipif(not CLUSTERCTL.exists(), reason="clusterctl is not installed in this environment")


# What a staged install's unit runs: where docs/operations.md puts the venv. The default,
# this test run's own venv, may lie where the unit could not run it (a clone under /tmp),
# which the pre-flight refuses; tests/test_install_preflight.py tests that.
EXEC = "/opt/clusterd/venv/bin/clusterctl"


def clusterctl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # Wide columns: help text is checked for whole phrases. No CLUSTER_* from the caller.
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    if "install" in args and "--root" in args and "--exec" not in args:
        args = (*args, "--exec", EXEC)
    return subprocess.run(
        [str(CLUSTERCTL), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**base, "COLUMNS": "200", **(env or {})},
    )


def tree(root: Path, dir_mtimes: bool = True) -> dict[str, tuple[bytes | None, int, int]]:
    """Every path under root: (bytes or None for a directory, mode, mtime_ns). A directory's
    mtime moves whenever an entry comes or goes, so comparisons across both leave it out."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        file = path.is_file()
        out[str(path.relative_to(root))] = (
            path.read_bytes() if file else None,
            st.st_mode & 0o7777,
            st.st_mtime_ns if file or dir_mtimes else 0,
        )
    return out


def with_keys(root: Path) -> Path:
    keys = root / "etc/clusterd/keys"
    keys.mkdir(parents=True)
    (keys / "agent.key_secret").write_text("secret\n")
    return keys


AGENT = [
    "--zk",
    "zk1:2181,zk2:2181",
    "--cluster",
    "prod",
    "--keys",
    "/etc/clusterd/keys",
    "--label",
    "rack=r12",
    "--label",
    "zone=b",
    "--workers",
    "4",
    "--metrics-port",
    "9464",
    "--advertise",
    "10.0.0.7",
]


def agent_install(root: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    res = clusterctl("agent", "install", "--root", str(root), *extra, env=env)
    assert res.returncode == 0, res.stderr
    return res


def actions(res: subprocess.CompletedProcess) -> dict[str, str]:
    doc = json.loads(res.stdout)
    return {str(Path(f["path"]).relative_to(doc["root"])): f["action"] for f in doc["files"]}


def test_agent_install_writes_unit_config_and_user(tmp_path):
    with_keys(tmp_path)
    # The shell's environment must not leak into the node's file.
    res = agent_install(tmp_path, *AGENT, env={"CLUSTER_AGENT_PREFETCH": "9", "CLUSTER_ZK_AUTH": "/nope"})
    lines = res.stdout.splitlines()
    for rel in (SYSUSERS, CONF["agent"], UNIT["agent"]):
        assert any(line.startswith("created") and line.split()[1] == str(tmp_path / rel) for line in lines), lines
    assert [line.split()[0] for line in lines if "systemctl" in line or "sysusers " in line] == ["skipped"] * 3

    unit = (tmp_path / UNIT["agent"]).read_text()
    assert unit == install.render_unit("agent", EXEC)
    assert f"ExecStart={EXEC} agent --config /etc/clusterd/agent.toml\n" in unit
    assert "User=clusterd\n" in unit and "KillMode=mixed\n" in unit and "Type=notify\n" in unit

    cfg = config.load(config.AgentConfig, tmp_path / CONF["agent"], environ={})
    assert (cfg.zk, cfg.cluster, cfg.keys, cfg.insecure) == ("zk1:2181,zk2:2181", "prod", "/etc/clusterd/keys", False)
    assert (cfg.labels, cfg.workers, cfg.metrics_port, cfg.advertise) == (
        {"rack": "r12", "zone": "b"},
        "4",
        9464,
        "10.0.0.7",
    )
    assert (cfg.prefetch, cfg.zk_auth) == (2, "")
    text = (tmp_path / CONF["agent"]).read_text()
    assert text.startswith("# Written by `clusterctl agent install`") and "[agent]\n" in text

    assert 'u clusterd - "clusterd daemons"' in (tmp_path / SYSUSERS).read_text()
    modes = {rel: (tmp_path / rel).stat().st_mode & 0o777 for rel in (SYSUSERS, CONF["agent"], UNIT["agent"])}
    assert modes == {SYSUSERS: 0o644, CONF["agent"]: 0o640, UNIT["agent"]: 0o644}
    assert (tmp_path / "etc/clusterd/keys/agent.key_secret").read_text() == "secret\n"  # referenced, not copied
    assert sorted(p.name for p in (tmp_path / "etc/clusterd").iterdir()) == ["agent.toml", "keys"]


def test_installing_twice_changes_nothing(tmp_path):
    with_keys(tmp_path)
    agent_install(tmp_path, *AGENT)
    before = tree(tmp_path)
    res = agent_install(tmp_path, *AGENT, "--json")
    assert tree(tmp_path) == before  # bytes, modes and mtimes: nothing was rewritten
    assert set(actions(res).values()) == {"unchanged"}
    # Labels in another order are the same settings.
    res = agent_install(tmp_path, *AGENT[:6], "--label", "zone=b", "--label", "rack=r12", *AGENT[10:])
    assert [line.split()[0] for line in res.stdout.splitlines() if "/etc/" in line.split()[1]] == ["unchanged"] * 3
    assert tree(tmp_path) == before


def test_changed_options_update_only_the_config(tmp_path):
    with_keys(tmp_path)
    agent_install(tmp_path, *AGENT)
    before = tree(tmp_path)
    res = agent_install(tmp_path, *AGENT[:-2], "--advertise", "10.0.0.8", "--json")
    assert actions(res) == {str(SYSUSERS): "unchanged", str(CONF["agent"]): "updated", str(UNIT["agent"]): "unchanged"}
    after = tree(tmp_path)
    # (Its directory's mtime moves too: the file is replaced atomically through a rename.)
    assert {k for k in after if after[k] != before.get(k) and after[k][0] is not None} == {str(CONF["agent"])}
    assert config.load(config.AgentConfig, tmp_path / CONF["agent"], environ={}).advertise == "10.0.0.8"
    # The text report names the change and the restart it would ask for.
    res = agent_install(tmp_path, *AGENT)
    assert any(line.startswith("updated") and "agent.toml" in line for line in res.stdout.splitlines())
    assert "skipped      systemctl try-restart cluster-agent.service" in res.stdout


def test_uninstall_leaves_only_what_was_there(tmp_path):
    with_keys(tmp_path)
    before = tree(tmp_path, dir_mtimes=False)
    agent_install(tmp_path, *AGENT)
    res = clusterctl("agent", "uninstall", "--root", str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr
    assert set(actions(res).values()) == {"removed"}
    assert [c["status"] for c in json.loads(res.stdout)["commands"]] == ["skipped", "skipped"]  # disable, reload
    assert tree(tmp_path, dir_mtimes=False) == before  # the keys (and their directory) untouched, the rest gone
    res = clusterctl("agent", "uninstall", "--root", str(tmp_path))  # again: nothing to do, not an error
    assert res.returncode == 0 and "removed" not in res.stdout and res.stdout.count("absent") == 3


def test_uninstall_keeps_a_config_it_did_not_write(tmp_path):
    conf = tmp_path / CONF["agent"]
    conf.parent.mkdir(parents=True)
    conf.write_text('zk = "hand:2181"\n')
    res = clusterctl("agent", "uninstall", "--root", str(tmp_path))
    assert res.returncode == 0 and "kept" in res.stdout and conf.read_text() == 'zk = "hand:2181"\n'


def test_the_user_snippet_goes_with_the_last_role(tmp_path):
    agent_install(tmp_path, "--insecure")
    res = clusterctl("coordinator", "install", "--root", str(tmp_path), "--insecure", "--json")
    assert res.returncode == 0, res.stderr
    assert actions(res)[str(SYSUSERS)] == "unchanged"  # shared by both roles, byte for byte
    res = clusterctl("agent", "uninstall", "--root", str(tmp_path))
    assert res.returncode == 0 and (tmp_path / SYSUSERS).exists() and (tmp_path / UNIT["coordinator"]).exists()
    assert "kept" in res.stdout and "coordinator is still installed" in res.stdout
    res = clusterctl("coordinator", "uninstall", "--root", str(tmp_path))
    assert res.returncode == 0 and list(tmp_path.iterdir()) == []


def test_dry_run_writes_nothing_and_lists_files_and_commands(tmp_path):
    with_keys(tmp_path)
    before = tree(tmp_path)
    res = agent_install(tmp_path, *AGENT, "--dry-run")
    assert tree(tmp_path) == before
    out = res.stdout
    for rel in (SYSUSERS, CONF["agent"], UNIT["agent"]):
        assert f"would create {tmp_path / rel}" in out
    assert '    zk = "zk1:2181,zk2:2181"\n' in out and f"    ExecStart={EXEC} agent" in out  # the contents
    # Against a real installation: the changes as a diff, and no uninstall either.
    agent_install(tmp_path, *AGENT)
    before = tree(tmp_path)
    res = agent_install(tmp_path, *AGENT[:-2], "--advertise", "10.0.0.8", "--dry-run")
    assert f"would update {tmp_path / CONF['agent']}" in res.stdout
    assert '    -advertise = "10.0.0.7"\n    +advertise = "10.0.0.8"\n' in res.stdout
    res = clusterctl("agent", "uninstall", "--root", str(tmp_path), "--dry-run")
    assert res.returncode == 0 and res.stdout.count("would remove") == 3 and tree(tmp_path) == before


@pytest.mark.skipif(Path("/etc/systemd/system/cluster-agent.service").exists(), reason="an agent is installed here")
def test_dry_run_on_this_system_lists_the_systemd_commands():
    # No --root: the real paths, and the commands it would run, none of them run.
    res = clusterctl("agent", "install", "--insecure", "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["dry_run"] is True and doc["root"] is None
    assert [(f["path"], f["action"]) for f in doc["files"]] == [
        (
            "/etc/sysusers.d/clusterd.conf",
            "created" if not Path("/etc/sysusers.d/clusterd.conf").exists() else "unchanged",
        ),
        ("/etc/clusterd/agent.toml", "created"),
        ("/etc/systemd/system/cluster-agent.service", "created"),
    ]
    assert [c["command"] for c in doc["commands"]] == [
        "systemd-sysusers /etc/sysusers.d/clusterd.conf",
        "systemctl daemon-reload",
        "systemctl enable --now cluster-agent.service",
    ]
    assert {c["status"] for c in doc["commands"]} == {"would run"}
    assert not Path("/etc/clusterd/agent.toml").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--insecure", "--workers", "lots"], "--workers must be 'auto' or a positive integer, got 'lots'"),
        (["--insecure", "--label", "nonsense"], "label 'nonsense' must look like key=value"),
        (["--insecure", "--metrics-port", "http"], "--metrics-port: 'http' is not a valid int"),
        (["--insecure", "--bind", "0.0.0.0:7100"], "--bind must look like tcp://HOST:PORT"),
        ([], "give --keys DIR"),
        (["--keys", "/etc/clusterd/keys", "--insecure"], "--keys and --insecure contradict each other"),
        (["--insecure", "--exec", "bin/clusterctl"], "--exec must be an absolute path"),
        (["--insecure", "--exec", "/home/me/venv/bin/clusterctl"], "ProtectHome=yes hides"),
    ],
)
def test_a_bad_option_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    res = clusterctl("agent", "install", "--root", str(tmp_path), *args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("clusterctl: ") and res.stderr.count("\n") == 1 and message in res.stderr
    assert res.stdout == "" and list(tmp_path.iterdir()) == []


def test_coordinator_install_and_uninstall(tmp_path):
    with_keys(tmp_path)
    before = tree(tmp_path, dir_mtimes=False)
    res = clusterctl(
        "coordinator",
        "install",
        "--root",
        str(tmp_path),
        "--zk",
        "zk1:2181",
        "--cluster",
        "prod",
        "--keys",
        "/etc/clusterd/keys",
        "--bind",
        "tcp://0.0.0.0:5555",
        "--metrics-port",
        "9465",
        "--exec",
        "/opt/clusterd/venv/bin/clusterctl",
    )
    assert res.returncode == 0, res.stderr
    # --exec names the clusterctl of the target system; the default unit is the one in systemd/.
    assert (
        (tmp_path / UNIT["coordinator"]).read_text()
        == install.render_unit("coordinator")
        == (ROOT / "systemd/cluster-coordinator.service").read_text()
    )
    cfg = config.load(config.CoordinatorConfig, tmp_path / CONF["coordinator"], environ={})
    assert (cfg.zk, cfg.cluster, cfg.keys, cfg.bind, cfg.metrics_port) == (
        "zk1:2181",
        "prod",
        "/etc/clusterd/keys",
        "tcp://0.0.0.0:5555",
        9465,
    )
    assert "[coordinator]\n" in (tmp_path / CONF["coordinator"]).read_text()
    assert (tmp_path / CONF["coordinator"]).stat().st_mode & 0o777 == 0o640
    res = clusterctl("coordinator", "uninstall", "--root", str(tmp_path))
    assert res.returncode == 0 and tree(tmp_path, dir_mtimes=False) == before
    res = clusterctl("coordinator", "install", "--root", str(tmp_path), "--workers", "4", "--insecure")
    assert res.returncode == 2 and list((tmp_path / "etc/clusterd").iterdir()) == [tmp_path / "etc/clusterd/keys"]


def test_relay_install_and_an_agent_that_names_the_relay(tmp_path):
    with_keys(tmp_path)
    res = clusterctl(
        "relay",
        "install",
        "--root",
        str(tmp_path),
        "--zk",
        "zk1:2181",
        "--keys",
        "/etc/clusterd/keys",
        "--id",
        "rack-12",
        "--bind",
        "tcp://0.0.0.0:7300",
        "--exec",
        "/opt/clusterd/venv/bin/clusterctl",
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / UNIT["relay"]).read_text() == (ROOT / "systemd/cluster-relay.service").read_text()
    cfg = config.load(config.RelayConfig, tmp_path / CONF["relay"], environ={})
    assert (cfg.relay_id, cfg.bind, cfg.keys) == ("rack-12", "tcp://0.0.0.0:7300", "/etc/clusterd/keys")
    agent_install(tmp_path, *AGENT, "--relay", "rack-12")
    assert config.load(config.AgentConfig, tmp_path / CONF["agent"], environ={}).relay == "rack-12"
    res = clusterctl("relay", "uninstall", "--root", str(tmp_path))
    assert res.returncode == 0 and "the agent is still installed" in res.stdout
    assert not (tmp_path / UNIT["relay"]).exists() and (tmp_path / SYSUSERS).exists()


def test_relative_key_paths_become_absolute(tmp_path):
    agent_install(tmp_path, "--keys", "etc/clusterd/keys")  # cwd is the repository: the unit's is not
    assert config.load(config.AgentConfig, tmp_path / CONF["agent"], environ={}).keys == str(ROOT / "etc/clusterd/keys")


def test_help_still_works_and_shows_install():
    res = clusterctl("agent", "--help")
    assert res.returncode == 0 and "--workers" in res.stdout and "clusterctl agent install --help" in res.stdout
    res = clusterctl("coordinator", "--help")
    assert res.returncode == 0 and "--zk" in res.stdout and "install" in res.stdout and "uninstall" in res.stdout
    for role in install.ROLES:
        for command in ("install", "uninstall"):
            res = clusterctl(role, command, "--help")
            assert res.returncode == 0 and "Examples:" in res.stdout and f"clusterctl {role} {command}" in res.stdout
    res = clusterctl("coordinator", "--zk", "zk1:2181", "install")
    assert res.returncode == 2 and "options go after the command" in res.stderr


def test_odd_values_survive_the_toml_round_trip(tmp_path):
    value = 'a "quoted" \\ back, ünï, tab\there, del\x7f'
    agent_install(tmp_path, "--insecure", "--label", f"note={value}", "--label", "odd key=1", "--node-id", 'n"1')
    cfg = config.load(config.AgentConfig, tmp_path / CONF["agent"], environ={})
    assert cfg.labels == {"note": value, "odd key": "1"} and cfg.node_id == 'n"1'


def test_exec_paths_are_quoted_for_systemd():
    unit = install.render_unit("agent", "/opt/my venv/100%/$HOME/clusterctl")
    assert 'ExecStart="/opt/my venv/100%%/$$HOME/clusterctl" agent --config' in unit


def test_commands_run_for_real_report_failure_in_one_line(capfd):
    # The one path the --root tests cannot reach; harmless commands stand in for systemctl.
    run = install.Run("agent", "install", None, dry_run=False, json_out=False)
    run.command(["true"])
    assert run.commands == [{"command": "true", "status": "ran"}]
    with pytest.raises(install.typer.Exit) as exc:
        run.command(["false"])
    assert exc.value.exit_code == 1 and run.commands[-1] == {"command": "false", "status": "failed"}
    assert capfd.readouterr().err == "clusterctl: `false` failed with exit status 1\n"


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_the_user_snippet_creates_the_user(tmp_path):
    # systemd-sysusers on the staged tree itself (--root): this machine's users are untouched.
    agent_install(tmp_path, "--insecure")
    res = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(tmp_path / SYSUSERS)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    user = (tmp_path / "etc/passwd").read_text().split(":")
    assert (user[0], user[4], user[5]) == ("clusterd", "clusterd daemons", "/var/lib/clusterd")


def test_the_default_exec_is_the_clusterctl_of_the_venv_running_the_install():
    assert service_files.default_exec() == str(CLUSTERCTL)
