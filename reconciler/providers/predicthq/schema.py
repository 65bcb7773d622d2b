"""PredictHQ: the `model` and `training` fields of its manifests and its type record."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field

from reconciler.providers.provider_type import ProviderType
from reconciler.values import Strict

ForecastWindow = Literal["1d", "7d", "14d", "28d", "30d", "60d", "90d"]
Industry = Literal[
    "accommodation",
    "cpg",
    "tourism",
    "marketing",
    "parking",
    "restaurants",
    "retail",
    "transportation",
    "other",
]


class PredictHQModel(Strict):
    model_id: str = Field(min_length=1, description="the forecast model's id, e.g. Oa1D2XvT-IXfFQ_osoTZjQ")


class DemandType(Strict):
    industry: Industry
    interval: Literal["day"] = Field(default="day", description="only daily demand is supported")


class SavedLocation(Strict):
    saved_location_id: str = Field(min_length=1, description="id of a Saved Location (POST /v1/saved-locations)")


class PredictHQTraining(Strict):
    # The API's default window is not documented [?], so the manifest must say which one it wants.
    forecast_window: ForecastWindow = Field(description="how far ahead the model forecasts")
    algo: Literal["phq-xgboost"] = "phq-xgboost"
    #: None: not managed by the manifest (whatever the model has is kept and not compared)
    demand_type: DemandType | None = None
    location: SavedLocation | None = None


PREDICTHQ = ProviderType(
    name="predicthq",
    key_env="PREDICTHQ_API_KEY",
    default_base_url="https://api.predicthq.com",
    model_schema=PredictHQModel,
    training_schema=PredictHQTraining,
    identity_fields=("model_id",),  # [D] the forecast model's id names it
    max_concurrent_trainings=2,
    # [D] the per-organisation rate depends on the plan and "keep concurrency low"; these are
    # conservative defaults a Provider manifest can raise [I]
    requests_per_second=5.0,
    max_concurrent_requests=4,
    # [D guide] training "usually takes a few minutes"
    poll_interval=timedelta(seconds=30),
    training_timeout=timedelta(hours=6),  # [I] generous for "a few minutes"
    adapter="reconciler.providers.predicthq.adapter:PredictHQAdapter",
)
