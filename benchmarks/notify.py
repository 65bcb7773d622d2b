"""What a notification endpoint costs a training: `apply --wait` with each kind of endpoint.

`reconciler apply --wait` (a real process) trains one Roboflow model against the sandbox with
`RECONCILER_NOTIFY_URL` unset, then pointing at a listener on 127.0.0.1 that answers at once,
answers 500, answers after 10 s, or at a port nothing listens on. For each it measures the time from the
sandbox's first read to its train call, and from its last read (the training seen ended) to the
process's exit (medians of `--rounds`, default 3), and prints the delay against no endpoint
beside the targets: the train call not later by more than 0.5 s, the exit by more than 2.5 s
(the bounded drain is 2 s).

    python benchmarks/notify.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.sandbox.receiver import Receiver
from reconciler.sandbox.server import Sandbox

TRAIN_TARGET = 0.5
EXIT_TARGET = 2.5
ENDPOINTS = ("none", "ok", "500", "slow", "down")
MODEL = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {name: roboflow}
spec: {type: roboflow, requests_per_second: 1000}
---
apiVersion: reconciler/v1
kind: TrainedModel
metadata: {name: hardhat-detector}
spec:
  provider: roboflow
  model: {workspace: acme, project: hardhats}
  training: {version: 3, model_type: rfdetr-nano, epochs: 10}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def one_round(kind: str, work: Path) -> tuple[float, float]:
    """(seconds from the first read to the train call, from the last read to the exit) of one `apply --wait`."""
    sb = Sandbox(work / "world", training_seconds=0.5).start()
    endpoint = None
    try:
        (work / "specs").mkdir(parents=True)
        (work / "specs" / "model.yaml").write_text(MODEL)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
        env.update(sb.env())
        env["RECONCILER_STATE"] = f"sqlite:///{work / 'state.db'}"
        env["RECONCILER_POLL_INTERVAL"] = "0.1s"
        if kind == "down":
            env["RECONCILER_NOTIFY_URL"] = f"http://127.0.0.1:{free_port()}/hook"
        elif kind != "none":
            endpoint = Receiver(500 if kind == "500" else 200, 10.0 if kind == "slow" else 0.0)
            env["RECONCILER_NOTIFY_URL"] = endpoint.url
        cmd = [sys.executable, "-m", "reconciler.cli", "apply", "--wait", "specs"]
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=60)
        ended = time.time()
        if proc.returncode != 0:
            raise SystemExit(f"apply --wait with endpoint {kind} exited {proc.returncode}:\n{proc.stderr}")
        log = sb.requests("roboflow")
        calls = [r.at for r in log if r.method == "POST" and r.path.endswith("/train")]
        # from the first read to the train call, from the last read to the exit: the process's
        # start (imports, a loaded machine) is left out of both
        return calls[0] - log[0].at, ended - log[-1].at
    finally:
        if endpoint is not None:
            endpoint.close()
        sb.stop()


def main() -> None:
    """Run the rounds and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, tuple[float, float]] = {}
    for kind in ENDPOINTS:
        rounds = []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                rounds.append(one_round(kind, Path(tmp)))
        figures[kind] = (statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds))
    base_train, base_exit = figures["none"]
    print(
        f"endpoint none: train call {base_train:.2f}s after the first read, exit {base_exit:.2f}s after the last (the baseline)"
    )
    for kind in ENDPOINTS[1:]:
        train, exit_ = figures[kind]
        d_train, d_exit = train - base_train, exit_ - base_exit
        verdict = "within" if d_train <= TRAIN_TARGET and d_exit <= EXIT_TARGET else "OVER"
        print(
            f"endpoint {kind}: train call {d_train:+.2f}s (target <= {TRAIN_TARGET}s), "
            f"exit {d_exit:+.2f}s (target <= {EXIT_TARGET}s): {verdict}"
        )


if __name__ == "__main__":
    main()
