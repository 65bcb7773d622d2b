"""Manifests: finding, parsing, validating, fingerprinting.

`load_manifests(paths, trust=...)` turns YAML files into a `ManifestSet` of `DesiredModel`s and
`ProviderConfig`s, or raises `ManifestError` listing every problem as `file:line:col: message`.
Per-file parsing (`parse_file`) is separate from cross-file checks (`assemble`) so the daemon can
keep a broken file's last good version.

Manifests are untrusted: where a key may go and which variables may hold one come from the
operator's `TrustPolicy` (built by `runtime` from the environment; this module never reads it).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
)

from reconciler.domain import DesiredModel, Policy, ProviderConfig, Source
from reconciler.errors import ManifestError, Problem
from reconciler.providers.catalog import base_urls, known_types, provider_type
from reconciler.providers.identity import provider_model_clashes
from reconciler.providers.origins import TrustPolicy, check_base_url
from reconciler.selectors import Requirement, matches
from reconciler.values import Duration, Strict, fingerprint, spec_snapshot
from reconciler.yamlpos import YamlDocument, YamlError, load_documents

API_VERSION = "reconciler/v1"
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# ---------------------------------------------------------------- the two kinds


class Metadata(Strict):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"name {v!r} must be lowercase letters, digits and '-', at most 63 characters")
        return v


class TrainedModelSpec(Strict):
    provider: str
    model: dict[str, Any]
    training: dict[str, Any] = Field(default_factory=dict)
    policy: Policy = Field(default_factory=Policy)


class TrainedModelManifest(Strict):
    apiVersion: Literal["reconciler/v1"]
    kind: Literal["TrainedModel"]
    metadata: Metadata
    spec: TrainedModelSpec


class ProviderSpecBody(Strict):
    type: str
    base_url: str | None = None
    api_key_env: str | None = None
    max_concurrent_trainings: int | None = Field(default=None, ge=1, le=1000)
    #: at most this many trainings started here in any 24 h, by all writers on the state
    max_trainings_per_day: int | None = Field(default=None, ge=1, le=1_000_000)
    requests_per_second: float | None = Field(default=None, gt=0, le=10000)
    poll_interval: Duration | None = None
    allow_insecure_http: bool = False

    @field_validator("api_key_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(f"{v!r} is not an environment variable name; put the NAME here, never the key")
        return v


class ProviderManifest(Strict):
    apiVersion: Literal["reconciler/v1"]
    kind: Literal["Provider"]
    metadata: Metadata
    spec: ProviderSpecBody


# ---------------------------------------------------------------- validated, resolved results


@dataclass
class FileResult:
    """What one manifest file yields; problems do not stop the other documents."""

    path: str
    models: list[DesiredModel] = field(default_factory=list)
    providers: list[ProviderConfig] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: model name -> provider reference and where it was written, resolved by `assemble`
    provider_refs: dict[str, tuple[str, Source]] = field(default_factory=dict)
    raw_models: list[tuple[TrainedModelManifest, YamlDocument]] = field(default_factory=list)
    digest: str = ""
    #: the repository root its models' local files must stay inside
    root: Path | None = None


@dataclass
class ManifestSet:
    models: dict[str, DesiredModel]
    providers: dict[str, ProviderConfig]
    files: list[str]
    #: things the operator should know that are not problems (a Provider replacing a type's defaults)
    notices: list[str] = field(default_factory=list)

    def select(self, targets: Sequence[str] = (), selector: Sequence[Requirement] = ()) -> list[DesiredModel]:
        """Models named by --target (all when none) whose labels meet every --selector requirement.

        ConfigError when a target names no model, or when targets and selectors leave none."""
        from reconciler.errors import ConfigError

        unknown = [t for t in targets if t not in self.models]
        if unknown:
            raise ConfigError(f"--target names no model in the manifests: {', '.join(unknown)}")
        picked = [self.models[t] for t in targets] if targets else list(self.models.values())
        if selector:
            picked = [m for m in picked if matches(selector, m.labels)]
            if not picked:
                what = f"--target {', '.join(targets)} with " if targets else ""
                raise ConfigError(f"{what}--selector matches no model in the manifests")
        return sorted(picked, key=lambda m: m.name)

    def model(self, name: str) -> DesiredModel:
        """The model named `name`; ConfigError naming it when no manifest declares it."""
        if name not in self.models:
            from reconciler.errors import ConfigError

            raise ConfigError(f"no model named {name!r} in the manifests")
        return self.models[name]


# ---------------------------------------------------------------- loading


def find_manifest_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    files: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.suffix in (".yaml", ".yml")
                and f.is_file()
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            problems.append(Problem(str(p), 0, 0, "no such file or directory"))
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


def _loc_message(err: dict[str, Any], doc: YamlDocument, base: tuple[str | int, ...]) -> tuple[tuple[int, int], str]:
    loc = (*base, *err["loc"])
    # pydantic adds a union/tag member to loc for some errors; keep only what is in the document
    path = tuple(p for p in loc if isinstance(p, str | int))
    pos = doc.where(path)
    dotted = ".".join(str(p) for p in path)
    kind = err["type"]
    if kind == "extra_forbidden":
        msg = f"unknown field {dotted!r}"
    elif kind == "missing":
        msg = f"missing required field {dotted!r}"
    else:
        msg = f"{dotted}: {err['msg'].removeprefix('Value error, ')}"
        raw = doc.plain_scalars.get(path)
        if raw is not None and kind in ("string_type", "literal_error", "enum"):
            msg += f' (YAML read {raw!r} as {type(err.get("input")).__name__}; quote it: "{raw}")'
    return pos, msg


def _validate(
    schema: type[BaseModel],
    data: Any,
    doc: YamlDocument,
    base: tuple[str | int, ...],
    file: str,
    problems: list[Problem],
) -> Any:
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            (line, col), msg = _loc_message(dict(err), doc, base)
            problems.append(Problem(file, line, col, msg))
        return None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def builtin_trust() -> TrustPolicy:
    """The policy of an empty operator environment: only the types' built-in origins and key names."""
    return TrustPolicy.from_env({}, base_urls())


