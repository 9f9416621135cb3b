"""Redaction of request and action records before any exporter sees them.

Prompt and completion text must not leave the node unless an operator asks for it, and then only
through these rules: named fields are dropped (at any depth, matched by key or dotted path) and regexes
mask matches inside every remaining string (e.g. e-mail addresses).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any


class Redactor:
    """Drops configured fields and masks regex matches in string values; returns new objects."""

    def __init__(self, drop_fields: Iterable[str], mask_patterns: Iterable[tuple[str, str]] = ()) -> None:
        self._drop_fields = frozenset(drop_fields)
        self._masks: list[tuple[re.Pattern[str], str]] = []
        for pattern, replacement in mask_patterns:
            try:
                self._masks.append((re.compile(pattern), replacement))
            except re.error as error:
                raise ValueError(f"redaction mask pattern {pattern!r} is not a valid regex: {error}") from error

    @classmethod
    def from_config(cls, config: Any) -> Redactor:
        """From a `dsagent.export.config.RedactionConfig` (typed loosely to keep this module dependency-free)."""
        return cls(config.drop_fields, [(mask.pattern, mask.replacement) for mask in config.mask_patterns])

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
