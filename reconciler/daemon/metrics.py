"""The daemon's Prometheus metrics, in a registry of its own.

Gauges that describe the daemon's state (models by planned action, queue depth, manifest errors)
are computed when scraped, from the same objects `/status` reads, so the two never disagree.
Counters and histograms are events, counted as they happen.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from reconciler.plan import ModelPlan

RECONCILE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ModelsCollector:
    """`reconciler_models`: the daemon's current plans counted by provider and action at scrape time."""

    name = "reconciler_models"
    documentation = "Models by provider and planned action."

    def __init__(self, plans: Callable[[], Iterable[ModelPlan]]) -> None:
        self.plans = plans

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=["provider", "action"])

    def describe(self) -> Iterable[Metric]:
        """The metric's name for the registry, without reading any plan."""
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        """One sample per (provider, action) that at least one current plan has."""
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for p in self.plans():
            counts[(p.model.provider, p.action.value)] += 1
        family = self._family()
        for (provider, action), n in counts.items():
            family.add_metric([provider, action], n)
        return [family]


class Metrics:
    """The daemon's metrics. `plans`, `queue_depth`, `manifest_errors` and `leader` are read at scrape time."""

    def __init__(
        self,
        plans: Callable[[], Iterable[ModelPlan]] = list,
        queue_depth: Callable[[], float] = lambda: 0,
        manifest_errors: Callable[[], float] = lambda: 0,
        leader: Callable[[], float] = lambda: 0,
    ) -> None:
        # `_created` series double the output and no dashboard uses them
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry = CollectorRegistry()
        r.register(ModelsCollector(plans))
        self.trainings = Counter(
            "reconciler_trainings_triggered",
            "Train calls by provider and outcome (started, unconfirmed, not-started).",
            ["provider", "outcome"],
            registry=r,
        )
        self.finished = Counter(
            "reconciler_trainings_finished",
            "Trainings seen ending, by provider and status.",
            ["provider", "status"],
            registry=r,
        )
        self.requests = Counter(
            "reconciler_provider_requests",
            "HTTP requests to providers by provider, method and status (HTTP code or transport error).",
            ["provider", "method", "status"],
            registry=r,
        )
        self.errors = Counter(
            "reconciler_provider_errors",
            "Provider requests that failed (non-2xx or transport error) by provider and status.",
            ["provider", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "reconciler_provider_request_duration_seconds", "Provider request latency.", ["provider"], registry=r
        )
        self.reconcile_seconds = Histogram(
            "reconciler_reconcile_duration_seconds",
            "Duration of one reconcile batch (observe, plan, apply) by what triggered it.",
            ["trigger"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("reconciler_queue_depth", "Models waiting to be reconciled.", registry=r)
        self.queue_depth.set_function(queue_depth)
        self.manifest_errors = Gauge(
            "reconciler_manifest_errors",
            "Problems in the manifests (their files' last good version is used).",
            registry=r,
        )
        self.manifest_errors.set_function(manifest_errors)
        self.webhooks = Counter(
            "reconciler_webhooks", "Webhook calls by hook and result.", ["hook", "result"], registry=r
        )
        self.last_resync = Gauge(
            "reconciler_last_resync_timestamp_seconds",
            "When the last full resync (or the startup one) was queued (Unix time).",
            registry=r,
        )
        self.ready = Gauge("reconciler_ready", "1 when /readyz would answer 200.", registry=r)
        self.leader = Gauge(
            "reconciler_leader", "1 while this daemon holds the leader lease (it alone triggers and polls).", registry=r
        )
        self.leader.set_function(leader)
        self.notifications = Counter(
            "reconciler_notifications",
            "Notifications by event and result (sent, failed, dropped: queue full, duplicate: sent before).",
            ["event", "result"],
            registry=r,
        )

    def on_notification(self, event: str, result: str) -> None:
        """Result observer of the notifier: one notification's outcome."""
        self.notifications.labels(event, result).inc()

    def on_request(self, provider: str, method: str, outcome: str, seconds: float) -> None:
        """Request observer (the engine's seams): called after every provider HTTP exchange."""
        self.requests.labels(provider, method, outcome).inc()
        self.request_seconds.labels(provider).observe(seconds)
        if not (outcome.isdigit() and 200 <= int(outcome) < 300):
            self.errors.labels(provider, outcome).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return bytes(generate_latest(self.registry))
