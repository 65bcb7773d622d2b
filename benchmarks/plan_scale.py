"""How close does `plan` get to the floor set by the providers' latency? (issue 14)

N in-sync models on each of the five providers (default 2,000 each, 10,000 in all) against the
sandbox in its own process with a per-request latency (default 20 ms). Every figure is printed
beside its target:

- wall time <= 1.5x the network floor. The floor of a provider is its requests x latency / the
  requests in flight the simulator saw at most; providers are read concurrently, so the floor of
  the plan is the largest of theirs;
- reconciler's CPU per request <= 2x a bare aiohttp client's, which replays the same requests
  against the same simulator in the same run (aiohttp is a benchmark-only reference here);
- requests per model <= 1 on every provider, <= 0.05 where the provider lists models (PredictHQ,
  PhotoGPT);
- 0 train calls.

The rounds follow one unmeasured plan that warms the simulator just started. The same rounds
of `reconciler plan` (the CLI in its own process against the same sandbox) then
time what an operator waits for, start to exit, split where the simulator saw the first and the
last request: start-up, manifests loaded and validated, state read (before the first request);
the network; the plan, orphans and report (after the last).

    python benchmarks/plan_scale.py [--models 2000] [--latency 0.02] [--rounds 3] [--profile]

The PredictHQ world is given a plan whose list depth covers the account ("the maximum depth is set
per plan" [D]); at the sandbox's default depth (1,000) the models past it are read one by one.
PhotoGPT models share sets of 12 input images (20 models a set), each set its own folder.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.engine import Engine
from reconciler.plan import Action
from reconciler.providers.catalog import provider_type
from reconciler.runtime import settle_heap
from reconciler.sandbox.registry import SANDBOX_API_KEYS
from reconciler.sandbox.server import Sandbox
from reconciler.sandbox.world import WorldStore
from reconciler.spec import ManifestSet, load_manifests
from reconciler.state import StateStore, open_state

TYPES = ("roboflow", "predicthq", "rebase", "lucid", "photogpt")
LISTING = ("predicthq", "photogpt")  # the providers with a list endpoint
IMAGES_PER_SET, MODELS_PER_IMAGE_SET = 12, 20
LUCID_TAG_GROUPS = 10
DOCS_PER_FILE = 100
# a 1x1 PNG; each image differs in a trailing comment so that the hashes differ
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

HEADER = "apiVersion: reconciler/v1\nkind: TrainedModel\nmetadata: {{name: {name}}}\nspec:\n  provider: {type}\n"
ADOPT = "  policy: {on_unknown_baseline: adopt}\n"
PROVIDER = """\
apiVersion: reconciler/v1
kind: Provider
metadata: {{name: {type}}}
spec: {{type: {type}, requests_per_second: 10000}}
"""


@dataclass
class Figures:
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    traffic: list[dict[str, dict[str, int]]] = field(default_factory=list)
    trains: int = 0
    bare_cpu_per_request: list[float] = field(default_factory=list)
    bare_walls: list[float] = field(default_factory=list)
    #: `reconciler plan` per round: (start to exit, start to first request, first to last request)
    cli: list[tuple[float, float, float]] = field(default_factory=list)
    profile: str = ""


def manifest(type_: str, i: int, ids: dict[str, list[str]]) -> str:
    name = f"{type_}-{i:05d}"
    head = HEADER.format(name=name, type=type_)
    if type_ == "roboflow":
        body = (
            f"  model: {{workspace: bench, project: p{i:05d}}}\n"
            "  training: {version: 1, model_type: rfdetr-nano, epochs: 10}\n"
        )
    elif type_ == "predicthq":
        body = f"  model: {{model_id: {ids['predicthq'][i]}}}\n  training: {{forecast_window: 7d}}\n"
    elif type_ == "rebase":
        body = f"  model: {{site_id: {ids['rebase'][i]}}}\n  training: {{output_backtest_data: false}}\n"
    elif type_ == "lucid":
        body = f"  model: {{model_id: rec-{i:05d}}}\n  training: {{data_tags: [group-{i % LUCID_TAG_GROUPS}]}}\n"
    else:
        folder = f"images/set-{i // MODELS_PER_IMAGE_SET:04d}"
        body = f"  model: {{model_id: {ids['photogpt'][i]}}}\n  training: {{input_images: '{folder}/*.png'}}\n"
    return head + body + ADOPT


def seed_worlds(root: Path, n: int) -> dict[str, list[str]]:
    """Every model trained at its provider (by hand: the first apply adopts them); the worlds saved."""
    seed = Sandbox(None, providers=list(TYPES), root_ports=False).start()
    ids: dict[str, list[str]] = {t: [] for t in TYPES}
    rf, phq, rb, lu, pg = (seed.sim(t) for t in TYPES)
    phq.set_max_depth(10 * n + 1000)  # type: ignore[attr-defined]
    for g in range(LUCID_TAG_GROUPS):
        lu.add_batch([f"group-{g}"])  # type: ignore[attr-defined]
    for i in range(n):
        rf.add_project("bench", f"p{i:05d}", versions=1)  # type: ignore[attr-defined]
        rf.mark_trained("bench", f"p{i:05d}", 1, model_type="rfdetr-nano")  # type: ignore[attr-defined]
        mid = phq.add_model(name=f"m{i}", forecast_window="7d", industry=None)  # type: ignore[attr-defined]
        phq.mark_trained(mid)  # type: ignore[attr-defined]
        ids["predicthq"].append(mid)
        site = rb.add_site(name=f"site {i}")  # type: ignore[attr-defined]
        rb.mark_trained(site)  # type: ignore[attr-defined]
        ids["rebase"].append(site)
        lu.mark_trained(f"rec-{i:05d}", [f"group-{i % LUCID_TAG_GROUPS}"])  # type: ignore[attr-defined]
        ids["photogpt"].append(pg.add_model(f"portrait {i}", trained=True))  # type: ignore[attr-defined]
    for t in TYPES:
        WorldStore(root / "world" / f"{t}.json").save(seed.sim(t).world)
    seed.stop()
    for s in range(-(-n // MODELS_PER_IMAGE_SET)):
        folder = root / "specs" / "images" / f"set-{s:04d}"
        folder.mkdir(parents=True)
        for k in range(IMAGES_PER_SET):
            (folder / f"{k:02d}.png").write_bytes(PNG + f"set {s} image {k}".encode())
    return ids


def start_sandbox_process(world: Path, latency: float) -> tuple[subprocess.Popen[str], str]:
    """`reconciler sandbox` in its own process: the providers must not share our GIL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "sandbox", "--dir", str(world), "--latency", str(latency)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("export RECONCILER_ROBOFLOW_BASE_URL="):
            return proc, line.strip().split("=", 1)[1].rsplit("/", 1)[0]
    raise RuntimeError("the sandbox did not start")


