"""`reconciler` command line: a thin shell over spec, plan and engine.

Exit codes (design.md): validate 0/1; plan 0 nothing to do, 2 would train, 1 error; apply 0/1;
a usage error is 1, never 2 (so `plan`'s 2 always means "would train").
Heavy modules (pydantic models, httpx, the engine) are imported inside commands, so `--help` is fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from reconciler import runtime

if TYPE_CHECKING:
    from reconciler.plan import ModelPlan
    from reconciler.seams import Seams
    from reconciler.state.base import StateStore

T = TypeVar("T")


def _err(msg: str) -> None:
    click.echo(msg, err=True)


class Failure(Exception):
    """Stop the command with this message on stderr and exit code 1."""


def _seams() -> Seams | None:
    """The seams `main(argv, seams=...)` was given (a test or a wrapper script), else None."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj  # type: ignore[no-any-return]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _selector(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise click.BadParameter(f"{v!r}: write key=value", param_hint="--selector")
        k, _, val = v.partition("=")
        out[k.strip()] = val.strip()
    return out


# ---------------------------------------------------------------- rendering


def _fmt_value(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True)


def render_plan(plans: Sequence[ModelPlan]) -> str:
    """One line per model, grouped by action; changed fields as `epochs: 100 -> 150`."""
    from reconciler.plan import ACTION_ORDER, Action, summarize

    lines = []
    for action in ACTION_ORDER:
        group = [p for p in plans if p.action is action]
        if not group:
            continue
        lines.append(f"{action.value} ({len(group)}):")
        width = max(len(p.name) for p in group)
        for p in sorted(group, key=lambda p: p.name):
            codes = ", ".join(dict.fromkeys(r.code for r in p.reasons)) or "in sync"
            extra = ""
            if p.changes:
                extra = "  " + "; ".join(
                    f"{c.path.removeprefix('training.')}: {_fmt_value(c.before)} -> {_fmt_value(c.after)}"
                    for c in p.changes
                )
            elif p.reasons and p.action is not Action.NONE:
                details = [r.detail for r in p.reasons if r.detail]
                if details:
                    extra = "  " + details[0]
            lines.append(f"  {p.name:<{width}}  {p.model.provider:<10} {codes}{extra}")
    summary = summarize(plans)
    total = ", ".join(f"{summary[a.value]} {a.value}" for a in ACTION_ORDER if a.value in summary)
    lines.append(f"Plan: {total or 'no models'}.")
    return "\n".join(lines)


def plan_json(plans: Sequence[ModelPlan]) -> dict[str, Any]:
    from reconciler.plan import summarize

    return {
        "format_version": 1,
        "models": [p.to_json() for p in sorted(plans, key=lambda p: p.name)],
        "summary": summarize(plans),
    }


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def _warn_fresh_state(state: StateStore) -> None:
    if state.created and os.environ.get("CI"):
        _err(
            f"warning: the state {state.url} was just created: on an ephemeral CI runner a local SQLite file "
            "forgets every training; use a shared state (--state postgresql://... or RECONCILER_STATE)"
        )


# ---------------------------------------------------------------- shared options

