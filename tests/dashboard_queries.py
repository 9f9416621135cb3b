"""The packaged dashboards' panels as Elasticsearch queries, shared by the tests that prove the panels show
something (tests/integration/dashboards, tests/e2e).

Each Lens value column becomes one query on its data view: its KQL filter (`metric.name : "x"` -> `term`,
`status_code >= 400` -> `range`) plus an `exists` for every field the column and its chart's buckets read.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from dsagent.dashboards import catalog, check
from dsagent.dashboards.lens import LAYER_REFERENCE_PREFIX

OPERATORS = {">=": "gte", ">": "gt", "<=": "lte", "<": "lt"}
NOT_QUERIED = ("formula", "math", "static_value")


def lens_panels() -> list[dict[str, Any]]:
    """{"id": "<dashboard id>: <panel title>", "layers": [{"pattern": <index pattern>, **layer}]} per Lens panel."""
    objects = catalog.saved_objects()
    views = {obj["id"]: obj["attributes"]["title"] for obj in objects if obj["type"] == "index-pattern"}
    panels = []
    for board in (obj for obj in objects if obj["type"] == "dashboard"):
        refs = {ref["name"]: ref["id"] for ref in board["references"]}
        for panel in json.loads(board["attributes"]["panelsJSON"]):
            if panel["type"] != "lens":
                continue
            layers = panel["embeddableConfig"]["attributes"]["state"]["datasourceStates"]["formBased"]["layers"]
            panels.append({"id": f"{board['id']}: {panel['title']}", "layers": [
                {"pattern": views[refs[f"{panel['panelIndex']}:{LAYER_REFERENCE_PREFIX}{layer_id}"]], **layer}
                for layer_id, layer in layers.items()]})
    return panels


def value_columns(panel: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(layer, column, query) for every value column of a panel that reads documents."""
    result = []
    for layer in panel["layers"]:
        buckets = [field for column in layer["columns"].values() if column.get("isBucketed")
                   for field in [column["sourceField"], *column.get("params", {}).get("secondaryFields", [])]]
        for column in layer["columns"].values():
            if column.get("isBucketed") or column["operationType"] in NOT_QUERIED:
                continue
            result.append((layer, column, column_query(column, buckets)))
    return result


def column_query(column: dict[str, Any], bucket_fields: list[str]) -> dict[str, Any]:
    filters: list[dict[str, Any]] = []
    for field, op, value in check.parse_kql((column.get("filter") or {}).get("query", "")):
        if op == ":":
            filters.append({"exists": {"field": field}} if value == "*" else {"term": {field: value}})
        else:
            filters.append({"range": {field: {OPERATORS[op]: value}}})
    source = column.get("sourceField")
    fields = bucket_fields + ([source] if source and source != "___records___" else [])
    filters += [{"exists": {"field": field}} for field in fields]
    return {"bool": {"filter": filters}}


def metric_names() -> list[str]:
    """Every metric name a panel filters on."""
    names = set()
    for panel in lens_panels():
        for layer in panel["layers"]:
            for column in layer["columns"].values():
                for field, _op, value in check.parse_kql((column.get("filter") or {}).get("query", "")):
                    if field == "metric.name":
                        names.add(value)
    return sorted(names)


def count(es_url: str, pattern: str, query: dict[str, Any] | None) -> int:
    response = httpx.post(f"{es_url}/{pattern}/_count", json={"query": query or {"match_all": {}}}, timeout=10)
    if response.status_code == 404:
        return 0
    response.raise_for_status()
    return int(response.json()["count"])
