"""One provider model, one TrainedModel: which host a provider instance's models live on, and
the manifests that name the same provider model there (validate's cross-document check).

Offline, like all of validation: hosts come from the manifests and the types' built-in base URLs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from reconciler.domain import DesiredModel, ProviderConfig
from reconciler.errors import Problem
from reconciler.providers.catalog import provider_type
from reconciler.providers.origins import DEFAULT_PORTS, base_url_env, origin


def provider_host(pc: ProviderConfig) -> str:
    """Where a provider instance's models live, as validate can tell offline: its base URL (origin
    and path, normalised), else its type's built-in one.

    A Provider without `base_url` resolves at run time to `RECONCILER_<TYPE>_BASE_URL` or the
    built-in host, the same for every such Provider of the type, so they share a host here."""
    url = pc.base_url or provider_type(pc.type).default_base_url
    if url is None:
        return base_url_env(pc.type)  # Lucid: no public host, every Provider without base_url uses this
    try:
        found = origin(url)
        # the default port said only when it is not the scheme's: how people write the URL
        scheme, _, port = found.rpartition(":")
        return (scheme if int(port) == DEFAULT_PORTS[urlsplit(found).scheme] else found) + urlsplit(url).path.rstrip(
            "/"
        )
    except ValueError:
        return url  # reported as a base_url problem already


def provider_model_clashes(models: Iterable[DesiredModel], providers: Mapping[str, ProviderConfig]) -> list[Problem]:
    """TrainedModels naming the same provider model: one problem at each, naming all of them.

    Two models clash when their provider instances have the same type and host (`provider_host`;
    the same instance always does) and their `model` fields give the same `model_identity`. The
    key variable does not separate them: ids name one model on a host whichever key reads it.
    Left alone, the second's train call gets a 409, then `unknown-baseline`, then an adopt that
    records a spec never trained. Called once every document is parsed (a cross-document check).
    """
    groups: dict[tuple[str, str, str], list[DesiredModel]] = {}
    hosts: dict[str, str] = {}  # per provider instance, not per model: parsing a URL 10,000 times shows
    for m in models:
        pc = providers[m.provider]
        host = hosts.get(m.provider)
        if host is None:
            host = hosts[m.provider] = provider_host(pc)
        key = (pc.type, host, provider_type(pc.type).model_identity(m.model))
        groups.setdefault(key, []).append(m)
    problems: list[Problem] = []
    for (type_name, host, identity), group in groups.items():
        if len(group) < 2:
            continue
        group.sort(key=lambda m: (m.source.file, m.source.line, m.name))
        ptype = provider_type(type_name)
        fields = "/".join(ptype.identity_fields or tuple(ptype.model_schema.model_fields))
        named = " and ".join(f"{m.name!r} ({m.source})" for m in group)
        message = (
            f"models {named} train the same {type_name} model {identity!r} ({fields}) at {host}: each training "
            f"would replace the other's; keep one TrainedModel per provider model, or change {fields} in one"
        )
        problems.extend(Problem(m.source.file, m.source.line, m.source.col, message) for m in group)
    return problems
