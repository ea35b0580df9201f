"""Run a coordinator in the foreground. Several may run: one leads, the others stand by.

Examples:

  clusterctl coordinator --zk zk1:2181,zk2:2181,zk3:2181

  clusterctl coordinator --bind tcp://0.0.0.0:5555 --advertise head.example.org
"""

from __future__ import annotations

from cluster.cli.daemon_command import daemon_command
from cluster.contract import config
from cluster.coordinator.service import Coordinator

coordinator = daemon_command(config.CoordinatorConfig, Coordinator, stop=Coordinator.stop)
