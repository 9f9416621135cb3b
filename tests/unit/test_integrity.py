"""The sha256 manifest: written for a directory, verified, and every way a check must fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dssidecar.integrity import (
    MANIFEST_FILENAME,
    IntegrityError,
    read_manifest,
    sha256_file,
    verify_manifest,
    write_manifest,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def _model_dir(tmp_path: Path) -> Path:
    (tmp_path / "model.safetensors").write_bytes(b"\x00weights" * 1000)
    (tmp_path / "config.json").write_text('{"a": 1}')
    return tmp_path


def test_written_manifest_verifies_and_lists_every_file(tmp_path: Path) -> None:
    model_dir = _model_dir(tmp_path)
    manifest_path = write_manifest(model_dir)
    assert manifest_path == model_dir / MANIFEST_FILENAME
    expected = read_manifest(model_dir)
    assert expected is not None
    assert sorted(expected) == ["config.json", "model.safetensors"]
    verify_manifest(model_dir)


def test_changed_weight_file_fails_naming_file_and_both_hashes(tmp_path: Path) -> None:
    model_dir = _model_dir(tmp_path)
    write_manifest(model_dir)
    good_sha = sha256_file(model_dir / "model.safetensors")
    with open(model_dir / "model.safetensors", "r+b") as handle:
        handle.seek(3)
        handle.write(b"X")
    bad_sha = sha256_file(model_dir / "model.safetensors")
    with pytest.raises(IntegrityError) as excinfo:
        verify_manifest(model_dir)
    message = str(excinfo.value)
    assert "model.safetensors" in message and good_sha in message and bad_sha in message


def test_missing_listed_file_fails_naming_it(tmp_path: Path) -> None:
    model_dir = _model_dir(tmp_path)
    write_manifest(model_dir)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(IntegrityError, match=r"model\.safetensors.*missing"):
        verify_manifest(model_dir)


def test_directory_without_manifest_is_not_checked(tmp_path: Path) -> None:
    model_dir = _model_dir(tmp_path)
    assert read_manifest(model_dir) is None
    verify_manifest(model_dir)  # no exception


def test_manifest_restricted_to_named_files_ignores_others(tmp_path: Path) -> None:
    model_dir = _model_dir(tmp_path)
    write_manifest(model_dir, files=["model.safetensors"])
    (model_dir / "config.json").write_text("changed")
    verify_manifest(model_dir)


@pytest.mark.parametrize(
    "manifest_text",
    ["not json", '{"algorithm": "md5", "files": {}}', '{"files": {"x": {"sha256": "abc"}}}',
     '{"files": {"../escape": {"sha256": "' + "0" * 64 + '"}}}'],
)
def test_unusable_manifest_is_rejected_with_reason(tmp_path: Path, manifest_text: str) -> None:
    model_dir = _model_dir(tmp_path)
    (model_dir / MANIFEST_FILENAME).write_text(manifest_text)
    with pytest.raises(IntegrityError, match="manifest.json"):
        verify_manifest(model_dir)


def test_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="does not exist"):
        write_manifest(tmp_path / "nope")


@settings(max_examples=25, deadline=None)
@given(content=st.binary(max_size=5000), chunk_bytes=st.integers(min_value=1, max_value=4096))
def test_chunked_hash_equals_whole_file_hash(tmp_path_factory: pytest.TempPathFactory, content: bytes,
                                             chunk_bytes: int) -> None:
    import hashlib

    path = tmp_path_factory.mktemp("h") / "blob"
    path.write_bytes(content)
    assert sha256_file(path, chunk_bytes=chunk_bytes) == hashlib.sha256(content).hexdigest()


def test_manifest_is_stable_json(tmp_path: Path) -> None:
    model_dir = _model_dir(tmp_path)
    first = write_manifest(model_dir).read_bytes()
    second = write_manifest(model_dir).read_bytes()
    assert first == second
    assert json.loads(first)["algorithm"] == "sha256"
