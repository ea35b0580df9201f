"""The deployment tier (``make deploy-test``; ``make test`` leaves it out: the ``deploy``
marker is deselected by default). One deployment for the session, torn down at its end,
also when a test fails or the run is interrupted (Ctrl-C, SIGTERM); its teardown fails
the run if anything of it is left on this host."""

from __future__ import annotations

import atexit
import os
from pathlib import Path

import figures
import pytest
from container import cannot_boot
from deployment import Deployment
from leftovers import interrupt_on_sigterm, sweep_dead_runs, tag_of


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory):
    if cannot_boot():
        pytest.skip(cannot_boot())
    interrupt_on_sigterm()
    swept = sweep_dead_runs()
    if swept:
        print(f"removed what earlier, killed runs left: {', '.join(swept)}")
    deployment = Deployment(tmp_path_factory.mktemp("deploy"), tag_of(os.getpid()))
    # pytest runs the finalizer below after a failure or Ctrl-C too; this covers an exit that skips it.
    atexit.register(deployment.stop)
    try:
        deployment.start()
        figures.record("bring-up", "seconds", deployment.started_in)
        for node, seconds in sorted(deployment.active_after.items()):
            figures.record("bring-up", f"{node} to active", seconds)
        yield deployment
    finally:
        left = deployment.stop()
        figures.write(Path(tmp_path_factory.getbasetemp()) / "deploy-figures.json")
        assert not left, f"the deployment left these behind: {left}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """A failing scenario's report carries the units' journals and ZooKeeper's log."""
    outcome = yield
    report = outcome.get_result()
    deployed = getattr(item, "funcargs", {}).get("deployment")
    if report.failed and isinstance(deployed, Deployment):
        report.sections.append(("deployment: journals and ZooKeeper", deployed.logs()))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if figures.FIGURES:
        terminalreporter.section("deployment figures (seconds)")
        for line in figures.summary():
            terminalreporter.write_line(line)
        for path in figures.WRITTEN:
            terminalreporter.write_line(f"as JSON: {path}")
