"""Builders for Lens by-value panels in the form Kibana 8.x/9.x persists them (datasource `formBased`).

Why hand-written builders instead of exported JSON: a Lens panel is a few hundred lines of nested JSON in
which a field name, a filter and a layer id must agree with each other and with a reference. Building
them from a handful of typed calls keeps each panel to a few readable lines in `catalog.py` and makes the
ids stable (derived from names, never random), so a re-export diffs cleanly.

Column ids are short names local to their layer ("x", "y0", "split"); layer ids and panel indexes are
UUIDv5 of the dashboard and panel names. A layer's data view is not stored in the layer: it is a
reference named `indexpattern-datasource-layer-<layerId>`, which Kibana resolves on load.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

#: namespace of every generated id (panel indexes, layer ids): stable across runs and machines.
ID_NAMESPACE = uuid.UUID("6f1d2c3a-8e4b-5a7c-9d0e-1f2a3b4c5d6e")

LAYER_REFERENCE_PREFIX = "indexpattern-datasource-layer-"

Column = dict[str, Any]


def stable_id(*parts: str) -> str:
    """A UUIDv5 from names: the same names always give the same id."""
    return str(uuid.uuid5(ID_NAMESPACE, "/".join(parts)))


def kql(**terms: str) -> str:
    """`metric.name : "x" and labels.knob : "y"` from keyword arguments (dots spelled `__`)."""
    return " and ".join(f'{name.replace("__", ".")} : "{value}"' for name, value in terms.items())


def metric_filter(metric_name: str) -> str:
    """The KQL that selects one metric's documents in `metrics-dsagent.*`."""
    return f'metric.name : "{metric_name}"'


# ---- columns --------------------------------------------------------------------------------------------


def date_histogram(interval: str = "auto") -> Column:
    return {
        "label": "@timestamp",
        "dataType": "date",
        "operationType": "date_histogram",
        "sourceField": "@timestamp",
        "isBucketed": True,
        "scale": "interval",
        "params": {"interval": interval, "includeEmptyRows": True, "dropPartials": False},
    }


def number_format(unit: str | None, decimals: int = 2) -> dict[str, Any] | None:
    """Lens value formats for our base units (seconds, bytes, ratios 0-1)."""
    if unit == "bytes":
        return {"id": "bytes", "params": {"decimals": decimals}}
    if unit == "percent":
        return {"id": "percent", "params": {"decimals": decimals}}
    if unit:
        return {"id": "number", "params": {"decimals": decimals, "suffix": f" {unit}"}}
    return None


def metric(operation: str, source_field: str, label: str, where: str | None = None, unit: str | None = None,
           percentile: float | None = None) -> Column:
    """A value column: average/max/min/sum/median/percentile/last_value/unique_count of a field, or count."""
    params: dict[str, Any] = {}
    if operation in ("average", "max", "min", "sum", "median", "count", "unique_count"):
        params["emptyAsNull"] = True
    if operation == "percentile":
        params["percentile"] = percentile if percentile is not None else 95
    if operation == "last_value":
        params["sortField"] = "@timestamp"
    fmt = number_format(unit)
    if fmt is not None:
        params["format"] = fmt
    column: Column = {
        "label": label,
        "customLabel": True,
        "dataType": "number",
        "operationType": operation,
        "sourceField": source_field if operation != "count" else "___records___",
        "isBucketed": False,
        "scale": "ratio",
        "params": params,
    }
    if where:
        column["filter"] = {"language": "kuery", "query": where}
    return column


def count(label: str, where: str | None = None) -> Column:
    return metric("count", "___records___", label, where)


def terms(source_field: str, label: str, size: int = 10, order_by: str | None = None,
          secondary_fields: tuple[str, ...] = (), ascending: bool = False) -> Column:
    """Top values of a keyword field (several fields: Lens multi-terms), ordered by a value column."""
    order: dict[str, Any] = {"type": "column", "columnId": order_by} if order_by else \
        {"type": "alphabetical", "fallback": True}
    params: dict[str, Any] = {
        "size": size,
        "orderBy": order,
        "orderDirection": "asc" if ascending or not order_by else "desc",
        "otherBucket": False,
        "missingBucket": False,
        "parentFormat": {"id": "multi_terms" if secondary_fields else "terms"},
        "include": [], "exclude": [], "includeIsRegex": False, "excludeIsRegex": False,
    }
    if secondary_fields:
        params["secondaryFields"] = list(secondary_fields)
    return {
        "label": label,
        "customLabel": True,
        "dataType": "string",
        "operationType": "terms",
        "sourceField": source_field,
        "isBucketed": True,
        "scale": "ordinal",
        "params": params,
    }


