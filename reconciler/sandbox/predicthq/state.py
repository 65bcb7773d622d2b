"""PredictHQ world and the state derived from it: seeding, lookups, the readiness state machine
and the API's views of a model (providers.md section 1).

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

import hashlib
import math
import secrets
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from reconciler.sandbox.predicthq.validation import (
    ALGOS,
    INVALID_DATA,
    MAX_DEPTH,
    MODEL_NOT_FOUND,
)
from reconciler.sandbox.simulator import Simulator, TrainingState
from reconciler.sandbox.wire import SimHTTPError, SimRequest

#: [D] changing one of these makes the model stale, and is blocked while it is busy
TRAINING_FIELDS: tuple[str, ...] = ("location", "demand_type", "forecast_window", "algo", "generate_baseline")
BUSY_STATUSES: frozenset[str] = frozenset({"preparing", "training", "forecasting"})

#: [I] share of a successful run spent forecasting (after training); failing runs never reach it
FORECASTING_FRACTION = 0.2

#: Seeded entities the quickstart manifest (specs/predicthq.yaml) uses. The ids are the docs'
#: own examples [D].
SEED_LOCATION_ID = "-ErnOilZkeP6P6CPdcXvTg"
SEED_MODEL_ID = "Oa1D2XvT-IXfFQ_osoTZjQ"
SEED_DEMAND_DAYS = 548  # [D guide] at least 18 months of history is recommended


def iso(ts: float) -> str:
    """Epoch seconds as the API prints times (ISO 8601, UTC, Z)."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def unit(seed: str, salt: str) -> float:
    """A deterministic number in [0, 1) so repeated reads show the same metrics."""
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def new_model_id() -> str:
    """A 22-character url-safe id like the API's (`Oa1D2XvT-IXfFQ_osoTZjQ`) [D]."""
    return secrets.token_urlsafe(16)


class PredictHQState(Simulator):
    """The PredictHQ world and what the API shows of it; `PredictHQSimulator` adds the routes."""

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
            "geojson": {
                "type": "Feature",
                "properties": {"radius": 1.2, "radius_unit": "km"},
                "geometry": {"type": "Point", "coordinates": list(lon_lat)},
            },
            "create_dt": iso(self.now()),
            "update_dt": iso(self.now()),
        }

    def location_view(self, stored: dict[str, Any]) -> dict[str, Any]:
        """A stored saved location as the API's `SavedLocation` [D]: `geojson` (the Forecasts
        guide's `origin_geojson` becomes it [I]), `status`, `create_dt`/`update_dt`."""
        view = {
            k: stored.get(k)
            for k in ("location_id", "name", "description", "labels", "location_code", "formatted_address")
        }
        view["geojson"] = stored.get("geojson") or stored.get("origin_geojson")
        view["place_ids"] = stored.get("place_ids")
        view["industry"] = stored.get("industry")
        view["create_dt"] = stored["create_dt"]
        view["update_dt"] = stored.get("update_dt", stored["create_dt"])
        view["status"] = "active"  # [D] active | pending | deleted; enrichment is instant here [I]
        view["subscription_valid_types"] = []
        view["summary_insights"] = []
        view["places"] = []
        return view

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
            noise = 0.9 + 0.2 * unit(seed, day.isoformat())
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
            mape = 8 + 10 * unit(seed, "mape")
            accuracy = {
                "mape": round(mape, 2),
                "mae": round(4 + 9 * unit(seed, "mae"), 2),
                "rmse": round(6 + 12 * unit(seed, "rmse"), 2),
                "wape": round(mape * 0.9, 2),
            }
        return {
            "accuracy": accuracy,
            "demand_data": {"date_range": demand} if demand is not None else None,
            # [D] null until trained: the data of the last successful training (captured at its start)
            "training_data": success[0].get("training_data") if success is not None else None,
        }

    @property
    def max_depth(self) -> int:
        """How deep the list pages go (offset + limit): "set per plan" [D], MAX_DEPTH unless set."""
        return int(self.world.get("_sandbox", {}).get("max_depth", MAX_DEPTH))

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
            "train_dt": iso(success[1].ends_at) if success is not None else None,
            "create_dt": iso(float(m["create_dt"])),
            "update_dt": iso(float(m["update_dt"])),
            "metrics": self._metrics(m),
        }

    def _envelope(self, **fields: Any) -> dict[str, Any]:
        return {**fields, "errors": [], "warnings": []}

    def _page(self, req: SimRequest, path: str, items: list[Any], limit: int, offset: int) -> dict[str, Any]:
        if offset + limit > self.max_depth:
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
            # limit=0 [D] has no next page: a link to the same offset would never end
            "next": link(offset + limit) if limit > 0 and offset + limit < len(items) else None,
            "previous": link(max(0, offset - limit)) if offset > 0 else None,
            "results": items[offset : offset + limit],
        }
