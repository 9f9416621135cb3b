"""One agent per data dir: an exclusive lock on data_dir/agent.lock, held for the agent's lifetime.

Why: two agents on the same data dir would reap each other's engine (the engine.pid file) and drain the same
spools twice. flock is released by the kernel when the process dies, so a SIGKILLed agent never leaves a
stale lock behind; the file also names the holder's pid for the refusal message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class DataDirInUse(OSError):
    """Another live process holds the data dir's lock; the message names it and the way out."""


class DataDirLock:
    """`acquire()` takes the lock or raises DataDirInUse; `release()` is idempotent."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "agent.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the agent's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise DataDirInUse(
                f"data dir {self.path.parent} is in use by another agent (pid {holder}); stop it, or give this "
                "one its own --data-dir / DSAGENT_DATA_DIR") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None
