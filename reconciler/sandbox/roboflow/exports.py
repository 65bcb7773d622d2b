"""Roboflow dataset exports as real zip files: what `version.download(fmt)` fetches from the link
that `GET /:ws/:proj/:version/:format` returns (providers.md section 3, [SDK] `Version.download`).

The layouts follow Roboflow's exports as the SDK reads them [SDK]: `yolov5pytorch` and the other
YOLO formats carry a `data.yaml` whose `train`/`val` the SDK rewrites after extracting; `coco` has
`<split>/_annotations.coco.json`. One tiny image per split keeps the files small; the contents are
[I] (plausible, not byte-for-byte Roboflow's).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import struct
import zipfile
import zlib
from typing import Any

SPLITS = (("train", "train"), ("valid", "val"), ("test", "test"))
#: Formats whose zip carries a data.yaml the SDK amends after extracting [SDK].
YOLO_FORMATS = frozenset({"yolov5pytorch", "yolov7pytorch", "yolov8", "yolov9", "yolov11", "mt-yolov6"})


def _png(width: int = 2, height: int = 2) -> bytes:
    """A valid grey PNG (standard library only)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def export_zip(project: str, version: str, fmt: str, classes: list[str]) -> bytes:
    """The zip of a version in `fmt`."""
    image = _png()
    names = classes or ["object"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(
            "README.roboflow.txt",
            f"{project} - v{version}\nExported by the reconciler sandbox in {fmt} format.\n",
        )
        for split, _ in SPLITS:
            file_name = f"{split}-0.png"
            if fmt == "coco":
                annotations = {
                    "info": {"description": f"{project} v{version}"},
                    "images": [{"id": 0, "file_name": file_name, "width": 2, "height": 2}],
                    "categories": [{"id": i, "name": n} for i, n in enumerate(names)],
                    "annotations": [{"id": 0, "image_id": 0, "category_id": 0, "bbox": [0, 0, 1, 1], "area": 1}],
                }
                zf.writestr(f"{split}/{file_name}", image)
                zf.writestr(f"{split}/_annotations.coco.json", json.dumps(annotations))
            else:
                zf.writestr(f"{split}/images/{file_name}", image)
                zf.writestr(f"{split}/labels/{split}-0.txt", "0 0.5 0.5 0.5 0.5\n")
        if fmt in YOLO_FORMATS or fmt.startswith("yolo"):
            lines = [f"{key}: ../{split}/images" for split, key in SPLITS]
            lines += [f"nc: {len(names)}", "names: " + json.dumps(names)]
            zf.writestr("data.yaml", "\n".join(lines) + "\n")
    return buf.getvalue()


def export_token(ws: str, proj: str, version: str, fmt: str) -> str:
    """The id of an export in its download link (the link needs no api_key, as Roboflow's)."""
    raw = json.dumps([ws, proj, version, fmt], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_token(token: str) -> tuple[str, str, str, str] | None:
    """(ws, proj, version, fmt) of an `export_token`, or None."""
    try:
        data: Any = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        return None
    if not (isinstance(data, list) and len(data) == 4 and all(isinstance(x, str) for x in data)):
        return None
    return data[0], data[1], data[2], data[3]


def export_key(secret: str, token: str) -> str:
    """The `key` that signs a download link ([D] links look like `/ds/<id>?key=<key>`)."""
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()[:20]
