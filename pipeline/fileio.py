"""Small file helpers shared across packages: content digests, atomic writes, sealed (digest-checked) directories."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import ClipwatchError


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _new_file_mode() -> int:
    mask = os.umask(0o022)  # read the process umask (there is no getter) and put it straight back
    os.umask(mask)
    return 0o666 & ~mask


_NEW_FILE_MODE = _new_file_mode()


def atomic_write(path: str | os.PathLike[str], content: bytes | str | Callable[[str], object], *,
                 durable: bool = False) -> None:
    """Write ``content`` to a temporary file beside ``path``, then rename it over ``path``.

    ``content`` is the bytes (or UTF-8 text) of the file, or a callable ``write(tmp_path)`` that writes the
    temporary file itself (for libraries that take a path, such as safetensors). Readers never see a partial
    file, and a failed write leaves no temporary file behind. ``durable``: the file is fsync'd before the rename
    and its directory after it, so the new content, not just "old or new", survives a power loss.
    """
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _NEW_FILE_MODE)  # mkstemp's 0600 would make every rewritten file private
        if callable(content):
            os.close(handle)
            content(tmp)
        else:
            with os.fdopen(handle, "wb") as file:
                file.write(content.encode("utf-8") if isinstance(content, str) else content)
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if durable:
        fsync_path(path.parent)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file's content or a directory's entries (a created, renamed or removed file) to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


DIGESTS_FILE = "digests.json"
DIGESTS_FORMAT = "clipwatch.digests"
DIGESTS_VERSION = 1


class IntegrityError(ClipwatchError, ValueError):
    """A sealed directory whose files no longer match its digest manifest, or a directory that is not sealed."""


def seal_directory(directory: str | os.PathLike[str]) -> str:
    """Write ``digests.json`` (SHA-256 of every other file below ``directory``); return the directory's digest.

    Seal only a directory whose files you trust: loaders then refuse any later edit, addition or removal.
    """
    directory = Path(directory)
    manifest = {"format": DIGESTS_FORMAT, "format_version": DIGESTS_VERSION,
                "files": {name: file_sha256(directory / name) for name in _sealable_files(directory)}}
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write(directory / DIGESTS_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return file_sha256(directory / DIGESTS_FILE)


def verify_directory(directory: str | os.PathLike[str], what: str = "directory") -> str:
    """Check every file below ``directory`` against its ``digests.json``; return the directory's digest.

    The digest (SHA-256 of ``digests.json``) names the exact contents. Raises a one-line :class:`IntegrityError`
    naming the first file that was edited, added or removed since :func:`seal_directory`, or the missing manifest.
    """
    directory = Path(directory)
    path = directory / DIGESTS_FILE
    if not path.is_file():
        raise IntegrityError(
            f"{path}: missing, so the {what}'s files cannot be verified (written before clipwatch sealed them?); "
            f"if you trust them, seal it: python -c \"from pipeline.fileio import seal_directory; "
            f"seal_directory('{directory}')\"")
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw)
        listed = manifest["files"] if manifest.get("format") == DIGESTS_FORMAT else None
    except (ValueError, TypeError, KeyError, AttributeError):
        listed = None
    if not isinstance(listed, dict) or manifest.get("format_version") != DIGESTS_VERSION:
        raise IntegrityError(f"{path}: not a {DIGESTS_FORMAT} version {DIGESTS_VERSION} manifest")
    present = _sealable_files(directory)
    for name in sorted(set(listed) | set(present)):
        if name not in present:
            raise IntegrityError(f"{directory / name}: listed in {DIGESTS_FILE} but missing ({what} edited after "
                                 "it was sealed?)")
        if name not in listed:
            raise IntegrityError(f"{directory / name}: not listed in {DIGESTS_FILE} (file added to the {what} "
                                 "after it was sealed?)")
        if file_sha256(directory / name) != listed[name]:
            raise IntegrityError(f"{directory / name}: SHA-256 mismatch ({what} edited after it was sealed?)")
    return hashlib.sha256(raw).hexdigest()


def _sealable_files(directory: Path) -> list[str]:
    """Relative POSIX paths of every file below ``directory`` except the digest manifest."""
    return sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*")
                  if path.is_file() and path.relative_to(directory).as_posix() != DIGESTS_FILE)
