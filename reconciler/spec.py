"""Manifests: finding, parsing, validating, fingerprinting.

`load_manifests(paths, trust=...)` turns YAML files into a `ManifestSet` of `DesiredModel`s and
`ProviderConfig`s, or raises `ManifestError` listing every problem as `file:line:col: message`.
Per-file parsing (`parse_file`) is separate from cross-file checks (`assemble`) so the daemon can
keep a broken file's last good version.

Manifests are untrusted: where a key may go and which variables may hold one come from the
operator's `TrustPolicy` (built by `runtime` from the environment; this module never reads it).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import (
    BaseModel,
    ValidationError,
)

from reconciler.domain import DesiredModel, Policy, ProviderConfig, Source, shared_policy
from reconciler.envelope import API_VERSION as API_VERSION
from reconciler.envelope import ENV_NAME, ProviderManifest, TrainedModelManifest
from reconciler.errors import ManifestError, Problem
from reconciler.forked import map_split
from reconciler.heap import collector_paused

# re-exported: the daemon and runtime find manifest files through `spec`
from reconciler.manifest_files import find_manifest_files as find_manifest_files
from reconciler.manifest_files import manifest_root as manifest_root
from reconciler.manifest_files import repository_root as repository_root
from reconciler.providers.catalog import base_urls, known_types, provider_type
from reconciler.providers.identity import provider_model_clashes
from reconciler.providers.origins import TrustPolicy, check_base_url
from reconciler.selectors import Requirement, matches
from reconciler.yamlpos import YamlDocument, YamlError, load_documents

if TYPE_CHECKING:
    from reconciler.providers.provider_type import LocalProblems

#: (provider type, model, training, manifest folder, repository root) -> the problems its files
#: beside the manifest have; `assemble` asks the type's `check_local` unless given another (the
#: daemon caches the answers until a file they read changes)
LocalCheck = Callable[[str, BaseModel, BaseModel, Path, Path], "LocalProblems"]

# ---------------------------------------------------------------- validated, resolved results


def _spec_fields(data: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A TrainedModel document's `spec.model` and `spec.training` where they are mappings."""
    raw_spec = data.get("spec") if isinstance(data, dict) else None
    spec: dict[str, Any] = raw_spec if isinstance(raw_spec, dict) else {}
    model, training = spec.get("model"), spec.get("training", {})
    return (model if isinstance(model, dict) else None, training if isinstance(training, dict) else None)


