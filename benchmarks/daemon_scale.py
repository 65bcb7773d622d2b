"""The daemon with many models loaded (issue 14): memory over many resyncs, edit-to-train latency,
and what a full resync costs. Every figure is printed beside its target:

- RSS <= 150 MB after an hour's worth of resyncs (`--cycles` resyncs at a short `--resync`);
- an edit of one manifest reaches its train call in <= 2 s;
- a full resync costs no more requests than a plan of the same models.

    python benchmarks/daemon_scale.py [--models 2000] [--resync 10s] [--cycles 12] [--latency 0]

The worlds, manifests and adopted state are those of benchmarks/plan_scale.py (2,000 models on
each of the five providers by default). The daemon runs as `reconciler daemon` in its own
process against the sandbox in another.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import plan_scale

RSS_TARGET_MB, EDIT_TARGET_S = 150.0, 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Vm")
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def resyncs(daemon: str) -> float:
    """The daemon's `reconciler_last_resync_timestamp_seconds` (0 before the first)."""
    found = re.search(r"^reconciler_last_resync_timestamp_seconds (\S+)$", get(f"{daemon}/metrics"), re.M)
    return float(found.group(1)) if found else 0.0


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def edit_one(specs: Path) -> str:
    """Change the epochs of the first Roboflow model; returns the project whose train call follows."""
    path = specs / "roboflow-000.yaml"
    text = path.read_text()
    first = "model: {workspace: bench, project: p00000}\n  training: {version: 1, model_type: rfdetr-nano, epochs: 10}"
    assert first in text
    path.write_text(text.replace(first, first.replace("epochs: 10", "epochs: 11"), 1))
    return "p00000"


def run(n: int, resync: str, cycles: int, latency: float, workdir: Path | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = workdir or Path(tmp)
        manifests, state = asyncio.run(plan_scale.prepare(root, n))
        asyncio.run(state.close())
        del manifests
        sandbox, url = plan_scale.start_sandbox_process(root / "world", latency)
        daemon_proc = None
        try:
            # what one plan of the same models costs, against the same simulators
            async def one_plan() -> int:
                m, st = await plan_scale.prepare(root, n)
                plan_scale.control(url, "traffic", "DELETE")
                await plan_scale.plan_once(m, st, url)
                await st.close()
                return int(sum(s["requests"] for s in plan_scale.control(url, "traffic").values()))

            plan_requests = asyncio.run(one_plan())
            env = {**os.environ, **plan_scale.control(url, "")["env"]}
            port = free_port()
            daemon = f"http://127.0.0.1:{port}"
            log = open(root / "daemon.err", "wb")  # noqa: SIM115 (closed with the process)
            cmd = [
                sys.executable,
                "-m",
                "reconciler.cli",
                "daemon",
                "specs",
                "--state",
                f"sqlite:///{root / 'state.db'}",
            ]
            cmd += ["--resync", resync, "--listen", f"127.0.0.1:{port}"]
            daemon_proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=log)
            started = time.monotonic()
            wait_for(lambda: get(f"{daemon}/readyz") and True, 120, "the daemon to be ready", 0.2)
            ready_s = time.monotonic() - started
            # full resyncs: the requests between two resync marks, for each pair of marks
            seen: list[float] = []
            per_resync: list[int] = []
            samples: list[float] = []
            while len(seen) < cycles + 1:
                mark = wait_for(lambda: (r := resyncs(daemon)) and r not in seen and r, 600, "the next resync")
                totals = plan_scale.control(url, "traffic")
                plan_scale.control(url, "traffic", "DELETE")
                if seen:
                    per_resync.append(int(sum(s["requests"] for s in totals.values())))
                seen.append(mark)
                samples.append(rss_mb(daemon_proc.pid)[0])
            # let the last resync finish before measuring memory and editing
            time.sleep(max(0.0, min(5.0, statistics.median(per_resync or [0]) * 0.0005)))
            rss, peak = rss_mb(daemon_proc.pid)
            plan_scale.control(url, "requests", "DELETE")
            project = edit_one(root / "specs")
            edited = time.monotonic()

            def trained() -> bool:
                log_ = plan_scale.control(url, "requests?provider=roboflow")
                return any(e["method"] == "POST" and f"/{project}/" in e["path"] for e in log_)

            wait_for(trained, 120, "the train call of the edited model", 0.02)
            edit_s = time.monotonic() - edited
        finally:
            if daemon_proc is not None:
                daemon_proc.terminate()
                daemon_proc.wait(timeout=30)
            sandbox.terminate()
            sandbox.wait()
    resync_requests = statistics.median(per_resync) if per_resync else 0
    print(
        f"models                      {n * len(plan_scale.TYPES)} ({n} per provider), {latency * 1000:.0f} ms per request"
    )
    print(f"daemon ready after          {ready_s:.1f} s")
    print(f"resyncs                     {len(per_resync)} full resyncs every {resync}")
    print(
        f"RSS after them              {rss:.0f} MB (peak {peak:.0f} MB; per resync: "
        f"{', '.join(f'{s:.0f}' for s in samples)})  (target <= {RSS_TARGET_MB:.0f} MB)"
    )
    print(f"edit to train call          {edit_s:.2f} s  (target <= {EDIT_TARGET_S:.0f} s)")
    print(
        f"requests per full resync    {resync_requests:.0f} (median), a plan: {plan_requests}  (target <= the plan's)"
    )
    return {
        "rss_mb": rss,
        "edit_s": edit_s,
        "resync_requests": float(resync_requests),
        "plan_requests": float(plan_requests),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=2000, help="models per provider")
    ap.add_argument("--resync", default="10s", help="the daemon's full resync interval (longer than one resync)")
    ap.add_argument("--cycles", type=int, default=12, help="full resyncs before memory is measured")
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--workdir", type=Path, help="keep the worlds, manifests and state here and reuse them")
    args = ap.parse_args(argv)
    return run(args.models, args.resync, args.cycles, args.latency, args.workdir)


if __name__ == "__main__":
    main()