def repository_root(folder: Path, fallback: Path | None = None) -> Path:
    """The git top-level holding `folder` (a `.git` folder or file), else `fallback` (else `folder`)."""
    start = folder.resolve()
    for cand in (start, *start.parents):
        if (cand / ".git").exists():
            return cand
    return (fallback if fallback is not None else folder).resolve()


def manifest_root(file: Path, paths: Iterable[str | Path]) -> Path:
    """The repository root of a manifest file: its git top-level, else the path on the command
    line that holds it (a folder, or a file's own folder)."""
    real = file.resolve()
    given = real.parent
    for raw in paths:
        p = Path(raw).resolve()
        folder = p if p.is_dir() else p.parent
        if real.is_relative_to(folder):
            given = folder
            break
    return repository_root(real.parent, given)


def parse_file(path: Path, trust: TrustPolicy | None = None, root: Path | None = None) -> FileResult:
    """Parse and validate one file; every problem is collected, none raised.

    `trust` (default: built-in origins and key names only) decides which base URLs and key
    variables a Provider may name; `root` (default: the git top-level, else the file's folder)
    bounds the local files its models may read.
    """
    file = str(path)
    result = FileResult(path=file, root=root or repository_root(path.parent))
    trust = trust or builtin_trust()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        result.problems.append(Problem(file, 0, 0, f"cannot read: {exc}"))
        return result
    result.digest = _digest(text)
    try:
        docs = load_documents(text)
    except YamlError as exc:
        result.problems.append(Problem(file, exc.line, exc.col, exc.message))
        return result
    for doc in docs:
        result.problems.extend(Problem(file, e.line, e.col, e.message) for e in doc.problems)
        _parse_document(doc, result, trust)
    return result


