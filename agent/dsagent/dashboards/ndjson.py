"""Saved objects as NDJSON in one stable, diffable form: one object per line, keys sorted, nested JSON
strings (panelsJSON, searchSourceJSON) re-serialized with sorted keys, volatile bookkeeping dropped.

Why: an export from Kibana carries timestamps, version tokens and key orders that change on every save;
written this way, re-exporting an unchanged dashboard gives a byte-identical file and a real change shows
as a small diff.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

#: per-save bookkeeping Kibana adds to exports; never part of what a dashboard shows.
VOLATILE_KEYS = ("updated_at", "created_at", "updated_by", "created_by", "version", "namespaces",
                 "migrationVersion", "sort")
#: attributes that hold JSON text rather than JSON.
EMBEDDED_JSON_ATTRIBUTES = ("panelsJSON", "optionsJSON", "fieldFormatMap", "fieldAttrs", "runtimeFieldMap",
                            "sourceFilters", "typeMeta", "fields")
TYPE_ORDER = {"index-pattern": 0, "search": 1, "visualization": 2, "lens": 3, "dashboard": 4}


class NdjsonError(ValueError):
    """A line of a saved-objects file is not a saved object; the message names the line."""


def _canonical_json_text(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return text


def normalize(saved_object: dict[str, Any]) -> dict[str, Any]:
    """A copy without volatile keys, with embedded JSON strings in canonical form and references sorted."""
    result = {k: v for k, v in saved_object.items() if k not in VOLATILE_KEYS}
    attributes = dict(result.get("attributes", {}))
    for key in EMBEDDED_JSON_ATTRIBUTES:
        if key in attributes:
            attributes[key] = _canonical_json_text(attributes[key])
    meta = attributes.get("kibanaSavedObjectMeta")
    if isinstance(meta, dict) and "searchSourceJSON" in meta:
        attributes["kibanaSavedObjectMeta"] = {**meta, "searchSourceJSON": _canonical_json_text(meta["searchSourceJSON"])}
    result["attributes"] = attributes
    result["references"] = sorted(result.get("references", []),
                                  key=lambda ref: (ref.get("type", ""), ref.get("name", ""), ref.get("id", "")))
    return result


def dumps(saved_objects: Iterable[dict[str, Any]]) -> str:
    """The objects, normalized, ordered (data views, searches, ..., dashboards; then by id), one per line."""
    ordered = sorted((normalize(obj) for obj in saved_objects),
                     key=lambda obj: (TYPE_ORDER.get(obj.get("type", ""), 9), obj.get("type", ""), obj.get("id", "")))
    return "".join(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
                   for obj in ordered)


def loads(text: str, origin: str = "<ndjson>") -> list[dict[str, Any]]:
    """Saved objects from NDJSON; Kibana's trailing export summary line (exportedCount) is skipped.

    Raises NdjsonError naming `origin:line` for a line that is not JSON or not a saved object.
    """
    objects: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise NdjsonError(f"{origin}:{number}: not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise NdjsonError(f"{origin}:{number}: expected a JSON object, got {type(value).__name__}")
        if "exportedCount" in value and "type" not in value:
            continue
        missing = [key for key in ("type", "id", "attributes") if key not in value]
        if missing:
            raise NdjsonError(f"{origin}:{number}: saved object lacks {', '.join(missing)}")
        objects.append(value)
    return objects
