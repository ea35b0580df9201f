"""Install this node's agent or coordinator as a systemd service, or remove it.

`install` writes three files and then runs systemd:

  /etc/sysusers.d/clusterd.conf             the `clusterd` user (systemd-sysusers creates it)
  /etc/clusterd/ROLE.toml                   this node's settings (0640 root:clusterd)
  /etc/systemd/system/cluster-ROLE.service  the hardened unit, ExecStart = this clusterctl

  systemd-sysusers, systemctl daemon-reload (when the unit changed), systemctl try-restart
  (when a file changed, so new settings take effect), systemctl enable --now.

First, the pre-flight: as the unit's User=, with the unit's sandboxing, could the daemon
execute its ExecStart (and the interpreter of that script, symlinks followed) and read its
keys, ZooKeeper credentials and config? A check that fails is one line saying what to fix,
and nothing is written; `--dry-run` lists every check.

A file whose bytes are already right is left alone ("unchanged"), so running the same
install twice changes nothing. Keys are referenced by path, never copied or deleted.
`--root DIR` writes under DIR and runs nothing (images, staging); `--dry-run` prints
every file and command and changes nothing. `uninstall` stops and disables the unit and
removes the unit and the config it wrote (and the user snippet once no role is left).
"""

from __future__ import annotations

import difflib
import glob
import grp
import os
import pwd
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer

from cluster.cli import common, options
from cluster.cli.service_files import (
    MARK,
    ROLES,
    SYSUSERS,
    USER,
    Sandbox,
    build_config,
    check_exec,
    config_path,
    default_exec,
    hidden_by,
    render_sysusers,
    render_unit,
    sandbox,
    unit_name,
    unit_path,
)
from cluster.contract import config

# ------------------------------------------------------------------ applying

WOULD = {"created": "would create", "updated": "would update", "removed": "would remove"}


@dataclass
class Run:
    """What one install or uninstall did (or would do): printed as it goes, and as --json."""

    role: str
    operation: str
    root: Optional[Path]
    dry_run: bool
    json_out: bool
    files: list = field(default_factory=list)
    commands: list = field(default_factory=list)
    checks: list = field(default_factory=list)

    def target(self, path: Path) -> Path:
        return self.root / path.relative_to("/") if self.root else path

    def say(self, text: str, nl: bool = True) -> None:
        if not self.json_out:
            typer.echo(text, nl=nl)

    def file(self, path: Path, action: str, detail: str = "") -> None:
        self.files.append({"path": str(path), "action": action})
        verb = WOULD.get(action, action) if self.dry_run else action
        self.say(f"{verb:<13}{path}{detail}")

    def check(self, check: Check) -> None:
        self.checks.append({"check": check.what, "ok": not check.problem, "problem": check.problem})
        if self.dry_run:  # an install that goes on passed them all; one that fails says why, alone
            self.say(f"{'check ok' if not check.problem else 'check FAILED':<13}{check.problem or check.what}")

    def command(self, argv: list[str]) -> None:
        text = " ".join(argv)
        if self.root:
            status = "skipped"  # --root stages files for another system: never touch this one's systemd
        elif self.dry_run:
            status = "would run"
        else:
            status = "ran"
            # Their chatter goes to stderr (fd 2), so stdout stays the report (or the JSON).
            sys.stdout.flush()
            res = subprocess.run(argv, stdout=2, stdin=subprocess.DEVNULL)
            if res.returncode != 0:
                self.commands.append({"command": text, "status": "failed"})
                self.report()
                hint = f"; see journalctl -u {unit_name(self.role)}" if argv[0] == "systemctl" else ""
                raise common.fail(f"`{text}` failed with exit status {res.returncode}{hint}", common.EXIT_FAILED)
        self.commands.append({"command": text, "status": status})
        self.say(f"{status:<13}{text}" + ("  (--root: run nothing here)" if self.root else ""))

    def report(self) -> None:
        if self.json_out:
            common.print_json(
                {
                    "role": self.role,
                    "operation": self.operation,
                    "dry_run": self.dry_run,
                    "root": str(self.root) if self.root else None,
                    "checks": self.checks,
                    "files": self.files,
                    "commands": self.commands,
                }
            )


