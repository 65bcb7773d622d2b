"""Lucid simulator: the Recommendation API's data batches and trainings (providers.md §4).

Faithful to the documented shapes where they are known ([D]); the rest is marked [I] (inferred)
or [?] (not documented) so it is easy to find and change once checked against a live server.
The served base path is empty: clients are configured with the host and add `/v1` themselves.

World layout (JSON, persisted by the Sandbox):

    {"batches": {batch_id: {"batch_id", "timestamp", "tags", "entity_count",
                            "interaction_count", "created"}},
     "models": {model_id: {"trainings": [record, ...]}},
     "callbacks": [{"url", "model_id", "status", "code" | "error", "at"}, ...]}

A training record is `Simulator.new_training(...)` plus model_id, the training options, the
`data_batch_ids` matched at train time and the callback state; its status derives from the clock.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from reconciler.sandbox.lucid.validation import (
    UNAUTHORIZED_BODY,
    count_rows,
    form_tags,
    not_found_error,
    train_options,
    unprocessable,
)
from reconciler.sandbox.simulator import Simulator
from reconciler.sandbox.wire import SimHTTPError, SimRequest, SimResponse, route

log = logging.getLogger("reconciler.sandbox.lucid")

#: Tags of the batches `seed()` creates; specs/lucid.yaml trains on the "shop" ones.
SEED_BATCHES: tuple[tuple[tuple[str, ...], int, int], ...] = (
    (("shop", "catalog"), 1200, 0),
    (("shop", "interactions"), 0, 48_000),
    (("blog", "interactions"), 0, 9_500),
)

_V1 = "/v1/recommender"

# Our training phases as Lucid's status words [D]: Lucid has no queued state, so queued shows as
# running; a cancelled training (not reachable through the documented API) shows as error.
_STATUS = {
    "queued": "running",
    "running": "running",
    "succeeded": "completed",
    "failed": "error",
    "cancelled": "error",
}


def _iso(ts: float) -> str:
    """[D] `2022-08-23T21:22:09.547Z`: UTC, milliseconds, Z."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _matches(batch: dict[str, Any], batch_id: str | None, tags: list[str]) -> bool:
    if batch_id is not None and batch["batch_id"] != batch_id:
        return False
    return set(tags) <= set(batch["tags"])  # [D] a batch must match ALL tags


