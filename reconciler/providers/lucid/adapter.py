"""Lucid (lucid-ai devdocs), Recommendation product (providers.md section 4).

Lucid has no public host: each customer gets a server, so `base_url` (or RECONCILER_LUCID_BASE_URL)
is required and names the host; this adapter adds the `/v1` prefix.

API used (kept in the constants below because several facts are inferred, see providers.md):
- auth: header `apikey: <key>` plus `accept: application/json` [D];
- observe: the status endpoint for the model [D name; I method, path and query parameter] and
  `GET /v1/recommender/data_batch?tags=...` for the batches a training now would use [D]. Models
  sharing the same `data_tags` share one batch query per `observe_many` call;
- drift in data: the status object's `data_batch_ids` (the batches the model was trained on) [D]
  versus the current batches matching all `data_tags`;
- train: `POST /v1/recommender/train` with a JSON body [D path in the guide; I method]. A 422
  (no data batch carries all `data_tags` [I]) is the spec's or the data's problem, not a failed
  training: `SpecRefusedError`, never an attempt. Observing already reports a model whose tags
  select no batch, so that call is not even made.

Lucid does not echo `maximum_interaction_age_days`, `data_tags` or `data_filters` back [?], so
those are known only from the state's record of the training reconciler started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from reconciler.domain import Observation, TrainingStatus, TrainResult
from reconciler.errors import BadResponseError, InvalidRequestError, NotFoundError, ProviderError, SpecRefusedError
from reconciler.providers.base import ProviderAdapter, read_time
from reconciler.providers.lucid.schema import LUCID, LucidModel, LucidTraining
from reconciler.providers.policy import Auth

if TYPE_CHECKING:
    from reconciler.domain import DesiredModel, ModelRecord
    from reconciler.providers.wire import Response

#: The adapter adds this to the configured host; a base URL already ending in it is used as is.
API_PREFIX = "/v1"

#: [D] the docs only name a "status/" endpoint; method, path and parameter are [I] (providers.md
#: open question 4). With a method other than GET the id is sent as a JSON body instead.
STATUS_METHOD = "GET"
STATUS_PATH = "/recommender/status"
STATUS_ID_PARAM = "model_id"
#: [D] upload (POST, multipart), info (GET) and delete (DELETE) share this path.
DATA_BATCH_PATH = "/recommender/data_batch"
#: [I] the API-key example says /v1/recommend/train, the guide /recommender/train.
TRAIN_PATH = "/recommender/train"
#: Optional callback Lucid POSTs to when a training completes [D field; I method/payload]: e.g.
#: the daemon's `/hooks/lucid`. Not part of the spec, so changing it never causes a training.
CALLBACK_ENV = "RECONCILER_LUCID_CALLBACK_URL"

#: [D] running | completed | error; the other words are [I] spellings a later API may use.
RUNNING_WORDS = {"running", "queued", "pending", "started", "training"}
SUCCEEDED_WORDS = {"completed", "complete", "succeeded", "success", "finished", "done"}
FAILED_WORDS = {"error", "failed", "failure", "cancelled", "canceled"}

#: How many batch ids a data-changed detail names before abbreviating.
_NAMED_BATCHES = 5


def _tags(m: DesiredModel[LucidModel, LucidTraining]) -> tuple[str, ...]:
    return tuple(m.training.data_tags)


def _model_id(m: DesiredModel[LucidModel, LucidTraining]) -> str:
    return m.model.model_id


def _route_missing(resp: Response) -> bool:
    from reconciler.providers.wire import error_message

    try:
        body = resp.json()
    except BadResponseError:
        return True
    message = error_message(body).strip().lower()
    return message in ("", "not found", "404 not found", "404: not found")


def _names(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_NAMED_BATCHES])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > _NAMED_BATCHES else "")


def _matching(listed: list[dict[str, Any]], tags: tuple[str, ...]) -> list[str]:
    """Sorted ids of the listed batches carrying all `tags`."""
    ids: set[str] = set()
    for item in listed:
        batch_tags = item.get("tags")
        # [D] the server matches all tags; checked again in case a server matches any
        if isinstance(batch_tags, list) and not set(tags) <= {str(t) for t in batch_tags}:
            continue
        ids.add(item["batch_id"])
    return sorted(ids)


class LucidAdapter(ProviderAdapter[LucidModel, LucidTraining]):
    provider_type = LUCID
    # [D] the example request sends both; HttpClient sets the same Accept, named here on purpose
    auth = Auth(header="apikey", extra_headers={"Accept": "application/json"})

    def _path(self, path: str) -> str:
        # the contract names the host; tolerate a base URL that already carries /v1
        base_path = urlsplit(self.http.base_url).path.rstrip("/")
        return path if base_path.endswith(API_PREFIX) else API_PREFIX + path

    # ---- reading

    async def observe(self, model: DesiredModel[LucidModel, LucidTraining], record: ModelRecord | None) -> Observation:
        """Status of the model plus the current batches matching its data_tags (2 reads)."""
        result = (await self.observe_many([model], {model.name: record} if record else {}))[model.name]
        if isinstance(result, ProviderError):
            raise result
        return result

    async def observe_many(
        self, models: Sequence[DesiredModel[LucidModel, LucidTraining]], records: dict[str, ModelRecord]
    ) -> dict[str, Observation | ProviderError]:
        """One status read per model, and one batch query for all the models' data_tags sets."""
        groups = list(dict.fromkeys(_tags(m) for m in models))
        batch_results, status_results = await asyncio.gather(
            self._batches_of(groups),
            asyncio.gather(*(self._status(m) for m in models), return_exceptions=True),
        )
        batches = dict(zip(groups, batch_results, strict=True))
        out: dict[str, Observation | ProviderError] = {}
        for m, status in zip(models, status_results, strict=True):
            current = batches[_tags(m)]
            for res in (current, status):
                if isinstance(res, BaseException) and not isinstance(res, ProviderError):
                    raise res
            # the batch query's error comes first: when it fails (wrong host, key), a 404 from
            # status proves nothing, so it must not read as "never trained"
            if isinstance(current, ProviderError):
                # one failed batch query is shared by its group: each model gets its own copy
                out[m.name] = current.with_model(m.name)
            elif isinstance(status, ProviderError):
                out[m.name] = status.with_model(m.name)
            else:
                assert isinstance(current, list) and not isinstance(status, BaseException)
                try:
                    obs = self._observation(m, records.get(m.name), status, current)
                except ProviderError as exc:
                    out[m.name] = exc.with_model(m.name)
                    continue
                # no batch carries its tags: Lucid would refuse a train call (422) [I], so the model
                # is an error to fix (the data or data_tags), never a train that cannot start. A
                # running training is still followed.
                out[m.name] = self._no_data(m) if not current and not obs.in_flight else obs
        return out

    def _no_data(self, m: DesiredModel[LucidModel, LucidTraining]) -> SpecRefusedError:
        tags = f"carries every tag of data_tags {list(_tags(m))}" if _tags(m) else "exists"
        return SpecRefusedError(
            f"no data batch {tags}, so Lucid would refuse to train it (422); upload one "
            f"(POST {self._path(DATA_BATCH_PATH)}) or change data_tags",
            provider=self.config.name,
            model=m.name,
        )

    async def _status(self, m: DesiredModel[LucidModel, LucidTraining]) -> dict[str, Any] | None:
        """The model's status object, or None when Lucid does not know the model id."""
        model_id = _model_id(m)
        kwargs: dict[str, Any] = (
            {"params": {STATUS_ID_PARAM: model_id}}
            if STATUS_METHOD == "GET"
            else {"json_body": {STATUS_ID_PARAM: model_id}}
        )
        path = self._path(STATUS_PATH)
        resp = await self.http.request(STATUS_METHOD, path, idempotent=True, ok=(404,), **kwargs)
        if resp.status == 404:
            # [I] an unknown id answers 404 (body [?]): the model was never trained. A 404 that
            # looks like a missing route (a proxy's HTML page, FastAPI's bare "Not Found") means
            # the endpoint is wrong, and taking it for "never trained" would train every run.
            if _route_missing(resp):
                raise NotFoundError(
                    f"{STATUS_METHOD} {path} -> HTTP 404 with no model-specific message: the status endpoint "
                    f"is not at this address; check base_url (the host, without /v1)",
                    provider=self.config.name,
                    status=404,
                )
            return None
        body = resp.json()
        if isinstance(body, list):  # [I] tolerate a list of status objects
            found = [b for b in body if isinstance(b, dict) and b.get("model_id") in (model_id, None)]
            if not found:
                return None
            body = found[-1]
        if not isinstance(body, dict):
            raise BadResponseError(
                f"status answered a JSON {type(body).__name__}, expected an object", provider=self.config.name
            )
        return body

    async def _batches_of(self, groups: list[tuple[str, ...]]) -> list[list[str] | BaseException]:
        """The current batch ids of each data_tags set: one unfiltered query when it shows every
        batch's tags, else one query per set (a server whose list omits the tags)."""
        if len(groups) > 1:
            try:
                listed = await self._batch_list(None)
            except ProviderError:
                listed = None  # each set's own query says what is wrong
            if listed is not None and all(isinstance(item.get("tags"), list) for item in listed):
                return [_matching(listed, g) for g in groups]
        return list(await asyncio.gather(*(self._current_batches(g) for g in groups), return_exceptions=True))

    async def _batch_list(self, tags: tuple[str, ...] | None) -> list[dict[str, Any]]:
        """The data_batch metadata list, filtered by `tags` at the server (None: every batch [I])."""
        # [I] list values go out as repeated parameters: ?tags=a&tags=b
        params = {"tags": list(tags)} if tags else None
        resp = await self.http.request("GET", self._path(DATA_BATCH_PATH), params=params)
        body = resp.json_list()
        for item in body:
            if not isinstance(item, dict) or not isinstance(item.get("batch_id"), str):
                raise BadResponseError("data_batch answered an entry without a batch_id", provider=self.config.name)
        return body

    async def _current_batches(self, tags: tuple[str, ...]) -> list[str]:
        """Sorted ids of the batches carrying all `tags` (every batch for no tags [I])."""
        return _matching(await self._batch_list(tags), tags)

    def _observation(
        self,
        m: DesiredModel[LucidModel, LucidTraining],
        record: ModelRecord | None,
        body: dict[str, Any] | None,
        current: list[str],
    ) -> Observation:
        if body is None:
            return Observation(
                status=TrainingStatus.NONE,
                message="model id unknown to Lucid",
                data_marker=current,
                provider_state="unknown-model",
            )
        word = str(body.get("status") or "").lower()
        if word in RUNNING_WORDS:
            status = TrainingStatus.RUNNING
        elif word in SUCCEEDED_WORDS:
            status = TrainingStatus.SUCCEEDED
        elif word in FAILED_WORDS:
            status = TrainingStatus.FAILED
        elif not word:
            raise BadResponseError("status object has no 'status'", provider=self.config.name)
        else:
            status = TrainingStatus.UNKNOWN
        progress = None
        raw_progress = body.get("progress")
        if (
            status is TrainingStatus.RUNNING
            and isinstance(raw_progress, int | float)
            and not isinstance(raw_progress, bool)
        ):
            progress = min(max(float(raw_progress) / 100.0, 0.0), 1.0)  # [D] 0-100
        trained_ids = body.get("data_batch_ids")
        trained = sorted(str(i) for i in trained_ids) if isinstance(trained_ids, list) else None
        observed: dict[str, Any] = {
            k: body[k] for k in ("maximum_interaction_age_days", "data_tags", "data_filters") if k in body
        }
        if trained is not None:
            observed["data_batch_ids"] = trained
        start = body.get("start_timestamp")
        return Observation(
            status=status,
            # a new training has a new start; the end of one flips the status word
            marker=f"{start or '-'}/{word}",
            trained_at=read_time(body.get("end_timestamp")) if status is TrainingStatus.SUCCEEDED else None,
            progress=progress,
            message=str(body.get("message") or word),
            data_changed=self._data_changed(m, record, status, trained, current),
            data_marker=current,
            observed_training=observed,
            handle=str(body.get("model_id") or _model_id(m)),
            provider_state=word,
        )

    def _data_changed(
        self,
        m: DesiredModel[LucidModel, LucidTraining],
        record: ModelRecord | None,
        status: TrainingStatus,
        trained: list[str] | None,
        current: list[str],
    ) -> str | None:
        """Which batches appeared or vanished since the last training, if any."""
        if record is not None:
            recorded_tags = (record.training.get("training") or {}).get("data_tags")
            if recorded_tags is not None and sorted(recorded_tags) != list(_tags(m)):
                return None  # other tags select other batches: spec-changed already says so
        # the provider's list is what the model was really trained on; the record's marker is
        # the fallback (taken when the training was triggered) when Lucid shows none
        baseline: list[str] | None = trained if status is TrainingStatus.SUCCEEDED else None
        if baseline is None and record is not None and isinstance(record.data_marker, list):
            baseline = [str(i) for i in record.data_marker]
        if baseline is None:
            return None
        new = sorted(set(current) - set(baseline))
        removed = sorted(set(baseline) - set(current))
        if not new and not removed:
            return None
        parts = []
        if new:
            parts.append(f"{len(new)} new data batch{'es' if len(new) > 1 else ''} ({_names(new)})")
        if removed:
            parts.append(f"{len(removed)} removed ({_names(removed)})")
        return " and ".join(parts) + " since the last training"

    # ---- writing

    async def train(self, models: Sequence[DesiredModel[LucidModel, LucidTraining]]) -> dict[str, TrainResult]:
        """POST the training; reusing the model_id replaces that model once it completes [D]."""
        callback = self.ctx.env.get(CALLBACK_ENV) or None
        results = {}
        for m in models:
            t = m.training
            body = {
                k: v
                for k, v in {
                    "model_id": _model_id(m),
                    "maximum_interaction_age_days": t.maximum_interaction_age_days,
                    "data_tags": list(t.data_tags),
                    "data_filters": t.data_filters,
                    "callback_url": callback,
                }.items()
                if v is not None
            }
            try:
                resp = await self.http.request("POST", self._path(TRAIN_PATH), json_body=body, idempotent=False)
            except InvalidRequestError as exc:
                if exc.status != 422:
                    raise
                # [I] 422 (e.g. no data batch carries all data_tags): the spec or the data is
                # wrong, not the training; reported with Lucid's words, never counted as an attempt
                raise SpecRefusedError(
                    f"{exc.message}; Lucid refused to train this spec: upload a data batch tagged with every "
                    f"tag of data_tags {list(t.data_tags)} or change the manifest",
                    provider=self.config.name,
                    model=m.name,
                    status=422,
                ) from None
            message = "training started"
            try:
                answer = resp.json_object()  # [I] the same object as status
                if answer.get("status"):
                    message = f"training {answer['status']}"
            except BadResponseError:
                pass  # a 2xx is the acknowledgement; observing shows the rest
            results[m.name] = TrainResult(handle=_model_id(m), message=message)
        return results
