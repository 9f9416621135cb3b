"""Static checks of saved objects against the agent's index templates and Kibana's dashboard rules.

Why: Kibana imports a dashboard whose panel names a field that does not exist, and the operator finds an
empty chart weeks later. These checks fail first: every field a panel reads exists in the index template
of its data view with a type that fits the aggregation; every metric name a filter selects is one the
agent emits, and every `labels.*` split is a label of that metric; every layer, `panelRefName` and
accessor reference resolves; panels sit on the 48-column grid without overlapping; ids are unique.
`dsagent dashboards check [--file F]` runs them; tests/unit/dashboards asserts they pass.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from typing import Any

from dsagent.agent_metrics import AGENT_METRICS_BY_NAME
from dsagent.dashboards.lens import LAYER_REFERENCE_PREFIX
from dsagent.export.es_templates import all_templates
from dsagent.export.instruments import (
    REQUEST_DURATION,
    TIME_PER_OUTPUT_TOKEN,
    TIME_TO_FIRST_TOKEN,
    TOKEN_USAGE,
)
from dsagent.sources.metric_metadata import METRICS_BY_NAME

GRID_COLUMNS = 48
NUMERIC_TYPES = {"long", "integer", "short", "byte", "double", "float", "half_float", "scaled_float",
                 "unsigned_long"}
AGGREGATABLE_TYPES = NUMERIC_TYPES | {"keyword", "date", "boolean", "ip", "constant_keyword"}
#: which field types each Lens operation accepts
OPERATION_TYPES: dict[str, set[str]] = {
    "average": NUMERIC_TYPES, "sum": NUMERIC_TYPES, "min": NUMERIC_TYPES, "max": NUMERIC_TYPES,
    "median": NUMERIC_TYPES, "percentile": NUMERIC_TYPES, "range": NUMERIC_TYPES,
    "standard_deviation": NUMERIC_TYPES, "terms": AGGREGATABLE_TYPES - {"date"},
    "unique_count": AGGREGATABLE_TYPES, "last_value": AGGREGATABLE_TYPES, "date_histogram": {"date"},
}
NO_FIELD_OPERATIONS = {"count", "formula", "math", "static_value"}
GENAI_METRICS = {REQUEST_DURATION, TIME_TO_FIRST_TOKEN, TIME_PER_OUTPUT_TOKEN, TOKEN_USAGE}
#: one `field : "value"`, `field : *` or `field >= 400` term of the KQL the panels use, joined by and/or
_KQL_TERM = re.compile(r'^(not\s+)?([A-Za-z_@][\w.@]*)\s*(:|>=|<=|>|<)\s*("(?:[^"\\]|\\.)*"|\*|[\w.\-]+)$')


def known_metric_names() -> set[str]:
    return set(METRICS_BY_NAME) | set(AGENT_METRICS_BY_NAME) | GENAI_METRICS


@dataclass
class FieldMap:
    """Dotted field name -> mapping type for one index template, with its `labels.*`-style dynamic paths."""

    types: dict[str, str]
    dynamic: dict[str, str]  # path_match pattern -> type

    def type_of(self, name: str) -> str | None:
        if name in self.types:
            return self.types[name]
        for pattern, mapped in self.dynamic.items():
            if fnmatch.fnmatchcase(name, pattern):
                return mapped
        return None


def field_map(template: dict[str, Any]) -> FieldMap:
    mappings = template["template"]["mappings"]
    types: dict[str, str] = {}

    def walk(properties: dict[str, Any], prefix: str) -> None:
        for name, spec in properties.items():
            path = f"{prefix}{name}"
            if "properties" in spec:
                walk(spec["properties"], path + ".")
            if "type" in spec and spec["type"] != "object":
                types[path] = spec["type"]
            for sub, sub_spec in spec.get("fields", {}).items():
                types[f"{path}.{sub}"] = sub_spec["type"]

    walk(mappings.get("properties", {}), "")
    dynamic = {}
    for entry in mappings.get("dynamic_templates", []):
        for spec in entry.values():
            if "path_match" in spec:
                dynamic[spec["path_match"]] = spec["mapping"]["type"]
    return FieldMap(types, dynamic)


def data_view_fields(title: str, index_prefix: str = "dsagent") -> FieldMap | None:
    """The field map of the one template whose index patterns cover the data view's streams."""
    sample_stream = title.replace("*", "x-default", 1).replace("*", "")
    matches = [template for template in all_templates(index_prefix, False).values()
               if any(fnmatch.fnmatchcase(sample_stream, pattern) for pattern in template["index_patterns"])]
    return field_map(matches[0]) if len(matches) == 1 else None


