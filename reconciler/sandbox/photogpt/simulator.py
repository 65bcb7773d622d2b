"""PhotoGPT simulator: the training-related part of https://developer.photogptai.com/api (providers.md §5).

Faithful to the documented shapes where they are known ([D]); the rest is marked [I] (inferred)
so it is easy to find and change once checked against the live API.

World layout (JSON, persisted by the Sandbox):

    {"user_id": "...", "max_concurrent_trainings": 1,
     "models": {"<id>": {"id", "userID", "name", "age", "gender", "ethnicity", "eyeColor",
                         "modelType", "created", "updated", "deleted_at", "trainings": [record, ...]}},
     "images": {"<id>": {"id", "modelID", "type", "created", "filename", "content_type", "size",
                         "sha256"}}}

A training record is `Simulator.new_training(...)`; the model's `status` and `updatedAt` are derived
from the clock on every request: new -> queued [I an intermediate backend state] -> training -> ready.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from reconciler.sandbox.photogpt.validation import (
    API_VERSION,
    IMAGE_FILTERS,
    MAX_INPUTS,
    MIN_INPUTS,
    model_request,
    nok,
    page_params,
    upload_request,
)
from reconciler.sandbox.simulator import Simulator
from reconciler.sandbox.wire import SimRequest, SimResponse, route

#: The model the quickstart manifest (specs/photogpt.yaml) trains; the docs' example modelID [D].
SEED_MODEL_ID = "018f5f29-7c2b-7b4e-9a8c-4f8b4c2d1e0f"

MODEL_TYPE = "custom"  # [I] the `modelType` of a model made by POST /models

_ID = r"(?P<model_id>[^/]+)"
_IMG = r"(?P<image_id>[^/]+)"


def ok(result: Any, **extra: Any) -> dict[str, Any]:
    """[D] the success envelope."""
    return {"status": "OK", "result": result, **extra}


def iso(epoch: float) -> str:
    """Timestamps as the API writes them [I]: ISO 8601 UTC with milliseconds and a Z."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _uuid7(epoch: float) -> str:
    """A UUIDv7 like the docs' ids (time-ordered, random tail)."""
    ms = int(epoch * 1000) & ((1 << 48) - 1)
    value = (ms << 80) | (0x7 << 76) | (secrets.randbits(12) << 64) | (0b10 << 62) | secrets.randbits(62)
    return str(uuid.UUID(int=value))


