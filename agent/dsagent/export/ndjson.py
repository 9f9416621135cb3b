"""NDJSON files, one per stream, rotated by size: the destination of the embedded default config.

Files are local, yet they are fed through the spool like any destination so a full disk or a crash
between collection and write loses nothing. Each write is fsynced before the spool acknowledges it, so
an acknowledged line survives a power loss too. Delivery is at-least-once: a crash after the write and
before the spool acknowledgement repeats those lines; every line carries its deterministic `_id` so a
reader can drop repeats.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from dsagent.export.destination import Destination, SendOutcome
from dsagent.export.spool import SpoolEntry


class NdjsonDestination(Destination):
    def __init__(self, directory: Path, rotate_bytes: int, keep_files: int, name: str = "file") -> None:
        if rotate_bytes <= 0:
            raise ValueError(f"ndjson rotate_bytes must be > 0, got {rotate_bytes}")
        self.name = name
        self.directory = directory
        self.rotate_bytes = rotate_bytes
        self.keep_files = keep_files

    def path_for(self, stream: str) -> Path:
        return self.directory / f"{stream}.ndjson"

    def send(self, entries: Sequence[SpoolEntry]) -> SendOutcome:
        by_stream: dict[str, list[SpoolEntry]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry)
        outcome = SendOutcome()
        for stream, stream_entries in by_stream.items():
            try:
                self._write(stream, stream_entries)
            except OSError as error:
                outcome.retry.extend(entry.seq for entry in stream_entries)
                outcome.retry_reason = f"writing {self.path_for(stream)} failed: {error}"
            else:
                outcome.acked.extend(entry.seq for entry in stream_entries)
        return outcome

    def _write(self, stream: str, entries: Sequence[SpoolEntry]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_for(stream)
        chunks = []
        for entry in entries:
            id_prefix = b'{"_id":' + json.dumps(entry.doc_id).encode()
            payload = entry.payload
            if payload.startswith(b"{") and len(payload) > 2:
                chunks.append(id_prefix + b"," + payload[1:])
            else:
                chunks.append(id_prefix + b"}")
        data = b"\n".join(chunks) + b"\n"
        if path.exists() and path.stat().st_size + len(data) > self.rotate_bytes and path.stat().st_size > 0:
            self._rotate(path)
        with path.open("ab") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # durable before the spool forgets these documents

    def _rotate(self, path: Path) -> None:
        oldest = path.with_name(f"{path.name}.{self.keep_files}")
        if oldest.exists():
            oldest.unlink()
        for index in range(self.keep_files - 1, 0, -1):
            source = path.with_name(f"{path.name}.{index}")
            if source.exists():
                source.rename(path.with_name(f"{path.name}.{index + 1}"))
        path.rename(path.with_name(f"{path.name}.1"))