def histogram_buckets(source_field: str, label: str) -> Column:
    """A numeric field cut into automatic equal-width bins (the x axis of a distribution)."""
    return {
        "label": label,
        "customLabel": True,
        "dataType": "number",
        "operationType": "range",
        "sourceField": source_field,
        "isBucketed": True,
        "scale": "interval",
        "params": {"type": "histogram", "maxBars": "auto", "includeEmptyRows": True,
                   "ranges": [{"from": 0, "to": 1000, "label": ""}]},
    }


def static_value(value: float, label: str) -> Column:
    """A constant for a reference line (an SLO threshold)."""
    return {
        "label": label,
        "customLabel": True,
        "dataType": "number",
        "operationType": "static_value",
        "isStaticValue": True,
        "isBucketed": False,
        "scale": "ratio",
        "params": {"value": str(value)},
        "references": [],
    }


def ratio_formula(column_id: str, label: str, numerator: Column, denominator: Column, text: str,
                  unit: str | None = None) -> dict[str, Column]:
    """numerator / denominator as a Lens formula: the formula column, its math column and its two parts.

    Kibana persists a formula as these four columns (`<id>X0`, `<id>X1` the parts, `<id>X2` the math);
    `text` is the formula as a user would type it, shown in the editor.
    """
    part_a, part_b, math = f"{column_id}X0", f"{column_id}X1", f"{column_id}X2"
    numerator = {**numerator, "label": f"Part of {label}", "customLabel": True}
    denominator = {**denominator, "label": f"Part of {label}", "customLabel": True}
    for part in (numerator, denominator):
        part["params"] = {k: v for k, v in part.get("params", {}).items() if k != "format"}
        part["params"]["emptyAsNull"] = False
    params: dict[str, Any] = {"formula": text, "isFormulaBroken": False}
    fmt = number_format(unit, decimals=3)
    if fmt is not None:
        params["format"] = fmt
    return {
        column_id: {"label": label, "customLabel": True, "dataType": "number", "operationType": "formula",
                    "isBucketed": False, "scale": "ratio", "params": params, "references": [math]},
        part_a: numerator,
        part_b: denominator,
        math: {"label": f"Part of {label}", "customLabel": True, "dataType": "number", "operationType": "math",
               "isBucketed": False, "scale": "ratio", "references": [part_a, part_b],
               "params": {"tinymathAst": {"type": "function", "name": "divide", "args": [part_a, part_b],
                                          "location": {"min": 0, "max": len(text)}, "text": text}}},
    }


def top_level_columns(columns: dict[str, Column]) -> list[str]:
    """Column ids no other column references: what a chart plots (a formula's parts are hidden)."""
    referenced = {ref for column in columns.values() for ref in column.get("references", [])}
    return [column_id for column_id in columns if column_id not in referenced]


# ---- layers and visualizations -----------------------------------------------------------------------------


@dataclass
class Layer:
    """One formBased layer: its columns in order, on one data view."""

    layer_id: str
    data_view_id: str
    columns: dict[str, Column] = field(default_factory=dict)

    def column_order(self) -> list[str]:
        """Buckets before values, top values before the date histogram: the order Lens nests aggregations
        in, so a split ranks its values over the whole time range, not per interval."""
        def rank(column_id: str) -> int:
            column = self.columns[column_id]
            if not column.get("isBucketed"):
                return 2
            return 0 if column.get("operationType") == "terms" else 1

        return sorted(self.columns, key=rank)

    def persisted(self) -> dict[str, Any]:
        return {"columns": self.columns, "columnOrder": self.column_order(), "incompleteColumns": {},
                "sampling": 1, "ignoreGlobalFilters": False}


