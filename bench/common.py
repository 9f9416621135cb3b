"""Helpers every benchmark in bench/ shares: flags, percentiles, the printed table and the --json file.

DESIGN.md asks every benchmark to print one table and, with `--json FILE`, write
`{"figures": {name: number}, "env": {...}}` so runs can be compared across machines and commits. Keeping
that shape in one place means every script writes the same `env` block (versions, CPU, load average) and
the figures stay plain numbers with their unit in the name.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--json FILE and --full, the two flags every benchmark takes."""
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help='write {"figures": {name: number}, "env": {...}} to FILE')
    parser.add_argument("--full", action="store_true", help="run the long version (more requests, repeats)")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile (fraction in 0..1) of a non-empty sequence, like numpy's default."""
    if not values:
        raise ValueError("percentile of an empty sequence is undefined; measure at least one value")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in 0..1, got {fraction}")
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


@dataclass(frozen=True)
class LatencySummary:
    """p50/p99 of a list of durations in seconds."""

    p50_seconds: float
    p99_seconds: float

    @classmethod
    def of(cls, durations_seconds: Sequence[float]) -> LatencySummary:
        return cls(percentile(durations_seconds, 0.50), percentile(durations_seconds, 0.99))


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _module_version(name: str) -> str | None:
    module = sys.modules.get(name)
    if module is None:
        return None
    return str(getattr(module, "__version__", None))


def environment() -> dict[str, Any]:
    """What a figure depends on besides the code: versions, CPU, threads, load, commit."""
    env: dict[str, Any] = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        env["load_average_1_5_15"] = list(os.getloadavg())
    except OSError:
        pass
    for name in ("torch", "transformers", "tokenizers"):
        version = _module_version(name)
        if version is not None:
            env[f"{name}_version"] = version
    torch_module = sys.modules.get("torch")
    if torch_module is not None:
        env["torch_num_threads"] = torch_module.get_num_threads()
        env["cuda_available"] = bool(torch_module.cuda.is_available())
        if env["cuda_available"]:
            env["cuda_device"] = torch_module.cuda.get_device_name(0)
    return env


def write_json(path: Path, figures: Mapping[str, float | int | None], env: Mapping[str, Any] | None = None,
               extra: Mapping[str, Any] | None = None) -> None:
    """Write the benchmark result file; figures that could not be measured (None) are left out."""
    document: dict[str, Any] = {
        "figures": {name: value for name, value in figures.items() if value is not None and not
                    (isinstance(value, float) and math.isnan(value))},
        "env": dict(env) if env is not None else environment(),
    }
    if extra:
        document.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def format_number(value: float | int | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]],
                caption: str | None = None) -> None:
    """One rich table on stdout; numbers are formatted, strings printed as they are."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption, caption_justify="left")
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*(cell if isinstance(cell, str) else format_number(cell) for cell in row))  # type: ignore[arg-type]
    Console(width=max(170, len(title))).print(table)