@dataclass(eq=False, slots=True)
class RawModel:
    """A TrainedModel document as parsed: its envelope when valid, else the parts `assemble`
    can still check (the provider reference, `model`, `training`), so one run reports them all."""

    doc: YamlDocument
    #: a valid envelope's labels and policy (the envelope itself is not kept: the daemon holds
    #: every document's parse for as long as it runs)
    envelope: tuple[dict[str, str], Policy] | None
    name: str | None
    #: where `metadata.name` is written (or the longest part of that path that is): every model's
    #: source, looked up while the YAML nodes are at hand; other positions are asked of `doc`
    name_at: Source
    provider: str | None
    #: `spec.model` and `spec.training` as written, until they are checked (`fields`)
    model: dict[str, Any] | None
    training: dict[str, Any] | None
    #: provider type -> the validated model and training (None where invalid) and their problems:
    #: each document is checked once per type however often `assemble` runs (the daemon reassembles)
    checked: dict[str, tuple[BaseModel | None, BaseModel | None, list[Problem]]] = field(default_factory=dict)
    #: the DesiredModel last resolved from this document and the provider it was resolved with:
    #: reassembling with the same provider yields the same (immutable) object, its fingerprint kept
    resolved: tuple[ProviderConfig, DesiredModel] | None = None
    #: `model` and `training` were dropped once checked: `fields` builds them again from the text
    dropped: bool = False

    @classmethod
    def of(cls, data: dict[str, Any], doc: YamlDocument, manifest: TrainedModelManifest | None, file: str) -> RawModel:
        name_at = Source(file, *doc.where(("metadata", "name")))
        if manifest is not None:
            s = manifest.spec
            envelope = (manifest.metadata.labels, shared_policy(s.policy))
            return cls(doc, envelope, manifest.metadata.name, name_at, s.provider, s.model, s.training)
        raw_meta, raw_spec = data.get("metadata"), data.get("spec")
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        spec: dict[str, Any] = raw_spec if isinstance(raw_spec, dict) else {}
        name, provider = meta.get("name"), spec.get("provider")
        name, provider = (name if isinstance(name, str) else None), (provider if isinstance(provider, str) else None)
        return cls(doc, None, name, name_at, provider, *_spec_fields(data))

    def fields(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """`spec.model` and `spec.training` to check against a type's schemas. Kept only until the
        first check: the validated models hold what is used, and a check against another type
        (a Provider changed its type) builds them again from the document's text."""
        if self.dropped:
            return _spec_fields(self.doc.rebuild())
        found = self.model, self.training
        self.model = self.training = None
        self.dropped = True
        return found


@dataclass
class FileResult:
    """What one manifest file yields; problems do not stop the other documents."""

    path: str
    models: list[DesiredModel] = field(default_factory=list)
    providers: list[ProviderConfig] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: model name -> provider reference and where it was written, resolved by `assemble`
    provider_refs: dict[str, tuple[str, Source]] = field(default_factory=dict)
    raw_models: list[RawModel] = field(default_factory=list)
    #: Provider manifests with problems: name -> type (None when not a known type); models naming
    #: them are checked against that type but not blamed for an unknown provider
    broken_providers: dict[str, str | None] = field(default_factory=dict)
    digest: str = ""
    #: the repository root its models' local files must stay inside
    root: Path | None = None

    @functools.cached_property
    def folder(self) -> Path:
        """The file's folder: one object for all its models."""
        return Path(self.path).parent


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
        raw = doc.plain_scalar(path)
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
        doc.data = None  # validated copies hold what is used from here on (the daemon keeps results)
    for doc in docs[:1]:
        doc.release()  # the nodes of the whole file: composed again only if assemble finds a problem
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
        # an invalid envelope still has its provider, model and training checked by `assemble`
        result.raw_models.append(RawModel.of(data, doc, manifest, file))
    elif kind == "Provider":
        pm = _validate(ProviderManifest, data, doc, (), file, result.problems)
        _add_provider(pm, data, doc, result, trust)
    else:
        line, col = doc.where(("kind",))
        result.problems.append(Problem(file, line, col, f"unknown kind {kind!r}: expected TrainedModel or Provider"))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest of `choices` to a misspelt `word`, else ''."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _add_provider(
    pm: ProviderManifest | None, data: dict[str, Any], doc: YamlDocument, result: FileResult, trust: TrustPolicy
) -> None:
    """Check a Provider's type, base_url and key variable (from the raw fields when its envelope is
    invalid: every problem in one run); add it to `result` when its envelope is valid."""
    file = result.path
    spec = data.get("spec")
    raw: dict[str, Any] = spec if isinstance(spec, dict) else {}
    type_name = pm.spec.type if pm is not None else raw.get("type")
    url = pm.spec.base_url if pm is not None else raw.get("base_url")
    key_env = pm.spec.api_key_env if pm is not None else raw.get("api_key_env")
    insecure = pm.spec.allow_insecure_http if pm is not None else raw.get("allow_insecure_http") is True
    known_type = type_name if isinstance(type_name, str) and type_name in known_types() else None
    known = known_type is not None
    problems = result.problems
    if isinstance(type_name, str) and not known:
        line, col = doc.where(("spec", "type"))
        problems.append(
            Problem(
                file,
                line,
                col,
                f"unknown provider type {type_name!r}{did_you_mean(type_name, known_types())}; "
                f"known: {', '.join(known_types())}",
            )
        )
    if isinstance(url, str):
        # one problem per base_url: its form first, then whether the operator allows its origin
        problem = check_base_url(url, insecure) or (trust.base_url_problem(known_type, url) if known_type else None)
        if problem:
            bl, bc = doc.where(("spec", "base_url"))
            problems.append(Problem(file, bl, bc, problem))
    if isinstance(key_env, str) and known_type and (pm is not None or ENV_NAME.fullmatch(key_env)):
        problem = trust.key_env_problem(known_type, key_env)
        if problem:
            kl, kc = doc.where(("spec", "api_key_env"))
            problems.append(Problem(file, kl, kc, problem))
    if pm is None or not known:
        meta = data.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if isinstance(name, str):
            result.broken_providers[name] = known_type
        return
    # a refused base_url or key variable still names a provider: its models are checked too
    ptype = provider_type(pm.spec.type)
    line, col = doc.where(("metadata", "name"))
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


def _check_fields(raw: RawModel, type_name: str, file: str) -> tuple[BaseModel | None, BaseModel | None, list[Problem]]:
    """`model` and `training` validated by the schemas of `type_name`, once per document and type."""
    done = raw.checked.get(type_name)
    if done is None:
        ptype = provider_type(type_name)
        problems: list[Problem] = []
        model = training = None
        model_data, training_data = raw.fields()
        if model_data is not None:
            model = _validate(ptype.model_schema, model_data, raw.doc, ("spec", "model"), file, problems)
        if training_data is not None:
            training = _validate(ptype.training_schema, training_data, raw.doc, ("spec", "training"), file, problems)
        done = raw.checked[type_name] = (model, training, problems)
    return done


def _local_problems(
    type_name: str, model: BaseModel, training: BaseModel, manifest_dir: Path, root: Path
) -> LocalProblems:
    return provider_type(type_name).local_problems(model, training, manifest_dir, root)


def shared_local_checks() -> LocalCheck:
    """The types' own checks for one load, each asked once per inputs: models whose check reads
    the same fields in the same folder (`ProviderType.local_key`) share its answer, as 2,000
    PhotoGPT models sharing 100 image folders share 100 walks and hashes instead of 2,000."""
    answers: dict[tuple[str, Hashable, Path, Path], LocalProblems] = {}

    def check(type_name: str, model: BaseModel, training: BaseModel, manifest_dir: Path, root: Path) -> LocalProblems:
        ptype = provider_type(type_name)
        if not ptype.reads_local_files:
            return []
        key = (type_name, ptype.local_key(model, training), manifest_dir, root)
        found = answers.get(key)
        if found is None:
            found = answers[key] = ptype.local_problems(model, training, manifest_dir, root)
        return found

    return check