def parse_kql(query: str) -> list[tuple[str, str, str]]:
    """(field, operator, value) of each term of an and/or-joined KQL; ValueError for anything richer."""
    if not query.strip():
        return []
    parts = re.split(r"\s+(?:and|or)\s+", query.strip())
    terms = []
    for part in parts:
        match = _KQL_TERM.match(part.strip().strip("()"))
        if match is None:
            raise ValueError(f"KQL term {part!r} is outside the subset the checks understand")
        terms.append((match.group(2), match.group(3), match.group(4).strip('"')))
    return terms


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    dashboards: int = 0
    panels: int = 0
    columns: int = 0
    fields: int = 0
    references: int = 0

    def summary(self) -> str:
        return (f"{self.dashboards} dashboards, {self.panels} panels, {self.columns} columns, "
                f"{self.fields} field uses, {self.references} references checked: "
                + ("ok" if not self.problems else f"{len(self.problems)} problems"))


class _Checker:
    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = objects
        self.report = CheckReport()
        self.by_key = {(obj["type"], obj["id"]): obj for obj in objects}
        self.views: dict[str, FieldMap] = {}

    def problem(self, where: str, message: str) -> None:
        self.report.problems.append(f"{where}: {message}")

    def run(self) -> CheckReport:
        seen: set[tuple[str, str]] = set()
        for obj in self.objects:
            key = (obj["type"], obj["id"])
            if key in seen:
                self.problem(f"{key[0]}/{key[1]}", "duplicate id")
            seen.add(key)
        for obj in self.objects:
            if obj["type"] == "index-pattern":
                self.check_data_view(obj)
        for obj in self.objects:
            if obj["type"] == "search":
                self.check_search(obj)
            elif obj["type"] == "dashboard":
                self.check_dashboard(obj)
        return self.report

    def check_data_view(self, obj: dict[str, Any]) -> None:
        where = f"index-pattern/{obj['id']}"
        attributes = obj["attributes"]
        fields = data_view_fields(attributes.get("title", ""))
        if fields is None:
            self.problem(where, f"title {attributes.get('title')!r} matches no single agent index template")
            return
        time_field = attributes.get("timeFieldName")
        if fields.type_of(time_field or "") != "date":
            self.problem(where, f"timeFieldName {time_field!r} is not a date field of the template")
        self.views[obj["id"]] = fields

    def resolve(self, where: str, reference: dict[str, Any] | None, expected_type: str) -> str | None:
        self.report.references += 1
        if reference is None:
            self.problem(where, "reference missing")
            return None
        if reference.get("type") != expected_type:
            self.problem(where, f"reference {reference.get('name')} has type {reference.get('type')}, "
                                f"expected {expected_type}")
        if (reference.get("type"), reference.get("id")) not in self.by_key:
            self.problem(where, f"reference {reference.get('name')} points at {reference.get('type')}/"
                                f"{reference.get('id')}, which is not in the file")
            return None
        return str(reference["id"])

    def check_search(self, obj: dict[str, Any]) -> None:
        where = f"search/{obj['id']}"
        source = json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        refs = {ref["name"]: ref for ref in obj.get("references", [])}
        view_id = self.resolve(where, refs.get(source.get("indexRefName", "")), "index-pattern")
        fields = self.views.get(view_id or "")
        for column in obj["attributes"].get("columns", []):
            self.report.fields += 1
            if fields is not None and fields.type_of(column) is None:
                self.problem(where, f"column {column!r} is not a field of the data view's template")

    def check_dashboard(self, obj: dict[str, Any]) -> None:
        where = f"dashboard/{obj['id']}"
        self.report.dashboards += 1
        panels = json.loads(obj["attributes"]["panelsJSON"])
        refs = {ref["name"]: ref for ref in obj.get("references", [])}
        indexes = [panel.get("panelIndex") for panel in panels]
        if len(set(indexes)) != len(indexes):
            self.problem(where, "panelIndex values are not unique")
        rectangles: list[tuple[str, tuple[int, int, int, int]]] = []
        for panel in panels:
            self.report.panels += 1
            panel_where = f"{where} panel {panel.get('title', panel.get('panelIndex'))!r}"
            grid = panel["gridData"]
            if grid.get("i") != panel.get("panelIndex"):
                self.problem(panel_where, "gridData.i differs from panelIndex")
            x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
            if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > GRID_COLUMNS:
                self.problem(panel_where, f"grid x={x} w={w} does not fit the {GRID_COLUMNS}-column grid")
            for other_where, (ox, oy, ow, oh) in rectangles:
                if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                    self.problem(panel_where, f"overlaps {other_where}")
            rectangles.append((panel_where, (x, y, w, h)))
            if "panelRefName" in panel:
                self.resolve(panel_where, refs.get(f"{panel['panelIndex']}:{panel['panelRefName']}"), panel["type"])
            elif panel.get("type") == "lens":
                self.check_lens(panel_where, panel, refs)
            else:
                self.problem(panel_where, f"panel type {panel.get('type')!r} is neither by-value Lens nor by reference")

    def check_lens(self, where: str, panel: dict[str, Any], refs: dict[str, dict[str, Any]]) -> None:
        attributes = panel["embeddableConfig"]["attributes"]
        state = attributes["state"]
        inner_refs = {ref["name"]: ref for ref in attributes.get("references", [])}
        layers = state["datasourceStates"]["formBased"]["layers"]
        for layer_id, layer in layers.items():
            ref_name = LAYER_REFERENCE_PREFIX + layer_id
            view_id = self.resolve(f"{where} layer {layer_id}", refs.get(f"{panel['panelIndex']}:{ref_name}"),
                                   "index-pattern")
            inner = inner_refs.get(ref_name)
            if inner is None or inner.get("id") != view_id:
                self.problem(where, f"the panel's own reference {ref_name} is missing or names another data view")
            self.check_layer(f"{where} layer {layer_id}", layer, self.views.get(view_id or ""))
        visualization = state["visualization"]
        vis_layers = visualization.get("layers", [visualization])
        for vis_layer in vis_layers:
            layer_id = vis_layer.get("layerId")
            if layer_id not in layers:
                self.problem(where, f"visualization layer {layer_id} has no datasource layer")
                continue
            columns = layers[layer_id]["columns"]
            accessors = [vis_layer.get(key) for key in ("xAccessor", "splitAccessor", "metricAccessor")]
            accessors += vis_layer.get("accessors", []) + vis_layer.get("primaryGroups", []) + \
                vis_layer.get("metrics", []) + [c.get("columnId") for c in vis_layer.get("columns", [])]
            for accessor in accessors:
                if accessor is not None and accessor not in columns:
                    self.problem(where, f"accessor {accessor!r} is not a column of layer {layer_id}")

    def check_layer(self, where: str, layer: dict[str, Any], fields: FieldMap | None) -> None:
        columns: dict[str, dict[str, Any]] = layer["columns"]
        order = layer.get("columnOrder", [])
        if sorted(columns) != sorted(order):
            self.problem(where, "columnOrder does not list exactly the columns")
        elif any(columns[a].get("isBucketed") is False and columns[b].get("isBucketed")
                 for a, b in zip(order, order[1:], strict=False)):
            self.problem(where, "columnOrder puts a value column before a bucket column")
        selected_metrics: set[str] = set()
        label_fields: list[str] = []
        for column_id, column in columns.items():
            self.report.columns += 1
            column_where = f"{where} column {column_id}"
            for ref in column.get("references", []):
                if ref not in columns:
                    self.problem(column_where, f"references missing column {ref}")
            operation = column.get("operationType", "")
            names = [column["sourceField"]] if "sourceField" in column and operation not in NO_FIELD_OPERATIONS else []
            names += column.get("params", {}).get("secondaryFields", [])
            for name in names:
                self.report.fields += 1
                label_fields += [name] if name.startswith("labels.") else []
                mapped = fields.type_of(name) if fields is not None else None
                if mapped is None:
                    self.problem(column_where, f"field {name!r} is not in the data view's index template")
                elif operation in OPERATION_TYPES and mapped not in OPERATION_TYPES[operation]:
                    self.problem(column_where, f"{operation} needs {sorted(OPERATION_TYPES[operation])}, "
                                               f"{name!r} is {mapped}")
            query = (column.get("filter") or {}).get("query", "")
            try:
                terms = parse_kql(query)
            except ValueError as exc:
                self.problem(column_where, str(exc))
                continue
            for name, _operator, value in terms:
                self.report.fields += 1
                if fields is not None and fields.type_of(name) is None:
                    self.problem(column_where, f"filter field {name!r} is not in the data view's index template")
                if name == "metric.name":
                    if value not in known_metric_names():
                        self.problem(column_where, f"filter selects metric {value!r}, which the agent never emits")
                    selected_metrics.add(value)
        for name in label_fields:
            label = name.removeprefix("labels.")
            for metric_name in selected_metrics:
                entry = METRICS_BY_NAME.get(metric_name)
                if entry is not None and label not in entry.labels:
                    self.problem(where, f"splits by {name!r} but {metric_name} has labels {list(entry.labels)}")


def check_objects(objects: list[dict[str, Any]]) -> CheckReport:
    return _Checker(objects).run()
