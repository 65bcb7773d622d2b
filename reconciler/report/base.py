"""What every output format implements (`Renderer`) and where reports write (`Console`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from reconciler.domain import HistoryEvent, ModelRecord
    from reconciler.outcomes import TriggerOutcome
    from reconciler.plan import ModelPlan


class Console:
    """Where reports write: the document on stdout, everything said along the way on stderr.

    Tests pass a subclass that keeps the lines; `click.echo` ends each text with a newline.
    """

    def out(self, text: str) -> None:
        """Write to stdout."""
        click.echo(text)

    def err(self, text: str) -> None:
        """Write to stderr."""
        click.echo(text, err=True)


@dataclass
class ApplyRun:
    """What one `apply` did: its plans, the triggers' outcomes, and with --wait how trainings ended."""

    plans: Sequence[ModelPlan]
    outcomes: Mapping[str, TriggerOutcome]
    #: None without --wait; else every followed model's final record
    final: Mapping[str, ModelRecord | None] | None = None


@dataclass(frozen=True)
class PlanExtras:
    """Optional parts of the plan view, filled in by the commands that know them; empty: not shown."""

    #: records whose model is in no manifest, as plan JSON's `orphans` entries (name, provider,
    #: last_training, status, rename_to, command: `Orphan.entry`)
    orphans: Sequence[Mapping[str, Any]] = ()
    #: the blast radius when apply would refuse: `{"would_start": 25, "limit": 20}`
    max_trainings: Mapping[str, int] | None = None


class Renderer(ABC):
    """One output format (`--output NAME`): one method per document a command prints on stdout.

    Exit codes and stderr lines do not depend on the format (see `exits` and `text`), so a new
    format (Markdown, GitHub annotations) is one subclass, registered in `reconciler.report`.
    A method returning None prints nothing on stdout.
    """

    #: the optional parts of the plan view (orphans, blast radius) for the formats that show them
    extras: PlanExtras = PlanExtras()

    @abstractmethod
    def validate(self, models: Collection[str], providers: Collection[str]) -> str:
        """Valid manifests: the names of their models and providers."""

    @abstractmethod
    def plan(self, plans: Sequence[ModelPlan]) -> str:
        """The plan: every model's action, reasons and changes."""

    @abstractmethod
    def plan_failed(self, problems: Sequence[str]) -> str | None:
        """A plan that could not be made; None leaves the error to `main()` (stderr only)."""

    @abstractmethod
    def apply_planned(self, plans: Sequence[ModelPlan]) -> str | None:
        """What `apply` is about to do, shown before anything is triggered."""

    @abstractmethod
    def applied(self, run: ApplyRun) -> str | None:
        """What `apply` did, once it is over."""

    @abstractmethod
    def status(self, entries: Sequence[dict[str, Any]]) -> str:
        """Every model's state (entries from `views.status_entry`)."""

    def status_failed(self, problems: Sequence[str]) -> str | None:
        """A status that could not be shown; None leaves the error to `main()` (stderr only)."""
        return None

    @abstractmethod
    def history(self, name: str, events: Sequence[HistoryEvent]) -> str | None:
        """One model's events, oldest first; None when this format has nothing to show."""
