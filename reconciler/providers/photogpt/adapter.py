"""PhotoGPT AI ("PhotoGPT Developers" API): portrait models trained on 12-20 images (providers.md §5).

API used (kept in the constants below so a change at PhotoGPT is a one-line edit):
- auth: `Authorization: Bearer <key>` and `API-Version: 1` on every request [D];
- every answer is the envelope `{"status": "OK", "result": ...}`; errors are
  `{"status": "NOK", "message", "err", "result": null}` [D];
- observe: `GET /models/{id}` -> `result.status` new | training | ready | deleted [D]; other words
  are intermediate backend states [D "moves through backend training states"], read as running [I];
  several models at once: `GET /models` [D], pagination undocumented [?];
- prepare: `GET /models/{id}/images?imageType=input` [D], `POST /images/upload` multipart
  `file` + `data` [D], `DELETE /images/{id}` [I path];
- train: `GET /models/{id}/train` [D] (a GET that starts paid work: never resent).

The manifest declares the input images as a glob of files in the repository; their content is the
training data. PhotoGPT keeps no content hash, so the state store maps each file's sha256 to the
image id it was uploaded as, and `prepare` makes the model's inputs exactly the declared files.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reconciler.domain import Observation, TrainingStatus, TrainResult
from reconciler.errors import BadResponseError, NotFoundError, ProviderError
from reconciler.providers.base import ProviderAdapter, path_segment, read_time
from reconciler.providers.photogpt.images import CONTENT_TYPES, LocalImage, scan_images
from reconciler.providers.photogpt.schema import PHOTOGPT, PhotoGPTModel, PhotoGPTTraining
from reconciler.providers.policy import Auth

if TYPE_CHECKING:
    from reconciler.domain import DesiredModel, ModelRecord
    from reconciler.providers.wire import Response

log = logging.getLogger("reconciler.providers.photogpt")

MODELS_PATH = "/models"
MODEL_PATH = "/models/{id}"
MODEL_IMAGES_PATH = "/models/{id}/images"
TRAIN_PATH = "/models/{id}/train"
UPLOAD_PATH = "/images/upload"
IMAGE_PATH = "/images/{id}"  # [I] delete exists ("Images" page); the path is a guess
API_VERSION = "1"

#: imageType filter of the model image list [D] and the upload `type` of training images [D]
INPUT_FILTER = "input"
INPUT_TYPE = "modelInput"
#: [I] page size of the model image list (the docs' example answers pageSize 20)
IMAGES_PAGE_SIZE = 20
MAX_IMAGE_PAGES = 50

#: [I] at most this many pages of the model list, should a server paginate it
MAX_MODEL_PAGES = 100
#: what an observation reads of a listed model: an entry without one of them is read on its own
LISTED_FIELDS = ("id", "status", "updatedAt")

#: [D] status words; anything else is an intermediate backend state [I]
NEW, TRAINING, READY, DELETED = "new", "training", "ready", "deleted"


def _short(sha: str) -> str:
    return f"sha256 {sha[:12]}"


class PhotoGPTAdapter(ProviderAdapter[PhotoGPTModel, PhotoGPTTraining]):
    provider_type = PHOTOGPT
    auth = Auth(header="Authorization", prefix="Bearer ", extra_headers={"API-Version": API_VERSION})

    # ------------------------------------------------------------------ helpers

    def _result(self, resp: Response, what: str) -> Any:
        """The envelope's `result`; a 2xx answer that is not `status: OK` is unreadable."""
        body = resp.json_object()
        if body.get("status") != "OK":
            from reconciler.providers.wire import error_message

            # the provider's words are quoted: masked like every message the HTTP layer builds
            detail = resp.redact(error_message(body) or f"status {body.get('status')!r}")
            raise BadResponseError(
                f"{what}: answered HTTP {resp.status} without status OK: {detail}", provider=self.config.name
            )
        return body.get("result")

    @staticmethod
    def _model_id(m: DesiredModel[PhotoGPTModel, PhotoGPTTraining]) -> str:
        return m.model.model_id

    @staticmethod
    def _local(m: DesiredModel[PhotoGPTModel, PhotoGPTTraining]) -> list[LocalImage]:
        # the same confined walk as `validate`: nothing outside the repository is ever uploaded
        images, _ = scan_images(m.training.input_images, m.manifest_dir, m.root)
        return images

    # ------------------------------------------------------------------ reading

    async def observe(
        self, model: DesiredModel[PhotoGPTModel, PhotoGPTTraining], record: ModelRecord | None
    ) -> Observation:
        resp = await self.http.request("GET", MODEL_PATH.format(id=path_segment(self._model_id(model))))
        result = self._result(resp, "GET model")
        if not isinstance(result, dict):
            raise BadResponseError("GET model: `result` is not an object", provider=self.config.name)
        return await self._observation(model, record, result)

    async def observe_many(
        self, models: Sequence[DesiredModel[PhotoGPTModel, PhotoGPTTraining]], records: dict[str, ModelRecord]
    ) -> dict[str, Observation | ProviderError]:
        """One `GET /models` for several models; any model it does not show in full is read on its own."""
        if len(models) < 2:
            return await super().observe_many(models, records)
        by_id = await self._listed()
        out: dict[str, Observation | ProviderError] = {}
        missing = [m for m in models if self._model_id(m) not in by_id]
        shown = [m for m in models if self._model_id(m) in by_id]
        # the declared images of every listed model, read in one worker thread (not a thread hop each)
        local = await asyncio.to_thread(self._local_all, shown)
        for m in shown:
            try:
                out[m.name] = await self._observation(m, records.get(m.name), by_id[self._model_id(m)], local[m.name])
            except ProviderError as exc:
                out[m.name] = exc.with_model(m.name)
        out.update(await super().observe_many(missing, records))
        return out

    async def _listed(self) -> dict[str, dict[str, Any]]:
        """The models `GET /models` shows with every field an observation reads, by id.

        The list's pagination is undocumented [?]: asked without pageNum/pageSize [D], a server that
        still answers a page (`pageSize` in the envelope, the page full) is asked for the next ones.
        """
        by_id: dict[str, dict[str, Any]] = {}
        params: dict[str, Any] | None = None
        for page in range(1, MAX_MODEL_PAGES + 1):
            resp = await self.http.request("GET", MODELS_PATH, params=params)
            body = resp.json_object()
            listed = self._result(resp, "GET models")
            if not isinstance(listed, list):
                raise BadResponseError("GET models: `result` is not a list", provider=self.config.name)
            for e in listed:
                if isinstance(e, dict) and all(isinstance(e.get(k), str) and e[k] for k in LISTED_FIELDS):
                    by_id[e["id"]] = e
            size = body.get("pageSize")
            if not isinstance(size, int) or isinstance(size, bool) or size < 1 or len(listed) < size:
                break
            params = {"pageNum": page + 1, "pageSize": size}
        return by_id

    @classmethod
    def _local_all(cls, models: Sequence[DesiredModel[PhotoGPTModel, PhotoGPTTraining]]) -> dict[str, list[LocalImage]]:
        """`_local` of each model by name; models declaring the same glob in the same folder share one scan."""
        scans: dict[tuple[str, Any, Any], list[LocalImage]] = {}
        out = {}
        for m in models:
            key = (m.training.input_images, m.manifest_dir, m.root)
            if key not in scans:
                scans[key] = cls._local(m)
            out[m.name] = scans[key]
        return out

    async def _observation(
        self,
        m: DesiredModel[PhotoGPTModel, PhotoGPTTraining],
        record: ModelRecord | None,
        model: dict[str, Any],
        local: list[LocalImage] | None = None,
    ) -> Observation:
        from reconciler.domain import RecordStatus

        word = model.get("status")
        if not isinstance(word, str) or not word:
            raise BadResponseError(
                f"model {self._model_id(m)}: the answer has no `status`", provider=self.config.name
            ).with_model(m.name)
        word = word.lower()
        if word == DELETED:
            raise NotFoundError(
                f"model {self._model_id(m)} is deleted at PhotoGPT; create a model (POST /models) and put its id "
                "in the manifest",
                provider=self.config.name,
            ).with_model(m.name)
        updated = model.get("updatedAt")
        marker = f"{updated}|{word}"
        if local is None:
            local = await asyncio.to_thread(self._local, m)
        hashes = sorted(img.sha256 for img in local)
        obs = Observation(
            status=TrainingStatus.RUNNING,
            marker=marker,
            message=word,
            data_marker=hashes,
            provider_state=word,
        )
        ours = record is not None and record.status in (RecordStatus.INTENT, RecordStatus.TRAINING, RecordStatus.FAILED)
        if word == NEW:
            obs.status = TrainingStatus.NONE
            # [I] no failure status is documented; a model that leaves `new` for a training and comes back
            # to `new` (a new updatedAt) is taken as a training that failed
            if ours and record is not None and record.status is not RecordStatus.FAILED and record.marker != marker:
                obs.status = TrainingStatus.FAILED
                obs.message = "the model went back to 'new' after the train call: PhotoGPT dropped the training"
        elif word == READY:
            obs.status = TrainingStatus.SUCCEEDED
            obs.trained_at = read_time(updated)  # [I] no trained-at field; a ready model's last change
        else:
            # `training` and any undocumented backend state: still in progress [I]
            triggered = record.triggered_at if (ours and record is not None) else None
            if triggered is not None and self.ctx.clock() - triggered > self.provider_type.training_timeout:
                # PhotoGPT shows no failure state, so a training that outlives the documented give-up time
                # is failed here (the engine's own timeout only covers trainings no longer shown running);
                # a retry's train call is refused (409/429, reported) while PhotoGPT really still runs it
                obs.status = TrainingStatus.FAILED
                obs.message = (
                    f"still {word!r} {int(self.provider_type.training_timeout.total_seconds() // 60)} min after the train call "
                    "(PhotoGPT trainings take 20-25 min and no failure status is documented): treated as failed"
                )
        if record is not None and record.data_marker is not None and record.data_marker != hashes:
            obs.data_changed = self._data_detail(record.data_marker, local)
        return obs

    @staticmethod
    def _data_detail(recorded: Any, local: list[LocalImage]) -> str:
        if not isinstance(recorded, list):
            return "the input images differ from those of the last training"
        before = {str(h) for h in recorded}
        names = {img.sha256: img.path.name for img in local}
        added = sorted(names[h] for h in names.keys() - before)
        removed = sorted(before - names.keys())
        parts = []
        if added:
            parts.append("new or changed: " + ", ".join(added))
        if removed:
            parts.append(
                f"no longer declared: {len(removed)} image{'s' if len(removed) != 1 else ''} ("
                + ", ".join(_short(h) for h in removed[:3])
                + (", ..." if len(removed) > 3 else "")
                + ")"
            )
        return "input images differ from the last training: " + ("; ".join(parts) or "reordered")

    # ------------------------------------------------------------------ writing

    async def _provider_inputs(self, model_id: str) -> list[dict[str, Any]]:
        """The model's modelInput images at PhotoGPT, every page."""
        out: list[dict[str, Any]] = []
        path = MODEL_IMAGES_PATH.format(id=path_segment(model_id))
        for page in range(1, MAX_IMAGE_PAGES + 1):
            resp = await self.http.request(
                "GET", path, params={"imageType": INPUT_FILTER, "pageNum": page, "pageSize": IMAGES_PAGE_SIZE}
            )
            result = self._result(resp, "GET model images")
            if not isinstance(result, list):
                raise BadResponseError("GET model images: `result` is not a list", provider=self.config.name)
            # filter again: a server that ignored imageType must not make us delete generated images
            out.extend(i for i in result if isinstance(i, dict) and i.get("type", INPUT_TYPE) == INPUT_TYPE)
            if len(result) < IMAGES_PAGE_SIZE:
                break
        return out

    async def prepare(self, model: DesiredModel[PhotoGPTModel, PhotoGPTTraining], observation: Observation) -> None:
        """Make the model's input images exactly the declared files: delete the others, upload the missing.

        Images whose content was uploaded before (state map sha256 -> image id) and that the model still
        has are kept, so changing one file uploads one image. Inputs that match no declared file (replaced
        files, images added by hand) are deleted first, which also keeps the model under PhotoGPT's cap of
        20 inputs.
        """
        model_id = self._model_id(model)
        local = await asyncio.to_thread(self._local, model)
        state = self.ctx.state
        uploaded = await state.uploads(self.config.name, model.name) if state is not None else {}
        present = {str(i.get("id")) for i in await self._provider_inputs(model_id)}
        keep = {uploaded[img.sha256] for img in local if uploaded.get(img.sha256) in present}
        for image_id in sorted(present - keep):
            log.info("%s: deleting input image %s, which no declared file matches", model.name, image_id)
            await self.http.request("DELETE", IMAGE_PATH.format(id=path_segment(image_id)), idempotent=True, ok=(404,))
        for img in local:
            if uploaded.get(img.sha256) in keep:
                continue
            image_id = await self._upload(model_id, img)
            if state is not None:
                await state.record_upload(self.config.name, model.name, img.sha256, image_id)

    async def _upload(self, model_id: str, img: LocalImage) -> str:
        content = await asyncio.to_thread(img.path.read_bytes)
        resp = await self.http.request(
            "POST",
            UPLOAD_PATH,
            files={"file": (img.path.name, content, CONTENT_TYPES.get(img.extension, "application/octet-stream"))},
            data={"data": json.dumps({"modelID": model_id, "type": INPUT_TYPE})},
        )
        result = self._result(resp, f"upload {img.path.name}")
        if not isinstance(result, dict) or not result.get("id"):
            raise BadResponseError(f"upload {img.path.name}: the answer names no image id", provider=self.config.name)
        return str(result["id"])

    async def train(self, models: Sequence[DesiredModel[PhotoGPTModel, PhotoGPTTraining]]) -> dict[str, TrainResult]:
        results = {}
        for m in models:
            # a GET that starts paid work: never resent after it may have left (idempotent=False)
            resp = await self.http.request(
                "GET", TRAIN_PATH.format(id=path_segment(self._model_id(m))), idempotent=False
            )
            message = ""
            try:
                message = str(self._result(resp, "train") or "")
            except BadResponseError:
                pass  # a 2xx is the acknowledgement; the body only carries "Training triggered"
            results[m.name] = TrainResult(handle=None, message=message)
        return results
