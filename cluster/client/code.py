"""What of the client's code travels with a function (``cluster/contract/shipped.py``
serves it on the nodes).

A module is *local* when it is neither built in, nor in the standard library, nor part of
an installed distribution (``importlib.metadata.packages_distributions``; an editable
install counts as installed): the client's own files. Local modules travel as source:
the ones a function needs, found by following ``import`` statements from where it starts
(its module; for a function cloudpickle sends by value, the modules of the names it
refers to and the main script's imports). Installed code travels by reference, with the
client's version of its distribution, which the node must have: for what the function
refers to, checked before it is loaded; for what a shipped module imports (but imports a
``try`` guards, or ``if TYPE_CHECKING``), when the node imports that module.

Looked up with the finders of ``importlib`` and never imported here: collecting runs no
code of the client's.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import site
import sys
import sysconfig
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from cluster.client import imports
from cluster.contract import payload, shipped

# What a top-level name is, as the cluster moves it.
LOCAL = "local"  # ships as source
INSTALLED = "installed"  # by reference, its distribution's version checked
STANDARD = "standard"  # by reference: built in, the standard library, or installed without metadata
MISSING = "missing"  # not found on the client: left to the node, as Python would leave it

MAX_MEMBERS = 256  # a container a by-value function refers to is searched for code up to this size
MAIN = ("__main__", "__mp_main__")


class Unshippable(ValueError):
    """A local module the cluster cannot ship: not Python source (an extension module,
    bytecode only). Installing it on the nodes makes it travel by reference."""


def pack_callable(fn: Callable) -> bytes:
    """An Executor function's blob: cloudpickled, with the client's code it needs."""
    collector = Collector()
    collector.add_callable(fn)
    return collector.pack(payload.pack_callable(fn))


def pack_reference(module: str, func: str) -> bytes:
    """``MODULE:FUNC``: the module ships if it is local, is checked if it is installed."""
    collector = Collector()
    collector.reach(module)
    return collector.pack(payload.pack_reference(module, func))


def pack_file(path: Path, func: str) -> bytes:
    """``path/to/file.py:FUNC``: the file and the local modules it imports, resolved as
    running the file would (its directory first)."""
    collector = Collector(search=[str(path.parent)])
    collector.add_file(path.stem, path)
    return collector.pack(payload.pack_reference(path.stem, func))


class Collector:
    """The local modules to ship and the distributions to check, for one function."""

    def __init__(self, search: Sequence[str] = ()):
        self.search = [os.path.abspath(d) for d in search]  # looked in before sys.path, as a script's directory
        self.modules: dict[str, shipped.Module] = {}
        self.requires: dict[str, str] = {}
        self._seen: set[str] = set()
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}
        self._kinds: dict[str, tuple[str, list[str]]] = {}

    def pack(self, function: bytes) -> bytes:
        return payload.pack_with_code(function, self.modules.values(), self.requires)

    # ------------------------------------------------------------ where code starts

    def reach(self, name: str) -> None:
        """Code of module ``name`` travels by reference: ship the module if it is local,
        check its distribution's version if it is installed."""
        kind, dists = self._kind(name)
        if kind == LOCAL:
            self._follow([name])
        elif kind == INSTALLED:
            self.requires.update(self._versions(name, dists))

    def add_callable(self, fn: Callable) -> None:
        if _by_reference(fn):
            self.reach(fn.__module__)
            return
        for name in _modules_reached(fn, set()):
            self.reach(name)
        if _travels_by_value(fn):
            self._follow_main()

    def add_file(self, name: str, path: Path) -> None:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None:
            raise Unshippable(f"{path} is not a Python file")
        self._seen.add(name)
        self._follow(self._ship(name, spec))

    # ------------------------------------------------------------ following imports

    def _follow(self, pending: list[str]) -> None:
        while pending:
            name = pending.pop()
            for part in _prefixes(name):  # importing a submodule imports its packages
                if part in self._seen:
                    continue
                self._seen.add(part)
                spec = self._spec(part) if self._kind(part)[0] == LOCAL else None
                if spec is None:
                    break
                pending.extend(self._ship(part, spec))

    def _ship(self, name: str, spec: importlib.machinery.ModuleSpec) -> list[str]:
        """Add the module; the local modules it imports."""
        package = spec.submodule_search_locations is not None
        source = _source(name, spec)
        local, requires = [], {}
        try:
            named = imports.named(source or "", name if package else name.rpartition(".")[0])
        except SyntaxError:
            named = ()  # it fails on the node as it would here, when it is imported
        for imported, optional in named:
            kind, dists = self._kind(imported)
            if kind == LOCAL:
                local.append(imported)
            elif kind == INSTALLED and not optional:
                requires.update(self._versions(imported, dists))
        self.modules[name] = shipped.Module(name, spec.origin or name, package, source, requires)
        return local

    def _follow_main(self) -> None:
        """The local modules the main script imports: a by-value function's code may use them
        through names it does not spell (a method of an argument, say)."""
        main = sys.modules.get("__main__")
        path = getattr(main, "__file__", None)
        if not isinstance(path, str) or _installed_location(path):
            return
        try:
            source = Path(path).read_bytes()
            named = imports.named(importlib.util.decode_source(source), getattr(main, "__package__", None) or "")
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            return  # not Python source we can read (an interpreter's launcher, say): nothing to follow
        self._follow([name for name, _ in named if self._kind(name)[0] == LOCAL])

    # ------------------------------------------------------------ what a name is

    def _kind(self, name: str) -> tuple[str, list[str]]:
        """LOCAL, INSTALLED (with the distributions of its top-level name), STANDARD or MISSING."""
        top = name.partition(".")[0]
        if top not in self._kinds:
            self._kinds[top] = self._kind_of_top(top)
        return self._kinds[top]

    def _kind_of_top(self, top: str) -> tuple[str, list[str]]:
        if top in sys.builtin_module_names or top in sys.stdlib_module_names or top in MAIN:
            return STANDARD, []
        spec = self._spec(top)
        if spec is not None and self.search and _under(_location(spec), self.search):
            return LOCAL, []  # the script's own directory comes first, as when it runs
        dists = _distributions().get(top)
        if dists:
            return INSTALLED, dists
        if spec is None:
            return MISSING, []
        location = _location(spec)
        if spec.origin in ("built-in", "frozen") or location is None or _installed_location(location):
            return STANDARD, []
        return LOCAL, []

    def _spec(self, name: str) -> importlib.machinery.ModuleSpec | None:
        if name not in self._specs:
            self._specs[name] = self._find(name)
        return self._specs[name]

    def _find(self, name: str) -> importlib.machinery.ModuleSpec | None:
        parent, _, _ = name.rpartition(".")
        if parent:  # in the parent package's directories, without importing the parent
            parent_spec = self._spec(parent)
            locations = parent_spec.submodule_search_locations if parent_spec else None
            return importlib.machinery.PathFinder.find_spec(name, list(locations)) if locations else None
        if self.search:
            spec = importlib.machinery.PathFinder.find_spec(name, self.search)
            if spec is not None:
                return spec
        try:
            return importlib.util.find_spec(name)
        except (ImportError, ValueError):  # ValueError: in sys.modules without a spec
            return None

    def _versions(self, name: str, dists: list[str]) -> dict[str, str]:
        out = {}
        for dist in _owners(name, tuple(dists)):
            version = _version(dist)
            if version is not None:
                out[dist] = version
        return out


