"""The one interface every telemetry source implements, so the collection job treats them all alike.

The agent's collection job calls `collect()` on every source each interval and writes what comes back into
the store. A source returns only what it could read: a field that cannot be read is omitted (never 0), and
only a failure of the whole source (engine unreachable, NVML gone mid-run) raises `SourceError`, which the
caller logs once per state change and retries on the next tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from dsagent.samples import Sample


class SourceError(Exception):
    """A whole source failed this tick (for example the engine's /metrics is unreachable).

    `samples` holds what the source could still say about itself despite the failure - for the engine
    scrape that is `dsagent_engine_up 0` - and the caller should store them like a normal result.
    """

    def __init__(self, message: str, samples: Sequence[Sample] = ()) -> None:
        super().__init__(message)
        self.samples: list[Sample] = list(samples)


@runtime_checkable
class Source(Protocol):
    """A telemetry source: a name for logs, a collect() per tick, a close() at shutdown."""

    name: str

    def collect(self) -> list[Sample]:
        """Read the source once. Must not raise for a missing field; may raise SourceError."""
        ...

    def close(self) -> None:
        """Release handles (NVML, HTTP clients). Idempotent."""
        ...
