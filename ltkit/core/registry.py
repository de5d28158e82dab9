"""One tiny registry type, used once per kind of thing (models, losses, datasets, ...).

Modelled on timm's ``register_model`` / ``create_model``: a decorator adds a
factory under a name, and looking up an unknown name raises one error line that
names the bad value and every accepted one. What the rest of the package needs
to know about an entry (a loss's classifier, a model's pretrained tag, ...) is a
typed *spec* dataclass given at registration, next to the factory, so a typo in
a field fails at import and every field has one documented default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

S = TypeVar("S")


class UnknownNameError(ValueError):
    """An unknown registry key; the message lists the valid ones."""


def bad_value(what: str, value: Any, accepted: str) -> str:
    """The one wording of every bad-input message: the field, the value given, what is accepted."""
    return f"bad value for {what!r}: {value!r} (accepted: {accepted})"


def choice_error(kind: str, value: Any, accepted: list[str] | tuple[str, ...]) -> UnknownNameError:
    """The error for a value outside a fixed set (an unknown registry name, say)."""
    return UnknownNameError(bad_value(kind, value, ", ".join(map(str, accepted))))


class Registry(Generic[S]):
    """A name -> (factory, spec) mapping with a ``register`` decorator and clear lookup errors.

    ``spec`` is the dataclass every entry's keyword arguments to ``register`` build
    (None: entries carry no spec).
    """

    def __init__(self, kind: str, spec: Callable[..., S] | None = None) -> None:
        self.kind = kind
        self._spec = spec
        self._items: dict[str, Callable[..., Any]] = {}
        self._info: dict[str, S | None] = {}

    def register(self, name: str, **fields: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        if self._spec is None and fields:
            raise TypeError(f"{self.kind} entries take no spec fields, got {sorted(fields)}")
        spec = self._spec(**fields) if self._spec is not None else None

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            self._info[name] = spec
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._items:
            raise choice_error(self.kind, name, self.names())
        return self._items[name]

    def info(self, name: str) -> S:
        """The entry's spec (raises the one-line error for an unknown name)."""
        self.get(name)
        return self._info[name]  # type: ignore[return-value]

    def names(self) -> list[str]:
        """Every name, sorted (what error messages list)."""
        return sorted(self._items)

    def ordered(self) -> list[str]:
        """Every name in registration order (what tables list them in)."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
