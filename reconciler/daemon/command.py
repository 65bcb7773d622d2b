"""The `reconciler daemon` command: flags to `DaemonOptions`, then `run_daemon`.

Loaded by the CLI's lazy group only when the command runs or is listed; it never imports the CLI.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import click

from reconciler import runtime
from reconciler.daemon import DaemonOptions, run_daemon


def _duration(text: str, name: str) -> timedelta:
    from reconciler.values import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


@click.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--state", "state", envvar="RECONCILER_STATE", help="sqlite:///path.db or postgresql://...")
@click.option("--sandbox", is_flag=True, help="use in-process simulators of the providers (no keys needed)")
@click.option(
    "--lock-timeout",
    default="60s",
    show_default=True,
    help="ignored: a standby waits for the leader lease as long as it runs (kept for existing scripts)",
)
@click.option("--resync", default="10m", show_default=True, help="full resync interval")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="host:port for health, metrics, webhooks")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--max-trainings-per-hour",
    type=click.IntRange(min=1),
    default=DaemonOptions.max_trainings_per_hour,
    show_default=True,
    metavar="N",
    help="beyond N trainings started by the daemons in a rolling hour, models hold (reason budget)",
)
def daemon(
    paths: tuple[str, ...],
    state: str | None,
    sandbox: bool,
    lock_timeout: str,
    resync: str,
    listen: str,
    log_format: str,
    max_trainings_per_hour: int,
) -> None:
    """Watch the manifests and reconcile continuously; serve /healthz /readyz /metrics /status."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{listen!r}: write host:port", param_hint="--listen")
    opts = DaemonOptions(
        paths=runtime.paths_or_default(paths),
        state_url=runtime.state_url(state),
        sandbox=sandbox,
        resync=_duration(resync, "--resync"),
        host=host,
        port=int(port),
        log_format=log_format,
        lock_timeout=_duration(lock_timeout, "--lock-timeout").total_seconds(),
        max_trainings_per_hour=max_trainings_per_hour,
    )
    sys.exit(run_daemon(opts))
