"""PhotoGPT's input images as files in the repository: matching the glob, checking, hashing.

No HTTP here: `validate` runs these checks offline, and the adapter uploads what they found.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

MIN_IMAGES, MAX_IMAGES = 12, 20  # [D] "Upload 12 to 20 modelInput images"
#: [D] "Request at most 20 MB". Whether MB is 10^6 or 2^20 bytes is not said [?]: a file of at most
#: 20,000,000 bytes leaves room for the multipart envelope under either reading.
MAX_IMAGE_BYTES = 20_000_000
#: a glob lists at most this many directory entries and matches at most this many files: a manifest
#: (untrusted) must not make `validate` walk the filesystem
MAX_VISITED, MAX_MATCHES = 10_000, 1_000
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


class GlobError(ValueError):
    """A glob that must not be walked or whose matches must not be read; the message says why."""


_MAGIC = re.compile(r"[*?[]")


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _hidden_ok(name: str, segment: str) -> bool:
    # as glob: wildcards never match names starting with '.' unless the pattern's segment does
    return not name.startswith(".") or segment.startswith(".")


class _Walk:
    """A bounded glob walk under `root`: at most MAX_VISITED entries listed, MAX_MATCHES files."""

    def __init__(self, pattern: str, root: Path, reads: set[Path] | None = None) -> None:
        self.pattern = pattern
        self.root = root
        #: the folders listed or looked in: a change inside one can change the matches
        self.reads: set[Path] = reads if reads is not None else set()
        self.visited = 0
        self.matches: dict[Path, None] = {}
        self.seen: set[tuple[Path, int]] = set()

    def _list(self, folder: Path) -> list[os.DirEntry[str]]:
        self.reads.add(folder)
        try:
            with os.scandir(folder) as it:
                entries = []
                for entry in it:
                    self.visited += 1
                    if self.visited > MAX_VISITED:
                        raise GlobError(
                            f"input_images {self.pattern!r} visits more than {MAX_VISITED:,} entries; "
                            "narrow the glob to the images' folder"
                        )
                    entries.append(entry)
                return entries
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return []

    def _confined(self, path: Path) -> Path:
        real = path.resolve()
        if not _inside(real, self.root):
            raise GlobError(
                f"input_images {self.pattern!r}: {path} resolves to {real}, outside the repository root "
                f"{self.root}; only files inside the repository can be training data"
            )
        return real

    def _match(self, path: Path, symlink: bool = True) -> None:
        # an entry listed in a folder whose real path is known (inside the root: the walk checked it)
        # and that is not a symlink is inside too: only symlinks are resolved (a path each, the
        # walk's largest cost at 12 images a model)
        if symlink:
            self._confined(path)
        self.matches[path] = None
        if len(self.matches) > MAX_MATCHES:
            raise GlobError(f"input_images {self.pattern!r} matches more than {MAX_MATCHES:,} files; narrow the glob")

    def run(self, base: Path, segments: list[str]) -> list[Path]:
        stack: list[tuple[Path, int]] = [(base, 0)]
        while stack:
            folder, i = stack.pop()
            # by real path: a symlink loop inside the repository lists each folder once per step
            real = folder.resolve()
            key = (real, i)
            if key in self.seen:
                continue
            self.seen.add(key)
            if i == len(segments):
                continue
            seg, last = segments[i], i == len(segments) - 1
            # the entries listed are inside the root as long as their folder is (or a symlink resolved)
            listed_inside = _inside(real, self.root)
            if seg == "**":
                stack.append((folder, i + 1))  # zero folders
                for entry in self._list(folder):
                    if not _hidden_ok(entry.name, seg):
                        continue
                    path = Path(entry.path)
                    if entry.is_dir():
                        if entry.is_symlink():
                            self._confined(path)
                        stack.append((path, i))
                    elif last and entry.is_file():
                        self._match(path, entry.is_symlink() or not listed_inside)
            elif _MAGIC.search(seg):
                for entry in self._list(folder):
                    if not (_hidden_ok(entry.name, seg) and fnmatch.fnmatchcase(entry.name, seg)):
                        continue
                    self._step(Path(entry.path), i, last, stack, entry, listed_inside)
            else:
                self._step(folder / seg, i, last, stack)
        return sorted(self.matches)

    def _step(
        self,
        path: Path,
        i: int,
        last: bool,
        stack: list[tuple[Path, int]],
        entry: os.DirEntry[str] | None = None,
        listed_inside: bool = False,
    ) -> None:
        """`path` matched segment `i`; `entry`: its folder's listing of it (file type known, no stat)."""
        self.reads.add(path.parent)  # whether `path` exists is an entry of its folder
        if last:
            if entry.is_file() if entry is not None else path.is_file():
                self._match(path, entry is None or entry.is_symlink() or not listed_inside)
        elif entry.is_dir() if entry is not None else path.is_dir():
            if entry.is_symlink() if entry is not None else path.is_symlink():
                self._confined(path)
            stack.append((path, i + 1))


