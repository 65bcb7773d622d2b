"""One report per command: it is told what happened, writes the output and decides the exit code.

The CLI gathers data (manifests, plans, apply results) and hands it over; the `--output` format
only picks the renderer, so no command branches on it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, TextIO

from reconciler.report import exits, renderer
from reconciler.report.base import ApplyRun, Console
from reconciler.report.failures import problem_lines
from reconciler.report.github import (
    Annotation,
    GitHub,
    annotation_lines,
    append_summary,
    plan_annotations,
    problem_annotations,
)
from reconciler.report.text import (
    adopted_by_hand_line,
    adopted_line,
    forgotten_line,
    fresh_state_warning,
    no_history_line,
    not_succeeded_line,
    outcome_line,
    refused_line,
    renamed_line,
    retried_line,
)
from reconciler.report.views import by_name, status_entry

if TYPE_CHECKING:
    from reconciler.domain import HistoryEvent, ModelRecord
    from reconciler.errors import ReconcilerError
    from reconciler.orphans import Orphan
    from reconciler.outcomes import ApplyResult, TriggerOutcome
    from reconciler.plan import ModelPlan
    from reconciler.report.progress import Progress
    from reconciler.slots import Tick, WaitResult
    from reconciler.state_commands import Edited


class Report:
    """What every command's report has: the renderer of `--output` and where to write."""

    def __init__(self, output: str = "text", console: Console | None = None, github: GitHub | None = None) -> None:
        self.renderer = renderer(output)
        self.console = console or Console()
        self.github = github or GitHub()

    def annotate(self, annotations: Sequence[Annotation]) -> None:
        """Under GitHub Actions (or `--annotations github`): errors and warnings as workflow commands."""
        if self.github.annotations:
            for line in annotation_lines(annotations, self.github.workspace):
                self.console.err(line)

    def invalid(self, exc: ReconcilerError) -> None:
        """Bad manifests or a failed run: annotate its problems (`main()` still reports them)."""
        from reconciler.errors import ManifestError

        if isinstance(exc, ManifestError):
            self.annotate(problem_annotations(exc.problems))
        else:
            self.annotate([Annotation("error", str(exc))])

    def summarize(self, markdown: str) -> None:
        """Append to $GITHUB_STEP_SUMMARY when it is set."""
        if self.github.step_summary is not None:
            append_summary(self.github.step_summary, markdown)

    def _out(self, text: str | None) -> None:
        if text is not None:
            self.console.out(text)

    def notices(self, lines: Sequence[str]) -> None:
        """What the manifests do that the operator should know (a Provider replacing a type's defaults)."""
        for line in lines:
            self.console.err(line)

    def _failed(self, exc: ReconcilerError, document: Callable[[Sequence[str]], str | None]) -> int:
        problems = problem_lines(exc)
        doc = document(problems)
        if doc is None:
            raise exc
        self.console.out(doc)
        for line in problems:
            self.console.err(line)
        return exits.FAILED

    def orphans(self, orphans: Sequence[Orphan]) -> None:
        """The records no manifest declares, for the documents that list them after the models."""
        self.renderer.extras = dataclasses.replace(self.renderer.extras, orphans=[o.entry() for o in orphans])

    def state_opened(self, url: str, created: bool, env: Mapping[str, str] | None = None) -> None:
        """Warn on CI when this run created the state: an ephemeral runner forgets it."""
        env = os.environ if env is None else env
        if created and env.get("CI"):
            self.console.err(fresh_state_warning(url))


class ValidateReport(Report):
    """`validate`: invalid manifests never get here (ManifestError: see `failures`)."""

    def valid(self, models: Collection[str], providers: Collection[str]) -> int:
        """The manifests are valid: say what they declare."""
        self._out(self.renderer.validate(models, providers))
        return exits.OK


class PlanReport(Report):
    """`plan`: the plan, exit 0/2/1."""

    def planned(
        self, plans: Sequence[ModelPlan], orphans: Sequence[Orphan] = (), *, max_trainings: int | None = None
    ) -> int:
        """Show the plan (and, when it would start more than `max_trainings`, that apply would refuse),
        then the orphans (they never change the exit code); its exit code."""
        from reconciler.budget import refused_by_blast_radius
        from reconciler.report.markdown import render_markdown

        self.orphans(orphans)
        refusal = refused_by_blast_radius(plans, max_trainings)
        if refusal is not None:
            self.renderer.extras = dataclasses.replace(self.renderer.extras, max_trainings=refusal.as_json())
        self._out(self.renderer.plan(plans))
        self.annotate(plan_annotations(plans))
        if self.github.step_summary is not None:
            self.summarize(render_markdown(plans, self.renderer.extras))
        return exits.plan_exit_code(plans)

    def failed(self, exc: ReconcilerError) -> int:
        """No plan could be made. A format with an error document prints it (and the problems on
        stderr) and exits 1; otherwise the error is re-raised for `main()` to report."""
        from reconciler.report.markdown import render_failed_markdown

        problems = problem_lines(exc)
        self.invalid(exc)
        if self.github.step_summary is not None:
            self.summarize(render_failed_markdown(problems))
        doc = self.renderer.plan_failed(problems)
        if doc is None:
            raise exc
        self.console.out(doc)
        for line in problems:
            self.console.err(line)
        return exits.FAILED


