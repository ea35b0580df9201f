"""The modules a Python source's ``import`` statements name (``code.py`` follows them)."""

from __future__ import annotations

import ast
import functools
import importlib.util


@functools.lru_cache(maxsize=1024)
def named(source: str, package: str) -> tuple[tuple[str, bool], ...]:
    """Every module an import in ``source`` names, absolute, with whether it is optional
    (in a ``try`` with handlers, or under ``if TYPE_CHECKING``). ``package``: the package
    relative imports start from. ``from X import a`` names X and X.a (a may be a submodule)."""
    visitor = _ImportVisitor(package)
    visitor.visit(ast.parse(source))
    return tuple(visitor.found)


class _ImportVisitor(ast.NodeVisitor):
    def __init__(self, package: str):
        self.package = package
        self.optional = 0
        self.found: list[tuple[str, bool]] = []

    def visit_Try(self, node: ast.Try) -> None:
        self._try(node)

    def visit_TryStar(self, node: ast.TryStar) -> None:
        self._try(node)

    def _try(self, node: ast.Try | ast.TryStar) -> None:
        if not node.handlers:
            self.generic_visit(node)
            return
        self._optional(node.body)
        for child in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(child)

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self._optional(node.body)
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            try:
                base = importlib.util.resolve_name("." * node.level + base, self.package)
            except (ImportError, ValueError):  # above the top-level package: fails on the client too
                return
        if not base:
            return
        self._add(base)
        for alias in node.names:
            if alias.name != "*":
                self._add(f"{base}.{alias.name}")

    def _optional(self, body: list[ast.stmt]) -> None:
        self.optional += 1
        for child in body:
            self.visit(child)
        self.optional -= 1

    def _add(self, name: str) -> None:
        self.found.append((name, self.optional > 0))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )
