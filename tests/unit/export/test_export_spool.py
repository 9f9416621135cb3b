"""The spool keeps order, survives reopening and SIGKILL, and drops only the oldest metrics past its quota."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dsagent.export.spool import (
    ACTION,
    MAX_CHUNK_DOCUMENTS,
    METRIC,
    REQUEST,
    ROW_OVERHEAD_BYTES,
    Spool,
    SpoolRecord,
    decode_chunk,
    document_size_bytes,
    encode_chunk,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def record(kind: str, number: int, payload_bytes: int = 10) -> SpoolRecord:
    return SpoolRecord(kind, "stream", f"id-{number}", b"x" * payload_bytes)


def test_peek_returns_documents_in_append_order_and_ack_removes_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", max_bytes=10**9)
    spool.append([record(METRIC, i) for i in range(5)])
    spool.append([record(REQUEST, i) for i in range(5, 8)])
    entries = spool.peek(100)
    assert [entry.doc_id for entry in entries] == [f"id-{i}" for i in range(8)]
    assert spool.ack([entries[0].seq, entries[2].seq]) == 2
    assert [entry.doc_id for entry in spool.peek(3)] == ["id-1", "id-3", "id-4"]
    assert spool.depth_documents == 6


def test_ack_of_unknown_sequence_numbers_changes_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", max_bytes=10**9)
    spool.append([record(METRIC, 1)])
    assert spool.ack([999]) == 0
    assert spool.depth_documents == 1


def test_documents_survive_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    spool = Spool(path, max_bytes=10**9)
    spool.append([record(ACTION, i) for i in range(3)])
    size = spool.size_bytes
    spool.close()
    reopened = Spool(path, max_bytes=10**9)
    assert [entry.doc_id for entry in reopened.peek(10)] == ["id-0", "id-1", "id-2"]
    assert reopened.size_bytes == size
    assert reopened.depth_documents == 3


def test_quota_drops_oldest_metrics_and_counts_them(tmp_path: Path) -> None:
    row_bytes = 100 + len("stream") + len("id-00") + ROW_OVERHEAD_BYTES
    spool = Spool(tmp_path / "s.sqlite3", max_bytes=row_bytes * 5)
    for i in range(5):  # one export each, like five collection ticks
        spool.append([SpoolRecord(METRIC, "stream", f"id-{i:02d}", b"m" * 100)])
    spool.append([SpoolRecord(REQUEST, "stream", f"id-{i:02d}", b"r" * 100) for i in range(5, 8)])
    ids = [entry.doc_id for entry in spool.peek(100)]
    assert ids == ["id-03", "id-04", "id-05", "id-06", "id-07"]
    assert spool.dropped_metric_documents == 3
    assert spool.size_bytes <= spool.max_bytes


def test_quota_never_drops_requests_or_actions_even_when_over(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", max_bytes=200)
    spool.append([record(REQUEST, i, 100) for i in range(4)])
    spool.append([record(ACTION, i, 100) for i in range(4, 6)])
    assert spool.depth_documents == 6
    assert spool.dropped_metric_documents == 0
    assert spool.over_quota_appends >= 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([METRIC, REQUEST, ACTION]), st.integers(1, 300)), min_size=1, max_size=40),
       st.integers(300, 3000))
def test_quota_invariants_hold_for_any_append_sequence(
    tmp_path_factory: pytest.TempPathFactory, appends: list[tuple[str, int]], max_bytes: int
) -> None:
    spool = Spool(tmp_path_factory.mktemp("spool") / "s.sqlite3", max_bytes=max_bytes)
    for number, (kind, size) in enumerate(appends):
        spool.append([SpoolRecord(kind, "s", f"{number:04d}", b"p" * size)])
    kept = spool.peek(1000)
    kept_ids = [entry.doc_id for entry in kept]
    never_droppable = [f"{n:04d}" for n, (kind, _) in enumerate(appends) if kind != METRIC]
    assert set(never_droppable) <= set(kept_ids)  # requests and actions are never dropped
    assert kept_ids == sorted(kept_ids)  # order kept
    metrics_total = sum(1 for kind, _ in appends if kind == METRIC)
    assert spool.dropped_metric_documents == metrics_total - sum(1 for e in kept if e.kind == METRIC)
    # dropped metrics are always the oldest ones
    kept_metric_ids = [e.doc_id for e in kept if e.kind == METRIC]
    all_metric_ids = [f"{n:04d}" for n, (kind, _) in enumerate(appends) if kind == METRIC]
    assert kept_metric_ids == all_metric_ids[len(all_metric_ids) - len(kept_metric_ids):]
    if spool.size_bytes > max_bytes:
        assert not kept_metric_ids  # only over quota when no metric is left to drop
    spool.close()


def test_committed_documents_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from dsagent.export.spool import Spool, SpoolRecord
        spool = Spool(__import__("pathlib").Path({str(path)!r}), max_bytes=10**9)
        for i in range(50):
            spool.append([SpoolRecord("request", "s", f"id-{{i}}", b"x" * 50)])
        print("appended", flush=True)
        time.sleep(60)
        """
    )
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "appended"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    reopened = Spool(path, max_bytes=10**9)
    assert [entry.doc_id for entry in reopened.peek(100)] == [f"id-{i}" for i in range(50)]


def test_unknown_kind_is_rejected_with_the_valid_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", max_bytes=1000)
    with pytest.raises(ValueError, match="'trace'.*metric"):
        spool.append([SpoolRecord("trace", "s", "1", b"x")])