def _group_id() -> Optional[int]:
    try:
        return grp.getgrnam(USER).gr_gid
    except KeyError:
        return None


def write_file(run: Run, path: Path, text: str, mode: int, group: bool = False) -> bool:
    """Write only if the bytes, mode or owner differ; True if something changed."""
    dest = run.target(path)
    data = text.encode()
    old = dest.read_bytes() if dest.is_file() else None
    # root:clusterd when we are root on the real system: the daemon may read it but not
    # change it, and other users need not see the cluster's layout. Under --root: the mode.
    chown = group and run.root is None and os.geteuid() == 0
    gid = _group_id() if chown else None
    if chown and gid is None and not run.dry_run:  # systemd-sysusers ran just before
        raise ValueError(f"group {USER!r} does not exist: systemd-sysusers did not create it")
    st = dest.stat() if old is not None else None
    owner_ok = not chown or (st is not None and (st.st_uid, st.st_gid) == (0, gid))
    if old == data and st is not None and st.st_mode & 0o7777 == mode and owner_ok:
        run.file(dest, "unchanged")
        return False
    detail = f" ({mode:04o}{' root:' + USER if chown else ''})"
    if old is None:
        body = text.splitlines()
        run.file(dest, "created", detail)
    else:
        # The hunks without the ---/+++ header: shown by --dry-run, counted in the report.
        body = list(difflib.unified_diff(old.decode(errors="replace").splitlines(), text.splitlines(), lineterm=""))[2:]
        stat = f", +{sum(d.startswith('+') for d in body)} -{sum(d.startswith('-') for d in body)} lines"
        run.file(dest, "updated", detail if old == data else detail + stat)
    if run.dry_run:
        run.say("".join(f"    {line}\n" for line in body), nl=False)
        return True
    _makedirs(dest.parent)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        if gid is not None:
            os.chown(tmp, 0, gid)
        os.replace(tmp, dest)  # atomic: a daemon (re)starting never reads half a file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def _makedirs(path: Path) -> None:
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        d.mkdir()
        d.chmod(0o755)  # not the caller's umask: the clusterd user must reach /etc/clusterd


def remove_file(run: Run, path: Path, marked: bool = False) -> bool:
    """Remove path; a `marked` file only if it starts with MARK (else someone else wrote it)."""
    dest = run.target(path)
    if not dest.exists():
        run.file(dest, "absent")
        return False
    if marked and dest.is_file() and not dest.read_bytes().startswith(MARK.encode()):
        run.file(dest, "kept", " (not written by clusterctl install)")
        return False
    run.file(dest, "removed")
    if not run.dry_run:
        dest.unlink()
        _prune(run, dest.parent)
    return True


def _prune(run: Run, directory: Path) -> None:
    """Remove directories left empty. On a live system only /etc/clusterd is ours; under
    --root (a staging tree) every directory up to DIR that is left empty goes, which undoes
    what install created (and would take an empty one that was there before)."""
    stop = run.root or Path("/etc")
    while stop in directory.parents and (run.root or directory == Path("/etc/clusterd")):
        try:
            directory.rmdir()  # only if empty: keys and anything else stay
        except OSError:
            return
        directory = directory.parent


def _begin(role: str, operation: str, root: Optional[Path], dry_run: bool, json_out: bool) -> Run:
    if root is None and not dry_run and os.geteuid() != 0:
        raise ValueError("installing a service needs root (or --root DIR to stage files, --dry-run to look)")
    return Run(role, operation, root.resolve() if root else None, dry_run, json_out)


# ------------------------------------------------------------------ pre-flight
# What the unit needs, checked as its User= would meet it. os.access answers for the caller
# (root: yes to everything), so the mode bits are read against the user's uid and groups
# (POSIX ACLs are not read). Under --root, paths, symlinks and users are the staged tree's.

# The key files each role's daemon reads (cluster/contract/security.py: load); those present.
KEY_FILES = {
    "agent": ("agent.key_secret", "coordinator.key"),
    "coordinator": ("coordinator.key_secret", "agent.key", "client*.key"),
    "relay": ("agent.key_secret", "coordinator.key", "coordinator.key_secret"),
    "dashboard": ("client*.key_secret", "coordinator.key"),  # a client of the leader, as `status` is
}
READ, EXECUTE = 4, 1  # permission bits; EXECUTE on a directory is search