def _parse_document(doc: YamlDocument, result: FileResult, trust: TrustPolicy) -> None:
    file = result.path
    data = doc.data
    if not isinstance(data, dict):
        result.problems.append(
            Problem(file, doc.line, 1, "a manifest must be a mapping with apiVersion, kind, metadata and spec")
        )
        return
    kind = data.get("kind")
    if data.get("apiVersion") not in (API_VERSION, None) and kind in ("TrainedModel", "Provider"):
        line, col = doc.where(("apiVersion",))
        result.problems.append(Problem(file, line, col, f"apiVersion must be {API_VERSION!r}"))
        return
    if kind == "TrainedModel":
        manifest = _validate(TrainedModelManifest, data, doc, (), file, result.problems)
        if manifest is not None:
            result.raw_models.append((manifest, doc))
        else:
            _check_provider_fields(data, doc, file, result.problems)
    elif kind == "Provider":
        pm = _validate(ProviderManifest, data, doc, (), file, result.problems)
        if pm is not None:
            _add_provider(pm, doc, result, trust)
    else:
        line, col = doc.where(("kind",))
        result.problems.append(Problem(file, line, col, f"unknown kind {kind!r}: expected TrainedModel or Provider"))


def _check_provider_fields(data: dict[str, Any], doc: YamlDocument, file: str, problems: list[Problem]) -> None:
    """Report model/training problems too when the envelope is invalid: all problems in one run."""
    spec = data.get("spec")
    if not isinstance(spec, dict) or spec.get("provider") not in known_types():
        return
    ptype = provider_type(spec["provider"])
    if isinstance(spec.get("model"), dict):
        _validate(ptype.model_schema, spec["model"], doc, ("spec", "model"), file, problems)
    if isinstance(spec.get("training", {}), dict):
        _validate(ptype.training_schema, spec.get("training", {}), doc, ("spec", "training"), file, problems)


def _add_provider(pm: ProviderManifest, doc: YamlDocument, result: FileResult, trust: TrustPolicy) -> None:
    file = result.path
    if pm.spec.type not in known_types():
        line, col = doc.where(("spec", "type"))
        result.problems.append(
            Problem(file, line, col, f"unknown provider type {pm.spec.type!r}; known: {', '.join(known_types())}")
        )
        return
    ptype = provider_type(pm.spec.type)
    line, col = doc.where(("metadata", "name"))
    if pm.spec.base_url is not None:
        # one problem per base_url: its form first, then whether the operator allows its origin
        url = pm.spec.base_url
        problem = check_base_url(url, pm.spec.allow_insecure_http) or trust.base_url_problem(pm.spec.type, url)
        if problem:
            bl, bc = doc.where(("spec", "base_url"))
            result.problems.append(Problem(file, bl, bc, problem))
    if pm.spec.api_key_env is not None:
        problem = trust.key_env_problem(pm.spec.type, pm.spec.api_key_env)
        if problem:
            kl, kc = doc.where(("spec", "api_key_env"))
            result.problems.append(Problem(file, kl, kc, problem))
    result.providers.append(
        ProviderConfig(
            name=pm.metadata.name,
            type=pm.spec.type,
            base_url=pm.spec.base_url,
            api_key_env=pm.spec.api_key_env or ptype.key_env,
            max_concurrent_trainings=pm.spec.max_concurrent_trainings or ptype.max_concurrent_trainings,
            max_trainings_per_day=pm.spec.max_trainings_per_day,
            requests_per_second=pm.spec.requests_per_second or ptype.requests_per_second,
            poll_interval=max(pm.spec.poll_interval or ptype.poll_interval, ptype.min_poll_interval),
            allow_insecure_http=pm.spec.allow_insecure_http,
            source=Source(file, line, col),
        )
    )


def default_provider(type_name: str) -> ProviderConfig:
    ptype = provider_type(type_name)
    return ProviderConfig(
        name=type_name,
        type=type_name,
        base_url=None,
        api_key_env=ptype.key_env,
        max_concurrent_trainings=ptype.max_concurrent_trainings,
        requests_per_second=ptype.requests_per_second,
        poll_interval=ptype.poll_interval,
    )