def test_quota_drops_a_whole_metric_export_at_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", max_bytes=1000)
    spool.append([record(METRIC, i, 50) for i in range(5)])  # one export: one chunk of 5
    spool.append([record(REQUEST, 9, 600)])
    assert [entry.doc_id for entry in spool.peek(10)] == ["id-9"]
    assert spool.dropped_metric_documents == 5


def test_partial_ack_keeps_the_rest_with_unchanged_positions(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", max_bytes=10**9)
    spool.append([record(REQUEST, i) for i in range(6)])
    first = spool.peek(4)  # cuts the chunk
    assert [entry.doc_id for entry in first] == ["id-0", "id-1", "id-2", "id-3"]
    assert spool.ack([first[0].seq, first[2].seq]) == 2
    again = spool.peek(10)
    assert [entry.doc_id for entry in again] == ["id-1", "id-3", "id-4", "id-5"]
    assert again[0].seq == first[1].seq and again[1].seq == first[3].seq
    assert spool.ack([first[0].seq]) == 0  # already gone
    assert spool.ack(entry.seq for entry in again) == 4
    assert spool.depth_documents == 0 and spool.size_bytes == 0


def test_mixed_kinds_in_one_append_keep_their_order_and_kinds(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", max_bytes=10**9)
    kinds = [METRIC, METRIC, REQUEST, METRIC, ACTION]
    spool.append([record(kind, i) for i, kind in enumerate(kinds)])
    assert [(entry.doc_id, entry.kind) for entry in spool.peek(10)] == [(f"id-{i}", k) for i, k in enumerate(kinds)]


def test_large_appends_are_split_into_bounded_chunks(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", max_bytes=10**9)
    count = MAX_CHUNK_DOCUMENTS + 5
    spool.append([SpoolRecord(METRIC, "s", str(i), b"") for i in range(count)])
    entries = spool.peek(count + 1)
    assert len(entries) == count and entries[-1].doc_id == str(count - 1)
    assert len({entry.seq >> 20 for entry in entries}) == 2


@given(st.lists(st.tuples(st.integers(0, 2**20 - 1), st.text(max_size=20), st.text(max_size=40),
                          st.binary(max_size=200)), max_size=30))
def test_chunk_encoding_round_trips(documents: list[tuple[int, str, str, bytes]]) -> None:
    assert decode_chunk(encode_chunk(documents)) == documents


def test_a_foreign_blob_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="not a dsagent spool chunk"):
        decode_chunk(b"XXXX\x00\x00\x00\x00")


def test_partial_acks_of_a_large_chunk_leave_its_row_untouched_and_survive_reopening(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "s.sqlite3"
    spool = Spool(path, max_bytes=10**9)
    spool.append([record(METRIC, i, 20) for i in range(1000)])  # one chunk
    full_size = spool.size_bytes
    first = spool.peek(300)
    assert spool.ack(entry.seq for entry in first) == 300
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT documents FROM chunks").fetchone() == (1000,)  # the chunk row (and its payload) was not rewritten
        assert db.execute("SELECT documents FROM acked").fetchone() == (300,)
    left_size = full_size - sum(document_size_bytes(e.stream, e.doc_id, e.payload) for e in first)
    assert spool.size_bytes == left_size
    spool.close()
    reopened = Spool(path, max_bytes=10**9)
    assert reopened.depth_documents == 700 and reopened.size_bytes == left_size
    rest = reopened.peek(2000)
    assert [entry.doc_id for entry in rest] == [f"id-{i}" for i in range(300, 1000)]
    assert reopened.ack([first[0].seq, rest[0].seq]) == 1  # an already acknowledged one counts nothing
    assert reopened.ack(entry.seq for entry in rest) == 699
    assert reopened.depth_documents == 0 and reopened.size_bytes == 0
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM chunks").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM acked").fetchone() == (0,)


def test_quota_counts_only_unacknowledged_bytes_of_a_partly_drained_chunk(tmp_path: Path) -> None:
    per_document = ROW_OVERHEAD_BYTES + len("stream") + len("id-0") + 100
    spool = Spool(tmp_path / "s.sqlite3", max_bytes=10 * per_document)
    spool.append([record(METRIC, i, 100) for i in range(8)])
    spool.ack(entry.seq for entry in spool.peek(6))  # 2 left in the chunk
    spool.append([record(METRIC, i, 100) for i in range(8)])  # 10 documents' worth: fits without a drop
    assert spool.dropped_metric_documents == 0 and spool.depth_documents == 10
    spool.append([record(REQUEST, 99, 100)])  # over by one document: the partly drained chunk goes first
    assert spool.dropped_metric_documents == 2
    assert [entry.doc_id for entry in spool.peek(1)] == ["id-0"] and spool.depth_documents == 9


def test_a_spool_written_before_the_acked_table_existed_opens_and_drains(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE chunks (chunk_id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
                   "documents INTEGER NOT NULL, size_bytes INTEGER NOT NULL, payload BLOB NOT NULL)")
        # a chunk the old code had rewritten after acknowledging its documents 0 and 2: indexes 1, 3
        db.execute("INSERT INTO chunks (kind, documents, size_bytes, payload) VALUES (?, ?, ?, ?)",
                   (METRIC, 2, 2 * (ROW_OVERHEAD_BYTES + 6 + 4 + 1),
                    encode_chunk([(1, "stream", "id-1", b"x"), (3, "stream", "id-3", b"x")])))
    spool = Spool(path, max_bytes=10**9)
    entries = spool.peek(10)
    assert [entry.doc_id for entry in entries] == ["id-1", "id-3"] and spool.depth_documents == 2
    assert spool.ack([entries[1].seq]) == 1
    assert [entry.doc_id for entry in spool.peek(10)] == ["id-1"]
    assert spool.ack([entries[0].seq]) == 1 and spool.size_bytes == 0
