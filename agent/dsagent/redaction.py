"""Redaction of request and action records before any exporter sees them.

Prompt and completion text must not leave the node unless an operator asks for it, and then only
through these rules: named fields are dropped (at any depth, matched by key or dotted path), fields whose
key or path matches a glob are dropped (the OpenTelemetry GenAI and OpenInference families put text under
indexed names such as `gen_ai.prompt.0.content` or `llm.input_messages.1.message.content`, which an exact
list cannot enumerate), and regexes mask matches inside every remaining string (e.g. e-mail addresses).

Request records are also cut to an allowlist of attribute globs before this (see `keep_allowed`): an
attribute family nobody anticipated carries no text out by default.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any


def glob_matcher(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive regex for several fnmatch globs (None when there are none)."""
    translated = [fnmatch.translate(pattern) for pattern in patterns]
    return re.compile("|".join(translated), re.IGNORECASE) if translated else None


def keep_allowed(attributes: Mapping[str, Any], allowed: re.Pattern[str] | None) -> dict[str, Any]:
    """The attributes whose key matches an allowlist glob (all of them when there is no allowlist)."""
    if allowed is None:
        return dict(attributes)
    return {key: value for key, value in attributes.items() if allowed.match(key)}


class Redactor:
    """Drops configured fields and masks regex matches in string values; returns new objects."""

    def __init__(self, drop_fields: Iterable[str], mask_patterns: Iterable[tuple[str, str]] = (),
                 drop_patterns: Iterable[str] = ()) -> None:
        self._drop_fields = frozenset(drop_fields)
        self._drop_globs = glob_matcher(drop_patterns)
        self._masks: list[tuple[re.Pattern[str], str]] = []
        for pattern, replacement in mask_patterns:
            try:
                self._masks.append((re.compile(pattern), replacement))
            except re.error as error:
                raise ValueError(f"redaction mask pattern {pattern!r} is not a valid regex: {error}") from error

    @classmethod
    def from_config(cls, config: Any) -> Redactor:
        """From a `dsagent.export.config.RedactionConfig` (typed loosely to keep this module dependency-free)."""
        return cls(config.drop_fields, [(mask.pattern, mask.replacement) for mask in config.mask_patterns],
                   getattr(config, "drop_patterns", ()))

    def redact(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return self._redact_mapping(record, "")

    def redact_value(self, value: Any) -> Any:
        return self._redact_any(value, "")

    def _redact_mapping(self, record: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        kept: dict[str, Any] = {}
        for key, value in record.items():
            path = f"{prefix}{key}"
            if key in self._drop_fields or path in self._drop_fields:
                continue
            if self._drop_globs is not None and (self._drop_globs.match(str(key)) or self._drop_globs.match(path)):
                continue
            kept[key] = self._redact_any(value, path + ".")
        return kept

    def _redact_any(self, value: Any, prefix: str) -> Any:
        if isinstance(value, str):
            return self._mask(value)
        if isinstance(value, Mapping):
            return self._redact_mapping(value, prefix)
        if isinstance(value, (list, tuple)):
            return [self._redact_any(item, prefix) for item in value]
        return value

    def _mask(self, text: str) -> str:
        for pattern, replacement in self._masks:
            text = pattern.sub(replacement, text)
        return text
