"""Lucid request validation: the upload rules of data batches, the train options, and the error
bodies (FastAPI-style [I]) (providers.md section 4)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from reconciler.sandbox.wire import FormPart, SimHTTPError

#: [?] Lucid's 401 body is not documented; [I] FastAPI-style, as the API's other answers look.
UNAUTHORIZED_BODY: dict[str, Any] = {"detail": "Invalid or missing API key"}

#: [D] limits of one uploaded CSV file.
MAX_FILE_BYTES = 1 << 30
MAX_ROWS = 10_000_000

#: [D] the column sets that tell entity files from interaction files.
ENTITY_COLUMNS = ("id", "type", "name", "metadata", "media_url")
INTERACTION_COLUMNS = ("type", "source_id", "target_id", "timestamp", "metadata")


def unprocessable(loc: list[str], msg: str, kind: str = "value_error") -> SimHTTPError:
    """A 422 with one validation error."""
    # [I] FastAPI's validation error shape
    return SimHTTPError(422, {"detail": [{"loc": loc, "msg": msg, "type": kind}]})


def not_found_error(message: str) -> SimHTTPError:
    """A 404 with this message."""
    return SimHTTPError(404, {"detail": message})  # [I] body


def form_tags(parts: list[FormPart]) -> list[str]:
    """The tags of an upload form (422 on a bad `tags` field)."""
    # [D] `tags` is a str or a list of str: repeated fields, or one field holding a JSON list [I]
    tags: list[str] = []
    for part in parts:
        text = part.text.strip()
        if text.startswith("["):
            try:
                values = json.loads(text)
            except ValueError:
                raise unprocessable(["body", "tags"], "tags must be a string or a list of strings") from None
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise unprocessable(["body", "tags"], "tags must be a string or a list of strings")
            tags.extend(values)
        elif text:
            tags.append(text)
    return tags


def count_rows(part: FormPart) -> tuple[int, int]:
    """(entities, interactions) in one CSV file; 422 for a file Lucid would refuse [D rules]."""
    name = part.filename or "files"
    if len(part.data) > MAX_FILE_BYTES:
        raise SimHTTPError(413, {"detail": f"{name}: files must be 1 GB or smaller"})
    reader = csv.reader(io.StringIO(part.text))
    header = [c.strip().lower() for c in next(reader, [])]
    if not header:
        raise unprocessable(["body", "files"], f"{name}: a header row is required")
    rows = sum(1 for row in reader if any(cell.strip() for cell in row))
    if rows > MAX_ROWS:
        raise unprocessable(["body", "files"], f"{name}: at most {MAX_ROWS} rows per file")
    if "source_id" in header and "target_id" in header:
        return 0, rows
    if "id" in header:
        return rows, 0
    raise unprocessable(
        ["body", "files"],
        f"{name}: unknown file kind; entity columns are {','.join(ENTITY_COLUMNS)}, "
        f"interaction columns {','.join(INTERACTION_COLUMNS)}",
    )


def train_options(body: dict[str, Any]) -> dict[str, Any]:
    """The options of a /train body, validated (422)."""
    known = ("model_id", "maximum_interaction_age_days", "data_tags", "data_filters", "callback_url")
    for key in body:
        if key not in known:
            raise unprocessable(["body", key], "Extra inputs are not permitted", "extra_forbidden")  # [I]
    model_id = body.get("model_id")
    if model_id is not None and (not isinstance(model_id, str) or not model_id):
        raise unprocessable(["body", "model_id"], "Input should be a non-empty string", "string_type")
    age = body.get("maximum_interaction_age_days")
    if age is not None and (not isinstance(age, int) or isinstance(age, bool) or age < 1):
        raise unprocessable(["body", "maximum_interaction_age_days"], "Input should be an integer >= 1")
    tags = body.get("data_tags")
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
        raise unprocessable(["body", "data_tags"], "Input should be a list of strings", "list_type")
    filters = body.get("data_filters")
    if filters is not None and not isinstance(filters, dict):
        raise unprocessable(["body", "data_filters"], "Input should be an object", "dict_type")
    callback = body.get("callback_url")
    if callback is not None and (not isinstance(callback, str) or not callback.startswith(("http://", "https://"))):
        raise unprocessable(["body", "callback_url"], "Input should be an http(s) URL", "url_parsing")
    return {
        "model_id": model_id,
        "maximum_interaction_age_days": age,
        "data_tags": tags,
        "data_filters": filters,
        "callback_url": callback,
    }
