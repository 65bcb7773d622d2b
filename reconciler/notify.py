"""Notifications: a JSON POST per transition, at most once per (model, fingerprint, event).

The engine reports each transition as a `Notice` to its `events` sink (`Notifier.emit`), which
never waits: the notice goes into a bounded queue (the oldest is dropped when full, counted and
logged) and a background task delivers it. Delivering is: claim the key in the state by
compare-and-set (`StateStore.claim_notification`; the one writer whose claim went in sends, every
other writer and every later run counts a duplicate), POST the body to every URL through
`providers.http.post_json` with a per-request timeout, retry with backoff through the injected
sleep, then record the result. At exit `drain` waits a bounded time and gives up with a warning.

The URLs are secrets (a Slack webhook URL is its own credential): nothing here logs, stores or
reports one; an endpoint is named by its position ("endpoint 2 of 3").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.domain import DesiredModel
from reconciler.errors import StateError
from reconciler.plan import Action, ModelPlan, Reason
from reconciler.seams import Sleep
from reconciler.state.base import StateStore

log = logging.getLogger("reconciler.notify")

FORMAT_VERSION = 1
#: the transitions notified (design.md "Notifications")
EVENTS = ("training-started", "training-succeeded", "training-failed", "retries-exhausted", "drift-detected", "held")
#: the results counted by `reconciler_notifications_total{event,result}`
RESULTS = ("sent", "failed", "dropped", "duplicate")
QUEUE_SIZE = 100
#: attempts per endpoint (1 + retries) and the first backoff (doubled per retry)
ATTEMPTS = 3
BACKOFF_SECONDS = 1.0
#: seconds one POST may take in all
REQUEST_TIMEOUT = 5.0
#: seconds a command waits at exit for notifications still queued or being sent
DRAIN_SECONDS = 2.0
#: the longest `text` (Slack shows up to 40,000 characters; a notification is one line)
MAX_TEXT = 600

_PHRASES = {
    "training-started": "training started for {model}",
    "training-succeeded": "training succeeded for {model}",
    "training-failed": "training failed for {model}",
    "retries-exhausted": "retries exhausted for {model}: held until the spec changes or max_retries is raised",
    "drift-detected": "drift detected for {model} (policy.drift is warn: not corrected)",
    "held": "training held for {model}",
}

#: plan reasons whose hold is told, and as which event
HOLD_EVENTS = {"retries-exhausted": "retries-exhausted", "warn-only": "drift-detected", "budget": "held"}

#: (event, result) -> called for each notification outcome (the daemon's metric)
ResultObserver = Callable[[str, str], None]
Post = Callable[..., Any]


@dataclass(frozen=True)
class Notice:
    """One transition of one model, as the engine saw it."""

    event: str
    model: str
    provider: str
    #: (code, detail) pairs: why it happened, in the plan's words
    reasons: tuple[tuple[str, str], ...]
    #: the spec fingerprint the transition concerns (with model and event: the once-only key)
    fingerprint: str
    commit: str | None
    time: datetime

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.fingerprint, self.event)


def notice(
    event: str,
    model: DesiredModel,
    reasons: Iterable[Reason],
    commit: str | None,
    now: datetime,
    fingerprint: str = "",
) -> Notice:
    """The notice of one transition of `model` (`fingerprint`: the spec's by default)."""
    return Notice(
        event=event,
        model=model.name,
        provider=model.provider,
        reasons=tuple((r.code, r.detail) for r in reasons),
        fingerprint=fingerprint or model.fingerprint,
        commit=commit,
        time=now,
    )


def hold_notices(plans: Iterable[ModelPlan], commit: str | None, now: datetime) -> list[Notice]:
    """The holds to tell of: retries exhausted, drift in warn mode (`warn-only`), a `budget` hold."""
    found = []
    for p in plans:
        if p.action is Action.HOLD:
            codes = {r.code for r in p.reasons}
            found += [
                notice(event, p.model, p.reasons, commit, now) for code, event in HOLD_EVENTS.items() if code in codes
            ]
    return found


def ended_notices(p: ModelPlan, commit: str | None, now: datetime) -> list[Notice]:
    """The trainings that observing saw end (`refresh`'s succeeded/failed events of `p`)."""
    found = []
    for ev in p.events:
        if ev.event == "succeeded":
            why = [Reason(code) for code in (p.record.reasons if p.record else [])]
            found.append(notice("training-succeeded", p.model, why, commit, now, ev.fingerprint))
        elif ev.event == "failed":
            why = [Reason("training-failed", str(ev.detail.get("message") or ""))]
            found.append(notice("training-failed", p.model, why, commit, now, ev.fingerprint))
    return found


#: Where the engine reports each transition: `Notifier.emit`, which never waits.
EventSink = Callable[[Notice], None]


class Announcer:
    """The engine's side: the notices of its transitions, handed to the sink (none: nothing)."""

    def __init__(self, sink: EventSink | None, commit: str | None, clock: Callable[[], datetime]) -> None:
        self.sink, self.commit, self.clock = sink, commit, clock

    def _tell(self, notices: Iterable[Notice]) -> None:
        if self.sink is not None:
            for n in notices:
                self.sink(n)

    def started(self, p: ModelPlan) -> None:
        """A train call the provider accepted."""
        self._tell([notice("training-started", p.model, p.reasons, self.commit, self.clock())])

    def refused(self, p: ModelPlan, exc: Exception) -> None:
        """A train call the provider refused for good: a failed attempt."""
        why = [Reason("training-failed", f"the provider refused the train call: {exc}")]
        self._tell([notice("training-failed", p.model, why, self.commit, self.clock())])

    def ended(self, p: ModelPlan) -> None:
        """The trainings observing saw end, once their record is stored."""
        self._tell(ended_notices(p, self.commit, self.clock()))

    def blast_radius(self, plans: Iterable[ModelPlan], would_start: int, limit: int) -> None:
        """`apply --max-trainings` refused the whole plan: each of `plans` (what it would have started) is held."""
        why = Reason(
            "max-trainings",
            f"this plan would start {would_start} trainings, more than --max-trainings {limit}; nothing was started",
        )
        now = self.clock()
        self._tell([notice("held", p.model, [*p.reasons, why], self.commit, now) for p in plans])

    def holds(self, plans: Iterable[ModelPlan]) -> None:
        """The holds to tell of: retries exhausted, drift in warn mode, a budget hold."""
        self._tell(hold_notices(plans, self.commit, self.clock()))


def slack_escape(text: str) -> str:
    """`&`, `<` and `>` as Slack's entities, so a Slack webhook shows the text as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def one_line(text: str) -> str:
    return " ".join(text.split())


def text_of(notice: Notice, redact: Callable[[str], str] = str) -> str:
    """The one line a Slack incoming webhook shows: what happened, why, and the commit. Masked
    before it is cut (half a key is still a secret) and before Slack's escapes (which would hide it)."""
    line = f"reconciler: {_PHRASES.get(notice.event, notice.event + ' for {model}').format(model=notice.model)}"
    line += f" ({notice.provider})"
    why = "; ".join(f"{code}: {detail}" if detail else code for code, detail in notice.reasons)
    if why:
        line += f" - {why}"
    if notice.commit:
        line += f" [commit {notice.commit[:12]}]"
    line = redact(one_line(line))
    if len(line) > MAX_TEXT:
        line = line[: MAX_TEXT - 3] + "..."
    return slack_escape(line)


def body_of(notice: Notice, redact: Callable[[str], str] = str) -> dict[str, Any]:
    """The JSON body (format_version 1); `redact` masks every key value in its texts."""
    return {
        "format_version": FORMAT_VERSION,
        "event": notice.event,
        "model": notice.model,
        "provider": notice.provider,
        "reasons": [{"code": code, "detail": redact(one_line(detail))} for code, detail in notice.reasons],
        "fingerprint": notice.fingerprint,
        "commit": notice.commit,
        "time": notice.time.isoformat().replace("+00:00", "Z"),
        "text": text_of(notice, redact),
    }


def _no_observer(event: str, result: str) -> None:
    """The default result observer: nothing is counted."""


class Notifier:
    """The background delivery of notices to the operator's endpoints (see the module docstring)."""

    def __init__(
        self,
        urls: Sequence[str],
        state: StateStore,
        *,
        redact: Callable[[str], str] = str,
        sleep: Sleep = asyncio.sleep,
        on_result: ResultObserver | None = None,
        queue_size: int = QUEUE_SIZE,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF_SECONDS,
        timeout: float = REQUEST_TIMEOUT,
        post: Post | None = None,
    ) -> None:
        """`sleep` waits out the backoff between attempts; `on_result` counts each outcome;
        `post` (tests) replaces `providers.http.post_json`."""
        self.urls = tuple(urls)
        self.state = state
        self.redact = redact
        self.sleep = sleep
        self.on_result = on_result or _no_observer
        self.queue_size = queue_size
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.timeout = timeout
        self._post = post
        self._queue: deque[Notice] = deque()
        self._ready = asyncio.Event()
        self._busy = False
        self._idle = asyncio.Event()
        self._idle.set()
        #: keys this process already handled: the same decision made again is not a new claim
        self._seen: set[tuple[str, str, str]] = set()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ the engine's side

    def emit(self, notice: Notice) -> None:
        """Queue a notice for delivery; never waits. Full queue: the oldest notice is dropped."""
        if notice.key in self._seen:
            return
        self._seen.add(notice.key)
        if len(self._queue) >= self.queue_size:
            dropped = self._queue.popleft()
            self._seen.discard(dropped.key)  # never claimed: a later run may still send it
            self.on_result(dropped.event, "dropped")
            log.warning(
                "notification queue full (%d waiting): dropped the oldest, %s of %s",
                self.queue_size,
                dropped.event,
                dropped.model,
            )
        self._queue.append(notice)
        self._idle.clear()
        self._ready.set()

    @property
    def pending(self) -> int:
        """Notices queued or being delivered."""
        return len(self._queue) + (1 if self._busy else 0)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Notifier:
        """Start the delivery task in the running event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="notifier")
        return self

    async def drain(self, timeout: float = DRAIN_SECONDS) -> bool:
        """Wait up to `timeout` seconds for every queued notice to be delivered; False (and a
        warning) when some were not, which are then given up."""
        if self.pending and self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        left = self.pending
        if left:
            log.warning(
                "%d notification(s) not delivered within %gs at exit; given up (the endpoint is slow or unreachable)",
                left,
                timeout,
            )
        return not left

    async def aclose(self, timeout: float = DRAIN_SECONDS) -> None:
        """Drain (bounded by `timeout`), then stop the delivery task."""
        await self.drain(timeout)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # ------------------------------------------------------------ delivery

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._busy = False
                self._idle.set()
                self._ready.clear()
                await self._ready.wait()
                continue
            notice = self._queue.popleft()
            self._busy = True
            try:
                await self._deliver(notice)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop later notifications
                log.exception("delivering the %s notification of %s failed", notice.event, notice.model)

    async def _deliver(self, notice: Notice) -> None:
        body = body_of(notice, self.redact)
        model, fingerprint, event = notice.key
        try:
            claimed = await self.state.claim_notification(model, fingerprint, event, body)
        except StateError as exc:
            # without a claim, sending could repeat what another writer sent: not sent now, and
            # not taken as handled, so this process's next pass over the same decision tries again
            self._seen.discard(notice.key)
            self.on_result(event, "failed")
            log.warning("%s notification of %s not sent: cannot claim it in the state: %s", event, model, exc)
            return
        if not claimed:
            self.on_result(event, "duplicate")
            log.debug("%s notification of %s already sent by another writer or run", event, model)
            return
        failures = []
        for i, url in enumerate(self.urls, 1):
            problem = await self._send(url, body)
            if problem:
                failures.append(f"endpoint {i} of {len(self.urls)}: {problem}")
        result = "failed" if failures else "sent"
        detail = "; ".join(failures)
        self.on_result(event, result)
        if failures:
            log.warning("%s notification of %s not delivered: %s", event, model, detail)
        try:
            await self.state.notification_result(model, fingerprint, event, result, detail)
        except StateError as exc:
            log.warning("cannot record the delivery of the %s notification of %s: %s", event, model, exc)

    async def _send(self, url: str, body: dict[str, Any]) -> str:
        """POST with retries (5xx, 408, 429 and network errors); '' when delivered, else why not."""
        post = self._post
        if post is None:
            from reconciler.providers.http import post_json

            post = post_json
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                await self.sleep(self.backoff * 2 ** (attempt - 1))
            outcome = await post(url, body, timeout=self.timeout)
            if outcome.ok:
                return ""
            problem = outcome.error
            retryable = outcome.status is None or outcome.status >= 500 or outcome.status in (408, 429)
            if not retryable or outcome.refused:
                break
        return f"{problem} after {attempt + 1} attempt(s)"