@dataclass(frozen=True)
class Check:
    what: str
    problem: str = ""  # the one line saying what to fix; "" when it passed


@dataclass(frozen=True)
class Account:
    """The service user as the target system knows it, or (uid None) as systemd-sysusers will
    create it: a new user whose group is the group of its name."""

    name: str
    uid: Optional[int]
    gids: frozenset
    names: dict  # uid or ("g", gid) -> name, to show owners

    def may(self, st: os.stat_result, bits: int) -> bool:
        if self.uid == 0:
            return True
        # The kernel reads the owner's bits for the owner, else the group's for a member, else the others'.
        shift = 6 if st.st_uid == self.uid else 3 if st.st_gid in self.gids else 0
        return (st.st_mode >> shift) & bits == bits

    def shows(self, st: os.stat_result) -> str:
        owner = self.names.get(st.st_uid, str(st.st_uid))
        return f"{st.st_mode & 0o7777:04o} {owner}:{self.names.get(('g', st.st_gid), str(st.st_gid))}"


def _account(name: str, root: Optional[Path]) -> Account:
    if root is None:
        users = {u.pw_name: (u.pw_uid, u.pw_gid) for u in pwd.getpwall()}
        groups = {g.gr_name: (g.gr_gid, set(g.gr_mem)) for g in grp.getgrall()}
    else:
        users = {f[0]: (int(f[2]), int(f[3])) for f in _table(root / "etc/passwd") if f[3].isdigit()}
        groups = {f[0]: (int(f[2]), set(f[3].split(","))) for f in _table(root / "etc/group")}
    names = {0: "root", ("g", 0): "root"} | {uid: n for n, (uid, _) in users.items()}
    names |= {("g", gid): n for n, (gid, _) in groups.items()}
    if name not in users:
        return Account(name, None, frozenset([groups[name][0]] if name in groups else []), names)
    uid, gid = users[name]
    return Account(name, uid, frozenset({gid} | {g for g, members in groups.values() if name in members}), names)


def _table(path: Path) -> list[list[str]]:
    """The rows of a staged /etc/passwd or /etc/group (none if it has none): name, x, id, then gid or members."""
    rows = [line.split(":") for line in path.read_text().splitlines()] if path.is_file() else []
    return [row for row in rows if len(row) >= 4 and row[2].isdigit()]


def _staged(root: Optional[Path], path: str) -> Path:
    return root / path.lstrip("/") if root else Path(path)


def _resolve(path: str, root: Optional[Path]) -> str:
    """``path`` with every symlink followed as the target system would (absolute links start
    again at the staged root); what is missing is taken as it is."""
    done, parts, hops = "/", list(Path(path).parts[1:]), 0
    while parts:
        part = parts.pop(0)
        step = os.path.dirname(done) if part == ".." else done if part == "." else os.path.join(done, part)
        staged = _staged(root, step)
        if staged.is_symlink() and hops < 40:
            hops += 1
            target = os.readlink(staged)
            parts = list(Path(target).parts[1 if os.path.isabs(target) else 0 :]) + parts
            done = "/" if os.path.isabs(target) else done
        else:
            done = step
    return done


def _blocked(account: Account, path: str, bits: int, root: Optional[Path]) -> str:
    """Why ``account`` could not get ``bits`` on ``path`` (symlinks followed); "" if it could,
    or if what is missing cannot be judged."""
    real = _resolve(path, root)
    # Under --root, DIR itself is where the tree is staged, not the target's /.
    parents = [str(p) for p in reversed(Path(real).parents)][1 if root else 0 :]
    for directory in parents:
        try:
            st = _staged(root, directory).stat()
        except OSError:
            return ""
        if not account.may(st, EXECUTE):
            return f"{directory} ({account.shows(st)}) does not let {account.name} through"
    try:
        st = _staged(root, real).stat()
    except OSError:
        return ""
    if not account.may(st, bits):
        return f"{real} is {account.shows(st)}"
    return ""


def _first_line(path: str, root: Optional[Path]) -> bytes:
    try:
        with _staged(root, path).open("rb") as fh:
            return fh.readline(256)
    except OSError:
        return b""