def _resolve_model(
    manifest: TrainedModelManifest, doc: YamlDocument, r: FileResult, provider: ProviderConfig, problems: list[Problem]
) -> DesiredModel | None:
    file = r.path
    ptype = provider_type(provider.type)
    before = len(problems)
    model = _validate(ptype.model_schema, manifest.spec.model, doc, ("spec", "model"), file, problems)
    training = _validate(ptype.training_schema, manifest.spec.training, doc, ("spec", "training"), file, problems)
    if model is None or training is None:
        return None
    manifest_dir = Path(file).parent
    root = r.root or repository_root(manifest_dir)
    for loc, message in ptype.local_problems(model, training, manifest_dir, root):
        line, col = doc.where(("spec", *loc))
        problems.append(Problem(file, line, col, message))
    if len(problems) > before:
        return None
    line, col = doc.where(("metadata", "name"))
    snap = spec_snapshot(provider.type, model, training)
    return DesiredModel(
        name=manifest.metadata.name,
        labels=dict(manifest.metadata.labels),
        provider=provider.name,
        provider_type=provider.type,
        model=model,
        training=training,
        policy=manifest.spec.policy,
        fingerprint=fingerprint(snap),
        source=Source(file, line, col),
        manifest_dir=manifest_dir,
        file=file,
        root=root,
    )


def assemble(results: Sequence[FileResult]) -> tuple[ManifestSet, list[Problem]]:
    """Cross-file checks: unique names, provider references resolved, provider specs validated."""
    problems: list[Problem] = [p for r in results for p in r.problems]
    providers: dict[str, ProviderConfig] = {}
    for r in results:
        for pc in r.providers:
            if pc.name in providers:
                first = providers[pc.name].source
                src = pc.source or Source(r.path, 0)
                problems.append(
                    Problem(src.file, src.line, src.col, f"duplicate Provider name {pc.name!r} (first at {first})")
                )
                continue
            providers[pc.name] = pc
    models: dict[str, DesiredModel] = {}
    for r in results:
        for manifest, doc in r.raw_models:
            name = manifest.metadata.name
            line, col = doc.where(("metadata", "name"))
            if name in models:
                problems.append(
                    Problem(
                        r.path,
                        line,
                        col,
                        f"duplicate model name {name!r} (first at {models[name].source}); names must be unique across all files",
                    )
                )
                continue
            ref = manifest.spec.provider
            provider = providers.get(ref)
            if provider is None and ref in known_types():
                provider = providers.setdefault(ref, default_provider(ref))
            if provider is None:
                pl, pc_ = doc.where(("spec", "provider"))
                problems.append(
                    Problem(
                        r.path,
                        pl,
                        pc_,
                        f"unknown provider {ref!r}: use a type ({', '.join(known_types())}) or the name of a Provider manifest",
                    )
                )
                continue
            desired = _resolve_model(manifest, doc, r, provider, problems)
            if desired is not None:
                models[name] = desired
    used = {m.provider for m in models.values()}
    for name in [n for n, p in providers.items() if p.source is None and n not in used]:
        del providers[name]
    problems.extend(provider_model_clashes(models.values(), providers))
    manifests = ManifestSet(models=models, providers=providers, files=[r.path for r in results])
    manifests.notices = replaced_defaults(providers.values())
    return manifests, problems


def replaced_defaults(providers: Iterable[ProviderConfig]) -> list[str]:
    """A notice for each Provider manifest named like a type: it replaces that type's defaults."""
    notices = []
    for pc in sorted(providers, key=lambda p: p.name):
        if pc.source is not None and pc.name in known_types():
            notices.append(
                f"notice: {pc.source}: Provider {pc.name!r} (type {pc.type}) replaces the built-in {pc.name} "
                f"defaults for every model with provider: {pc.name} (base_url {pc.base_url or 'built-in'}, "
                f"key from {pc.api_key_env})"
            )
    return notices


def load_manifests(paths: Iterable[str | Path], trust: TrustPolicy | None = None) -> ManifestSet:
    """Load every manifest under `paths`; raise ManifestError with all problems found.

    `trust` is the operator's policy (runtime builds it from the environment); by default only
    the types' built-in origins and key variable names are allowed.
    """
    paths = list(paths)
    files, problems = find_manifest_files(paths)
    results = [parse_file(f, trust, manifest_root(f, paths)) for f in files]
    manifests, more = assemble(results)
    problems.extend(more)
    if problems:
        raise ManifestError(problems)
    if not files:
        raise ManifestError([Problem(",".join(str(p) for p in paths), 0, 0, "no *.yaml or *.yml manifests found")])
    return manifests


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
