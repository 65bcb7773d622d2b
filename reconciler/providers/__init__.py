"""Provider adapters, one module per provider, all behind `ProviderAdapter` (providers.base).

Modules are imported lazily: validating manifests imports a provider's schemas, never httpx.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.providers.base import ProviderAdapter

#: type name -> "module:class"
PROVIDER_TYPES: dict[str, str] = {
    "predicthq": "reconciler.providers.predicthq:PredictHQAdapter",
    "rebase": "reconciler.providers.rebase:RebaseAdapter",
    "roboflow": "reconciler.providers.roboflow:RoboflowAdapter",
    "lucid": "reconciler.providers.lucid:LucidAdapter",
    "photogpt": "reconciler.providers.photogpt:PhotoGPTAdapter",
}


@cache
def known_types() -> tuple[str, ...]:
    """Provider types whose adapter module is installed."""
    out = []
    for name, target in PROVIDER_TYPES.items():
        try:
            importlib.import_module(target.split(":")[0])
        except ModuleNotFoundError as exc:
            if exc.name != target.split(":")[0]:
                raise
            continue
        out.append(name)
    return tuple(out)


@cache
def adapter_class(type_name: str) -> type[ProviderAdapter]:
    module, _, attr = PROVIDER_TYPES[type_name].partition(":")
    cls: type[ProviderAdapter] = getattr(importlib.import_module(module), attr)
    return cls