def _exec_checks(box: Sandbox, account: Account, root: Optional[Path]) -> list[Check]:
    """ExecStart's program, and the interpreter its #! names (a venv's python), where the unit can
    reach them and as the user may run them."""
    program = box.program
    line = _first_line(_resolve(program, root), root)
    interpreter = line[2:].split()[0].decode(errors="replace") if line.startswith(b"#!") and line[2:].split() else ""
    checks = []
    for path, runs in ((program, ""), (interpreter, program)):
        if not path:
            continue
        what = f"{account.name} can run {path}" + (f" (the #! of {runs})" if runs else "")
        real = _resolve(path, root)
        where = hidden_by(box, path) or hidden_by(box, real)
        problem = ""
        if where:
            shown = path if path == real else f"{path}, which resolves to {real},"
            fix = (
                "make the venv from a python installed outside it (e.g. /usr/bin/python3 -m venv /opt/clusterd/venv)"
                if runs
                else "install the venv elsewhere (e.g. /opt/clusterd/venv) or pass --exec"
            )
            problem = (
                f"{runs + ' runs ' if runs else ''}{shown} under {where[0]}, which the unit's {where[1]} hides: {fix}"
            )
        elif why := _blocked(account, path, EXECUTE | (READ if not runs and interpreter else 0), root):
            problem = f"the service user {account.name} could not run {path}: {why}{_fix(account, 'x')}"
        checks.append(Check(what, problem))
    return checks


def _read_checks(role: str, cfg: config.Common, account: Account, root: Optional[Path]) -> list[Check]:
    wanted: list[tuple[str, int]] = []
    if cfg.keys:
        listed = any("*" in name for name in KEY_FILES[role])  # the daemon lists the directory
        wanted.append((cfg.keys, EXECUTE | (READ if listed else 0)))
        staged_keys = _staged(root, _resolve(cfg.keys, root))
        for name in KEY_FILES[role]:
            found = sorted(glob.glob(glob.escape(str(staged_keys)) + "/" + name))
            wanted += [(os.path.join(cfg.keys, os.path.basename(f)), READ) for f in found]
    if cfg.zk_auth:
        wanted.append((cfg.zk_auth, READ))
    checks = []
    for path, bits in wanted:
        why = _blocked(account, path, bits, root)
        verb = "read" if bits & READ else "reach"
        problem = f"the service user {account.name} could not {verb} {path}: {why}{_fix(account, 'r')}" if why else ""
        checks.append(Check(f"{account.name} can {verb} {path}", problem))
    # The config is written 0640 root:clusterd: its directories must let the user through, and
    # the user must be in group clusterd (systemd-sysusers makes a new user so).
    conf = str(config_path(role))
    why = _blocked(account, conf, 0, root)  # its directories: install sets the file's own mode
    why += _fix(account, "x") if why else ""
    if not why and account.uid is not None and not any(account.names.get(("g", g)) == USER for g in account.gids):
        why = (
            f"it is not in group {USER}, which may read the file (0640 root:{USER}): usermod -aG {USER} {account.name}"
        )
    problem = f"the service user {account.name} could not read {conf}: {why}" if why else ""
    checks.append(Check(f"{account.name} can read {conf}", problem))
    return checks


def _fix(account: Account, bit: str) -> str:
    if account.uid is None:
        return (
            f"; user {account.name} does not exist yet: create it first (docs/operations.md, systemd-sysusers),"
            f" then give it access (chown {account.name})"
        )
    return f"; give {account.name} access (chown {account.name}, or g+{bit} for a group of its)"


def preflight(role: str, cfg: config.Common, unit: str, root: Optional[Path]) -> list[Check]:
    """Every check of the unit about to be installed: ExecStart, then keys, credentials and config."""
    box = sandbox(unit)
    account = _account(box.user, root)
    user = Check(
        f"service user {box.user} exists (uid {account.uid})"
        if account.uid is not None
        else f"service user {box.user} does not exist yet: checked as the new user systemd-sysusers will create"
    )
    return [user, *_exec_checks(box, account, root), *_read_checks(role, cfg, account, root)]


