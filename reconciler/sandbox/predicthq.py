"""PredictHQ simulator: the Forecasts API and Saved Locations of https://api.predicthq.com
(providers.md section 1).

Faithful to the documented shapes ([D]); what the docs leave open is marked [I] (inferred) so it
is easy to find and change once checked against the live API.

World layout (JSON, persisted by the Sandbox):

    {"saved_locations": {location_id: {"location_id", "name", "industry", "origin_geojson", ...}},
     "models": {model_id: {"model_id", "name", "algo", "forecast_window", "location",
                           "demand_type", "label", "external_id", "generate_baseline",
                           "create_dt", "update_dt", "stale", "demand": {date: value},
                           "trainings": [record, ...]}}}

A training record is `Simulator.new_training(...)` plus its id, how it was started and the
`training_data` it captured when it started; `readiness.status` is derived from the clock on every
request: preparing (the queued part) -> training -> forecasting (the last part of a successful
run) -> ready | failed. `stale` is a flag set by a training-relevant PUT/PATCH and cleared when a
training starts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import secrets
from collections.abc import Set
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urlencode

from reconciler.sandbox.simulator import Simulator, TrainingState
from reconciler.sandbox.wire import SimHTTPError, SimRequest, SimResponse, route

ALGOS: tuple[str, ...] = ("phq-xgboost",)
FORECAST_WINDOWS: tuple[str, ...] = ("1d", "7d", "14d", "28d", "30d", "60d", "90d")
INDUSTRIES: tuple[str, ...] = (
    "accommodation",
    "cpg",
    "tourism",
    "marketing",
    "parking",
    "restaurants",
    "retail",
    "transportation",
    "other",
)
INTERVALS: tuple[str, ...] = ("day",)
READINESS_STATUSES: tuple[str, ...] = ("created", "preparing", "training", "forecasting", "ready", "stale", "failed")
BUSY_STATUSES: frozenset[str] = frozenset({"preparing", "training", "forecasting"})
#: [D] changing one of these makes the model stale, and is blocked while it is busy
TRAINING_FIELDS: tuple[str, ...] = ("location", "demand_type", "forecast_window", "algo", "generate_baseline")

UNAUTHORIZED_BODY: dict[str, Any] = {"error": "Authorization required"}  # [D]
MODEL_NOT_FOUND: dict[str, Any] = {"error": "Model not found"}  # [D]
LOCATION_NOT_FOUND: dict[str, Any] = {"error": "Saved Location not found"}  # [D]
INVALID_DATA = "Request contains invalid data"  # [D]
NO_DEMAND_MESSAGE = "Model has no demand data; upload demand before training"  # [I] undocumented wording

DEFAULT_LIMIT = 10  # [D]
MAX_DEPTH = 1000  # [I] "the maximum depth is set per plan"
#: [I] share of a successful run spent forecasting (after training); failing runs never reach it
FORECASTING_FRACTION = 0.2

#: Seeded entities the quickstart manifest (specs/predicthq.yaml) uses. The ids are the docs'
#: own examples [D].
SEED_LOCATION_ID = "-ErnOilZkeP6P6CPdcXvTg"
SEED_MODEL_ID = "Oa1D2XvT-IXfFQ_osoTZjQ"
SEED_DEMAND_DAYS = 548  # [D guide] at least 18 months of history is recommended

_ID = r"(?P<model_id>[^/]+)"
_MODEL = r"/v1/forecasts/models/" + _ID


def _bad_request(message: str) -> SimHTTPError:
    return SimHTTPError(400, {"error": message})


def _state_conflict(status: str, what: str) -> SimHTTPError:
    # [D] e.g. "Current model readiness state is 'preparing', which doesn't allow triggering training"
    return _bad_request(f"Current model readiness state is '{status}', which doesn't allow {what}")


def _one_of(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return "Input should be " + (", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0])


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def _unit(seed: str, salt: str) -> float:
    """A deterministic number in [0, 1) so repeated reads show the same metrics."""
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def new_model_id() -> str:
    """A 22-character url-safe id like the API's (`Oa1D2XvT-IXfFQ_osoTZjQ`) [D]."""
    return secrets.token_urlsafe(16)


