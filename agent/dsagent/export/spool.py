"""A durable, ordered, quota-bounded queue on disk (SQLite in WAL mode) in front of one destination.

Why: an outage of Elasticsearch or the upstream collector must lose nothing. Exporters append
documents here in one transaction (committed = durable, even across SIGKILL); a drainer thread reads
them back in append order and deletes them only after the destination acknowledged them. Past the disk
quota the oldest *metric* documents are dropped and counted; request and action records are never
dropped (the spool then grows past its quota rather than lose them).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: document kinds; only METRIC may be dropped to honour the quota.
METRIC = "metric"
REQUEST = "request"
ACTION = "action"
LOG = "log"  # an encoded batch of log records (OTLP): never dropped
KINDS = frozenset({METRIC, REQUEST, ACTION, LOG})

#: bytes counted per row beyond its payload (ids, stream, sqlite row overhead); an estimate.
ROW_OVERHEAD_BYTES = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    stream TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    payload BLOB NOT NULL
);
"""
# No index on kind: the quota path walks the table in seq order and stops as soon as it freed enough;
# an index would slow every append and acknowledgement, the hot path, for the rare drop.


@dataclass(frozen=True)
class SpoolRecord:
    """A document to append: its kind, destination stream (index / file / OTLP path), id and bytes."""

    kind: str
    stream: str
    doc_id: str
    payload: bytes


@dataclass(frozen=True)
class SpoolEntry:
    """A document read back from the spool; `seq` is its position, used to acknowledge it."""

    seq: int
    kind: str
    stream: str
    doc_id: str
    payload: bytes


class Spool:
    """One SQLite file; safe to share between an appending thread and a draining thread."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"spool max_bytes must be > 0, got {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed transaction survives a crash of this process (SIGKILL);
        # only a power loss may roll back the last transactions.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM documents").fetchone()
        self._depth_documents = int(row[0])
        self._size_bytes = int(row[1])
        self.dropped_metric_documents = 0
        self.over_quota_appends = 0
        self._closed = False

    # -- appending -----------------------------------------------------------------------------
    def append(self, records: Sequence[SpoolRecord]) -> None:
        """Append in order, in one transaction; then enforce the quota by dropping oldest metrics."""
        if not records:
            return
        rows = []
        added_bytes = 0
        for record in records:
            if record.kind not in KINDS:
                raise ValueError(f"spool record kind {record.kind!r} is not one of {sorted(KINDS)}")
            size = len(record.payload) + len(record.stream) + len(record.doc_id) + ROW_OVERHEAD_BYTES
            added_bytes += size
            rows.append((record.kind, record.stream, record.doc_id, size, record.payload))
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO documents (kind, stream, doc_id, size_bytes, payload) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                self._size_bytes += added_bytes
                self._depth_documents += len(rows)
                if self._size_bytes > self.max_bytes:
                    self._drop_oldest_metrics_locked(self._size_bytes - self.max_bytes)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._recount_locked()
                raise

    def _drop_oldest_metrics_locked(self, excess_bytes: int) -> None:
        freed = 0
        dropped = 0
        last_seq = None
        cursor = self._db.execute(
            "SELECT seq, size_bytes FROM documents WHERE kind = ? ORDER BY seq", (METRIC,)
        )
        for seq, size in cursor:
            freed += size
            dropped += 1
            last_seq = seq
            if freed >= excess_bytes:
                break
        cursor.close()
        if last_seq is not None:
            self._db.execute("DELETE FROM documents WHERE kind = ? AND seq <= ?", (METRIC, last_seq))
            self._size_bytes -= freed
            self._depth_documents -= dropped
            self.dropped_metric_documents += dropped
        if freed < excess_bytes:
            self.over_quota_appends += 1

    # -- draining ------------------------------------------------------------------------------
    def peek(self, limit: int) -> list[SpoolEntry]:
        """The oldest `limit` documents, in append order, without removing them."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT seq, kind, stream, doc_id, payload FROM documents ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [SpoolEntry(seq, kind, stream, doc_id, payload) for seq, kind, stream, doc_id, payload in rows]

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged documents; returns how many were still present."""
        seq_list = sorted(set(seqs))
        if not seq_list:
            return 0
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                removed_sizes: list[int] = []
                if seq_list[-1] - seq_list[0] + 1 == len(seq_list):  # contiguous: the common case
                    removed_sizes = [row[0] for row in self._db.execute(
                        "DELETE FROM documents WHERE seq BETWEEN ? AND ? RETURNING size_bytes",
                        (seq_list[0], seq_list[-1]),
                    )]
                    seq_list = []
                for start in range(0, len(seq_list), 500):
                    chunk = seq_list[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    removed_sizes.extend(row[0] for row in self._db.execute(
                        f"DELETE FROM documents WHERE seq IN ({marks}) RETURNING size_bytes", chunk
                    ))
                removed_docs, removed_bytes = len(removed_sizes), sum(removed_sizes)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._recount_locked()
                raise
            self._depth_documents -= removed_docs
            self._size_bytes -= removed_bytes
            return removed_docs

    # -- state ---------------------------------------------------------------------------------
    @property
    def depth_documents(self) -> int:
        return self._depth_documents

    @property
    def size_bytes(self) -> int:
        return self._size_bytes

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def _recount_locked(self) -> None:
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM documents").fetchone()
        self._depth_documents, self._size_bytes = int(row[0]), int(row[1])

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"spool {self.path} is closed")
