"""Issue 12 items 4 and 5: the spool's files shrink back under the quota, dead-letter and engine log files
are capped, dead letters can be replayed, and NDJSON / dead-letter writes are fsynced before the spool
forgets the documents."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from dsagent.export.destination import DeadLetterFile
from dsagent.export.ndjson import NdjsonDestination
from dsagent.export.replay import replay_dead_letters
from dsagent.export.spool import METRIC, REQUEST, Spool, SpoolEntry, SpoolRecord
from dsagent.log_files import copy_truncate
from typer.testing import CliRunner


def test_spool_files_stay_near_the_quota_once_everything_is_acknowledged(tmp_path: Path) -> None:
    quota = 1024 * 1024
    spool = Spool(tmp_path / "s.sqlite3", quota)
    for round_number in range(30):  # 6 MB through a 1 MB spool
        spool.append([SpoolRecord(METRIC, "m", f"{round_number}-{i}", b"x" * 2000) for i in range(100)])
        while entries := spool.peek(50):
            spool.ack(entry.seq for entry in entries)
    assert spool.depth_documents == 0
    assert spool.disk_bytes() < quota  # was 4.5 MB (database 1.6 MB + WAL 3.4 MB) before
    spool.close()


def test_an_old_spool_without_auto_vacuum_is_converted_and_keeps_its_documents(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    first = Spool(path, 10**9)
    first.append([SpoolRecord(REQUEST, "r", "a", b"{}")])
    first.close()
    with sqlite3.connect(path) as db:  # as a spool written by an earlier version would be
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("PRAGMA auto_vacuum=NONE")
        db.execute("VACUUM")
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    reopened = Spool(path, 10**9)
    assert reopened.depth_documents == 1 and [e.doc_id for e in reopened.peek(5)] == ["a"]
    assert reopened._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    reopened.close()


def entry(number: int, payload: bytes = b'{"a": 1}') -> SpoolEntry:
    return SpoolEntry(number, REQUEST, "logs-dsagent.requests-default", f"id-{number}", payload)


def test_dead_letter_file_is_capped_and_rotated(tmp_path: Path) -> None:
    dead = DeadLetterFile(tmp_path / "dl" / "es.ndjson", max_bytes=2000, keep_files=2)
    for number in range(60):
        dead.write("es", [(entry(number), "mapper_parsing_exception")])
    files = sorted(path.name for path in (tmp_path / "dl").iterdir())
    assert files == ["es.ndjson", "es.ndjson.1", "es.ndjson.2"]
    assert all((tmp_path / "dl" / name).stat().st_size <= 2000 for name in files)


def test_ndjson_and_dead_letter_writes_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    NdjsonDestination(tmp_path / "out", 10**6, 2).send([entry(1)])
    assert len(synced) == 1
    DeadLetterFile(tmp_path / "dead.ndjson").write("file", [(entry(2), "why")])
    assert len(synced) == 2


def test_replay_puts_dead_letters_back_in_the_spool_with_their_ids(tmp_path: Path) -> None:
    dead = DeadLetterFile(tmp_path / "dead-letter" / "elasticsearch.ndjson")
    dead.write("elasticsearch", [(entry(1, b'{"request_id":"r1"}'), "status 400"),
                                 (entry(2, b"\x00binary"), "status 400")])
    result = replay_dead_letters(tmp_path, tmp_path / "spool", 10**9, ["elasticsearch", "file"])
    assert result.documents_by_destination == {"elasticsearch": 2}
    spool = Spool(tmp_path / "spool" / "elasticsearch.sqlite3", 10**9)
    replayed = spool.peek(10)
    assert [(e.doc_id, e.stream) for e in replayed] == [("id-1", "logs-dsagent.requests-default"),
                                                         ("id-2", "logs-dsagent.requests-default")]
    assert json.loads(replayed[0].payload) == {"request_id": "r1"} and replayed[1].payload == b"\x00binary"
    assert not (tmp_path / "dead-letter" / "elasticsearch.ndjson").exists()  # renamed *.replayed-<time>
    spool.close()


def test_replay_command_refuses_while_an_agent_holds_the_data_dir(tmp_path: Path) -> None:
    from dsagent.cli import app
    from dsagent.data_dir_lock import DataDirLock

    lock = DataDirLock(tmp_path)
    lock.acquire()
    try:
        result = CliRunner().invoke(app, ["export", "replay-dead-letters", "--data-dir", str(tmp_path)])
    finally:
        lock.release()
    assert result.exit_code == 2 and "stop the agent before replaying" in result.output
    result = CliRunner().invoke(app, ["export", "replay-dead-letters", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0 and "no dead letters" in result.output


def test_engine_log_is_copied_and_truncated_past_its_cap(tmp_path: Path) -> None:
    log_path = tmp_path / "engine.log"
    with open(log_path, "ab") as writer:  # the engine's handle stays open across the rotation
        writer.write(b"a" * 3000)
        writer.flush()
        assert copy_truncate(log_path, 1000)
        writer.write(b"after\n")
        writer.flush()
    assert (tmp_path / "engine.log.1").read_bytes() == b"a" * 3000
    assert log_path.read_bytes() == b"after\n"  # O_APPEND: the next line lands at the new start
    assert not copy_truncate(log_path, 1000)
