"""`clusterctl ROLE install` checks, before it writes anything, that the unit it is about to
install could start: its User= can read the keys, the ZooKeeper credentials and the config,
and can run ExecStart (and the python a venv's script names) under the unit's sandboxing.
Always under --root: the staged tree's files, symlinks and /etc/passwd are the target's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import ROOT
from test_install import CLUSTERCTL, clusterctl

from cluster.cli import install
from cluster.contract import config

pytestmark = [
    pytest.mark.skipif(not CLUSTERCTL.exists(), reason="clusterctl is not installed in this environment"),
    pytest.mark.skipif(os.geteuid() != 0, reason="gives files to another owner (chown)"),
]
UID = GID = 4321  # the staged clusterd user's
EXEC = "/opt/venv/bin/clusterctl"


def stage(root: Path, python: str = "/usr/bin/python3.11", user: bool = True) -> Path:
    """A target system: a venv whose clusterctl runs its python (a symlink to ``python``), the
    clusterd user (unless not ``user``), and keys as docs/operations.md has them."""
    bin_ = root / "opt/venv/bin"
    bin_.mkdir(parents=True)
    (bin_ / "clusterctl").write_text("#!/opt/venv/bin/python\nimport sys\n")
    (bin_ / "clusterctl").chmod(0o755)
    (bin_ / "python").symlink_to(python)
    if user:
        (root / "etc").mkdir()
        (root / "etc/passwd").write_text(
            f"root:x:0:0::/root:/bin/sh\nclusterd:x:{UID}:{GID}::/var/lib/clusterd:/bin/false\n"
        )
        (root / "etc/group").write_text(f"root:x:0:\nclusterd:x:{GID}:\n")
    keys = root / "etc/clusterd/keys"
    keys.mkdir(parents=True)
    keys.chmod(0o700)
    for name, mode in (("agent.key_secret", 0o600), ("agent.key", 0o644), ("coordinator.key", 0o644)):
        (keys / name).write_text(f"{name}\n")
        (keys / name).chmod(mode)
    (root / "etc/clusterd/zk.auth").write_text("digest clusterd:secret\n")
    (root / "etc/clusterd/zk.auth").chmod(0o640)
    if user:
        for path in (keys, *keys.iterdir()):
            os.chown(path, UID, GID)
        os.chown(root / "etc/clusterd/zk.auth", 0, GID)
    return root


def agent_install(root: Path, *extra: str):
    return clusterctl(
        "agent",
        "install",
        "--root",
        str(root),
        "--zk",
        "zk1:2181",
        "--keys",
        "/etc/clusterd/keys",
        "--zk-auth",
        "/etc/clusterd/zk.auth",
        "--exec",
        EXEC,
        *extra,
        env={"PYTHONPATH": str(ROOT)},  # this tree's clusterctl, whichever the venv's script imports
    )


def refused(res, *phrases: str) -> str:
    """One line, exit 2, nothing on stdout."""
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("clusterctl: ") and res.stderr.count("\n") == 1, res.stderr
    assert res.stdout == ""
    for phrase in phrases:
        assert phrase in res.stderr
    return res.stderr


def written(root: Path) -> bool:
    return any((root / p).exists() for p in ("etc/systemd", "etc/sysusers.d", "etc/clusterd/agent.toml"))


def test_a_good_install_passes_and_dry_run_lists_every_check(tmp_path):
    root = stage(tmp_path)
    res = agent_install(root, "--dry-run")
    assert res.returncode == 0, res.stderr
    checks = [line for line in res.stdout.splitlines() if line.startswith("check")]
    assert all(line.startswith("check ok ") for line in checks), checks
    text = "\n".join(checks)
    for what in (
        f"service user clusterd exists (uid {UID})",
        f"clusterd can run {EXEC}",
        f"clusterd can run /opt/venv/bin/python (the #! of {EXEC})",
        "clusterd can reach /etc/clusterd/keys",
        "clusterd can read /etc/clusterd/keys/agent.key_secret",
        "clusterd can read /etc/clusterd/keys/coordinator.key",
        "clusterd can read /etc/clusterd/zk.auth",
        "clusterd can read /etc/clusterd/agent.toml",
    ):
        assert what in text, text
    assert "agent.key\n" not in text + "\n"  # an agent reads its own secret file, not its public key
    assert not written(root)
    res = agent_install(root, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert len(doc["checks"]) == len(checks) and all(c["ok"] and c["problem"] == "" for c in doc["checks"])
    assert (root / "etc/systemd/system/cluster-agent.service").exists()


def test_a_venv_whose_python_resolves_under_root_is_refused(tmp_path):
    root = stage(tmp_path, python="/root/.pyenv/versions/3.11.7/bin/python3.11")
    refused(
        agent_install(root),
        f"{EXEC} runs /opt/venv/bin/python, which resolves to /root/.pyenv/versions/3.11.7/bin/python3.11,",
        "under /root, which the unit's ProtectHome=yes hides",
        "make the venv from a python installed outside it",
    )
    assert not written(root)


def test_a_program_under_root_or_a_python_under_tmp_is_refused(tmp_path):
    root = stage(tmp_path / "a")
    refused(
        agent_install(root, "--exec", "/root/venv/bin/clusterctl"),
        "/root/venv/bin/clusterctl under /root, which the unit's ProtectHome=yes hides",
    )
    root = stage(tmp_path / "b", python="/tmp/py/bin/python3")
    refused(agent_install(root), "resolves to /tmp/py/bin/python3, under /tmp, which the unit's PrivateTmp=yes hides")
    assert not written(tmp_path / "a") and not written(tmp_path / "b")


def test_a_key_file_only_root_may_read_is_refused(tmp_path):
    root = stage(tmp_path)
    os.chown(root / "etc/clusterd/keys/agent.key_secret", 0, 0)
    refused(
        agent_install(root),
        "the service user clusterd could not read /etc/clusterd/keys/agent.key_secret: ",
        "/etc/clusterd/keys/agent.key_secret is 0600 root:root; give clusterd access (chown clusterd",
    )
    assert not written(root)


def test_a_config_behind_a_directory_only_root_may_enter_is_refused(tmp_path):
    root = stage(tmp_path)
    (root / "etc/clusterd").chmod(0o700)
    res = clusterctl(  # --insecure: no keys below it, whose checks would fail first
        "agent", "install", "--root", str(root), "--insecure", "--exec", EXEC, env={"PYTHONPATH": str(ROOT)}
    )
    refused(
        res,
        "the service user clusterd could not read /etc/clusterd/agent.toml: "
        "/etc/clusterd (0700 root:root) does not let clusterd through",
    )
    assert not written(root)


def test_a_program_the_user_may_not_execute_is_refused(tmp_path):
    root = stage(tmp_path)
    (root / "opt/venv").chmod(0o700)
    refused(
        agent_install(root),
        f"the service user clusterd could not run {EXEC}: /opt/venv (0700 root:root) does not let clusterd through",
    )


def test_a_user_that_does_not_exist_yet_is_checked_as_the_new_one_and_said_so(tmp_path):
    root = stage(tmp_path, user=False)  # keys owned by root: 0600 secrets only root may read
    res = agent_install(root, "--dry-run")
    assert res.returncode == 0, res.stderr  # a dry run reports: it refuses nothing
    assert "check ok     service user clusterd does not exist yet" in res.stdout
    failed = [line for line in res.stdout.splitlines() if line.startswith("check FAILED")]
    assert failed and all("user clusterd does not exist yet: create it first" in line for line in failed), failed
    assert "clusterctl: warning: the install would stop here: " in res.stderr
    assert not written(root)
    refused(agent_install(root), "could not reach /etc/clusterd/keys", "does not exist yet")


def test_inaccessible_paths_in_the_unit_are_checked_too(tmp_path):
    root = stage(tmp_path)
    unit = install.render_unit("agent", EXEC).replace("PrivateTmp=yes\n", "PrivateTmp=yes\nInaccessiblePaths=-/opt\n")
    cfg = config.load(config.AgentConfig, None, {"insecure": True}, environ={})
    problems = [c.problem for c in install.preflight("agent", cfg, unit, root) if c.problem]
    assert problems and problems[0].endswith(
        f"{EXEC} under /opt, which the unit's InaccessiblePaths=-/opt hides: "
        "install the venv elsewhere (e.g. /opt/clusterd/venv) or pass --exec"
    )
    # The installed unit's own settings, read back from its text.
    box = install.sandbox(install.render_unit("agent", EXEC))
    assert (box.user, box.program) == ("clusterd", EXEC)
    assert box.hidden == {
        "/home": "ProtectHome=yes",
        "/root": "ProtectHome=yes",
        "/run/user": "ProtectHome=yes",
        "/tmp": "PrivateTmp=yes",
        "/var/tmp": "PrivateTmp=yes",
    }
