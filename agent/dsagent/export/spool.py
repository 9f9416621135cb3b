"""A durable, ordered, quota-bounded queue on disk (SQLite in WAL mode) in front of one destination.

Why: an outage of Elasticsearch or the upstream collector must lose nothing. Exporters append
documents here in one transaction (committed = durable, even across SIGKILL); a drainer thread reads
them back in append order and deletes them only after the destination acknowledged them. Past the disk
quota the oldest *metric* documents are dropped and counted; request and action records are never
dropped (the spool then grows past its quota rather than lose them; each such append is counted in
`over_quota_appends`).

The files on disk follow the quota too, not only the documents: the write-ahead log is checkpointed
early for a small quota and truncated back to `journal_size_limit` after each checkpoint, and the database
uses incremental auto-vacuum, so pages freed by acknowledged documents go back to the file system
(`reclaim` runs after acknowledgements once enough pages are free, and when the spool is empty the WAL is
truncated too). A spool created before this is converted once (VACUUM) when it is opened.

Documents are stored in chunks, one row per run of same-kind documents of one append (up to
MAX_CHUNK_DOCUMENTS): a row per document costs SQLite more than serializing the document did, and the
hot paths (append, read a batch, acknowledge it) then touch a few rows instead of thousands. A document
keeps its position `seq = chunk_id << 20 | index` for its whole life. A chunk row is written once:
acknowledging part of it records those positions (one byte per position) and the acknowledged count and
bytes in a small row of its own in `acked` - SQLite rewrites a whole record on any UPDATE, so touching
the chunk row would copy its megabytes of payload again for every batch drained from it. Both rows go
when the chunk's last document is acknowledged. The quota drops whole metric chunks, oldest first.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import NamedTuple

#: document kinds; only METRIC may be dropped to honour the quota.
METRIC = "metric"
REQUEST = "request"
ACTION = "action"
LOG = "log"  # an encoded batch of log records (OTLP): never dropped
KINDS = frozenset({METRIC, REQUEST, ACTION, LOG})

#: bytes counted per document beyond its payload (id, stream, bookkeeping); an estimate for the quota.
ROW_OVERHEAD_BYTES = 64
#: the write-ahead log is truncated to at most this after a checkpoint (or the quota, if smaller)
MAX_JOURNAL_BYTES = 4 * 1024 * 1024
#: free pages worth this much (or a quarter of the quota, if smaller) are handed back to the file system
RECLAIM_FREE_BYTES = 1024 * 1024
MAX_CHUNK_DOCUMENTS = 10_000
_INDEX_BITS = 20
_INDEX_MASK = (1 << _INDEX_BITS) - 1
_MAGIC = b"DSP1"
_HEAD = struct.Struct("<4sI")  # magic, document count; then 4 uint32 per document, then the bytes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    chunk_id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    documents INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS acked (
    chunk_id INTEGER PRIMARY KEY,
    documents INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    marks BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class SpoolRecord:
    """A document to append: its kind, destination stream (index / file / OTLP path), id and bytes."""

    kind: str
    stream: str
    doc_id: str
    payload: bytes


class SpoolEntry(NamedTuple):
    """A document read back from the spool; `seq` is its position, used to acknowledge it.

    A named tuple: a batch read creates thousands of these, and tuples are the cheapest to build."""

    seq: int
    kind: str
    stream: str
    doc_id: str
    payload: bytes


def document_size_bytes(stream: str, doc_id: str, payload: bytes) -> int:
    """The quota's estimate for one document (UTF-8 byte lengths, as stored in a chunk)."""
    return len(payload) + len(stream.encode()) + len(doc_id.encode()) + ROW_OVERHEAD_BYTES


def encode_chunk(documents: Sequence[tuple[int, str, str, bytes]]) -> bytes:
    """(index, stream, doc_id, payload) documents as one blob: header, lengths table, then the bytes."""
    return _encode_chunk_sized(documents)[0]


