"""What `reconciler daemon` was asked to do."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass
class DaemonOptions:
    """What `reconciler daemon` was asked to do (built by its command)."""

    paths: list[str]
    state_url: str
    sandbox: bool = False
    resync: timedelta = timedelta(minutes=10)
    host: str = "127.0.0.1"
    port: int = 8080
    log_format: str = "text"  # "text" | "json"
    lock_timeout: float = 60.0  # accepted, ignored: a standby waits for the lease as long as it runs
    #: hold (reason `budget`) beyond this many trainings started by the daemons in a rolling hour
    max_trainings_per_hour: int = 20
