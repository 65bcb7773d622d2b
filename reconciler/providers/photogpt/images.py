"""PhotoGPT's input images as files in the repository: matching the glob, checking, hashing.

No HTTP here: `validate` runs these checks offline, and the adapter uploads what they found.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

MIN_IMAGES, MAX_IMAGES = 12, 20  # [D] "Upload 12 to 20 modelInput images"
#: [D] "Request at most 20 MB". Whether MB is 10^6 or 2^20 bytes is not said [?]: a file of at most
#: 20,000,000 bytes leaves room for the multipart envelope under either reading.
MAX_IMAGE_BYTES = 20_000_000
#: [D] accepted formats, with the content type sent for each
CONTENT_TYPES: dict[str, str] = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "png": "image/png",
    "heic": "image/heic",
}


@dataclass(frozen=True)
class LocalImage:
    """One declared input image: where it is and the sha256 of its content."""

    path: Path
    sha256: str

    @property
    def extension(self) -> str:
        return self.path.suffix.lower().lstrip(".")


def match_images(pattern: str, manifest_dir: Path) -> list[Path]:
    """Files the glob matches, relative to the manifest's folder (`**` recurses), sorted."""
    full = os.path.join(manifest_dir, os.path.expanduser(pattern))
    return sorted(Path(p) for p in glob.glob(full, recursive=True) if os.path.isfile(p))


def _sniff(head: bytes) -> str | None:
    """The image format a file's first bytes show, among those PhotoGPT accepts."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"):
        return "heic"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def scan_images(pattern: str, manifest_dir: Path) -> tuple[list[LocalImage], list[str]]:
    """The declared images with their hashes, and every problem that would make PhotoGPT refuse them."""
    problems: list[str] = []
    images: list[LocalImage] = []
    paths = match_images(pattern, manifest_dir)
    allowed = ", ".join(CONTENT_TYPES)
    for path in paths:
        shown = os.path.relpath(path, manifest_dir)
        ext = path.suffix.lower().lstrip(".")
        if ext not in CONTENT_TYPES:
            problems.append(f"{shown}: PhotoGPT accepts only {allowed} images; narrow the glob or remove the file")
            continue
        try:
            size = path.stat().st_size
            with open(path, "rb") as fh:
                head = fh.read(16)
        except OSError as exc:
            problems.append(f"{shown}: cannot read ({exc.strerror or exc})")
            continue
        if size > MAX_IMAGE_BYTES:
            problems.append(f"{shown}: {size / 1e6:.1f} MB; PhotoGPT accepts at most 20 MB per upload")
            continue
        if _sniff(head) is None:
            problems.append(f"{shown}: not a {allowed} image (its content is not one of these formats)")
            continue
        images.append(LocalImage(path, _sha256(path)))
    if not problems and not MIN_IMAGES <= len(paths) <= MAX_IMAGES:
        problems.append(
            f"input_images {pattern!r} matches {len(paths)} file{'s' if len(paths) != 1 else ''} "
            f"under {manifest_dir or '.'}; PhotoGPT trains on {MIN_IMAGES} to {MAX_IMAGES} images"
        )
    seen: dict[str, Path] = {}
    for img in images:
        if img.sha256 in seen:
            problems.append(
                f"{os.path.relpath(img.path, manifest_dir)} has the same content as "
                f"{os.path.relpath(seen[img.sha256], manifest_dir)}; each input image must be distinct"
            )
        seen.setdefault(img.sha256, img.path)
    return images, problems
