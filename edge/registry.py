"""Things chosen by name: camera sources, model backends, CLI commands, service components.

One :class:`Registry` per kind maps a name to a ``"module:attr"`` target,
imported only when that name is used (nothing heavy at import time).  Other
packages add entries through an entry-point group, as gpiozero's pin factories
do: ``[project.entry-points."edge.cameras"] mycam = "mypkg.cam:MyCamera"``.

One policy for a target whose module is not installed: :meth:`Registry.load`
raises a :class:`~edge.errors.ConfigError` naming the missing module (a door
configured for it must not start without it); :meth:`Registry.optional`
returns None (a CLI command or service component of an extra that is not
installed is simply absent).  A module that is installed but fails to import
is a bug and raises as it is.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

from .errors import ConfigError


class Registry:
    def __init__(self, what: str, group: str, builtin: dict[str, str]) -> None:
        self.what = what
        self.group = group
        self._builtin = dict(builtin)

    def targets(self) -> dict[str, str]:
        """Built-in names first; an installed package may add names but not replace a built-in one."""
        found = {ep.name: ep.value for ep in metadata.entry_points(group=self.group)}
        return {**found, **self._builtin}

    def names(self) -> list[str]:
        return sorted(self.targets())

    def target(self, name: str) -> str:
        try:
            return self.targets()[name]
        except KeyError:
            raise ConfigError(f"unknown {self.what} {name!r}; choose one of {', '.join(self.names())}") from None

    def load(self, name: str) -> Any:
        target = self.target(name)
        try:
            return _import(target)
        except _NotInstalled as exc:
            raise ConfigError(f"{self.what} {name!r} needs the module {exc.module!r}, which is not installed") from None

    def optional(self, name: str) -> Any | None:
        try:
            return _import(self.target(name))
        except _NotInstalled:
            return None


class _NotInstalled(Exception):
    def __init__(self, module: str) -> None:
        super().__init__(module)
        self.module = module


def _import(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the target's own module (or a package above it) missing counts as "not installed";
        # a missing import inside an installed module is a real error.
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise _NotInstalled(exc.name) from exc
        raise
    return getattr(module, attr) if attr else module
