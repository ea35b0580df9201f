"""The options of the daemons, their install commands and the client commands are
generated from cluster/contract/config.py: every setting is a flag with the field's help
and the dataclass default, and only the flags given override the TOML file and the
environment."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess

import pytest
import typer
from helpers import PY, ROOT
from typer.testing import CliRunner

from cluster.cli import main, service_files
from cluster.cli.daemon_command import daemon_command
from cluster.contract import config

DAEMONS = {"agent": config.AgentConfig, "coordinator": config.CoordinatorConfig, "relay": config.RelayConfig}
# Names that scripts, `clusterctl up`, tests/helpers.py and the systemd units use: they must keep working.
SCRIPTED = {
    "agent": ["--zk", "--cluster", "--config", "--keys", "--insecure", "--zk-auth", "--node-id", "--workers"]
    + ["--bind", "--advertise", "--label", "--relay", "--heartbeat-interval", "--heartbeat-misses"]
    + ["--drain-timeout", "--zk-session-timeout", "--metrics-port", "--log-level", "--log-format"],
    "coordinator": ["--zk", "--cluster", "--config", "--keys", "--insecure", "--zk-auth", "--bind", "--advertise"]
    + ["--heartbeat-interval", "--heartbeat-misses", "--heartbeat-budget", "--client-timeout"]
    + ["--zk-session-timeout", "--metrics-port", "--log-level", "--log-format"],
    "relay": ["--zk", "--cluster", "--config", "--keys", "--insecure", "--zk-auth", "--id", "--bind", "--advertise"]
    + ["--zk-session-timeout", "--metrics-port", "--log-level", "--log-format"],
}
CLIENT_SETTINGS = {
    "submit": ["zk", "cluster", "keys", "zk_auth"],
    "status": ["zk", "cluster", "keys", "zk_auth"],
    "nodes": ["zk", "cluster", "zk_auth"],
    "drain": ["zk", "cluster", "zk_auth"],
}


def help_rows(app: typer.Typer, *args: str) -> dict[str, str]:
    """`--help` of the command, as each option's flag -> its row (wide: one line each)."""
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "1000"})
    assert res.exit_code == 0, res.output
    rows = {}
    for line in res.output.splitlines():
        cells = line.strip("│ ").split()
        if cells and cells[0].startswith("--"):
            rows[cells[0]] = line
    return rows


def shown_default(field: dataclasses.Field) -> str | None:
    if field.default is dataclasses.MISSING or field.default is False or field.default == "":
        return None  # derived (the host name, the route to ZooKeeper...) or a flag: the help says so
    return f"[default: {field.default}]"


def assert_settings_in(rows: dict[str, str], cls: type[config.Common], names: list[str], env: bool) -> None:
    for field in config.settings(cls):
        if field.name not in names:
            continue
        row = rows.get(config.flag(field))
        assert row is not None, f"{cls.__name__}.{field.name} has no {config.flag(field)} in {sorted(rows)}"
        assert field.metadata["help"] in row, row
        default = shown_default(field)
        assert (default in row) if default else "[default:" not in row, row
        assert (f"Env {config.env_var(cls, field.name)}." in row) == env, row


@pytest.mark.parametrize("role", DAEMONS)
def test_every_setting_is_a_flag_of_the_daemon_and_of_its_install_command(role):
    cls = DAEMONS[role]
    names = [f.name for f in config.settings(cls)]
    rows = help_rows(main.app, role)
    assert_settings_in(rows, cls, names, env=True)
    assert set(SCRIPTED[role]) <= set(rows)
    # The install command reads no environment (the file must say everything): its help names none.
    assert_settings_in(help_rows(main.app, role, "install"), cls, names, env=False)


@pytest.mark.parametrize("command", CLIENT_SETTINGS)
def test_client_commands_share_the_settings_options(command):
    rows = help_rows(main.app, command)
    assert_settings_in(rows, config.Common, CLIENT_SETTINGS[command], env=True)
    assert "--config" in rows and "--insecure" not in rows  # --insecure is for the daemons


@pytest.mark.parametrize(
    "command",
    [["agent"], ["coordinator"], ["relay"], ["submit"], ["status"], ["nodes"], ["drain"], ["up"], ["keys", "generate"]]
    + [[role, op] for role in DAEMONS for op in ("install", "uninstall")],
)
def test_every_command_has_help_with_examples(command):
    res = CliRunner().invoke(main.app, [*command, "--help"], env={"COLUMNS": "1000"})
    assert res.exit_code == 0 and "Example" in res.output and f"clusterctl {' '.join(command)}" in res.output


# ---------------------------------------------------------------- through the daemon helper


@dataclasses.dataclass(frozen=True, kw_only=True)
class TunedAgentConfig(config.AgentConfig):
    """Another default than the real one: the help must follow the dataclass, not a copy."""

    prefetch: int = config.setting(config.AgentConfig().prefetch + 5, "Tasks queued per worker.")