@dataclass
class LensPanel:
    """A by-value Lens panel: where it sits on the dashboard grid, what it shows and from which layers."""

    key: str
    title: str
    grid: tuple[int, int, int, int]  # x, y, w, h on the 48-column grid
    visualization_type: str
    visualization: dict[str, Any]
    layers: list[Layer]
    description: str = ""

    def attributes(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "description": self.description,
            "visualizationType": self.visualization_type,
            "type": "lens",
            "references": [{"type": "index-pattern", "id": layer.data_view_id,
                            "name": LAYER_REFERENCE_PREFIX + layer.layer_id} for layer in self.layers],
            "state": {
                "visualization": self.visualization,
                "query": {"query": "", "language": "kuery"},
                "filters": [],
                "adHocDataViews": {},
                "internalReferences": [],
                "datasourceStates": {"formBased": {"layers": {layer.layer_id: layer.persisted()
                                                              for layer in self.layers}},
                                     "textBased": {"layers": {}}},
            },
        }


@dataclass
class SearchPanel:
    """A by-reference panel showing a saved search (a table of raw documents) by its id."""

    key: str
    title: str
    grid: tuple[int, int, int, int]
    search_id: str


def xy_panel(dashboard: str, key: str, title: str, grid: tuple[int, int, int, int], data_view_id: str,
             values: dict[str, Column], x: Column | None = None, split: Column | None = None,
             series_type: str = "line", reference_lines: dict[str, Column] | None = None,
             description: str = "") -> LensPanel:
    """A time series (x defaults to a date histogram) or a distribution (x a range column), optionally
    split into one series per value of `split`, with constant reference lines (SLOs) on the left axis."""
    data_layer = Layer(stable_id(dashboard, key, "data"), data_view_id)
    data_layer.columns["x"] = x if x is not None else date_histogram()
    if split is not None:
        data_layer.columns["split"] = split
    data_layer.columns.update(values)
    accessors = top_level_columns(values)
    layer_state: dict[str, Any] = {"layerId": data_layer.layer_id, "layerType": "data", "seriesType": series_type,
                                   "xAccessor": "x", "accessors": accessors}
    if split is not None:
        layer_state["splitAccessor"] = "split"
    layers = [data_layer]
    layer_states = [layer_state]
    if reference_lines:
        reference_layer = Layer(stable_id(dashboard, key, "reference"), data_view_id, dict(reference_lines))
        layers.append(reference_layer)
        layer_states.append({
            "layerId": reference_layer.layer_id, "layerType": "referenceLine",
            "accessors": list(reference_lines),
            "yConfig": [{"forAccessor": column_id, "axisMode": "left", "color": "#E7664C", "lineStyle": "dashed",
                         "lineWidth": 2, "textVisibility": True} for column_id in reference_lines],
        })
    visualization = {
        "legend": {"isVisible": True, "position": "right"},
        "valueLabels": "hide",
        "fittingFunction": "None",
        "preferredSeriesType": series_type,
        "axisTitlesVisibilitySettings": {"x": True, "yLeft": True, "yRight": True},
        "layers": layer_states,
    }
    return LensPanel(key, title, grid, "lnsXY", visualization, layers, description)


def pie_panel(dashboard: str, key: str, title: str, grid: tuple[int, int, int, int], data_view_id: str,
              group: Column, value: Column, description: str = "") -> LensPanel:
    layer = Layer(stable_id(dashboard, key, "data"), data_view_id, {"group": group, "value": value})
    visualization = {"shape": "donut", "layers": [{
        "layerId": layer.layer_id, "layerType": "data", "primaryGroups": ["group"], "metrics": ["value"],
        "numberDisplay": "percent", "categoryDisplay": "default", "legendDisplay": "default",
        "nestedLegend": False}]}
    return LensPanel(key, title, grid, "lnsPie", visualization, [layer], description)


def table_panel(dashboard: str, key: str, title: str, grid: tuple[int, int, int, int], data_view_id: str,
                columns: dict[str, Column], sort_by: str | None = None, description: str = "") -> LensPanel:
    layer = Layer(stable_id(dashboard, key, "data"), data_view_id, dict(columns))
    visualization: dict[str, Any] = {"layerId": layer.layer_id, "layerType": "data",
                                     "columns": [{"columnId": column_id} for column_id in columns]}
    if sort_by is not None:
        visualization["sorting"] = {"columnId": sort_by, "direction": "desc"}
    return LensPanel(key, title, grid, "lnsDatatable", visualization, [layer], description)