def _resolve_model(
    raw: RawModel, r: FileResult, provider: ProviderConfig, problems: list[Problem], local_check: LocalCheck
) -> DesiredModel | None:
    file = r.path
    model, training, found = _check_fields(raw, provider.type, file)
    problems.extend(found)
    envelope = raw.envelope
    if model is None or training is None or envelope is None or raw.name is None:
        return None
    manifest_dir = r.folder
    root = r.root or repository_root(manifest_dir)
    before = len(problems)
    for loc, message in local_check(provider.type, model, training, manifest_dir, root):
        line, col = raw.doc.where(("spec", *loc))
        problems.append(Problem(file, line, col, message))
    if len(problems) > before or found:
        return None
    if raw.resolved is not None and raw.resolved[0] == provider and raw.resolved[1].root == root:
        return raw.resolved[1]
    desired = DesiredModel(
        name=raw.name,
        labels=dict(envelope[0]),
        provider=provider.name,
        provider_type=provider.type,
        model=model,
        training=training,
        policy=envelope[1],
        source=raw.name_at,
        manifest_dir=manifest_dir,
        file=file,
        root=root,
    )
    raw.resolved = (provider, desired)
    return desired


def assemble(
    results: Sequence[FileResult], local_check: LocalCheck = _local_problems
) -> tuple[ManifestSet, list[Problem]]:
    """Cross-file checks: unique names, provider references resolved, provider specs validated.

    `local_check` answers the checks of files beside a manifest (default: the type's own)."""
    problems: list[Problem] = [p for r in results for p in r.problems]
    providers: dict[str, ProviderConfig] = {}
    broken: dict[str, str | None] = {}
    for r in results:
        broken.update(r.broken_providers)
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
    first_at: dict[str, Source] = {}
    for r in results:
        for raw in r.raw_models:
            name = raw.name
            if name is not None:
                if name in first_at:
                    problems.append(
                        Problem(
                            r.path,
                            raw.name_at.line,
                            raw.name_at.col,
                            f"duplicate model name {name!r} (first at {first_at[name]}); names must be unique across all files",
                        )
                    )
                    continue
                first_at[name] = raw.name_at
            ref = raw.provider
            if ref is None:
                continue  # missing or not a string: the envelope's problem says so
            provider = providers.get(ref)
            if provider is None and ref in known_types() and ref not in broken:
                provider = providers.setdefault(ref, default_provider(ref))
            if provider is None:
                if ref in broken:  # its Provider manifest's problems are reported; check what its type can
                    type_name = broken[ref]
                    if type_name is not None:
                        problems.extend(_check_fields(raw, type_name, r.path)[2])
                    continue
                pl, pc_ = raw.doc.where(("spec", "provider"))
                hint = did_you_mean(ref, [*known_types(), *providers, *broken])
                problems.append(
                    Problem(
                        r.path,
                        pl,
                        pc_,
                        f"unknown provider {ref!r}{hint}: use a type ({', '.join(known_types())}) or the name of a Provider manifest",
                    )
                )
                continue
            desired = _resolve_model(raw, r, provider, problems, local_check)
            if desired is not None and name is not None:
                models[name] = desired
    used = {m.provider for m in models.values()}
    for name in [n for n, p in providers.items() if p.source is None and n not in used]:
        del providers[name]
    problems.extend(provider_model_clashes(models.values(), providers))
    manifests = ManifestSet(models=models, providers=providers, files=[r.path for r in results])
    manifests.notices = replaced_defaults(providers.values())
    for r in results:
        for raw in r.raw_models[:1]:
            raw.doc.release()  # nodes composed again for a problem's position: one file's stream
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


#: below this much YAML in all, forking a child to parse part of it costs more than it saves
PARALLEL_MIN_BYTES = 512 * 1024


def load_manifests(
    paths: Iterable[str | Path], trust: TrustPolicy | None = None, *, parallel: bool = False
) -> ManifestSet:
    """Load every manifest under `paths`; raise ManifestError with all problems found.

    `trust` is the operator's policy (runtime builds it from the environment); by default only
    the types' built-in origins and key variable names are allowed. `parallel` (one-shot
    commands): a forked child parses part of many files where the machine allows (`forked`).
    """
    paths = list(paths)
    files, problems = find_manifest_files(paths)

    def parse(f: Path) -> FileResult:
        return parse_file(f, trust, manifest_root(f, paths))

    with collector_paused():
        if parallel:
            results = map_split(parse, files, [_size(f) for f in files], min_weight=PARALLEL_MIN_BYTES)
        else:
            results = [parse(f) for f in files]
        manifests, more = assemble(results, shared_local_checks())
    problems.extend(more)
    if problems:
        raise ManifestError(problems)
    if not files:
        raise ManifestError([Problem(",".join(str(p) for p in paths), 0, 0, "no *.yaml or *.yml manifests found")])
    return manifests


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # parse_file reports it
