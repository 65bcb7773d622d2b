"""PhotoGPT request validation: the NOK error envelope [D], the limits and enums of models and
images, and the checks of model, upload and paging requests (providers.md section 5)."""

from __future__ import annotations

import json
from typing import Any

from reconciler.sandbox.wire import FormPart, SimHTTPError, SimRequest

API_VERSION = "1"  # [D] the `API-Version` header every request carries
MIN_INPUTS, MAX_INPUTS = 12, 20  # [D] 12-20 modelInput images to train; at most 20 of each type
MAX_REQUEST_BYTES = 20 * 1024 * 1024  # [D] "at most 20 MB" per request ([I] read as MiB)
FORMATS = ("jpg", "jpeg", "webp", "png", "heic")  # [D]
IMAGE_TYPES = ("modelInput", "auxiliaryType")  # [D] upload `type` values
#: [D] imageType filter of the model image list -> stored image type ("output" [I] for generations)
IMAGE_FILTERS: dict[str, tuple[str, ...]] = {
    "all": ("modelInput", "auxiliaryType", "output"),
    "input": ("modelInput",),
    "output": ("output",),
    "auxiliaryType": ("auxiliaryType",),
}
DEFAULT_PAGE_SIZE = 20  # [D] the example list answers pageSize 20
MAX_PAGE_SIZE = 100  # [I]
GENDERS = ("Male", "Female")  # [D]


def nok(status: int, message: str, err: str | None = None) -> SimHTTPError:
    """[D] the error envelope `{"status": "NOK", "message", "err", "result": null}`."""
    return SimHTTPError(status, {"status": "NOK", "message": message, "err": err or message, "result": None})


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def model_request(body: Any) -> tuple[dict[str, Any], Any]:
    """The model fields and the `id` (None: create) of a POST /models body, validated (400)."""
    if not isinstance(body, dict):
        raise nok(400, "Request body must be a JSON object", "invalid payload")
    fields = {k: body[k] for k in ("name", "age", "gender", "ethnicity", "eyeColor") if k in body}
    if "name" in fields and (not isinstance(fields["name"], str) or not fields["name"].strip()):
        raise nok(400, "name must be a non-empty string", "invalid payload")
    if "age" in fields and (not is_number(fields["age"]) or not 0 < fields["age"] < 150):
        raise nok(400, "age must be a number", "invalid payload")
    if "gender" in fields and fields["gender"] not in GENDERS:
        raise nok(400, "gender must be Male or Female", "invalid payload")
    for key in ("ethnicity", "eyeColor"):
        if key in fields and fields[key] is not None and not isinstance(fields[key], str):
            raise nok(400, f"{key} must be a string", "invalid payload")
    return fields, body.get("id")


def upload_request(req: SimRequest) -> tuple[FormPart, str, str, str]:
    """The file part, its filename, the modelID and the image type of an upload, validated (400)."""
    if len(req.body) > MAX_REQUEST_BYTES:
        raise nok(400, "Request is larger than 20 MB", "payload too large")  # [I] status 400
    form = req.form()
    files: list[FormPart] = form.get("file", [])
    datas: list[FormPart] = form.get("data", [])
    if len(files) != 1 or not files[0].filename:
        raise nok(400, "Exactly one `file` part is required", "invalid payload")
    if len(datas) != 1:
        raise nok(400, "A `data` part is required", "invalid payload")
    try:
        data = json.loads(datas[0].text)
    except ValueError:
        raise nok(400, "`data` must be a JSON string", "invalid payload") from None
    if not isinstance(data, dict) or not isinstance(data.get("modelID"), str):
        raise nok(400, "`data` must name a modelID", "invalid payload")
    image_type = data.get("type")
    if image_type not in IMAGE_TYPES:
        raise nok(400, f"type must be one of {', '.join(IMAGE_TYPES)}", "invalid payload")
    part = files[0]
    filename = str(part.filename)
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if ext not in FORMATS or not part.data:
        raise nok(400, f"Unsupported image format; use one of {', '.join(FORMATS)}", "invalid file")
    return part, filename, data["modelID"], image_type


def page_params(req: SimRequest) -> tuple[int, int]:
    """pageNum and pageSize of a list request, validated (400)."""
    try:
        page = int(req.q("pageNum") or 1)
        size = int(req.q("pageSize") or DEFAULT_PAGE_SIZE)
    except ValueError:
        raise nok(400, "pageNum and pageSize must be integers", "invalid query") from None
    if page < 1 or not 1 <= size <= MAX_PAGE_SIZE:
        raise nok(400, f"pageNum must be >= 1 and pageSize 1-{MAX_PAGE_SIZE}", "invalid query")
    return page, size