# ------------------------------------------------------------ functions and what they reach


def _by_reference(obj: object) -> bool:
    """cloudpickle sends a function or class by reference when its module, imported, has it
    under its qualified name; anything else by value."""
    if not isinstance(obj, (types.FunctionType, type)):
        return False
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    if module is None or module.__name__ in MAIN:
        return False
    target: object = module
    for part in obj.__qualname__.split("."):
        target = getattr(target, part, None)
    return target is obj


def _travels_by_value(fn: object) -> bool:
    while isinstance(fn, (functools.partial, types.MethodType)):
        fn = fn.func if isinstance(fn, functools.partial) else fn.__func__
    return isinstance(fn, (types.FunctionType, type)) and not _by_reference(fn)


def _modules_reached(obj: object, seen: set[int]) -> Iterator[str]:
    """The modules whose code ``obj`` reaches by reference when cloudpickle sends it: its own,
    or for what goes by value, those of the names its code uses, its closure and defaults."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, types.ModuleType):
        yield obj.__name__
    elif isinstance(obj, functools.partial):
        for member in (obj.func, *obj.args, *obj.keywords.values()):
            yield from _modules_reached(member, seen)
    elif isinstance(obj, types.MethodType):
        yield from _modules_reached(obj.__func__, seen)
        yield from _modules_reached(obj.__self__, seen)
    elif isinstance(obj, (types.FunctionType, type)):
        if _by_reference(obj):
            yield obj.__module__
            return
        for member in _members(obj):
            yield from _modules_reached(member, seen)
    elif isinstance(obj, types.BuiltinFunctionType):
        if isinstance(obj.__module__, str):
            yield obj.__module__
    elif isinstance(obj, (list, tuple, set, frozenset, dict)):
        if len(obj) <= MAX_MEMBERS:
            for member in obj.values() if isinstance(obj, dict) else obj:
                yield from _modules_reached(member, seen)
    else:
        own = getattr(obj, "__module__", None)
        if isinstance(own, str) and own != type(obj).__module__:
            yield own  # a function of an extension module (Cython's, say)
        if type(obj).__module__ != "builtins":
            yield from _modules_reached(type(obj), seen)


def _members(obj: types.FunctionType | type) -> list[object]:
    """What cloudpickle sends with a function or class it sends by value."""
    if isinstance(obj, type):
        return [*obj.__bases__, *vars(obj).values()]
    names = set(_names(obj.__code__))
    members = [value for name, value in obj.__globals__.items() if name in names]
    for cell in obj.__closure__ or ():
        try:
            members.append(cell.cell_contents)
        except ValueError:  # a cell not assigned yet
            pass
    members += [*(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values()]
    return members


def _names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


# ------------------------------------------------------------ sources


def _prefixes(name: str) -> Iterator[str]:
    parts = name.split(".")
    for n in range(1, len(parts) + 1):
        yield ".".join(parts[:n])


def _location(spec: importlib.machinery.ModuleSpec) -> str | None:
    if spec.has_location and spec.origin:
        return spec.origin
    locations = list(spec.submodule_search_locations or ())
    return locations[0] if locations else None


def _source(name: str, spec: importlib.machinery.ModuleSpec) -> str | None:
    """The module's source; None for a namespace package."""
    if spec.origin is None and spec.submodule_search_locations is not None:
        return None
    origin = spec.origin or ""
    if not origin.endswith(".py"):
        raise Unshippable(
            f"local module {name} ({origin}) is not Python source, which is all that travels: install it on the nodes"
        )
    with open(origin, "rb") as f:
        return importlib.util.decode_source(f.read())


