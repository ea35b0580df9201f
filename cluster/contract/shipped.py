"""The client's own modules on a node: served from the sources that came with the function.

A function blob may carry the sources of the modules the client's code needs that no
distribution installs (``cluster/client/code.py`` finds them) and the versions of the
distributions it reaches by reference. The worker checks those versions before the
function is loaded (``check``) and puts one ``ShippedFinder`` first on ``sys.meta_path``
(``serve``): an import of a shipped module runs the client's source, never a file of the
same name on the node. A shipped package's ``__path__`` is empty, so a submodule the
client did not ship is not found on the node either.

A worker serves one job (agents/worker.py), so what one job shipped is never seen by
another; the finder lives as long as its process.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.metadata
import sys
import types
from collections.abc import Iterable, Mapping
from importlib.machinery import ModuleSpec


class VersionMismatch(ImportError):
    """The node has another version of a distribution the client's code uses, or none."""


@dataclasses.dataclass(frozen=True)
class Module:
    """One shipped module: its source, and the distributions its own imports reach with
    the versions the client has (checked when the node imports it)."""

    name: str
    filename: str  # where the client has it: tracebacks name the client's file
    package: bool
    source: str | None  # None: a namespace package (a directory without __init__.py)
    requires: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def record(self) -> dict:
        return {
            "name": self.name,
            "file": self.filename,
            "package": self.package,
            "source": self.source,
            "requires": dict(sorted(self.requires.items())),
        }

    @classmethod
    def from_record(cls, record: dict) -> Module:
        return cls(record["name"], record["file"], record["package"], record["source"], record.get("requires") or {})


def check(requires: Mapping[str, str]) -> None:
    """Raise VersionMismatch unless this node has each distribution in the client's version."""
    for dist, wanted in requires.items():
        try:
            have = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise VersionMismatch(f"this node has no {dist}, the client {wanted}") from None
        if have != wanted:
            raise VersionMismatch(f"this node has {dist} {have}, the client {wanted}")


class ShippedFinder(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    """Finds and loads exactly the shipped modules."""

    def __init__(self) -> None:
        self.modules: dict[str, Module] = {}

    def add(self, modules: Iterable[Module]) -> None:
        """Serve these too. Jobs that share workers (one Executor's functions) may ship a
        module again, changed on the client meanwhile: then every module imported from
        here is imported afresh on next use, as the modules that import it may differ too."""
        new = {m.name: m for m in modules}
        if any(self.modules.get(name, m) != m for name, m in new.items()):
            for name in list(self.modules):
                if getattr(sys.modules.get(name), "__loader__", None) is self:
                    del sys.modules[name]
        self.modules.update(new)

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        module = self.modules.get(fullname)
        if module is None:
            return None
        spec = ModuleSpec(fullname, self, origin=module.filename, is_package=module.package)
        spec.has_location = module.source is not None  # __file__: the client's path, for tracebacks
        return spec

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module

    def exec_module(self, module: types.ModuleType) -> None:
        shipped = self.modules[module.__name__]
        check(shipped.requires)
        if shipped.package:
            module.__path__ = []  # submodules come from here or nowhere
        if shipped.source is not None:
            exec(self.get_code(module.__name__), module.__dict__)

    def get_code(self, fullname: str) -> types.CodeType:
        shipped = self.modules[fullname]
        return compile(shipped.source or "", shipped.filename, "exec", dont_inherit=True)

    def get_source(self, fullname: str) -> str | None:
        shipped = self.modules.get(fullname)
        if shipped is None:
            raise ImportError(f"{fullname} was not shipped", name=fullname)
        return shipped.source

    def is_package(self, fullname: str) -> bool:
        return self.modules[fullname].package


_finder: ShippedFinder | None = None


def serve(modules: Iterable[Module]) -> None:
    """Serve these modules in this process, before anything on the node's path."""
    global _finder
    if _finder is None:
        _finder = ShippedFinder()
        sys.meta_path.insert(0, _finder)
    _finder.add(modules)
