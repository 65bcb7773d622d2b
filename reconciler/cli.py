"""`reconciler` command line: click commands that parse flags, gather data and hand it to a report.

Data comes from `reconciler.runtime` (manifests, state, engine); everything printed and every
exit code is decided in `reconciler.report` (see its docstring). Heavy modules (pydantic models,
httpx, the engine, the renderers) are imported inside commands, so `--help` is fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from reconciler import __version__, runtime
from reconciler.report import formats

if TYPE_CHECKING:
    from reconciler.domain import DesiredModel
    from reconciler.engine import Engine
    from reconciler.orphans import Orphan
    from reconciler.seams import Seams
    from reconciler.selectors import Requirement
    from reconciler.state_commands import Edited

T = TypeVar("T")


def _seams() -> Seams | None:
    """The seams `main(argv, seams=...)` was given (a test or a wrapper script), else None."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj  # type: ignore[no-any-return]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio  # here, not at the top: `validate` and `--version` never need it (start-up time)

    return asyncio.run(coro)


def _selector(values: Sequence[str]) -> list[Requirement]:
    from reconciler.selectors import SelectorError, parse_selectors

    try:
        return parse_selectors(values)
    except SelectorError as exc:
        raise click.BadParameter(str(exc), param_hint="--selector") from None


# ---------------------------------------------------------------- shared options

_paths = click.argument("paths", nargs=-1, type=click.Path())
_state = click.option("--state", "state", envvar="RECONCILER_STATE", help="sqlite:///path.db or postgresql://...")
_output = click.option("--output", "-o", type=click.Choice(formats("")), default="text", show_default=True)
_plan_output = click.option("--output", "-o", type=click.Choice(formats("plan")), default="text", show_default=True)
_annotations = click.option(
    "--annotations",
    type=click.Choice(["github", "none"]),
    default=None,
    help="problems and errors as GitHub workflow commands (default: github when GITHUB_ACTIONS=true)",
)
_targets = click.option("--target", "targets", multiple=True, metavar="NAME", help="only these models (repeatable)")
_selectors = click.option(
    "--selector",
    "-l",
    "selectors",
    multiple=True,
    metavar="SELECTOR",
    help="only models whose labels match (kubectl's grammar: a=b,c!=d, 'k in (x,y)', !k; repeated: all must match)",
)
_max_trainings = click.option(
    "--max-trainings",
    "max_trainings",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="apply starts nothing when the plan would start more than N trainings "
    "[default: RECONCILER_MAX_TRAININGS, else 20]",
)
_sandbox = click.option("--sandbox", is_flag=True, help="use in-process simulators of the providers (no keys needed)")
# Kept so that existing scripts do not break: many writers share a state without a lock now
# (compare-and-set on each record), so apply and adopt never wait; the value is checked, then ignored.
_lock_timeout = click.option(
    "--lock-timeout",
    default="60s",
    show_default=True,
    help="ignored: apply and adopt never wait for another writer (kept for existing scripts)",
)


def _duration(text: str, name: str) -> timedelta:
    from reconciler.values import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


class LazyGroup(click.Group):
    """A group whose heavy commands are imported only when run or listed (`module:attribute`)."""

    lazy = {"daemon": "reconciler.daemon.command:daemon"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            import importlib

            module, _, attribute = self.lazy[cmd_name].partition(":")
            command: click.Command = getattr(importlib.import_module(module), attribute)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
# the version from the package, not its installed metadata: reading that loads importlib.metadata
# and scans every installed distribution (start-up time); a test checks that both agree
@click.version_option(__version__, package_name=runtime.DISTRIBUTION)
@click.option("-v", "--verbose", count=True, help="more log lines on stderr")
def cli(verbose: int) -> None:
    """Keep hosted model trainings in the state your YAML manifests declare."""
    import logging

    from reconciler.logs import NOISY_LOGGERS, RedactingFormatter

    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    # every line is masked for the values of the key variables (httpx and exception texts may
    # quote a URL with ?api_key=); the request loggers stay quiet even at -vv for the same reason
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"), runtime.redactor())
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, level))


