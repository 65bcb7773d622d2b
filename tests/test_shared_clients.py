"""HTTP clients shared by the daemon's engines (`providers/clients.py`): after a saved edit the
daemon runs two engines at once (one per lane), and a provider's request rate and in-flight limit
must hold across both, so both must send through one client."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_daemon_parts import daemon_with, write
from test_many_writers import write_model

from reconciler.engine import Engine
from reconciler.providers.clients import SharedClients
from reconciler.spec import load_manifests
from reconciler.state import open_state

SANDBOX = {"roboflow": ("http://127.0.0.1:9", "key-1")}


async def test_engines_for_the_same_provider_settings_share_one_client(tmp_path: Path) -> None:
    write_model(tmp_path / "specs", 10)
    state = await open_state(f"sqlite:///{tmp_path / 'state.db'}")
    clients = SharedClients()
    try:
        old = Engine(load_manifests([tmp_path / "specs"]), state, env={}, endpoints=SANDBOX, clients=clients)
        (model,) = old.manifests.models.values()
        first = old.adapter(model.provider).http
        write_model(tmp_path / "specs", 11)  # a saved edit: the daemon builds a new engine
        new = Engine(load_manifests([tmp_path / "specs"]), state, env={}, endpoints=SANDBOX, clients=clients)
        assert new.adapter(model.provider).http is first  # one rate, one in-flight limit
        assert len(clients) == 1

        other_key = {"roboflow": ("http://127.0.0.1:9", "key-2")}  # the settings changed: a client of its own
        third = Engine(load_manifests([tmp_path / "specs"]), state, env={}, endpoints=other_key, clients=clients)
        assert third.adapter(model.provider).http is not first and len(clients) == 2

        await old.aclose()  # the retired engine: its client stays open for the new one
        assert first._session is None or not first._session.closed
        assert len(clients) == 2
        await new.aclose()
        await third.aclose()
        assert len(clients) == 0  # closed with the last engine using each
    finally:
        await clients.aclose()
        await state.close()


async def test_the_daemon_builds_its_engines_on_one_set_of_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROBOFLOW_API_KEY", "key-1")
    d = daemon_with(tmp_path, "a")
    d.state = await open_state(d.opts.state_url)
    try:
        old = await d._refresh_engine()
        client = old.adapter("roboflow").http
        d._engine_users[id(old)] = 1  # the bulk lane's batch is still running on it
        write(tmp_path / "specs", "a", epochs=11)
        d._load("change")  # a saved edit: the change lane gets a new engine
        new = await d._refresh_engine()
        assert new is not old and old in d._retired
        assert new.adapter("roboflow").http is client  # both lanes under one rate and one limit
    finally:
        for engine in [*d._retired, d.engine]:
            if engine is not None:
                await engine.aclose()
        await d.clients.aclose()
        await d.state.close()