def match_images(
    pattern: str, manifest_dir: Path, root: Path | None = None, reads: set[Path] | None = None
) -> list[Path]:
    """Files the glob matches, relative to the manifest's folder (`**` recurses), sorted.

    Confined to `root` (the repository root; default the manifest's folder) after symlinks; at
    most MAX_VISITED entries are listed and MAX_MATCHES files matched. GlobError says why not.
    `reads` (when given) collects the folders the walk looked in.
    """
    if pattern.startswith("~"):
        raise GlobError(
            f"input_images {pattern!r}: '~' is not expanded; write a path relative to the manifest's folder"
        )
    if os.path.isabs(pattern) or pattern.startswith("\\"):
        raise GlobError(f"input_images {pattern!r} is absolute; write a path relative to the manifest's folder")
    real_root = Path(root if root is not None else manifest_dir).resolve()
    segments = [s for s in pattern.replace("\\", "/").split("/") if s not in ("", ".")]
    literal: list[str] = []
    while segments and not _MAGIC.search(segments[0]) and len(segments) > 1:
        literal.append(segments.pop(0))
    if ".." in segments:
        raise GlobError(f"input_images {pattern!r}: '..' may only come before the first wildcard")
    base = Path(manifest_dir, *literal)
    if reads is not None:
        reads.add(base)  # created or removed later: the matches change
    real_base = Path(os.path.normpath(Path(manifest_dir).resolve().joinpath(*literal)))
    if not _inside(real_base, real_root) or not _inside(Path(os.path.realpath(real_base)), real_root):
        raise GlobError(
            f"input_images {pattern!r} reaches {real_base}, outside the repository root {real_root}; "
            "only files inside the repository can be training data"
        )
    return _Walk(pattern, real_root, reads).run(base, segments)


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


def _read(path: Path) -> tuple[int, str | None, str | None]:
    """The file's size, the format its first bytes show and the sha256 of its content (None when
    larger than PhotoGPT accepts or not an image: never hashed), from one open."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_IMAGE_BYTES:
            return size, None, None
        head = fh.read(16)
        kind = _sniff(head)
        if kind is None:
            return size, None, None
        digest = hashlib.sha256(head)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return size, kind, digest.hexdigest()


def _shown(path: Path, manifest_dir: Path) -> str:
    """How a problem names the file: relative to the manifest's folder (only a problem needs it)."""
    return os.path.relpath(path, manifest_dir)


def scan_images(
    pattern: str, manifest_dir: Path, root: Path | None = None, reads: set[Path] | None = None
) -> tuple[list[LocalImage], list[str]]:
    """The declared images with their hashes, and every problem that would make PhotoGPT refuse them.

    Only files inside `root` (the repository root; default the manifest's folder) are read.
    `reads` (when given) collects the folders looked in and the files read: the answer changes
    only when one of them does (the daemon caches it on that).
    """
    problems: list[str] = []
    images: list[LocalImage] = []
    try:
        paths = match_images(pattern, manifest_dir, root, reads)
    except GlobError as exc:
        return [], [str(exc)]
    if reads is not None:
        reads.update(paths)
    allowed = ", ".join(CONTENT_TYPES)
    for path in paths:
        ext = path.suffix.lower().lstrip(".")
        if ext not in CONTENT_TYPES:
            problems.append(
                f"{_shown(path, manifest_dir)}: PhotoGPT accepts only {allowed} images; narrow the glob or remove the file"
            )
            continue
        try:
            size, kind, sha256 = _read(path)
        except OSError as exc:
            problems.append(f"{_shown(path, manifest_dir)}: cannot read ({exc.strerror or exc})")
            continue
        if size > MAX_IMAGE_BYTES:
            problems.append(
                f"{_shown(path, manifest_dir)}: {size / 1e6:.1f} MB; PhotoGPT accepts at most 20 MB per upload"
            )
            continue
        if kind is None or sha256 is None:
            problems.append(
                f"{_shown(path, manifest_dir)}: not a {allowed} image (its content is not one of these formats)"
            )
            continue
        images.append(LocalImage(path, sha256))
    if not problems and not MIN_IMAGES <= len(paths) <= MAX_IMAGES:
        problems.append(
            f"input_images {pattern!r} matches {len(paths)} file{'s' if len(paths) != 1 else ''} "
            f"under {manifest_dir or '.'}; PhotoGPT trains on {MIN_IMAGES} to {MAX_IMAGES} images"
        )
    seen: dict[str, Path] = {}
    for img in images:
        if img.sha256 in seen:
            problems.append(
                f"{_shown(img.path, manifest_dir)} has the same content as "
                f"{_shown(seen[img.sha256], manifest_dir)}; each input image must be distinct"
            )
        seen.setdefault(img.sha256, img.path)
    return images, problems
