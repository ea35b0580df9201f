"""The dashboard's settings: the cluster's (zk, cluster, keys, zk_auth) and its own, in the
``[dashboard]`` table of a config file, as CLUSTER_DASHBOARD_* variables and as flags."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from cluster.contract.config import Common, setting


@dataclasses.dataclass(frozen=True, kw_only=True)
class DashboardConfig(Common):
    section: ClassVar[str] = "dashboard"

    host: str = setting(
        "127.0.0.1",
        "Address to listen on. Any address but loopback requires the token (given, or generated and printed).",
        metavar="ADDRESS",
    )
    port: int = setting(8470, "Port to listen on; 0 picks a free one (printed).")
    token_file: str = setting(
        "", "File holding the token browsers must present (default off loopback: a new one each start).", metavar="FILE"
    )
    certfile: str = setting("", "TLS certificate chain (PEM): serve HTTPS.", metavar="FILE")
    keyfile: str = setting("", "TLS private key (PEM), when not in the certificate file.", metavar="FILE")
    idle_poll: float = setting(
        10.0, "Seconds between the leader's status requests while no browser watches (0: none); 1 while one does."
    )
