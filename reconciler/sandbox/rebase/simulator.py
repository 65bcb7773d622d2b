"""Rebase Energy simulator: the site and training part of https://api.rebase.energy (providers.md §2).

Faithful to the documented paths, bodies and the 400 `ValidationResponse` ([D]); the rest is marked
[I] (inferred) so it is easy to find and change once checked against the live API:
- the API is a FastAPI app [D], so undocumented errors use FastAPI's `{"detail": "..."}` [I];
- the `state[]` item of List Site Models is not documented [?]; here each model's `state` holds one
  entry `{"status": untrained|training|trained|failed, "progress", "message",
  "started_timestamp_utc", "finished_timestamp_utc", "trained_timestamp_utc",
  "actuals_updated_timestamp_utc"}` [I] (the last one is how uploads of new actuals show);
- `version` starts at 0 and goes up by one per successful training [I].

World layout (JSON, persisted by the Sandbox):

    {"sites": {"<site_id>": {"info": <List Sites item>, "models": [model, ...],
                             "actuals": {"<type>": {"points", "first_valid_time", "last_valid_time"}},
                             "last_upload": epoch | null, "jobs": ["<job_id>", ...]}},
     "jobs": {"<job_id>": Simulator.new_training(...) + site_ids/splits/output_backtest_data/via}}

One train call is one job over all its sites: `fail_next_trainings(1)` fails every site of the
next call. A model's state is derived from the site's latest job and the clock on every request.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from reconciler.sandbox.rebase.validation import (
    INVALID_KEY_BODY,
    MISSING_KEY_BODY,
    SITE_TYPES,
    actuals_request,
    detail_error,
    site_request,
    train_request,
    validation_error,
)
from reconciler.sandbox.simulator import Simulator
from reconciler.sandbox.wire import SimHTTPError, SimRequest, SimResponse, route

V2 = "/platform/v2"
_SITE = V2 + r"/sites/(?P<site_id>[^/]+)"

#: Seeded sites (the quickstart manifest specs/rebase.yaml uses the first two).
SOLAR_SITE = "a923653c-26f1-1b29-955d-ffde5d182276"  # the id in the docs' Create Site example
WIND_SITE = "0f7c2d9e-4b1a-4e8f-a3c5-6d2e9b1f4a70"
LOAD_SITE = "5b8e1c3a-9d7f-4a2e-b6c1-3f4d5e6a7b8c"  # no actuals uploaded yet: no models

#: [I] the "set of preconfigured ML models" an actuals upload creates, per site type:
#: (name, model_type). Physical models exist when settings.usePhysicalModels is true.
PRECONFIGURED: dict[str, tuple[tuple[str, str], ...]] = {
    "solar": (("LightGBM", "ai"), ("Neural network", "ai"), ("Physical PV", "physical")),
    "wind": (("LightGBM", "ai"), ("Neural network", "ai"), ("Physical wind", "physical")),
    "load": (("LightGBM", "ai"), ("Neural network", "ai")),
}

# TrainingState phases -> the inferred status words of `state[]` [I].
_WORDS = {
    "queued": "training",
    "running": "training",
    "succeeded": "trained",
    "failed": "failed",
    "cancelled": "failed",
}


def iso(ts: float) -> str:
    """Epoch seconds as the API prints times: `2024-09-13T13:49:14.448761Z` [D]."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RebaseSimulator(Simulator):
    """Simulated Rebase Energy Platform API v2 (sites, actuals, site models, training)."""

    type: ClassVar[str] = "rebase"

    # -- world --------------------------------------------------------------------------------

    def seed(self) -> None:
        """A solar and a wind site with a year of actuals (untrained models); a load site without."""
        self.world.setdefault("sites", {})
        self.world.setdefault("jobs", {})
        day = 86400.0
        now = self.now()
        self._add_site(
            SOLAR_SITE,
            {"type": "solar", "name": "Solar park Alpha", "latitude": 57.7, "longitude": 11.97},
            capacity_kw=1000.0,
            created=now - 30 * day,
        )
        self._add_site(
            WIND_SITE,
            {"type": "wind", "name": "Wind farm Borealis", "latitude": 63.1, "longitude": 21.6},
            capacity_kw=12000.0,
            created=now - 30 * day,
        )
        self._add_site(
            LOAD_SITE,
            {"type": "load", "name": "HQ office load", "latitude": 59.33, "longitude": 18.07},
            capacity_kw=250.0,
            created=now - 2 * day,
        )
        for site_id in (SOLAR_SITE, WIND_SITE):
            self._record_actuals(site_id, "power", 8760, "2023-01-01T00:00:00Z", "2023-12-31T23:00:00Z", now - day)

    def _add_site(
        self,
        site_id: str,
        body: dict[str, Any],
        *,
        capacity_kw: float,
        created: float,
    ) -> dict[str, Any]:
        settings = {
            "model_resolution": "1h",
            "usePhysicalModels": True,
            "trainNearTermModels": False,
            "trainLongTermModels": False,
            "additional_points": [],
            **(body.get("settings") or {}),
        }
        info = {
            "id": site_id,
            "type": body["type"],
            "name": body["name"],
            "latitude": body["latitude"],
            "longitude": body["longitude"],
            "capacity_kw_array": [{"value": capacity_kw, "dateEnd": None}],
            "creation_timestamp_utc": iso(created),
            "settings": settings,
            "assets": body.get("assets") or [],
        }
        site: dict[str, Any] = {"info": info, "models": [], "actuals": {}, "last_upload": None, "jobs": []}
        self.world.setdefault("sites", {})[site_id] = site
        return site

    def _site(self, site_id: str) -> dict[str, Any]:
        site = self.world.get("sites", {}).get(site_id)
        if site is None:
            raise detail_error(404, "Site not found")  # [I]
        assert isinstance(site, dict)
        return site

    def _record_actuals(
        self, site_id: str, kind: str, points: int, first: str | None, last: str | None, at: float
    ) -> None:
        site = self._site(site_id)
        series = site["actuals"].setdefault(kind, {"points": 0, "first_valid_time": first, "last_valid_time": last})
        series["points"] += points
        if first is not None and (series["first_valid_time"] is None or first < series["first_valid_time"]):
            series["first_valid_time"] = first
        if last is not None and (series["last_valid_time"] is None or last > series["last_valid_time"]):
            series["last_valid_time"] = last
        site["last_upload"] = at
        if not site["models"]:
            # [D] the first upload "creates a set of preconfigured ML models" for the site
            physical = bool(site["info"]["settings"].get("usePhysicalModels", True))
            for priority, (name, model_type) in enumerate(PRECONFIGURED[site["info"]["type"]], start=1):
                if model_type == "physical" and not physical:
                    continue
                site["models"].append(
                    {
                        "id": str(uuid.uuid4()),
                        "name": name,
                        "label": name,
                        "display_name": name,
                        "priority": priority,
                        "model_type": model_type,
                        "created_at": at,
                        "output_types": [],
                    }
                )

    # -- views ------------------------------------------------------------------------------

    def _jobs_for(self, site: dict[str, Any]) -> list[dict[str, Any]]:
        # every job postdates the site's models: training needs them, and they are never replaced
        jobs = self.world.get("jobs", {})
        found = [jobs[j] for j in site["jobs"] if j in jobs]
        return sorted(found, key=lambda j: float(j["started_at"]))

    def _model_view(self, site: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
        last_upload = site["last_upload"]
        entry: dict[str, Any] = {
            "status": "untrained",
            "progress": 0.0,
            "message": None,
            "started_timestamp_utc": None,
            "finished_timestamp_utc": None,
            "trained_timestamp_utc": None,
            "actuals_updated_timestamp_utc": iso(last_upload) if last_upload is not None else None,
        }
        version = 0
        if model["model_type"] == "physical":
            # [I] physical models need no training: usable from creation, version 1
            version = 1
            entry.update(status="trained", progress=1.0, trained_timestamp_utc=iso(model["created_at"]))
        else:
            for job in self._jobs_for(site):
                state = self.training_state(job)
                if state.phase == "succeeded":
                    version += 1
                    entry["trained_timestamp_utc"] = iso(state.ends_at)
                entry.update(
                    status=_WORDS[state.phase],
                    progress=round(state.progress, 4),
                    message=state.message if state.phase in ("failed", "cancelled") else None,
                    started_timestamp_utc=iso(state.started_at),
                    finished_timestamp_utc=None if state.ended_at is None else iso(state.ended_at),
                )
        return {
            "id": model["id"],
            "name": model["name"],
            "label": model["label"],
            "version": version,
            "priority": model["priority"],
            "state": [entry],
            "display_name": model["display_name"],
            "output_types": list(model["output_types"]),
        }

    def _active_job(self, site: dict[str, Any]) -> dict[str, Any] | None:
        for job in self._jobs_for(site):
            if self.training_state(job).active:
                return job
        return None

    # -- auth ---------------------------------------------------------------------------------

    def authenticate(self, req: SimRequest) -> None:
        """[D] `Authorization: <key>`, the raw key; "Bearer <key>" is a wrong key. 401 [I] body."""
        given = req.header("authorization")
        if not given:
            raise SimHTTPError(401, MISSING_KEY_BODY)
        if given != self.api_key:
            raise SimHTTPError(401, INVALID_KEY_BODY)

    def not_found(self, req: SimRequest) -> SimResponse:
        """FastAPI's answer to an unknown route."""
        return SimResponse(404, {"detail": "Not Found"})

    def method_not_allowed(self, req: SimRequest) -> SimResponse:
        """FastAPI's answer to a known path with another method."""
        return SimResponse(405, {"detail": "Method Not Allowed"})

    # -- routes -------------------------------------------------------------------------------

    @route("POST", V2 + r"/sites/models/train")
    def train(self, req: SimRequest) -> SimResponse:
        """[D] train the ML models of several sites with one set of splits: `{"message"}`."""
        site_ids, splits, backtest = train_request(req.json())
        errors: list[tuple[str, str]] = []
        sites = self.world.get("sites", {})
        for i, site_id in enumerate(site_ids):
            site = sites.get(site_id)
            if site is None:
                errors.append((f"site_ids.{i}", f"Site {site_id} not found"))  # [I]
            elif not any(m["model_type"] == "ai" for m in site["models"]):
                errors.append((f"site_ids.{i}", f"Site {site_id} has no models to train; upload actuals first"))
        if errors:
            raise validation_error(*errors)
        for site_id in site_ids:
            if self._active_job(sites[site_id]) is not None:
                raise detail_error(409, f"A training is already in progress for site {site_id}")  # [I]
        job_id = str(uuid.uuid4())
        job = self.new_training(
            job_id=job_id,
            site_ids=list(dict.fromkeys(site_ids)),
            splits=splits,
            output_backtest_data=backtest,
            via="api",
        )
        self.world.setdefault("jobs", {})[job_id] = job
        for site_id in job["site_ids"]:
            sites[site_id]["jobs"].append(job_id)
        self.save()
        return SimResponse(200, {"message": "Training started"})

    @route("GET", V2 + r"/sites")
    def list_sites(self, req: SimRequest) -> SimResponse:
        """[D] a plain JSON array of site items, no pagination."""
        sites = self.world.get("sites", {})
        items = [dict(s["info"]) for s in sites.values()]
        return SimResponse(200, sorted(items, key=lambda s: (s["creation_timestamp_utc"], s["id"])))

    @route("POST", V2 + r"/sites")
    def create_site(self, req: SimRequest) -> SimResponse:
        """[D] `{"site_id"}` ([?] 200 or 201: 200 here, FastAPI's default)."""
        body, assets = site_request(req.json())
        capacity = sum(float(a.get("capacity", 0)) for a in assets if isinstance(a, dict))
        site_id = str(uuid.uuid4())
        self._add_site(site_id, body, capacity_kw=capacity, created=self.now())
        self.save()
        return SimResponse(200, {"site_id": site_id})

    @route("DELETE", _SITE)
    def delete_site(self, req: SimRequest, site_id: str) -> SimResponse:
        """[D] removes the site and all its data."""
        site = self._site(site_id)
        jobs = self.world.get("jobs", {})
        for job_id in site["jobs"]:
            job = jobs.get(job_id)
            if job is not None and site_id in job["site_ids"]:
                job["site_ids"].remove(site_id)
        del self.world["sites"][site_id]
        self.save()
        return SimResponse(200, {"message": "Site deleted successfully"})

    @route("POST", _SITE + r"/actual")
    def upload_actual(self, req: SimRequest, site_id: str) -> SimResponse:
        """[D] `{"type": "power", "data": [{"valid_time", "value"}]}`; power in kW."""
        self._site(site_id)
        kind, count, times = actuals_request(req.json())
        self._record_actuals(site_id, kind, count, min(times), max(times), self.now())
        self.save()
        return SimResponse(200, {"message": "Actuals uploaded successfully"})

    @route("GET", _SITE + r"/models")
    def list_site_models(self, req: SimRequest, site_id: str) -> SimResponse:
        """[D] the site's models with `version` and `state[]` ([I] state schema, see module doc)."""
        site = self._site(site_id)
        model_type = req.q("model_type")
        if model_type is not None and model_type not in ("ai", "physical"):
            raise detail_error(422, "model_type must be one of: ai, physical")  # [I]
        models = [m for m in site["models"] if model_type is None or m["model_type"] == model_type]
        return SimResponse(200, [self._model_view(site, m) for m in models])

    # -- helpers for tests ------------------------------------------------------------------

    def add_site(
        self,
        site_id: str | None = None,
        *,
        name: str = "Test site",
        site_type: str = "solar",
        latitude: float = 57.7,
        longitude: float = 11.97,
        capacity_kw: float = 500.0,
        with_actuals: bool = True,
    ) -> str:
        """Create a site (with a first actuals upload, hence untrained models); returns its id."""
        if site_type not in SITE_TYPES:
            raise ValueError(f"site_type must be one of {SITE_TYPES}")
        with self.transaction():
            new_id = site_id or str(uuid.uuid4())
            body = {"type": site_type, "name": name, "latitude": latitude, "longitude": longitude}
            self._add_site(new_id, body, capacity_kw=capacity_kw, created=self.now())
            if with_actuals:
                self._record_actuals(new_id, "power", 24, None, None, self.now())
            return new_id

    def upload_actuals(self, site_id: str, points: int = 24, kind: str = "power") -> None:
        """New data arrives out of band (as POST .../actual would record it)."""
        with self.transaction():
            now = iso(self.now())
            self._record_actuals(site_id, kind, points, now, now, self.now())

    def mark_trained(self, site_id: str, *, duration: float = 600.0, ended_at: float | None = None) -> str:
        """A training made by hand (dashboard) that already finished; returns its job id."""
        with self.transaction():
            site = self._site(site_id)
            end = self.now() if ended_at is None else ended_at
            job_id = str(uuid.uuid4())
            self.world.setdefault("jobs", {})[job_id] = self.finished_training(
                end,
                duration,
                job_id=job_id,
                site_ids=[site_id],
                splits=None,
                output_backtest_data=False,
                via="manual",
            )
            site["jobs"].append(job_id)
            return job_id

    def site_models(self, site_id: str, model_type: str | None = "ai") -> list[dict[str, Any]]:
        """The List Site Models answer as the API gives it now."""
        with self.transaction(save=False):
            site = self._site(site_id)
            return [self._model_view(site, m) for m in site["models"] if model_type in (None, m["model_type"])]

    def jobs(self) -> list[dict[str, Any]]:
        """Every training job (oldest first) with its derived phase, for assertions."""
        with self.transaction(save=False):
            out = []
            for job in sorted(self.world.get("jobs", {}).values(), key=lambda j: float(j["started_at"])):
                out.append({**job, "phase": self.training_state(job).phase})
            return out