class _Invalid:
    """Collects HTTPValidationError details: `{"error": ..., "details": [{field, msg, type}]}` [D]."""

    def __init__(self) -> None:
        self.details: list[dict[str, str]] = []

    def add(self, field: str, msg: str, type_: str) -> None:
        self.details.append({"field": field, "msg": msg, "type": type_})

    def check(self) -> None:
        if self.details:
            raise SimHTTPError(400, {"error": INVALID_DATA, "details": self.details})


def _query_invalid(field: str, msg: str, type_: str) -> SimHTTPError:
    # [D] QueryValidationError: "error" holds the list
    return SimHTTPError(400, {"error": [{"field": field, "msg": msg, "type": type_}]})


def _check_str(errs: _Invalid, field: str, value: Any, *, min_length: int = 0) -> None:
    if not isinstance(value, str):
        errs.add(field, "Input should be a valid string", "string_type")
    elif len(value) < min_length:
        errs.add(field, f"String should have at least {min_length} character", "string_too_short")


def _check_enum(errs: _Invalid, field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        errs.add(field, _one_of(allowed), "literal_error" if len(allowed) == 1 else "enum")


def _check_object(errs: _Invalid, field: str, value: Any, allowed: Set[str], required: Set[str]) -> bool:
    if not isinstance(value, dict):
        errs.add(field, "Input should be a valid dictionary or object to extract fields from", "model_attributes_type")
        return False
    for key in sorted(set(value) - allowed):
        errs.add(f"{field}.{key}", "Extra inputs are not permitted", "extra_forbidden")
    for key in sorted(required - set(value)):
        errs.add(f"{field}.{key}", "Field required", "missing")
    return True


def validate_model_body(body: Any, *, allowed: Set[str], required: Set[str]) -> dict[str, Any]:
    """Validate a Create/Replace/UpdateModelRequest (additionalProperties=false) [D]."""
    errs = _Invalid()
    if not _check_object(errs, "body", body, allowed, required):
        errs.check()
    assert isinstance(body, dict)
    nullable = {"demand_type", "label", "external_id"}  # [I] nullable as on the model object
    for key, value in body.items():
        field = f"body.{key}"
        if key not in allowed or (value is None and key in nullable):
            continue
        if key == "name":
            _check_str(errs, field, value, min_length=1)
        elif key == "location":
            location_ok = _check_object(errs, field, value, {"saved_location_id"}, {"saved_location_id"})
            if location_ok and "saved_location_id" in value:
                _check_str(errs, f"{field}.saved_location_id", value["saved_location_id"], min_length=1)
        elif key == "algo":
            _check_enum(errs, field, value, ALGOS)
        elif key == "forecast_window":
            _check_enum(errs, field, value, FORECAST_WINDOWS)
        elif key == "demand_type":
            # [I] industry is required inside demand_type; interval defaults to day (guide example)
            if _check_object(errs, field, value, {"industry", "interval"}, {"industry"}):
                if "industry" in value:
                    _check_enum(errs, f"{field}.industry", value["industry"], INDUSTRIES)
                if "interval" in value:
                    _check_enum(errs, f"{field}.interval", value["interval"], INTERVALS)
        elif key == "label":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                errs.add(field, "Input should be a valid list of strings", "list_type")
            elif not value:
                errs.add(field, "List should have at least 1 item after validation, not 0", "too_short")
        elif key == "external_id":
            _check_str(errs, field, value)
        elif key == "generate_baseline" and not isinstance(value, bool):
            errs.add(field, "Input should be a valid boolean", "bool_type")
    errs.check()
    out = dict(body)
    if isinstance(out.get("demand_type"), dict):
        out["demand_type"] = {"interval": "day", **out["demand_type"]}
    return out


def _parse_demand_rows(req: SimRequest) -> list[tuple[int, Any, Any]]:
    """(index, date, demand) rows from a json, csv or ndjson upload [D]."""
    ctype = req.content_type
    if ctype == "application/json":
        body = req.json()
        errs = _Invalid()
        if _check_object(errs, "body", body, {"demand"}, {"demand"}):
            rows = body.get("demand")
            if "demand" in body and (not isinstance(rows, list) or not rows):
                errs.add("body.demand", "List should have at least 1 item after validation, not 0", "too_short")
        errs.check()
        out = []
        for i, row in enumerate(body["demand"]):
            if not isinstance(row, dict):
                raise SimHTTPError(
                    400,
                    {
                        "error": INVALID_DATA,
                        "details": [
                            {
                                "field": f"body.demand[{i}]",
                                "msg": "Input should be a valid dictionary or object to extract fields from",
                                "type": "model_attributes_type",
                            }
                        ],
                    },
                )
            out.append((i, row.get("date"), row.get("demand")))
        return out
    text = req.body.decode("utf-8", "replace")
    if ctype == "text/csv":
        reader = csv.DictReader(io.StringIO(text))
        if [f.strip() for f in reader.fieldnames or []] != ["date", "demand"]:
            raise SimHTTPError(
                400,
                {
                    "error": INVALID_DATA,
                    "details": [{"field": "body", "msg": "CSV header must be 'date,demand'", "type": "value_error"}],
                },
            )
        return [(i, row.get("date"), _number_or_text(row.get("demand"))) for i, row in enumerate(reader)]
    if ctype == "application/x-ndjson":
        out = []
        for i, line in enumerate(x for x in text.splitlines() if x.strip()):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                raise SimHTTPError(
                    400,
                    {
                        "error": INVALID_DATA,
                        "details": [{"field": f"body.demand[{i}]", "msg": "Invalid JSON line", "type": "json_invalid"}],
                    },
                )
            out.append((i, row.get("date"), row.get("demand")))
        return out
    # [I] the spec lists exactly these three media types
    raise _bad_request(f"Unsupported Content-Type {ctype!r}: use application/json, text/csv or application/x-ndjson")


def _number_or_text(value: str | None) -> Any:
    if value is None or not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        return value


def validate_demand(rows: list[tuple[int, Any, Any]]) -> dict[str, float]:
    """Daily rows with no duplicate dates, no missing values and numeric demand >= 0 [D guide]."""
    errs = _Invalid()
    if not rows:
        errs.add("body.demand", "List should have at least 1 item after validation, not 0", "too_short")
    parsed: dict[str, float] = {}
    for i, raw_date, raw_demand in rows:
        field = f"body.demand[{i}]"
        day = None
        if isinstance(raw_date, str):
            try:
                day = date.fromisoformat(raw_date) if len(raw_date) == 10 else None
            except ValueError:
                day = None
        if raw_date is None:
            errs.add(f"{field}.date", "Field required", "missing")
        elif day is None:
            errs.add(f"{field}.date", "Input should be a valid date in the format YYYY-MM-DD", "date_parsing")
        if raw_demand is None:
            errs.add(f"{field}.demand", "Field required", "missing")
        elif isinstance(raw_demand, bool) or not isinstance(raw_demand, int | float) or not math.isfinite(raw_demand):
            errs.add(f"{field}.demand", "Input should be a valid number", "float_parsing")
        elif raw_demand < 0:
            errs.add(f"{field}.demand", "Input should be greater than or equal to 0", "greater_than_equal")
        if day is not None:
            key = day.isoformat()
            if key in parsed:
                errs.add(f"{field}.date", f"Duplicate date {key}", "value_error")
            elif isinstance(raw_demand, int | float) and not isinstance(raw_demand, bool):
                parsed[key] = float(raw_demand)
    errs.check()
    return parsed


def _int_query(req: SimRequest, name: str, default: int, minimum: int) -> int:
    raw = req.q(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _query_invalid(
            name, "Input should be a valid integer, unable to parse string as an integer", "int_parsing"
        ) from None
    if value < minimum:
        raise _query_invalid(name, f"Input should be greater than or equal to {minimum}", "greater_than_equal")
    return value


#: [D] CreateModelRequest / UpdateModelRequest fields (additionalProperties=false)
CREATE_UPDATE_FIELDS = frozenset(
    {"name", "location", "algo", "forecast_window", "demand_type", "label", "external_id", "generate_baseline"}
)


class PredictHQSimulator(Simulator):
    """Simulated PredictHQ Forecasts API (models, demand, trainings, forecasts, saved locations)."""

    type: ClassVar[str] = "predicthq"

    # -- world --------------------------------------------------------------------------------

    def seed(self) -> None:
        """A saved location and one never-trained restaurant model with 18 months of demand."""
        self.world.setdefault("saved_locations", {})
        self.world.setdefault("models", {})
        self._add_location(SEED_LOCATION_ID, "Downtown Seattle", "restaurants", (-122.3321, 47.6062))
        end = datetime.fromtimestamp(self.now(), tz=UTC).date() - timedelta(days=1)
        self._add_model(
            SEED_MODEL_ID,
            name="Downtown restaurant covers",
            forecast_window="7d",
            industry="restaurants",
            saved_location_id=SEED_LOCATION_ID,
            external_id="downtown-covers",
            label=["quickstart"],
            demand_end=end,
            demand_days=SEED_DEMAND_DAYS,
        )

    def _add_location(self, location_id: str, name: str, industry: str | None, lon_lat: tuple[float, float]) -> None:
        self.world.setdefault("saved_locations", {})[location_id] = {
            "location_id": location_id,
            "name": name,
            "industry": industry,
            "origin_geojson": {"type": "Feature", "geometry": {"type": "Point", "coordinates": list(lon_lat)}},
            "create_dt": _iso(self.now()),
        }

    def _add_model(
        self,
        model_id: str,
        *,
        name: str,
        forecast_window: str,
        industry: str | None,
        saved_location_id: str,
        external_id: str | None = None,
        label: list[str] | None = None,
        demand_end: date | None = None,
        demand_days: int = 0,
    ) -> None:
        now = self.now()
        self.world.setdefault("models", {})[model_id] = {
            "model_id": model_id,
            "name": name,
            "algo": ALGOS[0],
            "forecast_window": forecast_window,
            "location": {"saved_location_id": saved_location_id},
            "demand_type": {"industry": industry, "interval": "day"} if industry else None,
            "label": label,
            "external_id": external_id,
            "generate_baseline": False,
            "create_dt": now,
            "update_dt": now,
            "stale": False,
            "demand": {},
            "trainings": [],
        }
        if demand_end is not None and demand_days > 0:
            self._put_demand(model_id, self._synthetic_demand(model_id, demand_end, demand_days))

    def _synthetic_demand(self, seed: str, end: date, days: int) -> dict[str, float]:
        """A weekly pattern with a slow trend: plausible restaurant covers."""
        out = {}
        for back in range(days - 1, -1, -1):
            day = end - timedelta(days=back)
            weekly = 1.0 + 0.35 * math.sin(2 * math.pi * (day.weekday() + 2) / 7)
            noise = 0.9 + 0.2 * _unit(seed, day.isoformat())
            out[day.isoformat()] = round(120 * weekly * noise + 0.02 * (days - back), 1)
        return out

    def _put_demand(self, model_id: str, rows: dict[str, float]) -> None:
        # [I] as in PredictHQ's Beam upload docs: re-uploading a date replaces its value
        self._model(model_id)["demand"].update(rows)

    def _model(self, model_id: str) -> dict[str, Any]:
        found = self.world.get("models", {}).get(model_id)
        if found is None:
            raise SimHTTPError(404, MODEL_NOT_FOUND)
        assert isinstance(found, dict)
        return found

    # -- derived views --------------------------------------------------------------------------

    def _latest(self, m: dict[str, Any]) -> dict[str, Any] | None:
        trainings: list[dict[str, Any]] = m["trainings"]
        return trainings[-1] if trainings else None

    def _busy_word(self, record: dict[str, Any], state: TrainingState) -> str:
        if state.phase == "queued":
            return "preparing"  # [D] "locked while data is gathered"
        forecasting_at = state.ends_at - FORECASTING_FRACTION * float(record["duration"])
        if record.get("outcome") == "succeeded" and self.now() >= forecasting_at:
            return "forecasting"
        return "training"

    def readiness_status(self, m: dict[str, Any]) -> str:
        """`readiness.status` of a stored model, now."""
        latest = self._latest(m)
        state = self.training_state(latest) if latest is not None else None
        if latest is not None and state is not None and state.active:
            return self._busy_word(latest, state)
        if m.get("stale"):
            return "stale"
        if state is not None:
            return "ready" if state.phase == "succeeded" else "failed"
        return "created"

    def _last_success(self, m: dict[str, Any]) -> tuple[dict[str, Any], TrainingState] | None:
        best: tuple[dict[str, Any], TrainingState] | None = None
        for record in m["trainings"]:
            state = self.training_state(record)
            if state.phase == "succeeded" and (best is None or state.ends_at >= best[1].ends_at):
                best = (record, state)
        return best

    def _demand_range(self, m: dict[str, Any]) -> dict[str, str] | None:
        days = sorted(m["demand"])
        return {"start": days[0], "end": days[-1]} if days else None

    def _training_data(self, m: dict[str, Any]) -> dict[str, Any] | None:
        rng = self._demand_range(m)
        if rng is None:
            return None
        start, end = date.fromisoformat(rng["start"]), date.fromisoformat(rng["end"])
        total = (end - start).days + 1
        missing = [
            (start + timedelta(days=i)).isoformat()
            for i in range(total)
            if (start + timedelta(days=i)).isoformat() not in m["demand"]
        ]
        return {
            "date_range": rng,
            "missing_pct": round(100.0 * len(missing) / total, 2),
            "missing_dates": missing or None,
        }

    def _metrics(self, m: dict[str, Any]) -> dict[str, Any] | None:
        demand = self._demand_range(m)
        latest = self._latest(m)
        if demand is None and latest is None:
            return None  # [I] nullable: nothing uploaded, nothing trained
        success = self._last_success(m)
        accuracy = None
        if success is not None:
            seed = str(success[0]["training_id"])
            mape = 8 + 10 * _unit(seed, "mape")
            accuracy = {
                "mape": round(mape, 2),
                "mae": round(4 + 9 * _unit(seed, "mae"), 2),
                "rmse": round(6 + 12 * _unit(seed, "rmse"), 2),
                "wape": round(mape * 0.9, 2),
            }
        return {
            "accuracy": accuracy,
            "demand_data": {"date_range": demand} if demand is not None else None,
            # captured when the latest training started
            "training_data": latest.get("training_data") if latest is not None else None,
        }

    def model_view(self, m: dict[str, Any]) -> dict[str, Any]:
        """A stored model as `PublicForecastModel` [D]."""
        status = self.readiness_status(m)
        readiness: dict[str, Any] = {"status": status}
        if status == "failed":
            latest = self._latest(m)
            readiness["error_code"] = "training_failed"  # [I] codes are not documented
            readiness["error_message"] = (
                self.training_state(latest).message if latest is not None else None
            ) or "Training failed."
        success = self._last_success(m)
        return {
            "model_id": m["model_id"],
            "name": m["name"],
            "algo": m["algo"],
            "forecast_window": m["forecast_window"],
            "location": dict(m["location"]),
            "demand_type": dict(m["demand_type"]) if m.get("demand_type") else None,
            "external_id": m.get("external_id"),
            "label": list(m["label"]) if m.get("label") else None,
            "readiness": readiness,
            "train_dt": _iso(success[1].ends_at) if success is not None else None,
            "create_dt": _iso(float(m["create_dt"])),
            "update_dt": _iso(float(m["update_dt"])),
            "metrics": self._metrics(m),
        }

    def _envelope(self, **fields: Any) -> dict[str, Any]:
        return {**fields, "errors": [], "warnings": []}

    def _page(self, req: SimRequest, path: str, items: list[Any], limit: int, offset: int) -> dict[str, Any]:
        if offset + limit > MAX_DEPTH:
            raise SimHTTPError(
                400,
                {
                    "error": INVALID_DATA,
                    "details": [
                        {
                            "field": "query.limit/offset",
                            "msg": "Tried to fetch more results than the maximum allowed. Please reduce limit/offset.",
                            "type": "value_error",
                        }
                    ],
                },
            )

        def link(new_offset: int) -> str:
            params = {k: v[0] for k, v in req.query.items() if k not in ("limit", "offset") and v}
            params.update(limit=str(limit), offset=str(new_offset))
            return f"{self.base_url}{path}?{urlencode(params)}"

        return {
            "count": len(items),
            "next": link(offset + limit) if offset + limit < len(items) else None,
            "previous": link(max(0, offset - limit)) if offset > 0 else None,
            "results": items[offset : offset + limit],
        }

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
        """Known path, wrong method ([I] FastAPI's 405 in the ErrorResponse shape)."""
        return SimResponse(405, {"error": "Method Not Allowed"})

    # -- routes: saved locations --------------------------------------------------------------

    @route("POST", r"/v1/saved-locations")
    def create_location(self, req: SimRequest) -> SimResponse:
        """[D] 201 `{"location_id"}`; one of origin_geojson, geojson or place_ids is required [I]."""
        body = req.json()
        errs = _Invalid()
        allowed = {"name", "origin_geojson", "geojson", "place_ids", "industry", "description", "labels"}
        if _check_object(errs, "body", body, allowed, {"name"}):
            if "name" in body:
                _check_str(errs, "body.name", body["name"], min_length=1)
            if not any(body.get(k) for k in ("origin_geojson", "geojson", "place_ids")):
                errs.add("body", "One of origin_geojson, geojson or place_ids is required", "value_error")
            if body.get("industry") is not None:
                _check_enum(errs, "body.industry", body["industry"], INDUSTRIES)
        errs.check()
        location_id = new_model_id()
        self.world.setdefault("saved_locations", {})[location_id] = {
            "location_id": location_id,
            **{k: v for k, v in body.items() if k in allowed},
            "create_dt": _iso(self.now()),
        }
        self.save()
        return SimResponse(201, {"location_id": location_id})

    @route("GET", r"/v1/saved-locations")
    def list_locations(self, req: SimRequest) -> SimResponse:
        """[D] the saved locations, paginated like every list."""
        limit = _int_query(req, "limit", DEFAULT_LIMIT, 1)
        offset = _int_query(req, "offset", 0, 0)
        items = sorted(self.world.get("saved_locations", {}).values(), key=lambda x: (x["create_dt"], x["location_id"]))
        return SimResponse(200, self._page(req, "/v1/saved-locations", items, limit, offset))

    @route("GET", r"/v1/saved-locations/(?P<location_id>[^/]+)")
    def get_location(self, req: SimRequest, location_id: str) -> SimResponse:
        """[D] one saved location; 404 `{"error": "Saved Location not found"}` [I]."""
        found = self.world.get("saved_locations", {}).get(location_id)
        if found is None:
            raise SimHTTPError(404, LOCATION_NOT_FOUND)
        return SimResponse(200, found)

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
            industry=demand_type["industry"] if demand_type else None,
            saved_location_id=location_id,
            external_id=body.get("external_id"),
            label=body.get("label"),
        )
        self.world["models"][model_id]["generate_baseline"] = bool(body.get("generate_baseline", False))
        self.save()
        return SimResponse(201, self._envelope(model_id=model_id))

    @route("GET", r"/v1/forecasts/models")
    def list_models(self, req: SimRequest) -> SimResponse:
        """[D] search: q, location.saved_location_id, readiness_status (was `status`), limit, offset."""
        limit = _int_query(req, "limit", DEFAULT_LIMIT, 1)
        offset = _int_query(req, "offset", 0, 0)
        # [D spec history] the filter was named `status` before 2026-05-14: accept both
        raw_status = req.q("readiness_status", req.q("status"))
        wanted: set[str] | None = None
        if raw_status is not None:
            wanted = {s.strip() for s in raw_status.split(",") if s.strip()}
            bad = sorted(wanted - set(READINESS_STATUSES))
            if bad or not wanted:
                field = "readiness_status" if req.q("readiness_status") is not None else "status"
                raise _query_invalid(field, _one_of(READINESS_STATUSES), "enum")
        raw_locations = req.q("location.saved_location_id")
        locations = {s.strip() for s in raw_locations.split(",") if s.strip()} if raw_locations else None
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
            items.append(self.model_view(m))
        return SimResponse(200, self._page(req, "/v1/forecasts/models", items, limit, offset))

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
            raise _state_conflict(status, "updating " + ", ".join(changed))  # [I] wording
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
            allowed={"name", "location", "algo", "forecast_window", "demand_type", "label", "external_id"},
            required={"name", "location"},
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
        )
        self._update(model_id, body)
        return SimResponse(204)

    @route("DELETE", _MODEL)
    def delete_model(self, req: SimRequest, model_id: str) -> SimResponse:
        """[D] 204, irreversible; blocked while preparing, training or forecasting."""
        status = self.readiness_status(self._model(model_id))
        if status in BUSY_STATUSES:
            raise _state_conflict(status, "deletion")
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
            raise _state_conflict(status, "demand data upload")
        rows = validate_demand(_parse_demand_rows(req))
        self._put_demand(model_id, rows)
        self.save()
        return SimResponse(201)

    @route("GET", _MODEL + r"/demand")
    def get_demand(self, req: SimRequest, model_id: str) -> SimResponse:
        """[D] date.gt/gte/lt/lte filters, limit/offset; `Accept` picks json, csv or ndjson."""
        m = self._model(model_id)
        bounds = {}
        for op in ("gt", "gte", "lt", "lte"):
            raw = req.q(f"date.{op}")
            if raw is not None:
                try:
                    bounds[op] = date.fromisoformat(raw).isoformat()
                except ValueError:
                    raise _query_invalid(
                        f"date.{op}", "Input should be a valid date in the format YYYY-MM-DD", "date_parsing"
                    ) from None
        limit = _int_query(req, "limit", DEFAULT_LIMIT, 1)
        offset = _int_query(req, "offset", 0, 0)
        rows = [
            {"date": d, "demand": v}
            for d, v in sorted(m["demand"].items())
            if ("gt" not in bounds or d > bounds["gt"])
            and ("gte" not in bounds or d >= bounds["gte"])
            and ("lt" not in bounds or d < bounds["lt"])
            and ("lte" not in bounds or d <= bounds["lte"])
        ]
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
            raise _state_conflict(status, "triggering training")
        if not m["demand"]:
            raise _bad_request(NO_DEMAND_MESSAGE)
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
            raise _bad_request("Model has no forecast yet; train it first")  # [I] wording
        include = {s.strip() for s in (req.q("include") or "").split(",") if s.strip()}
        unknown = sorted(include - {"phq_explainability", "phq_features"})
        if unknown:
            raise _query_invalid("include", "Input should be 'phq_explainability' or 'phq_features'", "enum")
        record = success[0]
        data = record.get("training_data") or {}
        end = date.fromisoformat((data.get("date_range") or {}).get("end") or _iso(success[1].started_at)[:10])
        days = int(str(record.get("forecast_window", "7d")).rstrip("d"))
        seed = str(record["training_id"])
        rows = []
        for i in range(1, days + 1):
            day = end + timedelta(days=i)
            row: dict[str, Any] = {
                "date": day.isoformat(),
                "forecast": round(100 + 80 * _unit(seed, day.isoformat()), 2),
            }
            if "phq_explainability" in include:
                row["phq_explainability"] = {"events": []}
            if "phq_features" in include:
                row["phq_features"] = [{"name": "phq_attendance_sports", "value": round(1000 * _unit(seed, "f"), 1)}]
            rows.append(row)
        limit = _int_query(req, "limit", DEFAULT_LIMIT, 1)
        offset = _int_query(req, "offset", 0, 0)
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
