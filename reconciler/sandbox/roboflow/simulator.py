"""Roboflow simulator: the training-related routes of https://api.roboflow.com and helpers for
tests (providers.md section 3).

Faithful to the documented shapes where they are known ([D]/[SDK]); the rest is marked [I]
(inferred) so it is easy to find and change once checked against the live API. The world and its
views are in `state.py`, request validation in `validation.py`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, ClassVar

from reconciler.sandbox.roboflow.exports import export_key, export_token, export_zip, parse_token
from reconciler.sandbox.roboflow.state import STATUS, RoboflowState
from reconciler.sandbox.roboflow.validation import (
    DEFAULT_EPOCHS,
    UNAUTHORIZED_BODY,
    VALID_MODEL_TYPES,
    bad_request,
    conflict,
    not_found_error,
    training_options,
    version_options,
)
from reconciler.sandbox.wire import SimHTTPError, SimRequest, SimResponse, route

# Path pieces of the routes below.
_WS = r"/(?P<ws>[^/]+)"
_PROJ = _WS + r"/(?P<proj>[^/]+)"
_VER = _PROJ + r"/(?P<version>\d+)"

#: Encoded version answers kept (~20 KB each with a finished 700-epoch run): one per model of a
#: 2,000-model benchmark world, the least recently used dropped past it.
_ANSWERS_KEPT = 4096


class RoboflowSimulator(RoboflowState):
    """Simulated Roboflow management API (projects, versions, trainings)."""

    type: ClassVar[str] = "roboflow"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: (ws, project, version) -> (fingerprint, settled at, encoded answer); see `_version_answer`
        self._answers: OrderedDict[tuple[str, str, str], tuple[str, float, bytes]] = OrderedDict()

    # -- auth ---------------------------------------------------------------------------------

    def authenticate(self, req: SimRequest) -> None:
        """[D] `?api_key=` on every request; 401 when missing or wrong. Export downloads are signed
        links instead (`/ds/<id>?key=`), fetched by the SDK without the api_key [SDK]."""
        if req.method == "GET" and req.path.startswith("/ds/"):
            return
        if req.q("api_key") != self.api_key:
            raise SimHTTPError(401, UNAUTHORIZED_BODY)

    def not_found(self, req: SimRequest) -> SimResponse:
        """Unknown route: 404 `{"error": ...}` ([I] the wording)."""
        return SimResponse(404, {"error": f"Unsupported request: {req.method} {req.path}"})

    # -- routes: workspace / project / version ----------------------------------------------

    @route("GET", r"/")
    @route("POST", r"/")
    def get_root(self, req: SimRequest) -> SimResponse:
        """[D] welcome naming the key's workspace; [SDK] `Roboflow(api_key=)` logs in with a POST."""
        return SimResponse(
            200,
            {
                "welcome": "Welcome to the Roboflow API.",
                "instructions": "You are successfully authenticated.",
                "docs": "https://docs.roboflow.com",
                "workspace": self.world.get("default_workspace", "acme"),
            },
        )

    @route("POST", _PROJ + r"/generate")
    def generate(self, req: SimRequest, ws: str, proj: str) -> SimResponse:
        """[D][SDK] create a new version; it is `generating` for a moment ([I] how long)."""
        project = self._project(ws, proj)
        preprocessing, augmentation, name = version_options(req)
        now = self.now()
        number = self._new_version(
            project,
            created=now,
            name=name,
            preprocessing=preprocessing,
            augmentation=augmentation,
            generating_until=now + 0.2 * self.training_seconds,
        )
        self.save()
        return SimResponse(200, {"message": "Version generation started.", "version": number})

    @route("GET", _VER + r"/v2/trainings")
    def list_trainings(self, req: SimRequest, ws: str, proj: str, version: str) -> SimResponse:
        """[SDK] every run of the version (legacy, v2 and hand-made)."""
        v = self._version(ws, proj, version)
        number = str(int(version))
        entries = [self._training_entry(ws, proj, number, r) for r in v["trainings"]]
        return SimResponse(200, {"trainings": entries})

    @route("POST", _VER + r"/v2/trainings")
    def create_training(self, req: SimRequest, ws: str, proj: str, version: str) -> SimResponse:
        """[SDK] start a run: `{"trainingId", "status": "queued", "jobId"}`."""
        record = self._start(req, ws, proj, version, via="v2")
        return SimResponse(200, {"trainingId": record["trainingId"], "status": "queued", "jobId": record["jobId"]})

    @route("GET", _VER + r"/v2/trainings/recipe")
    def get_recipe(self, req: SimRequest, ws: str, proj: str, version: str) -> SimResponse:
        """[SDK] the hyperparameter schema of a model type plus a `template` to edit and submit as
        `trainRecipe` ([I] the schema's content)."""
        self._version(ws, proj, version)
        model_type = req.q("modelType")
        if model_type not in VALID_MODEL_TYPES:
            raise bad_request(
                f"Invalid model type {model_type!r}. Valid model types are: {', '.join(VALID_MODEL_TYPES)}"
            )
        return SimResponse(
            200,
            {
                "modelType": model_type,
                "schema": {
                    "hyperparameters": {
                        "epochs": {"type": "integer", "minimum": 1, "default": DEFAULT_EPOCHS},
                        "batch_size": {"type": "integer", "minimum": 1, "default": 8},
                        "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.0001},
                    },
                    "online_augmentation": ["flip", "rotate", "hsv"],
                    "preprocessing": ["resize"],
                },
                "template": {
                    "modelType": model_type,
                    "hyperparameters": {"epochs": DEFAULT_EPOCHS, "batch_size": 8, "lr": 0.0001},
                    "online_augmentation": [],
                },
            },
        )

    @route("GET", _VER + r"/v2/trainings/get")
    def get_training(self, req: SimRequest, ws: str, proj: str, version: str) -> SimResponse:
        """[SDK] one run's bundle; 409 without trainingId when the version has several."""
        record = self._resolve(ws, proj, version, req.q("trainingId"))
        number = str(int(version))
        state = self._state(record)
        model_ids = self._model_ids(ws, proj, number, record) if state.phase == "succeeded" else []
        m = self._metrics(record)
        models = [
            {
                "modelId": model_id,
                "modelType": record["modelType"],
                "metrics": {
                    "map50": round(m["map"], 4),
                    "map5095": round(m["map"] * 0.6, 4),
                    "precision": round(m["precision"], 4),
                    "recall": round(m["recall"], 4),
                },
            }
            for model_id in model_ids
        ]
        return SimResponse(
            200,
            {
                "trainingId": record["trainingId"],
                "status": STATUS[state.phase],
                "modelType": record["modelType"],
                "modelGroup": f"{proj}-{number}",
                "modelCount": len(models),
                "modelIds": model_ids,
                "models": models,
            },
        )

    @route("POST", _VER + r"/v2/trainings/cancel")
    def cancel_training_v2(self, req: SimRequest, ws: str, proj: str, version: str) -> SimResponse:
        """[SDK] cancel a run (body `{"trainingId"?}`)."""
        body = req.json(default={})
        training_id = body.get("trainingId") if isinstance(body, dict) else None
        return self._cancel(self._resolve(ws, proj, version, training_id))

    @route("POST", _VER + r"/v2/trainings/stop")
    def stop_training_v2(self, req: SimRequest, ws: str, proj: str, version: str) -> SimResponse:
        """[SDK] request an early stop of a run (body `{"trainingId"?}`)."""
        body = req.json(default={})
        training_id = body.get("trainingId") if isinstance(body, dict) else None
        return self._stop(self._resolve(ws, proj, version, training_id))

    @route("POST", _VER + r"/train")
    def train(self, req: SimRequest, ws: str, proj: str, version: str) -> SimResponse:
        """[D][SDK] legacy per-version training; the answer only confirms it started [I]."""
        self._start(req, ws, proj, version, via="legacy")
        return SimResponse(200, {"message": "Training started"})

    @route("POST", _VER + r"/train/cancel")
    def cancel(self, req: SimRequest, ws: str, proj: str, version: str) -> SimResponse:
        """[D] 200 `{"success": true}`, or 409 CANNOT_CANCEL unless queued/running."""
        req.json(default={})  # `{}` or `{"continueIfNoRefund": true}` [SDK]; nothing to refund
        latest = self._latest(self._version(ws, proj, version))
        if latest is None:
            raise conflict("Cannot cancel non-running train job.", "CANNOT_CANCEL")
        return self._cancel(latest)

    @route("POST", _VER + r"/train/stop")
    def stop(self, req: SimRequest, ws: str, proj: str, version: str) -> SimResponse:
        """[SDK] early stop: sets `train.requestedStop`, the run ends now with what it has."""
        latest = self._latest(self._version(ws, proj, version))
        if latest is None:
            raise conflict("Cannot stop non-running train job.", "CANNOT_STOP")
        return self._stop(latest)

    @route("GET", _VER + r"/training/results")
    def training_results(self, req: SimRequest, ws: str, proj: str, version: str) -> SimResponse:
        """[SDK] run-level results bundle of the latest run (minimal, non-NAS form)."""
        latest = self._latest(self._version(ws, proj, version))
        if latest is None:
            raise not_found_error(f"No training found for {ws}/{proj}/{int(version)}.")
        return self.get_training(
            SimRequest("GET", req.path, {"trainingId": [latest["trainingId"]]}, {}, b""),
            ws,
            proj,
            version,
        )

    @route("GET", _VER)
    def get_version(self, req: SimRequest, ws: str, proj: str, version: str) -> SimResponse:
        """[D][SDK] `{"workspace", "project", "version"}` (accepts `nocache`)."""
        return SimResponse(200, self._version_answer(ws, proj, str(int(version))))

    def _version_answer(self, ws: str, proj: str, number: str) -> bytes:
        """The version answer encoded, reused while what it shows is unchanged.

        Building and encoding it (a curve row per epoch, ~20 KB) was most of the sandbox's CPU
        per request at 2,000 models. Once the version is generated and its every run ended, the
        answer no longer moves with the clock: it is a function of the workspace's name and
        members and of the project (its versions and their runs), which the key holds as repr, so
        any change to them (a request, a test helper, a reload from disk) misses the cache."""
        workspace = self._workspace(ws)
        project = self._project(ws, proj)
        version = self._version(ws, proj, number)
        key = (ws, proj, number)
        fingerprint = repr((workspace["name"], workspace["members"], project))
        now = self.now()
        kept = self._answers.get(key)
        if kept is not None and kept[0] == fingerprint and now >= kept[1]:
            self._answers.move_to_end(key)
            return kept[2]
        data = json.dumps(self._version_body(ws, proj, number)).encode("utf-8")
        settled = self._settled_at(version, now)
        if settled is not None:
            self._answers[key] = (fingerprint, settled, data)
            self._answers.move_to_end(key)
            if len(self._answers) > _ANSWERS_KEPT:
                self._answers.popitem(last=False)
        return data

    def _settled_at(self, version: dict[str, Any], now: float) -> float | None:
        """From when the version's answer stops changing with the clock (None: not yet, at `now`):
        the end of its generation and of its every run. Kept with the answer so that a clock set
        back (tests) before that instant rebuilds it."""
        settled = float(version.get("generating_until") or 0.0)
        if now < settled:
            return None
        for record in version["trainings"]:
            state = self._state(record)
            if state.active:
                return None
            settled = max(settled, state.ends_at)
        return settled

    def _version_body(self, ws: str, proj: str, number: str) -> dict[str, Any]:
        return {
            "workspace": self._workspace_view(ws),
            "project": self._project_view(ws, proj),
            "version": self._version_view(ws, proj, number),
        }

    @route("GET", _VER + r"/(?P<fmt>(?!train$|training$)[a-z0-9][a-z0-9-]*)")
    def export(self, req: SimRequest, ws: str, proj: str, version: str, fmt: str) -> SimResponse:
        """[SDK] export a version in a format (the SDK does this before training) [I] shape."""
        v = self._version(ws, proj, version)
        if fmt not in v["exports"]:
            v["exports"].append(fmt)
            self.save()
        number = str(int(version))
        body = self._version_body(ws, proj, number)
        token = export_token(ws, proj, number, fmt)
        body["export"] = {
            "format": fmt,
            "link": f"{self.base_url}/ds/{token}?key={export_key(self.api_key, token)}",
        }
        return SimResponse(200, body)

    @route("GET", r"/ds/(?P<token>[^/]+)")
    def download(self, req: SimRequest, token: str) -> SimResponse:
        """The zip behind an export link ([I] path and signing; the SDK only follows the link)."""
        parsed = parse_token(token)
        if parsed is None or req.q("key") != export_key(self.api_key, token):
            raise SimHTTPError(403, {"error": "This download link is invalid or has expired."})
        ws, proj, number, fmt = parsed
        project = self._project(ws, proj)
        self._version(ws, proj, number)
        data = export_zip(proj, number, fmt, sorted(project["classes"]))
        return SimResponse(
            200,
            data,
            headers={"Content-Disposition": f'attachment; filename="{proj}-{number}-{fmt}.zip"'},
            content_type="application/zip",
        )

    @route("GET", r"/models/(?P<ws>[^/]+)/(?P<slug>.+)")
    def get_model_by_url(self, req: SimRequest, ws: str, slug: str) -> SimResponse:
        """[SDK] one trained model of the workspace by its url slug ([I] the wrapper object)."""
        for proj in sorted(self._workspace(ws)["projects"]):
            for row in self._model_rows(ws, proj):
                if row["url"] == slug:
                    return SimResponse(200, {"model": row})
        raise not_found_error(f"Model {ws}/{slug} not found.")

    @route("GET", _PROJ + r"/models")
    def list_models(self, req: SimRequest, ws: str, proj: str) -> SimResponse:
        """[SDK] the project's trained models `[{url, modelType, metrics, recommended}]`; `group`
        keeps one run's ([I] the list is the body itself, as the SDK's CLI prints it)."""
        self._project(ws, proj)
        group = req.q("group")
        rows = [r for r in self._model_rows(ws, proj) if group is None or r["modelGroup"] == group]
        return SimResponse(200, rows)

    @route("GET", _PROJ)
    def get_project(self, req: SimRequest, ws: str, proj: str) -> SimResponse:
        """[D] project metadata plus `versions[]`."""
        versions = sorted(self._project(ws, proj)["versions"], key=int)
        return SimResponse(
            200,
            {
                "workspace": self._workspace_view(ws),
                "project": self._project_view(ws, proj),
                "versions": [self._version_view(ws, proj, v, with_epochs=False) for v in versions],
            },
        )

    @route("GET", _WS)
    def get_workspace(self, req: SimRequest, ws: str) -> SimResponse:
        """[SDK] workspace with its projects."""
        view = self._workspace_view(ws)
        view["projects"] = [self._project_view(ws, p) for p in sorted(self._workspace(ws)["projects"])]
        return SimResponse(200, {"workspace": view})

    # -- training mechanics -----------------------------------------------------------------

    def _start(self, req: SimRequest, ws: str, proj: str, version: str, *, via: str) -> dict[str, Any]:
        v = self._version(ws, proj, version)
        options = training_options(req)
        generating_until = v.get("generating_until")
        if generating_until is not None and self.now() < float(generating_until):
            raise bad_request("This version is still being generated.")  # [I]
        if self._active(v) is not None:
            # [I] the SDK notes "the backend rejects a second run on a legacy version".
            raise conflict(
                f"A training is already in progress for {ws}/{proj}/{int(version)}.",
                "TRAINING_IN_PROGRESS",
            )
        record = self.new_training(
            trainingId=self.new_id("tr_"),
            jobId=self.new_id("job_"),
            via=via,
            **options,
        )
        v["trainings"].append(record)
        self.save()
        return record

    def _resolve(self, ws: str, proj: str, version: str, training_id: Any) -> dict[str, Any]:
        trainings: list[dict[str, Any]] = self._version(ws, proj, version)["trainings"]
        if training_id:
            for record in trainings:
                if record["trainingId"] == training_id:
                    return record
            raise not_found_error(f"Training {training_id} not found.")
        if not trainings:
            raise not_found_error(f"No training runs found for {proj}/{int(version)}.")
        if len(trainings) > 1:
            ids = ", ".join(str(r["trainingId"]) for r in trainings)
            raise conflict(
                f"Version {proj}/{int(version)} owns several runs ({ids}); pass trainingId.",
                "MULTIPLE_TRAININGS",
            )
        return trainings[0]

    def _cancel(self, record: dict[str, Any]) -> SimResponse:
        if not self._state(record).active:
            raise conflict("Cannot cancel non-running train job.", "CANNOT_CANCEL")
        record["cancelled_at"] = self.now()
        self.save()
        return SimResponse(200, {"success": True})

    def _stop(self, record: dict[str, Any]) -> SimResponse:
        if self._state(record).phase != "running":
            raise conflict("Cannot stop non-running train job.", "CANNOT_STOP")  # [I]
        record["stopped_at"] = self.now()
        self.save()
        return SimResponse(200, {"success": True})

    # -- helpers for tests ------------------------------------------------------------------

    def add_project(
        self,
        ws: str,
        proj: str,
        versions: int = 1,
        *,
        name: str | None = None,
        project_type: str = "object-detection",
        images: int = 600,
    ) -> None:
        """Create a project (and its workspace) with at least `versions` untrained versions."""
        with self.transaction():
            self._add_project(ws, proj, versions, name=name, project_type=project_type, images=images)

    def add_version(self, ws: str, proj: str, *, name: str | None = None) -> int:
        """Append a generated version to an existing project; returns its number."""
        with self.transaction():
            return self._new_version(self._project(ws, proj), created=self.now(), name=name)

    def mark_trained(
        self,
        ws: str,
        proj: str,
        version: int,
        model_type: str = "rfdetr-nano",
        *,
        epochs: int = DEFAULT_EPOCHS,
        speed: str = "fast",
        checkpoint: str | None = None,
        trained_at: float | None = None,
        duration: float = 3600.0,
    ) -> str:
        """Record a finished training made by hand (outside reconciler); returns its trainingId.

        The version then shows `model`, `train.results` and a v2 run: an unknown baseline.
        """
        with self.transaction():
            v = self._version(ws, proj, str(version))
            end = self.now() if trained_at is None else trained_at
            record = self.finished_training(
                end,
                duration,
                trainingId=self.new_id("tr_"),
                jobId=self.new_id("job_"),
                via="manual",
                modelType=model_type,
                epochs=epochs,
                speed=speed,
                checkpoint=checkpoint,
            )
            v["trainings"].append(record)
            return str(record["trainingId"])

    def add_trained_version(self, ws: str, proj: str, model_type: str = "rfdetr-nano", **kwargs: Any) -> int:
        """Append a new version and `mark_trained` it; returns the version number."""
        number = self.add_version(ws, proj)
        self.mark_trained(ws, proj, number, model_type, **kwargs)
        return number

    def training_status(self, ws: str, proj: str, version: int) -> str | None:
        """`version.train.status` as the API shows it now (None: never trained)."""
        with self.transaction(save=False):
            latest = self._latest(self._version(ws, proj, str(version)))
            return None if latest is None else STATUS[self._state(latest).phase]

    def trainings(self, ws: str, proj: str, version: int) -> list[dict[str, Any]]:
        """The v2 trainings list entries of a version, as the API shows them now."""
        with self.transaction(save=False):
            v = self._version(ws, proj, str(version))
            return [self._training_entry(ws, proj, str(version), r) for r in v["trainings"]]

    def version_view(self, ws: str, proj: str, version: int) -> dict[str, Any]:
        """The `version` object `GET /:ws/:proj/:version` would return now."""
        with self.transaction(save=False):
            return self._version_view(ws, proj, str(version))
