"""Rebase Energy Platform API v2: forecast models of energy sites (providers.md section 2).

API used (paths and field names are constants below, so a change at Rebase is a one-line edit):
- auth: `Authorization: <key>`, the raw key with no "Bearer" prefix [D];
- observe: `GET /platform/v2/sites/{site_id}/models?model_type=ai` [D] -> the site's ML models,
  each with `version` [D] and `state[]` [D, item schema [?]]; `GET /platform/v2/sites` [D] only
  when a site lists no models, to tell "no such site" from "no actuals uploaded yet";
- train: `POST /platform/v2/sites/models/train` with `site_ids`, `splits`, `output_backtest_data`
  [D]: one call trains every site whose training parameters are identical.

What is inferred [I] (the `state[]` item schema is not documented, providers.md open question 2):
- each model's `state[]` holds state entries, newest last, with a status word
  `untrained -> training -> trained | failed`, and timestamps of the latest training start,
  its end, the last successful end and the last actuals upload (`STATE_*` keys below);
- `version` goes up by one per successful training.
The splits and `output_backtest_data` of past trainings cannot be read back [?]: the training
reconciler recorded is the baseline, and the spec fingerprint covers them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from reconciler.domain import Observation, TrainingStatus, TrainResult
from reconciler.errors import BadResponseError, NotFoundError, ProviderError
from reconciler.providers.base import ProviderAdapter, path_segment, read_time
from reconciler.providers.policy import Auth
from reconciler.providers.rebase.schema import REBASE, RebaseModel, RebaseTraining
from reconciler.values import canonical_json

if TYPE_CHECKING:
    from reconciler.domain import DesiredModel, ModelRecord

SITES_PATH = "/platform/v2/sites"
SITE_MODELS_PATH = "/platform/v2/sites/{site_id}/models"
TRAIN_PATH = "/platform/v2/sites/models/train"
#: [D] `model_type=ai|physical`: physical models are not trained, so only ML models are read
MODELS_QUERY = {"model_type": "ai"}

# [I] keys of a `state[]` entry; the documented schema is unknown, see the module docstring.
STATE_STATUS_KEYS = ("status", "state", "training_status")
STATE_PROGRESS = "progress"
STATE_MESSAGE = "message"
STATE_STARTED = "started_timestamp_utc"
STATE_TRAINED = "trained_timestamp_utc"
STATE_ACTUALS = "actuals_updated_timestamp_utc"

# [I] status words; anything else is reported as unknown rather than guessed.
UNTRAINED_WORDS = {"untrained", "created", "new", "not_trained", "not trained"}
RUNNING_WORDS = {"training", "queued", "pending", "running", "started", "in_progress"}
TRAINED_WORDS = {"trained", "succeeded", "success", "completed", "complete", "finished", "ready"}
FAILED_WORDS = {"failed", "error", "errored", "cancelled", "canceled"}


def format_date(dt: datetime) -> str:
    """A split date as the train docs spell it: `2022-01-01T00:00Z` (seconds only when set)."""
    dt = dt.astimezone(UTC)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if dt.second:
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return dt.strftime("%Y-%m-%dT%H:%MZ")


def train_body(site_ids: Sequence[str], training: RebaseTraining) -> dict[str, Any]:
    """The documented train request for some sites sharing one set of training parameters."""
    body: dict[str, Any] = {"site_ids": list(site_ids)}
    if training.splits is not None:
        body["splits"] = [
            {"start_date": format_date(s.start_date), "end_date": format_date(s.end_date)} for s in training.splits
        ]
    body["output_backtest_data"] = training.output_backtest_data
    return body


def _classify(word: str) -> TrainingStatus:
    if word in RUNNING_WORDS:
        return TrainingStatus.RUNNING
    if word in FAILED_WORDS:
        return TrainingStatus.FAILED
    if word in TRAINED_WORDS:
        return TrainingStatus.SUCCEEDED
    if word in UNTRAINED_WORDS:
        return TrainingStatus.NONE
    return TrainingStatus.UNKNOWN


def _latest_state(model: dict[str, Any]) -> dict[str, Any]:
    """The newest `state[]` entry as a dict ([I] newest last; a bare word is taken as a status)."""
    states = model.get("state")
    if not isinstance(states, list) or not states:
        return {}
    last = states[-1]
    if isinstance(last, str):
        return {"status": last}
    return last if isinstance(last, dict) else {}


def _status_word(entry: dict[str, Any]) -> str:
    for key in STATE_STATUS_KEYS:
        value = entry.get(key)
        if isinstance(value, str) and value:
            return value.strip().lower()
    return ""


def _site_id(model: DesiredModel[RebaseModel, RebaseTraining]) -> str:
    return model.model.site_id


def _copy_error(err: ProviderError, model: str, message: str | None = None) -> ProviderError:
    """A per-model copy of a shared error, with its own message when given (errors are never changed)."""
    return type(err)(
        err.message if message is None else message,
        provider=err.provider,
        model=model,
        status=err.status,
        retry_after=err.retry_after,
    )


class RebaseAdapter(ProviderAdapter[RebaseModel, RebaseTraining]):
    provider_type = REBASE
    auth = Auth(header="Authorization")  # [D] the raw key, no "Bearer" prefix

    # ---- reading

    async def _site_models(self, site_id: str) -> list[dict[str, Any]]:
        path = SITE_MODELS_PATH.format(site_id=path_segment(site_id))
        resp = await self.http.request("GET", path, params=MODELS_QUERY)
        items = resp.json_list()
        if not all(isinstance(m, dict) for m in items):
            raise BadResponseError("List Site Models returned an array of non-objects", provider=self.config.name)
        return items

    async def _site_ids(self) -> set[str] | ProviderError:
        try:
            resp = await self.http.request("GET", SITES_PATH)
            return {str(s.get("id")) for s in resp.json_list() if isinstance(s, dict)}
        except ProviderError as exc:
            return exc

    async def observe(
        self, model: DesiredModel[RebaseModel, RebaseTraining], record: ModelRecord | None
    ) -> Observation:
        result = (await self.observe_many([model], {model.name: record} if record else {}))[model.name]
        if isinstance(result, ProviderError):
            raise result
        return result

    async def observe_many(
        self, models: Sequence[DesiredModel[RebaseModel, RebaseTraining]], records: dict[str, ModelRecord]
    ) -> dict[str, Observation | ProviderError]:
        """One List Site Models request per distinct site; List Sites only to explain empty lists."""
        site_of = {m.name: _site_id(m) for m in models}
        sites = sorted(set(site_of.values()))

        async def fetch(site_id: str) -> list[dict[str, Any]] | ProviderError:
            try:
                return await self._site_models(site_id)
            except ProviderError as exc:
                return exc

        fetched = dict(zip(sites, await asyncio.gather(*(fetch(s) for s in sites)), strict=True))
        empty = [s for s, r in fetched.items() if r == []]
        # [?] whether an unknown site answers 404 or an empty list is not documented: ask once.
        known = await self._site_ids() if empty else set()
        out: dict[str, Observation | ProviderError] = {}
        for m in models:
            site_id = site_of[m.name]
            got = fetched[site_id]
            if isinstance(got, NotFoundError):
                out[m.name] = _copy_error(got, m.name, f"site {site_id!r} not found at Rebase ({got.message})")
            elif isinstance(got, ProviderError):
                out[m.name] = _copy_error(got, m.name)
            elif not got:
                out[m.name] = self._no_models(site_id, known, m.name)
            else:
                out[m.name] = self._observation(got, records.get(m.name))
        return out

    def _no_models(self, site_id: str, known: set[str] | ProviderError, model: str) -> ProviderError:
        provider = self.config.name
        if isinstance(known, set) and site_id not in known:
            return NotFoundError(f"site {site_id!r} not found at Rebase (List Sites)", provider=provider, model=model)
        if isinstance(known, ProviderError):
            return NotFoundError(
                f"site {site_id!r} lists no ML models: it does not exist, or no actuals were uploaded yet "
                f"(List Sites, which would tell, failed: {known.message})",
                provider=provider,
                model=model,
            )
        return NotFoundError(
            f"site {site_id!r} has no ML models yet: Rebase creates them when actuals are first uploaded "
            f"(POST {SITES_PATH}/{{site_id}}/actual)",
            provider=provider,
            model=model,
        )

    def _observation(self, models: list[dict[str, Any]], record: ModelRecord | None) -> Observation:
        parts: list[str] = []
        per_model: list[tuple[str, TrainingStatus, dict[str, Any]]] = []
        for m in sorted(models, key=lambda m: str(m.get("id", ""))):
            entry = _latest_state(m)
            word = _status_word(entry)
            label = str(m.get("display_name") or m.get("name") or m.get("id") or "model")
            per_model.append((label, _classify(word), entry))
            # changes when any model's training starts (status, start time) or ends (status, version)
            parts.append(f"{m.get('id', '?')}@v{m.get('version', '?')}:{word or '-'}:{entry.get(STATE_STARTED) or '-'}")
        statuses = [s for _, s, _ in per_model]
        words = sorted({_status_word(e) or "-" for _, _, e in per_model})
        stale = None
        message = ", ".join(f"{label}: {_status_word(e) or 'no state'}" for label, _, e in per_model)
        progress = None
        if TrainingStatus.RUNNING in statuses:
            status = TrainingStatus.RUNNING
            values = [
                float(e[STATE_PROGRESS])
                for _, s, e in per_model
                if s is TrainingStatus.RUNNING and isinstance(e.get(STATE_PROGRESS), int | float)
            ]
            progress = min(1.0, max(0.0, sum(values) / len(values))) if values else None
        elif TrainingStatus.FAILED in statuses:
            status = TrainingStatus.FAILED
            failures = [
                f"{label}: {e.get(STATE_MESSAGE) or 'failed'}"
                for label, s, e in per_model
                if s is TrainingStatus.FAILED
            ]
            message = "; ".join(failures)
        elif TrainingStatus.UNKNOWN in statuses:
            status = TrainingStatus.UNKNOWN
        elif all(s is TrainingStatus.NONE for s in statuses):
            status = TrainingStatus.NONE
        else:
            status = TrainingStatus.SUCCEEDED
            never = [label for label, s, _ in per_model if s is TrainingStatus.NONE]
            if never:
                # a model added to the site after its last training: the site needs one
                stale = "never trained: " + ", ".join(never)
        trained = [t for _, _, e in per_model if (t := read_time(e.get(STATE_TRAINED))) is not None]
        uploads = [t for _, _, e in per_model if (t := read_time(e.get(STATE_ACTUALS))) is not None]
        last_upload = max(uploads) if uploads else None
        data_marker = last_upload.isoformat() if last_upload else None
        return Observation(
            status=status,
            marker="|".join(parts),
            trained_at=max(trained) if trained else None,
            progress=progress,
            message=message,
            stale=stale,
            data_changed=self._data_changed(last_upload, record),
            data_marker=data_marker,
            provider_state="/".join(words),
        )

    @staticmethod
    def _data_changed(last_upload: datetime | None, record: ModelRecord | None) -> str | None:
        if last_upload is None or record is None:
            return None
        recorded = read_time(record.data_marker) if isinstance(record.data_marker, str) else None
        if recorded is not None:
            if last_upload > recorded:
                return (
                    f"actuals uploaded at {last_upload.isoformat()}, after the upload the last "
                    f"training used ({recorded.isoformat()})"
                )
            return None
        baseline = record.triggered_at or record.finished_at
        if baseline is not None and last_upload > baseline:
            return f"actuals uploaded at {last_upload.isoformat()}, after the last training ({baseline.isoformat()})"
        return None

    # ---- writing

    def train_group_key(self, model: DesiredModel[RebaseModel, RebaseTraining]) -> str:
        """Sites with identical training parameters share one train call."""
        return f"{self.config.name}:{canonical_json(model.training.model_dump(mode='json'))}"

    async def train(self, models: Sequence[DesiredModel[RebaseModel, RebaseTraining]]) -> dict[str, TrainResult]:
        """One POST for the whole group: every site in `site_ids`, the shared splits once."""
        training = models[0].training
        site_ids = list(dict.fromkeys(_site_id(m) for m in models))
        resp = await self.http.request("POST", TRAIN_PATH, json_body=train_body(site_ids, training), idempotent=False)
        message = ""
        try:
            message = str(resp.json_object().get("message", ""))
        except BadResponseError:
            pass  # [D] a free-form object: the 2xx is the acknowledgement, there is no job id
        return {m.name: TrainResult(handle=None, message=message or "training started") for m in models}
