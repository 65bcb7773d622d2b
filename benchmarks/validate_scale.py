"""How close does `reconciler validate` get to the YAML parser's floor, and how fast does the CLI start?

Generates FILES x DOCS TrainedModels (default 100 x 100 = 10,000; Roboflow, PredictHQ, Rebase
and Lucid in turn, block-style YAML with labels and policies) in a temporary folder, then runs the
CLI as a subprocess, ROUNDS times each (default 5), and prints the medians beside their targets:

    validate wall     `reconciler validate <folder>`, process start to exit      <= 1.5 s
    floor             composing the same files with PyYAML's C loader, line marks included
                      (`yaml.compose_all(text, Loader=yaml.CSafeLoader)`, in this process)
    ratio             validate wall / floor                                        <= 4x
    start-up          `reconciler --version`                                       <= 150 ms
    start-up          `reconciler validate <one file>` (one document)              <= 150 ms
                      (each timed command runs once first, unmeasured, to write its bytecode;
                      also shown with PYTHONDONTWRITEBYTECODE=1, where an editable install
                      compiles reconciler's sources on every start)
    interpreter       `python -c pass` and `python -S -c pass`: the start that is not ours

    python benchmarks/validate_scale.py [--files 100] [--docs 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import yaml

VALIDATE_TARGET = 1.5
RATIO_TARGET = 4.0
STARTUP_TARGET = 0.150

#: one document per provider type that validates offline (PhotoGPT reads image files: not a YAML cost)
DOCUMENTS = (
    """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata:
  name: detector-{i:05d}
  labels: {{team: vision, shard: s{shard}}}
spec:
  provider: roboflow
  model: {{workspace: bench, project: p{i:05d}}}
  training:
    version: 3
    model_type: rfdetr-nano
    epochs: 100
  policy:
    retrain_after: 30d
    on_unknown_baseline: adopt
""",
    """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata:
  name: forecast-{i:05d}
  labels: {{team: forecasting, shard: s{shard}}}
spec:
  provider: predicthq
  model: {{model_id: m{i:05d}-IXfFQ_osoTZjQ}}
  training:
    forecast_window: 7d
    algo: phq-xgboost
    demand_type: {{industry: restaurants, interval: day}}
    location: {{saved_location_id: "-ErnOilZkeP6P6CPdcXvTg"}}
  policy:
    retrain_after: 30d
""",
    """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata:
  name: site-{i:05d}
  labels: {{team: energy, shard: s{shard}}}
spec:
  provider: rebase
  model: {{site_id: a923653c-26f1-1b29-955d-ffde5d1{i:05d}}}
  training:
    splits:
      - {{start_date: "2023-01-01T00:00Z", end_date: "2023-12-31T23:00Z"}}
    output_backtest_data: false
""",
    """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata:
  name: recommender-{i:05d}
  labels: {{team: growth, shard: s{shard}}}
spec:
  provider: lucid
  model: {{model_id: recs-{i:05d}}}
  training:
    data_tags: [shop, s{shard}]
    maximum_interaction_age_days: 180
  policy:
    retrain_after: 30d
""",
)


def generate(folder: Path, files: int, docs: int) -> list[Path]:
    """`files` manifest files of `docs` TrainedModels each, named uniquely across all files."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for f in range(files):
        parts = []
        for d in range(docs):
            i = f * docs + d
            parts.append(DOCUMENTS[i % len(DOCUMENTS)].format(i=i, shard=f))
        path = folder / f"models-{f:03d}.yaml"
        path.write_text("---\n".join(parts), encoding="utf-8")
        written.append(path)
    return written


def reconciler_command() -> list[str]:
    """The installed console script beside this interpreter (what users run), else `-c main()`."""
    script = Path(sys.executable).with_name("reconciler")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from reconciler.cli import main; main()"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_cli(args: Sequence[str], rounds: int, cwd: Path, *, env: Mapping[str, str] = {}) -> tuple[float, float]:
    """Median wall and CPU (user + system) seconds of the CLI with `args`, process start to exit;
    it must exit 0. CPU says what the wall time would be on an idle machine (this one is shared)."""
    return time_command([*reconciler_command(), *args], rounds, cwd, env=env)


