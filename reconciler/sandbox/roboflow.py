"""Roboflow simulator: the training-related part of https://api.roboflow.com (providers.md §3).

Faithful to the documented shapes where they are known ([D]/[SDK]); the rest is marked [I]
(inferred) so it is easy to find and change once checked against the live API.

World layout (JSON, persisted by the Sandbox):

    {"default_workspace": "acme",
     "workspaces": {"acme": {"name", "members", "projects": {"hardhats": {
         "name", "type", "created", "updated", "images", "unannotated", "annotation", "classes",
         "versions": {"3": {"name", "created", "images", "preprocessing", "augmentation",
                            "exports", "generating_until", "trainings": [record, ...]}}}}}}}

A training record is `Simulator.new_training(...)` plus trainingId/jobId/via/modelType/epochs/
speed/checkpoint; its status is derived from the clock on every request.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, ClassVar

from reconciler.sandbox.simulator import Simulator, TrainingState
from reconciler.sandbox.wire import SimHTTPError, SimRequest, SimResponse, route

_SIZES = ("n", "s", "m", "l", "x")
_YOLO_FAMILIES = ("yolov5", "yolov7", "yolov8", "yolov9", "yolov10", "yolov11", "yolov12", "yolo26")

#: Model types the simulated /train accepts. [D] examples: rfdetr-nano, rfdetr-base, yolov8,
#: yolov8n, yolov11; the rest is the SDK's custom-weights list [SDK]. The real list is whatever
#: the API returns for an invalid value [D], so this is an approximation [I].
VALID_MODEL_TYPES: tuple[str, ...] = (
    *(f"rfdetr-{s}" for s in ("nano", "small", "medium", "base", "large", "xlarge", "2xlarge")),
    *(f"rfdetr-seg-{s}" for s in ("nano", "small", "medium", "large", "xlarge", "2xlarge")),
    "rfdetr-keypoint-preview",
    "rfdetr-nas",
    *(name for family in _YOLO_FAMILIES for name in (family, *(family + s for s in _SIZES))),
    "yolonas",
    *(f"yolonas-{s}" for s in ("s", "m", "l")),
    "yolov8-cls",
    "yolov11-cls",
)

DEFAULT_MODEL_TYPE = "rfdetr-base"  # [I] what the server picks when modelType is omitted
DEFAULT_EPOCHS = 100  # [I] server default when epochs is omitted
SPEEDS = ("fast", "accurate")  # [D] fast is the default, accurate is paid

#: [I] The exact 401 body (message/type as the Graph-style errors Roboflow returns; the hint
#: wording is a guess).
UNAUTHORIZED_BODY: dict[str, Any] = {
    "error": {
        "message": "This API key does not exist (or has been revoked).",
        "type": "OAuthException",
        "hint": (
            "You may retrieve your API key via the Roboflow Dashboard. Go to Account > Roboflow Keys to retrieve yours."
        ),
    }
}

# Path pieces of the routes below.
_WS = r"/(?P<ws>[^/]+)"
_PROJ = _WS + r"/(?P<proj>[^/]+)"
_VER = _PROJ + r"/(?P<version>\d+)"

# Legacy statuses as `version.train.status` and v2 `status` show them ([SDK]; cancelled [I]).
_STATUS = {
    "queued": "queued",
    "running": "running",
    "succeeded": "finished",
    "failed": "failed",
    "cancelled": "cancelled",
}


def _conflict(message: str, code: str) -> SimHTTPError:
    return SimHTTPError(409, {"error": {"type": "Conflict", "message": message, "code": code}})


def _not_found(message: str) -> SimHTTPError:
    return SimHTTPError(404, {"error": message})


def _bad_request(message: str) -> SimHTTPError:
    return SimHTTPError(400, {"error": message})


def _unit(seed: str, salt: str) -> float:
    """A deterministic number in [0, 1) so repeated polls show the same metrics."""
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _num(value: float) -> str:
    # [D] the docs' example version shows metrics and epoch fields as strings.
    return repr(round(value, 6))


class RoboflowSimulator(Simulator):
    """Simulated Roboflow management API (projects, versions, trainings)."""

    type: ClassVar[str] = "roboflow"

    # -- world --------------------------------------------------------------------------------

    def seed(self) -> None:
        """Workspace `acme`: `hardhats` (versions 1-3) and `forklifts` (1-2), none trained."""
        self.world.setdefault("default_workspace", "acme")
        self.world.setdefault("workspaces", {})
        self._add_project("acme", "hardhats", 3, name="Hardhats", classes={"helmet": 1840})
        self._add_project("acme", "forklifts", 2, name="Forklifts", classes={"forklift": 960})

    def _add_project(
        self,
        ws: str,
        proj: str,
        versions: int,
        *,
        name: str | None = None,
        project_type: str = "object-detection",
        images: int = 600,
        classes: dict[str, int] | None = None,
    ) -> None:
        now = self.now()
        workspaces = self.world.setdefault("workspaces", {})
        self.world.setdefault("default_workspace", ws)
        workspace = workspaces.setdefault(ws, {"name": ws.replace("-", " ").title(), "members": 3, "projects": {}})
        project = workspace["projects"].setdefault(
            proj,
            {
                "name": name or proj.replace("-", " ").title(),
                "type": project_type,
                "created": now - 30 * 86400,
                "updated": now - 86400,
                "images": images,
                "unannotated": 0,
                "annotation": proj,
                "classes": classes or {"object": images * 2},
                "versions": {},
            },
        )
        while len(project["versions"]) < versions:
            self._new_version(project, created=now - (versions - len(project["versions"])) * 86400)

    def _new_version(
        self,
        project: dict[str, Any],
        *,
        created: float,
        name: str | None = None,
        preprocessing: dict[str, Any] | None = None,
        augmentation: dict[str, Any] | None = None,
        generating_until: float | None = None,
    ) -> int:
        number = max((int(v) for v in project["versions"]), default=0) + 1
        images = int(project["images"]) * (3 if augmentation else 1)
        project["versions"][str(number)] = {
            "name": name or f"v{number}",
            "created": created,
            "images": images,
            "preprocessing": (
                preprocessing
                if preprocessing is not None
                else {"auto-orient": {"enabled": True}, "resize": {"width": 640, "height": 640}}
            ),
            "augmentation": augmentation or {},
            "exports": [],
            "generating_until": generating_until,
            "trainings": [],
        }
        project["updated"] = created
        return number

    def _workspace(self, ws: str) -> dict[str, Any]:
        workspace = self.world.get("workspaces", {}).get(ws)
        if workspace is None:
            raise _not_found(f"Workspace {ws} does not exist or you do not have access to it.")
        assert isinstance(workspace, dict)
        return workspace

    def _project(self, ws: str, proj: str) -> dict[str, Any]:
        project = self._workspace(ws)["projects"].get(proj)
        if project is None:
            raise _not_found(f"Project {ws}/{proj} does not exist or cannot be loaded.")
        assert isinstance(project, dict)
        return project

    def _version(self, ws: str, proj: str, version: str) -> dict[str, Any]:
        found = self._project(ws, proj)["versions"].get(str(int(version)))
        if found is None:
            raise _not_found(f"Version {ws}/{proj}/{int(version)} does not exist.")
        assert isinstance(found, dict)
        return found

    # -- derived views --------------------------------------------------------------------------

    def _state(self, record: dict[str, Any]) -> TrainingState:
        return self.training_state(record)

    def _latest(self, version: dict[str, Any]) -> dict[str, Any] | None:
        trainings: list[dict[str, Any]] = version["trainings"]
        return trainings[-1] if trainings else None

    def _active(self, version: dict[str, Any]) -> dict[str, Any] | None:
        for record in reversed(version["trainings"]):
            if self._state(record).active:
                return dict(record)
        return None

    def _metrics(self, record: dict[str, Any]) -> dict[str, float]:
        seed = str(record["trainingId"])
        return {
            "map": 0.55 + 0.35 * _unit(seed, "map"),
            "precision": 0.60 + 0.35 * _unit(seed, "precision"),
            "recall": 0.50 + 0.40 * _unit(seed, "recall"),
        }

    def _epochs_done(self, record: dict[str, Any], state: TrainingState) -> int:
        if state.phase == "queued":
            return 0
        return math.floor(int(record["epochs"]) * state.progress + 1e-9)

    def _epoch_rows(self, record: dict[str, Any], done: int) -> list[dict[str, str]]:
        total = max(int(record["epochs"]), 1)
        final = self._metrics(record)
        rows = []
        for i in range(done):
            frac = (i + 1) / total
            rise = (1 - math.exp(-4 * frac)) / (1 - math.exp(-4))
            rows.append(
                {
                    "epoch": str(i),
                    "mAP": _num(final["map"] * rise),
                    "precision": _num(final["precision"] * (0.5 + 0.5 * rise)),
                    "recall": _num(final["recall"] * (0.5 + 0.5 * rise)),
                    "box_loss": _num(0.01 + 0.05 * math.exp(-2 * frac)),
                    "obj_loss": _num(0.005 + 0.03 * math.exp(-2 * frac)),
                    "class_loss": _num(0.002 + 0.02 * math.exp(-2.5 * frac)),
                    "mAP_50_95": _num(final["map"] * 0.6 * rise),
                }
            )
        return rows

    def _results(self, record: dict[str, Any], version: dict[str, Any]) -> dict[str, Any]:
        # [D] docs example: train.results.class_map.{valid,test}[{class, map50, map95, ...}].
        m = self._metrics(record)
        images = int(version["images"])

        def row(split_images: int, shift: float) -> dict[str, str]:
            return {
                "class": "all",
                "images": str(split_images),
                "targets": str(split_images * 3),
                "map50": _num(m["map"] - shift),
                "map95": _num((m["map"] - shift) * 0.6),
                "precision": _num(m["precision"] - shift),
                "recall": _num(m["recall"] - shift),
            }

        return {
            "class_map": {
                "valid": [row(max(images // 5, 1), 0.0)],
                "test": [row(max(images // 10, 1), 0.02)],
            }
        }

    def _model_ids(self, ws: str, proj: str, version: str, record: dict[str, Any]) -> list[str]:
        # [SDK] SMPV models are "<dataset>/<version>", MMPV ones "<workspace>/<model-slug>".
        if record.get("via") == "v2":
            return [f"{ws}/{proj}-{version}-{str(record['trainingId'])[:6].lower()}"]
        return [f"{proj}/{version}"]

    def _model(self, proj: str, version: str, record: dict[str, Any]) -> dict[str, Any]:
        state = self._state(record)
        m = self._metrics(record)
        return {
            # [D] id/endpoint/start/end/fromScratch/map/recall/precision (metrics as percent
            # strings, as the docs' example); modelType and epochs are [I].
            "id": f"{proj}/{version}",
            "endpoint": f"https://detect.roboflow.com/{proj}/{version}",
            "start": state.running_at,
            "end": state.ends_at,
            "fromScratch": record.get("checkpoint") is None,
            "map": f"{m['map'] * 100:.2f}",
            "recall": f"{m['recall'] * 100:.2f}",
            "precision": f"{m['precision'] * 100:.2f}",
            "modelType": record["modelType"],
            "epochs": int(record["epochs"]),
        }

    def _version_view(self, ws: str, proj: str, number: str, *, with_epochs: bool = True) -> dict[str, Any]:
        version = self._version(ws, proj, number)
        now = self.now()
        generating_until = version.get("generating_until")
        generating = generating_until is not None and now < float(generating_until)
        created = float(version["created"])
        if generating and generating_until is not None:
            span = max(float(generating_until) - created, 1e-9)
            progress = min(max((now - created) / span, 0.0), 0.99)
        else:
            progress = 1.0
        images = 0 if generating else int(version["images"])
        view: dict[str, Any] = {
            "id": f"{ws}/{proj}/{number}",
            "name": version["name"],
            "version": str(number),
            "created": created,
            "images": images,
            "splits": {
                "train": images - images // 5 - images // 10,
                "valid": images // 5,
                "test": images // 10,
            },
            "generating": generating,
            "progress": progress,
            "preprocessing": version["preprocessing"],
            "augmentation": version["augmentation"],
            "exports": list(version["exports"]),
            "classes": sorted(self._project(ws, proj)["classes"]),
        }
        latest = self._latest(version)
        if latest is not None:
            state = self._state(latest)
            train: dict[str, Any] = {
                "status": _STATUS[state.phase],
                "requestedStop": latest.get("stopped_at") is not None,
            }
            if state.phase == "succeeded":
                train["results"] = self._results(latest, version)
            if state.phase == "failed":
                train["message"] = state.message or "Training failed."
            view["train"] = train
            # [SDK] "roboflow-train" appears once the machine is up (not while queued).
            if with_epochs and state.phase != "queued":
                done = self._epochs_done(latest, state)
                view["models"] = {"roboflow-train": {"epochs": self._epoch_rows(latest, done)}}
        # `model` is the last successful training, kept while a retrain runs or after it fails.
        best: tuple[float, dict[str, Any]] | None = None
        for record in version["trainings"]:
            state = self._state(record)
            if state.phase == "succeeded" and (best is None or state.ends_at >= best[0]):
                best = (state.ends_at, record)
        if best is not None:
            view["model"] = self._model(proj, number, best[1])
        return view

    def _workspace_view(self, ws: str) -> dict[str, Any]:
        workspace = self._workspace(ws)
        return {"name": workspace["name"], "url": ws, "members": workspace["members"]}

    def _project_view(self, ws: str, proj: str) -> dict[str, Any]:
        project = self._project(ws, proj)
        images = int(project["images"])
        return {
            "id": f"{ws}/{proj}",
            "type": project["type"],
            "name": project["name"],
            "created": project["created"],
            "updated": project["updated"],
            "images": images,
            "unannotated": project["unannotated"],
            "annotation": project["annotation"],
            "versions": len(project["versions"]),
            "public": False,
            "splits": {"train": images * 7 // 10, "valid": images // 5, "test": images // 10},
            "colors": {},
            "classes": project["classes"],
        }

    def _training_entry(self, ws: str, proj: str, version: str, record: dict[str, Any]) -> dict[str, Any]:
        state = self._state(record)
        succeeded = state.phase == "succeeded"
        return {
            # [SDK] rfapi documents `id` in list entries and `trainingId` elsewhere: send both.
            "trainingId": record["trainingId"],
            "id": record["trainingId"],
            "versionId": f"{ws}/{proj}/{version}",
            "status": _STATUS[state.phase],
            "start": state.started_at,
            "end": state.ended_at,
            "jobType": "train",
            "modelType": record["modelType"],
            "modelGroup": f"{proj}-{version}",
            "modelIds": self._model_ids(ws, proj, version, record) if succeeded else [],
        }

    # -- auth ---------------------------------------------------------------------------------

    def authenticate(self, req: SimRequest) -> None:
        """[D] `?api_key=` on every request; 401 when missing or wrong."""
        if req.q("api_key") != self.api_key:
            raise SimHTTPError(401, UNAUTHORIZED_BODY)

    def not_found(self, req: SimRequest) -> SimResponse:
        """Unknown route: 404 `{"error": ...}` ([I] the wording)."""
        return SimResponse(404, {"error": f"Unsupported request: {req.method} {req.path}"})

    # -- routes: workspace / project / version ----------------------------------------------

    @route("GET", r"/")
    def get_root(self, req: SimRequest) -> SimResponse:
        """[D] welcome naming the key's workspace."""
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
        body = req.json(default={})
        if not isinstance(body, dict):
            raise _bad_request("Request body must be a JSON object.")
        preprocessing = body.get("preprocessing", {})
        augmentation = body.get("augmentation", {})
        name = body.get("versionName")
        if not isinstance(preprocessing, dict) or not isinstance(augmentation, dict):
            raise _bad_request("preprocessing and augmentation must be objects.")
        if name is not None and not isinstance(name, str):
            raise _bad_request("versionName must be a string.")
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
                "status": _STATUS[state.phase],
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
            raise _conflict("Cannot cancel non-running train job.", "CANNOT_CANCEL")
        return self._cancel(latest)

    @route("POST", _VER + r"/train/stop")
    def stop(self, req: SimRequest, ws: str, proj: str, version: str) -> SimResponse:
        """[SDK] early stop: sets `train.requestedStop`, the run ends now with what it has."""
        latest = self._latest(self._version(ws, proj, version))
        if latest is None:
            raise _conflict("Cannot stop non-running train job.", "CANNOT_STOP")
        return self._stop(latest)

    @route("GET", _VER + r"/training/results")
    def training_results(self, req: SimRequest, ws: str, proj: str, version: str) -> SimResponse:
        """[SDK] run-level results bundle of the latest run (minimal, non-NAS form)."""
        latest = self._latest(self._version(ws, proj, version))
        if latest is None:
            raise _not_found(f"No training found for {ws}/{proj}/{int(version)}.")
        return self.get_training(
            SimRequest("GET", req.path, {"trainingId": [latest["trainingId"]]}, {}, b""),
            ws,
            proj,
            version,
        )

    @route("GET", _VER)
    def get_version(self, req: SimRequest, ws: str, proj: str, version: str) -> SimResponse:
        """[D][SDK] `{"workspace", "project", "version"}` (accepts `nocache`)."""
        number = str(int(version))
        return SimResponse(
            200,
            {
                "workspace": self._workspace_view(ws),
                "project": self._project_view(ws, proj),
                "version": self._version_view(ws, proj, number),
            },
        )

    @route("GET", _VER + r"/(?P<fmt>(?!train$|training$)[a-z0-9][a-z0-9-]*)")
    def export(self, req: SimRequest, ws: str, proj: str, version: str, fmt: str) -> SimResponse:
        """[SDK] export a version in a format (the SDK does this before training) [I] shape."""
        v = self._version(ws, proj, version)
        if fmt not in v["exports"]:
            v["exports"].append(fmt)
            self.save()
        number = str(int(version))
        body = self.get_version(req, ws, proj, version).body
        body["export"] = {
            "format": fmt,
            "link": f"{self.base_url}/_exports/{ws}/{proj}/{number}/{fmt}.zip",
        }
        return SimResponse(200, body)

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

    def _training_options(self, req: SimRequest) -> dict[str, Any]:
        body = req.json(default={})
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise _bad_request("Request body must be a JSON object.")
        # [SDK] sends camelCase modelType; the docs' curl sends model_type: accept both.
        model_type = body.get("modelType", body.get("model_type"))
        if model_type is None:
            model_type = DEFAULT_MODEL_TYPE
        if not isinstance(model_type, str) or model_type not in VALID_MODEL_TYPES:
            # [D] an invalid value returns the full list as an error ([I] the wording).
            raise _bad_request(
                f"Invalid model type {model_type!r}. Valid model types are: {', '.join(VALID_MODEL_TYPES)}"
            )
        epochs = body.get("epochs")
        if epochs is None:
            epochs = DEFAULT_EPOCHS
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise _bad_request("epochs must be a positive integer.")  # [I]
        speed = body.get("speed", "fast")
        if speed not in SPEEDS:
            raise _bad_request("speed must be one of: fast, accurate.")  # [I]
        checkpoint = body.get("checkpoint")
        if checkpoint is not None and not isinstance(checkpoint, str):
            raise _bad_request("checkpoint must be a string.")  # [I]
        options: dict[str, Any] = {
            "modelType": model_type,
            "epochs": epochs,
            "speed": speed,
            "checkpoint": checkpoint,
        }
        if "trainRecipe" in body:
            options["trainRecipe"] = body["trainRecipe"]
        return options

    def _start(self, req: SimRequest, ws: str, proj: str, version: str, *, via: str) -> dict[str, Any]:
        v = self._version(ws, proj, version)
        options = self._training_options(req)
        generating_until = v.get("generating_until")
        if generating_until is not None and self.now() < float(generating_until):
            raise _bad_request("This version is still being generated.")  # [I]
        if self._active(v) is not None:
            # [I] the SDK notes "the backend rejects a second run on a legacy version".
            raise _conflict(
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
            raise _not_found(f"Training {training_id} not found.")
        if not trainings:
            raise _not_found(f"No training runs found for {proj}/{int(version)}.")
        if len(trainings) > 1:
            ids = ", ".join(str(r["trainingId"]) for r in trainings)
            raise _conflict(
                f"Version {proj}/{int(version)} owns several runs ({ids}); pass trainingId.",
                "MULTIPLE_TRAININGS",
            )
        return trainings[0]

    def _cancel(self, record: dict[str, Any]) -> SimResponse:
        if not self._state(record).active:
            raise _conflict("Cannot cancel non-running train job.", "CANNOT_CANCEL")
        record["cancelled_at"] = self.now()
        self.save()
        return SimResponse(200, {"success": True})

    def _stop(self, record: dict[str, Any]) -> SimResponse:
        if self._state(record).phase != "running":
            raise _conflict("Cannot stop non-running train job.", "CANNOT_STOP")  # [I]
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
            return None if latest is None else _STATUS[self._state(latest).phase]

    def trainings(self, ws: str, proj: str, version: int) -> list[dict[str, Any]]:
        """The v2 trainings list entries of a version, as the API shows them now."""
        with self.transaction(save=False):
            v = self._version(ws, proj, str(version))
            return [self._training_entry(ws, proj, str(version), r) for r in v["trainings"]]

    def version_view(self, ws: str, proj: str, version: int) -> dict[str, Any]:
        """The `version` object `GET /:ws/:proj/:version` would return now."""
        with self.transaction(save=False):
            return self._version_view(ws, proj, str(version))
