"""Send dead-lettered documents back through the pipeline once their cause is fixed.

Why: a document is dead-lettered when its destination refused it for good (a mapping conflict, a
payload the collector rejects). After the operator fixes the template or the collector, those documents
should still arrive: this appends each dead-letter line back into its destination's durable spool (same
stream, same deterministic id, so Elasticsearch stores it once even if it was stored meanwhile) and
renames the file to `*.replayed-<time>`; the agent's drainer ships them on its next start.

It runs while the agent is stopped (it takes the data dir's lock), so it never races the agent's own
drainer over the same spool.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from dsagent.export.spool import KINDS, Spool, SpoolRecord


class DeadLetterLineError(ValueError):
    """A dead-letter line that cannot be turned back into a document; the message names file:line."""


@dataclass
class ReplayResult:
    documents_by_destination: dict[str, int] = field(default_factory=dict)
    files_replayed: list[Path] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)


def dead_letter_files(dead_letter_dir: Path, destination: str) -> list[Path]:
    """The destination's dead-letter file and its rotated ones, oldest first."""
    current = dead_letter_dir / f"{destination}.ndjson"
    rotated = sorted(dead_letter_dir.glob(f"{destination}.ndjson.[0-9]*"),
                     key=lambda path: -int(path.name.rsplit(".", 1)[1]))
    return [*rotated, *([current] if current.exists() else [])]


def record_from_line(line: str, where: str) -> SpoolRecord:
    try:
        entry = json.loads(line)
        kind, stream, doc_id = entry["kind"], entry["stream"], entry["id"]
        if "document" in entry:
            payload = json.dumps(entry["document"], separators=(",", ":"), ensure_ascii=False).encode()
        else:
            payload = base64.b64decode(entry["payload_base64"])
    except (ValueError, KeyError, TypeError) as error:
        raise DeadLetterLineError(f"{where}: not a dead-letter line ({type(error).__name__}: {error})") from None
    if kind not in KINDS:
        raise DeadLetterLineError(f"{where}: unknown document kind {kind!r}")
    return SpoolRecord(kind, str(stream), str(doc_id), payload)


def replay_dead_letters(data_dir: Path, spool_dir: Path, spool_max_bytes: int,
                        destinations: list[str]) -> ReplayResult:
    """Append every dead letter of `destinations` back into their spools; files with a bad line are kept."""
    result = ReplayResult()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for destination in destinations:
        files = dead_letter_files(data_dir / "dead-letter", destination)
        if not files:
            continue
        spool = Spool(spool_dir / f"{destination}.sqlite3", spool_max_bytes)
        try:
            for path in files:
                records: list[SpoolRecord] = []
                bad = []
                for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                    if not line.strip():
                        continue
                    try:
                        records.append(record_from_line(line, f"{path}:{number}"))
                    except DeadLetterLineError as error:
                        bad.append(str(error))
                spool.append(records)
                result.documents_by_destination[destination] = (
                    result.documents_by_destination.get(destination, 0) + len(records))
                result.bad_lines += bad
                if not bad:
                    path.rename(path.with_name(f"{path.name}.replayed-{stamp}"))
                    result.files_replayed.append(path)
        finally:
            spool.close()
    return result
