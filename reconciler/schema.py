"""`reconciler schema`: the JSON Schema of both manifest kinds, for editors (yaml-language-server),
with each provider type's `model` and `training` fields and patterns that agree with `validate`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reconciler.envelope import NAME_RE, ProviderManifest, TrainedModelManifest
from reconciler.manifest_files import find_manifest_files
from reconciler.providers.catalog import known_types, provider_type
from reconciler.spec import parse_file

#: `values.parse_duration`'s grammar: a number of seconds, or amounts with units (`1h30m`, `30d`).
DURATION_PATTERN = r"^\s*(?:\d+(?:\.\d+)?|(?:\d+(?:\.\d+)?\s*(?:[mM][sS]|[sSmMhHdDwW])\s*)+)$"
#: What `values.parse_timestamp` reads (`datetime.fromisoformat`): `2023-01-01T00:00Z`, seconds, offsets.
TIMESTAMP_PATTERN = (
    r"^\s*\d{4}-\d{2}-\d{2}(?:[T ]\d{2}(?::?\d{2}(?::?\d{2}(?:[.,]\d{1,6})?)?)?)?(?:[zZ]|[+-]\d{2}(?::?\d{2})?)?\s*$"
)
SCHEMA_LIMITS = (
    "What a schema cannot express, and only `reconciler validate` checks: model and Provider names unique "
    "across all files; one TrainedModel per provider model (workspace/project, model or site id) and "
    "host; a `provider` naming a Provider manifest in another file than the paths given to "
    "`reconciler schema`; input_images globs matching 12-20 files inside the repository; base_url origins "
    "and api_key_env names the operator allows; start_date before end_date."
)


def _agree(node: Any) -> Any:
    """Replace pydantic's `format: duration/date-time` (ISO 8601, which validate does not read) with
    the patterns of what validate accepts."""
    if isinstance(node, list):
        return [_agree(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _agree(v) for k, v in node.items()}
    fmt = out.get("format")
    if fmt == "duration":
        out.pop("format")
        out.pop("type", None)
        default = out.get("default")
        if isinstance(default, str) and default.startswith("P"):
            out.pop("default")  # pydantic's ISO spelling of the default, which validate rejects
        out["anyOf"] = [{"type": "string", "pattern": DURATION_PATTERN}, {"type": "number", "minimum": 0}]
    elif fmt == "date-time":
        out.pop("format")
        out["type"] = "string"
        out["pattern"] = TIMESTAMP_PATTERN
    return out


def _type_variant(key: str, type_name: str, defs: dict[str, Any]) -> dict[str, Any]:
    ptype = provider_type(type_name)
    m = ptype.model_schema.model_json_schema(ref_template="#/$defs/{model}")
    tr = ptype.training_schema.model_json_schema(ref_template="#/$defs/{model}")
    for sch in (m, tr):
        defs.update(sch.pop("$defs", {}))
    return {
        "if": {"properties": {"provider": {"const": key}}, "required": ["provider"]},
        "then": {"properties": {"model": m, "training": tr}},
    }


def named_providers(paths: Iterable[str | Path]) -> dict[str, str]:
    """Provider manifests under `paths` (those that parse): name -> type."""
    files, _ = find_manifest_files(paths)
    out: dict[str, str] = {}
    for f in files:
        for pc in parse_file(f).providers:
            out.setdefault(pc.name, pc.type)
    return out


def json_schema(paths: Iterable[str | Path] = ()) -> dict[str, Any]:
    """JSON Schema of both kinds, with per-provider `model`/`training` (for yaml-language-server);
    Provider manifests found under `paths` give their names their type's fields too."""
    defs: dict[str, Any] = {}
    named = named_providers(paths) if paths else {}
    keys = {t: t for t in known_types()}
    keys.update({name: t for name, t in named.items()})  # a Provider named like a type keeps that type
    variants = [_type_variant(key, t, defs) for key, t in keys.items()]
    tm = TrainedModelManifest.model_json_schema(ref_template="#/$defs/{model}")
    pm = ProviderManifest.model_json_schema(ref_template="#/$defs/{model}")
    for sch in (tm, pm):
        defs.update(sch.pop("$defs", {}))
    if "TrainedModelSpec" in defs:
        defs["TrainedModelSpec"]["allOf"] = variants
        defs["TrainedModelSpec"]["properties"]["provider"]["enum"] = sorted(keys)
    if "Metadata" in defs:
        defs["Metadata"]["properties"]["name"]["pattern"] = NAME_RE.pattern
    if "ProviderSpecBody" in defs:
        defs["ProviderSpecBody"]["properties"]["type"]["enum"] = list(known_types())
    schema: dict[str, Any] = _agree(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://reconciler.dev/schema/v1.json",
            "title": "reconciler manifests",
            "description": SCHEMA_LIMITS,
            "oneOf": [tm, pm],
            "$defs": defs,
        }
    )
    return schema
