"""Run the real CLI in this process with test seams: `python tests/seamed_cli.py [OPTIONS] -- ARGS...`

    --crash-at STEP   SIGKILL this process (as `kill -9` would) when the engine reaches STEP, one of
                      reconciler.seams.CRASHPOINTS: before-intent, after-intent, after-train-call
    --no-backoff      retries without waiting (stamina's test mode; the number of attempts is kept)

The package reads no test hook from the environment: tests that kill `apply` at a step or must
not wait for retry backoff in a subprocess run this script instead of `python -m reconciler.cli`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import stamina

from reconciler.cli import main
from reconciler.seams import CRASHPOINTS, Seams

PATH = Path(__file__).resolve()


def command(*args: str, crash_at: str | None = None, backoff: bool = False) -> list[str]:
    """The argv that runs `reconciler ARGS` through this script."""
    ours = [*(["--crash-at", crash_at] if crash_at else []), *([] if backoff else ["--no-backoff"])]
    return [sys.executable, str(PATH), *ours, "--", *args]


def crash_at(step: str | None) -> Seams:
    """Seams whose step hook kills the process at `step` (none: never)."""

    def on_step(reached: str) -> None:
        if reached == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return Seams(on_step=on_step)


def run(argv: list[str]) -> None:
    """Parse the wrapper's options (before the first `--`) and run `reconciler` with the rest."""
    split = argv.index("--") if "--" in argv else 0
    ours, args = argv[:split], argv[split + 1 if "--" in argv else 0 :]
    parser = argparse.ArgumentParser(prog="seamed_cli.py")
    parser.add_argument("--crash-at", choices=CRASHPOINTS)
    parser.add_argument("--no-backoff", action="store_true")
    opts = parser.parse_args(ours)
    if opts.no_backoff:
        # cap=True with a huge cap keeps every client's own number of attempts
        stamina.set_testing(True, attempts=sys.maxsize, cap=True)
    main(args, seams=crash_at(opts.crash_at))


if __name__ == "__main__":
    run(sys.argv[1:])
