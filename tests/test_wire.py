"""Reading a provider's answer (`providers/wire.py`): the fast JSON parser must read what json reads."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.providers.wire import Response


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"id": 123456789012345678901234567890}', {"id": 123456789012345678901234567890}),
        (b'{"id": 18446744073709551616, "n": [1.5, 2]}', {"id": 2**64, "n": [1.5, 2]}),
        (b'{"id": 18446744073709551615}', {"id": 2**64 - 1}),
        (b'{"loss": NaN, "x": 1}', {"loss": float("nan"), "x": 1}),
        (b'{"ok": true}', {"ok": True}),
    ],
)
def test_an_answer_reads_as_json_reads_it(body: bytes, expected: dict[str, Any]) -> None:
    # orjson reads an integer past 64 bits as a float: an id of that size must stay exact
    got = Response(200, {}, body, "roboflow").json()
    assert repr(got) == repr(expected) and got.keys() == expected.keys()
    assert all(type(got[k]) is type(expected[k]) for k in expected)
