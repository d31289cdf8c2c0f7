"""The registry of a family of plugin types (trigger types, destination types): the config's
`type:` names, each mapped to "module:Class", imported only when a config uses it (a heavy
library, Kafka or MQTT, loads only then)."""

from __future__ import annotations

import difflib
import importlib
from typing import Generic, TypeVar, cast

from gateway.errors import FngateError

T = TypeVar("T")


class UnknownType(FngateError, ValueError):
    """A `type:` the family does not know; the message suggests the nearest one."""

    status = 400
    code = "UnknownType"


class Registry(Generic[T]):
    """`family` names the kind of type in messages ("trigger", "destination"); `load` gives the
    class of a type name, which is an instance of T (a Protocol the family's classes meet)."""

    def __init__(self, family: str, targets: dict[str, str]) -> None:
        self.family = family
        self.targets = targets

    def __contains__(self, type_name: object) -> bool:
        return type_name in self.targets

    def names(self) -> list[str]:
        return sorted(self.targets)

    def load(self, type_name: str) -> T:
        """The class of `type_name`; UnknownType when there is none. An ImportError (its
        library is missing) is the caller's to explain."""
        target = self.targets.get(type_name)
        if target is None:
            hint = difflib.get_close_matches(type_name, list(self.targets), n=1)
            known = f"did you mean {hint[0]!r}?" if hint else f"known types: {', '.join(self.names())}"
            raise UnknownType(f"unknown {self.family} type {type_name!r}; {known}")
        module_name, class_name = target.split(":")
        return cast(T, getattr(importlib.import_module(module_name), class_name))
