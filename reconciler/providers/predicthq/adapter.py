"""PredictHQ Forecasts API: demand forecasting models (providers.md section 1).

API used (kept in the constants below so a change at PredictHQ is a one-line edit):
- auth: `Authorization: Bearer <token>` [D];
- observe: `GET /v1/forecasts/models/{model_id}` -> `{"model": {...}}` [D]; several models at once
  from the pages of `GET /v1/forecasts/models?limit=&offset=` -> `{"count", "next", "results"}` [D],
  with a single read for any model the list does not show in full;
- prepare: `PATCH /v1/forecasts/models/{model_id}` with only the fields that differ, 204 [D]. A
  training-relevant change moves the model to `stale`, and training from `stale` is allowed [I];
- train: `POST /v1/forecasts/models/{model_id}/train`, no body, 204; runs asynchronously [D].

Drift the API lets us see: the writable training config compared field by field (spec-changed),
`readiness.status == "stale"` (provider-stale), and demand data newer than the data of the last
training (data-changed, from `metrics.*.date_range` [I]).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

from reconciler.domain import Observation, RecordStatus, TrainingStatus, TrainResult
from reconciler.errors import BadResponseError, ProviderError
from reconciler.providers.base import ProviderAdapter, path_segment, read_time
from reconciler.providers.policy import Auth, RetryPolicy
from reconciler.providers.predicthq.schema import PREDICTHQ, PredictHQModel, PredictHQTraining
from reconciler.values import Change

if TYPE_CHECKING:
    from reconciler.domain import DesiredModel, ModelRecord

MODELS_PATH = "/v1/forecasts/models"
MODEL_PATH = "/v1/forecasts/models/{model_id}"
#: [I] the page size asked of the list: no maximum is documented (the default is 10 [D]); a server
#: that answers fewer per page only makes the pages more numerous
LIST_PAGE_SIZE = 100
#: the fields an observation reads: a list entry without one of them is read on its own (a missing
#: `train_dt` would read as "never trained", a missing `demand_type` as a changed spec)
OBSERVED_FIELDS = ("model_id", "algo", "forecast_window", "location", "readiness", "train_dt", "demand_type", "metrics")
TRAIN_PATH = "/v1/forecasts/models/{model_id}/train"

#: `readiness.status` words [D]. The run goes preparing -> training -> forecasting -> ready|failed [I].
RUNNING_WORDS = frozenset({"preparing", "training", "forecasting"})
TRAINED_WORDS = frozenset({"ready", "stale"})
NEVER_TRAINED_WORDS = frozenset({"created"})
FAILED_WORDS = frozenset({"failed"})
STALE_WORD = "stale"


def _obj(value: Any) -> dict[str, Any]:
    """A JSON object from the response, or {} for null or a wrong type."""
    return value if isinstance(value, dict) else {}


def _date(value: Any) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _range(metrics: Any, key: str) -> dict[str, Any] | None:
    """`metrics.<key>.date_range` as {"start", "end"} (strings), when the provider shows one."""
    if not isinstance(metrics, dict):
        return None
    section = metrics.get(key)
    if not isinstance(section, dict):
        return None
    rng = section.get("date_range")
    if not isinstance(rng, dict) or _date(rng.get("end")) is None:
        return None
    return {"start": rng.get("start"), "end": rng.get("end")}


def _complete_entries(results: list[Any], wanted: set[str]) -> dict[str, dict[str, Any]]:
    """The wanted models of a list page that carry every field an observation reads."""
    out: dict[str, dict[str, Any]] = {}
    for entry in results:
        if not isinstance(entry, dict) or entry.get("model_id") not in wanted:
            continue
        if all(k in entry for k in OBSERVED_FIELDS) and _obj(entry["readiness"]).get("status"):
            out[str(entry["model_id"])] = entry
    return out


class PredictHQAdapter(ProviderAdapter[PredictHQModel, PredictHQTraining]):
    provider_type = PREDICTHQ
    auth = Auth(header="Authorization", prefix="Bearer ")
    # [D] retry 429 and 5xx at most 3 times: 1 s, 2 s, 4 s, each +/- 500 ms
    retry = RetryPolicy(attempts=4, base=1.0, cap=4.0, jitter=0.5)

    def _path(self, template: str, m: DesiredModel[PredictHQModel, PredictHQTraining]) -> str:
        return template.format(model_id=path_segment(m.model.model_id))

    # ---- reading

    async def observe(
        self, model: DesiredModel[PredictHQModel, PredictHQTraining], record: ModelRecord | None
    ) -> Observation:
        resp = await self.http.request("GET", self._path(MODEL_PATH, model))
        found = resp.json_object().get("model")
        if not isinstance(found, dict):
            raise BadResponseError("model response has no 'model' object", provider=self.config.name)
        return self.observation(found, model, record)

    async def observe_many(
        self, models: Sequence[DesiredModel[PredictHQModel, PredictHQTraining]], records: dict[str, ModelRecord]
    ) -> dict[str, Observation | ProviderError]:
        """Several models from the list's pages; any model it does not show in full is read on its own.

        The list is read only while its pages cost fewer requests than single reads of the models
        still missing; a page it refuses (past the plan's maximum depth [D], an error) leaves its
        models to single reads, which also turn a deleted model into its own 404.
        """
        if len(models) < 2:
            return await super().observe_many(models, records)
        listed = await self._listed({m.model.model_id for m in models})
        out: dict[str, Observation | ProviderError] = {}
        alone = []
        for m in models:
            entry = listed.get(m.model.model_id)
            if entry is None:
                alone.append(m)
                continue
            try:
                out[m.name] = self.observation(entry, m, records.get(m.name))
            except ProviderError as exc:
                out[m.name] = exc.with_model(m.name)
        out.update(await super().observe_many(alone, records))
        return out

    async def _listed(self, wanted: set[str]) -> dict[str, dict[str, Any]]:
        """The wanted models the list shows in full, by id (pages fetched concurrently)."""
        try:
            results, count = await self._page(0, LIST_PAGE_SIZE)
        except ProviderError:
            return {}  # single reads say what is wrong, model by model
        found = _complete_entries(results, wanted)
        size = len(results)
        if size == 0 or count <= size:
            return found
        pages = math.ceil((count - size) / size)
        if pages > len(wanted) - len(found):
            return found  # a big account and few models: single reads cost less
        answers = await asyncio.gather(
            *(self._page(k * size, size) for k in range(1, pages + 1)), return_exceptions=True
        )
        for answer in answers:
            if isinstance(answer, ProviderError):
                continue  # e.g. past the plan's maximum depth: those models are read one by one
            if isinstance(answer, BaseException):
                raise answer
            found.update(_complete_entries(answer[0], wanted))
        return found

    async def _page(self, offset: int, limit: int) -> tuple[list[Any], int]:
        """One page of the list: its results and the total count."""
        resp = await self.http.request("GET", MODELS_PATH, params={"limit": limit, "offset": offset})
        body = resp.json_object()
        results, count = body.get("results"), body.get("count")
        if not isinstance(results, list) or not isinstance(count, int) or isinstance(count, bool):
            raise BadResponseError("the model list has no `results` list or no `count`", provider=self.config.name)
        return results, count

    def observation(
        self, found: dict[str, Any], m: DesiredModel[PredictHQModel, PredictHQTraining], record: ModelRecord | None
    ) -> Observation:
        """Turn a `PublicForecastModel` into the facts the planner needs."""
        readiness = _obj(found.get("readiness"))
        word = str(readiness.get("status") or "").lower()
        train_dt = found.get("train_dt") if isinstance(found.get("train_dt"), str) else None
        if word in RUNNING_WORDS:
            status = TrainingStatus.RUNNING
        elif word in FAILED_WORDS:
            status = TrainingStatus.FAILED
        elif word in NEVER_TRAINED_WORDS or (word in TRAINED_WORDS and not train_dt):
            # [D] train_dt is the last *successful* training: a stale model without one never trained
            status = TrainingStatus.NONE
        elif word in TRAINED_WORDS:
            status = TrainingStatus.SUCCEEDED
        else:
            status = TrainingStatus.UNKNOWN

        message = word or "no readiness status"
        if status is TrainingStatus.FAILED:
            code = readiness.get("error_code")
            text = readiness.get("error_message") or "training failed"
            message = f"{text} ({code})" if code else str(text)

        metrics = found.get("metrics")
        demand = _range(metrics, "demand_data")
        data_changed = None
        if status is TrainingStatus.SUCCEEDED and demand is not None:
            data_changed = self._data_changed(demand, _range(metrics, "training_data"), record)

        return Observation(
            status=status,
            marker=self._marker(train_dt, word, record),
            trained_at=read_time(train_dt),
            message=message,
            stale=(
                "readiness.status is stale: configuration or data changed since the last training"
                if word == STALE_WORD and status is TrainingStatus.SUCCEEDED
                else None
            ),
            data_changed=data_changed,
            data_marker=demand,
            config_changes=self._config_changes(found, m),
            observed_training=self._observed_training(found),
            provider_state=word,
        )

    @staticmethod
    def _marker(train_dt: str | None, word: str, record: ModelRecord | None) -> str:
        marker = f"{train_dt or '-'}/{word or '-'}"
        if (
            word == STALE_WORD
            and record is not None
            and record.status is RecordStatus.INTENT
            and record.marker is not None
            and record.marker.split("/", 1)[0] == (train_dt or "-")
        ):
            # `prepare` PATCHes before the train call, which makes the model stale without any
            # training: after a crash between the two, a stale model with the same train_dt says
            # the train call never started anything, so the marker the intent saw stands.
            return record.marker
        return marker

    @staticmethod
    def _data_changed(
        demand: dict[str, Any], trained_on: dict[str, Any] | None, record: ModelRecord | None
    ) -> str | None:
        # Prefer the demand range recorded when we triggered the last training: the provider's
        # training_data range may legitimately end before the uploaded demand (holdout, missing
        # dates), which would otherwise read as new data forever [I].
        baseline: dict[str, Any] | None = None
        source = "the last training's data"
        if record is not None and isinstance(record.data_marker, dict) and _date(record.data_marker.get("end")):
            baseline, source = record.data_marker, "the demand recorded at the last training"
        elif trained_on is not None:
            baseline = trained_on
        if baseline is None:
            return None
        new_end, old_end = _date(demand.get("end")), _date(baseline.get("end"))
        if new_end is None or old_end is None or new_end <= old_end:
            return None
        return f"demand data now ends {new_end.isoformat()}, {source} ended {old_end.isoformat()}"

    @staticmethod
    def _observed_training(found: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("forecast_window", "algo"):
            if found.get(key) is not None:
                out[key] = found[key]
        demand_type = found.get("demand_type")
        if isinstance(demand_type, dict):
            for key in ("industry", "interval"):
                if demand_type.get(key) is not None:
                    out[f"demand_type.{key}"] = demand_type[key]
        location = found.get("location")
        if isinstance(location, dict) and location.get("saved_location_id") is not None:
            out["location.saved_location_id"] = location["saved_location_id"]
        return out

    @staticmethod
    def _config_changes(found: dict[str, Any], m: DesiredModel[PredictHQModel, PredictHQTraining]) -> list[Change]:
        """Writable fields whose value at PredictHQ differs from the spec (paths as in the spec)."""
        t = m.training
        changes: list[Change] = []
        for key, want in (("forecast_window", t.forecast_window), ("algo", t.algo)):
            if found.get(key) != want:
                changes.append(Change(f"training.{key}", found.get(key), want))
        if t.demand_type is not None:
            have = _obj(found.get("demand_type"))
            demand: dict[str, str] = {"industry": t.demand_type.industry, "interval": t.demand_type.interval}
            for key, value in demand.items():
                if have.get(key) != value:
                    changes.append(Change(f"training.demand_type.{key}", have.get(key), value))
        if t.location is not None:
            have = _obj(found.get("location"))
            if have.get("saved_location_id") != t.location.saved_location_id:
                changes.append(
                    Change(
                        "training.location.saved_location_id",
                        have.get("saved_location_id"),
                        t.location.saved_location_id,
                    )
                )
        return changes

    # ---- writing

    @staticmethod
    def patch_body(m: DesiredModel[PredictHQModel, PredictHQTraining], changes: Sequence[Change]) -> dict[str, Any]:
        """The UpdateModelRequest carrying only the top-level fields that differ."""
        # nested objects go whole: PATCH semantics inside an object are not documented [?]
        fields = m.training.model_dump(mode="json")
        body: dict[str, Any] = {}
        for change in changes:
            top = change.path.removeprefix("training.").split(".", 1)[0]
            body.setdefault(top, fields[top])
        return body

    async def prepare(self, model: DesiredModel[PredictHQModel, PredictHQTraining], observation: Observation) -> None:
        """PATCH the fields that differ from the spec (nothing when the model already matches)."""
        body = self.patch_body(model, observation.config_changes)
        if body:
            # Setting fields to fixed values is idempotent, so a 429/5xx may be retried.
            await self.http.request("PATCH", self._path(MODEL_PATH, model), json_body=body, idempotent=True)

    async def train(self, models: Sequence[DesiredModel[PredictHQModel, PredictHQTraining]]) -> dict[str, TrainResult]:
        results = {}
        for m in models:
            # 400 "Current model readiness state is ... doesn't allow triggering training" is an
            # InvalidRequestError, which the engine records as a refused attempt.
            await self.http.request("POST", self._path(TRAIN_PATH, m), idempotent=False)
            results[m.name] = TrainResult(handle=None, message="training started")
        return results
