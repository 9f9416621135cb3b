"""Composable index templates for the agent's data streams, with explicit mappings.

Installed by the agent before its first bulk write so a data stream is never auto-created with the
cluster's generic `logs-*-*` / `metrics-*-*` mappings (ours have priority 200, above the built-in 100).
Unknown fields are kept in `_source` but not indexed (`dynamic: false`), so a new attribute can never
cause a mapping explosion or a mapping conflict.
"""

from __future__ import annotations

from typing import Any

TEMPLATE_VERSION = 1
TEMPLATE_PRIORITY = 200

_KEYWORD = {"type": "keyword", "ignore_above": 1024}
_RESOURCE = {"type": "flattened"}


def _meta() -> dict[str, Any]:
    return {"managed_by": "dsagent", "template_version": TEMPLATE_VERSION}


def metrics_template(index_prefix: str, time_series_mode: bool) -> dict[str, Any]:
    label_mapping: dict[str, Any] = {"type": "keyword", "ignore_above": 1024}
    metric_name: dict[str, Any] = dict(_KEYWORD)
    host_name: dict[str, Any] = dict(_KEYWORD)
    settings: dict[str, Any] = {}
    if time_series_mode:
        label_mapping["time_series_dimension"] = True
        metric_name["time_series_dimension"] = True
        host_name["time_series_dimension"] = True
        settings = {"index.mode": "time_series", "index.routing_path": ["metric.name", "labels.*", "host.name"]}
    return {
        "index_patterns": [f"metrics-{index_prefix}.*-*"],
        "data_stream": {},
        "priority": TEMPLATE_PRIORITY,
        "version": TEMPLATE_VERSION,
        "_meta": _meta(),
        "template": {
            "settings": settings,
            "mappings": {
                "dynamic": "false",
                "dynamic_templates": [
                    {"labels_as_keywords": {"path_match": "labels.*", "mapping": label_mapping}},
                ],
                "properties": {
                    "@timestamp": {"type": "date"},
                    "start_timestamp": {"type": "date"},
                    "metric": {"properties": {"name": metric_name, "type": _KEYWORD, "unit": _KEYWORD}},
                    "labels": {"type": "object", "dynamic": "true"},
                    "value": {"type": "double"},
                    "histogram": {
                        "properties": {
                            "count": {"type": "long"},
                            "sum": {"type": "double"},
                            "min": {"type": "double"},
                            "max": {"type": "double"},
                            "bounds": {"type": "double", "index": False},
                            "counts": {"type": "long", "index": False},
                        }
                    },
                    "host": {"properties": {"name": host_name}},
                    "resource": _RESOURCE,
                },
            },
        },
    }


def _logs_template(index_patterns: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "index_patterns": index_patterns,
        "data_stream": {},
        "priority": TEMPLATE_PRIORITY,
        "version": TEMPLATE_VERSION,
        "_meta": _meta(),
        "template": {"mappings": {"dynamic": "false", "properties": properties}},
    }


def requests_template(index_prefix: str) -> dict[str, Any]:
    return _logs_template(
        [f"logs-{index_prefix}.requests-*"],
        {
            "@timestamp": {"type": "date"},
            "request_id": _KEYWORD,
            "model": _KEYWORD,
            "prompt_length": {"type": "long"},
            "tokens_generated": {"type": "long"},
            "generation_time_seconds": {"type": "double"},
            "time_to_first_token_seconds": {"type": "double"},
            "time_per_output_token_seconds": {"type": "double"},
            "finish_reason": _KEYWORD,
            "status_code": {"type": "integer"},
            "knobs": {"type": "flattened"},
            "attributes": {"type": "flattened"},
            "host": {"properties": {"name": _KEYWORD}},
            "resource": _RESOURCE,
        },
    )


def actions_template(index_prefix: str) -> dict[str, Any]:
    return _logs_template(
        [f"logs-{index_prefix}.actions-*", f"logs-{index_prefix}.events-*"],
        {
            "@timestamp": {"type": "date"},
            "rule": _KEYWORD,
            "knob": _KEYWORD,
            "old": _KEYWORD,
            "new": _KEYWORD,
            "outcome": _KEYWORD,
            "reason": {"type": "text", "fields": {"keyword": _KEYWORD}},
            # the guard's audit fields (dsagent.actions.guard.audit_event)
            "decision_id": _KEYWORD,
            "action": _KEYWORD,
            "target": _KEYWORD,
            "source": _KEYWORD,
            "dry_run": {"type": "boolean"},
            "expr": _KEYWORD,
            "value": {"type": "double"},
            "labels": {"type": "flattened"},
            "detail": {"type": "flattened"},
            "rollback_of": _KEYWORD,
            "decided_at": {"type": "double"},
            "host": {"properties": {"name": _KEYWORD}},
            "resource": _RESOURCE,
        },
    )


def all_templates(index_prefix: str, time_series_mode: bool) -> dict[str, dict[str, Any]]:
    """Template name -> body, for `PUT _index_template/<name>`."""
    return {
        f"{index_prefix}-metrics": metrics_template(index_prefix, time_series_mode),
        f"{index_prefix}-requests": requests_template(index_prefix),
        f"{index_prefix}-actions": actions_template(index_prefix),
    }
