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


# Which packages each layer of `cluster/` may import (docs/design.md, "Layers"); the node
# side (`agents`) may use the contract and the runtime, never the coordinator or the client.
LAYERS = {
    "cluster.contract": {"cluster.contract"},
    "cluster.runtime": {"cluster.contract", "cluster.runtime"},
    "cluster.coordinator": {"cluster.contract", "cluster.runtime", "cluster.coordinator"},
    "cluster.client": {"cluster.contract", "cluster.runtime", "cluster.client"},
    "cluster.dashboard": {"cluster.contract", "cluster.runtime", "cluster.client", "cluster.dashboard"},
    "cluster.cli": {
        "cluster",
        "cluster.contract",
        "cluster.runtime",
        "cluster.coordinator",
        "cluster.client",
        "cluster.dashboard",
        "cluster.cli",
    },
    "agents": {"cluster.contract", "cluster.runtime", "cluster.cli", "agents"},
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "cluster" and len(parts) > 1 else parts[0]


def _ours(module: str) -> bool:
    return module.split(".")[0] in ("cluster", "agents")


def test_each_layer_imports_only_the_layers_below_it():
    offenders = {}
    for package in ("cluster", "agents"):
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            here = _layer(".".join(rel.parts))
            if path.parent == ROOT / "cluster":
                continue  # cluster/__init__.py is the package's face: it re-exports from every layer
            bad = sorted(m for m in imported_modules(path) if _ours(m) and _layer(m) not in LAYERS[here])
            if bad:
                offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}


def _module_strings(tree: ast.AST) -> list[str]:
    """Strings that name a module: what follows "-m" in a list or tuple, an import_module()
    argument, and any dotted name that starts like one of ours (``agents.relay_cli``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)):
            for flag, arg in zip(node.elts, node.elts[1:]):
                if isinstance(flag, ast.Constant) and flag.value == "-m" and isinstance(arg, ast.Constant):
                    found.append(str(arg.value))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            found += [str(a.value) for a in node.args[:1] if isinstance(a, ast.Constant)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("agents."):
            found.append(node.value)
    return found


def test_cluster_never_names_node_side_modules():
    """`cluster/` must not start node-side code by name either (`python -m agents`, a string the
    import check cannot see): `clusterctl agent` finds the agent's program through the entry
    point the node side registers."""
    offenders = {}
    for path in (ROOT / "cluster").rglob("*.py"):
        for name in _module_strings(ast.parse(path.read_text(), str(path))):
            if name.split(".")[0] == "agents":
                offenders.setdefault(str(path.relative_to(ROOT)), []).append(name)
    assert offenders == {}


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
