"""clusterd: a distributed cluster daemon. Agents register in ZooKeeper, run
one worker per core, and a coordinator streams tasks to them over ZeroMQ.

The client side (this package) never imports the node side (``agents``).
"""

from cluster.client import jobs
from cluster.client.executor import Executor, TaskFuture, TaskStopped
from cluster.client.load_error import LoadError
from cluster.contract.payload import PayloadTooLarge, TaskError, TaskTimeout, WorkerLost
from cluster.contract.shipped import VersionMismatch
from cluster.contract.version import __version__
from cluster.runtime.malloc import tune as tune_malloc

__all__ = [
    "Executor",
    "LoadError",
    "PayloadTooLarge",
    "TaskError",
    "TaskFuture",
    "TaskStopped",
    "TaskTimeout",
    "VersionMismatch",
    "WorkerLost",
    "jobs",
    "tune_malloc",
    "__version__",
]