def _encode_chunk_sized(documents: Sequence[tuple[int, str, str, bytes]]) -> tuple[bytes, int]:
    """The chunk blob and the documents' total `document_size_bytes`, in one pass."""
    lengths: list[int] = []
    parts: list[bytes] = [b""]
    encoded_streams: dict[str, bytes] = {}  # a chunk usually holds a handful of streams
    data_bytes = 0
    for index, stream, doc_id, payload in documents:
        stream_bytes = encoded_streams.get(stream)
        if stream_bytes is None:
            stream_bytes = encoded_streams[stream] = stream.encode()
        id_bytes = doc_id.encode()
        lengths += (index, len(stream_bytes), len(id_bytes), len(payload))
        parts += (stream_bytes, id_bytes, payload)
    parts[0] = _HEAD.pack(_MAGIC, len(documents)) + struct.pack(f"<{len(lengths)}I", *lengths)
    blob = b"".join(parts)
    data_bytes = len(blob) - len(parts[0])
    return blob, data_bytes + ROW_OVERHEAD_BYTES * len(documents)


def decode_chunk(
    blob: bytes, limit: int | None = None, removed: bytes | None = None
) -> list[tuple[int, str, str, bytes]]:
    """The chunk's documents (the first `limit` of them when given), in order, leaving out the indexes
    marked in `removed` (byte `index` nonzero: acknowledged already)."""
    count = _chunk_count(blob)
    lengths = struct.unpack_from(f"<{4 * count}I", blob, _HEAD.size)
    offset = _HEAD.size + 16 * count
    wanted = count if limit is None else min(limit, count)
    removed_length = len(removed) if removed else 0
    streams: dict[bytes, str] = {}
    documents: list[tuple[int, str, str, bytes]] = []
    for number in range(count):
        if len(documents) >= wanted:
            break
        index, stream_length, id_length, payload_length = lengths[4 * number : 4 * number + 4]
        stream_end = offset + stream_length
        id_end = stream_end + id_length
        payload_end = id_end + payload_length
        if removed and index < removed_length and removed[index]:
            offset = payload_end
            continue
        stream_bytes = blob[offset:stream_end]
        stream = streams.get(stream_bytes)
        if stream is None:
            stream = streams[stream_bytes] = stream_bytes.decode()
        documents.append((index, stream, blob[stream_end:id_end].decode(), blob[id_end:payload_end]))
        offset = payload_end
    return documents


def _index_positions(lengths: Sequence[int]) -> dict[int, int] | None:
    """index -> position in a chunk's lengths table; None when they are equal (a chunk as appended, indexes
    0..count-1: indexes only ever increase, so the last one being count-1 proves it)."""
    count = len(lengths) // 4
    if count == 0 or lengths[4 * (count - 1)] == count - 1:
        return None
    return {lengths[4 * position]: position for position in range(count)}


def chunk_indexes(blob: bytes) -> tuple[int, ...]:
    """The positions of the documents still in a chunk, read from its header alone."""
    count = _chunk_count(blob)
    return struct.unpack_from(f"<{4 * count}I", blob, _HEAD.size)[0::4]


