"""Command-line options generated from the settings of cluster/contract/config.py.

Each field of a config class becomes one option: its flag (``--field-name``, or the
field's own, e.g. ``--id`` for ``relay_id``), its help text, and the dataclass default
shown as "[default: ...]". Only the flags given on the command line reach config.load,
so they override the TOML file and the environment and nothing else does; config.load
converts and checks them, so a bad value is the same one-line error from a flag, a file
or a variable.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any, Optional, TypeVar

import typer

from cluster.contract import config

R = TypeVar("R")

Settings = dict[str, Any]  # setting name -> the flag's value, or None when it was not given

# typer hands the command's click context to the parameter annotated typer.Context; its
# parameter sources tell a flag given from one left at its (displayed) default.
CONTEXT = "options_context"


def option(cls: type[config.Common], name: str, *, env: bool = True) -> Any:
    """The typer option of setting ``name`` of ``cls``; ``env`` names its variable in the help."""
    field = next(f for f in config.settings(cls) if f.name == name)
    hint = typing.get_type_hints(cls)[name]
    text = field.metadata["help"]
    if env:
        text += f" Env {config.env_var(cls, name)}."
    # An empty string means derived (the host name, the route to ZooKeeper): the help says how.
    shown = field.default is not dataclasses.MISSING and field.default is not False and field.default != ""
    return typer.Option(
        field.default if shown else None,
        config.flag(field),
        help=text,
        metavar=None if hint is bool else field.metadata["metavar"] or f"<{hint.__name__}>",
        show_default=shown,
    )


def with_settings(
    cls: type[config.Common], *, only: Iterable[str] | None = None, env: bool = True
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Give a command one option per setting of ``cls`` (or the ``only`` ones), in place of
    its ``settings`` parameter, which receives the flags given as ``Settings``."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in config.settings(cls) if only is None or f.name in only]
    generated = [
        inspect.Parameter(
            n, inspect.Parameter.KEYWORD_ONLY, default=option(cls, n, env=env), annotation=_type(hints[n])
        )
        for n in names
    ]
    context = inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

    def decorate(fn: Callable[..., R]) -> Callable[..., R]:
        own = inspect.signature(fn, eval_str=True).parameters
        if "settings" not in own or set(names) & set(own) or CONTEXT in own:
            raise TypeError(f"{fn.__name__} needs a `settings` parameter and no parameter named as a setting")

        def command(**given: Any) -> R:
            ctx = given.pop(CONTEXT)
            values = {n: given.pop(n) for n in names}
            settings = {n: _value(v) if _on_command_line(ctx, n) else None for n, v in values.items()}
            return fn(settings=settings, **given)

        spliced = [context]
        for p in own.values():
            spliced += generated if p.name == "settings" else [p.replace(kind=p.KEYWORD_ONLY)]
        command.__signature__ = inspect.Signature(spliced)  # type: ignore[attr-defined]
        command.__name__, command.__qualname__, command.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        return command

    return decorate


def _type(hint: Any) -> Any:
    if hint is bool:
        return Optional[bool]
    if typing.get_origin(hint) is dict:
        return Optional[list[str]]  # a repeatable flag, KEY=VALUE each
    return Optional[str]  # config.load converts and checks it, as it does a TOML or environment value


def _on_command_line(ctx: typer.Context, name: str) -> bool:
    return getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"


def _value(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value
