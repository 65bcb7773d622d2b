"""The built-in simulators by provider type, and the per-type environment variables.

The registry lists the five built-in simulators statically, as "module:Class" strings imported on
first use; `register_simulator` adds others (tests, plugins).
"""

from __future__ import annotations

import importlib
import logging

from reconciler.sandbox.simulator import Simulator

log = logging.getLogger("reconciler.sandbox")

PROVIDER_TYPES: tuple[str, ...] = ("predicthq", "rebase", "roboflow", "lucid", "photogpt")

#: The API key each simulator accepts by default (`Sandbox(api_keys=...)` overrides).
SANDBOX_API_KEYS: dict[str, str] = {t: f"sandbox-{t}-key" for t in PROVIDER_TYPES}

#: The environment variable each provider type reads its key from (design.md).
KEY_ENV: dict[str, str] = {
    "roboflow": "ROBOFLOW_API_KEY",
    "predicthq": "PREDICTHQ_API_KEY",
    "rebase": "REBASE_API_KEY",
    "lucid": "LUCID_API_KEY",
    "photogpt": "PHOTOGPT_API_KEY",
}

#: Built-in simulators, imported lazily so a module that does not exist yet is simply skipped.
SIMULATOR_PATHS: dict[str, str] = {
    "roboflow": "reconciler.sandbox.roboflow.simulator:RoboflowSimulator",
    "predicthq": "reconciler.sandbox.predicthq.simulator:PredictHQSimulator",
    "rebase": "reconciler.sandbox.rebase.simulator:RebaseSimulator",
    "lucid": "reconciler.sandbox.lucid.simulator:LucidSimulator",
    "photogpt": "reconciler.sandbox.photogpt.simulator:PhotoGPTSimulator",
}


def base_url_env(type: str) -> str:
    """The variable that overrides a provider type's base URL: `RECONCILER_<TYPE>_BASE_URL`."""
    return f"RECONCILER_{type.upper()}_BASE_URL"


def key_env(type: str) -> str:
    """The variable a provider type reads its API key from."""
    return KEY_ENV.get(type, f"{type.upper()}_API_KEY")


_registry: dict[str, type[Simulator] | str] = dict(SIMULATOR_PATHS)


def register_simulator(provider_type: str, target: type[Simulator] | str) -> None:
    """Register a simulator class (or its "module:Class" import path) under a provider type."""
    _registry[provider_type] = target


def unregister_simulator(provider_type: str) -> None:
    """Forget a registered simulator type (tests)."""
    _registry.pop(provider_type, None)


def simulator_class(provider_type: str) -> type[Simulator] | None:
    """The simulator class of a type, importing it on first use; None if not available."""
    target = _registry.get(provider_type)
    if target is None:
        return None
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return None  # not written yet: skipped quietly
            log.warning("sandbox: cannot import simulator %s: %s", target, exc)
            return None
        except ImportError as exc:
            log.warning("sandbox: cannot import simulator %s: %s", target, exc)
            return None
        cls = getattr(module, attr, None)
        if not (isinstance(cls, type) and issubclass(cls, Simulator)):
            log.warning("sandbox: %s is not a Simulator subclass", target)
            return None
        _registry[provider_type] = cls
        return cls
    return target


def available_simulators() -> dict[str, type[Simulator]]:
    """Every registered simulator that can be imported, by type."""
    found: dict[str, type[Simulator]] = {}
    for type_name in list(_registry):
        cls = simulator_class(type_name)
        if cls is not None:
            found[type_name] = cls
    return found
