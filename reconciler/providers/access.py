"""Where a provider instance is reached and with which key, and why it cannot be, said of a model.

The engine builds one adapter per provider instance from this; the messages name the Provider
manifest, or the models using a type's defaults, and what to set (the variable, the base URL).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reconciler.domain import DesiredModel, ProviderConfig
from reconciler.providers.catalog import provider_type
from reconciler.providers.origins import TrustPolicy, base_url_env, check_base_url


@dataclass(frozen=True)
class Access:
    """The operator's side of reaching providers: environment, sandbox endpoints, trust policy."""

    #: the key variables and `RECONCILER_<TYPE>_BASE_URL`
    env: Mapping[str, str]
    #: type -> (base URL, key) replacing the configured ones (`--sandbox`)
    endpoints: Mapping[str, tuple[str, str]]
    trust: TrustPolicy

    def endpoint(self, cfg: ProviderConfig) -> tuple[str, str]:
        """The base URL and key a provider instance uses (either may be empty)."""
        if cfg.type in self.endpoints:
            return self.endpoints[cfg.type]
        env_url = self.env.get(base_url_env(cfg.type)) or None
        base_url = cfg.base_url or env_url or provider_type(cfg.type).default_base_url or ""
        return base_url, self.env.get(cfg.api_key_env, "")

    def problem(self, cfg: ProviderConfig) -> str | None:
        """What keeps a provider instance from being used (and what to set), or None."""
        base_url, key = self.endpoint(cfg)
        if not base_url:
            return (
                f"{cfg.type} has no public host; set base_url on a Provider manifest "
                f"or {base_url_env(cfg.type)}=https://your-{cfg.type}-host"
            )
        problem = check_base_url(base_url, cfg.allow_insecure_http) or self.trust.base_url_problem(cfg.type, base_url)
        if problem:
            return problem
        if not key:
            return (
                f"the environment variable {cfg.api_key_env} is not set; "
                f"export it with the {cfg.type} API key (keys are never read from manifests)"
            )
        return None


def where(cfg: ProviderConfig, users: Sequence[DesiredModel]) -> str:
    """A provider instance as a user finds it: its Provider manifest's place, or (a type's
    defaults) the models that use it, so that a problem is never blamed on another model."""
    if cfg.source:
        return f"Provider {cfg.name!r} ({cfg.source})"
    shown = ", ".join(f"{m.name!r} at {m.source}" for m in sorted(users, key=lambda m: m.name)[:3])
    more = f" and {len(users) - 3} more" if len(users) > 3 else ""
    return f"the default {cfg.type} provider" + (f" used by {shown}{more}" if users else "")
