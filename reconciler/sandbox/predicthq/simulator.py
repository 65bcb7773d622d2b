"""PredictHQ simulator: the routes of the Forecasts API and Saved Locations of
https://api.predicthq.com, and helpers for tests (providers.md section 1).

Faithful to the documented shapes ([D]); what the docs leave open is marked [I] (inferred) so it
is easy to find and change once checked against the live API. The world and its derived state are
in `state.py`, request validation in `validation.py`.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar

from reconciler.sandbox.predicthq.state import (
    BUSY_STATUSES,
    SEED_LOCATION_ID,
    TRAINING_FIELDS,
    PredictHQState,
    iso,
    new_model_id,
    unit,
)
from reconciler.sandbox.predicthq.validation import (
    ALGOS,
    CREATE_NULLABLE,
    CREATE_UPDATE_FIELDS,
    DEFAULT_LIMIT,
    INDUSTRIES,
    LOCATION_FIELDS,
    LOCATION_NOT_FOUND,
    NO_DEMAND_MESSAGE,
    READINESS_STATUSES,
    REPLACE_FIELDS,
    REPLACE_NULLABLE,
    UNAUTHORIZED_BODY,
    UPDATE_NULLABLE,
    Invalid,
    bad_request,
    check_enum,
    check_feature,
    check_object,
    check_str,
    date_bounds,
    in_bounds,
    int_query,
    list_query,
    one_of,
    parse_demand_rows,
    query_invalid,
    state_conflict,
    validate_demand,
    validate_model_body,
)
from reconciler.sandbox.wire import SimHTTPError, SimRequest, SimResponse, route

_ID = r"(?P<model_id>[^/]+)"
_MODEL = r"/v1/forecasts/models/" + _ID


class PredictHQSimulator(PredictHQState):
    """Simulated PredictHQ Forecasts API (models, demand, trainings, forecasts, saved locations)."""

    type: ClassVar[str] = "predicthq"

    # -- auth ---------------------------------------------------------------------------------

    def authenticate(self, req: SimRequest) -> None:
        """[D] `Authorization: Bearer <token>`; 401 `{"error":"Authorization required"}` otherwise."""
        scheme, _, token = (req.header("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.api_key:
            raise SimHTTPError(401, UNAUTHORIZED_BODY)

    def not_found(self, req: SimRequest) -> SimResponse:
        """Unknown route: 404 in the ErrorResponse shape ([I] wording)."""
        return SimResponse(404, {"error": "Not Found"})

    def method_not_allowed(self, req: SimRequest) -> SimResponse:
        """Known path, wrong method: 405 with the `Allow` header HTTP requires ([I] FastAPI's body
        in the ErrorResponse shape)."""
        allowed = ", ".join(self.allowed_methods(req.path))
        return SimResponse(405, {"error": "Method Not Allowed"}, headers={"Allow": allowed})

    # -- routes: saved locations --------------------------------------------------------------

    @route("POST", r"/v1/saved-locations")
    def create_location(self, req: SimRequest) -> SimResponse:
        """[D] 201 `{"location_id"}`; one of geojson, origin_geojson or place_ids is required [I]."""
        body = self._location_body(req)
        location_id = new_model_id()
        now = iso(self.now())
        self.world.setdefault("saved_locations", {})[location_id] = {
            "location_id": location_id,
            **body,
            "create_dt": now,
            "update_dt": now,
        }
        self.save()
        return SimResponse(201, {"location_id": location_id})

    @route("GET", r"/v1/saved-locations")
    def list_locations(self, req: SimRequest) -> SimResponse:
        """[D] `{"count", "next", "previous", "locations": [SavedLocation]}`; `location_id`, `q`."""
        limit = int_query(req, "limit", DEFAULT_LIMIT, 0)
        offset = int_query(req, "offset", 0, 0)
        wanted = set(list_query(req, "location_id") or [])
        needle = (req.q("q") or "").strip().lower()
        items = [
            self.location_view(x)
            for x in sorted(
                self.world.get("saved_locations", {}).values(), key=lambda x: (x["create_dt"], x["location_id"])
            )
            if (not wanted or x["location_id"] in wanted) and needle in str(x.get("name") or "").lower()
        ]
        page = self._page(req, "/v1/saved-locations", items, limit, offset)
        page["locations"] = page.pop("results")
        return SimResponse(200, page)

    @route("GET", r"/v1/saved-locations/(?P<location_id>[^/]+)")
    def get_location(self, req: SimRequest, location_id: str) -> SimResponse:
        """[D] one SavedLocation; 404 `{"error": "Saved Location not found"}` [I]."""
        return SimResponse(200, self.location_view(self._location(location_id)))

    @route("PUT", r"/v1/saved-locations/(?P<location_id>[^/]+)")
    def replace_location(self, req: SimRequest, location_id: str) -> SimResponse:
        """[D] replace a saved location's data, 204 [I the status]."""
        found = self._location(location_id)
        body = self._location_body(req)
        kept = {k: found[k] for k in ("location_id", "create_dt")}
        found.clear()
        found.update({**kept, **body, "update_dt": iso(self.now())})
        self.save()
        return SimResponse(204)

    @route("DELETE", r"/v1/saved-locations/(?P<location_id>[^/]+)")
    def delete_location(self, req: SimRequest, location_id: str) -> SimResponse:
        """[D] delete a saved location, 204 [I the status]."""
        self._location(location_id)
        del self.world["saved_locations"][location_id]
        self.save()
        return SimResponse(204)

    def _location(self, location_id: str) -> dict[str, Any]:
        found = self.world.get("saved_locations", {}).get(location_id)
        if found is None:
            raise SimHTTPError(404, LOCATION_NOT_FOUND)
        assert isinstance(found, dict)
        return found

    def _location_body(self, req: SimRequest) -> dict[str, Any]:
        body = req.json()
        errs = Invalid()
        if check_object(errs, "body", body, LOCATION_FIELDS, {"name"}):
            if "name" in body:
                check_str(errs, "body.name", body["name"], min_length=1)
            if not any(body.get(k) for k in ("origin_geojson", "geojson", "place_ids")):
                errs.add("body", "One of geojson, origin_geojson or place_ids is required", "value_error")
            for key in ("geojson", "origin_geojson"):
                if body.get(key) is not None:
                    check_feature(errs, f"body.{key}", body[key])
            if body.get("industry") is not None:
                check_enum(errs, "body.industry", body["industry"], INDUSTRIES)
        errs.check()
        return {k: v for k, v in body.items() if k in LOCATION_FIELDS}

    # -- routes: algos and models -------------------------------------------------------------

    @route("GET", r"/v1/forecasts/algos")
    def list_algos(self, req: SimRequest) -> SimResponse:
        """[D] `{"results": [{"algo", "description", "status"}]}`."""
        return SimResponse(
            200,
            {
                "results": [
                    {
                        "algo": "phq-xgboost",
                        "description": "Gradient boosted trees over PredictHQ event features.",
                        "status": "current",
                    }
                ]
            },
        )

    @route("POST", r"/v1/forecasts/models")
    def create_model(self, req: SimRequest) -> SimResponse:
        """[D] 201 `{"model_id", "errors", "warnings"}`; 400 validation or unknown saved location."""
        body = validate_model_body(
            req.json(),
            allowed=CREATE_UPDATE_FIELDS,
            required={"name", "location"},
            nullable=CREATE_NULLABLE,
        )
        location_id = body["location"]["saved_location_id"]
        if location_id not in self.world.get("saved_locations", {}):
            raise SimHTTPError(400, LOCATION_NOT_FOUND)
        model_id = new_model_id()
        demand_type = body.get("demand_type")
        self._add_model(
            model_id,
            name=body["name"],
            forecast_window=body.get("forecast_window", "7d"),  # [?] the default is not documented
            industry=None,
            saved_location_id=location_id,
            external_id=body.get("external_id"),
            label=body.get("label"),
        )
        stored = self.world["models"][model_id]
        stored["demand_type"] = demand_type  # as validated: industry may be absent [D]
        if body.get("algo") is not None:
            stored["algo"] = body["algo"]
        stored["generate_baseline"] = bool(body.get("generate_baseline", False))
        self.save()
        return SimResponse(201, self._envelope(model_id=model_id))

    @route("GET", r"/v1/forecasts/models")
    def list_models(self, req: SimRequest) -> SimResponse:
        """[D] search: q, location.saved_location_id, readiness_status (was `status`), limit, offset."""
        limit = int_query(req, "limit", DEFAULT_LIMIT, 0)
        offset = int_query(req, "offset", 0, 0)
        # [D spec history] the filter was named `status` before 2026-05-14: accept both
        field = "readiness_status" if "readiness_status" in req.query else "status"
        statuses = list_query(req, field)
        wanted: set[str] | None = None
        if statuses is not None:
            wanted = set(statuses)
            bad = sorted(wanted - set(READINESS_STATUSES))
            if bad or not wanted:
                raise query_invalid(field, one_of(READINESS_STATUSES), "enum")
        raw_locations = list_query(req, "location.saved_location_id")
        locations = set(raw_locations) if raw_locations else None
        needle = (req.q("q") or "").strip().lower()
        items = []
        models = sorted(self.world.get("models", {}).values(), key=lambda m: (m["create_dt"], m["model_id"]))
        for m in models:
            if wanted is not None and self.readiness_status(m) not in wanted:
                continue
            if locations is not None and m["location"]["saved_location_id"] not in locations:
                continue
            if needle:
                haystack = [m["name"], m.get("external_id") or "", *(m.get("label") or [])]
                if not any(needle in str(h).lower() for h in haystack):
                    continue
            items.append(m)
        # only the page's models are rendered: a page of a big account costs its size, not the account's
        page = self._page(req, "/v1/forecasts/models", items, limit, offset)
        page["results"] = [self.model_view(m) for m in page["results"]]
        return SimResponse(200, page)

    @route("GET", _MODEL)
    def get_model(self, req: SimRequest, model_id: str) -> SimResponse:
        """[D] 200 `{"model", "errors", "warnings"}`; 404 `{"error": "Model not found"}`."""
        return SimResponse(200, self._envelope(model=self.model_view(self._model(model_id))))

    def _update(self, model_id: str, body: dict[str, Any]) -> None:
        m = self._model(model_id)
        if "location" in body and body["location"]["saved_location_id"] not in self.world.get("saved_locations", {}):
            raise SimHTTPError(400, LOCATION_NOT_FOUND)
        changed = [k for k in TRAINING_FIELDS if k in body and body[k] != m.get(k)]
        status = self.readiness_status(m)
        if changed and status in BUSY_STATUSES:
            raise state_conflict(status, "updating " + ", ".join(changed))  # [I] wording
        for key, value in body.items():
            m[key] = value
        m["update_dt"] = self.now()
        if changed:
            m["stale"] = True  # [D] a training-relevant change makes the model stale
        self.save()

    @route("PUT", _MODEL)
    def replace_model(self, req: SimRequest, model_id: str) -> SimResponse:
        """[D] full ReplaceModelRequest (name and location required, no generate_baseline), 204."""
        self._model(model_id)
        body = validate_model_body(
            req.json(),
            allowed=REPLACE_FIELDS,
            required={"name", "location"},
            nullable=REPLACE_NULLABLE,
        )
        # [I] a replace resets the optional fields it omits; forecast_window (whose default is
        # not documented) and generate_baseline (not part of PUT) are kept
        full = {"algo": ALGOS[0], "demand_type": None, "label": None, "external_id": None, **body}
        self._update(model_id, full)
        return SimResponse(204)

    @route("PATCH", _MODEL)
    def update_model(self, req: SimRequest, model_id: str) -> SimResponse:
        """[D] partial UpdateModelRequest (every field optional, generate_baseline too), 204."""
        self._model(model_id)
        body = validate_model_body(
            req.json(),
            allowed=CREATE_UPDATE_FIELDS,
            required=set(),
            nullable=UPDATE_NULLABLE,
        )
        # [I] a null for a field every model has leaves it as it is
        kept = {
            k: v for k, v in body.items() if not (v is None and k in {"name", "algo", "forecast_window", "location"})
        }
        self._update(model_id, kept)
        return SimResponse(204)

    @route("DELETE", _MODEL)
    def delete_model(self, req: SimRequest, model_id: str) -> SimResponse:
        """[D] 204, irreversible; blocked while preparing, training or forecasting."""
        status = self.readiness_status(self._model(model_id))
        if status in BUSY_STATUSES:
            raise state_conflict(status, "deletion")
        del self.world["models"][model_id]
        self.save()
        return SimResponse(204)

    # -- routes: demand, training, forecast -----------------------------------------------------

    @route("POST", _MODEL + r"/demand")
    def upload_demand_route(self, req: SimRequest, model_id: str) -> SimResponse:
        """[D] json / csv / ndjson; 201 without a body; 400 while training ([I] also while
        preparing and forecasting); does not make a ready model stale [?]."""
        m = self._model(model_id)
        status = self.readiness_status(m)
        if status in BUSY_STATUSES:
            raise state_conflict(status, "demand data upload")
        rows = validate_demand(parse_demand_rows(req), datetime.fromtimestamp(self.now(), tz=UTC).date())
        self._put_demand(model_id, rows)
        self.save()
        return SimResponse(201)

    @route("GET", _MODEL + r"/demand")
    def get_demand(self, req: SimRequest, model_id: str) -> SimResponse:
        """[D] date.gt/gte/lt/lte filters, limit/offset; `Accept` picks json, csv or ndjson."""
        m = self._model(model_id)
        bounds = date_bounds(req)
        limit = int_query(req, "limit", DEFAULT_LIMIT, 0)
        offset = int_query(req, "offset", 0, 0)
        rows = [{"date": d, "demand": v} for d, v in sorted(m["demand"].items()) if in_bounds(d, bounds)]
        page = self._page(req, f"/v1/forecasts/models/{model_id}/demand", rows, limit, offset)
        accept = (req.header("accept") or "").lower()
        if "text/csv" in accept:
            text = "date,demand\n" + "".join(f"{r['date']},{r['demand']}\n" for r in page["results"])
            return SimResponse(200, text, content_type="text/csv")
        if "application/x-ndjson" in accept:
            text = "".join(json.dumps(r) + "\n" for r in page["results"])
            return SimResponse(200, text, content_type="application/x-ndjson")
        return SimResponse(200, page)

    @route("POST", _MODEL + r"/train")
    def train(self, req: SimRequest, model_id: str) -> SimResponse:
        """[D] 204 and an asynchronous run; 400 while preparing ([I] training, forecasting too);
        allowed from ready, created with demand, and [I] stale and failed."""
        m = self._model(model_id)
        status = self.readiness_status(m)
        if status in BUSY_STATUSES:
            raise state_conflict(status, "triggering training")
        if not m["demand"]:
            raise bad_request(NO_DEMAND_MESSAGE)
        self._start(m, via="api")
        self.save()
        return SimResponse(204)

    def _start(self, m: dict[str, Any], *, via: str) -> dict[str, Any]:
        record = self.new_training(
            training_id=new_model_id(),
            via=via,
            forecast_window=m["forecast_window"],
            training_data=self._training_data(m),
        )
        m["trainings"].append(record)
        m["stale"] = False
        return record

    @route("GET", _MODEL + r"/forecast")
    def get_forecast(self, req: SimRequest, model_id: str) -> SimResponse:
        """[D] the forecast of the last successful training, `forecast_window` days after its data."""
        m = self._model(model_id)
        success = self._last_success(m)
        if success is None:
            raise bad_request("Model has no forecast yet; train it first")  # [I] wording
        bounds = date_bounds(req)  # [D] the forecast takes the date filters too
        include = set(list_query(req, "include") or [])
        unknown = sorted(include - {"phq_explainability", "phq_features"})
        if unknown:
            raise query_invalid("include", "Input should be 'phq_explainability' or 'phq_features'", "enum")
        record = success[0]
        data = record.get("training_data") or {}
        end = date.fromisoformat((data.get("date_range") or {}).get("end") or iso(success[1].started_at)[:10])
        days = int(str(record.get("forecast_window", "7d")).rstrip("d"))
        seed = str(record["training_id"])
        rows = []
        for i in range(1, days + 1):
            day = end + timedelta(days=i)
            if not in_bounds(day.isoformat(), bounds):
                continue
            row: dict[str, Any] = {
                "date": day.isoformat(),
                "forecast": round(100 + 80 * unit(seed, day.isoformat()), 2),
            }
            if "phq_explainability" in include:
                row["phq_explainability"] = {"events": []}
            if "phq_features" in include:
                row["phq_features"] = [{"name": "phq_attendance_sports", "value": round(1000 * unit(seed, "f"), 1)}]
            rows.append(row)
        limit = int_query(req, "limit", DEFAULT_LIMIT, 0)
        offset = int_query(req, "offset", 0, 0)
        return SimResponse(200, self._page(req, f"/v1/forecasts/models/{model_id}/forecast", rows, limit, offset))

    # -- helpers for tests --------------------------------------------------------------------

    def add_location(self, name: str = "Test location", industry: str | None = "restaurants") -> str:
        """Create a saved location; returns its id."""
        with self.transaction():
            location_id = new_model_id()
            self._add_location(location_id, name, industry, (-122.33, 47.61))
            return location_id

    def add_model(
        self,
        model_id: str | None = None,
        *,
        name: str = "Test model",
        forecast_window: str = "7d",
        industry: str | None = "restaurants",
        saved_location_id: str = SEED_LOCATION_ID,
        external_id: str | None = None,
        demand_end: date | str | None = None,
        demand_days: int = 60,
    ) -> str:
        """Create a never-trained model (with `demand_days` of demand ending `demand_end`,
        default yesterday; `demand_days=0` for none); returns its id."""
        with self.transaction():
            if saved_location_id not in self.world.setdefault("saved_locations", {}):
                self._add_location(saved_location_id, "Test location", industry, (-122.33, 47.61))
            mid = model_id or new_model_id()
            end = (
                date.fromisoformat(demand_end)
                if isinstance(demand_end, str)
                else demand_end or datetime.fromtimestamp(self.now(), tz=UTC).date() - timedelta(days=1)
            )
            self._add_model(
                mid,
                name=name,
                forecast_window=forecast_window,
                industry=industry,
                saved_location_id=saved_location_id,
                external_id=external_id,
                demand_end=end,
                demand_days=demand_days,
            )
            return mid

    def upload_demand(self, model_id: str, end_date: date | str, start_date: date | str | None = None) -> None:
        """New data arrives: daily demand up to `end_date` (from the day after the current end,
        or `start_date`), as an upload by the customer would add it."""
        end = date.fromisoformat(end_date) if isinstance(end_date, str) else end_date
        with self.transaction():
            m = self._model(model_id)
            if start_date is not None:
                start = date.fromisoformat(start_date) if isinstance(start_date, str) else start_date
            elif m["demand"]:
                start = date.fromisoformat(max(m["demand"])) + timedelta(days=1)
            else:
                start = end - timedelta(days=59)
            days = (end - start).days + 1
            if days > 0:
                self._put_demand(model_id, self._synthetic_demand(model_id, end, days))

    def set_max_depth(self, depth: int) -> None:
        """The plan's maximum list depth (offset + limit), past which the list answers 400 [D]."""
        with self.transaction():
            self.world.setdefault("_sandbox", {})["max_depth"] = depth

    def make_stale(self, model_id: str) -> None:
        """Flag the model stale, as PredictHQ does after a training-relevant change."""
        with self.transaction():
            m = self._model(model_id)
            status = self.readiness_status(m)
            if status in BUSY_STATUSES:
                raise ValueError(f"model {model_id} is {status}: PredictHQ would refuse the change")
            m["stale"] = True

    def mark_trained(self, model_id: str, *, ended_at: float | None = None, duration: float = 300.0) -> str:
        """A training made by hand (outside reconciler) that succeeded; returns its training id."""
        with self.transaction():
            m = self._model(model_id)
            end = self.now() if ended_at is None else ended_at
            record = self.finished_training(
                end,
                duration,
                training_id=new_model_id(),
                via="manual",
                forecast_window=m["forecast_window"],
                training_data=self._training_data(m),
            )
            m["trainings"].append(record)
            m["stale"] = False
            return str(record["training_id"])

    def start_training(self, model_id: str) -> None:
        """Someone starts a training by hand (the API's guards apply)."""
        with self.transaction():
            self.train(SimRequest("POST", f"/v1/forecasts/models/{model_id}/train", {}, {}, b""), model_id)

    def finish_training(self, model_id: str) -> str:
        """Time passes: the running training ends now, as it was going to (ready or failed).

        Returns the readiness status afterwards; ValueError when nothing is running.
        """
        with self.transaction():
            m = self._model(model_id)
            latest = self._latest(m)
            if latest is None or not self.training_state(latest).active:
                raise ValueError(f"model {model_id} has no training in progress")
            latest["duration"] = max(self.now() - float(latest["started_at"]), 0.0)
            return self.readiness_status(m)

    def readiness(self, model_id: str) -> str:
        """`readiness.status` as the API shows it now."""
        with self.transaction(save=False):
            return self.readiness_status(self._model(model_id))

    def model(self, model_id: str) -> dict[str, Any]:
        """The `model` object `GET /v1/forecasts/models/{id}` would return now."""
        with self.transaction(save=False):
            return self.model_view(self._model(model_id))

    def trainings(self, model_id: str) -> list[dict[str, Any]]:
        """The stored training records of a model (copies)."""
        with self.transaction(save=False):
            return [dict(r) for r in self._model(model_id)["trainings"]]