def install(
    role: str, flags: dict, exec_path: Optional[str], root: Optional[Path], dry_run: bool, json_out: bool
) -> None:
    with common.clear_errors():
        # Everything is checked before anything is written.
        run = _begin(role, "install", root, dry_run, json_out)
        for key in ("keys", "zk_auth", "token_file", "certfile", "keyfile"):
            if flags.get(key):
                flags[key] = os.path.abspath(flags[key])  # the unit's working directory is not ours
        cfg, toml = build_config(role, flags)
        unit = render_unit(role, check_exec(exec_path or default_exec(), exec_path is not None, root))
        for path in filter(None, (cfg.keys, cfg.zk_auth)):
            staged = run.target(Path(path))
            if not staged.exists():
                if root is None:
                    raise ValueError(f"{path} does not exist: put the keys and credentials in place first")
                typer.echo(f"clusterctl: warning: {staged} does not exist yet", err=True)
        checks = preflight(role, cfg, unit, run.root)
        failed = [c.problem for c in checks if c.problem]
        if failed and not dry_run:
            raise ValueError(failed[0])
        for check in checks:
            run.check(check)
        if failed:
            typer.echo(f"clusterctl: warning: the install would stop here: {failed[0]}", err=True)

        write_file(run, SYSUSERS, render_sysusers(), 0o644)
        run.command(["systemd-sysusers", str(SYSUSERS)])  # before the config: its group must exist
        config_changed = write_file(run, config_path(role), toml, 0o640, group=True)
        existed = run.target(unit_path(role)).exists()
        unit_changed = write_file(run, unit_path(role), unit, 0o644)
        if unit_changed:
            run.command(["systemctl", "daemon-reload"])
        if existed and (config_changed or unit_changed):
            run.command(["systemctl", "try-restart", unit_name(role)])  # a running daemon reads the new settings
        run.command(["systemctl", "enable", "--now", unit_name(role)])
        run.report()


def uninstall(role: str, root: Optional[Path], dry_run: bool, json_out: bool) -> None:
    with common.clear_errors():
        run = _begin(role, "uninstall", root, dry_run, json_out)
        if run.target(unit_path(role)).exists():
            run.command(["systemctl", "disable", "--now", unit_name(role)])
        unit_removed = remove_file(run, unit_path(role))
        remove_file(run, config_path(role), marked=True)
        others = [r for r in ROLES if r != role and run.target(unit_path(r)).exists()]
        if others and run.target(SYSUSERS).exists():
            still = f"the {' and the '.join(others)} {'is' if len(others) == 1 else 'are'} still installed"
            run.file(run.target(SYSUSERS), "kept", f" ({still})")
        else:
            remove_file(run, SYSUSERS, marked=True)
        if unit_removed:
            run.command(["systemctl", "daemon-reload"])
        run.report()


# ------------------------------------------------------------------ commands

EXEC = typer.Option(
    None, "--exec", help="clusterctl for ExecStart (default: the one running this command).", show_default=False
)
ROOT = typer.Option(None, "--root", help="Write under DIR (DIR/etc/...) and run no command.", show_default=False)
DRY_RUN = typer.Option(False, "--dry-run", help="Print the files and commands; change nothing.")
JSON = typer.Option(False, "--json", help="Print what was done as JSON: files (path, action) and commands.")

