"""One tiny registry type, used once per kind of thing (models, losses, datasets, ...).

Modelled on timm's ``register_model`` / ``create_model``: a decorator adds a
factory under a name, and looking up an unknown name raises one error line that
names the bad value and every accepted one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class UnknownNameError(ValueError):
    """An unknown registry key; the message lists the valid ones."""


def choice_error(kind: str, value: Any, accepted: list[str] | tuple[str, ...]) -> UnknownNameError:
    """Build the one-line error used everywhere for a value outside a fixed set."""
    return UnknownNameError(f"unknown {kind} {value!r}; accepted: {', '.join(map(str, accepted))}")


class Registry:
    """A name -> factory mapping with a ``register`` decorator and clear lookup errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **info: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            self._info[name] = info
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._items:
            raise choice_error(self.kind, name, self.names())
        return self._items[name]

    def info(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._info[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
