"""How close does `plan` get to the floor set by the provider's latency?

N in-sync Roboflow models (default 1,000) against the sandbox with a per-request latency (default
20 ms). Prints wall time, requests per model, train calls, and the floor:
requests x latency / concurrency. Target: wall time within 2x of the floor at 20 ms.

    python benchmarks/plan_scale.py [--models 1000] [--latency 0.02] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.engine import Engine
from reconciler.plan import Action
from reconciler.providers.catalog import provider_type
from reconciler.sandbox.registry import SANDBOX_API_KEYS
from reconciler.sandbox.server import Sandbox
from reconciler.sandbox.world import WorldStore
from reconciler.spec import ManifestSet, load_manifests
from reconciler.state import StateStore, open_state

MANIFEST = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata: {{name: model-{i:05d}}}
spec:
  provider: roboflow
  model: {{workspace: bench, project: p{i:05d}}}
  training: {{version: 1, model_type: rfdetr-nano, epochs: 10}}
  policy: {{on_unknown_baseline: adopt}}
"""

PROVIDER = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {name: roboflow}
spec: {type: roboflow, requests_per_second: 10000}
"""


CPU: list[float] = []  # reconciler's own CPU seconds per plan


def start_sandbox_process(world: Path, latency: float) -> tuple[subprocess.Popen[str], str]:
    """`reconciler sandbox` in its own process: the provider must not share our GIL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "sandbox", "--dir", str(world), "--latency", str(latency)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("export RECONCILER_ROBOFLOW_BASE_URL="):
            return proc, line.strip().split("=", 1)[1]
    raise RuntimeError("the sandbox did not start")


async def plan_once(
    manifests: ManifestSet, state: StateStore, url: str, *, apply: bool = False
) -> tuple[float, list[Any]]:
    endpoints = {"roboflow": (url, SANDBOX_API_KEYS["roboflow"])}
    async with Engine(manifests, state, endpoints=endpoints) as engine:
        start, cpu = time.perf_counter(), time.process_time()
        plans = await engine.plan(list(manifests.models.values()))
        wall = time.perf_counter() - start
        CPU.append(time.process_time() - cpu)
        if apply:
            result = await engine.apply(plans)  # adopts every model (the sandbox shows them trained)
            assert len(result.adopted) == len(plans) and not result.outcomes
        return wall, plans


async def run(models: int, latency: float, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        specs = root / "specs"
        specs.mkdir()
        (specs / "models.yaml").write_text("---\n".join(MANIFEST.format(i=i) for i in range(models)))
        # the measured limit is latency x concurrency, not a (provider-documented) rate limit
        (specs / "provider.yaml").write_text(PROVIDER)
        seed = Sandbox(None, providers=["roboflow"]).start()
        sim = seed.sim("roboflow")
        for i in range(models):
            sim.add_project("bench", f"p{i:05d}", versions=1)  # type: ignore[attr-defined]
            sim.mark_trained("bench", f"p{i:05d}", 1, model_type="rfdetr-nano")  # type: ignore[attr-defined]
        WorldStore(root / "world" / "roboflow.json").save(sim.world)
        seed.stop()
        manifests = load_manifests([specs])
        state = await open_state(f"sqlite:///{root / 'state.db'}")
        proc, url = start_sandbox_process(root / "world", 0.0)
        try:
            await plan_once(manifests, state, url, apply=True)
        finally:
            proc.terminate()
            proc.wait()
        proc, url = start_sandbox_process(root / "world", latency)
        walls = []
        try:
            for _ in range(rounds):
                wall, plans = await plan_once(manifests, state, url)
                assert all(p.action is Action.NONE for p in plans), {p.action for p in plans}
                walls.append(wall)
            log = json.loads(urllib.request.urlopen(url.rsplit("/", 1)[0] + "/_sandbox/requests").read())
        finally:
            proc.terminate()
            proc.wait()
        await state.close()
    requests = sum(1 for r in log if r["provider"] == "roboflow") / rounds
    trains = sum(1 for r in log if r["method"] == "POST")
    concurrency = provider_type("roboflow").max_concurrent_requests
    floor = requests * latency / concurrency
    wall = statistics.median(walls)
    print(f"models                 {models}")
    print(f"latency per request    {latency * 1000:.0f} ms")
    print(f"concurrency            {concurrency} requests in flight per provider")
    print(f"requests per model     {requests / models:.2f}")
    print(f"train calls            {trains}")
    print(f"wall time (median of {rounds}) {wall:.2f} s")
    print(f"reconciler CPU (median) {statistics.median(CPU[1:]):.2f} s  (the client's own work, of the wall time)")
    print(f"floor                  {floor:.2f} s  (requests x latency / concurrency)")
    print(f"wall / floor           {wall / floor:.2f}x  (target <= 2x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.02)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    asyncio.run(run(args.models, args.latency, args.rounds))


if __name__ == "__main__":
    main()