def _chunk_count(blob: bytes) -> int:
    magic, count = _HEAD.unpack_from(blob, 0)
    if magic != _MAGIC:
        raise ValueError(f"spool chunk starts with {magic!r}, expected {_MAGIC!r}: not a dsagent spool chunk")
    return int(count)


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
        (auto_vacuum,) = self._db.execute("PRAGMA auto_vacuum").fetchone()
        if auto_vacuum != 2:  # INCREMENTAL; a new file takes it at once, an old one needs one VACUUM
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            if self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                self._db.execute("VACUUM")
        self._db.execute("PRAGMA journal_mode=WAL")
        (page_bytes,) = self._db.execute("PRAGMA page_size").fetchone()
        self._page_bytes = int(page_bytes)
        self._db.execute(f"PRAGMA journal_size_limit={min(max_bytes, MAX_JOURNAL_BYTES)}")
        # checkpoint after a quarter of the quota is in the log (SQLite's default is 1000 pages, ~4 MB)
        self._db.execute(f"PRAGMA wal_autocheckpoint={max(16, min(1000, max_bytes // 4 // self._page_bytes))}")
        self._reclaim_free_bytes = min(RECLAIM_FREE_BYTES, max(self._page_bytes, max_bytes // 4))
        # NORMAL in WAL mode: a committed transaction survives a crash of this process (SIGKILL);
        # only a power loss may roll back the last transactions.
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Many builds default to secure_delete=ON, which zeroes every freed page: acknowledging a batch
        # then costs several times its append. FAST still clears deleted content on b-tree pages.
        self._db.execute("PRAGMA secure_delete=FAST")
        self._db.executescript(_SCHEMA)
        self._recount_locked()
        self.dropped_metric_documents = 0
        self.over_quota_appends = 0
        self._closed = False

    # -- appending -----------------------------------------------------------------------------
    def append(self, records: Sequence[SpoolRecord]) -> None:
        """Append in order, in one transaction; then enforce the quota by dropping oldest metrics."""
        if not records:
            return
        chunks: list[tuple[str, int, int, bytes]] = []
        for kind, run in groupby(records, key=lambda record: record.kind):
            if kind not in KINDS:
                raise ValueError(f"spool record kind {kind!r} is not one of {sorted(KINDS)}")
            same_kind = list(run)
            for start in range(0, len(same_kind), MAX_CHUNK_DOCUMENTS):
                part = same_kind[start : start + MAX_CHUNK_DOCUMENTS]
                blob, size = _encode_chunk_sized(
                    [(index, r.stream, r.doc_id, r.payload) for index, r in enumerate(part)]
                )
                chunks.append((kind, len(part), size, blob))
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO chunks (kind, documents, size_bytes, payload) VALUES (?, ?, ?, ?)", chunks
                )
                self._size_bytes += sum(chunk[2] for chunk in chunks)
                self._depth_documents += sum(chunk[1] for chunk in chunks)
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
        doomed: list[int] = []
        cursor = self._db.execute(
            "SELECT c.chunk_id, c.documents - COALESCE(a.documents, 0), c.size_bytes - COALESCE(a.size_bytes, 0) "
            "FROM chunks c LEFT JOIN acked a USING (chunk_id) WHERE c.kind = ? ORDER BY c.chunk_id",
            (METRIC,),
        )
        for chunk_id, documents, size in cursor:
            doomed.append(chunk_id)
            freed += size
            dropped += documents
            if freed >= excess_bytes:
                break
        cursor.close()
        self._db.executemany("DELETE FROM chunks WHERE chunk_id = ?", [(chunk_id,) for chunk_id in doomed])
        self._db.executemany("DELETE FROM acked WHERE chunk_id = ?", [(chunk_id,) for chunk_id in doomed])
        self._size_bytes -= freed
        self._depth_documents -= dropped
        self.dropped_metric_documents += dropped
        if freed < excess_bytes:
            self.over_quota_appends += 1

    # -- draining ------------------------------------------------------------------------------
    def peek(self, limit: int) -> list[SpoolEntry]:
        """The oldest `limit` documents, in append order, without removing them."""
        entries: list[SpoolEntry] = []
        with self._lock:
            self._check_open()
            cursor = self._db.execute(
                "SELECT c.chunk_id, c.kind, c.payload, a.marks FROM chunks c LEFT JOIN acked a USING (chunk_id) "
                "ORDER BY c.chunk_id"
            )
            for chunk_id, kind, blob, removed in cursor:
                base = chunk_id << _INDEX_BITS
                entries.extend(
                    SpoolEntry(base | index, kind, stream, doc_id, payload)
                    for index, stream, doc_id, payload in decode_chunk(blob, limit - len(entries), removed)
                )
                if len(entries) >= limit:
                    break
            cursor.close()
        return entries

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged documents; returns how many were still present."""
        by_chunk: dict[int, set[int]] = {}
        for seq in seqs:
            by_chunk.setdefault(seq >> _INDEX_BITS, set()).add(seq & _INDEX_MASK)
        if not by_chunk:
            return 0
        removed_documents = 0
        removed_bytes = 0
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for chunk_id, indexes in by_chunk.items():
                    row = self._db.execute(
                        "SELECT c.documents, c.size_bytes, a.documents, a.size_bytes, a.marks "
                        "FROM chunks c LEFT JOIN acked a USING (chunk_id) WHERE c.chunk_id = ?",
                        (chunk_id,),
                    ).fetchone()
                    if row is None:
                        continue  # dropped by the quota meanwhile
                    chunk_documents, chunk_size, acked_documents, acked_size, removed = row
                    documents = chunk_documents - (acked_documents or 0)
                    size = chunk_size - (acked_size or 0)
                    lengths = self._read_lengths_locked(chunk_id)
                    count = len(lengths) // 4
                    positions = _index_positions(lengths)
                    marks = bytearray(removed or b"")
                    gone: list[tuple[int, int]] = []  # (index, position) of documents acknowledged now
                    for index in indexes:
                        position = (index if 0 <= index < count else None) if positions is None else positions.get(index)
                        if position is not None and not (index < len(marks) and marks[index]):
                            gone.append((index, position))
                    if not gone:
                        continue
                    if len(gone) == documents:  # the rest of the chunk: the rows go
                        self._db.execute("DELETE FROM chunks WHERE chunk_id = ?", (chunk_id,))
                        if removed is not None:
                            self._db.execute("DELETE FROM acked WHERE chunk_id = ?", (chunk_id,))
                        removed_documents += documents
                        removed_bytes += size
                        continue
                    freed = ROW_OVERHEAD_BYTES * len(gone) + sum(
                        lengths[4 * position + 1] + lengths[4 * position + 2] + lengths[4 * position + 3]
                        for _, position in gone
                    )
                    needed = max(index for index, _ in gone) + 1
                    if len(marks) < needed:
                        marks.extend(bytes(needed - len(marks)))
                    for index, _ in gone:
                        marks[index] = 1
                    self._db.execute(
                        "INSERT OR REPLACE INTO acked (chunk_id, documents, size_bytes, marks) VALUES (?, ?, ?, ?)",
                        (chunk_id, chunk_documents - documents + len(gone), chunk_size - size + freed, bytes(marks)),
                    )
                    removed_documents += len(gone)
                    removed_bytes += freed
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._recount_locked()
                raise
            self._depth_documents -= removed_documents
            self._size_bytes -= removed_bytes
            self._reclaim_locked()
        return removed_documents

    def _reclaim_locked(self) -> None:
        """Give freed pages back to the file system, and the WAL too once everything is acknowledged."""
        (free_pages,) = self._db.execute("PRAGMA freelist_count").fetchone()
        if free_pages * self._page_bytes >= self._reclaim_free_bytes or (free_pages and self._depth_documents == 0):
            self._db.execute("PRAGMA incremental_vacuum").fetchall()
        if self._depth_documents == 0:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def disk_bytes(self) -> int:
        """What the spool occupies on disk now: the database file plus its write-ahead log."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += (self.path.parent / (self.path.name + suffix)).stat().st_size
            except OSError:
                pass
        return total

    def _read_lengths_locked(self, chunk_id: int) -> tuple[int, ...]:
        """The chunk's lengths table (index, stream, id, payload lengths per document), read incrementally:
        the documents' bytes stay on disk."""
        if not hasattr(self._db, "blobopen"):  # Python < 3.11: SQLite's substr (reads the whole value)
            (head,) = self._db.execute(
                "SELECT substr(payload, 1, ?) FROM chunks WHERE chunk_id = ?", (_HEAD.size, chunk_id)
            ).fetchone()
            (header,) = self._db.execute(
                "SELECT substr(payload, 1, ?) FROM chunks WHERE chunk_id = ?",
                (_HEAD.size + 16 * _chunk_count(head), chunk_id),
            ).fetchone()
        else:
            with self._db.blobopen("chunks", "payload", chunk_id, readonly=True) as payload:
                head = payload.read(_HEAD.size)
                header = head + payload.read(16 * _chunk_count(head))
        count = _chunk_count(header)
        return struct.unpack_from(f"<{4 * count}I", header, _HEAD.size)

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
        row = self._db.execute(
            "SELECT (SELECT COALESCE(SUM(documents), 0) FROM chunks) - (SELECT COALESCE(SUM(documents), 0) FROM acked), "
            "(SELECT COALESCE(SUM(size_bytes), 0) FROM chunks) - (SELECT COALESCE(SUM(size_bytes), 0) FROM acked)"
        )
        self._depth_documents, self._size_bytes = (int(value) for value in row.fetchone())

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"spool {self.path} is closed")