INSTALL_HELP = {
    "agent": """Install this node's agent as the systemd service cluster-agent.

    Writes /etc/clusterd/agent.toml, /etc/systemd/system/cluster-agent.service and
    /etc/sysusers.d/clusterd.conf, then runs systemd-sysusers, systemctl daemon-reload and
    systemctl enable --now cluster-agent. Again with the same options: nothing changes.
    Every setting of `clusterctl agent` is an option here; the file holds those given.

    Examples:

      clusterctl agent install --zk zk1:2181,zk2:2181,zk3:2181 --cluster prod --keys /etc/clusterd/keys --label rack=r12 --metrics-port 9464

      clusterctl agent install --zk zk1:2181 --insecure --workers 8 --prefetch 4 --dry-run

      clusterctl agent install --zk zk1:2181 --keys /etc/clusterd/keys --root /tmp/image --exec /opt/clusterd/venv/bin/clusterctl
    """,
    "coordinator": """Install this host's coordinator as the systemd service cluster-coordinator.

    Writes /etc/clusterd/coordinator.toml, /etc/systemd/system/cluster-coordinator.service
    and /etc/sysusers.d/clusterd.conf, then runs systemd-sysusers, systemctl daemon-reload
    and systemctl enable --now cluster-coordinator. Install it on two or three hosts.
    Every setting of `clusterctl coordinator` is an option here; the file holds those given.

    Examples:

      clusterctl coordinator install --zk zk1:2181,zk2:2181,zk3:2181 --cluster prod --keys /etc/clusterd/keys --bind tcp://0.0.0.0:5555 --metrics-port 9465

      clusterctl coordinator install --zk zk1:2181 --insecure --job-window 50000 --dry-run --json
    """,
    "relay": """Install this host's relay as the systemd service cluster-relay.

    Writes /etc/clusterd/relay.toml, /etc/systemd/system/cluster-relay.service and
    /etc/sysusers.d/clusterd.conf, then runs systemd-sysusers, systemctl daemon-reload and
    systemctl enable --now cluster-relay. Give it the coordinator's keys directory.
    Every setting of `clusterctl relay` is an option here; the file holds those given.

    Examples:

      clusterctl relay install --zk zk1:2181,zk2:2181,zk3:2181 --cluster prod --keys /etc/clusterd/keys --id rack-12 --bind tcp://0.0.0.0:7300

      clusterctl relay install --zk zk1:2181 --insecure --id rack-12 --dry-run
    """,
    "dashboard": """Install this host's web dashboard as the systemd service cluster-dashboard.

    Writes /etc/clusterd/dashboard.toml, /etc/systemd/system/cluster-dashboard.service and
    /etc/sysusers.d/clusterd.conf, then runs systemd-sysusers, systemctl daemon-reload and
    systemctl enable --now cluster-dashboard. Off loopback, give it --token-file (a file the
    clusterd user can read), else each start prints a new token to the journal.
    Every setting of `clusterctl dashboard` is an option here; the file holds those given.

    Examples:

      clusterctl dashboard install --zk zk1:2181,zk2:2181,zk3:2181 --cluster prod --keys /etc/clusterd/keys

      clusterctl dashboard install --zk zk1:2181 --keys /etc/clusterd/keys --host 0.0.0.0 --token-file /etc/clusterd/dashboard.token --certfile /etc/clusterd/tls.pem --keyfile /etc/clusterd/tls.key
    """,
}


def _install_command(role: str) -> Callable[..., None]:
    # The file must say everything, so the help names no environment variable: install
    # reads none (cluster/cli/service_files.py: build_config).
    @options.with_settings(ROLES[role], env=False)
    def install_command(
        *,
        settings: options.Settings,
        exec_path: Optional[str] = EXEC,
        root: Optional[Path] = ROOT,
        dry_run: bool = DRY_RUN,
        json_out: bool = JSON,
    ) -> None:
        install(role, settings, exec_path, root, dry_run, json_out)

    install_command.__doc__ = INSTALL_HELP[role]
    return install_command


def _uninstall_command(role: str, example: str) -> Callable[..., None]:
    def uninstall_command(root: Optional[Path] = ROOT, dry_run: bool = DRY_RUN, json_out: bool = JSON) -> None:
        uninstall(role, root, dry_run, json_out)

    uninstall_command.__doc__ = f"""Stop, disable and remove the cluster-{role} service and /etc/clusterd/{role}.toml.

    Keys are never deleted; the clusterd user snippet goes only with the last role.

    Examples:

      clusterctl {role} uninstall

      clusterctl {role} uninstall {example}
    """
    return uninstall_command


COMMANDS = {
    "agent": (_install_command("agent"), _uninstall_command("agent", "--dry-run")),
    "coordinator": (_install_command("coordinator"), _uninstall_command("coordinator", "--root /tmp/image")),
    "relay": (_install_command("relay"), _uninstall_command("relay", "--dry-run --json")),
    "dashboard": (_install_command("dashboard"), _uninstall_command("dashboard", "--dry-run")),
}


def add_commands(app: typer.Typer, role: str) -> None:
    """`install` and `uninstall` under `clusterctl ROLE`."""
    for name, command in zip(("install", "uninstall"), COMMANDS[role]):
        app.command(name, help=command.__doc__)(command)
