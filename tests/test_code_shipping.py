"""Exactly the client's code runs: the client's own modules travel with the function
(cluster/client/code.py collects them, cluster/contract/shipped.py serves them on the
node), and installed code travels by reference with its version checked."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import pytest
from helpers import PY, ROOT

from cluster.client import code
from cluster.contract import payload, shipped

MSGPACK = importlib.metadata.version("msgpack")


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


PROJECT = {
    "work.py": """
        import json
        import msgpack
        from helpers import score
        import pkg.sub
        try:
            import optional_helper
        except ImportError:
            optional_helper = None

        def f(x):
            return score(x)

        def never_called():
            import no_such_module_anywhere
    """,
    "helpers.py": """
        from typing import TYPE_CHECKING
        import deep
        if TYPE_CHECKING:
            import psutil

        def score(x):
            return deep.twice(x)
    """,
    "deep.py": "def twice(x):\n    return 2 * x\n",
    "optional_helper.py": "import kazoo\n",
    "pkg/__init__.py": "from .sub import g\n",
    "pkg/sub.py": "from . import util\nfrom .util import h\n\ndef g(x):\n    return util.h(x) + h(x)\n",
    "pkg/util.py": "def h(x):\n    return x + 1\n",
    "pkg/unused.py": "raise RuntimeError('never imported by the client')\n",
}


def collected(path: Path) -> code.Collector:
    collector = code.Collector(search=[str(path.parent)])
    collector.add_file(path.stem, path)
    return collector


# ------------------------------------------------------------ collection


def test_the_local_modules_a_file_imports_travel_and_nothing_else(tmp_path):
    proj = write(tmp_path / "proj", PROJECT)
    c = collected(proj / "work.py")
    # Followed through imports, siblings, packages and relative imports; not json (the
    # standard library), msgpack (installed), a module found nowhere, nor pkg.unused.
    assert set(c.modules) == {"work", "helpers", "deep", "optional_helper", "pkg", "pkg.sub", "pkg.util"}
    assert c.modules["pkg"].package and not c.modules["pkg.sub"].package
    assert c.modules["deep"].source == PROJECT["deep.py"]
    assert c.modules["work"].filename == str(proj / "work.py")
    # What a shipped module imports from installed distributions is checked on the node,
    # but not an import a try guards, nor one for type checkers only.
    assert dict(c.modules["work"].requires) == {"msgpack": MSGPACK}
    assert dict(c.modules["optional_helper"].requires) == {"kazoo": importlib.metadata.version("kazoo")}
    assert dict(c.modules["helpers"].requires) == {}
    assert c.requires == {}  # the file itself is the client's: nothing by reference


def test_a_namespace_package_and_a_relative_import_above_the_top_are_no_error(tmp_path):
    proj = write(
        tmp_path / "proj",
        {"work.py": "from space import leaf\n", "space/leaf.py": "from .. import nothing\n"},
    )
    c = collected(proj / "work.py")
    assert set(c.modules) == {"work", "space", "space.leaf"}
    assert c.modules["space"].package and c.modules["space"].source is None


def test_a_local_module_that_is_not_source_cannot_travel(tmp_path):
    proj = write(tmp_path / "proj", {"work.py": "import fast\n"})
    (proj / f"fast{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    with pytest.raises(code.Unshippable, match="fast"):
        collected(proj / "work.py")


@pytest.fixture
def client_modules(tmp_path, monkeypatch):
    """Local modules imported in this process, as a client's would be; gone afterwards."""
    write(
        tmp_path / "client",
        {
            "shipme_work.py": "import shipme_helpers\n\ndef f(x):\n    return shipme_helpers.score(x)\n",
            "shipme_helpers.py": "def score(x):\n    return x + 1\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path / "client"))
    yield importlib.import_module("shipme_work"), importlib.import_module("shipme_helpers")
    for name in ("shipme_work", "shipme_helpers"):
        sys.modules.pop(name, None)


def test_an_executor_function_starts_from_its_module_or_from_what_it_refers_to(client_modules):
    work, helpers = client_modules

    def collect(fn) -> code.Collector:
        c = code.Collector()
        c.add_callable(fn)
        return c

    assert set(collect(work.f).modules) == {"shipme_work", "shipme_helpers"}  # by reference, transitively
    by_value = collect(lambda x: helpers.score(x) * 2)  # by value: the modules of the names it uses
    assert set(by_value.modules) == {"shipme_helpers"} and by_value.requires == {}
    assert collect(lambda x: msgpack.packb(x)).requires == {"msgpack": MSGPACK}
    assert collect(msgpack.unpackb).requires == {"msgpack": MSGPACK}
    # Nothing to add: the blob is the plain cloudpickle one, as earlier clients sent.
    assert code.pack_callable(abs) == payload.pack_callable(abs)
    assert code.pack_reference("math", "sqrt") == payload.pack_reference("math", "sqrt")


# ------------------------------------------------------------ on the node

NODE = """
import json, os, sys
from cluster.contract import payload
fn = payload.load_function(sys.stdin.buffer.read())
out = {"result": fn(*json.loads(sys.argv[1])), "path": sys.path, "cwd": os.getcwd()}
try:
    __import__(sys.argv[2])
    out["extra"] = "imported"
except ImportError as exc:
    out["extra"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def run_on_node(blob: bytes, cwd: Path, args: list, then_import: str = "json") -> subprocess.CompletedProcess:
    """Load and call the blob as a worker does (``-P``, in a directory of its own), with
    ``cwd`` as its working directory and on its PYTHONPATH; then try one more import."""
    return subprocess.run(
        [PY, "-P", "-c", NODE, json.dumps(args), then_import],
        input=blob,
        capture_output=True,
        cwd=cwd,
        env={"PYTHONPATH": f"{ROOT}:{cwd}", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def on_node(blob: bytes, cwd: Path, args: list, then_import: str = "json") -> dict:
    res = run_on_node(blob, cwd, args, then_import)
    assert res.returncode == 0, res.stderr.decode()
    return json.loads(res.stdout)


DECOYS = {
    "work.py": "def f(x):\n    return 'the node'\n",
    "helpers.py": "def score(x):\n    return 'the node'\n",
    "pkg/__init__.py": "",
    "pkg/sub.py": "def g(x):\n    return 'the node'\n",
    "pkg/unused.py": "",
}


def test_a_node_runs_the_shipped_sources_never_files_of_the_same_names(tmp_path):
    proj = write(tmp_path / "proj", PROJECT)
    node = write(tmp_path / "node", DECOYS)
    blob = code.pack_file(proj / "work.py", "f")
    assert blob[:1] == b"C"
    out = on_node(blob, node, [5], then_import="pkg.unused")
    assert out["result"] == 10
    # A shipped package has no directory on the node: what the client did not ship is not found.
    assert out["extra"] == "ModuleNotFoundError: No module named 'pkg.unused'"
    assert "" not in out["path"] and "." not in out["path"]


def test_a_shipped_module_whose_import_has_another_version_on_the_node_fails_naming_both(tmp_path):
    module = shipped.Module("needs_old", "/client/needs_old.py", False, "import msgpack\n", {"msgpack": "0.0.1"})
    blob = payload.pack_with_code(payload.pack_reference("needs_old", "f"), [module], {})
    res = run_on_node(blob, tmp_path, [])
    assert res.returncode == 1
    assert f"VersionMismatch: this node has msgpack {MSGPACK}, the client 0.0.1" in res.stderr.decode()


def test_the_version_check_names_both_versions_or_the_missing_distribution():
    shipped.check({"msgpack": MSGPACK})
    with pytest.raises(shipped.VersionMismatch, match=f"^this node has msgpack {MSGPACK}, the client 0.0.1$"):
        shipped.check({"msgpack": "0.0.1"})
    with pytest.raises(shipped.VersionMismatch, match="^this node has no no-such-dist-xyz, the client 1.0$"):
        shipped.check({"no-such-dist-xyz": "1.0"})
    with pytest.raises(shipped.VersionMismatch):  # before anything of the function is loaded
        payload.load_function(payload.pack_with_code(payload.pack_reference("math", "sqrt"), [], {"msgpack": "0"}))


def test_a_module_shipped_again_changed_is_imported_afresh():
    """One Executor's functions share workers; a module changed on the client between them
    must not run in its old version, nor leave modules that imported it on the old one."""
    finder = shipped.ShippedFinder()
    sys.meta_path.insert(0, finder)
    names = ("shipagain_top", "shipagain_leaf")
    try:
        finder.add(
            [
                shipped.Module(names[0], "top.py", False, "from shipagain_leaf import value\n"),
                shipped.Module(names[1], "leaf.py", False, "value = 1\n"),
            ]
        )
        assert importlib.import_module(names[0]).value == 1
        finder.add([shipped.Module(names[1], "leaf.py", False, "value = 2\n")])
        assert importlib.import_module(names[0]).value == 2
    finally:
        sys.meta_path.remove(finder)
        for name in names:
            sys.modules.pop(name, None)


# ------------------------------------------------------------ on a real cluster


@pytest.fixture
def decoy_node(local_cluster, tmp_path):
    """A coordinator and an agent whose working directory holds modules of the names the
    client's code uses, each answering "the node"."""
    agent_cwd = write(tmp_path / "agent-cwd", DECOYS)
    coordinator = local_cluster.coordinator()
    local_cluster.agent("decoy", 2, cwd=agent_cwd)
    local_cluster.wait_ready(coordinator, ["decoy"])
    local_cluster.agent_cwd = agent_cwd
    return local_cluster


def run_client(cluster, script: Path, env: dict | None = None) -> dict:
    """Run a client script (its directory first on its sys.path, as for any script); the
    JSON it prints last."""
    res = subprocess.run(
        [PY, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**cluster.env, **(env or {})},
        cwd=script.parent,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


EXECUTOR_CLIENT = """
import json, sys
from cluster import Executor, VersionMismatch
import {module}

with Executor() as ex:
    try:
        print(json.dumps({{"results": list(ex.map({module}.{func}, range(6)))}}))
    except Exception as exc:
        error = {{"error": f"{{type(exc).__name__}}: {{exc}}"}}
        print(json.dumps({{**error, "mismatch": True}} if isinstance(exc, VersionMismatch) else error))
"""


def executor_client(root: Path, module: str, func: str) -> Path:
    (root / "client.py").write_text(EXECUTOR_CLIENT.format(module=module, func=func))
    return root / "client.py"


def test_a_module_in_the_agents_working_directory_is_never_used(decoy_node, tmp_path):
    client = write(
        tmp_path / "client",
        {
            "work.py": """
                import os, sys

                def f(x):
                    return {"who": "the client", "path": sys.path, "cwd": os.getcwd()}
            """
        },
    )
    out = run_client(decoy_node, executor_client(client, "work", "f"))
    agent_cwd = str(decoy_node.agent_cwd)
    for row in out["results"]:
        assert row["who"] == "the client"
        assert "" not in row["path"] and agent_cwd not in row["path"] and row["cwd"] not in row["path"], row
        assert row["cwd"] != agent_cwd  # the job's own working directory


def test_a_shipped_file_that_imports_a_sibling_works(decoy_node, tmp_path):
    proj = write(tmp_path / "proj", PROJECT)
    res = decoy_node.clusterctl("submit", f"{proj / 'work.py'}:f", "--range", "0", "6", "--ordered")
    assert res.returncode == 0, res.stderr
    assert [json.loads(line)["result"] for line in res.stdout.splitlines()] == [2 * x for x in range(6)]


def test_an_executor_function_from_a_local_package_with_submodules_works(decoy_node, tmp_path):
    client = write(tmp_path / "client", {name: text for name, text in PROJECT.items() if name.startswith("pkg/")})
    out = run_client(decoy_node, executor_client(client, "pkg.sub", "g"))
    assert out == {"results": [2 * (x + 1) for x in range(6)]}


MYPKG = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "mypkg"
        version = "{version}"

        [tool.setuptools]
        py-modules = ["mypkg"]
    """,
    "mypkg.py": """
        def f(x):
            return "{version}"
    """,
}


def install_mypkg(tmp_path: Path, version: str) -> Path:
    """mypkg VERSION, built here and installed in a directory of its own (nothing is fetched)."""
    project = write(tmp_path / f"mypkg-{version}", {n: t.replace("{version}", version) for n, t in MYPKG.items()})
    target = tmp_path / f"site-{version}"
    subprocess.run(
        [PY, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation"]
        + ["--target", str(target), str(project)],
        check=True,
        capture_output=True,
        timeout=300,
        env={**dict(__import__("os").environ), "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    return target


def test_an_installed_distribution_of_another_version_on_the_node_fails_naming_both(local_cluster, tmp_path):
    old, new = install_mypkg(tmp_path, "1.0"), install_mypkg(tmp_path, "2.0")
    coordinator = local_cluster.coordinator()
    local_cluster.agent("v2", 2, env={"PYTHONPATH": f"{ROOT}:{new}"})
    local_cluster.wait_ready(coordinator, ["v2"])
    mismatch = "VersionMismatch: this node has mypkg 2.0, the client 1.0"

    res = local_cluster.clusterctl(
        "submit", "mypkg:f", "--range", "0", "4", env={**local_cluster.env, "PYTHONPATH": f"{ROOT}:{old}"}
    )
    # The node cannot load the function: the job stops there, its tasks not run (issue 20).
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines()[-1].endswith(f"mypkg:f — {mismatch} (on v2)")
    client = executor_client(tmp_path, "mypkg", "f")
    failed = run_client(local_cluster, client, env={"PYTHONPATH": f"{ROOT}:{old}"})
    assert failed == {"error": f"LoadError: {mismatch} (on v2)"}  # raised as cluster.LoadError
    # The same client code with the node's version runs: the version is all that failed it.
    assert run_client(local_cluster, client, env={"PYTHONPATH": f"{ROOT}:{new}"}) == {"results": ["2.0"] * 6}


def test_the_executor_collects_a_functions_code_once_not_per_task(running_cluster, client_modules, monkeypatch):
    from cluster import Executor

    work, _ = client_modules
    packed = []
    pack = code.pack_callable
    monkeypatch.setattr(code, "pack_callable", lambda fn: packed.append(fn) or pack(fn))
    with Executor(zk=running_cluster.zk, cluster=running_cluster.name) as ex:
        assert list(ex.map(work.f, range(50))) == [x + 1 for x in range(50)]
        assert ex.submit(work.f, 1).result(timeout=30) == 2
    assert packed == [work.f]