@cli.command()
@_paths
@_output
@_annotations
def validate(paths: tuple[str, ...], output: str, annotations: str | None) -> None:
    """Check manifests offline: exit 0 valid, 1 invalid (each problem as file:line:col)."""
    from reconciler.errors import ManifestError
    from reconciler.report.commands import ValidateReport

    report = ValidateReport(output, github=runtime.github(annotations))
    try:
        manifests = runtime.load(paths)
    except ManifestError as exc:
        report.invalid(exc)
        raise  # main() reports the problems
    report.notices(manifests.notices)
    sys.exit(report.valid(manifests.models, manifests.providers))


@cli.command()
@_paths
@_targets
@_selectors
@_plan_output
@_state
@_sandbox
@_max_trainings
@_annotations
def plan(
    paths: tuple[str, ...],
    targets: tuple[str, ...],
    selectors: tuple[str, ...],
    output: str,
    state: str | None,
    sandbox: bool,
    max_trainings: int | None,
    annotations: str | None,
) -> None:
    """Show what apply would do: exit 0 nothing to do, 2 would train, 1 error."""
    from reconciler.errors import ReconcilerError
    from reconciler.report.commands import PlanReport

    url = runtime.state_url(state)
    selector = _selector(selectors)
    report = PlanReport(output, github=runtime.github(annotations))

    async def run() -> int:
        try:
            limit = runtime.max_trainings(max_trainings)
            async with runtime.session(paths, url, sandbox, _seams()) as (manifests, engine):
                report.notices(manifests.notices)
                models = manifests.select(targets, selector)
                plans = await engine.plan(models)
                orphans = await _orphans(engine, models, filtered=bool(targets or selector))
                report.state_opened(engine.state.url, engine.state.created)
        except ReconcilerError as exc:
            return report.failed(exc)
        return report.planned(plans, orphans, max_trainings=limit)

    sys.exit(_run(run()))


@cli.command()
@_paths
@_targets
@_selectors
@_output
@_state
@_sandbox
@_lock_timeout
@_max_trainings
@click.option("--wait", is_flag=True, help="follow the started trainings until they end")
@click.option("--timeout", "timeout", default=None, help="with --wait: give up after this long (e.g. 2h)")
@_annotations
def apply(
    paths: tuple[str, ...],
    targets: tuple[str, ...],
    selectors: tuple[str, ...],
    output: str,
    state: str | None,
    sandbox: bool,
    lock_timeout: str,
    max_trainings: int | None,
    wait: bool,
    timeout: str | None,
    annotations: str | None,
) -> None:
    """Trigger what plan shows as train/retry. Exit 0 when all started (with --wait: succeeded);
    nothing starts when more than --max-trainings would.

    With --wait, a model held at a provider's max_concurrent_trainings starts as a slot frees
    (and counts towards --max-trainings)."""
    from reconciler.errors import ReconcilerError
    from reconciler.report.commands import ApplyReport

    url = runtime.state_url(state)
    selector = _selector(selectors)
    _duration(lock_timeout, "--lock-timeout")  # accepted, ignored: no lock to wait for
    wait_timeout = _duration(timeout, "--timeout") if timeout else None
    terminal = runtime.live_terminal(sys.stderr) if wait else None
    report = ApplyReport(
        output, wait=wait, github=runtime.github(annotations), terminal=terminal, width=runtime.terminal_width()
    )

    async def run() -> int:
        try:
            return await applied()
        except ReconcilerError as exc:
            report.invalid(exc)
            raise  # main() reports it

    async def applied() -> int:
        limit = runtime.max_trainings(max_trainings)
        async with runtime.session(paths, url, sandbox, _seams(), notify=True) as (manifests, engine):
            models = manifests.select(targets, selector)
            plans = await engine.plan(models)
            report.planned(plans)
            if not wait:
                report.applied(await engine.apply(plans, max_trainings=limit))
                return report.finish()
            from reconciler import slots

            # the held models it starts as slots free count towards --max-trainings too
            result = await engine.apply(plans, max_trainings=limit, also_starts=slots.waits_for_slot)
            report.applied(result)
            report.waited(await slots.wait_for_all(engine, plans, result, timeout=wait_timeout, listener=report))
            return report.finish()

    sys.exit(_run(run()))


