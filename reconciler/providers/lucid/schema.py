"""Lucid: the `model` and `training` fields of its manifests and its type record."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import Field, field_validator

from reconciler.providers.provider_type import ProviderType
from reconciler.values import Strict

Tag = Annotated[str, Field(min_length=1)]


class LucidModel(Strict):
    model_id: str = Field(min_length=1, description="Lucid model id; training with an existing id replaces that model")


class LucidTraining(Strict):
    maximum_interaction_age_days: int | None = Field(
        default=None, ge=1, description="drop interactions older than this (untimestamped ones are kept)"
    )
    data_tags: list[Tag] = Field(
        default_factory=list, description="train on the data batches carrying ALL these tags ([]: every batch)"
    )
    data_filters: dict[str, Any] | None = Field(
        default=None, description="beta at Lucid: passed through verbatim, shape not documented"
    )

    @field_validator("data_tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        # Lucid matches batches carrying all tags: order and repeats do not change what is trained
        return sorted(set(v))


LUCID = ProviderType(
    name="lucid",
    key_env="LUCID_API_KEY",
    default_base_url=None,  # [D] per customer: https://<your-server>/v1/...
    model_schema=LucidModel,
    training_schema=LucidTraining,
    identity_fields=("model_id",),  # [D] training with an existing model_id replaces that model
    max_concurrent_trainings=2,
    requests_per_second=5.0,  # [?] no documented rate limit
    poll_interval=timedelta(seconds=60),
    training_timeout=timedelta(hours=24),  # [D] "minutes to hours"
    adapter="reconciler.providers.lucid.adapter:LucidAdapter",
)
