"""The static catalog of provider types: the one place that lists them.

Each entry is a provider package's type record (`providers/<name>/schema.py`); adapters are named
there by "module:Class" and imported only when reconciler talks to that provider, so validating a
manifest never loads an adapter, its HTTP client or httpx.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING, Any

from reconciler.providers.lucid.schema import LUCID
from reconciler.providers.photogpt.schema import PHOTOGPT
from reconciler.providers.predicthq.schema import PREDICTHQ
from reconciler.providers.provider_type import ProviderType
from reconciler.providers.rebase.schema import REBASE
from reconciler.providers.roboflow.schema import ROBOFLOW

if TYPE_CHECKING:
    from reconciler.providers.base import ProviderAdapter

CATALOG: dict[str, ProviderType[Any, Any]] = {t.name: t for t in (PREDICTHQ, REBASE, ROBOFLOW, LUCID, PHOTOGPT)}


def known_types() -> tuple[str, ...]:
    """The provider type names, in the catalog's order."""
    return tuple(CATALOG)


def provider_type(name: str) -> ProviderType[Any, Any]:
    """The type record of `name`; KeyError for a type the catalog does not list."""
    return CATALOG[name]


def base_urls() -> dict[str, str | None]:
    """Every type's built-in base URL (None: no public host), for the trust policy."""
    return {name: t.default_base_url for name, t in CATALOG.items()}


def key_envs() -> set[str]:
    """Every type's default key variable (`<TYPE>_API_KEY`), for redaction."""
    return {t.key_env for t in CATALOG.values()} | {f"{name.upper()}_API_KEY" for name in CATALOG}


@cache
def adapter_class(name: str) -> type[ProviderAdapter[Any, Any]]:
    """The adapter class of a type, imported on first use."""
    module, _, attr = CATALOG[name].adapter.partition(":")
    cls: type[ProviderAdapter[Any, Any]] = getattr(importlib.import_module(module), attr)
    return cls