@cli.command()
@_paths
@_targets
@_selectors
@_output
@_state
@_sandbox
def status(
    paths: tuple[str, ...],
    targets: tuple[str, ...],
    selectors: tuple[str, ...],
    output: str,
    state: str | None,
    sandbox: bool,
) -> None:
    """Every model's provider state, last training and next action."""
    from reconciler.errors import ReconcilerError
    from reconciler.report.commands import StatusReport

    url = runtime.state_url(state)
    selector = _selector(selectors)
    report = StatusReport(output)

    async def run() -> int:
        try:
            async with runtime.session(paths, url, sandbox, _seams()) as (manifests, engine):
                models = manifests.select(targets, selector)
                plans = await engine.plan(models)
                orphans = await _orphans(engine, models, filtered=bool(targets or selector))
        except ReconcilerError as exc:
            return report.failed(exc)
        return report.shown(plans, orphans)

    sys.exit(_run(run()))


@cli.command()
@click.argument("name")
@_output
@_state
def history(name: str, output: str, state: str | None) -> None:
    """That model's recorded events, oldest first."""
    from reconciler.report.commands import HistoryReport
    from reconciler.state import open_state

    async def run() -> int:
        st = await open_state(runtime.state_url(state))
        try:
            events = await st.history(name)
        finally:
            await st.close()
        return HistoryReport(output).shown(name, events)

    sys.exit(_run(run()))


@cli.command()
@click.argument("name")
@_paths
@_state
@_sandbox
@_lock_timeout
def adopt(name: str, paths: tuple[str, ...], state: str | None, sandbox: bool, lock_timeout: str) -> None:
    """Record the provider's current model of NAME as matching its spec (unknown-baseline)."""
    from reconciler.domain import TrainingStatus
    from reconciler.errors import ProviderError
    from reconciler.report.commands import AdoptReport
    from reconciler.report.failures import Failure

    url = runtime.state_url(state)
    _duration(lock_timeout, "--lock-timeout")  # accepted, ignored: adopt writes by compare-and-set

    async def run() -> int:
        async with runtime.session(paths, url, sandbox, _seams()) as (manifests, engine):
            model = manifests.model(name)
            record = await engine.state.get(name)  # read before observing: the version adopt sets on
            obs = (await engine.observe([model], {name: record} if record else {}))[name]
            if isinstance(obs, ProviderError):
                raise Failure(f"cannot adopt {name}: {obs}")
            if obs.status is not TrainingStatus.SUCCEEDED:
                raise Failure(f"cannot adopt {name}: the provider shows no trained model ({obs.status.value})")
            expected = record.version if record else None
            if await engine.adopt(model, obs, reason="adopted-by-hand", expected_version=expected) is None:
                raise Failure(f"cannot adopt {name}: another writer changed its record meanwhile; look again and retry")
            return AdoptReport().adopted(name)

    sys.exit(_run(run()))


# ---------------------------------------------------------------- orphans, renames, retries


async def _orphans(engine: Engine, models: Sequence[DesiredModel], *, filtered: bool) -> list[Orphan]:
    """The records no manifest declares; with --target/--selector only those renamed to a selected model."""
    from reconciler.state_commands import read_orphans

    return await read_orphans(engine.state, engine.manifests.models, models if filtered else None)


def _edit_state(
    paths: tuple[str, ...], state: str | None, edit: Callable[..., Awaitable[Edited]], *names: str
) -> Edited:
    """Run one of `state_commands` on the manifests under `paths` and the state (no engine)."""

    async def run() -> Edited:
        async with runtime.state_session(paths, runtime.state_url(state)) as (manifests, st, commit):
            return await edit(st, manifests.models, *names, git_commit=commit)

    return _run(run())


