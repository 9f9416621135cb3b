"""sha256 manifest of a model directory, written beside the checkpoint and checked at load.

A half-copied or tampered weight file loads without complaint and serves garbage; a manifest makes the
loader refuse it with a message naming the file. The manifest is `manifest.json`:

    {"algorithm": "sha256", "files": {"model.safetensors": {"sha256": "...", "size_bytes": 123}, ...}}

`verify_manifest` on a directory without a manifest returns without checking (the caller logs that), so
real checkpoints copied without one still load.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

MANIFEST_FILENAME = "manifest.json"
HASH_CHUNK_BYTES = 4 * 1024 * 1024


class IntegrityError(Exception):
    """A file in a model directory does not match its manifest (or the manifest itself is unusable)."""


def sha256_file(path: Path, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB weight files do not need to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _default_files(model_dir: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in model_dir.iterdir()
        if entry.is_file() and entry.name != MANIFEST_FILENAME and not entry.name.startswith(".")
    )


def write_manifest(model_dir: Path | str, files: Iterable[str] | None = None) -> Path:
    """Hash `files` (names relative to model_dir; default: every regular file) into manifest.json.

    Written atomically (temp file + rename) so a crash never leaves a truncated manifest.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise IntegrityError(f"model directory {model_dir} does not exist or is not a directory")
    names = sorted(files) if files is not None else _default_files(model_dir)
    entries: dict[str, dict[str, object]] = {}
    for name in names:
        file_path = model_dir / name
        if not file_path.is_file():
            raise IntegrityError(f"cannot add {name} to the manifest: {file_path} is not a file")
        entries[name] = {"sha256": sha256_file(file_path), "size_bytes": file_path.stat().st_size}
    manifest = {"algorithm": "sha256", "files": entries}
    manifest_path = model_dir / MANIFEST_FILENAME
    temp_path = model_dir / f".{MANIFEST_FILENAME}.tmp"
    temp_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temp_path, manifest_path)
    return manifest_path


def read_manifest(model_dir: Path | str) -> dict[str, str] | None:
    """{file name: expected sha256} from manifest.json, or None when the directory has no manifest."""
    manifest_path = Path(model_dir) / MANIFEST_FILENAME
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{manifest_path} is not readable JSON: {exc}") from exc
    algorithm = manifest.get("algorithm", "sha256") if isinstance(manifest, dict) else None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if algorithm != "sha256" or not isinstance(files, dict):
        raise IntegrityError(
            f"{manifest_path} must be an object with \"algorithm\": \"sha256\" and a \"files\" object "
            f"mapping file names to {{\"sha256\": hex}}; got algorithm={algorithm!r}"
        )
    expected: dict[str, str] = {}
    for name, entry in files.items():
        digest = entry.get("sha256") if isinstance(entry, dict) else entry
        if not isinstance(digest, str) or len(digest) != 64:
            raise IntegrityError(f"{manifest_path}: entry for {name} has no 64-hex-digit sha256: {entry!r}")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise IntegrityError(f"{manifest_path}: file name {name!r} must be relative to the model directory")
        expected[name] = digest.lower()
    return expected


def verify_manifest(model_dir: Path | str) -> None:
    """Check every file listed in manifest.json against its sha256.

    Raises IntegrityError naming the file (and both hashes on a mismatch, or saying it is missing).
    Returns without checking when there is no manifest.
    """
    model_dir = Path(model_dir)
    expected = read_manifest(model_dir)
    if expected is None:
        return
    for name, expected_sha256 in sorted(expected.items()):
        file_path = model_dir / name
        if not file_path.is_file():
            raise IntegrityError(f"{file_path} is listed in {MANIFEST_FILENAME} but missing")
        actual_sha256 = sha256_file(file_path)
        if actual_sha256 != expected_sha256:
            raise IntegrityError(
                f"{file_path} does not match {MANIFEST_FILENAME}: expected sha256 {expected_sha256}, "
                f"got {actual_sha256} (the file is corrupt, truncated or was replaced)"
            )
