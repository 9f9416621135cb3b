"""Shared helpers for the server integration tests (real `dssidecar serve` processes on 127.0.0.1)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
