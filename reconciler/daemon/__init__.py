"""`reconciler daemon`: watch the manifests, reconcile continuously, serve health, metrics and hooks.

A thin shell over `reconciler.engine.Engine`, in parts a newcomer can find by name:

- `command`: the click command, which builds `DaemonOptions` (`options`) and calls `run_daemon`;
- `lifecycle`: `Daemon`, which wires the parts below together, runs the worker and shuts down;
- `tracker`: the manifests per file by content digest, and each file's last good version;
- `queue`: the work queue (coalesced by trigger) and the schedule of polls and wakes;
- `plans`: the current plan per model, the one snapshot `/status` and the metrics read;
- `app`: the HTTP endpoints and the webhook's authentication; `metrics`: Prometheus;
- `systemd`: sd_notify and the watchdog.

This module stays light (starlette, uvicorn and prometheus-client are imported by the parts), so
importing the command does not slow down `reconciler --help`.
"""

from __future__ import annotations

import asyncio

from reconciler.daemon.options import DaemonOptions
from reconciler.logs import setup_logging


def run_daemon(opts: DaemonOptions) -> int:
    """Run the daemon until SIGTERM/SIGINT; the process exit code (0 after a clean stop)."""
    from reconciler.daemon.lifecycle import Daemon

    redactor = setup_logging(opts.log_format)
    try:
        return asyncio.run(Daemon(opts, redactor=redactor).run())
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130


__all__ = ["DaemonOptions", "run_daemon"]
