"""Roboflow: the `model` and `training` fields of its manifests and its type record."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field

from reconciler.providers.provider_type import ProviderType
from reconciler.values import Strict


class RoboflowModel(Strict):
    workspace: str = Field(min_length=1, description="workspace slug (url segment)")
    project: str = Field(min_length=1, description="project slug")


class RoboflowTraining(Strict):
    version: int = Field(ge=1, description="dataset version; versions are immutable, a new dataset is a new version")
    model_type: str | None = Field(
        default=None, min_length=1, description="e.g. rfdetr-nano, yolov11s; validated by Roboflow"
    )
    epochs: int | None = Field(default=None, ge=1, le=10000)
    speed: Literal["fast", "accurate"] | None = None
    checkpoint: str | None = None


ROBOFLOW = ProviderType(
    name="roboflow",
    key_env="ROBOFLOW_API_KEY",
    default_base_url="https://api.roboflow.com",
    model_schema=RoboflowModel,
    training_schema=RoboflowTraining,
    # [D] the project is the model; a version is its (immutable) dataset, a spec change like any other
    identity_fields=("workspace", "project"),
    max_concurrent_trainings=2,
    requests_per_second=10.0,
    poll_interval=timedelta(seconds=30),
    training_timeout=timedelta(hours=24),
    adapter="reconciler.providers.roboflow.adapter:RoboflowAdapter",
)