class LucidSimulator(Simulator):
    """Simulated Lucid recommender API (data batches, train, status, completion callbacks)."""

    type: ClassVar[str] = "lucid"
    base_path: ClassVar[str] = ""
    _awaiting: list[dict[str, Any]] | None = None  # see _awaiting_callback
    _awaiting_at = -1

    # -- world --------------------------------------------------------------------------------

    def seed(self) -> None:
        """Three batches: shop catalog (entities), shop interactions, blog interactions; no model."""
        self.world.setdefault("batches", {})
        self.world.setdefault("models", {})
        self.world.setdefault("callbacks", [])
        base = self.now() - 7 * 86400
        for i, (tags, entities, interactions) in enumerate(SEED_BATCHES):
            self._new_batch(list(tags), entities, interactions, created=base + i * 3600)

    def _new_batch(self, tags: list[str], entities: int, interactions: int, *, created: float) -> dict[str, Any]:
        batch_id = str(uuid.uuid4())  # [I] id format
        batch = {
            "batch_id": batch_id,
            "timestamp": _iso(created),
            "tags": sorted(set(tags)),
            "entity_count": entities,
            "interaction_count": interactions,
            "created": created,
        }
        self.world.setdefault("batches", {})[batch_id] = batch
        return batch

    def _batches(self, batch_id: str | None, tags: list[str]) -> list[dict[str, Any]]:
        found = [b for b in self.world.get("batches", {}).values() if _matches(b, batch_id, tags)]
        return sorted(found, key=lambda b: (b["created"], b["batch_id"]))

    @staticmethod
    def _batch_view(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: batch[k] for k in ("batch_id", "timestamp", "tags", "entity_count", "interaction_count")}

    def _latest(self, model_id: str) -> dict[str, Any] | None:
        model = self.world.get("models", {}).get(model_id)
        if not model or not model["trainings"]:
            return None
        latest: dict[str, Any] = model["trainings"][-1]
        return latest

    def _status_view(self, record: dict[str, Any]) -> dict[str, Any]:
        """[D] the status object (`progress` 0-100; [I] message wording)."""
        state = self.training_state(record)
        word = _STATUS[state.phase]
        if word == "error":
            message = state.message or "Training was cancelled"
        elif word == "completed":
            message = "Training completed"
        else:
            message = "Training in progress"
        return {
            "model_id": record["model_id"],
            "start_timestamp": _iso(state.started_at),
            "end_timestamp": None if state.active else _iso(state.ends_at),
            "status": word,
            "message": message,
            "progress": round(state.progress * 100),
            "data_batch_ids": list(record["data_batch_ids"]),
        }

    # -- auth and errors --------------------------------------------------------------------

    def authenticate(self, req: SimRequest) -> None:
        """[D] header `apikey`; [I] 401 for a missing or wrong key."""
        if req.header("apikey") != self.api_key:
            raise SimHTTPError(401, UNAUTHORIZED_BODY)

    def not_found(self, req: SimRequest) -> SimResponse:
        """[I] FastAPI's answer to an unknown route."""
        return SimResponse(404, {"detail": "Not Found"})

    def method_not_allowed(self, req: SimRequest) -> SimResponse:
        """[I] FastAPI's answer to a known route with another method."""
        return SimResponse(405, {"detail": "Method Not Allowed"})

    def handle(self, req: SimRequest) -> SimResponse:
        """Serve as usual, then deliver callbacks of trainings that ended meanwhile."""
        response = super().handle(req)
        self.deliver_callbacks()
        return response

    # -- data batches -----------------------------------------------------------------------

    @route("POST", _V1 + r"/data_batch")
    def upload(self, req: SimRequest) -> SimResponse:
        """[D] multipart `files` (CSV, one batch each [I]) and `tags`; answers the new batches."""
        form = req.form()
        files = [p for p in form.get("files", []) if p.filename is not None or p.data]
        if not files:
            raise unprocessable(["body", "files"], "Field required", "missing")
        tags = form_tags(form.get("tags", []))
        counted = [count_rows(part) for part in files]
        created = [
            self._new_batch(tags, entities, interactions, created=self.now()) for entities, interactions in counted
        ]
        self.save()
        return SimResponse(200, [self._batch_view(b) for b in created])

    @route("GET", _V1 + r"/data_batch")
    def batch_info(self, req: SimRequest) -> SimResponse:
        """[D] metadata of the batches matching `batch_id` and/or all `tags` ([I] none: all)."""
        found = self._batches(req.q("batch_id"), req.query.get("tags", []))
        return SimResponse(200, [self._batch_view(b) for b in found])

    @route("DELETE", _V1 + r"/data_batch")
    def delete_batches(self, req: SimRequest) -> SimResponse:
        """[D] deletes every batch matching; [?] the answer: [I] the deleted batches' metadata."""
        batch_id = req.q("batch_id")
        tags = req.query.get("tags", [])
        if batch_id is None and not tags:
            # [I] refusing an unfiltered delete rather than wiping every batch
            raise unprocessable(["query", "batch_id"], "give batch_id or tags")
        found = self._batches(batch_id, tags)
        for batch in found:
            del self.world["batches"][batch["batch_id"]]
        self.save()
        return SimResponse(200, [self._batch_view(b) for b in found])

    # -- training -----------------------------------------------------------------------------

    @route("POST", _V1 + r"/train")
    def train(self, req: SimRequest) -> SimResponse:
        """[D] JSON, every field optional; [I] answers the status object of the new training."""
        body = req.json(default={})
        if not isinstance(body, dict):
            raise unprocessable(["body"], "expected a JSON object", "dict_type")
        options = train_options(body)
        model_id = options.pop("model_id") or str(uuid.uuid4())  # [I] an id is made up when omitted
        latest = self._latest(model_id)
        if latest is not None and self.training_state(latest).active:
            # [?] not documented; [I] a second training of the same model is refused while one runs
            raise SimHTTPError(409, {"detail": f"Model {model_id} is already training"})
        batch_ids = [b["batch_id"] for b in self._batches(None, options["data_tags"] or [])]
        if not batch_ids:
            raise unprocessable(["body", "data_tags"], "no data batch matches all data_tags")  # [I]
        record = self.new_training(model_id=model_id, data_batch_ids=batch_ids, callback_sent=False, **options)
        awaiting = self._awaiting_callback()  # before the append: a first scan would find it too
        self.world.setdefault("models", {}).setdefault(model_id, {"trainings": []})["trainings"].append(record)
        self.save()
        if record.get("callback_url"):
            awaiting.append(record)
            self._schedule_callback(float(record["duration"]))
        return SimResponse(200, self._status_view(record))

    @route("GET", _V1 + r"/status")
    def status(self, req: SimRequest) -> SimResponse:
        """[D] the status object; [I] GET with `?model_id=`, 404 for an unknown model."""
        model_id = req.q("model_id")
        if not model_id:
            raise unprocessable(["query", "model_id"], "Field required", "missing")
        latest = self._latest(model_id)
        if latest is None:
            raise not_found_error(f"Model {model_id} not found")
        return SimResponse(200, self._status_view(latest))

    # -- completion callbacks [I]: POST of the status object, best effort ----------------------

    def _schedule_callback(self, delay: float) -> None:
        timer = threading.Timer(delay + 0.05, self.deliver_callbacks)
        timer.daemon = True
        timer.start()

    def deliver_callbacks(self) -> int:
        """POST the status object of every ended training with an undelivered callback_url
        (each in a thread); returns how many were sent off."""
        due: list[tuple[str, dict[str, Any]]] = []
        with self.transaction(save=False):
            awaiting = self._awaiting_callback()
            for record in list(awaiting):
                if record.get("callback_sent") or self.training_state(record).active:
                    continue
                record["callback_sent"] = True
                awaiting.remove(record)
                due.append((str(record["callback_url"]), self._status_view(record)))
            if due:
                self.save()
        for url, payload in due:
            threading.Thread(target=self._post_callback, args=(url, payload), daemon=True).start()
        return len(due)

    def _awaiting_callback(self) -> list[dict[str, Any]]:
        """The trainings with a callback_url not sent yet (call under the lock). Found by one scan
        of the world, then kept (`train` adds to it) until `sync` reloads the world: every request
        delivers callbacks, and a scan of 2,000 models per request was the sandbox's largest cost."""
        if self._awaiting is None or self._awaiting_at != self.reloads:
            self._awaiting = [
                record
                for model in self.world.get("models", {}).values()
                for record in model["trainings"]
                if record.get("callback_url") and not record.get("callback_sent")
            ]
            self._awaiting_at = self.reloads
        return self._awaiting

    def _post_callback(self, url: str, payload: dict[str, Any]) -> None:
        entry: dict[str, Any] = {"url": url, "model_id": payload["model_id"], "status": payload["status"]}
        request = urllib.request.Request(
            url,
            data=json.dumps(payload).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:  # http(s) only, checked at train
                entry["code"] = answer.status
        except urllib.error.HTTPError as exc:
            entry["code"] = exc.code
        except (urllib.error.URLError, OSError) as exc:
            entry["error"] = str(exc)
            log.debug("sandbox lucid: callback to %s failed: %s", url, exc)
        entry["at"] = self.now()
        try:
            with self.transaction() as world:
                world.setdefault("callbacks", []).append(entry)
        except Exception:  # best effort: the sandbox may have stopped meanwhile
            log.debug("sandbox lucid: could not record the callback to %s", url, exc_info=True)

    # -- helpers for tests --------------------------------------------------------------------

    def add_batch(
        self, tags: list[str] | tuple[str, ...], *, entity_count: int = 0, interaction_count: int = 1000
    ) -> str:
        """Upload a batch out of band (new data); returns its batch_id."""
        with self.transaction():
            return str(self._new_batch(list(tags), entity_count, interaction_count, created=self.now())["batch_id"])

    def remove_batch(self, batch_id: str) -> None:
        """Delete one batch out of band."""
        with self.transaction() as world:
            world.get("batches", {}).pop(batch_id, None)

    def batch_ids(self, tags: list[str] | tuple[str, ...] = ()) -> list[str]:
        """Ids of the batches carrying all `tags`, oldest first."""
        with self.transaction(save=False):
            return [b["batch_id"] for b in self._batches(None, list(tags))]

    def mark_trained(
        self, model_id: str, data_tags: list[str] | tuple[str, ...] = (), *, duration: float = 600.0
    ) -> None:
        """Record a completed training made by hand (outside reconciler): an unknown baseline."""
        with self.transaction() as world:
            end = self.now()
            record = self.finished_training(
                end,
                duration,
                model_id=model_id,
                data_batch_ids=[b["batch_id"] for b in self._batches(None, list(data_tags))],
                callback_sent=True,
                maximum_interaction_age_days=None,
                data_tags=list(data_tags),
                data_filters=None,
                callback_url=None,
            )
            world.setdefault("models", {}).setdefault(model_id, {"trainings": []})["trainings"].append(record)

    def status_of(self, model_id: str) -> dict[str, Any] | None:
        """The status object the API shows now for a model (None: unknown model)."""
        with self.transaction(save=False):
            latest = self._latest(model_id)
            return None if latest is None else self._status_view(latest)

    def trainings(self, model_id: str) -> list[dict[str, Any]]:
        """Every training record of a model (with the options it was started with)."""
        with self.transaction(save=False):
            model = self.world.get("models", {}).get(model_id)
            return [dict(r) for r in model["trainings"]] if model else []

    def callbacks(self) -> list[dict[str, Any]]:
        """Callback deliveries attempted so far."""
        with self.transaction(save=False) as world:
            return [dict(c) for c in world.get("callbacks", [])]