class PhotoGPTSimulator(Simulator):
    """Simulated PhotoGPT Developers API: models, images, training, health check."""

    type: ClassVar[str] = "photogpt"
    base_path: ClassVar[str] = "/api"  # [D] the base URL includes /api

    # -- world --------------------------------------------------------------------------------

    def seed(self) -> None:
        """One untrained model with no images: the one specs/photogpt.yaml declares."""
        self.world.setdefault("user_id", _uuid7(self.now() - 90 * 86400))
        self.world.setdefault("max_concurrent_trainings", 1)
        self.world.setdefault("models", {})
        self.world.setdefault("images", {})
        if SEED_MODEL_ID not in self.world["models"]:
            self._create_model(
                {"name": "Ada", "age": 34, "gender": "Female", "eyeColor": "green"},
                model_id=SEED_MODEL_ID,
                created=self.now() - 86400,
            )

    def _models(self) -> dict[str, Any]:
        models = self.world.setdefault("models", {})
        assert isinstance(models, dict)
        return models

    def _images(self) -> dict[str, Any]:
        images = self.world.setdefault("images", {})
        assert isinstance(images, dict)
        return images

    def _create_model(
        self, fields: dict[str, Any], *, model_id: str | None = None, created: float | None = None
    ) -> str:
        now = self.now() if created is None else created
        mid = model_id or _uuid7(now)
        self._models()[mid] = {
            "id": mid,
            "userID": self.world.get("user_id"),
            "name": fields["name"],
            "age": fields["age"],
            "gender": fields["gender"],
            "ethnicity": fields.get("ethnicity"),
            "eyeColor": fields.get("eyeColor"),
            "modelType": MODEL_TYPE,
            "created": now,
            "updated": now,
            "deleted_at": None,
            "trainings": [],
        }
        return mid

    def _model(self, model_id: str) -> dict[str, Any]:
        model = self._models().get(model_id)
        if model is None:
            raise nok(404, f"Model {model_id} not found", "model not found")  # [I] wording
        assert isinstance(model, dict)
        return model

    def _live_model(self, model_id: str) -> dict[str, Any]:
        model = self._model(model_id)
        if model.get("deleted_at") is not None:
            raise nok(404, f"Model {model_id} was deleted", "model deleted")  # [I] 404 for a deleted model
        return model

    def _inputs(self, model_id: str, image_type: str = "modelInput") -> list[dict[str, Any]]:
        found = [i for i in self._images().values() if i["modelID"] == model_id and i["type"] == image_type]
        return sorted(found, key=lambda i: (i["created"], i["id"]))

    # -- derived views --------------------------------------------------------------------------

    def _status(self, model: dict[str, Any]) -> tuple[str, float]:
        """The status word and updatedAt (epoch) the API shows now."""
        if model.get("deleted_at") is not None:
            return "deleted", float(model["deleted_at"])
        updated = float(model["updated"])
        word = "new"
        for record in model["trainings"]:
            state = self.training_state(record)
            updated = max(updated, state.started_at)
            if state.phase == "queued":
                word = "queued"  # [I] one of the undocumented "backend training states"
            elif state.phase == "running":
                word = "training"
            else:
                updated = max(updated, state.ends_at)
                if state.phase == "succeeded":
                    word = "ready"
                # [I] no failure status is documented: a failed training leaves the model as it was
                # before (new, or ready with the previous result), only updatedAt moves
                elif word != "ready":
                    word = "new"
        return word, updated

    def _model_view(self, model: dict[str, Any]) -> dict[str, Any]:
        word, updated = self._status(model)
        return {
            "id": model["id"],
            "userID": model["userID"],
            "name": model["name"],
            "age": model["age"],
            "gender": model["gender"],
            "ethnicity": model["ethnicity"],
            "eyeColor": model["eyeColor"],
            "modelType": model["modelType"],
            "status": word,
            "createdAt": iso(float(model["created"])),
            "updatedAt": iso(updated),
        }

    def _image_view(self, image: dict[str, Any]) -> dict[str, Any]:
        created = iso(float(image["created"]))
        return {
            "id": image["id"],
            "url": f"{self.base_url}/_files/{image['id']}.{image['filename'].rsplit('.', 1)[-1].lower()}",
            "modelID": image["modelID"],
            "type": image["type"],
            "createdAt": created,
            "updatedAt": created,
            "data": {},
            "folderID": None,
            "liked": False,
            "publicMediaID": None,
            "upscaledImageID": None,
            "upscaledImageURL": None,
        }

    def _running_trainings(self) -> int:
        return sum(
            1
            for m in self._models().values()
            if m.get("deleted_at") is None and any(self.training_state(r).active for r in m["trainings"])
        )

    # -- auth and errors -------------------------------------------------------------------------

    def authenticate(self, req: SimRequest) -> None:
        """[D] `Authorization: Bearer <key>` (401) and `API-Version: 1` ([I] 400) on every request."""
        if req.header("authorization") != f"Bearer {self.api_key}":
            raise nok(401, "Unauthorized", "invalid or missing API key")  # [I] wording
        version = req.header("api-version")
        if version is None:
            raise nok(400, "Missing API-Version header", "API-Version header is required")  # [I]
        if version.strip() != API_VERSION:
            raise nok(400, f"Unsupported API-Version {version!r}", "unsupported API version")  # [I]

    def not_found(self, req: SimRequest) -> SimResponse:
        """Unknown route: 404 in the NOK envelope ([I] wording)."""
        return nok(404, f"Cannot {req.method} {req.path}", "route not found").response()

    # -- routes ----------------------------------------------------------------------------------

    @route("GET", r"/ping")
    def ping(self, req: SimRequest) -> SimResponse:
        """[D] health check."""
        return SimResponse(200, {"message": "pong!", "status": "OK"})

    @route("POST", r"/models")
    def create_or_update_model(self, req: SimRequest) -> SimResponse:
        """[D] create, or update when `id` is given; answers id, modelType, status, dates."""
        fields, model_id = model_request(req.json(default=None))
        if model_id is not None:
            model = self._live_model(str(model_id))
            model.update(fields)
            model["updated"] = self.now()
        else:
            missing = [k for k in ("name", "age", "gender") if k not in fields]
            if missing:
                raise nok(400, f"Missing required fields: {', '.join(missing)}", "invalid payload")
            model = self._model(self._create_model(fields))
        self.save()
        view = self._model_view(model)
        result = {k: view[k] for k in ("id", "modelType", "status", "createdAt", "updatedAt")}
        return SimResponse(200, ok(result))

    @route("GET", r"/models")
    def list_models(self, req: SimRequest) -> SimResponse:
        """[D] every model of the key's user; [I] paginated only when pageNum/pageSize are given."""
        views = [self._model_view(m) for m in sorted(self._models().values(), key=lambda m: (m["created"], m["id"]))]
        if req.q("pageNum") is None and req.q("pageSize") is None:
            return SimResponse(200, ok(views))
        page, size = page_params(req)
        return SimResponse(200, ok(views[(page - 1) * size : page * size], page=page, pageSize=size))

    @route("GET", r"/models/" + _ID)
    def get_model(self, req: SimRequest, model_id: str) -> SimResponse:
        """[D] the model, with status new | training | ready | deleted."""
        return SimResponse(200, ok(self._model_view(self._model(model_id))))

    @route("DELETE", r"/models/" + _ID)
    def delete_model(self, req: SimRequest, model_id: str) -> SimResponse:
        """[I] path and answer; the model then shows status `deleted` [D]."""
        model = self._live_model(model_id)
        model["deleted_at"] = self.now()
        self.save()
        return SimResponse(200, ok("Model deleted"))

    @route("GET", r"/models/" + _ID + r"/images")
    def list_model_images(self, req: SimRequest, model_id: str) -> SimResponse:
        """[D] `{"page", "pageSize", "result": [Image...], "status": "OK"}`, filtered by imageType."""
        self._model(model_id)
        image_type = req.q("imageType") or "all"
        types = IMAGE_FILTERS.get(image_type)
        if types is None:
            raise nok(400, f"imageType must be one of {', '.join(IMAGE_FILTERS)}", "invalid query")
        page, size = page_params(req)
        found = [i for t in types for i in self._inputs(model_id, t)]
        found.sort(key=lambda i: (i["created"], i["id"]))
        chunk = found[(page - 1) * size : page * size]
        return SimResponse(
            200, {"page": page, "pageSize": size, "result": [self._image_view(i) for i in chunk], "status": "OK"}
        )

    @route("POST", r"/images/upload")
    def upload_image(self, req: SimRequest) -> SimResponse:
        """[D] multipart `file` + `data` ({"modelID", "type"}); formats, 20 MB and 20-per-type caps."""
        part, filename, model_id, image_type = upload_request(req)
        self._live_model(model_id)
        if len(self._inputs(model_id, image_type)) >= MAX_INPUTS:
            raise nok(400, f"A model can have at most {MAX_INPUTS} {image_type} images", "too many images")
        image = self._store_image(model_id, image_type, filename, part.data, part.content_type)
        self.save()
        return SimResponse(200, ok(self._image_view(image)))

    def _store_image(
        self, model_id: str, image_type: str, filename: str, content: bytes, content_type: str
    ) -> dict[str, Any]:
        now = self.now()
        image_id = _uuid7(now)
        image: dict[str, Any] = {
            "id": image_id,
            "modelID": model_id,
            "type": image_type,
            "created": now,
            "filename": filename,
            "content_type": content_type,
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
        }
        self._images()[image_id] = image
        return image

    @route("GET", r"/images/" + _IMG)
    def get_image(self, req: SimRequest, image_id: str) -> SimResponse:
        """[D] one image."""
        image = self._images().get(image_id)
        if image is None:
            raise nok(404, f"Image {image_id} not found", "image not found")
        return SimResponse(200, ok(self._image_view(image)))

    @route("DELETE", r"/images/" + _IMG)
    def delete_image(self, req: SimRequest, image_id: str) -> SimResponse:
        """[I] path and answer (delete exists [D])."""
        if self._images().pop(image_id, None) is None:
            raise nok(404, f"Image {image_id} not found", "image not found")
        self.save()
        return SimResponse(200, ok("Image deleted"))

    @route("GET", r"/models/" + _ID + r"/train")
    def train(self, req: SimRequest, model_id: str) -> SimResponse:
        """[D] a GET starts the training: 400 unless 12-20 modelInput images, 429 when too many run."""
        model = self._live_model(model_id)
        if any(self.training_state(r).active for r in model["trainings"]):
            raise nok(409, "Model is already training; retry later", "conflict")  # [I]
        count = len(self._inputs(model_id))
        if not MIN_INPUTS <= count <= MAX_INPUTS:
            raise nok(
                400,
                f"Upload {MIN_INPUTS} to {MAX_INPUTS} modelInput images before training (the model has {count})",
                "invalid image count",
            )
        limit = int(self.world.get("max_concurrent_trainings", 1))
        if self._running_trainings() >= limit:
            raise nok(429, "Too many trainings are running; retry later", "too many trainings")  # [I] wording
        # [I] re-training a ready model is allowed: ready -> training -> ready
        model["trainings"].append(self.new_training(inputs=[i["id"] for i in self._inputs(model_id)]))
        self.save()
        return SimResponse(200, ok("Training triggered"))

    # -- helpers for tests ----------------------------------------------------------------------

    def add_model(
        self,
        name: str = "Test Model",
        *,
        model_id: str | None = None,
        age: float = 30,
        gender: str = "Female",
        inputs: int = 0,
        trained: bool = False,
    ) -> str:
        """Create a model (as POST /models would) with `inputs` input images uploaded by hand; its id.

        `trained=True` adds a finished training made by hand: a ready model no record explains.
        """
        with self.transaction():
            mid = self._create_model({"name": name, "age": age, "gender": gender}, model_id=model_id)
            for n in range(inputs):
                self._store_image(mid, "modelInput", f"hand-{n}.png", f"{mid}:{n}".encode(), "image/png")
        if trained:
            self.mark_trained(mid)
        return mid

    def set_max_concurrent_trainings(self, n: int) -> None:
        """How many trainings may run at once before GET /train answers 429."""
        with self.transaction():
            self.world["max_concurrent_trainings"] = n

    def start_training(self, model_id: str, *, duration: float | None = None) -> None:
        """A training started outside reconciler (by hand in the web app): no checks, counts to the limit."""
        with self.transaction():
            record = self.new_training(by="hand")
            if duration is not None:
                record["duration"] = float(duration)
            self._live_model(model_id)["trainings"].append(record)

    def mark_trained(self, model_id: str, *, duration: float = 1200.0) -> None:
        """A finished training made by hand, ending now."""
        with self.transaction():
            now = self.now()
            record = {
                "by": "hand",
                "started_at": now - duration,
                "duration": duration,
                "outcome": "succeeded",
                "failure_message": None,
                "cancelled_at": None,
                "stopped_at": None,
            }
            self._live_model(model_id)["trainings"].append(record)

    def add_input_image(self, model_id: str, content: bytes, filename: str = "by-hand.png") -> str:
        """An input image uploaded by hand; its id."""
        with self.transaction():
            self._live_model(model_id)
            return str(self._store_image(model_id, "modelInput", filename, content, "image/png")["id"])

    def input_images(self, model_id: str) -> list[dict[str, Any]]:
        """The model's modelInput images as stored (with filename, size and sha256, which the API hides)."""
        with self.transaction(save=False):
            return [dict(i) for i in self._inputs(model_id)]

    def model_view(self, model_id: str) -> dict[str, Any]:
        """The model as `GET /models/{id}` shows it now."""
        with self.transaction(save=False):
            return self._model_view(self._model(model_id))

    def model_status(self, model_id: str) -> str:
        """The model's status word now."""
        return str(self.model_view(model_id)["status"])

    def trainings(self, model_id: str) -> list[dict[str, Any]]:
        """The training records of a model (phase derived from the clock)."""
        with self.transaction(save=False):
            out = []
            for record in self._model(model_id)["trainings"]:
                state = self.training_state(record)
                out.append({**record, "phase": state.phase})
            return out