# ------------------------------------------------------------ what is installed


@functools.lru_cache(maxsize=1)
def _distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


@functools.lru_cache(maxsize=256)
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=256)
def _owners(name: str, dists: tuple[str, ...]) -> tuple[str, ...]:
    """The distributions of ``name`` among those sharing its top-level name (a namespace
    package's): those whose files hold it, else all of them."""
    if len(dists) == 1:
        return dists
    stem = name.replace(".", "/")
    owners = tuple(d for d in dists if any(_holds(str(f), stem) for f in importlib.metadata.files(d) or ()))
    return owners or dists


def _holds(path: str, stem: str) -> bool:
    return path.startswith(stem + "/") or path in (stem + ".py", stem + "/__init__.py")


@functools.lru_cache(maxsize=1)
def _installed_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    dirs.update(getattr(site, "getsitepackages", list)())
    dirs.add(site.getusersitepackages())
    return tuple(os.path.realpath(d) for d in dirs if d)


def _installed_location(path: str) -> bool:
    return _under(path, _installed_dirs())


def _under(path: str | None, dirs: Sequence[str]) -> bool:
    if not path:
        return False
    real = os.path.realpath(path)
    return any(real == d or real.startswith(d.rstrip(os.sep) + os.sep) for d in map(os.path.realpath, dirs))
