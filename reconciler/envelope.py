"""The two kinds of manifest, as their envelopes: `TrainedModel` and `Provider` (apiVersion, kind,
metadata, spec), checked by pydantic before `spec` checks the provider-specific fields.

`reconciler schema` builds the JSON Schema from these; `spec` loads and resolves them.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from reconciler.domain import Policy
from reconciler.values import Duration, Strict

API_VERSION = "reconciler/v1"
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
        if v is not None and not ENV_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not an environment variable name; put the NAME here, never the key")
        return v


class ProviderManifest(Strict):
    apiVersion: Literal["reconciler/v1"]
    kind: Literal["Provider"]
    metadata: Metadata
    spec: ProviderSpecBody