class ApplyReport(Report):
    """`apply`: the plan first, each trigger's outcome as it comes, `--wait` progress, the result."""

    def __init__(
        self,
        output: str = "text",
        console: Console | None = None,
        *,
        wait: bool = False,
        github: GitHub | None = None,
        terminal: TextIO | None = None,
        width: int = 80,
    ) -> None:
        super().__init__(output, console, github)
        self.wait = wait
        self.plans: list[ModelPlan] = []
        self.result: ApplyResult | None = None
        self.final: dict[str, ModelRecord | None] = {}
        self.followed_records: list[ModelRecord | None] = []
        # only apply shows progress: validate, plan and status start without loading it
        from reconciler.report.progress import Lines, LiveTable

        #: `--wait` progress: a live table on `terminal` (a TTY outside CI), else lines on stderr
        self.view: Progress = LiveTable(terminal, width) if terminal is not None else Lines(self.console.err)
        self._said: set[str] = set()

    def planned(self, plans: Sequence[ModelPlan]) -> None:
        """The plan about to be applied."""
        self.plans = list(plans)
        self._out(self.renderer.apply_planned(plans))

    def applied(self, result: ApplyResult) -> None:
        """The triggers are done: say what each did, and which models were adopted."""
        self.result = result
        if result.refused is not None:  # `apply --max-trainings`: nothing was started
            self.renderer.extras = dataclasses.replace(self.renderer.extras, max_trainings=result.refused.as_json())
            self.console.err(refused_line(result.refused))
            self.annotate([Annotation("error", refused_line(result.refused))])
        self.annotate(plan_annotations(self.plans))
        for name, o in sorted(result.outcomes.items()):
            self.console.err(outcome_line(name, o))
        for name in result.adopted:
            self.console.err(adopted_line(name))

    def ticks(self, ticks: Sequence[Tick]) -> None:
        """`slots.wait_for_all`'s listener: where every model in play is, once per round."""
        self.view.ticks(ticks)

    def started(self, outcome: TriggerOutcome) -> None:
        """`slots.wait_for_all`'s listener: a held model's trigger, made as a slot freed."""
        self._said.add(outcome.name)
        self.view.note(outcome_line(outcome.name, outcome))

    def waited(self, waited: WaitResult) -> None:
        """`--wait` is over: the outcomes of the models started (or never started) while waiting,
        then the followed trainings that did not succeed."""
        self.view.close()
        if self.result is not None:
            self.result.outcomes.update(waited.outcomes)
        for name, o in sorted(waited.outcomes.items()):
            if name not in self._said:
                self.console.err(outcome_line(name, o))
        self.followed(waited.followed, waited.final)

    def followed(self, names: Sequence[str], final: Mapping[str, ModelRecord | None]) -> None:
        """The followed trainings are over (or the timeout came): name those that did not succeed."""
        self.final = dict(final)
        for name in names:
            record = final.get(name)
            self.followed_records.append(record)
            if not exits.succeeded(record):
                self.console.err(not_succeeded_line(name, record))

    def finish(self) -> int:
        """Print the result document (formats that have one); the exit code."""
        from reconciler.report.markdown import render_apply_markdown

        outcomes = self.result.outcomes if self.result is not None else {}
        if self.github.step_summary is not None:
            self.summarize(render_apply_markdown(self.plans, outcomes, self.renderer.extras))
        self._out(self.renderer.applied(ApplyRun(self.plans, outcomes, self.final if self.wait else None)))
        refused = self.result is not None and self.result.refused is not None
        return exits.apply_exit_code(self.plans, outcomes.values(), self.followed_records, refused=refused)


class StatusReport(Report):
    """`status`: every model's provider state, last training and next action."""

    def shown(self, plans: Sequence[ModelPlan], orphans: Sequence[Orphan] = ()) -> int:
        """Show the models, then the orphans; exit 1 when any model could not be observed."""
        self.orphans(orphans)
        self._out(self.renderer.status([status_entry(p) for p in by_name(plans)]))
        return exits.status_exit_code(plans)

    def failed(self, exc: ReconcilerError) -> int:
        """No status could be made: as `PlanReport.failed` (JSON prints a document with `errors`)."""
        return self._failed(exc, self.renderer.status_failed)


class HistoryReport(Report):
    """`history NAME`: that model's recorded events."""

    def shown(self, name: str, events: Sequence[HistoryEvent]) -> int:
        """Show the events; exit 1 when the format has nothing to show."""
        doc = self.renderer.history(name, events)
        if doc is None:
            self.console.err(no_history_line(name))
            return exits.FAILED
        self.console.out(doc)
        return exits.OK


class AdoptReport(Report):
    """`adopt NAME`: refusals are `Failure`s (see `failures`)."""

    def adopted(self, name: str) -> int:
        """The provider's model of `name` is now recorded as matching its spec."""
        self.console.out(adopted_by_hand_line(name))
        return exits.OK


class StateEditReport(Report):
    """`rename`, `forget`, `retry`: one line on stdout, a warning on stderr; refusals are
    `RefusedError`s, reported by `main()` (exit 1)."""

    def _done(self, line: str, edited: Edited) -> int:
        self.console.out(line)
        if edited.warning:
            self.console.err(f"warning: {edited.record.name}: {edited.warning}")
        return exits.OK

    def renamed(self, old: str, new: str, edited: Edited) -> int:
        """OLD's record and history are NEW's now."""
        return self._done(renamed_line(old, new, edited.moved_events), edited)

    def forgotten(self, name: str, edited: Edited) -> int:
        """The orphan's record is dropped."""
        return self._done(forgotten_line(name), edited)

    def retried(self, name: str, edited: Edited) -> int:
        """The model's retries are re-armed."""
        return self._done(retried_line(name, edited.before.attempts if edited.before else 0), edited)
