"""Roboflow request validation: the accepted model types and training options, the error bodies
(providers.md section 3)."""

from __future__ import annotations

from typing import Any

from reconciler.sandbox.wire import SimHTTPError, SimRequest

_SIZES = ("n", "s", "m", "l", "x")
_YOLO_FAMILIES = ("yolov5", "yolov7", "yolov8", "yolov9", "yolov10", "yolov11", "yolov12", "yolo26")

#: Model types the simulated /train accepts. [D] examples: rfdetr-nano, rfdetr-base, yolov8,
#: yolov8n, yolov11; the rest is the SDK's custom-weights list [SDK]. The real list is whatever
#: the API returns for an invalid value [D], so this is an approximation [I].
VALID_MODEL_TYPES: tuple[str, ...] = (
    *(f"rfdetr-{s}" for s in ("nano", "small", "medium", "base", "large", "xlarge", "2xlarge")),
    *(f"rfdetr-seg-{s}" for s in ("nano", "small", "medium", "large", "xlarge", "2xlarge")),
    "rfdetr-keypoint-preview",
    "rfdetr-nas",
    *(name for family in _YOLO_FAMILIES for name in (family, *(family + s for s in _SIZES))),
    "yolonas",
    *(f"yolonas-{s}" for s in ("s", "m", "l")),
    "yolov8-cls",
    "yolov11-cls",
)

DEFAULT_MODEL_TYPE = "rfdetr-base"  # [I] what the server picks when modelType is omitted
DEFAULT_EPOCHS = 100  # [I] server default when epochs is omitted
SPEEDS = ("fast", "accurate")  # [D] fast is the default, accurate is paid

#: [I] The exact 401 body (message/type as the Graph-style errors Roboflow returns; the hint
#: wording is a guess).
UNAUTHORIZED_BODY: dict[str, Any] = {
    "error": {
        "message": "This API key does not exist (or has been revoked).",
        "type": "OAuthException",
        "hint": (
            "You may retrieve your API key via the Roboflow Dashboard. Go to Account > Roboflow Keys to retrieve yours."
        ),
    }
}


def conflict(message: str, code: str) -> SimHTTPError:
    return SimHTTPError(409, {"error": {"type": "Conflict", "message": message, "code": code}})


def not_found_error(message: str) -> SimHTTPError:
    return SimHTTPError(404, {"error": message})


def bad_request(message: str) -> SimHTTPError:
    return SimHTTPError(400, {"error": message})


def training_options(req: SimRequest) -> dict[str, Any]:
    """The options of a /train or /v2/trainings body, validated (400 on a bad one)."""
    body = req.json(default={})
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object.")
    # [SDK] sends camelCase modelType; the docs' curl sends model_type: accept both.
    model_type = body.get("modelType", body.get("model_type"))
    if model_type is None:
        model_type = DEFAULT_MODEL_TYPE
    if not isinstance(model_type, str) or model_type not in VALID_MODEL_TYPES:
        # [D] an invalid value returns the full list as an error ([I] the wording).
        raise bad_request(f"Invalid model type {model_type!r}. Valid model types are: {', '.join(VALID_MODEL_TYPES)}")
    recipe = body.get("trainRecipe")
    if recipe is not None and not isinstance(recipe, dict):
        raise bad_request("trainRecipe must be an object.")  # [I]
    hyper = recipe.get("hyperparameters") if isinstance(recipe, dict) else None
    # [SDK] the server resolves the recipe's (dense-filled) epochs ahead of the top-level value
    epochs = hyper.get("epochs") if isinstance(hyper, dict) and "epochs" in hyper else body.get("epochs")
    if epochs is None:
        epochs = DEFAULT_EPOCHS
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise bad_request("epochs must be a positive integer.")  # [I]
    speed = body.get("speed", "fast")
    if speed not in SPEEDS:
        raise bad_request("speed must be one of: fast, accurate.")  # [I]
    checkpoint = body.get("checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise bad_request("checkpoint must be a string.")  # [I]
    options: dict[str, Any] = {
        "modelType": model_type,
        "epochs": epochs,
        "speed": speed,
        "checkpoint": checkpoint,
    }
    if "trainRecipe" in body:
        options["trainRecipe"] = body["trainRecipe"]
    return options


def version_options(req: SimRequest) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """preprocessing, augmentation and versionName of a /generate body, validated (400)."""
    body = req.json(default={})
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object.")
    preprocessing = body.get("preprocessing", {})
    augmentation = body.get("augmentation", {})
    name = body.get("versionName")
    if not isinstance(preprocessing, dict) or not isinstance(augmentation, dict):
        raise bad_request("preprocessing and augmentation must be objects.")
    if name is not None and not isinstance(name, str):
        raise bad_request("versionName must be a string.")
    return preprocessing, augmentation, name