def control(url: str, path: str, method: str = "GET") -> Any:
    req = urllib.request.Request(f"{url}/_sandbox/{path}", method=method)
    with urllib.request.urlopen(req) as resp:
        return json.loads(resp.read())


def endpoints(url: str) -> dict[str, tuple[str, str]]:
    info = control(url, "")
    return {t: (info["providers"][t], SANDBOX_API_KEYS[t]) for t in TYPES}


async def plan_once(
    manifests: ManifestSet, state: StateStore, url: str, *, apply: bool = False, profile: cProfile.Profile | None = None
) -> tuple[float, float, list[Any]]:
    """One plan (and with `apply`, the adoption of every model); wall and CPU seconds of the plan."""
    async with Engine(manifests, state, endpoints=endpoints(url)) as engine:
        models = list(manifests.models.values())
        if profile is not None:
            profile.enable()
        start, cpu = time.perf_counter(), time.process_time()
        plans = await engine.plan(models)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        if profile is not None:
            profile.disable()
        if apply:
            result = await engine.apply(plans)
            assert len(result.adopted) == len(plans) and not result.outcomes, (len(result.adopted), result.outcomes)
        return wall, cpu, plans


async def bare_client(url: str, log: list[dict[str, Any]], concurrency: dict[str, int]) -> tuple[float, float]:
    """The same GETs replayed by a bare aiohttp client, as many in flight per provider as the plan had."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        gates = {p: asyncio.Semaphore(max(1, n)) for p, n in concurrency.items()}

        async def one(r: dict[str, Any]) -> None:
            async with gates[r["provider"]], session.get(f"{url}{r['url']}", headers=r["headers"]) as resp:
                await resp.read()

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(r) for r in log))
        return time.perf_counter() - start, time.process_time() - cpu


def plan_command(root: Path, url: str) -> tuple[float, float, float]:
    """`reconciler plan` of every model in its own process, as an operator runs it: (start to
    exit, start to the first request the simulator saw, first to last request), in seconds."""
    control(url, "requests", "DELETE")
    env = {**os.environ, **control(url, "")["env"]}  # each type's base URL and key
    command = [
        sys.executable,
        "-m",
        "reconciler.cli",
        "plan",
        str(root / "specs"),
        "--state",
        f"sqlite:///{root / 'state.db'}",
    ]
    started = time.time()  # the simulator logs each request's arrival in time.time()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.time() - started
    assert done.returncode == 0, done.stderr[-2000:]  # every model in sync
    arrivals = sorted(e["at"] for e in control(url, "requests"))
    return wall, arrivals[0] - started, arrivals[-1] - arrivals[0]


async def prepare(root: Path, n: int) -> tuple[ManifestSet, StateStore]:
    """Manifests, worlds and a state that has adopted every model (kept in `root` for reuse)."""
    specs = root / "specs"
    ready = root / "adopted"
    if not ready.exists():
        specs.mkdir(parents=True)
        ids = seed_worlds(root, n)
        for t in TYPES:
            # files of 100 manifests, as a repository holding 10,000 would be laid out
            for start in range(0, n, DOCS_PER_FILE):
                docs = (manifest(t, i, ids) for i in range(start, min(n, start + DOCS_PER_FILE)))
                (specs / f"{t}-{start // DOCS_PER_FILE:03d}.yaml").write_text("---\n".join(docs))
            (specs / f"provider-{t}.yaml").write_text(PROVIDER.format(type=t))
    manifests = load_manifests([specs])
    settle_heap(freeze=True)  # as `reconciler plan` does once its manifests are loaded
    state = await open_state(f"sqlite:///{root / 'state.db'}")
    if not ready.exists():
        proc, url = start_sandbox_process(root / "world", 0.0)
        try:
            await plan_once(manifests, state, url, apply=True)
        finally:
            proc.terminate()
            proc.wait()
        ready.write_text(str(n))
    return manifests, state


async def run(n: int, latency: float, rounds: int, profile: bool, workdir: Path | None = None) -> Figures:
    figures = Figures()
    with tempfile.TemporaryDirectory() as tmp:
        root = workdir or Path(tmp)
        manifests, state = await prepare(root, n)
        proc, url = start_sandbox_process(root / "world", latency)
        prof = cProfile.Profile() if profile else None
        try:
            # one plan unmeasured: the simulator's process has just started, and its first answers
            # build what it reuses after (Roboflow's settled version answers); a provider has no such round
            await plan_once(manifests, state, url)
            for r in range(rounds):
                control(url, "traffic", "DELETE")
                control(url, "requests", "DELETE")
                wall, cpu, plans = await plan_once(manifests, state, url, profile=prof if r == rounds - 1 else None)
                assert all(p.action is Action.NONE for p in plans), {p.action for p in plans}
                figures.walls.append(wall)
                figures.cpus.append(cpu)
                traffic = control(url, "traffic")
                figures.traffic.append(traffic)
                log = control(url, "requests")
                figures.trains += sum(1 for e in log if e["method"] == "POST" or e["path"].endswith("/train"))
                # the bare client: the same requests, the same simulator, the same run
                replay = [
                    {"provider": e["provider"], "url": e["raw_path"], "headers": dict(e["headers"])}
                    for e in log
                    if e["method"] == "GET"
                ]
                for e in replay:
                    e["headers"] = {
                        k: v for k, v in e["headers"].items() if k in ("authorization", "apikey", "api-version")
                    }
                peak = {p: s["peak_in_flight"] for p, s in traffic.items()}
                bare_wall, bare_cpu = await bare_client(url, replay, peak)
                figures.bare_walls.append(bare_wall)
                figures.bare_cpu_per_request.append(bare_cpu / max(1, len(replay)))
            for _ in range(rounds):
                figures.cli.append(plan_command(root, url))
        finally:
            proc.terminate()
            proc.wait()
        await state.close()
    if prof is not None:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(20)
        figures.profile = out.getvalue()
    return figures


def report(fig: Figures, n: int, latency: float) -> dict[str, float]:
    """Print every figure beside its target; return them (for the smoke test)."""
    wall = statistics.median(fig.walls)
    cpu = statistics.median(fig.cpus)
    rounds = len(fig.walls)

    def median_of(t: str, key: str) -> float:
        return statistics.median(float(tr.get(t, {}).get(key, 0)) for tr in fig.traffic)

    requests = {t: median_of(t, "requests") for t in TYPES}
    peak = {t: max(1.0, median_of(t, "peak_in_flight")) for t in TYPES}
    # the time a request spends in the simulator: the injected latency plus its own work
    served = {t: median_of(t, "busy_seconds") / requests[t] if requests[t] else latency for t in TYPES}
    total = sum(requests.values())
    floors = {t: requests[t] * latency / peak[t] for t in TYPES}
    served_floors = {t: requests[t] * served[t] / peak[t] for t in TYPES}
    floor, served_floor = max(floors.values()), max(served_floors.values())
    bare = statistics.median(fig.bare_cpu_per_request)
    bare_wall = statistics.median(fig.bare_walls)
    ours = cpu / max(1, total)
    print(f"models                      {n * len(TYPES)} ({n} per provider), {latency * 1000:.0f} ms per request")
    print(
        f"{'provider':10} {'requests':>8} {'per model':>9} {'target':>7} {'in flight':>9} {'allowed':>7} "
        f"{'served ms':>9} {'floor s':>7}"
    )
    for t in TYPES:
        target = 0.05 if t in LISTING else 1.0
        print(
            f"{t:10} {requests[t]:8.0f} {requests[t] / n:9.3f} {'<= ' + format(target, 'g'):>7} {peak[t]:9.0f} "
            f"{provider_type(t).max_concurrent_requests:7d} {served[t] * 1000:9.1f} {floors[t]:7.2f}"
        )
    print(f"train calls                 {fig.trains}  (target 0)")
    print(
        f"floor                       {floor:.2f} s  (slowest provider: requests x {latency * 1000:.0f} ms / in flight)"
    )
    print(f"floor as served             {served_floor:.2f} s  (the same with the time the simulator took per request)")
    print(
        f"wall (median of {rounds})          {wall:.2f} s  ({', '.join(f'{w:.2f}' for w in fig.walls)}; after one warm-up plan)"
    )
    print(f"wall / floor                {wall / floor:.2f}x  (target <= 1.5x)")
    print(f"wall / floor as served      {wall / served_floor:.2f}x")
    print(
        f"bare aiohttp wall / floor   {bare_wall / floor:.2f}x  (the same GETs, without reconciler: what the machine allows)"
    )
    print(f"reconciler CPU (median)     {cpu:.2f} s = {ours * 1000:.3f} ms per request")
    print(f"bare aiohttp CPU            {bare * 1000:.3f} ms per request (same requests, same simulator)")
    print(f"CPU per request ratio       {ours / bare if bare else 0:.2f}x  (target <= 2x)")
    if fig.cli:
        cli_wall, before, network = (statistics.median(c[k] for c in fig.cli) for k in range(3))
        after = statistics.median(c[0] - c[1] - c[2] for c in fig.cli)
        print(
            f"reconciler plan (median of {len(fig.cli)}) {cli_wall:.2f} s start to exit "
            f"({', '.join(f'{c[0]:.2f}' for c in fig.cli)}) = {cli_wall / floor:.2f}x the floor"
        )
        print(f"  before the first request  {before:.2f} s  (start-up, manifests loaded and validated, state read)")
        print(f"  first to last request     {network:.2f} s  (the network: {network / floor:.2f}x the floor)")
        print(f"  after the last request    {after:.2f} s  (plan, orphans, report, exit)")
    if fig.profile:
        print("\nwhere the CPU goes (cProfile of the last plan, by own time):")
        print("\n".join(fig.profile.splitlines()[:32]))
    return {
        "wall": wall,
        "floor": floor,
        "cpu_ratio": ours / bare if bare else 0.0,
        "trains": float(fig.trains),
        "cli_wall": statistics.median(c[0] for c in fig.cli) if fig.cli else 0.0,
        **{f"per_model.{t}": requests[t] / n for t in TYPES},
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=2000, help="models per provider")
    ap.add_argument("--latency", type=float, default=0.02)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="print a profile summary of the last plan")
    ap.add_argument("--workdir", type=Path, help="keep the worlds, manifests and state here and reuse them")
    args = ap.parse_args(argv)
    figures = asyncio.run(run(args.models, args.latency, args.rounds, args.profile, args.workdir))
    return report(figures, args.models, args.latency)


if __name__ == "__main__":
    main()
