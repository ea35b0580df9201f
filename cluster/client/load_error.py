"""``cluster.LoadError``: a job's function does not load on the nodes.

Not a task's failure but a node's (the module is not installed there, the name is
mistyped, importing the module raises): a node that cannot load it refuses the job, and
the job fails with this error, from every call still pending, once no node can load it.
"""

from __future__ import annotations

from collections.abc import Sequence

from cluster.contract import payload


class LoadError(Exception):
    """The job's function could not be loaded on the nodes. ``errors``: one dict per node,
    {"node", "type", "message", "traceback"}: what loading the function raised there (the
    exception's type and first line; the traceback when short, else "")."""

    def __init__(self, errors: Sequence[dict[str, str]]):
        super().__init__(list(errors))  # the only argument: so it pickles, and unpickles, as it is
        self.errors = list(errors)
        tracebacks = [e["traceback"] for e in self.errors if e.get("traceback")]
        if tracebacks:
            self.__cause__ = payload.RemoteTraceback(tracebacks[0])

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[str]]) -> LoadError:
        """From the wire's [node, type, message, traceback] rows (wire.LoadFailed, JobFailed.errors)."""
        return cls([dict(zip(("node", "type", "message", "traceback"), row)) for row in rows])

    @property
    def nodes(self) -> list[str]:
        return [e["node"] for e in self.errors]

    @property
    def node(self) -> str:
        return self.errors[0]["node"] if self.errors else ""

    @property
    def error(self) -> str:
        """The first node's error, as ``Type: message``."""
        return f"{self.errors[0]['type']}: {self.errors[0]['message']}" if self.errors else ""

    def __str__(self) -> str:
        """``Type: message (on node-a, node-b)``, one part per distinct error."""
        by_error: dict[str, list[str]] = {}
        for e in self.errors:
            by_error.setdefault(f"{e['type']}: {e['message']}", []).append(e["node"])
        return "; ".join(
            f"{error} (on {', '.join(sorted(nodes))})" if any(nodes) else error for error, nodes in by_error.items()
        )