@cli.command()
@click.argument("old")
@click.argument("new")
@_paths
@_state
def rename(old: str, new: str, paths: tuple[str, ...], state: str | None) -> None:
    """Move OLD's record and history to NEW, a model renamed in its manifest (as `terraform state mv`).

    Refused when OLD has no record or is still declared, when no manifest declares NEW, when NEW
    has a record, or when NEW points at another provider model. Nothing is sent to a provider."""
    from reconciler.report.commands import StateEditReport
    from reconciler.state_commands import rename as move

    sys.exit(StateEditReport().renamed(old, new, _edit_state(paths, state, move, old, new)))


@cli.command()
@click.argument("name")
@_paths
@_state
def forget(name: str, paths: tuple[str, ...], state: str | None) -> None:
    """Drop the record of NAME, a model no manifest declares (an orphan); its history stays and
    nothing is deleted at the provider. Refused for a model the manifests still declare."""
    from reconciler.report.commands import StateEditReport
    from reconciler.state_commands import forget as drop

    sys.exit(StateEditReport().forgotten(name, _edit_state(paths, state, drop, name)))


@cli.command()
@click.argument("name")
@_paths
@_state
def retry(name: str, paths: tuple[str, ...], state: str | None) -> None:
    """Re-arm NAME, whose failed trainings reached policy.max_retries: its attempts reset, so the
    next plan shows retry. Refused when its retries are not exhausted."""
    from reconciler.report.commands import StateEditReport
    from reconciler.state_commands import retry as rearm

    sys.exit(StateEditReport().retried(name, _edit_state(paths, state, rearm, name)))


@cli.command()
@click.option("--port", default=0, type=int, help="port on 127.0.0.1 (0 picks a free one)")
@click.option(
    "--dir",
    "directory",
    default=".reconciler/sandbox",
    show_default=True,
    type=click.Path(),
    help="where the simulated providers keep their world",
)
@click.option(
    "--training-seconds",
    default=None,
    type=click.FloatRange(min=0),
    help=f"how long a simulated training takes [default: ${runtime.SANDBOX_TRAINING_SECONDS_ENV} or 3]",
)
@click.option("--latency", default=0.0, show_default=True, type=float, help="seconds added to every request")
def sandbox(port: int, directory: str, training_seconds: float | None, latency: float) -> None:
    """Run simulators of all five provider APIs on 127.0.0.1 until interrupted; print the
    `export` lines that point reconciler at them (and poll them every 0.5 s)."""
    import signal
    import threading

    from reconciler.sandbox.server import Sandbox

    seconds = runtime.sandbox_training_seconds(training_seconds)
    # before the exports: whoever read them may stop us at once
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sb = Sandbox(Path(directory), port=port, training_seconds=seconds, latency=latency).start()
    try:
        for k, v in runtime.sandbox_exports(sb).items():
            click.echo(f"export {k}={v}")
        control = f"{sb.url}/_sandbox"
        click.echo(
            f"# request log: {control}/requests; faults: POST/GET/DELETE {control}/faults "
            "(DELETE also clears pending fail-next trainings)",
            err=True,
        )
        sys.stdout.flush()
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sb.stop()


@cli.command()
@_paths
def schema(paths: tuple[str, ...]) -> None:
    """Print the JSON Schema of manifests (for yaml-language-server and editors); Provider manifests
    under PATHS give their names their type's model/training fields."""
    from reconciler.report.json import dumps
    from reconciler.schema import json_schema

    click.echo(dumps(json_schema(paths)))


def main(argv: Sequence[str] | None = None, *, seams: Seams | None = None) -> None:
    """Entry point: every failure is reported with a message naming what to fix (see report.failures).

    `seams` (tests, wrapper scripts) replace the engine's clock, backoff sleep, HTTP transport,
    request observers and trigger-step hook for the commands that build one.
    """
    from reconciler.report.failures import STOPS, report_failure

    # no pydantic plugins (entry points) in this process: looking them up scans every installed
    # distribution at the first schema (start-up time); setting the variable turns them back on
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        # click hands `obj` to every command's context: how `_seams()` finds it
        cli.main(args=list(argv) if argv is not None else None, standalone_mode=False, obj=seams)
    except STOPS as exc:
        sys.exit(report_failure(exc))


if __name__ == "__main__":
    main()
