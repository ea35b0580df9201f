"""Runtime plumbing every process shares: the poller loop's helpers (loop), the
daemon harness (daemon), ZooKeeper sessions and recipes (zk, membership), a
private ZooKeeper server (zkserver), systemd's notify protocol (sdnotify),
children that die with their parent (lifeline), malloc tuning and metrics.
It builds on the contract and knows no role's policy."""
