"""One node booted on the deployment's network, then waiting to be interrupted: the
harness's own cleanup must leave nothing behind (test_cleanup.py). Argument: a work dir."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from deployment import Deployment
from leftovers import interrupt_on_sigterm, tag_of

if __name__ == "__main__":
    interrupt_on_sigterm()
    deployment = Deployment(Path(sys.argv[1]), tag_of(os.getpid()))
    try:
        deployment.prepare()
        deployment.add_node("node").boot()
        print("booted", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        left = deployment.stop()
    sys.exit(1 if left else 0)
