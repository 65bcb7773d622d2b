"""Roboflow world and what the API shows of it: workspaces, projects, versions, and the status
and metrics of trainings derived from the clock (providers.md section 3).

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

import functools
import hashlib
import math
from typing import Any

from reconciler.sandbox.roboflow.validation import not_found_error
from reconciler.sandbox.simulator import Simulator, TrainingState

# Legacy statuses as `version.train.status` and v2 `status` show them ([SDK]; cancelled [I]).
STATUS = {
    "queued": "queued",
    "running": "running",
    "succeeded": "finished",
    "failed": "failed",
    "cancelled": "cancelled",
}


def _unit(seed: str, salt: str) -> float:
    """A deterministic number in [0, 1) so repeated polls show the same metrics."""
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _num(value: float) -> str:
    # [D] the docs' example version shows metrics and epoch fields as strings.
    return repr(round(value, 6))


@functools.lru_cache(maxsize=16)
def _shape(total: int) -> tuple[tuple[str, float, float, str, str, str], ...]:
    """What every training of `total` epochs shares, per epoch: its number, the rise of the
    metrics and the formatted losses. Formatting them was most of a version's GET (~1.6 ms at
    700 epochs), the sandbox's largest cost per request at 2,000 models."""
    rows = []
    for i in range(total):
        frac = (i + 1) / total
        rise = (1 - math.exp(-4 * frac)) / (1 - math.exp(-4))
        rows.append(
            (
                str(i),
                rise,
                0.5 + 0.5 * rise,
                _num(0.01 + 0.05 * math.exp(-2 * frac)),
                _num(0.005 + 0.03 * math.exp(-2 * frac)),
                _num(0.002 + 0.02 * math.exp(-2.5 * frac)),
            )
        )
    return tuple(rows)


class RoboflowState(Simulator):
    """The Roboflow world and what the API shows of it; `RoboflowSimulator` adds the routes."""

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
            raise not_found_error(f"Workspace {ws} does not exist or you do not have access to it.")
        assert isinstance(workspace, dict)
        return workspace

    def _project(self, ws: str, proj: str) -> dict[str, Any]:
        project = self._workspace(ws)["projects"].get(proj)
        if project is None:
            raise not_found_error(f"Project {ws}/{proj} does not exist or cannot be loaded.")
        assert isinstance(project, dict)
        return project

    def _version(self, ws: str, proj: str, version: str) -> dict[str, Any]:
        found = self._project(ws, proj)["versions"].get(str(int(version)))
        if found is None:
            raise not_found_error(f"Version {ws}/{proj}/{int(version)} does not exist.")
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
        fmap, precision, recall = final["map"], final["precision"], final["recall"]
        return [
            {
                "epoch": epoch,
                "mAP": _num(fmap * rise),
                "precision": _num(precision * half),
                "recall": _num(recall * half),
                "box_loss": box,
                "obj_loss": obj,
                "class_loss": cls,
                "mAP_50_95": _num(fmap * 0.6 * rise),
            }
            for epoch, rise, half, box, obj, cls in _shape(total)[:done]
        ]

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
                "status": STATUS[state.phase],
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

    def _model_rows(self, ws: str, proj: str) -> list[dict[str, Any]]:
        """`GET /:ws/:proj/models` rows: a model per id of every succeeded run [SDK]."""
        rows: list[dict[str, Any]] = []
        for number in sorted(self._project(ws, proj)["versions"], key=int):
            for record in self._version(ws, proj, number)["trainings"]:
                if self._state(record).phase != "succeeded":
                    continue
                m = self._metrics(record)
                for model_id in self._model_ids(ws, proj, number, record):
                    rows.append(
                        {
                            "url": model_id.split("/", 1)[1] if record.get("via") == "v2" else model_id,
                            "modelId": model_id,
                            "modelType": record["modelType"],
                            "modelGroup": f"{proj}-{number}",
                            "version": int(number),
                            "metrics": {
                                "hardware": "T4",  # [I]
                                "latency": round(4 + 20 * _unit(str(record["trainingId"]), "latency"), 2),
                                "map50": round(m["map"], 4),
                                "map5095": round(m["map"] * 0.6, 4),
                            },
                            "recommended": False,
                        }
                    )
        if rows:
            max(rows, key=lambda r: float(r["metrics"]["map50"]))["recommended"] = True  # [I]
        return rows

    def _training_entry(self, ws: str, proj: str, version: str, record: dict[str, Any]) -> dict[str, Any]:
        state = self._state(record)
        succeeded = state.phase == "succeeded"
        return {
            # [SDK] rfapi documents `id` in list entries and `trainingId` elsewhere: send both.
            "trainingId": record["trainingId"],
            "id": record["trainingId"],
            "versionId": f"{ws}/{proj}/{version}",
            "status": STATUS[state.phase],
            "start": state.started_at,
            "end": state.ended_at,
            "jobType": "train",
            "modelType": record["modelType"],
            "modelGroup": f"{proj}-{version}",
            "modelIds": self._model_ids(ws, proj, version, record) if succeeded else [],
        }
