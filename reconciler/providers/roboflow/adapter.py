"""Roboflow: object detection trainings on a dataset version (providers.md section 3).

API used (kept in the constants below so a change at Roboflow is a one-line edit):
- auth: `?api_key=` on every request [D];
- observe: `GET /:ws/:proj/:version?nocache=true` -> `version.train` / `version.model` [D][SDK],
  plus `GET .../v2/trainings` only when a trained model is found that no record explains, to read
  the per-run `modelType` [SDK];
- train: `POST /:ws/:proj/:version/train` with camelCase `modelType` as the SDK sends it [SDK].

Versions are immutable at Roboflow, so a new dataset (other preprocessing, augmentation, images)
is a new `version` number in the manifest: a spec change like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from reconciler.domain import Observation, TrainingStatus, TrainResult
from reconciler.errors import BadResponseError, ProviderError
from reconciler.providers.base import ProviderAdapter, as_object, path_segment
from reconciler.providers.policy import Auth
from reconciler.providers.roboflow.schema import ROBOFLOW, RoboflowModel, RoboflowTraining

if TYPE_CHECKING:
    from reconciler.domain import DesiredModel, ModelRecord

VERSION_PATH = "/{ws}/{proj}/{version}"
TRAIN_PATH = "/{ws}/{proj}/{version}/train"
TRAININGS_PATH = "/{ws}/{proj}/{version}/v2/trainings"

#: version.train.status words [SDK]; "training" from the jobs docs [D brief]
RUNNING_WORDS = {"queued", "running", "training", "pending", "started", "mining"}
FAILED_WORDS = {"failed", "error", "cancelled", "canceled", "stopped"}
FINISHED_WORDS = {"finished", "complete", "completed", "succeeded", "success"}


def _epoch_time(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Roboflow sends epoch seconds; some fields are milliseconds
        return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, tz=UTC)
    return None


class RoboflowAdapter(ProviderAdapter[RoboflowModel, RoboflowTraining]):
    provider_type = ROBOFLOW
    auth = Auth(query_param="api_key")  # [D] ?api_key= on every request

    def _path(self, template: str, m: DesiredModel[RoboflowModel, RoboflowTraining]) -> str:
        model, training = m.model, m.training
        return template.format(
            ws=path_segment(model.workspace), proj=path_segment(model.project), version=path_segment(training.version)
        )

    async def observe(
        self, model: DesiredModel[RoboflowModel, RoboflowTraining], record: ModelRecord | None
    ) -> Observation:
        resp = await self.http.request("GET", self._path(VERSION_PATH, model), params={"nocache": "true"})
        body = resp.json_object()
        version = body.get("version")
        if not isinstance(version, dict):
            raise BadResponseError("version response has no 'version' object", provider=self.config.name)
        obs = self._from_version(version, model)
        if record is None and obs.status is TrainingStatus.SUCCEEDED:
            obs.observed_training.update(await self._last_run(model))
        return obs

    def _from_version(self, version: dict[str, Any], m: DesiredModel[RoboflowModel, RoboflowTraining]) -> Observation:
        train = version.get("train") if isinstance(version.get("train"), dict) else None
        trained = version.get("model") if isinstance(version.get("model"), dict) else None
        word = str(train.get("status", "")).lower() if train else ""
        status = TrainingStatus.NONE
        if word in RUNNING_WORDS:
            status = TrainingStatus.RUNNING
        elif word in FAILED_WORDS:
            status = TrainingStatus.FAILED
        elif word in FINISHED_WORDS or (train and train.get("results")) or trained:
            status = TrainingStatus.SUCCEEDED
        progress = None
        if status is TrainingStatus.RUNNING:
            epochs = as_object(as_object(version.get("models")).get("roboflow-train")).get("epochs") or []
            wanted = m.training.epochs or as_object(trained).get("epochs")
            if isinstance(epochs, list) and isinstance(wanted, int) and wanted > 0:
                progress = min(1.0, len(epochs) / wanted)
        observed: dict[str, Any] = {}
        if trained and trained.get("modelType"):
            observed["model_type"] = trained["modelType"]
        start = trained.get("start") if trained else None
        return Observation(
            status=status,
            # changes when a training starts (train.status) or a new model lands (model.start)
            marker=f"{start if start is not None else '-'}/{word or '-'}",
            trained_at=_epoch_time(trained.get("end")) if trained else None,
            progress=progress,
            message=str((train or {}).get("message") or word or ("trained" if trained else "not trained")),
            observed_training=observed,
            provider_state=word or ("trained" if trained else "untrained"),
        )

    async def _last_run(self, m: DesiredModel[RoboflowModel, RoboflowTraining]) -> dict[str, Any]:
        """Per-run modelType from the v2 trainings list, where this account has it."""
        try:
            resp = await self.http.request("GET", self._path(TRAININGS_PATH, m))
            runs = resp.json_object().get("trainings") or []
        except ProviderError:
            return {}  # older accounts have no v2 trainings; the version's model is all we know
        done = [r for r in runs if isinstance(r, dict) and str(r.get("status", "")).lower() in FINISHED_WORDS]
        if not done:
            return {}
        last = max(done, key=lambda r: r.get("start") or 0)
        return {"model_type": last.get("modelType")} if last.get("modelType") else {}

    async def train(self, models: Sequence[DesiredModel[RoboflowModel, RoboflowTraining]]) -> dict[str, TrainResult]:
        results = {}
        for m in models:
            t = m.training
            body = {
                k: v
                for k, v in {
                    "modelType": t.model_type,
                    "epochs": t.epochs,
                    "speed": t.speed,
                    "checkpoint": t.checkpoint,
                }.items()
                if v is not None
            }
            resp = await self.http.request(
                "POST", self._path(TRAIN_PATH, m), params={"nocache": "true"}, json_body=body, idempotent=False
            )
            message = ""
            try:
                message = str(resp.json_object().get("message", ""))
            except BadResponseError:
                pass  # the SDK ignores this body too: a 2xx is the acknowledgement
            results[m.name] = TrainResult(handle=None, message=message)
        return results
