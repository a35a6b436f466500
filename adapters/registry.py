"""Adapter kinds by name: the bundled ones, plus any registered by a plugin package.

A plugin adds a kind through the entry point group `tmf678_gateway.adapters`,
naming a class whose constructor takes `(name, **options)` from the back end's config.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from adapters.base import Adapter, BackendError
from gateway.config import BackendConfig, ConfigError

ENTRY_POINT_GROUP = "tmf678_gateway.adapters"

_BUNDLED = {
    "sql": "adapters.sql:SqlAdapter",
    "rest": "adapters.rest:RestAdapter",
    "soap": "adapters.soap:SoapAdapter",
}


def adapter_class(kind: str) -> type[Any]:
    target = _BUNDLED.get(kind)
    if target is not None:
        module, _, name = target.partition(":")
        return getattr(import_module(module), name)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == kind:
            return entry.load()
    known = sorted({*_BUNDLED, *(e.name for e in entry_points(group=ENTRY_POINT_GROUP))})
    raise LookupError(f"unknown back-end kind {kind!r} (known: {', '.join(known)})")


def build_adapter(backend: BackendConfig) -> Adapter:
    """An unopened adapter for a configured back end."""
    try:
        cls = adapter_class(backend.kind)
    except LookupError as exc:
        raise ConfigError("config", f"backends.{backend.name}.kind", None, str(exc)) from None
    try:
        return cls(backend.name, **backend.options)
    except (TypeError, BackendError) as exc:
        raise ConfigError("config", f"backends.{backend.name}", None, str(exc)) from None
