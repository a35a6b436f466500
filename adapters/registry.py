"""Adapter kinds by name: the bundled ones, plus any registered by a plugin package.

A plugin adds a kind through the entry point group `tmf678_gateway.adapters`, naming
a class with the contract of `adapters.base.Adapter`: an `Options` model (a
`BackendOptions` whose `kind` is the plugin's name) and a constructor `(name, options)`.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from adapters.base import Adapter, BackendOptions

ENTRY_POINT_GROUP = "tmf678_gateway.adapters"

BUNDLED_KINDS = {
    "sql": "adapters.sql:SqlAdapter",
    "rest": "adapters.rest:RestAdapter",
    "soap": "adapters.soap:SoapAdapter",
}


def known_kinds() -> list[str]:
    return sorted({*BUNDLED_KINDS, *(e.name for e in entry_points(group=ENTRY_POINT_GROUP))})


def adapter_class(kind: str) -> type[Any]:
    """The class of a back-end kind; LookupError naming the known kinds otherwise."""
    target = BUNDLED_KINDS.get(kind)
    if target is not None:
        module, _, name = target.partition(":")
        cls: type[Any] = getattr(import_module(module), name)
        return cls
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == kind:
            loaded: type[Any] = entry.load()
            return loaded
    raise LookupError(f"unknown back-end kind {kind!r} (known: {', '.join(known_kinds())})")


def options_model(kind: str) -> type[BackendOptions]:
    """The options model of a back-end kind (what its config block may say)."""
    model = getattr(adapter_class(kind), "Options", None)
    if not (isinstance(model, type) and issubclass(model, BackendOptions)):
        raise LookupError(f"back-end kind {kind!r} declares no Options model")
    return model


def build_adapter(name: str, options: BackendOptions) -> Adapter:
    """An unopened adapter for a configured back end."""
    adapter: Adapter = adapter_class(options.kind)(name, options)
    return adapter
