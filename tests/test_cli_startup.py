"""What a fresh `reconciler` process loads for `--version` and `validate` (issue 14's start-up).

Subprocesses, because a fresh interpreter's `sys.modules` is the point: a module imported at the
top of the CLI costs every run its import time. No timing here (benchmarks/validate_scale.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from helpers import ROOT

from reconciler import __version__, runtime

PROBE = """\
import json, sys
from reconciler.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

#: never needed to print a version or check manifests offline
HEAVY = ("asyncio", "httpx", "reconciler.engine", "reconciler.state", "reconciler.sandbox", "stamina")


def loaded(*args: str, cwd: Path) -> tuple[int, set[str], str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    result = json.loads(done.stdout.splitlines()[-1])
    return result["code"], set(result["modules"]), done.stdout


def test_version_loads_neither_pydantic_yaml_nor_package_metadata(tmp_path: Path) -> None:
    code, modules, out = loaded("--version", cwd=tmp_path)
    assert code == 0 and f"version {__version__}" in out
    assert not modules & {"pydantic", "yaml", "importlib.metadata", *HEAVY}, modules & {"pydantic", "yaml", *HEAVY}


def test_version_is_the_installed_distributions() -> None:
    # --version prints reconciler.__version__ (no metadata lookup): it must be what pip installed
    assert __version__ == version(runtime.DISTRIBUTION)


def test_validate_of_one_file_loads_no_engine_and_no_other_providers_files(tmp_path: Path) -> None:
    code, modules, out = loaded("validate", str(ROOT / "specs" / "roboflow.yaml"), cwd=tmp_path)
    assert code == 0, out
    assert not modules & set(HEAVY), modules & set(HEAVY)
    # the PhotoGPT image walker loads only for PhotoGPT manifests
    assert "reconciler.providers.photogpt.images" not in modules
