"""The contract between the spool drainer and a destination (Elasticsearch, NDJSON files, OTLP).

A destination does two jobs: it encodes what the OpenTelemetry exporters hand over into spool records
(documents for Elasticsearch and files, protobuf requests for OTLP), and it sends a batch read back from
the spool, saying per entry whether it was acknowledged, must be dead-lettered, or retried later.
`send` never raises: a failure is an outcome.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import MetricsData

from dsagent.export.documents import Document
from dsagent.export.spool import SpoolEntry, SpoolRecord


@dataclass
class SendOutcome:
    """Per-entry result of one send: `acked` and `dead` leave the spool, `retry` stays for later.

    `refused`: the destination refused us for a reason an operator must fix (credentials, rights, a missing
    endpoint or index): retried like any failure, but counted and shown as a refusal, never dead-lettered.
    `item_level`: the results are per document (a bulk response), so a document failing alone can be
    moved aside."""

    acked: list[int] = field(default_factory=list)
    dead: list[tuple[SpoolEntry, str]] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)
    retry_reason: str = ""
    refused: bool = False
    item_level: bool = False

    @classmethod
    def retry_all(cls, entries: Sequence[SpoolEntry], reason: str) -> SendOutcome:
        return cls(retry=[entry.seq for entry in entries], retry_reason=reason)


class Destination(ABC):
    """One place telemetry goes; `name` names its spool file and its stats."""

    name: str

    def stream_name(self, document: Document) -> str:
        return f"{document.data_type}-dsagent.{document.dataset}"

    def records_from_documents(self, documents: Sequence[Document]) -> list[SpoolRecord]:
        return [
            SpoolRecord(document.kind, self.stream_name(document), document.doc_id, document.json_bytes())
            for document in documents
        ]

    def records_from_metrics(self, metrics_data: MetricsData, documents: Sequence[Document]) -> list[SpoolRecord]:
        return self.records_from_documents(documents)

    def records_from_logs(self, batch: Sequence[Any], documents: Sequence[Document]) -> list[SpoolRecord]:
        return self.records_from_documents(documents)

    def prepare(self) -> str | None:
        """Make the destination ready before the first send (e.g. install templates).

        Returns None when ready, else the reason it is not (the drainer backs off and asks again)."""
        return None

    @abstractmethod
    def send(self, entries: Sequence[SpoolEntry]) -> SendOutcome: ...

    def close(self) -> None:
        return None


class DeadLetterFile:
    """Append-only NDJSON of documents a destination refused for good, each with the reason.

    Each write is fsynced before it returns, because the drainer deletes those documents from the spool
    right after. Capped: past `max_bytes` the file rotates (`.1` ... `.keep_files`, the oldest deleted), so
    a destination refusing everything cannot fill the disk. `dsagent export replay-dead-letters` sends the
    lines back through the spool once the cause is fixed."""

    def __init__(self, path: Path, max_bytes: int = 64 * 1024 * 1024, keep_files: int = 3) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep_files = keep_files
        self._lock = threading.Lock()

    def write(self, destination: str, rejected: Sequence[tuple[SpoolEntry, str]]) -> None:
        if not rejected:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for entry, reason in rejected:
            line: dict[str, Any] = {
                "dead_lettered_at": time.time(),
                "destination": destination,
                "stream": entry.stream,
                "id": entry.doc_id,
                "kind": entry.kind,
                "reason": reason,
            }
            try:
                line["document"] = json.loads(entry.payload)
            except ValueError:
                line["payload_base64"] = base64.b64encode(entry.payload).decode()
            lines.append(json.dumps(line, default=str))
        data = ("\n".join(lines) + "\n").encode("utf-8")
        with self._lock:
            if self.path.exists() and self.path.stat().st_size > 0 and \
                    self.path.stat().st_size + len(data) > self.max_bytes:
                rotate_numbered(self.path, self.keep_files)
            with self.path.open("ab") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())


def rotate_numbered(path: Path, keep_files: int) -> None:
    """path -> path.1 -> path.2 ... path.keep_files (deleted past that), like logrotate's numbered scheme."""
    oldest = path.with_name(f"{path.name}.{keep_files}")
    oldest.unlink(missing_ok=True)
    for index in range(keep_files - 1, 0, -1):
        source = path.with_name(f"{path.name}.{index}")
        if source.exists():
            source.rename(path.with_name(f"{path.name}.{index + 1}"))
    path.rename(path.with_name(f"{path.name}.1"))
