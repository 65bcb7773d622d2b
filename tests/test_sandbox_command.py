"""The standalone sandbox (`reconciler sandbox`): the exports that make `apply --wait` against it
take seconds, the length of its trainings, and clearing the faults injected into it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import copy_quickstart, wait_until

from reconciler import runtime
from reconciler.errors import ConfigError
from reconciler.spec import load_manifests
from reconciler.state import open_state


def test_sandbox_command_prints_the_poll_interval_and_honours_training_seconds(tmp_path: Path) -> None:
    """`reconciler sandbox` as a process: its exports end with the poll interval that suits its
    trainings of seconds, it takes their length from RECONCILER_SANDBOX_TRAINING_SECONDS, and a
    pending fault (a fail-next too: it persists with the world) is cleared by DELETE /_sandbox/faults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env["RECONCILER_SANDBOX_TRAINING_SECONDS"] = "7.5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "sandbox", "--dir", str(tmp_path / "world")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        stdout = proc.stdout
        exports: dict[str, str] = {}

        def read() -> None:
            for line in stdout:
                key, _, value = line.removeprefix("export ").strip().partition("=")
                exports[key] = value

        threading.Thread(target=read, daemon=True).start()
        wait_until(lambda: exports.get("RECONCILER_POLL_INTERVAL"), 15, "the poll interval export")
        assert exports["RECONCILER_POLL_INTERVAL"] == "0.5s"
        assert len(exports) == 11  # five base URLs, five keys, the poll interval
        assert proc.stderr is not None
        hint = proc.stderr.readline()  # "# request log: http://127.0.0.1:PORT/_sandbox/requests; ..."
        control = hint.split("request log: ", 1)[1].split("/requests", 1)[0]
        assert _call("GET", control)["training_seconds"] == 7.5

        fault = {"provider": "roboflow", "path": "/train$", "status": 500, "times": -1}
        _call("POST", control + "/faults", fault)
        assert _call("POST", control + "/roboflow/fail-next", {"n": 2}) == {"pending": 2}
        assert _call("DELETE", control + "/faults") == {"cleared": 3, "faults": 1, "fail_next": 2}
        assert _call("GET", control + "/faults") == []
        assert "fail_next" not in _call("GET", control + "/roboflow/world").get("_sandbox", {})
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def _call(method: str, url: str, body: object = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as resp:
        return json.loads(resp.read())


def test_sandbox_training_seconds_from_the_flag_the_environment_or_3() -> None:
    env = {"RECONCILER_SANDBOX_TRAINING_SECONDS": "0.5"}
    assert runtime.sandbox_training_seconds(None, env) == 0.5
    assert runtime.sandbox_training_seconds(2.0, env) == 2.0  # the flag wins
    assert runtime.sandbox_training_seconds(None, {}) == 3.0
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(ConfigError, match="RECONCILER_SANDBOX_TRAINING_SECONDS must be a number"):
            runtime.sandbox_training_seconds(None, {"RECONCILER_SANDBOX_TRAINING_SECONDS": bad})


async def test_the_exported_poll_interval_replaces_every_providers_floor(tmp_path: Path) -> None:
    """PhotoGPT's 5-minute floor and Roboflow's 30 s: with the sandbox's export, every provider
    is polled every 0.5 s."""
    from reconciler.engine import Engine

    copy_quickstart(tmp_path / "specs")
    manifests = load_manifests([str(tmp_path / "specs")])
    override = runtime.poll_override(None, {runtime.POLL_INTERVAL_ENV: runtime.SANDBOX_POLL_INTERVAL})
    state = await open_state(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        floors = Engine(manifests, state)
        assert floors.poll_interval("photogpt") == timedelta(minutes=5)
        engine = Engine(manifests, state, poll_interval=override)
        assert {engine.poll_interval(p) for p in manifests.providers} == {timedelta(seconds=0.5)}
    finally:
        await state.close()