def time_command(command: Sequence[str], rounds: int, cwd: Path, *, env: Mapping[str, str] = {}) -> tuple[float, float]:
    """Median wall and CPU seconds of running `command` (which must exit 0) ROUNDS times, after one
    run not measured: the first run of a fresh install writes the bytecode every later run reads.

    PYTHONDONTWRITEBYTECODE is dropped from the children's environment unless `env` sets it: some
    shells (this machine's, some CI images) set it, and then an editable install compiles all of
    reconciler's sources on every start, which no ordinary user's CLI does."""
    walls, cpus = [], []
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("GITHUB_ACTIONS", "PYTHONDONTWRITEBYTECODE")},
        **env,
    }
    subprocess.run(command, cwd=cwd, env=env, capture_output=True, check=False)
    for _ in range(rounds):
        cpu, start = _children_cpu(), time.perf_counter()
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        cpus.append(_children_cpu() - cpu)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return statistics.median(walls), statistics.median(cpus)


def time_in_process(work: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `work` in this process."""
    walls, cpus = [], []
    for _ in range(rounds):
        cpu, start = time.process_time(), time.perf_counter()
        work()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def compose_floor(files: Sequence[Path]) -> int:
    """Compose every document with the C loader (nodes carry their line marks); the node count."""
    nodes = 0
    for path in files:
        for node in yaml.compose_all(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader):
            stack = [node]
            while stack:  # touch every mark, as the validator needs them
                n = stack.pop()
                nodes += n.start_mark.line >= 0
                if isinstance(n, yaml.MappingNode):
                    stack.extend(x for pair in n.value for x in pair)
                elif isinstance(n, yaml.SequenceNode):
                    stack.extend(n.value)
    return nodes


def run(files: int, docs: int, rounds: int) -> dict[str, float]:
    """Measure every figure; print each beside its target and return them."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        written = generate(root / "specs", files, docs)
        one = root / "one"
        generate(one, 1, 1)
        floor, floor_cpu = time_in_process(lambda: compose_floor(written), rounds)
        wall, wall_cpu = time_cli(["validate", str(root / "specs")], rounds, root)
        version, version_cpu = time_cli(["--version"], rounds, root)
        single, single_cpu = time_cli(["validate", str(one / "models-000.yaml")], rounds, root)
        compiling, compiling_cpu = time_cli(
            ["validate", str(one / "models-000.yaml")], rounds, root, env={"PYTHONDONTWRITEBYTECODE": "1"}
        )
        # the interpreter's own start (with and without `site`): the part of start-up that is not ours
        bare, bare_cpu = time_command([sys.executable, "-c", "pass"], rounds, root)
        no_site, no_site_cpu = time_command([sys.executable, "-S", "-c", "pass"], rounds, root)
    models = files * docs
    ratio = wall / floor
    ms = 1000
    print(f"manifests                    {models:,} TrainedModels ({files} files x {docs} documents)")
    print(f"rounds                       {rounds} (medians; CPU = user + system, what an idle machine's wall would be)")
    print(
        f"validate wall                {wall:.3f} s   (target <= {VALIDATE_TARGET} s at 10,000)   CPU {wall_cpu:.3f} s"
    )
    print(
        f"floor: C-loader compose      {floor:.3f} s   (yaml.compose_all with CSafeLoader, marks)   CPU {floor_cpu:.3f} s"
    )
    print(
        f"validate / floor             {ratio:.2f}x    (target <= {RATIO_TARGET:.0f}x)   CPU {wall_cpu / floor_cpu:.2f}x"
    )
    print(
        f"start-up --version           {version * ms:.0f} ms    (target <= {STARTUP_TARGET * ms:.0f} ms)   CPU {version_cpu * ms:.0f} ms"
    )
    print(
        f"start-up validate one file   {single * ms:.0f} ms    (target <= {STARTUP_TARGET * ms:.0f} ms)   CPU {single_cpu * ms:.0f} ms"
    )
    print(
        f"  the same, no bytecode kept {compiling * ms:.0f} ms    (PYTHONDONTWRITEBYTECODE=1: an editable install "
        f"compiles reconciler's sources each start)   CPU {compiling_cpu * ms:.0f} ms"
    )
    print(
        f"interpreter alone            {bare * ms:.0f} ms    (python -c pass; -S: {no_site * ms:.0f} ms)   "
        f"CPU {bare_cpu * ms:.0f} ms (-S: {no_site_cpu * ms:.0f} ms)"
    )
    return {"validate": wall, "floor": floor, "ratio": ratio, "version": version, "single": single}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.files < 1 or args.docs < 1:
        ap.error("--files, --docs and --rounds must be at least 1")
    run(args.files, args.docs, args.rounds)


if __name__ == "__main__":
    main()