class Recorder:
    """A daemon that records its config and what the helper did to it."""

    def __init__(self, cfg: config.Common):
        self.cfg, self.stopped = cfg, 0
        Recorder.last = self

    def run(self) -> int:
        if os.environ.get("TEST_SEND_SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs in this thread before the next line
        if os.environ.get("TEST_REFUSE"):
            raise LookupError("node n1 is already registered by pid 42")
        return 3 if self.stopped else 0

    def stop(self) -> None:
        self.stopped += 1


@pytest.fixture
def daemon_app():
    """A daemon command as clusterctl builds one; the signal handlers it installs are put back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def make(cls: type[config.Common]) -> typer.Typer:
        app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        app.command()(daemon_command(cls, Recorder, stop=Recorder.stop, refused=(LookupError,)))
        return app

    yield make
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def run_daemon(app: typer.Typer, *args: str, env: dict | None = None):
    clean = {k: None for k in os.environ if k.startswith("CLUSTER_")}  # the caller's shell stays out
    res = CliRunner().invoke(app, list(args), env={**clean, **(env or {})})
    return res, Recorder.last.cfg


def test_the_help_shows_the_dataclass_default(daemon_app):
    app = daemon_app(TunedAgentConfig)
    field = next(f for f in config.settings(TunedAgentConfig) if f.name == "prefetch")
    row = help_rows(app)["--prefetch"]
    assert f"[default: {field.default}]" in row and f"[default: {config.AgentConfig().prefetch}]" not in row
    res, cfg = run_daemon(app)
    assert res.exit_code == 0 and cfg.prefetch == field.default


def test_precedence_default_toml_env_flag_for_a_generated_flag(daemon_app, tmp_path):
    app = daemon_app(config.AgentConfig)
    default = config.AgentConfig().restart_backoff_max
    toml = tmp_path / "agent.toml"
    toml.write_text(f"[agent]\nrestart_backoff_max = {default + 1}\nprefetch = 9\n")
    env = {"CLUSTER_AGENT_RESTART_BACKOFF_MAX": str(default + 2)}

    assert run_daemon(app)[1].restart_backoff_max == default
    assert run_daemon(app, "--config", str(toml))[1].restart_backoff_max == default + 1
    assert run_daemon(app, "--config", str(toml), env=env)[1].restart_backoff_max == default + 2
    res, cfg = run_daemon(app, "--config", str(toml), "--restart-backoff-max", str(default + 3), env=env)
    assert res.exit_code == 0 and cfg.restart_backoff_max == default + 3
    # A flag not given overrides nothing, though its help shows a default.
    assert (cfg.prefetch, cfg.workers) == (9, config.AgentConfig().workers)
    res, cfg = run_daemon(app, "--label", "rack=r1", "--label", "zone=b", "--insecure")
    assert cfg.labels == {"rack": "r1", "zone": "b"} and cfg.insecure is True


def test_a_relay_id_flag_keeps_its_name(daemon_app):
    res, cfg = run_daemon(daemon_app(config.RelayConfig), "--id", "rack-12", "--max-payload", "1024")
    assert res.exit_code == 0 and (cfg.relay_id, cfg.max_payload) == ("rack-12", 1024)


def test_a_signal_stops_the_daemon_and_its_status_is_the_exit_status(daemon_app):
    res, _ = run_daemon(daemon_app(config.RelayConfig), env={"TEST_SEND_SIGTERM": "1"})
    assert res.exit_code == 3 and Recorder.last.stopped == 1


def test_a_refused_start_and_a_bad_flag_are_one_line_exit_2(daemon_app):
    app = daemon_app(config.AgentConfig)
    res, _ = run_daemon(app, env={"TEST_REFUSE": "1"})
    assert (res.exit_code, res.stderr) == (2, "clusterctl: node n1 is already registered by pid 42\n")
    res = CliRunner().invoke(app, ["--prefetch", "many"])
    assert (res.exit_code, res.stderr) == (2, "clusterctl: --prefetch: 'many' is not a valid int\n")


# ---------------------------------------------------------------- the real programs


@pytest.mark.parametrize(
    "role, argv",
    [
        ("agent", [PY, "-m", "agents"]),
        ("coordinator", [PY, "-m", "cluster.cli.main", "coordinator"]),
        ("relay", [PY, "-m", "agents.relay_cli"]),
    ],
)
def test_an_unknown_toml_key_is_one_clear_line(role, argv, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[{role}]\nprefetch_typo = 4\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    res = subprocess.run(
        [*argv, "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(f"clusterctl: {bad}: unknown setting 'prefetch_typo' in [{role}]"), res.stderr
    assert res.stderr.count("\n") == 1


def test_install_writes_a_setting_that_had_no_flag(tmp_path):
    base = ["agent", "install", "--insecure", "--prefetch", "4", "--root", str(tmp_path)]
    base += ["--exec", "/opt/clusterd/venv/bin/clusterctl"]
    res = CliRunner().invoke(main.app, [*base, "--dry-run"])
    assert res.exit_code == 0, res.output
    toml = res.stdout[res.stdout.index("[agent]") :]
    assert "    prefetch = 4\n" in toml
    res = CliRunner().invoke(main.app, [*base, "--dry-run", "--json"])
    doc = json.loads(res.stdout)
    assert {"path": str(tmp_path / "etc/clusterd/agent.toml"), "action": "created"} in doc["files"]
    assert list(tmp_path.iterdir()) == []
    res = CliRunner().invoke(main.app, base)
    assert res.exit_code == 0, res.output
    cfg = config.load(config.AgentConfig, tmp_path / "etc/clusterd/agent.toml", environ={})
    assert (cfg.prefetch, cfg.insecure) == (4, True)


@pytest.mark.parametrize("role", DAEMONS)
def test_example_configs_are_rendered_from_the_settings(role):
    # Regenerate: python -c 'from cluster.cli import service_files as s; print(s.render_example("agent"), end="")'
    assert (ROOT / "configs" / f"{role}.toml").read_text() == service_files.render_example(role)
