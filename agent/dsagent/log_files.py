"""Size caps for log files another process writes into (the engine's stdout/stderr in engine.log).

Why copy-and-truncate: the engine holds engine.log open for its whole life, so renaming the file would
leave it writing into the renamed one. Like logrotate's `copytruncate`, the content is copied to
`engine.log.1` (older copies shift up, the oldest is deleted) and the original truncated in place; the
engine writes with O_APPEND, so its next line lands at the new end. A few lines written between the copy
and the truncation can be lost: acceptable for a diagnostic log, never used for telemetry.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_truncate(path: Path, max_bytes: int, keep_files: int = 2) -> bool:
    """Rotate `path` when it is over `max_bytes`; True when it did."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except OSError:
        return False
    path.with_name(f"{path.name}.{keep_files}").unlink(missing_ok=True)
    for index in range(keep_files - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            older.rename(path.with_name(f"{path.name}.{index + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+b") as handle:
        handle.truncate(0)
    return True
