"""clusterd: a distributed cluster daemon. Agents register in ZooKeeper, run
one worker per core, and a coordinator streams tasks to them over ZeroMQ.

The client side (this package) never imports the node side (``agents``).
"""

from .executor import Executor
from .malloc import tune as tune_malloc
from .version import __version__

__all__ = ["Executor", "tune_malloc", "__version__"]
