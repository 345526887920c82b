"""Registries: a component (algorithm, model, dataset, inner rule) registers ``name -> builder``
in its own module; a config picks it by name and hands it its options as keywords."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple


class ConfigError(ValueError):
    """A config key or value that cannot work; raised before anything is compiled."""


def closest(key: str, options: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the option nearest to ``key``, or ``""``.

    Example:
      >>> closest("inner_lrr", ["inner_lr", "inner_steps"])
      " Did you mean 'inner_lr'?"
    """
    near = difflib.get_close_matches(key, list(options), n=1)
    return f" Did you mean {near[0]!r}?" if near else ""


class Entry(NamedTuple):
    """One registered component.

    Attributes:
      name: the name a config picks it by.
      builder: the function that builds it from its options (and what the other components
        supply, see the registry).
      options: ``{key: default}`` of its config options (the keyword parameters of the function
        given as ``options`` at registration, else of ``builder``).
      required: options without a default, which a config must give.
      attributes: what the registration declared about the component besides its options.
    """

    name: str
    builder: Callable
    options: dict
    required: tuple
    attributes: dict


def _takes_function(param: inspect.Parameter) -> bool:
    annotation = param.annotation
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    takes = param.default is not param.empty and callable(param.default)
    return takes or "Callable" in str(text) or "InnerRule" in str(text)


def keyword_options(fn: Callable, reserved: Iterable[str] = ()) -> tuple[dict, tuple]:
    """``({key: default}, required)`` of the keyword parameters of ``fn`` that a config can set:
    not in ``reserved`` (values the other components supply) and not taking a function.

    Example:
      >>> def factory(model, inner_lr=0.01, *, ways, loss_fn=print, remat=False): ...
      >>> keyword_options(factory, reserved=("model", "ways"))
      ({'inner_lr': 0.01, 'remat': False}, ())
    """
    options, required = {}, []
    reserved = set(reserved)
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) or name in reserved:
            continue
        if name.startswith("_") or _takes_function(p):
            continue
        if p.default is p.empty:
            required.append(name)
        else:
            options[name] = p.default
    return options, tuple(required)


class Registry:
    """Names of one kind of component mapped to their builders.

    ``reserved`` names parameters that the build supplies from the other components (the model
    an algorithm wraps, the classes of an episode...): they are never config options.

    Example:
      >>> shapes = Registry("shape")
      >>> @shapes.register("square")
      ... def square(*, side=1.0):
      ...     return side * side
      >>> entry = shapes["square"]
      >>> entry.options, entry.builder(**entry.options)
      ({'side': 1.0}, 1.0)
      >>> shapes["sqare"]
      Traceback (most recent call last):
        ...
      jmeta.core._registry.ConfigError: Unknown shape 'sqare'. Did you mean 'square'? Registered: square.
    """

    def __init__(self, kind: str, *, reserved: Iterable[str] = ()):
        self.kind = kind
        self.reserved = tuple(reserved)
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, builder: Callable | None = None, *,
                 options: Callable | None = None, exclude: Iterable[str] = (),
                 **attributes: Any):
        """Registers ``builder`` under ``name``; without ``builder``, a decorator.

        ``options`` is the function whose keyword parameters are the component's config options
        (default: ``builder``'s own), less ``exclude``. Registering a name again with another
        function is an error, except for the same function re-imported (same module and name).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self.kind} needs a non-empty name; got {name!r}.")

        def add(fn: Callable) -> Callable:
            old = self._entries.get(name)
            if old is not None and (getattr(old.builder, "__module__", None),
                                    getattr(old.builder, "__qualname__", None)) != (
                    getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)):
                raise ValueError(f"The {self.kind} {name!r} is already registered by "
                                 f"{old.builder.__module__}; register yours under another name.")
            opts, required = keyword_options(options or fn, (*self.reserved, *exclude))
            self._entries[name] = Entry(name, fn, opts, required, dict(attributes))
            return fn

        return add if builder is None else add(builder)

    def __getitem__(self, name: str) -> Entry:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries))
            raise ConfigError(f"Unknown {self.kind} {name!r}.{closest(str(name), self._entries)} "
                              f"Registered: {known}.")
        return self._entries[name]

    def __contains__(self, name) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)