_paths = click.argument("paths", nargs=-1, type=click.Path())
_state = click.option("--state", "state", envvar="RECONCILER_STATE", help="sqlite:///path.db or postgresql://...")
_output = click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
_targets = click.option("--target", "targets", multiple=True, metavar="NAME", help="only these models (repeatable)")
_selectors = click.option(
    "--selector", "-l", "selectors", multiple=True, metavar="K=V", help="only models with this label"
)
_sandbox = click.option("--sandbox", is_flag=True, help="use in-process simulators of the providers (no keys needed)")
_lock_timeout = click.option(
    "--lock-timeout", default="60s", show_default=True, help="how long to wait for another apply/daemon's lock"
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
@click.version_option(package_name="reconciler")
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
def validate(paths: tuple[str, ...], output: str) -> None:
    """Check manifests offline: exit 0 valid, 1 invalid (each problem as file:line:col)."""
    manifests = runtime.load(paths)
    for line in manifests.notices:
        _err(line)
    if output == "json":
        _echo_json({"valid": True, "models": sorted(manifests.models), "providers": sorted(manifests.providers)})
    else:
        click.echo(f"{len(manifests.models)} models, {len(manifests.providers)} providers: valid")


@cli.command()
@_paths
@_targets
@_selectors
@_output
@_state
@_sandbox
def plan(
    paths: tuple[str, ...],
    targets: tuple[str, ...],
    selectors: tuple[str, ...],
    output: str,
    state: str | None,
    sandbox: bool,
) -> None:
    """Show what apply would do: exit 0 nothing to do, 2 would train, 1 error."""
    from reconciler.errors import ManifestError, ReconcilerError
    from reconciler.plan import exit_code

    url = runtime.state_url(state)
    selector = _selector(selectors)

    async def run() -> int:
        try:
            async with runtime.session(paths, url, sandbox, _seams()) as (manifests, engine):
                for line in manifests.notices:
                    _err(line)
                plans = await engine.plan(manifests.select(targets, selector))
                _warn_fresh_state(engine.state)
        except ReconcilerError as exc:
            if output != "json":
                raise
            # plan --output json prints its JSON whatever the exit code
            problems = [str(p) for p in exc.problems] if isinstance(exc, ManifestError) else [str(exc)]
            _echo_json({"format_version": 1, "models": [], "summary": {}, "errors": problems})
            for line in problems:
                _err(line)
            return 1
        if output == "json":
            _echo_json(plan_json(plans))
        else:
            click.echo(render_plan(plans))
        return exit_code(plans)

    sys.exit(_run(run()))


def _progress_printer() -> Callable[[str, Any, Any], None]:
    from reconciler.errors import ProviderError

    last: dict[str, str] = {}

    def show(name: str, obs: Any, rec: Any) -> None:
        if isinstance(obs, ProviderError):
            line = f"error: {obs}"
        elif rec is not None and rec.status.value in ("succeeded", "failed"):
            line = rec.status.value + (f": {obs.message}" if rec.status.value == "failed" and obs.message else "")
        else:
            line = obs.provider_state or obs.status.value
            if obs.progress is not None:
                line += f" {obs.progress:.0%}"
        if last.get(name) != line:
            last[name] = line
            _err(f"{name}: {line}")

    return show


@cli.command()
@_paths
@_targets
@_selectors
@_output
@_state
@_sandbox
@_lock_timeout
@click.option("--wait", is_flag=True, help="follow the started trainings until they end")
@click.option("--timeout", "timeout", default=None, help="with --wait: give up after this long (e.g. 2h)")
def apply(
    paths: tuple[str, ...],
    targets: tuple[str, ...],
    selectors: tuple[str, ...],
    output: str,
    state: str | None,
    sandbox: bool,
    lock_timeout: str,
    wait: bool,
    timeout: str | None,
) -> None:
    """Trigger what plan shows as train/retry. Exit 0 when all started (with --wait: succeeded)."""
    from reconciler.domain import RecordStatus
    from reconciler.plan import Action

    url = runtime.state_url(state)
    selector = _selector(selectors)
    lock_wait = _duration(lock_timeout, "--lock-timeout").total_seconds()
    wait_timeout = _duration(timeout, "--timeout") if timeout else None

    async def run() -> int:
        async with runtime.session(paths, url, sandbox, _seams()) as (manifests, engine):
            models = manifests.select(targets, selector)
            async with engine.state.lock(runtime.holder("apply"), lock_wait):
                plans = await engine.plan(models)
                if output == "text":
                    click.echo(render_plan(plans))
                result = await engine.apply(plans)
                ok = result.ok
                for name, o in sorted(result.outcomes.items()):
                    verdict = "training started" if o.started else "held by the provider" if o.held else "not started"
                    _err(f"{name}: {verdict}" + (f" ({o.detail})" if o.detail and not o.started else ""))
                for name in result.adopted:
                    _err(f"{name}: adopted the provider's model as matching the spec")
                final = {}
                started = [n for n, o in result.outcomes.items() if o.started]
                # a training this state started before (a run that crashed or did not wait) is
                # followed too: `--wait` means "until the trainings reconciler started have ended"
                started += [
                    p.name
                    for p in plans
                    if p.action is Action.WAIT and p.record is not None and p.record.status is RecordStatus.TRAINING
                ]
                if wait and started:
                    final = await engine.follow(started, timeout=wait_timeout, on_progress=_progress_printer())
                    for name in started:
                        rec = final.get(name)
                        if rec is None or rec.status is not RecordStatus.SUCCEEDED:
                            ok = False
                            status = rec.status.value if rec else "unknown"
                            _err(f"{name}: training did not succeed ({status})")
                if output == "json":
                    doc = plan_json(plans)
                    doc["outcomes"] = {
                        n: {"started": o.started, "detail": o.detail, "ambiguous": o.ambiguous, "held": o.held}
                        for n, o in sorted(result.outcomes.items())
                    }
                    if wait:
                        doc["final"] = {n: (r.status.value if r else None) for n, r in sorted(final.items())}
                    _echo_json(doc)
                return 0 if ok else 1

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
    from reconciler.engine import status_entry

    url = runtime.state_url(state)
    selector = _selector(selectors)

    async def run() -> int:
        async with runtime.session(paths, url, sandbox, _seams()) as (manifests, engine):
            plans = await engine.plan(manifests.select(targets, selector))
            entries = [status_entry(p) for p in sorted(plans, key=lambda p: p.name)]
            if output == "json":
                _echo_json({"format_version": 1, "models": entries})
            else:
                width = max((len(e["name"]) for e in entries), default=4)
                click.echo(f"{'NAME':<{width}}  {'PROVIDER':<10} {'OBSERVED':<22} {'LAST TRAINING':<24} NEXT")
                for e in entries:
                    obs = e["observed"]
                    seen = obs.get("error", "")[:22] or (obs.get("state") or obs.get("status", ""))
                    if "progress" in obs:
                        seen += f" {obs['progress']:.0%}"
                    last = e["last_training"]
                    lt = (
                        "-"
                        if not last
                        else f"{last['status']} {(last['finished_at'] or last['triggered_at'] or '')[:16]}"
                    )
                    click.echo(f"{e['name']:<{width}}  {e['provider']:<10} {seen:<22} {lt:<24} {e['action']}")
            return 1 if any(p.error for p in plans) else 0

    sys.exit(_run(run()))


@cli.command()
@click.argument("name")
@_output
@_state
def history(name: str, output: str, state: str | None) -> None:
    """That model's recorded events, oldest first."""
    from reconciler.state import open_state

    async def run() -> int:
        st = await open_state(runtime.state_url(state))
        try:
            events = await st.history(name)
        finally:
            await st.close()
        if output == "json":
            _echo_json(
                {
                    "format_version": 1,
                    "model": name,
                    "events": [
                        {
                            "at": e.at.isoformat() if e.at else None,
                            "event": e.event,
                            "reason": e.reason,
                            "fingerprint": e.fingerprint,
                            "git_commit": e.git_commit,
                            "detail": e.detail,
                        }
                        for e in events
                    ],
                }
            )
            return 0
        if not events:
            _err(f"no history for {name!r} in this state")
            return 1
        for e in events:
            at = e.at.strftime("%Y-%m-%d %H:%M:%S") if e.at else "?"
            msg = e.detail.get("message") or e.detail.get("detail") or ""
            commit = f" @{e.git_commit[:8]}" if e.git_commit else ""
            click.echo(f"{at}  {e.event:<12} {e.reason:<20} {e.fingerprint[7:19]}{commit}  {msg}".rstrip())
        return 0

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

    url = runtime.state_url(state)
    lock_wait = _duration(lock_timeout, "--lock-timeout").total_seconds()

    async def run() -> int:
        async with runtime.session(paths, url, sandbox, _seams()) as (manifests, engine):
            model = manifests.select([name])[0]
            async with engine.state.lock(runtime.holder("adopt"), lock_wait):
                obs = (await engine.observe([model], await engine.state.all()))[name]
                if isinstance(obs, ProviderError):
                    raise Failure(f"cannot adopt {name}: {obs}")
                if obs.status is not TrainingStatus.SUCCEEDED:
                    raise Failure(f"cannot adopt {name}: the provider shows no trained model ({obs.status.value})")
                await engine.adopt(model, obs, reason="adopted-by-hand")
                click.echo(f"{name}: adopted; the provider's model is now recorded as matching the spec")
                return 0

    sys.exit(_run(run()))


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
@click.option("--training-seconds", default=3.0, show_default=True, type=float)
@click.option("--latency", default=0.0, show_default=True, type=float, help="seconds added to every request")
def sandbox(port: int, directory: str, training_seconds: float, latency: float) -> None:
    """Run simulators of all five provider APIs on 127.0.0.1 until interrupted."""
    import signal
    import threading

    from reconciler.sandbox.server import Sandbox

    sb = Sandbox(Path(directory), port=port, training_seconds=training_seconds, latency=latency).start()
    for k, v in sb.env().items():
        click.echo(f"export {k}={v}")
    click.echo(f"# request log and fault injection: {sb.url}/_sandbox/requests, {sb.url}/_sandbox/faults", err=True)
    sys.stdout.flush()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sb.stop()


@cli.command()
def schema() -> None:
    """Print the JSON Schema of manifests (for yaml-language-server and editors)."""
    from reconciler.spec import json_schema

    _echo_json(json_schema())


def main(argv: Sequence[str] | None = None, *, seams: Seams | None = None) -> None:
    """Entry point: maps every failure onto exit code 1 with a message naming what to fix.

    `seams` (tests, wrapper scripts) replace the engine's clock, backoff sleep, HTTP transport,
    request observers and trigger-step hook for the commands that build one.
    """
    from reconciler.errors import ManifestError, ReconcilerError

    try:
        # click hands `obj` to every command's context: how `_seams()` finds it
        cli.main(args=list(argv) if argv is not None else None, standalone_mode=False, obj=seams)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _err("aborted")
        sys.exit(1)
    except click.ClickException as exc:  # usage errors: 1, never 2 (2 means "plan would train")
        exc.show()
        sys.exit(1)
    except ManifestError as exc:
        for p in exc.problems:
            _err(str(p))
        _err(f"{len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''} found")
        sys.exit(1)
    except (ReconcilerError, Failure) as exc:
        _err(f"error: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
