"""The record each provider type declares about itself, apart from its adapter.

Validating manifests needs only this record (schemas, key variable, defaults, offline checks), so
`spec` reads it from the catalog without importing an adapter, its HTTP client or httpx.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Generic

from pydantic import BaseModel
from typing_extensions import TypeVar

M = TypeVar("M", bound=BaseModel, default=BaseModel)
T = TypeVar("T", bound=BaseModel, default=BaseModel)

#: (path under `spec`, message) pairs: problems found in files beside the manifest
LocalProblems = list[tuple[tuple[str, ...], str]]


@dataclass(frozen=True)
class ProviderType(Generic[M, T]):
    """One provider type: what its manifests may say and the defaults a Provider manifest can change."""

    name: str
    #: the `model` and `training` fields of a TrainedModel of this type (strict pydantic schemas)
    model_schema: type[M]
    training_schema: type[T]
    #: the environment variable holding the key, unless a Provider manifest names another
    key_env: str
    #: None: the provider has no public host (a Provider's base_url or the environment must say)
    default_base_url: str | None
    #: "module:Class" of the adapter, imported only when reconciler talks to the provider
    adapter: str
    max_concurrent_trainings: int = 2
    requests_per_second: float = 5.0
    max_concurrent_requests: int = 16
    poll_interval: timedelta = timedelta(seconds=60)
    #: the documented floor: no configuration polls faster
    min_poll_interval: timedelta = timedelta(seconds=0)
    #: how long a training may run before it is counted as failed
    training_timeout: timedelta = timedelta(hours=12)
    #: True when observing can tell whether a train call reached the provider (marker changes or a
    #: training shows as running); False makes an unacknowledged intent a `hold`, never a guess
    observable_trigger: bool = True
    #: offline checks that read files beside the manifest (PhotoGPT's image glob), confined to the
    #: repository root (the fourth argument); they add the folders they look in and the files they
    #: read to the set (the last argument), so a caller can cache the answer until one changes
    check_local: Callable[[M, T, Path, Path, set[Path]], LocalProblems] | None = None
    #: what of `model` and `training` `check_local` reads (default: both whole): one load checks
    #: the models with equal inputs in one folder once (PhotoGPT models sharing an image folder)
    local_inputs: Callable[[M, T], Hashable] | None = None
    #: the `model` fields that name the provider's model (Roboflow: workspace and project), in
    #: order; () means every field of `model_schema`. Two TrainedModels with the same identity on
    #: one provider host train the same model at the provider, which `validate` refuses.
    identity_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [f for f in self.identity_fields if f not in self.model_schema.model_fields]
        if unknown:
            raise TypeError(f"{self.name}: identity_fields {unknown} are not fields of {self.model_schema.__name__}")

    @property
    def reads_local_files(self) -> bool:
        """Whether a change to files beside the manifest can change what a model of this type is."""
        return self.check_local is not None

    def model_identity(self, model: BaseModel) -> str:
        """The provider's model a `model` value names, as a stable string (`"acme/hardhats"`).

        Made of the `identity_fields` values in order, joined by `/`: equal exactly when two
        manifests name the same model at the provider (on the same host)."""
        fields = self.identity_fields or tuple(self.model_schema.model_fields)
        return "/".join(str(getattr(model, f)) for f in fields)

    def local_key(self, model: Any, training: Any) -> Hashable:
        """What `check_local` reads of the model's fields: equal keys (in one folder, under one
        root) get the same answer."""
        if self.local_inputs is not None:
            return self.local_inputs(model, training)
        return (model.model_dump_json(), training.model_dump_json())

    def local_problems(
        self, model: Any, training: Any, manifest_dir: Path, root: Path, reads: set[Path] | None = None
    ) -> LocalProblems:
        """Problems `check_local` finds in files under `root` (none for types without local files);
        `reads` (when given) collects the paths the check read."""
        if self.check_local is None:
            return []
        return self.check_local(model, training, manifest_dir, root, reads if reads is not None else set())
