"""Layering and packaging: the client side never imports node-side code, and the
wheel installs exactly the packages we name (``agents`` is a name others use too)."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_cluster_never_imports_agents():
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "agents")
        for p in (ROOT / "cluster").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_clusterctl_agent_runs_the_agent_program():
    res = subprocess.run(
        [sys.executable, "-m", "cluster.cli.main", "agent", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 0 and "--node-id" in res.stdout and "Examples" in res.stdout


def test_wheel_installs_only_our_packages_and_the_entry_point(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    (wheel,) = tmp_path.glob("clusterd_zk-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"cluster", "agents"}
    assert not any(n.startswith("tests/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "clusterctl = cluster.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
