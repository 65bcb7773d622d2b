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
from reconciler.providers.catalog import known_types

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
BARE = "import json, sys; print(json.dumps(sorted(sys.modules)))"

#: never needed to print a version or check manifests offline
HEAVY = ("asyncio", "httpx", "reconciler.engine", "reconciler.state", "reconciler.sandbox", "stamina")

#: all of reconciler that `validate` of one Roboflow file loads: the manifest layer, its provider
#: types' schemas and the report's problem list, never plan (nor anything that runs a plan)
VALIDATE_MODULES = {
    "reconciler",
    "reconciler.cli",
    "reconciler.domain",
    "reconciler.envelope",
    "reconciler.errors",
    "reconciler.logs",
    "reconciler.forked",
    "reconciler.heap",
    "reconciler.manifest_files",
    "reconciler.providers",
    "reconciler.providers.catalog",
    "reconciler.providers.identity",
    "reconciler.providers.origins",
    "reconciler.providers.provider_type",
    *(f"reconciler.providers.{name}{part}" for name in known_types() for part in ("", ".schema")),
    "reconciler.report",
    "reconciler.report.base",
    "reconciler.report.commands",
    "reconciler.report.exits",
    "reconciler.report.failures",
    "reconciler.report.github",
    "reconciler.report.text",
    "reconciler.report.views",
    "reconciler.runtime",
    "reconciler.selectors",
    "reconciler.spec",
    "reconciler.values",
    "reconciler.yamlpos",
}
#: the third-party packages it needs (top-level import names)
VALIDATE_PACKAGES = {
    "annotated_types",
    "click",
    "pydantic",
    "pydantic_core",
    "typing_extensions",
    "typing_inspection",
    "yaml",
}


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


def test_validate_of_one_file_loads_exactly_its_manifest_layer(tmp_path: Path) -> None:
    code, modules, out = loaded("validate", str(ROOT / "specs" / "roboflow.yaml"), cwd=tmp_path)
    assert code == 0, out
    ours = {m for m in modules if m.partition(".")[0] == "reconciler"}
    assert ours == VALIDATE_MODULES, (
        f"loaded, not pinned: {ours - VALIDATE_MODULES}; pinned, not loaded: {VALIDATE_MODULES - ours}"
    )
    # what site loads (an editable install's finder) is not ours, nor private helper modules
    # (`_cython_*` of PyYAML's C loader, `_sysconfigdata_*`)
    bare = json.loads(subprocess.run([sys.executable, "-c", BARE], capture_output=True, text=True, check=True).stdout)
    tops = {m.partition(".")[0] for m in modules if not m.startswith(("_", "cython_"))}
    assert tops - set(bare) - set(sys.stdlib_module_names) - {"reconciler"} == VALIDATE_PACKAGES


def test_an_install_adds_no_import_finder_to_every_python_start() -> None:
    # setuptools' editable finder (flat layout) is imported by `site` at every start of the venv's
    # Python; `package-dir` in pyproject.toml makes `pip install -e .` write a plain path instead
    bare = json.loads(subprocess.run([sys.executable, "-c", BARE], capture_output=True, text=True, check=True).stdout)
    assert not [m for m in bare if m.startswith("__editable__")]
    assert not [f for f in sys.meta_path if type(f).__module__.startswith("__editable__")]
