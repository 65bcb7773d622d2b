"""The types that plan, engine, providers and state share: what is desired, what the provider
shows, what was recorded. Dependency-free but for the leaf `values` module, so each layer can
use them without importing another layer.

    DesiredModel[M, T]  a validated TrainedModel (M, T: its provider type's model/training schemas)
    ProviderConfig      one provider instance (a Provider manifest or a type's defaults)
    Observation         facts read from the provider about one model; never a decision
    ModelRecord         the last training reconciler triggered (or adopted) for one model
    HistoryEvent        one line of a model's append-only history
"""

from __future__ import annotations

import enum
import functools
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Generic, Literal, cast

from pydantic import BaseModel, Field
from typing_extensions import TypeVar

from reconciler.values import Change, Duration, Strict, spec_snapshot
from reconciler.values import fingerprint as spec_fingerprint

#: a provider type's `model` and `training` schemas; unparametrised, any schema
M = TypeVar("M", bound=BaseModel, covariant=True, default=BaseModel)
T = TypeVar("T", bound=BaseModel, covariant=True, default=BaseModel)
M2 = TypeVar("M2", bound=BaseModel)
T2 = TypeVar("T2", bound=BaseModel)


class Policy(Strict):
    drift: Literal["correct", "warn"] = "correct"
    retrain_after: Duration | None = None
    max_retries: int = Field(default=3, ge=0, le=100)
    suspend: bool = False
    on_unknown_baseline: Literal["hold", "adopt", "train"] = "hold"
    #: first wait before retrying a failed training; doubles per failure, capped at 24h
    retry_backoff: Duration = timedelta(minutes=5)


#: one object per distinct policy: a daemon holds 10k models, most with the default or a few
#: shared policies; weak, so policies no manifest uses any more are freed
_POLICIES: weakref.WeakValueDictionary[Policy, Policy] = weakref.WeakValueDictionary()


def shared_policy(policy: Policy) -> Policy:
    """The one Policy object equal to `policy` (Policy is frozen, so sharing is safe)."""
    return _POLICIES.setdefault(policy, policy)


@dataclass(frozen=True)
class Source:
    file: str
    line: int
    col: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class ProviderConfig:
    """One provider instance: a Provider manifest, or the built-in default of a type."""

    name: str
    type: str
    base_url: str | None
    api_key_env: str
    max_concurrent_trainings: int
    requests_per_second: float
    poll_interval: timedelta
    allow_insecure_http: bool = False
    source: Source | None = None  # None for built-in defaults
    #: the daily budget (design.md "Spend guards"); None: no budget
    max_trainings_per_day: int | None = None


@dataclass(frozen=True)
class DesiredModel(Generic[M, T]):
    """A validated TrainedModel: what should exist at the provider.

    Generic over the provider type's `model` and `training` schemas, so an adapter declared as
    `ProviderAdapter[RoboflowModel, RoboflowTraining]` reads typed fields.
    """

    name: str
    labels: dict[str, str]
    provider: str  # provider instance name
    provider_type: str
    model: M
    training: T
    policy: Policy
    source: Source
    manifest_dir: Path
    file: str
    #: the repository root its local files (PhotoGPT's images) must resolve inside
    root: Path | None = None

    @property
    def snapshot(self) -> dict[str, Any]:
        """The normalised spec the fingerprint covers: recorded with each training."""
        return spec_snapshot(self.provider_type, self.model, self.training)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the normalised spec; computed on first use (validate never needs it)."""
        return spec_fingerprint(self.snapshot)

    def typed(self, model: type[M2], training: type[T2]) -> DesiredModel[M2, T2]:
        """This model with its schemas' types, for code that holds one provider's adapter.

        TypeError when the model is of another provider type: a bug, never bad input."""
        if not (isinstance(self.model, model) and isinstance(self.training, training)):
            raise TypeError(f"{self.name} is a {self.provider_type} model, not {model.__name__}/{training.__name__}")
        return cast("DesiredModel[M2, T2]", self)


class TrainingStatus(enum.StrEnum):
    """What the provider shows about the model's latest training."""

    NONE = "none"  # never trained
    RUNNING = "running"  # queued or in progress
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"  # the provider does not let us tell


@dataclass(slots=True)
class Observation:
    """Facts read from the provider about one model; never a decision."""

    status: TrainingStatus
    #: opaque token naming the provider's latest training (start time, version number, ...); it
    #: changes when a new training starts, which is how an unacknowledged intent is settled
    marker: str | None = None
    trained_at: datetime | None = None  # end of the last successful training, if shown
    progress: float | None = None  # 0..1 while running, when the provider reports it
    message: str = ""  # provider's own words: failure reason, state name
    stale: str | None = None  # the provider flags the model as needing retraining (detail)
    data_changed: str | None = None  # newer data than the last training (detail)
    data_marker: Any = None  # identity of the data a training now would use (recorded with it)
    config_changes: list[Change] = field(default_factory=list)  # writable config that differs
    observed_training: dict[str, Any] = field(default_factory=dict)  # training fields read back
    handle: str | None = None
    provider_state: str = ""  # the provider's raw status word, for `status`

    @property
    def in_flight(self) -> bool:
        return self.status is TrainingStatus.RUNNING


@dataclass(slots=True)
class TrainResult:
    """What a successful train call returned for one model."""

    handle: str | None = None
    message: str = ""


class RecordStatus(enum.StrEnum):
    """Where the last training `reconciler` triggered for a model stands."""

    INTENT = "intent"  # about to call train; not acknowledged (a crash leaves this behind)
    TRAINING = "training"  # the provider acknowledged the train call; not finished
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ADOPTED = "adopted"  # a training nobody recorded, accepted as matching the spec


@dataclass(slots=True)
class ModelRecord:
    """The last training `reconciler` triggered (or adopted) for one model."""

    name: str
    provider: str
    fingerprint: str
    training: dict[str, Any]
    status: RecordStatus
    handle: str | None = None
    attempts: int = 0  # consecutive failed trainings for this fingerprint
    next_attempt_at: datetime | None = None
    triggered_at: datetime | None = None
    finished_at: datetime | None = None  # end of the last successful training
    # provider's training marker seen before the trigger (settles intents)
    marker: str | None = None
    data_marker: Any = None  # provider's data identity at trigger time (batch ids, image hashes)
    reasons: list[str] = field(default_factory=list)
    #: which model at the provider this record is of (`ProviderType.model_identity`), written with
    #: each intent; None in records older than the field (read from `training` instead)
    provider_model: str | None = None
    #: the stored row's version (0: not stored yet); every write bumps it, and compare-and-set
    #: writes (`StateStore.save_if`) succeed only on the version they read. Not part of equality:
    #: two records say the same when their content does, whichever write stored them.
    version: int = field(default=0, compare=False)


@dataclass(slots=True)
class HistoryEvent:
    """One line of a model's append-only history."""

    model: str
    event: str  # intent, triggered, succeeded, failed, settled, adopted, error, ...
    reason: str = ""
    fingerprint: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = None
    at: datetime | None = None  # set by the store when None
    id: int | None = None
