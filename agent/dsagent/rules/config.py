"""The `rules:` section of the agent's config: which rule files run, how often they are re-read, and the
memory bound on the history they may ask the store to keep.

Why a section of its own: rules are optional and evolve separately from the collectors; AgentConfig
holds this model in one field line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

REPO_PACK_DIR = Path(__file__).resolve().parents[3] / "rules"  # a checkout: <repo>/rules
INSTALLED_PACK_DIR = Path(sys.prefix) / "share" / "dsagent" / "rules"  # a wheel: pyproject data-files


def default_pack_dir() -> Path | None:
    """Where the shipped default packs are: the checkout's rules/ first, else the installed copy."""
    for candidate in (REPO_PACK_DIR, INSTALLED_PACK_DIR):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    return None


def default_pack_paths() -> list[str]:
    directory = default_pack_dir()
    return [str(directory / "*.yaml")] if directory is not None else []


class RulesConfig(BaseModel):
    """Rule files evaluated over the store (Prometheus format plus `actions:`; see rules/README.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    paths: list[str] = Field(default_factory=list, description="rule files and globs; empty = the shipped default "
                             "packs (rules/*.yaml)")
    dry_run: bool = Field(default=False, description="evaluate and record what the rules would do, act on nothing "
                          "(`dsagent run --dry-run`)")
    default_interval_seconds: float = Field(default=15.0, gt=0, description="a group's interval when it names none")
    lookback_seconds: float = Field(default=300.0, gt=0, description="instant-selector lookback (Prometheus: 5m)")
    reload_check_seconds: float = Field(default=5.0, ge=0, description="how often file changes are looked for "
                                        "(0 = only on SIGHUP)")
    max_retention_seconds: float = Field(default=3600.0, gt=0, description="the most history the rules may make "
                                         "the store keep (longest range + for + lookback)")
    max_samples_per_series: int = Field(default=4000, ge=1, description="memory bound per series when rules "
                                        "raise the store's retention (~16 bytes per sample)")
    external_labels: dict[str, str] = Field(default_factory=dict)

    def resolved_paths(self) -> list[str]:
        return list(self.paths) if self.paths else default_pack_paths()
