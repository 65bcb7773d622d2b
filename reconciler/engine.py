"""The engine: observe concurrently, plan, run actions, record everything (`slots` follows trainings).

`Engine` is used by the CLI (one pass) and the daemon (many passes). It owns one adapter per
provider instance (with its HttpClient), reads for many models concurrently under each provider's
limits, and writes to the state store in the order that makes the guarantees true:
intent -> train call -> acknowledgement, so a crash at any point is settled by observing.

Many writers share one state, without a lock: every record write is a compare-and-set on the
version the plan was made from (`StateStore.save_if`). A writer that loses re-reads that model's
record, observes it again and re-plans it (it then sees the other's intent: `wait` or `hold`); it
never calls train on a plan another writer has overtaken.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from reconciler import budget, cas
from reconciler.domain import (
    DesiredModel,
    HistoryEvent,
    ModelRecord,
    Observation,
    ProviderConfig,
    RecordStatus,
    TrainingStatus,
    TrainResult,
)
from reconciler.errors import (
    BadResponseError,
    ConfigError,
    PermanentProviderError,
    ProviderError,
    RequestNotSentError,
    SpecRefusedError,
    TemporaryProviderError,
)
from reconciler.heap import collector_paused
from reconciler.notify import Announcer, EventSink
from reconciler.orphans import model_identity, rename_candidates
from reconciler.outcomes import ApplyResult, TriggerOutcome
from reconciler.plan import (
    Action,
    ModelPlan,
    Reason,
    count_in_flight,
    error_code,
    hint_renames,
    limit_concurrency,
    plan_model,
)
from reconciler.providers.access import Access, where
from reconciler.providers.base import ProviderAdapter, ProviderContext, redacted, unexpected_error
from reconciler.providers.catalog import adapter_class, base_urls, provider_type
from reconciler.providers.clients import SharedClients
from reconciler.providers.origins import TrustPolicy, base_url_env
from reconciler.seams import Seams
from reconciler.spec import ManifestSet
from reconciler.state.base import StateStore

log = logging.getLogger("reconciler.engine")

#: Seconds an HTTP request to a provider may take (connect + answer) unless told otherwise.
DEFAULT_HTTP_TIMEOUT = 30.0


def by_provider(models: Iterable[DesiredModel]) -> dict[str, list[DesiredModel]]:
    """The models of each provider instance, in their order."""
    grouped: dict[str, list[DesiredModel]] = defaultdict(list)
    for m in models:
        grouped[m.provider].append(m)
    return grouped


#: The leader's fence: proves its lease is still held, awaited before every trigger.
Fence = Callable[[], Awaitable[bool]]


#: up to this many models without a record, their rename candidates are read by provider model
#: (one statement, within SQLite's oldest parameter limit), else every record is read
FEW_UNRECORDED = 500


class Engine:
    """Reconciles a set of desired models against providers and the state store."""

    def __init__(
        self,
        manifests: ManifestSet,
        state: StateStore,
        *,
        env: Mapping[str, str] | None = None,
        git_commit: str | None = None,
        poll_interval: timedelta | None = None,
        endpoints: Mapping[str, tuple[str, str]] | None = None,
        trust: TrustPolicy | None = None,
        http_timeout: float = DEFAULT_HTTP_TIMEOUT,
        seams: Seams | None = None,
        limits: budget.Limits | None = None,
        events: EventSink | None = None,
        clients: SharedClients | None = None,
    ) -> None:
        """`env` holds the provider key variables and `RECONCILER_<TYPE>_BASE_URL` (runtime passes
        the process environment; nothing else is read from it). `endpoints` maps a provider type
        to (base URL, key) that replace the configured ones: how `--sandbox` points every provider
        instance of a type at its simulator. `trust` (default: from `env`) is where keys may go,
        the endpoints' origins included. `seams` replaces the clock, backoff sleep, HTTP
        transport, request observers and trigger-step hook (tests). `limits`: who writes (apply or
        daemon) and the daemon's hourly rate (`reconciler.budget`). `events` gets each transition.
        `clients` (the daemon) shares HTTP clients with its other engines: one rate per provider."""
        self.manifests = manifests
        self.state = state
        self.env = dict(env or {})
        self.seams = seams or Seams()
        self.clock = self.seams.clock
        self.git_commit = git_commit
        self.poll_interval_override = poll_interval
        self.endpoints = dict(endpoints or {})
        endpoint_urls = {t: url for t, (url, _) in self.endpoints.items()}
        self.trust = (trust or TrustPolicy.from_env(self.env, base_urls())).allowing(endpoint_urls)
        self.access = Access(self.env, self.endpoints, self.trust)
        self.http_timeout = http_timeout
        self.limits = limits or budget.Limits()
        self.announce = Announcer(events, git_commit, self.clock)
        self.clients = clients
        self._adapters: dict[str, ProviderAdapter] = {}
        self._adapter_errors: dict[str, ConfigError] = {}
        self._train_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    # ------------------------------------------------------------------ adapters

    def provider_config(self, name: str) -> ProviderConfig:
        return self.manifests.providers[name]

    def adapter(self, provider: str) -> ProviderAdapter:
        """The adapter of a provider instance; ConfigError when its key or base URL is missing."""
        if provider in self._adapters:
            return self._adapters[provider]
        if provider in self._adapter_errors:
            raise self._adapter_errors[provider]
        try:
            adapter = self._make_adapter(self.provider_config(provider))
        except ConfigError as exc:
            self._adapter_errors[provider] = exc
            raise
        self._adapters[provider] = adapter
        return adapter

    def _unusable(self, cfg: ProviderConfig, model: DesiredModel, exc: ConfigError) -> PermanentProviderError:
        """`exc` (the provider instance cannot be used) said of `model`: its own name and place."""
        problem = self.access.problem(cfg)
        message = f"{where(cfg, [model])}: {problem}" if problem else str(exc)
        return PermanentProviderError(message, provider=cfg.name, model=model.name)

    def _make_adapter(self, cfg: ProviderConfig) -> ProviderAdapter:
        from reconciler.providers.http import HttpClient

        if problem := self.access.problem(cfg):
            users = [m for m in self.manifests.models.values() if m.provider == cfg.name]
            raise ConfigError(f"{where(cfg, users)}: {problem}")
        cls = adapter_class(cfg.type)
        ptype = provider_type(cfg.type)
        base_url, key = self.access.endpoint(cfg)
        origins = self.trust.origins_for(cfg.type)

        def make() -> HttpClient:
            return HttpClient(
                cfg.name,
                base_url,
                api_key=key,
                auth=cls.auth,
                requests_per_second=cfg.requests_per_second,
                max_concurrent=ptype.max_concurrent_requests,
                timeout=self.http_timeout,
                retry=cls.retry,
                allowed_origins=origins,
                key_env=cfg.api_key_env,
                transport=self.seams.transport,
                sleep=self.seams.sleep,
                observers=self.seams.request_observers,
            )

        settings = (cfg.name, cfg.type, cls, base_url, key, cfg.requests_per_second, cfg.api_key_env)
        limits = (ptype.max_concurrent_requests, self.http_timeout, origins)
        seams = (self.seams.transport, self.seams.sleep, *self.seams.request_observers)
        http = make() if self.clients is None else self.clients.acquire((settings, limits), seams, make)
        return cls(ProviderContext(config=cfg, http=http, state=self.state, clock=self.clock, env=self.env))

    @property
    def settle_window(self) -> timedelta:
        """How long an unacknowledged intent may still show up at the provider.

        A train call cut off (crash, timeout) may still be received up to one HTTP timeout after
        it was sent and take about as long again to show; until then an intent the provider does
        not show yet is held, never sent again. After it, the call is taken as never received.
        """
        return timedelta(seconds=2 * self.http_timeout)

    def poll_interval(self, provider: str) -> timedelta:
        """How often to read an in-flight training (never below the provider's documented floor)."""
        if self.poll_interval_override is not None:
            return self.poll_interval_override  # the sandbox: trainings take seconds
        cfg = self.provider_config(provider)
        return max(cfg.poll_interval, provider_type(cfg.type).min_poll_interval)

    async def aclose(self) -> None:
        for a in self._adapters.values():
            if self.clients is None:
                await a.http.aclose()
            else:
                await self.clients.release(a.http)
        self._adapters.clear()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ observe + plan

    async def observe(
        self, models: Sequence[DesiredModel], records: Mapping[str, ModelRecord]
    ) -> dict[str, Observation | ProviderError]:
        """Read every model's actual state, providers concurrently; errors stay per model."""
        parts = await asyncio.gather(*(self._observe(p, ms, records) for p, ms in by_provider(models).items()))
        return {name: found for part in parts for name, found in part.items()}

    async def _observe(
        self, provider: str, ms: list[DesiredModel], records: Mapping[str, ModelRecord]
    ) -> dict[str, Observation | ProviderError]:
        try:
            adapter = self.adapter(provider)
        except ConfigError as exc:
            # each model's error names that model, not the first one using the provider
            cfg = self.provider_config(provider)
            return {m.name: self._unusable(cfg, m, exc) for m in ms}
        found: dict[str, Observation | ProviderError]
        try:
            found = dict(await adapter.observe_many(ms, dict(records)))
        except ProviderError as exc:
            found = {m.name: exc for m in ms}
        except Exception as exc:  # a bug or garbage in one provider must not stop the others
            bad = unexpected_error(provider, "reading the model", exc, adapter.http.redact)
            found = {m.name: bad for m in ms}
        for m in ms:
            if m.name not in found:
                found[m.name] = BadResponseError("the adapter returned no observation", provider=provider)
        # errors were redacted where they were built; observations quote the provider's words
        return {
            name: redacted(r, adapter.http.redact) if isinstance(r, Observation) else r for name, r in found.items()
        }

    async def plan(self, models: Sequence[DesiredModel], *, others: Iterable[ModelPlan] = ()) -> list[ModelPlan]:
        """Observe and decide for every model. Writes nothing anywhere. `others`: the caller's plans of models
        outside `models` (the daemon's); their in-flight trainings count against `max_concurrent_trainings` too."""

        async def one_provider(provider: str, ms: list[DesiredModel]) -> tuple[dict[str, ModelRecord], list[ModelPlan]]:
            # records first, then the provider: a record another writer changes after this read makes
            # our compare-and-set fail, so no decision rests on a record older than the observation.
            # Each provider's own: its reads start, and its models are decided, while others still read.
            # By name, never every record: a daemon's resync part or saved change must not decode 10,000.
            records = await self.state.get_many([m.name for m in ms])
            observed = await self._observe(provider, ms, records)
            now = self.clock()
            return records, [self.plan_one(m, records.get(m.name), observed[m.name], now) for m in ms]

        with collector_paused():  # its objects live on or go by reference counting (`heap`)
            parts = await asyncio.gather(*(one_provider(p, ms) for p, ms in by_provider(models).items()))
        records = {name: r for recs, _ in parts for name, r in recs.items()}
        decided = {p.name: p for _, part in parts for p in part}
        plans = [decided[m.name] for m in models]
        # a model without a record, at the provider model of an orphan's record: hint the rename
        if unrecorded := [m for m in models if m.name not in records]:
            few = len(unrecorded) <= FEW_UNRECORDED  # only the records that could be theirs
            more = await (
                self.state.of_provider_models({model_identity(m) for m in unrecorded}) if few else self.state.all()
            )
            hint_renames(plans, rename_candidates({**more, **records}, self.manifests.models, models))
        limits = {name: cfg.max_concurrent_trainings for name, cfg in self.manifests.providers.items()}
        names = {p.name for p in plans}
        limit_concurrency(plans, limits, count_in_flight([*plans, *(p for p in others if p.name not in names)]))
        await budget.hold_over_budget(self, plans)
        return plans

    def plan_one(
        self, m: DesiredModel, record: ModelRecord | None, observed: Observation | ProviderError, now: datetime
    ) -> ModelPlan:
        """One model's plan from a record and an observation (no I/O)."""
        ptype = provider_type(m.provider_type)
        return plan_model(
            m,
            record,
            observed,
            now,
            observable_trigger=ptype.observable_trigger,
            training_timeout=ptype.training_timeout,
            settle_window=self.settle_window,
        )

    async def replan(self, p: ModelPlan, why: str) -> None:
        """Another writer changed `p`'s record first: decide again, in place (see `cas.replan`)."""
        await cas.replan(self, p, why)
        await budget.hold_over_budget(self, [p])

    # ------------------------------------------------------------------ apply

    def _event(self, name: str, event: str, reason: str = "", fingerprint: str = "", **detail: Any) -> HistoryEvent:
        return HistoryEvent(name, event, reason, fingerprint, dict(detail), git_commit=self.git_commit)

    async def persist_refresh(self, plans: Sequence[ModelPlan]) -> set[str]:
        """Store what observing learned (trainings ended, intents settled), each by compare-and-set
        on the version it was planned from; the names that lost to another writer (re-planned)."""
        lost: set[str] = set()
        for p in plans:
            if p.record_changed and p.record is not None:
                for ev in p.events:
                    ev.git_commit = self.git_commit
                p.record_changed = False
                if not await self.state.save_if(p.record, p.record.version, *p.events):
                    lost.add(p.name)
                    await self.replan(p, "while storing what observing learned")
                else:
                    self.announce.ended(p)
        return lost

    async def adopt(
        self, model: DesiredModel, obs: Observation, reason: str = "unknown-baseline", *, expected_version: int | None
    ) -> ModelRecord | None:
        """Record the provider's current model as matching the spec, by compare-and-set on the
        record version the caller read (None: no record); None when another writer changed it."""
        now = self.clock()
        record = ModelRecord(
            name=model.name,
            provider=model.provider,
            fingerprint=model.fingerprint,
            training=model.snapshot,
            status=RecordStatus.ADOPTED,
            finished_at=obs.trained_at or now,
            triggered_at=None,
            marker=obs.marker,
            data_marker=obs.data_marker,
            reasons=[reason],
            provider_model=model_identity(model),
        )
        ev = self._event(model.name, "adopted", reason, model.fingerprint, observed=obs.observed_training)
        return record if await self.state.save_if(record, expected_version, ev) else None

    async def apply(
        self,
        plans: Sequence[ModelPlan],
        *,
        fence: Fence | None = None,
        max_trainings: int | None = None,
        also_starts: Callable[[ModelPlan], bool] | None = None,
    ) -> ApplyResult:
        """Run the plan: persist refreshes, adopt where asked, trigger train/retry actions.
        `fence` (the daemon's leader lease) is awaited before every trigger; False: trigger nothing.
        Plans that would start more than `max_trainings` are refused whole: nothing is written;
        `also_starts` names plans this apply starts later, which count too (`apply --wait`)."""
        result = ApplyResult(list(plans), refused=budget.refused_by_blast_radius(plans, max_trainings, also_starts))
        if result.refused is not None:
            self.announce.blast_radius(
                budget.counted_starts(plans, also_starts), result.refused.would_start, result.refused.limit
            )
            return result
        lost = await self.persist_refresh(plans)
        for p in plans:
            if p.action is Action.NONE and any(r.code == "will-adopt" for r in p.reasons) and p.observation:
                expected = p.record.version if p.record else None
                adopted = await self.adopt(p.model, p.observation, expected_version=expected)
                if adopted is None:
                    lost.add(p.name)
                    await self.replan(p, "while adopting")
                else:
                    p.record = adopted
                    result.adopted.append(p.name)
            elif p.action is Action.ERROR:
                await self.state.append(
                    self._event(
                        p.name,
                        "error",
                        p.reasons[0].code if p.reasons else "",
                        p.model.fingerprint,
                        message=str(p.error) if p.error else "",
                    )
                )
        groups: dict[tuple[str, str], list[ModelPlan]] = defaultdict(list)
        for p in plans:
            if p.triggers and p.name in lost:  # planned again after a lost race: the next pass
                result.outcomes[p.name] = TriggerOutcome(p.name, False, cas.LEFT_FOR_NEXT_PASS, superseded=True)
            elif p.triggers:
                try:
                    adapter = self.adapter(p.model.provider)
                except ConfigError as exc:
                    result.outcomes[p.name] = TriggerOutcome(p.name, False, str(exc))
                    continue
                groups[(p.model.provider, adapter.train_group_key(p.model))].append(p)
        outcomes = await asyncio.gather(*(self._trigger_group(ps, fence) for ps in groups.values()))
        for group in outcomes:
            for o in group:
                result.outcomes[o.name] = o
        self.announce.holds(plans)
        return result

    async def _trigger_group(self, plans: list[ModelPlan], fence: Fence | None) -> list[TriggerOutcome]:
        adapter = self.adapter(plans[0].model.provider)
        # one trigger per model at a time within this process; compare-and-set covers other writers
        async with self._train_locks[plans[0].model.provider + "/" + plans[0].name]:
            if fence is not None and not await fence():
                return [TriggerOutcome(p.name, False, cas.NOT_LEADER, superseded=True) for p in plans]
            return await self._trigger(adapter, plans, fence)

    async def _trigger(
        self, adapter: ProviderAdapter, all_plans: list[ModelPlan], fence: Fence | None
    ) -> list[TriggerOutcome]:
        now = self.clock()
        previous: dict[str, ModelRecord | None] = {}
        intents: dict[str, ModelRecord] = {}
        outcomes: list[TriggerOutcome] = []
        plans: list[ModelPlan] = []
        self.seams.on_step("before-intent")  # a crash point (CRASHPOINTS)
        for p in all_plans:
            m, obs = p.model, p.observation
            assert obs is not None
            previous[m.name] = p.record
            same_spec = p.record is not None and p.record.fingerprint == m.fingerprint
            intent = ModelRecord(
                name=m.name,
                provider=m.provider,
                fingerprint=m.fingerprint,
                training=m.snapshot,
                status=RecordStatus.INTENT,
                attempts=p.record.attempts if (p.record and same_spec) else 0,
                triggered_at=now,
                finished_at=p.record.finished_at if p.record else None,
                marker=obs.marker,
                data_marker=obs.data_marker,
                reasons=[r.code for r in p.reasons],
                provider_model=model_identity(m),
            )
            won = await budget.write_intent(
                self,
                p,
                intent,
                self._event(
                    m.name,
                    "intent",
                    ",".join(intent.reasons),
                    m.fingerprint,
                    action=p.action.value,
                    reasons=[dataclasses.asdict(r) for r in p.reasons],
                    changes=[dataclasses.asdict(c) for c in p.changes],
                ),
            )
            if won:
                intents[m.name] = intent
                plans.append(p)
            else:  # another writer's intent (or outcome, or budget use) came first: never train on this plan
                await self.replan(p, "its intent lost the compare-and-set")
                if budget.over_budget(p):
                    outcomes.append(TriggerOutcome(p.name, False, p.reasons[-1].detail, over_budget=True))
                else:
                    outcomes.append(
                        TriggerOutcome(p.name, False, f"{cas.LEFT_TO_OTHER}: now {p.action.value}", superseded=True)
                    )
        if not plans:
            return outcomes
        self.seams.on_step("after-intent")  # a crash point (CRASHPOINTS)
        models = [p.model for p in plans]
        provider = adapter.config.name
        try:
            for p in plans:
                assert p.observation is not None
                await adapter.prepare(p.model, p.observation)
        except Exception as exc:  # the train call was never made: nothing can have started
            redact = adapter.http.redact
            perr = exc if isinstance(exc, ProviderError) else unexpected_error(provider, "preparing", exc, redact)
            return outcomes + [
                await self._train_failed(p, intents[p.name], previous[p.name], perr, sent=False) for p in plans
            ]
        if fence is not None and not await fence():  # the lease was lost while preparing
            gone = RequestNotSentError(cas.NOT_LEADER, provider=provider)
            return outcomes + [
                await self._train_failed(p, intents[p.name], previous[p.name], gone, sent=False) for p in plans
            ]
        try:
            results: dict[str, TrainResult] = await adapter.train(models)
        except Exception as exc:  # never leave an intent without a history line
            if isinstance(exc, ProviderError):
                terr: ProviderError = exc
            else:
                # raised after the call may have left (reading its answer): settled by observing
                log.debug("train call for %s failed", ", ".join(m.name for m in models), exc_info=True)
                terr = TemporaryProviderError(
                    adapter.http.redact(f"unexpected error: {type(exc).__name__}: {exc}"), provider=provider
                )
            return outcomes + [await self._train_failed(p, intents[p.name], previous[p.name], terr) for p in plans]
        self.seams.on_step("after-train-call")  # a crash point (CRASHPOINTS)
        for p in plans:
            res = results.get(p.name, TrainResult())
            res = TrainResult(
                handle=adapter.http.redact(res.handle) if res.handle else res.handle,
                message=adapter.http.redact(res.message),
            )
            intent = intents[p.name]
            rec = dataclasses.replace(intent, status=RecordStatus.TRAINING, handle=res.handle)
            ev = self._event(
                p.name, "triggered", ",".join(rec.reasons), rec.fingerprint, handle=res.handle, message=res.message
            )
            p.record = await cas.write_after_call(self.state, p.name, intent.version, rec, ev)
            outcomes.append(TriggerOutcome(p.name, True, res.message or "training started"))
            self.announce.started(p)
        return outcomes

    async def _train_failed(
        self, p: ModelPlan, intent: ModelRecord, previous: ModelRecord | None, exc: ProviderError, *, sent: bool = True
    ) -> TriggerOutcome:
        """Record why a trigger did not start a training. `sent=False`: the train call was never made."""
        exc = exc.with_model(p.name)
        # refused for the spec or its data (Lucid's 422): nothing trained, so no attempt is counted
        # and no backoff set; the model is reported as an error with the provider's message
        spec_refused = isinstance(exc, SpecRefusedError)
        refused = isinstance(exc, PermanentProviderError) and not spec_refused
        not_executed = not sent or spec_refused or isinstance(exc, RequestNotSentError) or exc.status in (409, 423, 429)
        if refused:
            # the provider said no: count it as a failed attempt, retried with backoff up to max_retries
            from reconciler.plan import retry_delay

            rec = dataclasses.replace(
                intent,
                status=RecordStatus.FAILED,
                attempts=intent.attempts + 1,
                next_attempt_at=self.clock() + retry_delay(intent.attempts + 1, p.model.policy.retry_backoff),
            )
            ev = self._event(p.name, "refused", error_code(exc), rec.fingerprint, message=str(exc))
            p.record = await cas.write_after_call(self.state, p.name, intent.version, rec, ev)
            await budget.release(self.state, intent)
            self.announce.refused(p, exc)
            return TriggerOutcome(p.name, False, str(exc), exc)
        if not_executed:
            # nothing started at the provider: forget the intent, plan again next time
            event = "refused" if spec_refused else "not-started"
            ev = self._event(p.name, event, error_code(exc), intent.fingerprint, message=str(exc))
            # only over our own intent: a newer record (another writer's) is never overwritten
            restored = dataclasses.replace(previous) if previous is not None else None
            p.record = await cas.write_after_call(self.state, p.name, intent.version, restored, ev)
            await budget.release(self.state, intent)
            return TriggerOutcome(p.name, False, str(exc), exc, held=exc.status == 429)
        # the request may have reached the provider: keep the intent; observing settles it
        await self.state.append(
            self._event(
                p.name,
                "unconfirmed",
                error_code(exc),
                intent.fingerprint,
                message=str(exc) + "; the next run settles it by observing the provider",
            )
        )
        return TriggerOutcome(p.name, False, str(exc), exc, ambiguous=True)


__all__ = [
    "ApplyResult",
    "Engine",
    "Reason",
    "TrainingStatus",
    "TriggerOutcome",
    "base_url_env",
    "redacted",
]
