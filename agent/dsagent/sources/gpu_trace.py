"""GPU traces: JSONL files of `GpuReading`s over time, recorded from NVML and replayed by the fake backend.

Format (one JSON object per line): an optional first line {"meta": {...}} saying where and how it was
recorded, then one line per GPU per tick: {"t_seconds": <offset from the start>, "reading": {GpuReading}}.
Recording needs only pynvml (no pydantic), so it runs on a bare GPU machine:

    PYTHONPATH=agent python -m dsagent.sources.gpu_trace --out trace.jsonl --seconds 60 --interval 1
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from dsagent.sources.gpu_backend import GpuBackend, GpuReading


@dataclass
class GpuTrace:
    """A loaded trace: frames in time order, each frame the readings of every GPU at that tick."""

    meta: dict[str, Any]
    frame_offsets_seconds: list[float]
    frames: list[list[GpuReading]] = field(default_factory=list)


def load_trace(path: Path) -> GpuTrace:
    """Parse a JSONL trace; errors name the file and line and what a line should look like."""
    meta: dict[str, Any] = {}
    by_offset: dict[float, list[GpuReading]] = {}
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not JSON ({error.msg}); each line is one JSON object") from error
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            if "meta" in obj:
                meta = dict(obj["meta"])
                continue
            if "t_seconds" not in obj or "reading" not in obj:
                raise ValueError(f'{where}: expected {{"t_seconds": number, "reading": {{...}}}}, got keys {sorted(obj)}')
            try:
                reading = GpuReading.from_json_dict(obj["reading"])
            except (TypeError, ValueError) as error:
                raise ValueError(f"{where}: {error}") from error
            by_offset.setdefault(float(obj["t_seconds"]), []).append(reading)
    if not by_offset:
        raise ValueError(f"{path}: the trace holds no readings; record one with `python -m dsagent.sources.gpu_trace`")
    offsets = sorted(by_offset)
    return GpuTrace(meta, offsets, [sorted(by_offset[t], key=lambda r: r.index) for t in offsets])


def write_trace_line(out: TextIO, offset_seconds: float, reading: GpuReading) -> None:
    out.write(json.dumps({"t_seconds": round(offset_seconds, 3), "reading": reading.to_json_dict()}) + "\n")


def record_trace(
    backend: GpuBackend,
    out: TextIO,
    seconds: float,
    interval_seconds: float,
    meta: dict[str, Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Read `backend` every `interval_seconds` for `seconds` and write the trace. Returns frames written."""
    backend.open()
    out.write(json.dumps({"meta": {"backend": backend.name, "interval_seconds": interval_seconds, **(meta or {})}}) + "\n")
    start = clock()
    frames = 0
    try:
        while True:
            offset = clock() - start
            if offset > seconds:
                break
            for reading in backend.read_all():
                write_trace_line(out, offset, reading)
            out.flush()
            frames += 1
            next_tick = start + frames * interval_seconds
            sleep(max(0.0, next_tick - clock()))
    finally:
        backend.close()
    return frames


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Record a GPU trace from NVML as JSONL.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--note", default="", help="free text stored in the trace's meta line")
    args = parser.parse_args(list(argv) if argv is not None else None)

    from dsagent.sources.gpu_backend import GpuUnavailable
    from dsagent.sources.nvml_backend import NvmlBackend

    meta = {"host": platform.node(), "recorded_at_unix": round(time.time(), 3), "note": args.note}
    try:
        with args.out.open("w", encoding="utf-8") as out:
            frames = record_trace(NvmlBackend(), out, args.seconds, args.interval, meta)
    except GpuUnavailable as error:
        print(f"no GPU to record: {error}", file=sys.stderr)
        return 2
    print(f"wrote {frames} frames to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
