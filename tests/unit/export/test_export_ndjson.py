"""NDJSON files: one per stream, each line carrying its id, rotated by size."""

from __future__ import annotations

import json
from pathlib import Path

from dsagent.export.ndjson import NdjsonDestination
from dsagent.export.spool import METRIC, SpoolEntry


def entry(seq: int, stream: str, size: int = 10) -> SpoolEntry:
    return SpoolEntry(seq, METRIC, stream, f"id-{seq}", json.dumps({"n": seq, "pad": "x" * size}).encode())


def test_one_file_per_stream_with_ids(tmp_path: Path) -> None:
    destination = NdjsonDestination(tmp_path, rotate_bytes=10**6, keep_files=2)
    outcome = destination.send([entry(1, "metrics-dsagent.gpu"), entry(2, "logs-dsagent.requests"),
                                entry(3, "metrics-dsagent.gpu")])
    assert outcome.acked == [1, 3, 2]
    gpu = [json.loads(line) for line in (tmp_path / "metrics-dsagent.gpu.ndjson").read_text().splitlines()]
    assert [(line["_id"], line["n"]) for line in gpu] == [("id-1", 1), ("id-3", 3)]
    assert (tmp_path / "logs-dsagent.requests.ndjson").exists()


def test_rotation_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    destination = NdjsonDestination(tmp_path, rotate_bytes=300, keep_files=2)
    for seq in range(20):
        destination.send([entry(seq, "s", size=100)])
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["s.ndjson", "s.ndjson.1", "s.ndjson.2"]
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 300
    last = [json.loads(line)["n"] for line in (tmp_path / "s.ndjson").read_text().splitlines()]
    assert last[-1] == 19


def test_unwritable_directory_is_a_retry_not_an_exception(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    outcome = NdjsonDestination(blocker / "sub", rotate_bytes=1000, keep_files=1).send([entry(1, "s")])
    assert outcome.retry == [1] and "s.ndjson" in outcome.retry_reason
