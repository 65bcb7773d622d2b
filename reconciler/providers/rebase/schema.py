"""Rebase Energy: the `model` and `training` fields of its manifests and its type record."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, model_validator

from reconciler.providers.provider_type import ProviderType
from reconciler.values import Strict, Timestamp


class RebaseModel(Strict):
    site_id: str = Field(min_length=1, description="the site's id (a UUID), as Create Site returned it")


class RebaseSplit(Strict):
    start_date: Timestamp = Field(description="start of the training period (ISO 8601, UTC if no offset)")
    end_date: Timestamp = Field(description="end of the training period, after start_date")

    @model_validator(mode="after")
    def _ordered(self) -> RebaseSplit:
        if self.start_date >= self.end_date:
            raise ValueError(
                f"start_date {self.start_date.isoformat()} must be before end_date {self.end_date.isoformat()}"
            )
        return self


class RebaseTraining(Strict):
    splits: list[RebaseSplit] | None = Field(
        default=None,
        min_length=1,
        description="training periods; omitted: Rebase trains on all the site's data",
    )
    output_backtest_data: bool = Field(
        default=False, description="also produce backtest forecasts for the training period"
    )


REBASE = ProviderType(
    name="rebase",
    key_env="REBASE_API_KEY",
    default_base_url="https://api.rebase.energy",
    model_schema=RebaseModel,
    training_schema=RebaseTraining,
    identity_fields=("site_id",),  # [D] a site's models are trained together, by site id
    # [?] no limits are documented: a batch train call counts one training per site here, so the
    # default allows a handful of sites in flight; a Provider manifest can change both.
    max_concurrent_trainings=10,
    requests_per_second=5.0,
    poll_interval=timedelta(seconds=60),
    training_timeout=timedelta(hours=12),
    adapter="reconciler.providers.rebase.adapter:RebaseAdapter",
)
